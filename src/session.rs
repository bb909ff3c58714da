//! One client connection from accept to close: startup negotiation, identity, upstream dial, then the relay.
//!
//! Owns: the startup phase (SSLRequest/GSSENCRequest answered `N`, CancelRequest routing, the startup packet
//! and `client_login_timeout` until the relay takes over) and the connection's tracing span.
//! Does not own: the byte relay and its state machine (see `relay`).

use crate::clients::{Admission, Caps, ClientEntry, RefuseReason, Slot};
use crate::config::{Config, OnLimit, Policy};
use crate::identity::ClientId;
use crate::protocol::error_response;
use crate::protocol::sqlstate;
use crate::protocol::startup::{self, Startup, StartupParams};
use crate::proxy::Proxy;
use crate::registry::{Conn, ConnState};
use crate::relay::{self, CloseReason, RelayContext};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, field, info, info_span, warn, Instrument};

/// A refusal sent to the client as a FATAL ErrorResponse before the socket closes.
#[derive(Debug)]
pub struct Refusal {
    pub code: &'static str,
    pub message: String,
}

impl Refusal {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }

    pub fn encode(&self) -> Vec<u8> {
        error_response::fatal(self.code, &self.message)
    }
}

/// SSLRequest and GSSENCRequest each may come once, in either order, as PostgreSQL allows.
const MAX_NEGOTIATIONS: usize = 2;

pub async fn run(proxy: Arc<Proxy>, mut client: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let accepted = Instant::now();
    let settings = proxy.settings();
    let _ = client.set_nodelay(true);
    let login_timeout = settings.config.client_login_timeout.0;
    let mut inbuf = Vec::with_capacity(256);

    let (params, used) =
        match read_startup(&proxy, &mut client, &mut inbuf, login_timeout.map(|d| accepted + d), &shutdown).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(refusal) => {
                debug!(%peer, code = refusal.code, message = %refusal.message, "startup refused");
                let _ = client.write_all(&refusal.encode()).await;
                let _ = client.shutdown().await;
                return;
            }
        };
    let client_id = Arc::new(ClientId::from_startup(&settings.config.client_key, &params, proxy.pod(), peer.ip()));
    let guard = proxy.registry().register(client_id.clone(), peer, accepted);
    let conn = guard.conn().clone();
    let span =
        info_span!("conn", id = conn.id, client = %client_id, %peer, backend_pid = field::Empty, pod = field::Empty);
    if let Some(pod) = &proxy.pod().pod {
        span.record("pod", pod.as_str());
    }
    async move {
        let config = &settings.config;
        debug!(user = params.get("user"), database = params.get("database"), "startup");
        let (policy, rule) = crate::policy::effective(config, &client_id);
        let started_wait = Instant::now();
        let slot = match admit(&proxy, &mut client, &conn, &policy, rule.as_deref(), &shutdown).await {
            Ok(slot) => slot,
            Err(Some(refusal)) => {
                let _ = client.write_all(&refusal.encode()).await;
                let _ = client.shutdown().await;
                return;
            }
            Err(None) => return,
        };
        // Time spent waiting for a slot does not count against client_login_timeout.
        let waited = started_wait.elapsed();
        let mut admitted =
            Admitted { _slot: slot, entry: proxy.clients().entry(&client_id), reason: CloseReason::Error };
        let dial_started = Instant::now();
        let upstream = tokio::select! {
            dialed = settings.dialer.dial() => {
                proxy.metrics().observe_connect(dial_started.elapsed(), dialed.is_ok());
                dialed
            }
            _ = shutdown.cancelled() => {
                let refusal = Refusal::new(sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down");
                let _ = client.write_all(&refusal.encode()).await;
                admitted.reason = CloseReason::Shutdown;
                return;
            }
        };
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(e) => {
                warn!(upstream = %config.upstream, error = %e, "upstream unreachable");
                let refusal = Refusal::new(
                    sqlstate::UNABLE_TO_CONNECT,
                    format!("pgwarden: could not connect to upstream {}: {e}", config.upstream),
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
                format!("pgwarden: upstream {} closed the connection: {e}", config.upstream),
            );
            let _ = client.write_all(&refusal.encode()).await;
            return;
        }
        let ctx = RelayContext {
            conn: &conn,
            settings: &settings,
            proxy: &proxy,
            entry: &admitted.entry,
            policy,
            upstream_addr: upstream.addr,
            shutdown: &shutdown,
            login_deadline: login_timeout.map(|d| accepted + d + waited),
        };
        let reason = relay::run(&ctx, &mut client, &mut upstream.stream, &inbuf[used..]).await;
        admitted.reason = reason;
        conn.mark_closed(Instant::now(), reason.as_str());
        proxy.session_closed(&conn);
        match reason {
            CloseReason::Client | CloseReason::Server | CloseReason::Abandoned => {
                debug!(reason = reason.as_str(), "closed")
            }
            _ => info!(reason = reason.as_str(), "closed by pgwarden"),
        }
        drop(admitted);
        drop(guard);
    }
    .instrument(span)
    .await
}

/// An admitted connection: its slot, and the close it records in its client's counters when dropped
/// (`error` unless the session sets another reason), so opened and closed balance on every path.
struct Admitted {
    _slot: Slot,
    entry: Arc<ClientEntry>,
    reason: CloseReason,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.entry.counters.closed[self.reason as usize].fetch_add(1, Relaxed);
    }
}

/// How long refusal log lines of one client are apart at least.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// Takes a cap slot for the connection, waiting in the FIFO queue under `on_limit: wait`.
/// `Err(Some)`: refuse with this error; `Err(None)`: the client left while waiting.
async fn admit(
    proxy: &Proxy,
    client: &mut TcpStream,
    conn: &Conn,
    policy: &Policy,
    rule: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<Slot, Option<Refusal>> {
    let config = proxy.settings().config.clone();
    let caps = Caps {
        client: policy.max_connections,
        total: config.max_total_connections,
        wait: policy.on_limit == OnLimit::Wait,
        enforce: config.enforce,
    };
    let clients = proxy.clients();
    let describe = |reason: RefuseReason| refusal_message(&conn.client, reason, policy, rule, &config);
    let log = |reason: RefuseReason, would: bool| {
        let entry = clients.entry(&conn.client);
        if let Some(suppressed) = entry.refusal_log_due(Instant::now(), REFUSAL_LOG_EVERY) {
            let message = describe(reason);
            if would {
                warn!(reason = reason.as_str(), rule, suppressed, %message, "report-only: would refuse connection");
            } else {
                warn!(reason = reason.as_str(), rule, suppressed, %message, "connection refused");
            }
        }
    };
    match clients.admit(&conn.client, caps) {
        Admission::Granted { slot, would_refuse } => {
            if let Some(reason) = would_refuse {
                log(reason, true);
            }
            Ok(slot)
        }
        Admission::Refused(reason) => {
            log(reason, false);
            Err(Some(Refusal::new(sqlstate::TOO_MANY_CONNECTIONS, describe(reason))))
        }
        Admission::Queued(mut ticket) => {
            conn.set_state(ConnState::Waiting, Instant::now());
            let timeout = async {
                match policy.wait_timeout.0 {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                slot = ticket.granted() => {
                    conn.set_state(ConnState::Startup, Instant::now());
                    Ok(slot)
                }
                _ = timeout => {
                    clients.count_refusal(&conn.client, RefuseReason::WaitTimeout);
                    log(RefuseReason::WaitTimeout, false);
                    Err(Some(Refusal::new(sqlstate::TOO_MANY_CONNECTIONS, describe(RefuseReason::WaitTimeout))))
                }
                _ = client_closed(client) => {
                    debug!("client left while waiting for a slot");
                    Err(None)
                }
                _ = shutdown.cancelled() => Err(Some(Refusal::new(sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down"))),
            }
        }
    }
}

/// The 53300 message: names the client, the rule and the limit.
fn refusal_message(
    client: &ClientId,
    reason: RefuseReason,
    policy: &Policy,
    rule: Option<&str>,
    config: &Config,
) -> String {
    let rule = match rule {
        Some(name) => format!("rule \"{name}\""),
        None => "defaults".to_string(),
    };
    match reason {
        RefuseReason::ClientLimit => format!(
            "pgwarden: too many connections for client \"{client}\" (max_connections {} from {rule})",
            policy.max_connections
        ),
        RefuseReason::TotalLimit => format!(
            "pgwarden: too many connections in total (max_total_connections {}); client \"{client}\" refused",
            config.max_total_connections
        ),
        RefuseReason::WaitTimeout => format!(
            "pgwarden: client \"{client}\" waited {} for a connection slot (max_connections {} from {rule})",
            policy.wait_timeout, policy.max_connections
        ),
    }
}

/// Resolves when the client closes its socket. Bytes it sends meanwhile stay unread (only peeked).
async fn client_closed(client: &TcpStream) {
    let mut probe = [0u8; 1];
    match client.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
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
            Err(e) => return Err(Refusal::new(sqlstate::PROTOCOL_VIOLATION, format!("pgwarden: {e}"))),
            Ok(Some((Startup::Ssl | Startup::GssEnc, used))) => {
                negotiations += 1;
                if negotiations > MAX_NEGOTIATIONS {
                    return Err(Refusal::new(sqlstate::PROTOCOL_VIOLATION, "pgwarden: too many encryption requests"));
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
            if let Err(e) = crate::upstream::send_cancel(addr, pid, key, Duration::from_secs(5)).await {
                warn!(pid, %addr, error = %e, "could not forward cancel request");
            }
        }
        None => debug!(pid, "cancel request for an unknown session ignored"),
    }
}
