//! The authentication filter (SCRAM-SHA-256-PLUS taken out of AuthenticationSASL): any server bytes, in
//! any split, give the same output or the same error, never a panic, and no output ever offers
//! SCRAM-SHA-256-PLUS beside another mechanism before AuthenticationOk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::auth::AuthFilter;

fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut filter = AuthFilter::default();
    let mut out = Vec::new();
    for chunk in chunks {
        if filter.push(chunk, &mut out).is_err() {
            return (out, true);
        }
    }
    (out, false)
}

/// A mechanism list as PostgreSQL sends it (NUL-terminated names, then an empty one, then nothing) that
/// names a mechanism besides SCRAM-SHA-256-PLUS: the filter's contract covers these. A list with PLUS alone
/// is passed on unchanged (taking it out would leave the client nothing), and so is a list that does not
/// parse (the client refuses it anyway).
fn well_formed_with_another(list: &[u8]) -> bool {
    let Some(body) = list.strip_suffix(b"\0\0") else { return false };
    let names: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    !names.iter().any(|n| n.is_empty()) && names.iter().any(|&n| n != b"SCRAM-SHA-256-PLUS")
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, bytes)) = data.split_first() else { return };
    let whole = run(&[bytes]);
    let step = step as usize % 13 + 1;
    let chunks: Vec<&[u8]> = bytes.chunks(step).collect();
    let split = run(&chunks);
    assert_eq!(whole, split, "one chunk and chunks of {step} disagree");
    // Walk the output's messages up to AuthenticationOk: no SASL offer may list the -PLUS mechanism.
    let out = &whole.0;
    let mut at = 0;
    while out.len() - at >= 5 {
        let len = i32::from_be_bytes(out[at + 1..at + 5].try_into().unwrap()) as usize;
        let Some(message) = out.get(at..at + 1 + len) else { break };
        if message[0] == b'R' && message.len() >= 9 {
            let code = i32::from_be_bytes(message[5..9].try_into().unwrap());
            if code == 0 {
                break;
            }
            if code == 10 && well_formed_with_another(&message[9..]) {
                assert!(
                    !message[9..].split(|&b| b == 0).any(|m| m == b"SCRAM-SHA-256-PLUS"),
                    "SCRAM-SHA-256-PLUS offered to the client"
                );
            }
        }
        at += 1 + len;
    }
});
