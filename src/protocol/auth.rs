//! The server's side of the authentication exchange, filtered so channel binding is never offered: the
//! mechanism `SCRAM-SHA-256-PLUS` is taken out of AuthenticationSASL. No I/O.
//!
//! Channel binding ties SCRAM to the TLS connection the client sees. Through a proxy that ends or starts TLS
//! the server's TLS connection is not the client's, so `-PLUS` can never succeed; worse, libpq refuses a
//! server that offers it over a plaintext link ("server offered SCRAM-SHA-256-PLUS authentication over a
//! non-SSL connection"). Without it, the client picks plain `SCRAM-SHA-256`, which passes through intact.
//!
//! One case cannot work through any proxy: a client on TLS to pgwarden, whose libpq (with the default
//! `channel_binding=prefer`) then tells the server "I support channel binding but think you do not", while
//! the server, itself on TLS to pgwarden, does support it: it refuses the login ("SCRAM channel binding
//! negotiation error"), and the proof the client signed covers that flag, so it cannot be rewritten. The
//! filter replaces that error with one that names the fix (`channel_binding=disable` in the client's
//! connection string).
//!
//! [`AuthFilter`] sees the server's bytes from the start of the session until AuthenticationOk. It holds back
//! an incomplete message (bounded by [`MAX_AUTH_MESSAGE`]) so a message split across reads is rewritten whole,
//! and lets everything from AuthenticationOk on through unchanged.

use thiserror::Error;

/// The mechanism channel binding needs; never offered to clients.
pub const SCRAM_PLUS: &[u8] = b"SCRAM-SHA-256-PLUS";
/// Longest server message before AuthenticationOk pgwarden holds (GSS tokens and errors are far smaller).
pub const MAX_AUTH_MESSAGE: usize = 64 * 1024;

const AUTHENTICATION: u8 = b'R';
const ERROR_RESPONSE: u8 = b'E';
/// The routine (field `R`, never localized) that refuses a client's channel binding flag.
const CBIND_ROUTINE: &[u8] = b"read_client_first_message";
/// The refusal for a client on TLS to pgwarden (libpq's default `channel_binding=prefer` sends the flag).
const CBIND_MESSAGE_TLS: &str = "pgwarden: SCRAM channel binding cannot pass a proxy: this client said it supports \
channel binding (libpq's channel_binding=prefer over TLS, node-postgres' enableChannelBinding), and the database, \
on TLS to pgwarden, refuses that login. Set channel_binding=disable in the client's connection string (or \
connect to pgwarden without TLS: its link to the database stays encrypted)";
/// The refusal for a client on plaintext to pgwarden, which sent the flag anyway (node-postgres'
/// `enableChannelBinding: true` does, whatever the link).
const CBIND_MESSAGE_PLAIN: &str = "pgwarden: SCRAM channel binding cannot pass a proxy: this client said it \
supports channel binding although its connection to pgwarden is not encrypted (node-postgres sends that with \
enableChannelBinding: true whatever the link), and the database, on TLS to pgwarden, refuses that login. Turn \
channel binding off in the client (node-postgres: enableChannelBinding: false; libpq: channel_binding=disable)";
const AUTH_OK: i32 = 0;
const AUTH_SASL: i32 = 10;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthFilterError {
    #[error("invalid message length {len} for message type {tag:?} during authentication")]
    BadLength { tag: char, len: i64 },
}

/// Rewrites the server's authentication messages; see the module doc.
#[derive(Debug, Default)]
pub struct AuthFilter {
    held: Vec<u8>,
    done: bool,
    /// The client is on TLS to pgwarden (which of the two refusals applies to it).
    client_on_tls: bool,
    /// A channel binding refusal was replaced and not yet reported.
    refused: bool,
}

impl AuthFilter {
    /// A filter for a client on TLS to pgwarden (`client_on_tls`) or on plaintext.
    pub fn new(client_on_tls: bool) -> AuthFilter {
        AuthFilter { client_on_tls, ..AuthFilter::default() }
    }

    /// True once after the server's channel binding refusal was replaced (for the caller's log line).
    pub fn take_refusal(&mut self) -> bool {
        std::mem::take(&mut self.refused)
    }

    /// True once AuthenticationOk has passed: the filter has nothing more to do.
    pub fn done(&self) -> bool {
        self.done
    }

    /// Appends to `out` what of `input` can go to the client now: every complete message (AuthenticationSASL
    /// without `SCRAM-SHA-256-PLUS`), and after AuthenticationOk everything unchanged.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), AuthFilterError> {
        if self.done {
            out.extend_from_slice(input);
            return Ok(());
        }
        self.held.extend_from_slice(input);
        let mut at = 0;
        while !self.done {
            let rest = &self.held[at..];
            if rest.len() < 5 {
                break;
            }
            let tag = rest[0];
            let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]);
            if len < 4 || len as usize > MAX_AUTH_MESSAGE {
                return Err(AuthFilterError::BadLength { tag: tag as char, len: len.into() });
            }
            let total = 1 + len as usize;
            if rest.len() < total {
                break;
            }
            let message = &rest[..total];
            let body = &message[5..];
            match auth_code(tag, body) {
                Some(AUTH_SASL) => out.extend_from_slice(&without_channel_binding(body)),
                Some(AUTH_OK) => {
                    out.extend_from_slice(message);
                    self.done = true;
                }
                _ if tag == ERROR_RESPONSE && is_channel_binding_refusal(body) => {
                    let message = if self.client_on_tls { CBIND_MESSAGE_TLS } else { CBIND_MESSAGE_PLAIN };
                    out.extend(crate::protocol::error_response::fatal("28000", message));
                    self.refused = true;
                }
                _ => out.extend_from_slice(message),
            }
            at += total;
        }
        if self.done {
            out.extend_from_slice(&self.held[at..]);
            self.held = Vec::new();
        } else {
            self.held.drain(..at);
        }
        Ok(())
    }
}

/// The server refused the client's "supports channel binding, thinks the server does not" flag.
fn is_channel_binding_refusal(body: &[u8]) -> bool {
    let mut rest = body;
    let (mut code, mut routine) = (None, None);
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        match field {
            b'C' => code = Some(&tail[..end]),
            b'R' => routine = Some(&tail[..end]),
            _ => {}
        }
        rest = tail.get(end + 1..).unwrap_or(&[]);
    }
    // PostgreSQL 15 sends 28000 here, later versions 08P01: the routine is what names the case.
    matches!(code, Some(b"08P01") | Some(b"28000")) && routine == Some(CBIND_ROUTINE)
}

fn auth_code(tag: u8, body: &[u8]) -> Option<i32> {
    if tag != AUTHENTICATION || body.len() < 4 {
        return None;
    }
    Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]))
}

/// The whole AuthenticationSASL message for `body` (code 10, then NUL-terminated mechanism names, then a
/// NUL) with `SCRAM-SHA-256-PLUS` left out. A body that does not parse is passed on as it was.
fn without_channel_binding(body: &[u8]) -> Vec<u8> {
    let mut kept = Vec::with_capacity(body.len());
    kept.extend_from_slice(&body[..4]);
    let mut rest = &body[4..];
    let mut parsed = false;
    while let Some(nul) = rest.iter().position(|&b| b == 0) {
        let name = &rest[..nul];
        rest = &rest[nul + 1..];
        if name.is_empty() {
            parsed = rest.is_empty();
            break;
        }
        if name != SCRAM_PLUS {
            kept.extend_from_slice(name);
            kept.push(0);
        }
    }
    kept.push(0);
    // Nothing left but PLUS would leave the client no mechanism: pass the server's list on unchanged.
    let body = if parsed && kept.len() > 5 { &kept[..] } else { body };
    crate::protocol::scanner::encode(AUTHENTICATION, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scanner::encode;

    fn sasl(mechanisms: &[&[u8]]) -> Vec<u8> {
        let mut body = AUTH_SASL.to_be_bytes().to_vec();
        for m in mechanisms {
            body.extend_from_slice(m);
            body.push(0);
        }
        body.push(0);
        encode(b'R', &body)
    }

    fn stream() -> Vec<u8> {
        let mut s = sasl(&[b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]);
        s.extend(encode(b'R', &[0, 0, 0, 11, b'r', b'=', b'x']));
        s.extend(encode(b'R', &[0, 0, 0, 12, b'v', b'=', b'y']));
        s.extend(encode(b'R', &AUTH_OK.to_be_bytes()));
        s.extend(encode(b'S', b"server_version\x0015\0"));
        s.extend(encode(b'Z', b"I"));
        s
    }

    fn expected() -> Vec<u8> {
        let mut s = sasl(&[b"SCRAM-SHA-256"]);
        s.extend_from_slice(&stream()[sasl(&[b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]).len()..]);
        s
    }

    #[test]
    fn plus_is_removed_and_the_rest_passes_unchanged() {
        let mut f = AuthFilter::default();
        let mut out = Vec::new();
        f.push(&stream(), &mut out).unwrap();
        assert_eq!(out, expected());
        assert!(f.done());
        let mut more = Vec::new();
        f.push(b"anything", &mut more).unwrap();
        assert_eq!(more, b"anything");
    }

    #[test]
    fn every_split_gives_the_same_bytes() {
        let s = stream();
        for cut in 0..=s.len() {
            let mut f = AuthFilter::default();
            let mut out = Vec::new();
            f.push(&s[..cut], &mut out).unwrap();
            f.push(&s[cut..], &mut out).unwrap();
            assert_eq!(out, expected(), "split at {cut}");
        }
        let mut f = AuthFilter::default();
        let mut out = Vec::new();
        for b in s.chunks(1) {
            f.push(b, &mut out).unwrap();
        }
        assert_eq!(out, expected());
    }

    #[test]
    fn other_lists_and_errors() {
        // Without PLUS: unchanged. Only PLUS: unchanged (nothing else to offer).
        for list in [&[&b"SCRAM-SHA-256"[..]][..], &[b"SCRAM-SHA-256-PLUS"]] {
            let mut out = Vec::new();
            AuthFilter::default().push(&sasl(list), &mut out).unwrap();
            assert_eq!(out, sasl(list));
        }
        // An error during authentication passes whole; the filter stays on.
        let e = crate::protocol::error_response::fatal("28P01", "password authentication failed");
        let mut f = AuthFilter::default();
        let mut out = Vec::new();
        f.push(&e, &mut out).unwrap();
        assert_eq!(out, e);
        assert!(!f.done());
        // The server's refusal of a client's channel binding flag is replaced by one that names the fix.
        let refusal = encode(
            b'E',
            b"SFATAL\0VFATAL\0C08P01\0MSCRAM channel binding negotiation error\0Rread_client_first_message\0\0",
        );
        for on_tls in [true, false] {
            let mut out = Vec::new();
            let mut f = AuthFilter::new(on_tls);
            f.push(&refusal, &mut out).unwrap();
            assert!(f.take_refusal() && !f.take_refusal(), "reported once");
            let fields = crate::protocol::error_response::parse(&out[5..]);
            assert_eq!(fields.code, Some(&b"28000"[..]), "invalid_authorization_specification, as PostgreSQL 15");
            let message = String::from_utf8_lossy(fields.message.unwrap()).into_owned();
            assert!(message.contains("channel_binding=disable"), "{message}");
            // A client already on plaintext is not told to connect without TLS.
            assert_eq!(message.contains("without TLS"), on_tls, "{message}");
            assert_eq!(message.contains("enableChannelBinding: false"), !on_tls, "{message}");
        }
        // Lengths are checked before anything is held.
        for len in [3i32, -1, (MAX_AUTH_MESSAGE + 1) as i32] {
            let mut bad = vec![b'R'];
            bad.extend_from_slice(&len.to_be_bytes());
            assert!(AuthFilter::default().push(&bad, &mut Vec::new()).is_err(), "{len}");
        }
    }
}
