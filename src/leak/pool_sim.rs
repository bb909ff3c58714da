//! A small connection-pool simulator for the detector's tests: the pools pgwarden meets, driven by bursty
//! load on simulated time, as seen from the proxy (the client's open count and each connection's idle time).

use super::{suspect_reason, ClientHistory, ConnView, LeakReason, Thresholds};
use crate::vocab::ConnState;
use std::time::{Duration, Instant};

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

struct SimConn {
    opened: Duration,
    /// `Some(until)` while a request holds it (`Duration::MAX` for a leaked one).
    busy_until: Option<Duration>,
    idle_since: Duration,
}

/// What a run showed.
pub struct SimResult {
    /// Every (time, reason) a free or leaked idle connection was flagged at.
    pub flagged: Vec<(Duration, LeakReason)>,
    /// Open connections at the busiest and the quietest moment after the first 10 s.
    pub peak: usize,
    pub trough: usize,
}

/// Runs `kind` for `run_for` with bursty load from `seed`; `leak_every` leaks one borrowed connection at that
/// interval.
pub fn simulate(
    kind: PoolKind,
    seed: u64,
    run_for: Duration,
    th: Thresholds,
    leak_every: Option<Duration>,
) -> SimResult {
    let tick = Duration::from_millis(100);
    let t0 = Instant::now();
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut conns: Vec<SimConn> = Vec::new();
    let mut history = ClientHistory::new(t0, 0);
    let mut flagged = Vec::new();
    let (mut peak, mut trough) = (0, usize::MAX);
    let mut last_leak = Duration::ZERO;
    let mut t = Duration::ZERO;
    while t < run_for {
        t += tick;
        // Requests finish: their connection goes back to the pool (or is closed if beyond max_idle).
        for c in conns.iter_mut() {
            if c.busy_until.is_some_and(|u| u <= t) {
                c.busy_until = None;
                c.idle_since = t;
            }
        }
        let free = |conns: &Vec<SimConn>| conns.iter().filter(|c| c.busy_until.is_none()).count();
        while free(&conns) > kind.max_idle.max(kind.min) {
            let i = conns.iter().position(|c| c.busy_until.is_none()).expect("a free one");
            conns.remove(i);
        }
        // Load in 20 s cycles: a 3 s burst (~10 requests/s), 5 s moderate (~5/s), 12 s quiet (~1/s).
        let arrivals = match (t.as_millis() / 1000) % 20 {
            0..=2 => (next() % 3) as usize,
            3..=7 => usize::from(next() % 2 == 0),
            _ => usize::from(next() % 10 == 0),
        };
        let leak_now = leak_every.is_some_and(|every| t >= last_leak + every);
        for a in 0..arrivals + usize::from(leak_now) {
            let leak = leak_now && a == arrivals;
            let hold = if leak { Duration::MAX } else { Duration::from_millis(50 + next() % 1500) };
            let mut free_idx: Vec<usize> = (0..conns.len()).filter(|&i| conns[i].busy_until.is_none()).collect();
            free_idx.sort_by_key(|&i| conns[i].idle_since);
            let pick = match kind.order {
                Order::Lifo => free_idx.last().copied(),
                Order::Fifo => free_idx.first().copied(),
            };
            match pick {
                Some(i) => conns[i].busy_until = Some(t.saturating_add(hold)),
                None if conns.len() < kind.max => {
                    conns.push(SimConn { opened: t, busy_until: Some(t.saturating_add(hold)), idle_since: t })
                }
                None => {
                    history.last_at_cap = Some(t0 + t); // refused or queued at the cap
                    continue;
                }
            }
            if leak {
                last_leak = t;
            }
        }
        // Idle timeout and lifetime of free connections.
        if let Some(timeout) = kind.idle_timeout {
            while conns.len() > kind.min {
                match conns.iter().position(|c| c.busy_until.is_none() && t - c.idle_since > timeout) {
                    Some(i) => drop(conns.remove(i)),
                    None => break,
                }
            }
        }
        if let Some(lifetime) = kind.lifetime {
            if let Some(i) = conns.iter().position(|c| c.busy_until.is_none() && t - c.opened > lifetime) {
                let fresh = SimConn { opened: t, busy_until: None, idle_since: t };
                match kind.retire {
                    Retire::CloseThenOpen => {
                        conns.remove(i);
                        history.record(t0 + t, conns.len() as u32);
                        conns.push(fresh);
                    }
                    Retire::OpenThenClose => {
                        conns.push(fresh);
                        history.record(t0 + t, conns.len() as u32);
                        conns.remove(i);
                    }
                }
            }
        }
        // Warm-up: one connection per tick up to `min`.
        if conns.len() < kind.min {
            conns.push(SimConn { opened: t, busy_until: None, idle_since: t });
        }
        history.record(t0 + t, conns.len() as u32);
        if t > Duration::from_secs(10) {
            peak = peak.max(conns.len());
            trough = trough.min(conns.len());
        }
        for c in &conns {
            // A busy connection that is not leaked is active in the database; a leaked one sits idle.
            let leaked = c.busy_until == Some(Duration::MAX);
            if c.busy_until.is_some() && !leaked {
                continue;
            }
            let view = ConnView { state: ConnState::Idle, state_since: t0 + c.idle_since, listening: false };
            if let Some(reason) = suspect_reason(&view, &history, t0 + t, &th) {
                flagged.push((t, reason));
            }
        }
    }
    SimResult { flagged, peak, trough }
}

/// The pools of SPEC's list, with their real defaults scaled to simulated seconds.
pub const POOLS: [PoolKind; 6] = [
    PoolKind {
        name: "HikariCP",
        order: Order::Lifo,
        max: 10,
        min: 10,
        max_idle: 10,
        idle_timeout: None,
        lifetime: Some(Duration::from_secs(30)),
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "node-postgres",
        order: Order::Lifo,
        max: 10,
        min: 0,
        max_idle: 10,
        idle_timeout: Some(Duration::from_secs(10)),
        lifetime: None,
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "Go database/sql",
        order: Order::Lifo,
        max: 10,
        min: 0,
        max_idle: 2,
        idle_timeout: None,
        lifetime: Some(Duration::from_secs(60)),
        retire: Retire::CloseThenOpen,
    },
    PoolKind {
        name: "pgx",
        order: Order::Lifo,
        max: 10,
        min: 4,
        max_idle: 10,
        idle_timeout: Some(Duration::from_secs(8)),
        lifetime: Some(Duration::from_secs(40)),
        retire: Retire::OpenThenClose,
    },
    PoolKind {
        name: "psycopg_pool",
        order: Order::Fifo,
        max: 10,
        min: 4,
        max_idle: 10,
        idle_timeout: Some(Duration::from_secs(8)),
        lifetime: Some(Duration::from_secs(40)),
        retire: Retire::OpenThenClose,
    },
    PoolKind {
        name: "SQLAlchemy QueuePool",
        order: Order::Fifo,
        max: 15,
        min: 0,
        max_idle: 5,
        idle_timeout: None,
        lifetime: None,
        retire: Retire::CloseThenOpen,
    },
];
