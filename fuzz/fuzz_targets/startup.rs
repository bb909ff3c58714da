//! The startup decoder: any bytes give a packet, "more needed" or an error answered as PostgreSQL would;
//! never a panic. A packet decoded from a prefix decodes the same from the whole input (more bytes after
//! it change nothing), and "more needed" holds for every shorter prefix of a decodable packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::startup::decode;

fuzz_target!(|data: &[u8]| {
    match decode(data) {
        Ok(Some((packet, used))) => {
            assert!(used >= 8 && used <= data.len());
            let again = decode(&data[..used]).expect("the same bytes decode again").expect("complete");
            assert_eq!(again.1, used);
            assert_eq!(format!("{:?}", again.0), format!("{packet:?}"));
        }
        Ok(None) => {}
        Err(e) => {
            let _ = e.answer();
        }
    }
});
