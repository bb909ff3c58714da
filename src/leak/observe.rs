//! What the detector learns from watching one history's connections tick by tick: the open count, which
//! connections were opened on demand, and whether the wire has proven that several pools share the history.
//! Pure: the detector and the pool simulator feed it the same observations.
//!
//! The proof: one pool opens a connection on demand only when none of its connections is free. So a
//! connection that sat idle across another's on-demand open, and was then used again, was not free *in the
//! pool that opened*: another pool holds it (or it was borrowed and kept idle by a request, which counts as
//! the same here: it is not evidence of a leak either). Once proven, growth stops being evidence (one
//! worker's pool grows while another's connection waits for its worker's next request), and the history
//! is reported as several pools. Reuse is the proof because it is what a leak never shows.

use super::staircase::{
    Staircase, Step, MIN_STEPS_ONE_PROCESS, MIN_STEPS_SEVERAL_POOLS, MIN_STEPS_SHARED, SPELL_WINDOW,
};
use super::{ClientHistory, ConnView, Thresholds, MAX_SAMPLE_INTERVAL};
use crate::vocab::ConnState;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A connection used this soon after it was ready was opened because a request was waiting for it. A
/// pool's own opens (filling its minimum, replacing an old connection) sit free until a request comes.
pub const ON_DEMAND_WITHIN: Duration = Duration::from_millis(25);

/// How long a connection must have sat idle across an on-demand open for its reuse to count as proof: a
/// request that holds its connection idle for a moment (an HTTP call between two queries) while its pool
/// opens another must not prove anything.
pub fn min_idle_spell(threshold: Duration) -> Duration {
    (threshold / 4).min(Duration::from_secs(60))
}

/// Separate proofs (each resting on a different on-demand open) needed before a history counts as several
/// pools. One can be a single pool's own open misjudged as on demand (a LIFO pool hands its newest
/// connection, a fresh replacement, to a request that came right after it; about 1 single pool in 84 in
/// the simulations). A whole key (TCP) takes the first: several worker processes behind one key are the
/// common case. One process rarely holds several pools, so its history needs three.
pub fn proofs_needed(one_process: bool) -> u32 {
    if one_process {
        3
    } else {
        1
    }
}

/// How a connection's first use went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstUse {
    NotYet,
    /// Used within [`ON_DEMAND_WITHIN`] of being ready (when it was ready).
    OnDemand(Instant),
    Later,
}

impl FirstUse {
    pub fn of(ready_at: Option<Instant>, first_active_at: Option<Instant>) -> FirstUse {
        match (ready_at, first_active_at) {
            (Some(ready), Some(active)) if active.saturating_duration_since(ready) <= ON_DEMAND_WITHIN => {
                FirstUse::OnDemand(ready)
            }
            (_, Some(_)) => FirstUse::Later,
            _ => FirstUse::NotYet,
        }
    }
}

/// How long a proof of several pools holds without a new one: a single pool misjudged once is judged by its
/// growth again, and a key whose pods were scaled down to one worker is too.
pub const PROOF_TTL: Duration = SPELL_WINDOW;

/// One connection at a tick.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub id: u64,
    /// When the proxy accepted it.
    pub opened: Instant,
    pub view: ConnView,
    pub first_use: FirstUse,
}

#[derive(Debug, Clone, Copy)]
struct Memo {
    /// The start of the idle spell it was in at the last tick, and that tick.
    /// Whether it had run a query before that spell (a spare's first use ends no spell of a borrowed one).
    idle: Option<(Instant, Instant, bool)>,
    first_use_recorded: bool,
    queries: u64,
    /// When it was accepted, if it was opened on demand.
    opened_on_demand: Option<Instant>,
}

/// One history and what it remembers of its connections between ticks.
#[derive(Debug, Clone)]
pub struct Observed {
    pub history: ClientHistory,
    memo: HashMap<u64, Memo>,
    /// Proofs so far, and the on-demand open the last one rested on (one open proves once).
    proofs: u32,
    last_proof_open: Option<Instant>,
    last_proof_at: Option<Instant>,
}

impl Observed {
    pub fn new(now: Instant, open: u32) -> Self {
        Observed {
            history: ClientHistory::new(now, open),
            memo: HashMap::new(),
            proofs: 0,
            last_proof_open: None,
            last_proof_at: None,
        }
    }

    /// A connection of this history was closed by its client (Terminate): if it was idle, its pool ended
    /// that idle spell itself (an idle timeout), which bounds how long its pools let connections wait.
    pub fn client_closed(&mut self, id: u64, now: Instant) {
        // A spare never used says nothing of how long a borrowed connection waits (a pool retires its spares by age).
        if let Some(Memo { idle: Some((from, _, true)), .. }) = self.memo.remove(&id) {
            self.history.spells.record(now, now.saturating_duration_since(from));
        }
    }

    /// Takes in this tick's connections (every open one of the history); true when this tick proved the
    /// history to be several pools.
    pub fn observe(&mut self, now: Instant, conns: &[Seen], th: &Thresholds) -> bool {
        self.history.record(now, conns.len() as u32);
        for c in conns {
            let memo = self.memo.entry(c.id).or_insert(Memo {
                idle: None,
                first_use_recorded: false,
                queries: c.view.queries,
                opened_on_demand: None,
            });
            if c.view.queries > memo.queries {
                if memo.queries > 0 {
                    self.history.reuses += 1;
                    self.history.warmth.reused(now);
                }
                memo.queries = c.view.queries;
            }
            if !memo.first_use_recorded {
                match c.first_use {
                    FirstUse::NotYet => {}
                    FirstUse::Later => memo.first_use_recorded = true,
                    FirstUse::OnDemand(ready) => {
                        memo.first_use_recorded = true;
                        memo.opened_on_demand = Some(c.opened);
                        self.history.record_on_demand_open(ready);
                    }
                }
            }
        }
        let spell = th.idle.map(min_idle_spell);
        let mut proven = false;
        for c in conns {
            let memo = self.memo.get_mut(&c.id).expect("entered above");
            let idle_now = c.view.state == ConnState::Idle && !c.view.listening;
            if let Some((from, seen_at, used_before)) = memo.idle {
                let same_spell = idle_now && c.view.state_since == from;
                if !same_spell {
                    // Its pool ended the spell: it waited for work this long (at most; its new state began
                    // when the work began, or after it ended).
                    if used_before {
                        self.history.spells.record(now, c.view.state_since.saturating_duration_since(from));
                    }
                    // Used since `from`: was it free across an on-demand open? An open within a sample
                    // interval of `from` may have been asked for just before this one was returned.
                    let long_enough = spell.is_some_and(|s| seen_at.saturating_duration_since(from) >= s);
                    let after = from.checked_add(MAX_SAMPLE_INTERVAL).unwrap_or(from);
                    let open = self.history.on_demand_open_latest_within(after, seen_at);
                    if let Some(open) =
                        open.filter(|&o| long_enough && c.view.queries > 0 && self.last_proof_open != Some(o))
                    {
                        self.last_proof_open = Some(open);
                        self.last_proof_at = Some(now);
                        self.proofs += 1;
                        proven = self.proofs >= proofs_needed(self.history.one_process);
                    }
                    memo.idle = None;
                }
            }
            if idle_now {
                let used_before = match memo.idle {
                    Some((from, _, used)) if from == c.view.state_since => used,
                    _ => c.view.queries > 0,
                };
                memo.idle = Some((c.view.state_since, now, used_before));
            }
        }
        if self.memo.len() > conns.len() {
            let present: std::collections::HashSet<u64> = conns.iter().map(|c| c.id).collect();
            self.memo.retain(|id, _| present.contains(id));
        }
        self.history.staircase = self.staircase(now, conns, th);
        // Proofs decay: without a new one for PROOF_TTL the history is judged by its growth again.
        if self.last_proof_at.is_some_and(|at| now.saturating_duration_since(at) > PROOF_TTL) {
            self.proofs = 0;
            self.last_proof_at = None;
            self.history.several_pools_since = None;
        }
        if proven && self.history.several_pools_since.is_none() {
            self.history.several_pools_since = Some(now);
            return true;
        }
        false
    }

    /// The staircase among this tick's idle, used connections (see [`super::staircase`]).
    fn staircase(&mut self, now: Instant, conns: &[Seen], th: &Thresholds) -> Staircase {
        let Some(threshold) = th.idle else { return Staircase::default() };
        let steps: Vec<Step> = conns
            .iter()
            .filter(|c| c.view.state == ConnState::Idle && !c.view.listening && c.view.queries > 0)
            .map(|c| Step {
                id: c.id,
                idle_since: c.view.state_since,
                opened_on_demand: self.memo.get(&c.id).and_then(|m| m.opened_on_demand),
            })
            .collect();
        let min_steps = match (self.history.one_process, self.history.several_pools_since) {
            (true, _) => MIN_STEPS_ONE_PROCESS,
            (false, None) => MIN_STEPS_SHARED,
            (false, Some(_)) => MIN_STEPS_SEVERAL_POOLS,
        };
        let bound = self.history.spells.get(now);
        Staircase::find(&steps, now, threshold, bound, min_steps, self.history.spells.last_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn th() -> Thresholds {
        Thresholds { idle: Some(Duration::from_secs(8)), idle_in_transaction: None }
    }

    fn seen(id: u64, state: ConnState, since: Instant, queries: u64, first_use: FirstUse) -> Seen {
        Seen {
            id,
            opened: since,
            view: ConnView { id, state, state_since: since, listening: false, queries },
            first_use,
        }
    }

    #[test]
    fn first_use_right_after_ready_is_on_demand() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        assert_eq!(FirstUse::of(Some(ms(0)), Some(ms(3))), FirstUse::OnDemand(ms(0)));
        assert_eq!(FirstUse::of(Some(ms(0)), Some(ms(400))), FirstUse::Later);
        assert_eq!(FirstUse::of(Some(ms(0)), None), FirstUse::NotYet);
        assert_eq!(FirstUse::of(None, None), FirstUse::NotYet);
    }

    #[test]
    fn a_connection_reused_after_sitting_free_across_an_on_demand_open_proves_several_pools() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut o = Observed::new(t0, 0);
        // Worker A's connection goes idle at 1 s; at 5 s worker B opens one on demand; at 9 s A uses it again.
        let a_idle = seen(1, ConnState::Idle, s(1), 3, FirstUse::OnDemand(t0));
        assert!(!o.observe(s(2), &[a_idle], &th()));
        let b = seen(2, ConnState::Active, s(5), 1, FirstUse::OnDemand(s(5)));
        assert!(!o.observe(s(6), &[a_idle, b], &th()));
        assert!(!o.observe(s(8), &[a_idle, b], &th()));
        let a_used = seen(1, ConnState::Active, s(9), 4, FirstUse::OnDemand(t0));
        assert!(o.observe(s(9), &[a_used, b], &th()));
        assert_eq!(o.history.several_pools_since, Some(s(9)));
        assert!(!o.observe(s(10), &[a_used, b], &th()), "proven once");
    }

    #[test]
    fn what_one_pool_does_proves_nothing() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let mut o = Observed::new(t0, 0);
        // A used and idle; a maintenance open (used 2 s after ready) while A sits idle; A used again.
        let a_idle = seen(1, ConnState::Idle, s(1), 3, FirstUse::OnDemand(t0));
        o.observe(s(2), &[a_idle], &th());
        let b = seen(2, ConnState::Idle, s(4), 0, FirstUse::NotYet);
        o.observe(s(5), &[a_idle, b], &th());
        let b = seen(2, ConnState::Idle, s(7), 1, FirstUse::of(Some(s(4)), Some(s(6))));
        o.observe(s(8), &[a_idle, b], &th());
        let a_used = seen(1, ConnState::Active, s(9), 4, FirstUse::OnDemand(t0));
        assert!(!o.observe(s(9), &[a_used, b], &th()), "the open was not on demand");
        // An on-demand open just after A was returned (asked for before it was), then A used again.
        let a_idle = seen(1, ConnState::Idle, s(10), 5, FirstUse::OnDemand(t0));
        o.observe(s(10), &[a_idle, b], &th());
        let c = seen(3, ConnState::Active, s(10), 1, FirstUse::OnDemand(s(10) + Duration::from_millis(300)));
        o.observe(s(11), &[a_idle, b, c], &th());
        o.observe(s(14), &[a_idle, b, c], &th());
        let a_used = seen(1, ConnState::Active, s(15), 6, FirstUse::OnDemand(t0));
        assert!(!o.observe(s(15), &[a_used, b, c], &th()), "within a sample interval of its return");
        // An idle spell shorter than threshold/4 across an on-demand open (a request between two queries).
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let a_idle = seen(1, ConnState::Idle, ms(16_500), 7, FirstUse::OnDemand(t0));
        o.observe(s(17), &[a_idle, b, c], &th());
        let d = seen(4, ConnState::Active, ms(17_600), 1, FirstUse::OnDemand(ms(17_600)));
        o.observe(s(18), &[a_idle, b, c, d], &th());
        let a_used = seen(1, ConnState::Active, ms(18_400), 8, FirstUse::OnDemand(t0));
        assert!(!o.observe(s(19), &[a_used, b, c, d], &th()), "idle 1.9 s < 8 s / 4");
        assert_eq!(o.history.several_pools_since, None);
        // Closed connections are forgotten.
        o.observe(s(20), &[b], &th());
        assert_eq!(o.memo.len(), 1);
    }
}
