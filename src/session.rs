//! One client connection from accept to close: startup negotiation, identity, upstream dial, then the relay.
//!
//! Owns: the startup phase (SSLRequest/GSSENCRequest answered `N`, CancelRequest routing, the startup packet
//! and `client_login_timeout` until the relay takes over) and the connection's tracing span.
//! Does not own: the byte relay and its state machine (see `relay`).

use crate::identity::ClientId;
use crate::protocol::error_response;
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, Startup, StartupParams};
use crate::proxy::Proxy;
use crate::relay::{self, CloseReason, RelayContext};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, info_span, warn, Instrument};

/// A refusal sent to the client as a FATAL ErrorResponse before the socket closes.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        error_response::fatal(self.code, &self.message)
    }
}

/// SSLRequest and GSSENCRequest each may come once, in either order, as PostgreSQL allows.
const MAX_NEGOTIATIONS: usize = 2;

pub async fn run(
    proxy: Arc<Proxy>,
    mut client: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let accepted = Instant::now();
    let settings = proxy.settings();
    let _ = client.set_nodelay(true);
    let login_deadline = settings.config.client_login_timeout.0.map(|d| accepted + d);
    let mut inbuf = Vec::with_capacity(256);

    let (params, used) =
        match read_startup(&proxy, &mut client, &mut inbuf, login_deadline, &shutdown).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(refusal) => {
                debug!(%peer, code = refusal.code, message = %refusal.message, "startup refused");
                let _ = client.write_all(&refusal.encode()).await;
                let _ = client.shutdown().await;
                return;
            }
        };
    let client_id = Arc::new(ClientId::from_startup(
        &settings.config.client_key,
        &params,
        proxy.pod(),
        peer.ip(),
    ));
    let guard = proxy.registry().register(client_id.clone(), peer, accepted);
    let conn = guard.conn().clone();
    let span =
        info_span!("conn", id = conn.id, client = %client_id, %peer, backend_pid = field::Empty);
    async move {
        let config = &settings.config;
        debug!(
            user = params.get("user"),
            database = params.get("database"),
            "startup"
        );
        let upstream = tokio::select! {
            dialed = settings.dialer.dial() => dialed,
            _ = shutdown.cancelled() => {
                let refusal = Refusal::new(sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down");
                let _ = client.write_all(&refusal.encode()).await;
                return;
            }
        };
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                warn!(upstream = %config.upstream, error = %e, "upstream unreachable");
                let refusal = Refusal::new(
                    sqlstate::UNABLE_TO_CONNECT,
                    format!(
                        "pgwarden: could not connect to upstream {}: {e}",
                        config.upstream
                    ),
                );
                let _ = client.write_all(&refusal.encode()).await;
                let _ = client.shutdown().await;
                return;
            }
        };
        if let Err(e) = upstream.stream.write_all(&inbuf[..used]).await {
            warn!(error = %e, "upstream closed during startup");
            let refusal = Refusal::new(
                sqlstate::UNABLE_TO_CONNECT,
                format!(
                    "pgwarden: upstream {} closed the connection: {e}",
                    config.upstream
                ),
            );
            let _ = client.write_all(&refusal.encode()).await;
            return;
        }
        let ctx = RelayContext {
            conn: &conn,
            settings: &settings,
            proxy: &proxy,
            upstream_addr: upstream.addr,
            shutdown: &shutdown,
            login_deadline,
        };
        let reason = relay::run(&ctx, &mut client, &mut upstream.stream, &inbuf[used..]).await;
        match reason {
            CloseReason::Client | CloseReason::Server | CloseReason::Abandoned => {
                debug!(reason = reason.as_str(), "closed")
            }
            _ => tracing::info!(reason = reason.as_str(), "closed by pgwarden"),
        }
        drop(guard);
    }
    .instrument(span)
    .await
}

/// Reads the startup packet, answering SSL/GSS negotiation and routing CancelRequests.
/// `Ok(None)`: nothing more to do (cancel forwarded, client gone, shutdown).
async fn read_startup(
    proxy: &Proxy,
    client: &mut TcpStream,
    inbuf: &mut Vec<u8>,
    login_deadline: Option<Instant>,
    shutdown: &CancellationToken,
) -> Result<Option<(StartupParams, usize)>, Refusal> {
    let mut negotiations = 0;
    loop {
        match startup::decode(inbuf) {
            Err(e) => {
                return Err(Refusal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("pgwarden: {e}"),
                ))
            }
            Ok(Some((Startup::Ssl | Startup::GssEnc, used))) => {
                negotiations += 1;
                if negotiations > MAX_NEGOTIATIONS {
                    return Err(Refusal::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        "pgwarden: too many encryption requests",
                    ));
                }
                inbuf.drain(..used);
                if !inbuf.is_empty() {
                    // The client must wait for our answer; bytes sent before it are a violation (as in PostgreSQL).
                    return Err(Refusal::new(
                        sqlstate::PROTOCOL_VIOLATION,
                        "pgwarden: unencrypted data after encryption request",
                    ));
                }
                if client.write_all(b"N").await.is_err() {
                    return Ok(None);
                }
            }
            Ok(Some((Startup::Cancel { pid, key }, _))) => {
                forward_cancel(proxy, pid, &key).await;
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
                        Ok(0) if !inbuf.is_empty() => {
                            return Err(Refusal::new(sqlstate::PROTOCOL_VIOLATION, "pgwarden: incomplete startup packet"));
                        }
                        Ok(0) | Err(_) => return Ok(None),
                        Ok(n) => inbuf.extend_from_slice(&chunk[..n]),
                    },
                    _ = timeout => return Err(Refusal::new(sqlstate::PROTOCOL_VIOLATION, "pgwarden: startup timeout (client_login_timeout)")),
                    _ = shutdown.cancelled() => return Err(Refusal::new(sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down")),
                }
            }
        }
    }
}

/// Forwards a CancelRequest to the backend of the session that owns the key; answers the client nothing.
async fn forward_cancel(proxy: &Proxy, pid: i32, key: &[u8]) {
    match proxy.registry().cancel_target(pid, key) {
        Some(addr) => {
            debug!(pid, %addr, "forwarding cancel request");
            if let Err(e) =
                crate::upstream::send_cancel(addr, pid, key, Duration::from_secs(5)).await
            {
                warn!(pid, %addr, error = %e, "could not forward cancel request");
            }
        }
        None => debug!(pid, "cancel request for an unknown session ignored"),
    }
}
