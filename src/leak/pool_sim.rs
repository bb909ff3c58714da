//! A small connection-pool simulator for the detector's tests: the pools pgwarden meets, one per worker
//! process of a pod (1 to 32 sharing one client key), driven by bursty, diurnal or skewed load on simulated
//! time, and judged as the detector does: sampled once a second, each history through the same
//! [`Observed`](super::observe::Observed) and [`judge`](super::verdict::judge). With per-process
//! identity each worker's pool is a history of its own; without, they are one.

use super::observe::{FirstUse, Observed, Seen};
use super::verdict::{judge, Signal};
use super::{ConnView, Thresholds};
use crate::vocab::ConnState;
use std::time::{Duration, Instant};

mod kinds;
mod load;
pub use kinds::POOLS;
use load::{rate, Spell};
pub use load::{Load, LOADS};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// The most recently returned connection is reused first (node-postgres, Go database/sql).
    Lifo,
    /// The least recently returned first (psycopg_pool, SQLAlchemy QueuePool by default).
    Fifo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retire {
    /// Close the old connection, then open its replacement.
    CloseThenOpen,
    /// Open the replacement first, then close the old one (a transient +1).
    OpenThenClose,
}

/// How a pool behaves.
#[derive(Debug, Clone, Copy)]
pub struct PoolKind {
    pub name: &'static str,
    pub order: Order,
    pub max: usize,
    /// Connections kept open at least (filled one per tick: the warm-up).
    pub min: usize,
    /// Free connections beyond this are closed on return (Go's MaxIdleConns, SQLAlchemy's overflow).
    pub max_idle: usize,
    pub idle_timeout: Option<Duration>,
    pub lifetime: Option<Duration>,
    pub retire: Retire,
}

/// One client key: `workers` processes, each with its own pool of `kind`, sharing the load.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    pub kind: PoolKind,
    pub workers: usize,
    pub load: Load,
    pub seed: u64,
    pub run_for: Duration,
    pub th: Thresholds,
    /// The proxy tells the workers apart (Unix-socket peers): one history per worker.
    pub per_process: bool,
    /// The proxy's cap for the key: an open beyond it is refused (the client at its cap).
    pub cap: Option<usize>,
    /// The last worker leaks one borrowed connection at this interval, from `leak_from` on.
    pub leak_every: Option<Duration>,
    pub leak_from: Duration,
    /// The leaking worker serves nothing but its leaks (a service that leaks every connection it borrows).
    pub leaks_only: bool,
}

impl Scenario {
    pub fn healthy(kind: PoolKind, workers: usize, load: Load, seed: u64, per_process: bool) -> Scenario {
        Scenario {
            kind,
            workers,
            load,
            seed,
            // Diurnal: a night, a day, and the next night and dawn (cold workers warming up again).
            run_for: Duration::from_secs(if load == Load::Diurnal { 300 } else { 240 }),
            th: Thresholds { idle: Some(Duration::from_secs(5)), idle_in_transaction: Some(Duration::from_secs(5)) },
            per_process,
            cap: None,
            leak_every: None,
            leak_from: Duration::from_secs(30),
            leaks_only: false,
        }
    }

    pub fn leaking(self, every: Duration, from: Duration) -> Scenario {
        Scenario { leak_every: Some(every), leak_from: from, run_for: from + Duration::from_secs(40), ..self }
    }

    /// The last worker leaks every connection it borrows, one per `every` from `from`, and serves nothing else.
    pub fn leaking_only(self, every: Duration, from: Duration) -> Scenario {
        Scenario { leaks_only: true, ..self.leaking(every, from) }
    }
}

/// A flag the detector raised.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub at: Duration,
    pub signal: Signal,
    pub leaked: bool,
    pub worker: usize,
}

/// What a run showed.
pub struct SimResult {
    pub flagged: Vec<Flag>,
    /// When the first connection was leaked.
    pub first_leak: Option<Duration>,
    /// When the leaking worker's pool first opened a connection on demand after its first leak: the first
    /// moment the wire shows anything (before it, its leaks took connections the pool had free, which
    /// looks the same as requests that finished).
    pub leaker_grew: Option<Duration>,
    /// Open connections at the busiest and the quietest moment after the first 10 s.
    pub peak: usize,
    pub trough: usize,
    /// Histories the wire proved to be several pools.
    pub proven_several: usize,
}

struct SimConn {
    id: u64,
    opened: Duration,
    /// When it was ready for queries, and when it first ran one.
    ready: Duration,
    first_active: Option<Duration>,
    /// `Some(until)` while a request holds it (`Duration::MAX` for a leaked one).
    busy_until: Option<Duration>,
    /// When its current state began (borrowed, or returned).
    since: Duration,
    queries: u64,
}

impl SimConn {
    fn leaked(&self) -> bool {
        self.busy_until == Some(Duration::MAX)
    }

    fn seen(&self, t0: Instant) -> Seen {
        // A busy connection that is not leaked is active in the database; a leaked one ran its query and sits idle.
        let state = if self.busy_until.is_some() && !self.leaked() { ConnState::Active } else { ConnState::Idle };
        let since = if self.leaked() { self.since + Duration::from_millis(100) } else { self.since };
        let view = ConnView { id: self.id, state, state_since: t0 + since, listening: false, queries: self.queries };
        let first_use = FirstUse::of(Some(t0 + self.ready), self.first_active.map(|a| t0 + a));
        Seen { id: self.id, opened: t0 + self.opened, view, first_use }
    }
}

/// Runs `sc` on simulated time (100 ms ticks; the proxy samples and judges once a second).
pub fn simulate(sc: Scenario) -> SimResult {
    let kind = sc.kind;
    let tick = Duration::from_millis(100);
    let t0 = Instant::now();
    let mut rng = sc.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut pools: Vec<Vec<SimConn>> = (0..sc.workers).map(|_| Vec::new()).collect();
    let mut histories: Vec<Observed> = (0..if sc.per_process { sc.workers } else { 1 })
        .map(|_| {
            let mut o = Observed::new(t0, 0);
            o.history.one_process = sc.per_process;
            o
        })
        .collect();
    let mut ids = 0u64;
    let mut flagged = Vec::new();
    let (mut peak, mut trough) = (0, usize::MAX);
    let mut first_leak = None;
    let mut leaker_grew = None;
    let mut last_leak: Option<Duration> = None;
    let mut last_at_cap = None;
    let scale = sc.workers as f64 / 2.0;
    let leaker = sc.workers - 1;
    let mut closes: Vec<(usize, u64, Duration)> = Vec::new();
    let spelled = if sc.load == Load::Spells { sc.workers } else { 0 };
    let mut spells: Vec<Spell> = (0..spelled).map(|_| Spell::first(&mut next)).collect();
    let mut t = Duration::ZERO;
    while t < sc.run_for {
        t += tick;
        for (w, pool) in pools.iter_mut().enumerate() {
            // Requests finish: their connection goes back to the pool (or is closed if beyond max_idle).
            for c in pool.iter_mut() {
                if c.busy_until.is_some_and(|u| u <= t) {
                    c.busy_until = None;
                    c.since = t;
                }
            }
            while pool.iter().filter(|c| c.busy_until.is_none()).count() > kind.max_idle.max(kind.min) {
                let i = pool.iter().position(|c| c.busy_until.is_none()).expect("a free one");
                closes.push((w, pool.remove(i).id, t));
            }
        }
        // Arrivals this tick: each worker's burst, or the rate's expected count (its fraction drawn), each at
        // its own moment in the tick; and the leak.
        let mut spelled: Vec<(usize, Duration, Duration)> = Vec::new();
        for (w, spell) in spells.iter_mut().enumerate() {
            for _ in 0..spell.requests(t, sc.th.idle.unwrap_or(tick), &mut next) {
                spelled.push((w, t + Duration::from_millis(next() % 5), Duration::from_millis(90)));
            }
        }
        spelled.retain(|a| !(sc.leaks_only && a.0 == leaker));
        let count = if sc.load == Load::Spells {
            spelled.len()
        } else {
            let expected = rate(sc.load, t) * scale * tick.as_secs_f64();
            let unit = (next() % 1_000_000) as f64 / 1_000_000.0;
            expected as usize + usize::from(unit < expected.fract())
        };
        let leak_now =
            sc.leak_every.is_some_and(|every| t >= sc.leak_from && last_leak.is_none_or(|last| t >= last + every));
        for a in 0..count + usize::from(leak_now) {
            let leak = leak_now && a == count;
            let (worker, at, hold) = if leak {
                (leaker, t + Duration::from_millis(next() % 100), Duration::MAX)
            } else if let Some(&spelled) = spelled.get(a) {
                spelled
            } else {
                let worker = if sc.load == Load::Skewed && sc.workers > 1 && next() % 10 < 8 {
                    0
                } else {
                    (next() as usize) % sc.workers
                };
                if sc.leaks_only && worker == leaker {
                    continue;
                }
                let at = t + Duration::from_millis(next() % 100);
                (worker, at, Duration::from_millis(50 + next() % 1500))
            };
            let open_now: usize = pools.iter().map(Vec::len).sum();
            let pool = &mut pools[worker];
            let mut free_idx: Vec<usize> = (0..pool.len()).filter(|&i| pool[i].busy_until.is_none()).collect();
            free_idx.sort_by_key(|&i| pool[i].since);
            let pick = match kind.order {
                Order::Lifo => free_idx.last().copied(),
                Order::Fifo => free_idx.first().copied(),
            };
            let i = match pick {
                Some(i) => i,
                None if pool.len() < kind.max && sc.cap.is_none_or(|cap| open_now < cap) => {
                    // On demand: connected in a few milliseconds, used at once.
                    ids += 1;
                    let ready = at + Duration::from_millis(3 + next() % 5);
                    let c = SimConn {
                        id: ids,
                        opened: at,
                        ready,
                        first_active: None,
                        busy_until: None,
                        since: ready,
                        queries: 0,
                    };
                    pool.push(c);
                    if worker == leaker && first_leak.is_some_and(|f: Duration| t > f + Duration::from_secs(1)) {
                        leaker_grew.get_or_insert(t);
                    }
                    pool.len() - 1
                }
                None => {
                    if pool.len() < kind.max {
                        last_at_cap = Some(t0 + t); // refused at the proxy's cap
                    }
                    continue; // the request waits or fails inside the application
                }
            };
            let c = &mut pool[i];
            let used_at = at.max(c.ready + Duration::from_millis(1));
            c.first_active.get_or_insert(used_at);
            c.busy_until = Some(used_at.saturating_add(hold));
            c.since = used_at;
            c.queries += 1;
            if leak {
                last_leak = Some(t);
                first_leak.get_or_insert(t);
            }
        }
        for (w, pool) in pools.iter_mut().enumerate() {
            // Idle timeout and lifetime of free connections (closed by the client: Terminate).
            if let Some(timeout) = kind.idle_timeout {
                while pool.len() > kind.min {
                    match pool.iter().position(|c| c.busy_until.is_none() && t - c.since > timeout) {
                        Some(i) => closes.push((w, pool.remove(i).id, t)),
                        None => break,
                    }
                }
            }
            // The pool's own opens become ready at some moment within the tick and wait for a request.
            let mut fresh = |ids: &mut u64| {
                *ids += 1;
                let ready = t + Duration::from_millis(next() % 100);
                SimConn { id: *ids, opened: t, ready, first_active: None, busy_until: None, since: ready, queries: 0 }
            };
            if let Some(lifetime) = kind.lifetime {
                if let Some(i) = pool.iter().position(|c| c.busy_until.is_none() && t - c.opened > lifetime) {
                    let c = fresh(&mut ids);
                    match kind.retire {
                        Retire::CloseThenOpen => {
                            closes.push((w, pool.remove(i).id, t));
                            pool.push(c);
                        }
                        Retire::OpenThenClose => {
                            pool.push(c);
                            closes.push((w, pool.remove(i).id, t));
                        }
                    }
                }
            }
            // Warm-up: one connection per tick up to `min`.
            if pool.len() < kind.min {
                pool.push(fresh(&mut ids));
            }
        }
        let open: usize = pools.iter().map(Vec::len).sum();
        if t > Duration::from_secs(10) {
            peak = peak.max(open);
            trough = trough.min(open);
        }
        if !t.as_millis().is_multiple_of(1000) {
            continue;
        }
        // The proxy's tick: each history observed, then its idle connections judged.
        let now = t0 + t;
        for (h, o) in histories.iter_mut().enumerate() {
            let workers: Vec<usize> = if sc.per_process { vec![h] } else { (0..sc.workers).collect() };
            let seen: Vec<(usize, &SimConn, Seen)> = workers
                .iter()
                .flat_map(|&w| pools[w].iter().map(move |c| (w, c)))
                .map(|(w, c)| (w, c, c.seen(t0)))
                .collect();
            let views: Vec<Seen> = seen.iter().map(|s| s.2).collect();
            for &(_, id, at) in closes.iter().filter(|c| !sc.per_process || c.0 == h) {
                o.client_closed(id, t0 + at);
            }
            o.history.last_at_cap = last_at_cap;
            o.observe(now, &views, &sc.th);
            for (worker, c, s) in &seen {
                if let Some(v) = judge(&s.view, &o.history, now, &sc.th) {
                    flagged.push(Flag { at: t, signal: v.signal, leaked: c.leaked(), worker: *worker });
                }
            }
            let keep = sc.th.idle.unwrap_or_default() * 3 + Duration::from_secs(10);
            if let Some(cutoff) = now.checked_sub(keep) {
                let oldest = views.iter().filter(|v| v.view.state == ConnState::Idle).map(|v| v.view.state_since).min();
                o.history.prune(oldest.map_or(cutoff, |o| o.min(cutoff)));
            }
        }
        closes.clear();
    }
    let proven_several = histories.iter().filter(|o| o.history.several_pools_since.is_some()).count();
    SimResult { flagged, first_leak, leaker_grew, peak, trough, proven_several }
}
