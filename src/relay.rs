//! The relay: bytes flow both ways unchanged while the scanner and tracker watch message headers.
//!
//! One task per session moves bytes both ways at once: each direction has its own buffer; bytes read are
//! scanned (header by header) and then written on, and a direction whose receiver is slow stops reading
//! only its own source, so neither side can block the other (a pipelining client and a server busy writing
//! never deadlock). After each chunk the relay publishes the state the tracker derives. Timers
//! (login, idle, idle in transaction, max age, drain grace) come from `policy::next_timer`.
//! Owns: closing a session properly (ErrorResponse at a message boundary, Terminate to the server, a
//! CancelRequest first when a query is still running).
//!
//! # Cancellation safety
//! Every await in the loop either completes a read whose bytes are then handled in full, or is a timer or
//! the shutdown token; partial messages live in the scanners, so no select branch can lose bytes.

mod flow;
pub mod tracker;

use crate::clients::ClientEntry;
use crate::config::Policy;
use crate::policy::{self, Timer, TimerInput};
use crate::protocol::scanner::{Scanner, TERMINATE};
use crate::protocol::{error_response, sqlstate};
use crate::proxy::{Proxy, Settings};
use crate::registry::{signal, CancelTarget, Conn, ConnState};
use crate::upstream::Upstream;
use flow::{Flow, BUF_SIZE};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, Span};
use tracker::Tracker;

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
        up: Flow::new(),
        down: Flow::new(),
        policy: ctx.policy,
        enforce: ctx.settings.config.enforce,
        would_closed: false,
        would_close_counted: false,
        published: ConnState::Startup,
        drain_deadline: None,
    };
    if !early.is_empty() {
        if early.len() > relay.up.buf.len() {
            relay.up.buf = vec![0; early.len().max(BUF_SIZE)];
        }
        relay.up.buf[..early.len()].copy_from_slice(early);
        relay.up.len = early.len();
        if let Err(reason) = relay.client_bytes(early.len()) {
            return relay.close(client, server, reason.0, Some(reason.1)).await;
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

/// What the I/O poll found.
enum Io {
    /// `n` new bytes from the client, in `up.buf[..n]`.
    Client(usize),
    /// `n` new bytes from the server, in `down.buf[..n]`.
    Server(usize),
    ClientClosed,
    ServerClosed,
}

/// A close decided while handling bytes: the reason and the error for the client.
struct Fatal(CloseReason, (&'static str, String));

struct Relay<'a, 'c> {
    ctx: &'a RelayContext<'c>,
    tracker: Tracker,
    c2s: Scanner,
    s2c: Scanner,
    up: Flow,
    down: Flow,
    policy: Policy,
    enforce: bool,
    /// Report-only: a timeout fired in the current idle period (its timers are not rearmed until activity).
    would_closed: bool,
    /// Report-only: this connection was counted in `would_close` (SPEC: once per connection).
    would_close_counted: bool,
    published: ConnState,
    drain_deadline: Option<Instant>,
}

impl Relay<'_, '_> {
    async fn run(&mut self, client: &mut TcpStream, server: &mut Upstream) -> CloseReason {
        let conn = self.ctx.conn;
        let mut signalled = pin!(conn.signalled());
        let mut draining = self.ctx.shutdown.is_cancelled();
        if draining {
            self.drain_deadline = Some(Instant::now() + self.grace());
        }
        let mut timer = self.next_timer();
        let mut sleep = pin!(tokio::time::sleep_until(far_future(timer)));
        let mut armed = timer.map(|t| t.0);
        let mut server_first = false;
        loop {
            if self.publish_state() {
                timer = self.next_timer();
                arm(sleep.as_mut(), &mut armed, timer);
            }
            if draining && matches!(self.published, ConnState::Idle | ConnState::Startup) {
                return self.close(client, server, CloseReason::Shutdown, Some(shutdown_error())).await;
            }
            server_first = !server_first;
            let event = tokio::select! {
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
                    arm(sleep.as_mut(), &mut armed, timer);
                    continue;
                }
                _ = &mut sleep, if timer.is_some() => {
                    let Some((_, which)) = timer else { continue };
                    if let Some((reason, error)) = self.on_timer(which) {
                        return self.close(client, server, reason, Some(error)).await;
                    }
                    timer = self.next_timer();
                    arm(sleep.as_mut(), &mut armed, timer);
                    continue;
                }
                event = poll_fn(|cx| self.poll_io(cx, client, server, server_first)) => event,
            };
            let handled = match event {
                Ok(Io::Client(n)) => self.client_bytes(n),
                Ok(Io::Server(n)) => self.server_bytes(n),
                Ok(Io::ClientClosed) => return self.client_gone(server).await,
                Ok(Io::ServerClosed) => return self.server_gone(client).await,
                Err((Side::Client, e)) => {
                    debug!(error = %e, "client write failed");
                    return self.client_gone(server).await;
                }
                Err((Side::Server, e)) => {
                    debug!(error = %e, "upstream write failed");
                    return self.server_gone(client).await;
                }
            };
            if let Err(Fatal(reason, error)) = handled {
                return self.close(client, server, reason, Some(error)).await;
            }
        }
    }

    /// Moves bytes both ways: writes what is pending in each direction, then reads wherever the buffer is
    /// free. A direction whose peer is slow to read stops reading its source, and only that direction waits.
    fn poll_io(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut TcpStream,
        server: &mut Upstream,
        server_first: bool,
    ) -> Poll<Result<Io, (Side, io::Error)>> {
        if let Poll::Ready(Err(e)) = self.up.poll_flush_to(cx, server) {
            return Poll::Ready(Err((Side::Server, e)));
        }
        if let Poll::Ready(Err(e)) = self.down.poll_flush_to(cx, client) {
            return Poll::Ready(Err((Side::Client, e)));
        }
        let order = if server_first { [Side::Server, Side::Client] } else { [Side::Client, Side::Server] };
        for side in order {
            let (flow, polled) = match side {
                Side::Client if self.up.len == 0 => {
                    let mut rb = ReadBuf::new(&mut self.up.buf);
                    let polled = Pin::new(&mut *client).poll_read(cx, &mut rb).map_ok(|()| rb.filled().len());
                    (&mut self.up, polled)
                }
                Side::Server if self.down.len == 0 => {
                    let mut rb = ReadBuf::new(&mut self.down.buf);
                    let polled = Pin::new(&mut *server).poll_read(cx, &mut rb).map_ok(|()| rb.filled().len());
                    (&mut self.down, polled)
                }
                _ => continue,
            };
            match (side, polled) {
                (_, Poll::Pending) => {}
                (Side::Client, Poll::Ready(Ok(0)) | Poll::Ready(Err(_))) => return Poll::Ready(Ok(Io::ClientClosed)),
                (Side::Server, Poll::Ready(Ok(0)) | Poll::Ready(Err(_))) => return Poll::Ready(Ok(Io::ServerClosed)),
                (side, Poll::Ready(Ok(n))) => {
                    flow.len = n;
                    flow.grow = n == flow.buf.len() && n < BUF_SIZE;
                    return Poll::Ready(Ok(if side == Side::Client { Io::Client(n) } else { Io::Server(n) }));
                }
            }
        }
        Poll::Pending
    }

    fn grace(&self) -> Duration {
        self.ctx.proxy.settings().config.shutdown_grace.0.unwrap_or_default()
    }

    /// New settings: the policy and enforcement of this connection follow them (its slot stays).
    fn reload(&mut self) {
        let settings = self.ctx.proxy.settings();
        self.policy = policy::effective(&settings.config, &self.ctx.conn.client).0;
        if settings.config.enforce && !self.enforce {
            // Enforcement switched on: what was only counted is acted on now.
            self.would_closed = false;
        }
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
        // A new idle period: report-only counts each connection once, but a used connection starts afresh.
        if state == ConnState::Active {
            self.would_closed = false;
        }
        if state == ConnState::Idle {
            self.c2s.shrink();
            self.s2c.shrink();
            self.up.shrink_if_idle();
            self.down.shrink_if_idle();
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

    /// Decides what a fired timer does: `Some` closes with that reason and error; `None` goes on
    /// (report-only: counted and logged instead).
    fn on_timer(&mut self, which: Timer) -> Option<(CloseReason, (&'static str, String))> {
        let client_key = self.ctx.conn.client.display();
        let (reason, code, message) = match which {
            Timer::Login => (
                CloseReason::Error,
                sqlstate::PROTOCOL_VIOLATION,
                format!("pgwarden: client \"{client_key}\" did not finish startup within client_login_timeout"),
            ),
            Timer::DrainGrace => (
                CloseReason::Shutdown,
                sqlstate::ADMIN_SHUTDOWN,
                format!("pgwarden is shutting down: shutdown_grace is over for client \"{client_key}\""),
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
            if !std::mem::replace(&mut self.would_close_counted, true) {
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
            }
            return None;
        }
        Some((reason, (code, message)))
    }

    /// Scans `n` new client bytes in `up.buf`; they are written to the server by the I/O poll.
    fn client_bytes(&mut self, n: usize) -> Result<(), Fatal> {
        let cap = statement_cap(self.ctx.settings);
        let tracker = &mut self.tracker;
        let chunk = &self.up.buf[..n];
        if let Err(e) = self.c2s.feed(chunk, |tag| tracker::client_want(cap, tag), |f| tracker.on_client(f)) {
            // Nothing of this chunk reaches the server.
            self.up.len = 0;
            let msg = format!("pgwarden: protocol violation: {e}");
            return Err(Fatal(CloseReason::Error, (sqlstate::PROTOCOL_VIOLATION, msg)));
        }
        let conn = self.ctx.conn;
        if let Some(text) = self.tracker.take_statement() {
            conn.set_last_statement(text);
        }
        if self.tracker.listening && !conn.listening() {
            conn.set_listening();
        }
        conn.queries.store(self.tracker.queries, Relaxed);
        conn.bytes_in.fetch_add(n as u64, Relaxed);
        Ok(())
    }

    /// Scans `n` new server bytes in `down.buf`; they are written to the client by the I/O poll.
    fn server_bytes(&mut self, n: usize) -> Result<(), Fatal> {
        let tracker = &mut self.tracker;
        let had_key = tracker.backend_key.is_some();
        if let Err(e) = self.s2c.feed(&self.down.buf[..n], Tracker::server_want, |f| tracker.on_server(f)) {
            tracing::warn!(error = %e, "protocol violation from upstream");
            self.down.len = 0;
            let msg = format!("pgwarden: protocol violation by the upstream server: {e}");
            return Err(Fatal(CloseReason::Error, (sqlstate::CONNECTION_FAILURE, msg)));
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
        self.ctx.conn.bytes_out.fetch_add(n as u64, Relaxed);
        Ok(())
    }

    /// The client closed or reset its socket.
    async fn client_gone(&mut self, server: &mut Upstream) -> CloseReason {
        // Bytes it sent before closing (a Terminate, say) still go to the server.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.up.drain_to(server)).await;
        if self.tracker.terminated {
            let _ = server.shutdown().await;
            return CloseReason::Client;
        }
        self.cancel_running_query().await;
        if self.c2s.at_boundary() {
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, write_flush(server, &TERMINATE)).await;
        }
        let _ = server.shutdown().await;
        CloseReason::Abandoned
    }

    /// The server closed its side.
    async fn server_gone(&mut self, client: &mut TcpStream) -> CloseReason {
        // What it sent last (often a FATAL ErrorResponse) still goes to the client.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.down.drain_to(client)).await;
        if self.tracker.terminated {
            return CloseReason::Client;
        }
        if !self.tracker.server_fatal && self.s2c.at_boundary() {
            let e = error_response::fatal(
                sqlstate::CONNECTION_FAILURE,
                "pgwarden: the server closed the connection unexpectedly",
            );
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, client.write_all(&e)).await;
        }
        let _ = client.shutdown().await;
        CloseReason::Server
    }

    /// Closes both sides on pgwarden's initiative, telling the client why at a message boundary: what the
    /// server already sent is delivered up to the end of its current message, then the ErrorResponse.
    async fn close(
        &mut self,
        client: &mut TcpStream,
        server: &mut Upstream,
        reason: CloseReason,
        error: Option<(&'static str, String)>,
    ) -> CloseReason {
        self.cancel_running_query().await;
        let finish = async {
            let _ = self.down.drain_to(client).await;
            // Complete the server's current message (the cancel above makes a long result end soon).
            while !self.s2c.at_boundary() {
                let want = self.s2c.bytes_to_boundary().clamp(1, self.down.buf.len());
                let n = match server.read(&mut self.down.buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let tracker = &mut self.tracker;
                if self.s2c.feed(&self.down.buf[..n], Tracker::server_want, |f| tracker.on_server(f)).is_err() {
                    break;
                }
                if client.write_all(&self.down.buf[..n]).await.is_err() {
                    break;
                }
            }
            if let Some((code, message)) = &error {
                if self.s2c.at_boundary() {
                    let _ = client.write_all(&error_response::fatal(code, message)).await;
                }
            }
            let _ = self.up.drain_to(server).await;
            if self.c2s.at_boundary() {
                let _ = write_flush(server, &TERMINATE).await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, finish).await;
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

/// How long closing may spend delivering the last bytes and the ErrorResponse to a peer that does not read.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

fn shutdown_error() -> (&'static str, String) {
    (sqlstate::ADMIN_SHUTDOWN, "pgwarden is shutting down".to_string())
}

/// Points the sleep at `timer`'s deadline, touching the timer wheel only when the deadline changes (state
/// changes happen twice per query; most of them need no timer at all).
fn arm(sleep: Pin<&mut tokio::time::Sleep>, armed: &mut Option<Instant>, timer: Option<(Instant, Timer)>) {
    let want = timer.map(|t| t.0);
    if want.is_some() && want != *armed {
        sleep.reset(far_future(timer));
        *armed = want;
    }
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
