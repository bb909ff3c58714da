use super::*;

fn startup_message(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut out = encode_startup(params);
    out[4..8].copy_from_slice(&((3u32 << 16) | minor as u32).to_be_bytes());
    out
}

/// Every strict prefix of a valid packet needs more bytes; the whole packet decodes.
fn assert_prefixes_need_more(packet: &[u8]) {
    for cut in 0..packet.len() {
        assert_eq!(decode(&packet[..cut]), Ok(None), "prefix of {cut} bytes");
    }
}

#[test]
fn ssl_and_gssenc_requests() {
    assert_prefixes_need_more(&SSL_REQUEST_PACKET);
    assert_eq!(decode(&SSL_REQUEST_PACKET), Ok(Some((Startup::Ssl, 8))));
    let gss = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    assert_prefixes_need_more(&gss);
    assert_eq!(decode(&gss), Ok(Some((Startup::GssEnc, 8))));
}

#[test]
fn startup_message_with_params_and_trailing_bytes() {
    let mut packet = startup_message(0, &[("user", "alice"), ("database", "db"), ("application_name", "api")]);
    assert_prefixes_need_more(&packet);
    let len = packet.len();
    packet.extend_from_slice(b"Qnext");
    let (decoded, used) = decode(&packet).unwrap().unwrap();
    assert_eq!(used, len);
    let Startup::Params(p) = decoded else { panic!("not params") };
    assert_eq!((p.major, p.minor), (3, 0));
    assert_eq!(p.get("user"), Some("alice"));
    assert_eq!(p.get("application_name"), Some("api"));
    assert_eq!(p.get("options"), None);
}

#[test]
fn protocol_3_2_startup() {
    let packet = startup_message(2, &[("user", "bob"), ("_pq_.x", "1")]);
    let Startup::Params(p) = decode(&packet).unwrap().unwrap().0 else { panic!() };
    assert_eq!((p.major, p.minor), (3, 2));
}

#[test]
fn cancel_requests_3_0_and_3_2_keys() {
    for key_len in [4usize, 32, 256] {
        let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
        let packet = encode_cancel(4242, &key);
        assert_eq!(packet.len(), 12 + key_len);
        assert_prefixes_need_more(&packet);
        assert_eq!(decode(&packet), Ok(Some((Startup::Cancel { pid: 4242, key }, 12 + key_len))));
    }
}

#[test]
fn cancel_request_bad_lengths() {
    for key_len in [0usize, 3, 257] {
        let packet = encode_cancel(1, &vec![7; key_len]);
        assert!(matches!(decode(&packet), Err(StartupError::BadCancelLength { .. })), "key {key_len}");
        assert_eq!(decode(&packet).unwrap_err().answer(), StartupAnswer::Close);
    }
}

#[test]
fn bad_lengths_rejected_after_four_bytes() {
    for len in [-1i32, 0, 4, 7, 10_001, i32::MAX] {
        let bytes = len.to_be_bytes();
        assert_eq!(decode(&bytes), Err(StartupError::BadLength(len.into())));
        assert_eq!(StartupError::BadLength(len.into()).answer(), StartupAnswer::Close, "as PostgreSQL: no answer");
    }
}

#[test]
fn unknown_codes_and_http() {
    assert!(matches!(decode(b"GET / HTTP/1.1\r\n"), Err(StartupError::BadLength(_))));
    let proto2 = [0, 0, 0, 8, 0, 2, 0, 0];
    assert_eq!(decode(&proto2), Err(StartupError::UnknownCode { major: 2, minor: 0 }));
    assert_eq!(decode(&proto2).unwrap_err().answer(), StartupAnswer::OldStyleFatal);
    let proto4 = [0, 0, 0, 8, 0, 4, 0, 0];
    assert_eq!(decode(&proto4).unwrap_err().answer(), StartupAnswer::Unsupported);
    // PostgreSQL does not check an SSLRequest's length.
    let ssl_long = [0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f, 0];
    assert_eq!(decode(&ssl_long), Ok(Some((Startup::Ssl, 9))));
    assert_eq!(
        repeated_request(&Startup::Ssl).to_string(),
        "unsupported frontend protocol 1234.5679: server supports 3.0 to 3.2"
    );
}

#[test]
fn malformed_params() {
    // Missing final terminator.
    let mut p = startup_message(0, &[("user", "a")]);
    p.pop();
    let len = (p.len() as i32).to_be_bytes();
    p[..4].copy_from_slice(&len);
    assert!(matches!(decode(&p), Err(StartupError::Malformed(_))));
    // A name without a value.
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0");
    let mut q = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    q.extend_from_slice(&body);
    assert!(matches!(decode(&q), Err(StartupError::Malformed(_))));
}
