//! The ErrorResponse parser: any body gives fields that are slices of it, never a panic; what pgwarden
//! encodes parses back to the same fields.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::error_response::{encode, parse};

fuzz_target!(|data: &[u8]| {
    let fields = parse(data);
    let _ = fields.is_fatal();
    for f in [fields.severity, fields.code, fields.message].into_iter().flatten() {
        assert!(f.len() <= data.len());
    }
    // Round trip: text without NUL bytes, split into three parts by the input.
    let text: String = String::from_utf8_lossy(data).replace('\0', "");
    let mut parts = text.splitn(3, '|');
    let (severity, code, message) =
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let encoded = encode(severity, code, message);
    let back = parse(&encoded[5..]);
    assert_eq!(back.code, Some(code.as_bytes()));
    assert_eq!(back.message, Some(message.as_bytes()));
});
