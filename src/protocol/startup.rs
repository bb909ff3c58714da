//! Decoding of the first packet a client sends (untagged: `Int32 length`, `Int32 code`, body).
//!
//! The decoder validates the length before it looks at anything else, so an absurd length is refused as soon
//! as four bytes have arrived and nothing is ever allocated from a length the client chose. Each error says
//! what PostgreSQL answers to it ([`StartupError::answer`]): drivers are tested against PostgreSQL, so in
//! the startup phase pgwarden answers exactly what it does.

use thiserror::Error;

/// Smallest legal startup packet: length and code.
pub const MIN_LEN: usize = 8;
/// PostgreSQL's own limit for a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_LEN: usize = 10_000;
/// Longest cancel key protocol 3.2 allows.
pub const MAX_CANCEL_KEY: usize = 256;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// What a client's untagged packet asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest: the client wants TLS.
    Ssl,
    /// GSSENCRequest: answered `N` (pgwarden has no GSSAPI).
    GssEnc,
    /// CancelRequest for the backend `pid` with its secret `key` (4 bytes in 3.0, up to 256 in 3.2).
    Cancel { pid: i32, key: Vec<u8> },
    /// StartupMessage of protocol 3.x with its parameters in order.
    Params(StartupParams),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet ({0}; must be between {MIN_LEN} and {MAX_LEN})")]
    BadLength(i64),
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnknownCode { major: u16, minor: u16 },
    #[error("invalid length of query cancel packet ({len})")]
    BadCancelLength { len: usize },
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Malformed(&'static str),
}

/// What PostgreSQL answers to a bad startup packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupAnswer {
    /// Nothing: it logs the problem and closes the connection.
    Close,
    /// A FATAL ErrorResponse `0A000` (feature not supported), then the close.
    Unsupported,
    /// A FATAL ErrorResponse `08P01` (protocol violation), then the close.
    Violation,
    /// Protocol 1.x and 2.x clients: the pre-3.0 error format (`E`, the text, NUL), then the close.
    OldStyleFatal,
}

impl StartupError {
    pub fn answer(&self) -> StartupAnswer {
        match self {
            StartupError::BadLength(_) | StartupError::BadCancelLength { .. } => StartupAnswer::Close,
            StartupError::UnknownCode { major, .. } if *major < 3 => StartupAnswer::OldStyleFatal,
            StartupError::UnknownCode { .. } => StartupAnswer::Unsupported,
            StartupError::Malformed(_) => StartupAnswer::Violation,
        }
    }
}

/// The request codes of SSLRequest and GSSENCRequest seen as protocol versions: what PostgreSQL names a
/// second request of the same kind (it answers it as an unsupported protocol).
pub fn repeated_request(request: &Startup) -> StartupError {
    let code = if matches!(request, Startup::GssEnc) { GSSENC_REQUEST } else { SSL_REQUEST };
    StartupError::UnknownCode { major: (code >> 16) as u16, minor: code as u16 }
}

/// Decodes one startup packet from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, or the packet and how many bytes it used. Errors are
/// reported as early as the bytes allow (a bad length after 4 bytes, a bad code after 8).
pub fn decode(buf: &[u8]) -> Result<Option<(Startup, usize)>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if len < MIN_LEN as i32 || len > MAX_LEN as i32 {
        return Err(StartupError::BadLength(len.into()));
    }
    let len = len as usize;
    if buf.len() < 8 {
        return Ok(None);
    }
    let code = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    match code {
        // PostgreSQL does not check the length of these two.
        SSL_REQUEST | GSSENC_REQUEST => {}
        CANCEL_REQUEST if !(16..=12 + MAX_CANCEL_KEY).contains(&len) => {
            return Err(StartupError::BadCancelLength { len })
        }
        CANCEL_REQUEST => {}
        _ if code >> 16 == 3 => {}
        _ => return Err(StartupError::UnknownCode { major: (code >> 16) as u16, minor: code as u16 }),
    }
    if buf.len() < len {
        return Ok(None);
    }
    let body = &buf[8..len];
    let packet = match code {
        SSL_REQUEST => Startup::Ssl,
        GSSENC_REQUEST => Startup::GssEnc,
        CANCEL_REQUEST => {
            Startup::Cancel { pid: i32::from_be_bytes([body[0], body[1], body[2], body[3]]), key: body[4..].to_vec() }
        }
        _ => Startup::Params(StartupParams {
            major: (code >> 16) as u16,
            minor: code as u16,
            params: parse_params(body)?,
        }),
    };
    Ok(Some((packet, len)))
}

/// Parses `name\0value\0 ... \0`.
fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (name, rest) = cstr(body).ok_or(StartupError::Malformed("missing terminator"))?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(StartupError::Malformed("bytes after the terminator"));
            }
            return Ok(params);
        }
        let (value, rest) = cstr(rest).ok_or(StartupError::Malformed("parameter without a value"))?;
        params.push((String::from_utf8_lossy(name).into_owned(), String::from_utf8_lossy(value).into_owned()));
        body = rest;
    }
}

fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Encodes a protocol 3.0 StartupMessage with `params` (clients of pgwarden's own: the demo, the tests).
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut out = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Encodes a CancelRequest for `pid` and `key` (what pgwarden sends upstream when a client vanishes).
pub fn encode_cancel(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + key.len());
    out.extend_from_slice(&((12 + key.len()) as i32).to_be_bytes());
    out.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The SSLRequest packet pgwarden sends to the upstream.
pub const SSL_REQUEST_PACKET: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

#[cfg(test)]
mod tests;
