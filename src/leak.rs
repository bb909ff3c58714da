//! Leak detection: which idle connections look leaked, and why. Pure functions over a snapshot plus a
//! little per-client history; the stateful [`Detector`] around them keeps that history, remembers suspects
//! that were reclaimed (so closing a leak never erases its evidence) and logs transitions.
//!
//! Reasons (SPEC "Leak reasons"):
//! - `idle_in_transaction`: idle inside a (possibly failed) transaction past `leak.idle_in_transaction_threshold`.
//! - `idle_while_client_grew`: idle past `leak.idle_threshold` while its client *kept* more connections open
//!   than it had when this one went idle, for at least the threshold. A pool opens a connection only when none
//!   is free, so growth while this one sits idle means it is not in the pool: it was borrowed and forgotten.
//!   Growth during the client's warm-up (its first threshold) does not count: pools fill one connection at a
//!   time while the first ones sit idle. A transient +1 (a replacement opened before the old one closes)
//!   is not sustained and does not count. The count it had when this one went idle is read from the sample
//!   after (samples are up to [`MAX_SAMPLE_INTERVAL`] apart, so a change recorded then may predate it).
//! - `idle_while_client_at_cap`: idle past `leak.idle_threshold` while its client was refused or queued at its
//!   cap after this one went idle (a fixed-size pool whose leaks cannot grow the count, once it starves).
//!
//! Connections that ran LISTEN are never `idle_while_*` suspects: idling is their job.

use crate::vocab::ConnState;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub mod detector;
#[cfg(test)]
mod pool_sim;
pub use detector::Detector;

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
    pub state: ConnState,
    pub state_since: Instant,
    pub listening: bool,
}

/// A client's recent history: its open count over time (as change points) and its last time at its cap.
#[derive(Debug, Clone)]
pub struct ClientHistory {
    pub first_seen: Instant,
    /// `(since, open)`: the open count from `since` on, oldest first.
    changes: VecDeque<(Instant, u32)>,
    pub last_at_cap: Option<Instant>,
}

impl ClientHistory {
    pub fn new(first_seen: Instant, open: u32) -> Self {
        ClientHistory { first_seen, changes: VecDeque::from([(first_seen, open)]), last_at_cap: None }
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

    /// The smallest open count during `[from, to]`.
    pub fn min_open(&self, from: Instant, to: Instant) -> u32 {
        let at_start = self.open_at(from);
        self.changes.iter().filter(|(since, _)| *since > from && *since <= to).map(|c| c.1).fold(at_start, u32::min)
    }
}

/// Whether one connection is a suspect, and why. Pure.
pub fn suspect_reason(c: &ConnView, h: &ClientHistory, now: Instant, th: &Thresholds) -> Option<LeakReason> {
    let idle_for = now.saturating_duration_since(c.state_since);
    if c.state.in_transaction() {
        return th.idle_in_transaction.filter(|t| idle_for >= *t).map(|_| LeakReason::IdleInTransaction);
    }
    if c.state != ConnState::Idle || c.listening {
        return None;
    }
    let t = th.idle?;
    if idle_for < t {
        return None;
    }
    if h.last_at_cap.is_some_and(|at| at >= c.state_since) {
        return Some(LeakReason::IdleWhileClientAtCap);
    }
    let warmed_up = h.first_seen.checked_add(t)?;
    let baseline_at = c.state_since.max(warmed_up);
    let window_start = now.checked_sub(t)?;
    if window_start < baseline_at {
        return None;
    }
    (h.min_open(window_start, now) > h.open_just_after(baseline_at)).then_some(LeakReason::IdleWhileClientGrew)
}

#[cfg(test)]
mod tests;
