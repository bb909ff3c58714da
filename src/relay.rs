//! The relay: bytes flow both ways unchanged while the scanner and tracker watch message headers.
//!
//! One task per session reads whichever side is ready into one buffer, feeds the bytes to that direction's
//! scanner, writes them to the other side whole, then publishes the state the tracker derives. Timers
//! (login, idle, idle in transaction, max age, drain grace) come from `policy::next_timer`.
//! Owns: closing a session properly (ErrorResponse at a message boundary, Terminate to the server, a
//! CancelRequest first when a query is still running).
//!
//! # Cancellation safety
//! Every await in the loop either completes a read whose bytes are then handled in full, or is a timer or
//! the shutdown token; partial messages live in the scanners, so no select branch can lose bytes.

pub mod tracker;

use crate::clients::ClientEntry;
use crate::config::Policy;
use crate::policy::{self, Timer, TimerInput};
use crate::protocol::scanner::{Scanner, TERMINATE};
use crate::protocol::{error_response, sqlstate};
use crate::proxy::{Proxy, Settings};
use crate::registry::{signal, CancelTarget, Conn, ConnState};
use crate::upstream::Upstream;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Span};
use tracker::Tracker;

/// Relay buffer size: one buffer per session serves both directions.
const BUF_SIZE: usize = 16 * 1024;

/// Why a session ended; the names are the `reason` label of the closed counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    Client,
    Server,
    Abandoned,
    IdleTimeout,
    IdleInTransactionTimeout,
    MaxAge,
    Shutdown,
    Error,
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Client,
        CloseReason::Server,
        CloseReason::Abandoned,
        CloseReason::IdleTimeout,
        CloseReason::IdleInTransactionTimeout,
        CloseReason::MaxAge,
        CloseReason::Shutdown,
        CloseReason::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::Server => "server",
            CloseReason::Abandoned => "abandoned",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::IdleInTransactionTimeout => "idle_in_transaction_timeout",
            CloseReason::MaxAge => "max_age",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
        }
    }
}

pub struct RelayContext<'a> {
    pub conn: &'a Conn,
    /// The client's counters (closed and would-close).
    pub entry: &'a ClientEntry,
    /// The policy at admission; recomputed on reload.
    pub policy: Policy,
    pub settings: &'a Settings,
    pub proxy: &'a Proxy,
    pub upstream_addr: SocketAddr,
    pub shutdown: &'a CancellationToken,
    pub login_deadline: Option<Instant>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Relays until the session ends; `early` holds client bytes that arrived with the startup packet.
pub async fn run(ctx: &RelayContext<'_>, client: &mut TcpStream, server: &mut Upstream, early: &[u8]) -> CloseReason {
    let mut relay = Relay {
        ctx,
        tracker: Tracker::new(statement_cap(ctx.settings)),
        c2s: Scanner::default(),
        s2c: Scanner::default(),
        policy: ctx.policy,
        enforce: ctx.settings.config.enforce,
        would_closed: false,
        published: ConnState::Startup,
        drain_deadline: None,
    };
    if !early.is_empty() {
        if let Some(reason) = relay.client_bytes(client, server, early).await {
            return reason;
        }
    }
    relay.run(client, server).await
}

fn statement_cap(settings: &Settings) -> usize {
    match settings.config.stats.statement_text {
        crate::config::StatementText::Off => 0,
        _ => settings.config.stats.statement_max_length as usize,
    }
}

struct Relay<'a, 'c> {
    ctx: &'a RelayContext<'c>,
    tracker: Tracker,
    c2s: Scanner,
    s2c: Scanner,
    policy: Policy,
    enforce: bool,
    /// Report-only: a timeout was already counted as would-close (once per connection).
    would_closed: bool,
    published: ConnState,
    drain_deadline: Option<Instant>,
}

impl Relay<'_, '_> {
    async fn run(&mut self, client: &mut TcpStream, server: &mut Upstream) -> CloseReason {
        let mut buf = vec![0u8; BUF_SIZE];
        let conn = self.ctx.conn;
        let mut signalled = pin!(conn.signalled());
        let mut draining = self.ctx.shutdown.is_cancelled();
        if draining {
            self.drain_deadline = Some(Instant::now() + self.grace());
        }
        let mut timer = self.next_timer();
        let mut sleep = pin!(tokio::time::sleep_until(far_future(timer)));
        let mut server_first = false;
        loop {
            if self.publish_state() {
                timer = self.next_timer();
                sleep.as_mut().reset(far_future(timer));
            }
            if draining && matches!(self.published, ConnState::Idle | ConnState::Startup) {
                return self.close(client, server, CloseReason::Shutdown, Some(shutdown_error())).await;
            }
            server_first = !server_first;
            tokio::select! {
                biased;
                _ = &mut signalled => {
                    signalled.set(conn.signalled());
                    let bits = conn.take_signals();
                    if bits & signal::RELOAD != 0 {
                        self.reload();
                    }
                    if !draining && (bits & signal::SHUTDOWN != 0 || self.ctx.shutdown.is_cancelled()) {
                        draining = true;
                        self.drain_deadline = Some(Instant::now() + self.grace());
                    }
                    timer = self.next_timer();
                    sleep.as_mut().reset(far_future(timer));
                }
                _ = &mut sleep, if timer.is_some() => {
                    let Some((_, which)) = timer else { continue };
                    if let Some(reason) = self.on_timer(client, server, which).await {
                        return reason;
                    }
                    timer = self.next_timer();
                    sleep.as_mut().reset(far_future(timer));
                }
                (side, read) = read_either(client, server, &mut buf, server_first) => {
                    let outcome = match (side, read) {
                        (Side::Client, Ok(n)) if n > 0 => self.client_bytes(client, server, &buf[..n]).await,
                        (Side::Server, Ok(n)) if n > 0 => self.server_bytes(client, server, &buf[..n]).await,
                        (Side::Client, _) => Some(self.client_gone(server).await),
                        (Side::Server, _) => Some(self.server_gone(client).await),
                    };
                    if let Some(reason) = outcome {
                        return reason;
                    }
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        self.ctx.proxy.settings().config.shutdown_grace.0.unwrap_or_default()
    }

    /// New settings: the policy and enforcement of this connection follow them (its slot stays).
    fn reload(&mut self) {
        let settings = self.ctx.proxy.settings();
        self.policy = policy::effective(&settings.config, &self.ctx.conn.client).0;
        self.enforce = settings.config.enforce;
    }

    /// Stores a changed state in the registry; true if it changed.
    fn publish_state(&mut self) -> bool {
        let state = self.tracker.state();
        if state == self.published {
            return false;
        }
        self.ctx.conn.set_state(state, Instant::now());
        self.published = state;
        if state == ConnState::Idle {
            self.c2s.shrink();
            self.s2c.shrink();
        }
        true
    }

    fn next_timer(&self) -> Option<(Instant, Timer)> {
        policy::next_timer(&TimerInput {
            state: self.published,
            state_since: self.ctx.conn.state_since(),
            opened: self.ctx.conn.opened,
            login_deadline: self.ctx.login_deadline,
            drain_deadline: self.drain_deadline,
            policy: &self.policy,
            idle_timers_spent: self.would_closed,
        })
    }

    /// Acts on a fired timer; `None` when the session goes on (report-only).
    async fn on_timer(&mut self, client: &mut TcpStream, server: &mut Upstream, which: Timer) -> Option<CloseReason> {
        let client_key = self.ctx.conn.client.display().to_string();
        let (reason, code, message) = match which {
            Timer::Login => (
                CloseReason::Error,
                sqlstate::PROTOCOL_VIOLATION,
                "pgwarden: startup timeout (client_login_timeout)".to_string(),
            ),
            Timer::DrainGrace => (
                CloseReason::Shutdown,
                sqlstate::ADMIN_SHUTDOWN,
                "pgwarden is shutting down (shutdown_grace is over)".to_string(),
            ),
            Timer::Idle => (
                CloseReason::IdleTimeout,
                sqlstate::IDLE_SESSION_TIMEOUT,
                format!("pgwarden: terminating connection of client \"{client_key}\" due to idle_timeout"),
            ),
            Timer::IdleInTransaction => (
                CloseReason::IdleInTransactionTimeout,
                sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                format!(
                    "pgwarden: terminating connection of client \"{client_key}\" due to idle_in_transaction_timeout"
                ),
            ),
            Timer::MaxAge => (
                CloseReason::MaxAge,
                sqlstate::ADMIN_SHUTDOWN,
                format!("pgwarden: terminating connection of client \"{client_key}\" due to max_connection_age"),
            ),
        };
        let policy_timer = matches!(which, Timer::Idle | Timer::IdleInTransaction | Timer::MaxAge);
        if policy_timer && !self.enforce {
            self.would_closed = true;
            self.ctx.entry.counters.would_close[reason as usize].fetch_add(1, Relaxed);
            let stats = &self.ctx.settings.config.stats;
            let last = crate::redact::render(
                &self.ctx.conn.last_statement(),
                stats.statement_text,
                stats.statement_max_length as usize,
            );
            tracing::warn!(
                reason = reason.as_str(),
                state = self.published.as_str(),
                last_statement = last.as_deref().unwrap_or(""),
                "report-only: would close connection: {message}"
            );
            return None;
        }
        Some(self.close(client, server, reason, Some((code, message))).await)
    }

    /// Forwards client bytes; `Some` ends the session.
    async fn client_bytes(
        &mut self,
        client: &mut TcpStream,
        server: &mut Upstream,
        chunk: &[u8],
    ) -> Option<CloseReason> {
        let cap = statement_cap(self.ctx.settings);
        let tracker = &mut self.tracker;
        let scanned = self.c2s.feed(chunk, |tag| tracker::client_want(cap, tag), |f| tracker.on_client(f));
        if let Err(e) = scanned {
            let msg = format!("pgwarden: protocol violation: {e}");
            return Some(
                self.close(client, server, CloseReason::Error, Some((sqlstate::PROTOCOL_VIOLATION, msg))).await,
            );
        }
        if let Some(text) = self.tracker.take_statement() {
            self.ctx.conn.set_last_statement(text);
        }
        if self.tracker.listening && !self.ctx.conn.listening() {
            self.ctx.conn.set_listening();
        }
        let conn = self.ctx.conn;
        conn.queries.store(self.tracker.queries, Relaxed);
        conn.bytes_in.fetch_add(chunk.len() as u64, Relaxed);
        if let Err(e) = write_flush(server, chunk).await {
            debug!(error = %e, "upstream write failed");
            return Some(self.server_gone(client).await);
        }
        None
    }

    async fn server_bytes(
        &mut self,
        client: &mut TcpStream,
        server: &mut Upstream,
        chunk: &[u8],
    ) -> Option<CloseReason> {
        let tracker = &mut self.tracker;
        let had_key = tracker.backend_key.is_some();
        if let Err(e) = self.s2c.feed(chunk, Tracker::server_want, |f| tracker.on_server(f)) {
            tracing::warn!(error = %e, "protocol violation from upstream");
            let _ = client.shutdown().await;
            return Some(CloseReason::Error);
        }
        if !had_key {
            if let Some((pid, key)) = &self.tracker.backend_key {
                self.ctx.conn.set_cancel_target(CancelTarget {
                    pid: *pid,
                    key: key.clone(),
                    addr: self.ctx.upstream_addr,
                });
                Span::current().record("backend_pid", pid);
            }
        }
        self.ctx.conn.bytes_out.fetch_add(chunk.len() as u64, Relaxed);
        if let Err(e) = client.write_all(chunk).await {
            debug!(error = %e, "client write failed");
            return Some(self.client_gone(server).await);
        }
        None
    }

    /// The client closed or reset its socket.
    async fn client_gone(&mut self, server: &mut Upstream) -> CloseReason {
        if self.tracker.terminated {
            let _ = server.shutdown().await;
            return CloseReason::Client;
        }
        self.cancel_running_query().await;
        if self.c2s.at_boundary() {
            let _ = write_flush(server, &TERMINATE).await;
        }
        let _ = server.shutdown().await;
        CloseReason::Abandoned
    }

    /// The server closed its side.
    async fn server_gone(&mut self, client: &mut TcpStream) -> CloseReason {
        if self.tracker.terminated {
            return CloseReason::Client;
        }
        if !self.tracker.server_fatal && self.s2c.at_boundary() {
            let e = error_response::fatal(
                sqlstate::CONNECTION_FAILURE,
                "pgwarden: the server closed the connection unexpectedly",
            );
            let _ = client.write_all(&e).await;
        }
        let _ = client.shutdown().await;
        CloseReason::Server
    }

    /// Closes both sides on pgwarden's initiative, telling the client why.
    async fn close(
        &mut self,
        client: &mut TcpStream,
        server: &mut Upstream,
        reason: CloseReason,
        error: Option<(&'static str, String)>,
    ) -> CloseReason {
        self.cancel_running_query().await;
        if let Some((code, message)) = error {
            if self.s2c.at_boundary() {
                let _ = client.write_all(&error_response::fatal(code, &message)).await;
            }
        }
        if self.c2s.at_boundary() {
            let _ = write_flush(server, &TERMINATE).await;
        }
        let _ = server.shutdown().await;
        let _ = client.shutdown().await;
        reason
    }

    /// If a query is running, asks the server to stop it so the backend does not run on.
    async fn cancel_running_query(&self) {
        if self.tracker.state() != ConnState::Active {
            return;
        }
        if let Some(target) = self.ctx.conn.cancel_target() {
            debug!(pid = target.pid, "cancelling the running query");
            if let Err(e) =
                crate::upstream::send_cancel(target.addr, target.pid, &target.key, Duration::from_secs(2)).await
            {
                debug!(error = %e, "cancel request failed");
            }
        }
    }
}

fn shutdown_error() -> (&'static str, String) {
    (sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down".to_string())
}

/// A far deadline for a disabled timer (the branch is also switched off, this only keeps the Sleep valid).
fn far_future(timer: Option<(Instant, Timer)>) -> tokio::time::Instant {
    match timer {
        Some((at, _)) => at.into(),
        None => (Instant::now() + Duration::from_secs(86_400 * 365)).into(),
    }
}

async fn write_flush(server: &mut Upstream, bytes: &[u8]) -> io::Result<()> {
    server.write_all(bytes).await?;
    server.flush().await
}

/// Reads from whichever side is ready into `buf`; alternates which side is polled first for fairness.
/// A Pending poll leaves the buffer untouched, so one buffer serves both sides.
async fn read_either(
    client: &mut TcpStream,
    server: &mut Upstream,
    buf: &mut [u8],
    server_first: bool,
) -> (Side, io::Result<usize>) {
    poll_fn(|cx| {
        let order = if server_first { [Side::Server, Side::Client] } else { [Side::Client, Side::Server] };
        for side in order {
            let mut rb = ReadBuf::new(buf);
            let polled = match side {
                Side::Client => Pin::new(&mut *client).poll_read(cx, &mut rb),
                Side::Server => Pin::new(&mut *server).poll_read(cx, &mut rb),
            };
            if let Poll::Ready(r) = polled {
                return Poll::Ready((side, r.map(|()| rb.filled().len())));
            }
        }
        Poll::Pending
    })
    .await
}
