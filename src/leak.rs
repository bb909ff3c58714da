//! Leak detection: which idle connections look leaked, and why. Pure functions over a snapshot plus a
//! little per-client history; the stateful [`Detector`] around them keeps that history, remembers suspects
//! that were reclaimed (so closing a leak never erases its evidence) and logs transitions.
//!
//! Reasons (SPEC "Leak reasons"):
//! - `idle_in_transaction`: idle inside a (possibly failed) transaction past `leak.idle_in_transaction_threshold`.
//! - `idle_while_client_grew`: idle past `leak.idle_threshold` and either a step of a [`staircase`] (a chain of
//!   idle connections each opened on demand after the one before went idle, none used again: the leak of a
//!   service that leaks every borrow, judged over TCP too) or, for one pool, *growth*: its client kept more
//!   connections open than it had at its lowest since this one went idle, for half the threshold, including
//!   an on-demand open after it went idle. A pool opens a connection only when none is free, so growth while
//!   this one sits idle means it is not in the pool. Growth during the client's warm-up (its first
//!   threshold) and a transient +1 do not count; the count it had when this one went idle is read from the
//!   sample after (samples are up to [`MAX_SAMPLE_INTERVAL`] apart). A whole key (TCP) is judged by growth
//!   only past the staircase's *beyond* age and never once proven to hide several pools ([`observe`]).
//! - `idle_while_client_at_cap`: idle past `leak.idle_threshold` while its client was refused or queued at its
//!   cap after this one went idle (a fixed-size pool whose leaks cannot grow the count, once it starves).
//!
//!   Only a connection that was used counts (a pool's untouched spare is not borrowed), and only growth that
//!   includes an *on-demand* open (a connection used right after it was ready) after it went idle.
//!   One history per pool: each worker process of a client key has its own when the proxy can tell
//!   processes apart (Unix socket). Each verdict carries its evidence and confidence ([`verdict`]).
//!
//! Connections that ran LISTEN are never `idle_while_*` suspects: idling is their job.

use crate::vocab::ConnState;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub mod detector;
pub mod observe;
/// The pool simulator the detector is tuned on; public so that the integration tests can run the same
/// scenarios through it and through the proxy with real processes, and compare the verdicts.
#[doc(hidden)]
pub mod pool_sim;
pub mod recent;
pub mod staircase;
pub mod verdict;
pub use detector::Detector;
use recent::{SpellBound, Warmth};
use staircase::Staircase;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeakReason {
    IdleInTransaction,
    IdleWhileClientGrew,
    IdleWhileClientAtCap,
}

impl LeakReason {
    pub fn as_str(self) -> &'static str {
        match self {
            LeakReason::IdleInTransaction => "idle_in_transaction",
            LeakReason::IdleWhileClientGrew => "idle_while_client_grew",
            LeakReason::IdleWhileClientAtCap => "idle_while_client_at_cap",
        }
    }
}

/// Reuses a whole key's history must have shown before its growth is judged: until its pools reuse
/// connections, several cold workers each opening one connection on its first request look exactly like
/// one pool leaking each one (the staircase still judges it).
pub const SHARED_MIN_REUSES: u64 = 3;

/// A whole key's growth is judged only while its pools recently reused connections at least once for every
/// this many on-demand opens: cold worker processes taking their first requests open far more often than
/// they reuse; a warm pool reuses more, and even one that leaks every other borrow reuses once for every two
/// opens (Go's database/sql with its default of 2 idle connections churns: it opens often too).
pub const SHARED_WARMTH: u64 = 2;

/// Thresholds a whole key's growth is not judged for after it first appears: its worker processes take
/// their first requests in turn, each opening a connection while the others' wait.
pub const SHARED_WARM_UP_THRESHOLDS: u32 = 3;

/// The longest time between two samples of a client's open count (housekeeping runs at most this far apart).
pub const MAX_SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Thresholds from `leak.*`; `None` disables that reason.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub idle: Option<Duration>,
    pub idle_in_transaction: Option<Duration>,
}

/// What the detector needs to know of one connection.
#[derive(Debug, Clone, Copy)]
pub struct ConnView {
    pub id: u64,
    pub state: ConnState,
    pub state_since: Instant,
    pub listening: bool,
    /// Queries it has run: a connection never used is a pool's spare, never a leak.
    pub queries: u64,
}

/// The most on-demand opens a history keeps (the newest; a proof that needed an older one is only missed).
const MAX_ON_DEMAND_OPENS: usize = 256;

/// A pool's recent history as the proxy sees it (one client key, or one process of it): its open count
/// over time (as change points), its on-demand opens, its last time at its cap, and whether it was proven
/// to be several pools.
#[derive(Debug, Clone)]
pub struct ClientHistory {
    pub first_seen: Instant,
    /// `(since, open)`: the open count from `since` on, oldest first.
    changes: VecDeque<(Instant, u32)>,
    /// When connections opened on demand became ready (used at once: no connection of the pool was free),
    /// oldest first.
    on_demand: VecDeque<Instant>,
    pub last_at_cap: Option<Instant>,
    /// When the wire proved that several independent pools share this history (see [`observe`]): growth
    /// then says nothing about any one connection, so `idle_while_client_grew` is not judged.
    pub several_pools_since: Option<Instant>,
    /// Ticks at which one of its connections ran a query again after an earlier one (a pool reusing it).
    pub reuses: u64,
    /// The history is one process's (the proxy tells the key's processes apart), not a whole key's.
    pub one_process: bool,
    /// The longest idle spells its pools ended themselves (reuse, or a close while free).
    pub spells: SpellBound,
    /// Its recent reuses against its recent on-demand opens.
    pub warmth: Warmth,
    /// The staircase found at the last tick (its steps are suspects).
    pub staircase: Staircase,
}

impl ClientHistory {
    pub fn new(first_seen: Instant, open: u32) -> Self {
        ClientHistory {
            first_seen,
            changes: VecDeque::from([(first_seen, open)]),
            on_demand: VecDeque::new(),
            last_at_cap: None,
            several_pools_since: None,
            reuses: 0,
            one_process: false,
            spells: SpellBound::new(first_seen),
            warmth: Warmth::new(first_seen),
            staircase: Staircase::default(),
        }
    }

    /// A connection opened on demand became ready at `at`.
    pub fn record_on_demand_open(&mut self, at: Instant) {
        self.warmth.opened(at);
        let i = self.on_demand.partition_point(|&t| t <= at);
        self.on_demand.insert(i, at);
        if self.on_demand.len() > MAX_ON_DEMAND_OPENS {
            self.on_demand.pop_front();
        }
    }

    /// The latest on-demand open.
    pub fn last_on_demand_open(&self) -> Option<Instant> {
        self.on_demand.back().copied()
    }

    /// The latest on-demand open within `(from, to]`.
    pub fn on_demand_open_latest_within(&self, from: Instant, to: Instant) -> Option<Instant> {
        self.on_demand.iter().rev().find(|&&t| t > from && t <= to).copied()
    }

    /// Records the open count seen at `now`.
    pub fn record(&mut self, now: Instant, open: u32) {
        if self.changes.back().is_none_or(|&(_, last)| last != open) {
            self.changes.push_back((now, open));
        }
    }

    /// Forgets what happened before `cutoff`, keeping the value in effect at it.
    pub fn prune(&mut self, cutoff: Instant) {
        while self.changes.len() > 1 && self.changes[1].0 <= cutoff {
            self.changes.pop_front();
        }
        while self.on_demand.front().is_some_and(|&t| t < cutoff) {
            self.on_demand.pop_front();
        }
    }

    /// The open count at `t` (the oldest known value for a time before the history).
    pub fn open_at(&self, t: Instant) -> u32 {
        self.changes.iter().take_while(|(since, _)| *since <= t).last().or(self.changes.front()).map_or(0, |c| c.1)
    }

    /// The open count once the sample after `t` was taken: the largest of the value at `t` and the values
    /// recorded within [`MAX_SAMPLE_INTERVAL`] after it. A change recorded then may have happened before `t`
    /// (samples are up to that far apart), so it is not taken for growth after `t`.
    pub fn open_just_after(&self, t: Instant) -> u32 {
        let until = t.checked_add(MAX_SAMPLE_INTERVAL).unwrap_or(t);
        let later = self.changes.iter().filter(|(since, _)| *since > t && *since <= until).map(|c| c.1);
        later.fold(self.open_at(t), u32::max)
    }

    /// The lowest open count from just after `t` (as [`ClientHistory::open_just_after`]) until `until`: a
    /// pool that shrank (free connections closed by its idle timeout) and then opened again on demand while
    /// one connection stayed idle did not hand that one out, however high the count was when it went idle.
    pub fn trough_after(&self, t: Instant, until: Instant) -> u32 {
        let settled = t.checked_add(MAX_SAMPLE_INTERVAL).unwrap_or(t);
        let later = self.changes.iter().filter(|(since, _)| *since > settled && *since <= until).map(|c| c.1);
        later.fold(self.open_just_after(t), u32::min)
    }

    /// The smallest open count during `[from, to]`.
    pub fn min_open(&self, from: Instant, to: Instant) -> u32 {
        let at_start = self.open_at(from);
        self.changes.iter().filter(|(since, _)| *since > from && *since <= to).map(|c| c.1).fold(at_start, u32::min)
    }
}

/// Whether one connection is a suspect, and why. Pure ([`verdict::judge`] has the evidence too).
pub fn suspect_reason(c: &ConnView, h: &ClientHistory, now: Instant, th: &Thresholds) -> Option<LeakReason> {
    verdict::judge(c, h, now, th).map(|v| v.reason)
}

#[cfg(test)]
mod tests;
