//! The startup phase before a session has a client: SSLRequest and GSSENCRequest answered `N`, CancelRequest
//! routed to the backend that owns the key, and the startup packet read under `client_login_timeout`.
//!
//! Owns: the I/O around `protocol::startup::decode` (which does none). Does not own: what happens once the
//! startup packet is known (see `session`).

use crate::protocol::startup::{self, Startup, StartupParams};
use crate::state::State;
use crate::vocab::Fatal;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// SSLRequest and GSSENCRequest each may come once, in either order, as PostgreSQL allows.
const MAX_NEGOTIATIONS: usize = 2;

/// Reads the startup packet, answering SSL/GSS negotiation and routing CancelRequests.
/// `Ok(None)`: nothing more to do (cancel forwarded, client gone). `Ok(Some((params, used)))`: the startup
/// packet is the first `used` bytes of `inbuf` (more may follow it).
pub async fn read(
    state: &State,
    client: &mut TcpStream,
    inbuf: &mut Vec<u8>,
    login_deadline: Option<Instant>,
    shutdown: &CancellationToken,
) -> Result<Option<(StartupParams, usize)>, Fatal> {
    let mut negotiations = 0;
    loop {
        match startup::decode(inbuf) {
            Err(e) => return Err(Fatal::protocol(format!("pgwarden: {e}"))),
            Ok(Some((Startup::Ssl | Startup::GssEnc, used))) => {
                negotiations += 1;
                if negotiations > MAX_NEGOTIATIONS {
                    return Err(Fatal::protocol("pgwarden: too many encryption requests"));
                }
                inbuf.drain(..used);
                if !inbuf.is_empty() {
                    // The client must wait for our answer; bytes sent before it are a violation (as in PostgreSQL).
                    return Err(Fatal::protocol("pgwarden: unencrypted data after encryption request"));
                }
                if client.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            Ok(Some((Startup::Cancel { pid, key }, _))) => {
                forward_cancel(state, pid, &key).await;
                return Ok(None);
            }
            Ok(Some((Startup::Params(params), used))) => return Ok(Some((params, used))),
            Ok(None) => {
                let timeout = async {
                    match login_deadline {
                        Some(at) => tokio::time::sleep_until(at.into()).await,
                        None => std::future::pending().await,
                    }
                };
                let mut chunk = [0u8; 1024];
                tokio::select! {
                    read = client.read(&mut chunk) => match read {
                        Ok(0) if !inbuf.is_empty() => return Err(Fatal::protocol("pgwarden: incomplete startup packet")),
                        Ok(0) | Err(_) => return Ok(None),
                        Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                    },
                    _ = timeout => return Err(Fatal::protocol("pgwarden: startup timeout (client_login_timeout)")),
                    _ = shutdown.cancelled() => return Err(Fatal::shutdown("pgwarden is shutting down")),
                }
            }
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
