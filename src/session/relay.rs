//! The relay: bytes flow both ways unchanged while the scanner and tracker watch message headers.
//!
//! One task per session moves bytes both ways at once: each [`Direction`] has its own buffer and scanner;
//! bytes read are scanned (header by header) and then written on, and a direction whose receiver is slow
//! stops reading only its own source, so neither side can block the other (a pipelining client and a server
//! busy writing never deadlock). After each chunk the relay publishes the state the tracker derives. Timers
//! (login, idle, idle in transaction, max age, drain grace) come from `policy::next_timer`.
//! Owns: the loop and the timers' effects. Closing a session properly (ErrorResponse at a message boundary,
//! Terminate to the server, a CancelRequest first when a query is still running) is in `relay::close`.
//!
//! # Cancellation safety
//! Every await in the loop either completes a read whose bytes are then handled in full, or is a timer or
//! the shutdown token; partial messages live in the scanners, so no select branch can lose bytes.

mod close;
mod commands;
mod flow;
mod latency;
mod statements;
mod timers;
pub mod tracker;
mod wakers;

use super::upstream::Upstream;
use crate::clients::latency::WindowClock;
use crate::clients::ClientEntry;
use crate::config::{Policy, StatementText};
use crate::policy;
use crate::protocol::auth::AuthFilter;
use crate::protocol::scanner::Scanner;
use crate::registry::{signal, CancelTarget, Conn};
use crate::session::stream::ClientStream;
use crate::state::State;
use crate::vocab::{CloseReason, ConnState, Fatal, SqlState};
use flow::Flow;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;
use std::time::{Duration, Instant};
use timers::{arm, far_future};
use tokio_util::sync::CancellationToken;
use tracing::{debug, Span};
use tracker::Tracker;
use wakers::Sources;

/// What the relay needs from the session.
pub struct RelayContext<'a> {
    pub conn: &'a Conn,
    /// The client's counters (would-close).
    pub entry: &'a ClientEntry,
    /// For the settings on reload and at the drain.
    pub state: &'a State,
    /// The policy at admission; recomputed on reload.
    pub policy: Policy,
    pub upstream_addr: SocketAddr,
    pub shutdown: &'a CancellationToken,
    pub login_deadline: Option<Instant>,
    /// The connection's span: the parent of every line the relay logs (entered only to log, never per poll).
    pub span: &'a Span,
}

/// One direction of the relay: the bytes in flight and the scanner that finds message boundaries in them.
struct Direction {
    flow: Flow,
    scanner: Scanner,
    /// The scanner was at a message boundary before the chunk now in `flow` (where the receiver stands if
    /// nothing of that chunk is written yet).
    chunk_starts_at_boundary: bool,
}

impl Direction {
    fn new() -> Direction {
        Direction { flow: Flow::new(), scanner: Scanner::default(), chunk_starts_at_boundary: true }
    }

    /// Whether the receiver has seen whole messages only (what was written on ends at a boundary).
    fn receiver_at_boundary(&self) -> bool {
        match (self.flow.len(), self.flow.sent()) {
            (0, _) => self.scanner.at_boundary(),
            (_, 0) => self.chunk_starts_at_boundary,
            _ => false,
        }
    }

    /// The session has been idle a while: give large buffers back.
    fn shrink(&mut self) {
        self.scanner.shrink();
        self.flow.shrink_if_idle();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Relays until the session ends; `early` holds client bytes that arrived with the startup packet (taken
/// by value so its memory, as large as the startup packet was, goes at once rather than with the session).
pub async fn run(
    ctx: &RelayContext<'_>,
    client: &mut ClientStream,
    server: &mut Upstream,
    early: Vec<u8>,
) -> CloseReason {
    let config = ctx.state.settings().config.clone();
    let statement_cap = match config.stats.statement_text {
        StatementText::Off => 0,
        _ => config.stats.statement_max_length as usize,
    };
    let mut relay = Relay {
        ctx,
        tracker: Tracker::new(statement_cap),
        statement_cap,
        to_server: Direction::new(),
        to_client: Direction::new(),
        auth: Some(AuthFilter::new(client.is_tls())),
        policy: ctx.policy,
        enforce: config.enforce,
        would_closed: false,
        would_close_counted: false,
        published: ConnState::Startup,
        published_at: ctx.conn.state_since(),
        busy_since: None,
        transaction_since: None,
        window: WindowClock::default(),
        transaction_timer_spent: false,
        query_timer_spent: false,
        borrow_pending: false,
        borrowed: None,
        drain_deadline: None,
        violation: None,
        holds_large: false,
    };
    if !early.is_empty() {
        let n = early.len();
        relay.to_server.flow.replace(&early);
        drop(early);
        if let Err(fatal) = relay.client_bytes(n) {
            return relay.close(client, server, fatal).await;
        }
    }
    relay.run(client, server).await
}

/// What woke the relay's task, in the order it is looked at.
enum Woke {
    /// Signal bits raised on the connection (reload, reclaim, shutdown).
    Signals(u8),
    /// The server did not answer the messages before a bad header in time.
    ViolationGrace,
    /// The next policy timer is due.
    Timer,
    Io(Result<Io, (Side, io::Error)>),
}

/// What the I/O poll found.
enum Io {
    /// `n` new bytes from the client, pending in `to_server.flow`.
    Client(usize),
    /// `n` new bytes from the server, pending in `to_client.flow`.
    Server(usize),
    ClientClosed,
    /// The server closed (`None`) or the link to it failed (a reset, a keepalive or user timeout).
    ServerClosed(Option<io::Error>),
}

struct Relay<'a, 'c> {
    ctx: &'a RelayContext<'c>,
    tracker: Tracker,
    /// Bytes of statement text kept (0: none), from the settings at admission.
    statement_cap: usize,
    to_server: Direction,
    to_client: Direction,
    /// Until AuthenticationOk: takes SCRAM-SHA-256-PLUS out of the server's mechanisms (see `protocol::auth`).
    auth: Option<AuthFilter>,
    policy: Policy,
    enforce: bool,
    /// Report-only: a timeout fired in the current idle period (its timers are not rearmed until activity).
    would_closed: bool,
    /// Report-only: this connection was counted in `would_close` (SPEC: once per connection).
    would_close_counted: bool,
    published: ConnState,
    /// When `published` began (what the registry holds as the state's start, without converting it back).
    published_at: Instant,
    /// When the session last became busy (for the query latency) and left idle (the transaction's start,
    /// also as nanoseconds since the registry's epoch): latencies are integer subtractions.
    busy_since: Option<u64>,
    transaction_since: Option<(Instant, u64)>,
    /// The recent latency window the last record fell in.
    window: WindowClock,
    /// `transaction_timeout` fired in this transaction (report-only: reported once per transaction).
    transaction_timer_spent: bool,
    /// The statement the session was borrowed with was a bare BEGIN: the next one names the borrower.
    borrow_pending: bool,
    /// The borrowing statement last published to the registry.
    borrowed: Option<std::sync::Arc<[u8]>>,
    /// `query_timeout` fired for the running query (it was cancelled, or reported): once per query.
    query_timer_spent: bool,
    drain_deadline: Option<Instant>,
    /// A bad message header from the client: the whole messages before it went on; once the server has
    /// answered them (or [`VIOLATION_GRACE`] passed) the session closes with this error, as PostgreSQL would
    /// after processing them.
    violation: Option<(Fatal, Instant)>,
    /// Went idle with a large buffer in either direction, not given back yet (what `Conn::holds_large`
    /// tells housekeeping).
    holds_large: bool,
}

/// How long the server may take to answer the client's messages that came before a bad header.
const VIOLATION_GRACE: Duration = Duration::from_secs(5);

impl Relay<'_, '_> {
    async fn run(&mut self, client: &mut ClientStream, server: &mut Upstream) -> CloseReason {
        let conn = self.ctx.conn;
        let mut draining = self.ctx.shutdown.is_cancelled();
        if draining {
            self.drain_deadline = Instant::now().checked_add(self.grace());
        }
        let mut timer = self.next_timer();
        let mut sleep = pin!(tokio::time::sleep_until(far_future(timer)));
        let mut armed = timer.map(|t| t.0);
        let mut server_first = false;
        let mut violation_grace = pin!(tokio::time::sleep_until(far_future(None)));
        // Each polled through a waker of its own, so a wake-up re-polls only what woke it.
        let mut sources = Sources::new(&poll_fn(|cx| Poll::Ready(cx.waker().clone())).await);
        loop {
            if self.publish_state() {
                timer = self.next_timer();
                arm(sleep.as_mut(), &mut armed, timer);
            }
            if let Some((_, at)) = &self.violation {
                if self.to_server.flow.len() == 0 && !self.tracker.awaits_answers() {
                    let (fatal, _) = self.violation.take().expect("set");
                    return self.close(client, server, fatal).await;
                }
                violation_grace.as_mut().reset((*at).into());
            }
            if draining && matches!(self.published, ConnState::Idle | ConnState::Startup) {
                return self.close(client, server, Fatal::shutdown("pgwarden is shutting down")).await;
            }
            server_first = !server_first;
            // One poll for everything the task waits on, in this order (what is polled first wins).
            let woke = poll_fn(|cx| {
                sources.refresh(cx);
                if let Poll::Ready(bits) = sources.signals.poll(|cx| conn.poll_signals(cx)) {
                    return Poll::Ready(Woke::Signals(bits));
                }
                if self.violation.is_some() && violation_grace.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::ViolationGrace);
                }
                if timer.is_some() && sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Timer);
                }
                self.poll_io(&mut sources, client, server, server_first).map(Woke::Io)
            })
            .await;
            let event = match woke {
                Woke::Signals(bits) => {
                    if bits & signal::RELOAD != 0 {
                        self.reload();
                    }
                    if bits & signal::SHRINK != 0 && self.published == ConnState::Idle {
                        self.to_server.shrink();
                        self.to_client.shrink();
                        self.holds_large = false;
                        conn.set_holds_large(false);
                    }
                    if bits & signal::RECLAIM_BUDGET != 0
                        && self.enforce
                        && self.published == ConnState::Idle
                        && !conn.listening()
                    {
                        let fatal = self.budget_reclaim();
                        return self.close(client, server, fatal).await;
                    }
                    if bits & signal::RECLAIM != 0
                        && self.enforce
                        && !conn.listening()
                        && matches!(
                            self.published,
                            ConnState::Idle | ConnState::IdleInTransaction | ConnState::IdleInFailedTransaction
                        )
                    {
                        let fatal = self.fleet_reclaim();
                        return self.close(client, server, fatal).await;
                    }
                    if !draining && (bits & signal::SHUTDOWN != 0 || self.ctx.shutdown.is_cancelled()) {
                        draining = true;
                        self.drain_deadline = Instant::now().checked_add(self.grace());
                    }
                    timer = self.next_timer();
                    arm(sleep.as_mut(), &mut armed, timer);
                    continue;
                }
                Woke::ViolationGrace => {
                    let (fatal, _) = self.violation.take().expect("set");
                    return self.close(client, server, fatal).await;
                }
                Woke::Timer => {
                    let Some((_, which)) = timer else { continue };
                    if let Some(fatal) = self.on_timer(which) {
                        return self.close(client, server, fatal).await;
                    }
                    timer = self.next_timer();
                    arm(sleep.as_mut(), &mut armed, timer);
                    continue;
                }
                Woke::Io(event) => event,
            };
            let handled = match event {
                Ok(Io::Client(n)) => self.client_bytes(n),
                Ok(Io::Server(n)) => self.server_bytes(n),
                Ok(Io::ClientClosed) => return self.client_gone(server).await,
                Ok(Io::ServerClosed(error)) => return self.server_gone(client, error).await,
                Err((Side::Client, e)) => {
                    debug!(parent: self.ctx.span, error = %e, "client write failed");
                    return self.client_gone(server).await;
                }
                Err((Side::Server, e)) => {
                    debug!(parent: self.ctx.span, error = %e, "upstream write failed");
                    return self.server_gone(client, Some(e)).await;
                }
            };
            if let Err(fatal) = handled {
                return self.close(client, server, fatal).await;
            }
        }
    }

    /// Moves bytes both ways: writes what is pending in each direction, then reads wherever the buffer is
    /// free. A direction whose peer is slow to read stops reading its source, and only that direction waits.
    /// Each socket is polled through its own waker: a read that waits and was not woken is not repeated.
    fn poll_io(
        &mut self,
        sources: &mut Sources,
        client: &mut ClientStream,
        server: &mut Upstream,
        server_first: bool,
    ) -> Poll<Result<Io, (Side, io::Error)>> {
        let to_server = &mut self.to_server.flow;
        if to_server.has_output() {
            if let Poll::Ready(Err(e)) = sources.server.poll_always(|cx| to_server.poll_flush_to(cx, server)) {
                return Poll::Ready(Err((Side::Server, e)));
            }
        }
        let to_client = &mut self.to_client.flow;
        if to_client.has_output() {
            if let Poll::Ready(Err(e)) = sources.client.poll_always(|cx| to_client.poll_flush_to(cx, client)) {
                return Poll::Ready(Err((Side::Client, e)));
            }
        }
        let order = if server_first { [Side::Server, Side::Client] } else { [Side::Client, Side::Server] };
        for side in order {
            let polled = match side {
                Side::Client if self.to_server.flow.len() == 0 && self.violation.is_none() => {
                    let flow = &mut self.to_server.flow;
                    sources.client.poll(|cx| flow.poll_read_from(cx, client))
                }
                Side::Server if self.to_client.flow.len() == 0 => {
                    let flow = &mut self.to_client.flow;
                    sources.server.poll(|cx| flow.poll_read_from(cx, server))
                }
                _ => continue,
            };
            match (side, polled) {
                (_, Poll::Pending) => {}
                (Side::Client, Poll::Ready(Ok(0)) | Poll::Ready(Err(_))) => return Poll::Ready(Ok(Io::ClientClosed)),
                (Side::Server, Poll::Ready(Ok(0))) => return Poll::Ready(Ok(Io::ServerClosed(None))),
                (Side::Server, Poll::Ready(Err(e))) => return Poll::Ready(Ok(Io::ServerClosed(Some(e)))),
                (Side::Client, Poll::Ready(Ok(n))) => return Poll::Ready(Ok(Io::Client(n))),
                (Side::Server, Poll::Ready(Ok(n))) => return Poll::Ready(Ok(Io::Server(n))),
            }
        }
        Poll::Pending
    }

    fn grace(&self) -> Duration {
        self.ctx.state.settings().config.shutdown_grace.0.unwrap_or_default()
    }

    /// New settings: the policy and enforcement of this connection follow them (its slot stays).
    fn reload(&mut self) {
        let settings = self.ctx.state.settings();
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
        // A message that has begun to arrive is being sent: active, not idle (a large Query or CopyData
        // arriving slowly must not meet an idle timeout or a drain).
        let state = if state != ConnState::Startup && !self.to_server.scanner.at_boundary() {
            ConnState::Active
        } else {
            state
        };
        if state == self.published {
            return false;
        }
        let now = Instant::now();
        let at = self.ctx.conn.nanos_at(now);
        self.ctx.conn.set_state_at(state, at);
        self.published_at = now;
        self.record_latency(self.published, state, now, at);
        self.published = state;
        // A new idle period: report-only counts each connection once, but a used connection starts afresh.
        if state == ConnState::Active {
            self.would_closed = false;
            self.query_timer_spent = false;
            self.to_client.flow.expect_large();
        }
        if state == ConnState::Idle {
            self.to_server.scanner.shrink();
            self.to_client.scanner.shrink();
            // Large buffers stay through short idle periods; housekeeping asks for them back after
            // `SHRINK_IDLE_AFTER` (an ORM-sized answer per transaction would otherwise grow and shrink them
            // around every one).
            if !self.holds_large && (self.to_server.flow.is_large() || self.to_client.flow.is_large()) {
                self.holds_large = true;
                self.ctx.conn.set_holds_large(true);
            }
        }
        true
    }

    /// Scans the `n` new client bytes pending in `to_server.flow`; they are written to the server by the I/O poll.
    fn client_bytes(&mut self, n: usize) -> Result<(), Fatal> {
        let cap = self.statement_cap;
        let queries_before = self.tracker.queries;
        let tracker = &mut self.tracker;
        let Direction { flow, scanner, chunk_starts_at_boundary } = &mut self.to_server;
        *chunk_starts_at_boundary = scanner.at_boundary();
        if let Err(e) =
            scanner.feed(&flow.pending()[..n], |tag| tracker::client_want(cap, tag), |f| tracker.on_client(f))
        {
            let fatal = Fatal::protocol(format!("pgwarden: protocol violation: {e}"));
            let Some(at) = e.at else {
                // Part of the bad header already went on: nothing more can.
                flow.discard();
                return Err(fatal);
            };
            // The whole messages before the bad header go on, as they would have reached PostgreSQL.
            flow.truncate(at);
            self.violation = Some((fatal, Instant::now() + VIOLATION_GRACE));
        }
        let conn = self.ctx.conn;
        if let Some(text) = self.tracker.take_statement() {
            conn.set_last_statement(text);
        }
        if let Some(trace) = self.tracker.take_trace() {
            conn.set_trace_id(trace);
        }
        // The first statement since the session was idle is where it was borrowed (past a bare BEGIN).
        let from_idle = matches!(self.published, ConnState::Idle | ConnState::Startup);
        if self.tracker.queries != queries_before && (from_idle || self.borrow_pending) {
            if let Some(text) = self.tracker.current_statement() {
                self.borrow_pending = commands::opens_transaction_only(&text);
                // A prepared statement borrowed again is the same shared text: nothing to publish.
                if !self.borrowed.as_ref().is_some_and(|b| std::sync::Arc::ptr_eq(b, &text)) {
                    self.borrowed = Some(text.clone());
                    conn.set_borrowed(text);
                }
            }
        }
        if self.tracker.listening != conn.listening() {
            conn.set_listening(self.tracker.listening);
        }
        conn.queries.store(self.tracker.queries, Relaxed);
        conn.bytes_in.fetch_add(n as u64, Relaxed);
        Ok(())
    }

    /// Passes the `n` new server bytes through the authentication filter: the bytes to forward replace them
    /// in the buffer (an incomplete message is held back); returns how many there are now.
    fn filter_auth(&mut self, n: usize) -> Result<usize, Fatal> {
        let span = self.ctx.span;
        let Some(filter) = &mut self.auth else { return Ok(n) };
        let flow = &mut self.to_client.flow;
        let mut out = Vec::with_capacity(n);
        if let Err(e) = filter.push(&flow.pending()[..n], &mut out) {
            flow.discard();
            let message = format!("pgwarden: protocol violation by the upstream server: {e}");
            return Err(Fatal::closed(CloseReason::Error, SqlState::CONNECTION_FAILURE, message));
        }
        if filter.take_refusal() {
            tracing::info!(
                parent: span,
                "login refused: the client asked for SCRAM channel binding, which cannot pass a proxy (the client \
                 was told how to turn it off)"
            );
        }
        if filter.done() {
            self.auth = None;
        }
        flow.replace(&out);
        Ok(out.len())
    }

    /// Scans the `n` new server bytes pending in `to_client.flow`; they are written to the client by the I/O poll.
    fn server_bytes(&mut self, mut n: usize) -> Result<(), Fatal> {
        if self.auth.is_some() {
            n = self.filter_auth(n)?;
        }
        let span = self.ctx.span;
        let tracker = &mut self.tracker;
        let had_key = tracker.backend_key.is_some();
        let Direction { flow, scanner, .. } = &mut self.to_client;
        if let Err(e) = scanner.feed(&flow.pending()[..n], Tracker::server_want, |f| tracker.on_server(f)) {
            tracing::warn!(parent: span, error = %e, "protocol violation from upstream");
            flow.discard();
            let message = format!("pgwarden: protocol violation by the upstream server: {e}");
            return Err(Fatal::closed(CloseReason::Error, SqlState::CONNECTION_FAILURE, message));
        }
        if !had_key {
            if let Some((pid, key)) = &self.tracker.backend_key {
                self.ctx.conn.set_cancel_target(CancelTarget {
                    pid: *pid,
                    key: key.clone(),
                    addr: self.ctx.upstream_addr,
                });
                self.ctx.span.record("backend_pid", pid);
                self.ctx.entry.logged_in.store(true, Relaxed);
            }
        }
        self.ctx.conn.bytes_out.fetch_add(n as u64, Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::scanner::encode;

    /// Feeds `bytes` as one chunk into a direction, as the relay does.
    fn feed(d: &mut Direction, bytes: &[u8]) {
        d.chunk_starts_at_boundary = d.scanner.at_boundary();
        d.flow.replace(bytes);
        d.scanner.feed(bytes, |_| 0, |_| {}).unwrap();
    }

    #[test]
    fn where_the_receiver_stands_when_pgwarden_closes() {
        let mut d = Direction::new();
        assert!(d.receiver_at_boundary());
        let commit = encode(b'Q', b"commit\0");
        // A whole message pending, nothing of it written: the receiver is at a boundary (the COMMIT is
        // dropped, Terminate may follow).
        feed(&mut d, &commit);
        assert!(d.receiver_at_boundary());
        // Half a message pending: the receiver stood at a boundary before it.
        d.flow.discard();
        feed(&mut d, &commit[..4]);
        assert!(d.receiver_at_boundary());
        // Its rest arrives: the receiver is mid-message unless nothing was written.
        d.flow.discard();
        feed(&mut d, &commit[4..]);
        assert!(!d.receiver_at_boundary(), "the first half went on");
    }
}
