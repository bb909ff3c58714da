//! The contents of the few messages pgwarden reads, from message bodies the scanner captured.
//!
//! Bodies may be truncated (the scanner keeps a prefix); every reader here returns what the prefix holds and
//! never panics.

/// Frontend message tags the relay tracks.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const EXECUTE: u8 = b'E';
    pub const SYNC: u8 = b'S';
    pub const CLOSE: u8 = b'C';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const TERMINATE: u8 = b'X';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
}

/// Backend message tags the relay tracks.
pub mod backend {
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const COPY_IN_RESPONSE: u8 = b'G';
}

/// Transaction status from ReadyForQuery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    Idle,
    InTransaction,
    Failed,
}

impl TxStatus {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'I' => Some(Self::Idle),
            b'T' => Some(Self::InTransaction),
            b'E' => Some(Self::Failed),
            _ => None,
        }
    }
}

/// Splits a NUL-terminated string off the front; a truncated body yields everything left.
pub fn cstr(body: &[u8]) -> (&[u8], &[u8]) {
    split_at_nul(body, memchr::memchr(0, body))
}

/// [`cstr`] for a portal or statement name: a few bytes (PostgreSQL truncates names to 63), whose NUL a byte
/// loop finds before `memchr` has set up (two names per Bind, issue 31).
pub fn name(body: &[u8]) -> (&[u8], &[u8]) {
    split_at_nul(body, body.iter().position(|&b| b == 0))
}

fn split_at_nul(body: &[u8], nul: Option<usize>) -> (&[u8], &[u8]) {
    match nul {
        Some(n) => (&body[..n], &body[n + 1..]),
        None => (body, &[]),
    }
}

/// Parse: statement name and query text.
pub fn parse_message(body: &[u8]) -> (&[u8], &[u8]) {
    let (name, rest) = name(body);
    (name, cstr(rest).0)
}

/// Bind: portal name and statement name.
pub fn bind_message(body: &[u8]) -> (&[u8], &[u8]) {
    let (portal, rest) = name(body);
    (portal, name(rest).0)
}

/// Close: `S` (statement) or `P` (portal), and the name.
pub fn close_message(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&kind, rest) = body.split_first()?;
    Some((kind, name(rest).0))
}

/// BackendKeyData: process id and secret key (4 bytes in 3.0, variable in 3.2).
pub fn backend_key_data(body: &[u8]) -> Option<(i32, &[u8])> {
    if body.len() < 8 {
        return None;
    }
    Some((i32::from_be_bytes([body[0], body[1], body[2], body[3]]), &body[4..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_handle_every_prefix() {
        let parse = b"s1\0select $1\0\0\0";
        assert_eq!(parse_message(parse), (&b"s1"[..], &b"select $1"[..]));
        let bind = b"\0s1\0\0\0\0\0";
        assert_eq!(bind_message(bind), (&b""[..], &b"s1"[..]));
        assert_eq!(close_message(b"Ss1\0"), Some((b'S', &b"s1"[..])));
        for cut in 0..parse.len() {
            let _ = parse_message(&parse[..cut]);
            let _ = bind_message(&bind[..cut.min(bind.len())]);
            let _ = close_message(&parse[..cut]);
        }
        assert_eq!(parse_message(b"s1\0sel"), (&b"s1"[..], &b"sel"[..]));
    }

    #[test]
    fn backend_key_data_3_0_and_3_2() {
        let mut body = 77i32.to_be_bytes().to_vec();
        body.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(backend_key_data(&body), Some((77, &[1u8, 2, 3, 4][..])));
        body.extend_from_slice(&[9; 28]);
        assert_eq!(backend_key_data(&body).unwrap().1.len(), 32);
        for cut in 0..8 {
            assert_eq!(backend_key_data(&body[..cut]), None);
        }
    }

    #[test]
    fn tx_status() {
        assert_eq!(TxStatus::from_byte(b'I'), Some(TxStatus::Idle));
        assert_eq!(TxStatus::from_byte(b'T'), Some(TxStatus::InTransaction));
        assert_eq!(TxStatus::from_byte(b'E'), Some(TxStatus::Failed));
        assert_eq!(TxStatus::from_byte(b'x'), None);
    }
}
