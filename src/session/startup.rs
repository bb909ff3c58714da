//! The startup phase before a session has a client: SSLRequest answered (`S` and a TLS handshake under
//! `client_tls: allow | require` over TCP, else `N`; a Unix-socket client is never asked for TLS), PostgreSQL 17's direct TLS, GSSENCRequest answered `N`,
//! CancelRequest routed to the backend that owns the key (also over TLS), and the startup packet read under
//! `client_login_timeout`.
//!
//! Drivers are written and tested against PostgreSQL, so here pgwarden answers exactly what PostgreSQL
//! answers: an invalid length or a truncated packet is closed without a word, an unsupported protocol gets
//! `0A000` (in the pre-3.0 format for a pre-3.0 client), a malformed packet `08P01`, data sent after an
//! encryption request `N` and then `08P01`, a second request of one kind `0A000`.
//! Owns: the I/O around `protocol::startup::decode` (which does none). Does not own: what happens once the
//! startup packet is known (see `session`).

use super::stream::ClientStream;
use crate::config::ClientTls;
use crate::protocol::error_response;
use crate::protocol::startup::{self, Startup, StartupAnswer, StartupError, StartupParams};
use crate::state::{Settings, State};
use crate::tls::{ClientTlsSetup, ALPN_POSTGRESQL};
use crate::vocab::{CloseReason, Fatal, SqlState};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How the startup phase ended without a startup packet.
#[derive(Debug)]
pub enum Refused {
    /// Close without a word (what PostgreSQL does for an invalid length or a truncated packet).
    Silently(StartupError),
    /// Send this FATAL ErrorResponse, then close.
    With(Fatal),
    /// Send this pre-3.0 error text, then close.
    OldStyle(String),
}

impl Refused {
    /// What the client is sent before the close.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            Refused::Silently(_) => Vec::new(),
            Refused::With(fatal) => fatal.encode(),
            Refused::OldStyle(text) => error_response::old_style_fatal(text),
        }
    }

    fn from_decode(e: StartupError) -> Refused {
        let message = e.to_string();
        match e.answer() {
            StartupAnswer::Close => Refused::Silently(e),
            StartupAnswer::OldStyleFatal => Refused::OldStyle(message),
            StartupAnswer::Unsupported => {
                Refused::With(Fatal::closed(CloseReason::Error, SqlState::FEATURE_NOT_SUPPORTED, message))
            }
            StartupAnswer::Violation => Refused::With(Fatal::protocol(message)),
        }
    }
}

/// Reads the startup packet, answering SSL/GSS negotiation (TLS per `client_tls`, also PostgreSQL 17's
/// direct TLS) and routing CancelRequests. `Ok(None)`: nothing more to do (cancel forwarded, client gone).
/// `Ok(Some((params, used)))`: the startup packet is the first `used` bytes of `inbuf` (more may follow).
/// A TLS handshake replaces `client` with the TLS stream.
pub async fn read(
    state: &State,
    settings: &Settings,
    client: &mut ClientStream,
    inbuf: &mut Vec<u8>,
    login_deadline: Option<Instant>,
    shutdown: &CancellationToken,
) -> Result<Option<(StartupParams, usize)>, Refused> {
    let deadline = async {
        match login_deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        read = negotiate(state, settings, client, inbuf) => read,
        _ = deadline => Err(Refused::With(Fatal::protocol("pgwarden: startup timeout (client_login_timeout)"))),
        _ = shutdown.cancelled() => Err(Refused::With(Fatal::shutdown("pgwarden is shutting down"))),
    }
}

async fn negotiate(
    state: &State,
    settings: &Settings,
    client: &mut ClientStream,
    inbuf: &mut Vec<u8>,
) -> Result<Option<(StartupParams, usize)>, Refused> {
    // TLS is negotiated on TCP only: over the Unix socket an SSLRequest gets `N`, as from PostgreSQL.
    let tls = settings.client_tls.as_deref().filter(|_| !client.is_unix());
    if let (Some(tls), ClientStream::Tcp(tcp)) = (tls, &*client) {
        // A TLS ClientHello first (record type 22) is PostgreSQL 17's direct TLS.
        let mut first = [0u8; 1];
        match tcp.peek(&mut first).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) if first[0] == TLS_HANDSHAKE => {
                if !upgrade(client, tls, true).await? {
                    return Ok(None);
                }
            }
            Ok(_) => {}
        }
    }
    let (mut ssl_done, mut gss_done) = (client.is_tls(), false);
    loop {
        match startup::decode(inbuf) {
            Err(e) => return Err(Refused::from_decode(e)),
            Ok(Some((request @ (Startup::Ssl | Startup::GssEnc), used))) => {
                let done = if request == Startup::Ssl { &mut ssl_done } else { &mut gss_done };
                if std::mem::replace(done, true) {
                    // PostgreSQL reads a second request of one kind as a startup packet of protocol 1234.x.
                    return Err(Refused::from_decode(startup::repeated_request(&request)));
                }
                inbuf.drain(..used);
                let accept = request == Startup::Ssl && tls.is_some() && !client.is_tls();
                if client.write_all(if accept { b"S" } else { b"N" }).await.is_err() {
                    return Ok(None);
                }
                if !inbuf.is_empty() {
                    // The client must wait for the answer; bytes sent before it may have been injected.
                    let what = if request == Startup::Ssl { "SSL request" } else { "GSSAPI encryption request" };
                    return Err(Refused::With(Fatal::protocol(format!("received unencrypted data after {what}"))));
                }
                if accept && !upgrade(client, tls.expect("accepted"), false).await? {
                    return Ok(None);
                }
            }
            Ok(Some((Startup::Cancel { pid, key }, _))) => {
                forward_cancel(state, pid, &key).await;
                return Ok(None);
            }
            Ok(Some((Startup::Params(_), _)))
                if settings.config.client_tls == ClientTls::Require && !client.is_tls() && !client.is_unix() =>
            {
                return Err(Refused::With(Fatal::closed(
                    CloseReason::Error,
                    SqlState::INVALID_AUTHORIZATION,
                    "pgwarden: client_tls is require: this connection is not encrypted (connect with sslmode=require)",
                )));
            }
            Ok(Some((Startup::Params(params), used))) => return Ok(Some((params, used))),
            Ok(None) => {
                let mut chunk = [0u8; 1024];
                match client.read(&mut chunk).await {
                    // A truncated packet: PostgreSQL logs "incomplete startup packet" and closes.
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                }
            }
        }
    }
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Terminates TLS on the client connection. `direct`: no SSLRequest came first, so the client must have
/// asked for ALPN `postgresql` (as PostgreSQL 17 requires). `Ok(false)`: the handshake failed (the client is
/// gone or spoke no TLS pgwarden accepts; logged).
async fn upgrade(client: &mut ClientStream, tls: &ClientTlsSetup, direct: bool) -> Result<bool, Refused> {
    let ClientStream::Tcp(tcp) = std::mem::replace(client, ClientStream::Gone) else {
        unreachable!("TLS is only negotiated on TCP connections")
    };
    match tls.acceptor.accept(tcp).await {
        Ok(stream) => {
            let alpn_ok = stream.get_ref().1.alpn_protocol() == Some(ALPN_POSTGRESQL);
            *client = ClientStream::Tls(Box::new(stream));
            if direct && !alpn_ok {
                return Err(Refused::With(Fatal::protocol(
                    "received direct SSL connection request without ALPN protocol negotiation extension",
                )));
            }
            Ok(true)
        }
        Err(e) => {
            debug!(error = %e, direct, "client TLS handshake failed");
            Ok(false)
        }
    }
}

/// Forwards a CancelRequest to the backend of the session that owns the key; answers the client nothing.
async fn forward_cancel(state: &State, pid: i32, key: &[u8]) {
    match state.registry.cancel_target(pid, key) {
        Some(addr) => {
            debug!(pid, %addr, "forwarding cancel request");
            if let Err(e) = super::upstream::send_cancel(addr, pid, key, Duration::from_secs(5)).await {
                warn!(pid, %addr, error = %e, "could not forward cancel request");
            }
        }
        None => debug!(pid, "cancel request for an unknown session ignored"),
    }
}
