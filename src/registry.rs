//! The registry of live connections: what each one is doing right now, for policy, stats and cancel routing.
//!
//! Owns: one [`Conn`] per live session, updated by its relay with atomics (no lock on the per-message path),
//! and the [`ConnGuard`] whose `Drop` removes it, so every exit path leaves the registry balanced.
//! Does not own: per-client counters or policy decisions.

use crate::identity::{ClientId, Peer};
use crate::vocab::ConnState;
use futures_util::task::AtomicWaker;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicU64, AtomicU8,
    Ordering::{AcqRel, Acquire, Relaxed},
};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Signals a session's relay acts on (bits of [`Conn::poll_signals`]).
pub mod signal {
    /// The settings changed: recompute the policy and timers.
    pub const RELOAD: u8 = 1;
    /// The proxy is draining.
    pub const SHUTDOWN: u8 = 2;
    /// The pod holds more than its workload budget share: close if still idle (see `State::apply_budget`).
    pub const RECLAIM_BUDGET: u8 = 4;
    /// `pgwarden fleet reclaim` chose this connection: close if still idle (see `State::fleet_reclaim`).
    pub const RECLAIM: u8 = 8;
    /// Idle for [`super::SHRINK_IDLE_AFTER`] with large buffers: give them back (see [`super::signal_shrinks`]).
    pub const SHRINK: u8 = 16;
}

/// How long a session stays idle before housekeeping asks it to give its large buffers back. A session that
/// is busy again sooner keeps them: growing and shrinking them around every transaction cost ~470
/// instructions per transaction with ORM-sized answers (issue 31).
pub const SHRINK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// Signals [`signal::SHRINK`] to each of `conns` idle for [`SHRINK_IDLE_AFTER`] or longer with large buffers;
/// returns how many.
pub fn signal_shrinks(conns: &[Arc<Conn>], now: Instant) -> usize {
    let mut asked = 0;
    for c in conns {
        if c.holds_large.load(Relaxed) {
            let (state, since) = c.state_and_since();
            if state == ConnState::Idle && now.saturating_duration_since(since) >= SHRINK_IDLE_AFTER {
                c.signal(signal::SHRINK);
                asked += 1;
            }
        }
    }
    asked
}

/// Where a session's backend lives, so a CancelRequest carrying its key can be forwarded there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelTarget {
    pub pid: i32,
    pub key: Vec<u8>,
    pub addr: SocketAddr,
}

/// One live connection.
#[derive(Debug)]
pub struct Conn {
    pub id: u64,
    pub client: Arc<ClientId>,
    pub peer: Peer,
    pub opened: Instant,
    epoch: Instant,
    /// The state (low 3 bits) and when it began (nanoseconds since the registry's epoch, the rest), in one
    /// word so a reader never sees a new state with an old start.
    state: AtomicU64,
    backend_pid: AtomicI32,
    cancel: OnceLock<CancelTarget>,
    /// The text last executed (bounded by `stats.statement_max_length`), shared with the relay's tracker:
    /// publishing a statement executed again is a pointer comparison, not a copy.
    last_statement: Mutex<Option<Arc<[u8]>>>,
    /// The W3C trace id the session last carried in `application_name` (at startup, or set by
    /// `SET application_name` as OpenTelemetry's instrumentations do): the trace that last used it.
    trace_id: Mutex<Option<Arc<str>>>,
    /// The first statement since the session was last idle: where its pool lent it out (its query tags
    /// name the code that borrowed it).
    borrowed: Mutex<Option<Arc<[u8]>>>,
    pub queries: AtomicU64,
    /// When the session first became idle (ready for queries) and first became active (nanoseconds since
    /// the epoch, plus one; 0 until then): a connection used right after it was ready was opened on demand.
    ready_at: AtomicU64,
    first_active_at: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    listening: AtomicBool,
    /// The relay holds read buffers larger than an idle session's (set when it goes idle with them, cleared
    /// when it gives them back): what [`signal_shrinks`] looks for.
    holds_large: AtomicBool,
    /// When and why the session ended (set once, just before its entry leaves the registry).
    closed: OnceLock<(Instant, &'static str)>,
    signals: AtomicU8,
    /// The relay's task, woken by [`Conn::signal`]; lock-free, so the relay's poll of it on every round trip
    /// takes no mutex (and per connection, so waking one session never contends with another's relay).
    waker: AtomicWaker,
}

impl Conn {
    /// The session ran LISTEN (`true`), or UNLISTEN * / DISCARD ALL (`false`).
    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Relaxed);
    }

    pub fn listening(&self) -> bool {
        self.listening.load(Relaxed)
    }

    /// The relay went idle holding large buffers (`true`), or gave them back (`false`).
    pub fn set_holds_large(&self, large: bool) {
        self.holds_large.store(large, Relaxed);
    }

    /// Records how the session ended (the `reason` label of the closed counter).
    pub fn mark_closed(&self, now: Instant, reason: &'static str) {
        let _ = self.closed.set((now, reason));
    }

    pub fn closed(&self) -> Option<(Instant, &'static str)> {
        self.closed.get().copied()
    }

    /// Raises signal bits and wakes the session's relay. A wake is never lost: the bits stay until taken,
    /// and [`Conn::poll_signals`] registers before it looks a second time.
    pub fn signal(&self, bits: u8) {
        self.signals.fetch_or(bits, AcqRel);
        self.waker.wake();
    }

    /// The signal bits raised since the last call (taken), or `Pending` with the task registered for the
    /// next [`Conn::signal`]. With none raised this is one load and a waker check: no lock, no write.
    pub fn poll_signals(&self, cx: &mut Context<'_>) -> Poll<u8> {
        if self.signals.load(Acquire) == 0 {
            self.waker.register(cx.waker());
            if self.signals.load(Acquire) == 0 {
                return Poll::Pending;
            }
        }
        Poll::Ready(self.signals.swap(0, AcqRel))
    }

    pub fn state(&self) -> ConnState {
        ConnState::from_u8((self.state.load(Relaxed) & 7) as u8)
    }

    pub fn state_since(&self) -> Instant {
        self.epoch + Duration::from_nanos(self.state.load(Relaxed) >> 3)
    }

    /// The state and its start, read together.
    pub fn state_and_since(&self) -> (ConnState, Instant) {
        let v = self.state.load(Relaxed);
        (ConnState::from_u8((v & 7) as u8), self.epoch + Duration::from_nanos(v >> 3))
    }

    pub fn set_state(&self, state: ConnState, now: Instant) {
        self.set_state_at(state, self.nanos_at(now));
    }

    /// Nanoseconds from the registry's epoch to `now`: what [`Conn::set_state_at`] takes, and a clock the
    /// relay subtracts as integers (an `Instant` subtraction costs ~40 instructions, issue 31).
    pub fn nanos_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// [`Conn::set_state`] with the start given by [`Conn::nanos_at`].
    pub fn set_state_at(&self, state: ConnState, since: u64) {
        self.state.store((since << 3) | state as u64, Relaxed);
        let first = match state {
            ConnState::Idle => &self.ready_at,
            ConnState::Active => &self.first_active_at,
            _ => return,
        };
        if first.load(Relaxed) == 0 {
            first.store(since + 1, Relaxed);
        }
    }

    /// When the session was first ready for queries.
    pub fn ready_at(&self) -> Option<Instant> {
        self.at(&self.ready_at)
    }

    /// When the session first became active (its first query).
    pub fn first_active_at(&self) -> Option<Instant> {
        self.at(&self.first_active_at)
    }

    fn at(&self, nanos: &AtomicU64) -> Option<Instant> {
        let v = nanos.load(Relaxed);
        (v != 0).then(|| self.epoch + Duration::from_nanos(v - 1))
    }

    pub fn backend_pid(&self) -> Option<i32> {
        Some(self.backend_pid.load(Relaxed)).filter(|&p| p != 0)
    }

    /// Records the backend's key (once: the server sends BackendKeyData once per session).
    pub fn set_cancel_target(&self, target: CancelTarget) {
        self.backend_pid.store(target.pid, Relaxed);
        let _ = self.cancel.set(target);
    }

    pub fn cancel_target(&self) -> Option<&CancelTarget> {
        self.cancel.get()
    }

    /// Replaces the last statement text, reusing the string's memory.
    /// Publishes the text last executed (the relay calls this only when it changed).
    pub fn set_last_statement(&self, text: Arc<[u8]>) {
        let old = self.last_statement.lock().unwrap_or_else(|e| e.into_inner()).replace(text);
        drop(old); // freed outside the lock
    }

    /// The statement the session runs first since it was idle: where it was borrowed (once per transaction).
    pub fn set_borrowed(&self, text: Arc<[u8]>) {
        let old = self.borrowed.lock().unwrap_or_else(|e| e.into_inner()).replace(text);
        drop(old); // freed outside the lock
    }

    /// The statement the session was last borrowed with (see [`Conn::set_borrowed`]), as text.
    pub fn borrowed_statement(&self) -> String {
        let text = self.borrowed.lock().unwrap_or_else(|e| e.into_inner()).clone();
        text.map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default()
    }

    /// The trace id the session's `application_name` last carried.
    pub fn set_trace_id(&self, id: Arc<str>) {
        *self.trace_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    }

    pub fn trace_id(&self) -> Option<Arc<str>> {
        self.trace_id.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The text last executed, as text (invalid UTF-8 replaced): converted here, for the views, and not on the
    /// relay's path.
    pub fn last_statement(&self) -> String {
        let text = self.last_statement.lock().unwrap_or_else(|e| e.into_inner()).clone();
        text.map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default()
    }
}

#[derive(Debug)]
pub struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry { epoch: Instant::now(), next_id: AtomicU64::new(1), conns: Mutex::default() }
    }
}

impl Registry {
    /// Adds a connection in state `startup`; it stays until the guard drops.
    pub fn register(self: &Arc<Self>, client: Arc<ClientId>, peer: Peer, opened: Instant) -> ConnGuard {
        let id = self.next_id.fetch_add(1, Relaxed);
        let conn = Arc::new(Conn {
            id,
            client,
            peer,
            opened,
            epoch: self.epoch,
            state: AtomicU64::new(ConnState::Startup as u64),
            backend_pid: AtomicI32::new(0),
            cancel: OnceLock::new(),
            last_statement: Mutex::default(),
            trace_id: Mutex::default(),
            borrowed: Mutex::default(),
            queries: AtomicU64::new(0),
            ready_at: AtomicU64::new(0),
            first_active_at: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            holds_large: AtomicBool::new(false),
            closed: OnceLock::new(),
            signals: AtomicU8::new(0),
            waker: AtomicWaker::new(),
        });
        conn.set_state(ConnState::Startup, opened);
        self.lock().insert(id, conn.clone());
        ConnGuard { registry: self.clone(), conn }
    }

    /// Every live connection, in id order.
    pub fn snapshot(&self) -> Vec<Arc<Conn>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Signals every live connection.
    pub fn signal_all(&self, bits: u8) {
        for conn in self.lock().values() {
            conn.signal(bits);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The backend address of the session owning (`pid`, `key`), if it is live here.
    pub fn cancel_target(&self, pid: i32, key: &[u8]) -> Option<SocketAddr> {
        self.lock()
            .values()
            .filter_map(|c| c.cancel_target())
            .find(|t| t.pid == pid && same_key(&t.key, key))
            .map(|t| t.addr)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Compares cancel keys in time independent of where they differ (as PostgreSQL 18 does), so a client
/// cannot learn a key byte by byte from how fast its guesses are dropped.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Holds a connection's registry entry; dropping it removes the entry.
#[derive(Debug)]
pub struct ConnGuard {
    registry: Arc<Registry>,
    conn: Arc<Conn>,
}

impl ConnGuard {
    pub fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.conn.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Field;

    fn client() -> Arc<ClientId> {
        Arc::new(ClientId::new(vec![(Field::User, "alice".into())]))
    }

    #[test]
    fn guard_removes_entry_on_every_drop() {
        let reg = Arc::new(Registry::default());
        let peer = Peer::Tcp("127.0.0.1:5000".parse().unwrap());
        let a = reg.register(client(), peer, Instant::now());
        let b = reg.register(client(), peer, Instant::now());
        assert_eq!(reg.len(), 2);
        drop(a);
        assert_eq!(reg.snapshot().len(), 1);
        let handle = std::thread::spawn(move || {
            let _b = b;
            panic!("a session task panics");
        });
        assert!(handle.join().is_err());
        assert!(reg.is_empty(), "the guard released the entry while unwinding");
    }

    #[test]
    fn state_and_cancel_lookup() {
        let reg = Arc::new(Registry::default());
        let peer = Peer::Tcp("127.0.0.1:5000".parse().unwrap());
        let g = reg.register(client(), peer, Instant::now());
        assert_eq!(g.conn().state(), ConnState::Startup);
        let later = Instant::now() + Duration::from_secs(1);
        g.conn().set_state(ConnState::IdleInTransaction, later);
        assert_eq!(g.conn().state(), ConnState::IdleInTransaction);
        assert!(g.conn().state_since() >= later - Duration::from_millis(1));
        let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
        g.conn().set_cancel_target(CancelTarget { pid: 42, key: vec![1, 2, 3, 4], addr });
        assert_eq!(g.conn().backend_pid(), Some(42));
        assert_eq!(reg.cancel_target(42, &[1, 2, 3, 4]), Some(addr));
        assert_eq!(reg.cancel_target(42, &[1, 2, 3, 5]), None);
        g.conn().set_last_statement(Arc::from(&b"select 1"[..]));
        g.conn().set_last_statement(Arc::from(&b"select 22"[..]));
        assert_eq!(g.conn().last_statement(), "select 22");
    }

    #[test]
    fn only_sessions_idle_long_enough_with_large_buffers_are_asked_to_shrink() {
        let reg = Arc::new(Registry::default());
        let t0 = Instant::now();
        let peer = Peer::Tcp("127.0.0.1:5000".parse().unwrap());
        let (large_idle, large_busy, small_idle) =
            (reg.register(client(), peer, t0), reg.register(client(), peer, t0), reg.register(client(), peer, t0));
        large_idle.conn().set_state(ConnState::Idle, t0);
        large_idle.conn().set_holds_large(true);
        large_busy.conn().set_state(ConnState::Active, t0);
        large_busy.conn().set_holds_large(true);
        small_idle.conn().set_state(ConnState::Idle, t0);
        let taken = |g: &ConnGuard| g.conn().signals.swap(0, AcqRel);
        assert_eq!(signal_shrinks(&reg.snapshot(), t0 + SHRINK_IDLE_AFTER - Duration::from_millis(1)), 0);
        assert_eq!([taken(&large_idle), taken(&large_busy), taken(&small_idle)], [0, 0, 0], "idle too briefly");
        assert_eq!(signal_shrinks(&reg.snapshot(), t0 + SHRINK_IDLE_AFTER), 1);
        assert_eq!([taken(&large_idle), taken(&large_busy), taken(&small_idle)], [signal::SHRINK, 0, 0]);
        large_idle.conn().set_holds_large(false);
        signal_shrinks(&reg.snapshot(), t0 + 2 * SHRINK_IDLE_AFTER);
        assert_eq!(taken(&large_idle), 0, "given back: not asked again");
    }

    #[test]
    fn ready_and_first_active_are_the_first_of_each() {
        let reg = Arc::new(Registry::default());
        let t0 = Instant::now();
        let g = reg.register(client(), Peer::Tcp("127.0.0.1:5000".parse().unwrap()), t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!((g.conn().ready_at(), g.conn().first_active_at()), (None, None));
        g.conn().set_state(ConnState::Idle, at(10));
        g.conn().set_state(ConnState::Active, at(12));
        g.conn().set_state(ConnState::Idle, at(20));
        g.conn().set_state(ConnState::Active, at(30));
        let close = |a: Option<Instant>, b: Instant| a.is_some_and(|a| a.max(b) - a.min(b) < Duration::from_micros(1));
        assert!(close(g.conn().ready_at(), at(10)));
        assert!(close(g.conn().first_active_at(), at(12)));
    }

    #[tokio::test]
    async fn a_signal_wakes_the_relay_whether_it_came_before_or_during_the_wait() {
        let reg = Arc::new(Registry::default());
        let peer = Peer::Tcp("127.0.0.1:1".parse().unwrap());
        let g = reg.register(client(), peer, Instant::now());
        let conn = g.conn().clone();
        conn.signal(signal::RELOAD);
        conn.signal(signal::SHUTDOWN);
        let bits = std::future::poll_fn(|cx| conn.poll_signals(cx)).await;
        assert_eq!(bits, signal::RELOAD | signal::SHUTDOWN, "raised before: both bits, taken at once");
        let waiting = conn.clone();
        let task = tokio::spawn(async move { std::future::poll_fn(|cx| waiting.poll_signals(cx)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished(), "nothing raised: pending");
        conn.signal(signal::RECLAIM_BUDGET);
        let bits = tokio::time::timeout(Duration::from_secs(5), task).await.expect("woken").unwrap();
        assert_eq!(bits, signal::RECLAIM_BUDGET);
    }
}
