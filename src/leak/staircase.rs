//! The staircase: the leak of a service that leaks every connection it borrows. Pure.
//!
//! One pool opens a connection on demand only when none of its connections is free. So if connection B was
//! opened on demand after connection A went idle, and A has sat idle ever since, A was not free in B's pool:
//! A is leaked, or it belongs to another pool. A *chain* of idle connections, each opened on demand after the
//! one before went idle, therefore holds at most one connection per pool that is not leaked: a chain longer
//! than the pools a key can hide is a leak. A service leaking every borrow builds one step per request, and
//! nothing on the wire ever ends it.
//!
//! The chain counts only connections idle past the *beyond* age: the threshold, or twice the longest idle
//! spell this history's pools were seen to end themselves (a connection used again, or closed by its
//! client while idle: the pool's idle timeout). A healthy pool's connection waits for work about as long as
//! its pool lets connections wait; a leaked one waits forever. So pools that reuse or close their free
//! connections raise the bar for their own key, and a service that never does keeps it at the threshold.

pub use super::recent::{SpellBound, SPELL_WINDOW};
use std::time::{Duration, Instant};

/// How much later than the previous step's return a step's connection must have been accepted to link: the
/// pool's decision that nothing was free came a moment before its connect reached the proxy.
pub const LINK_MARGIN: Duration = Duration::from_millis(250);

/// Chain members a history's suspects need when the proxy tells its processes apart (one pool, most
/// likely): two leaked connections and the step after them.
pub const MIN_STEPS_ONE_PROCESS: usize = 3;

/// Chain members a whole key's suspects need (TCP: the key may hide as many pools as the pod has worker
/// processes, each of which can contribute one idle connection to a chain while it waits for its next
/// request). README "What is flagged, and when" has what this costs and spares.
pub const MIN_STEPS_SHARED: usize = 6;

/// Chain members a whole key's suspects need once the wire proved it hides several pools (a connection
/// free across another's on-demand open was used again): several worker processes are there, each of
/// which can lend the chain a step while it waits for its next request.
pub const MIN_STEPS_SEVERAL_POOLS: usize = 8;

/// Steps enough when the history has been quiet (no connection used again, none closed while free) since
/// the first step went idle at least [`quiet_after`] ago.
pub const MIN_STEPS_QUIET: usize = 3;

/// How long a quiet staircase must have lasted: twelve thresholds. Healthy worker processes that keep getting
/// requests use a connection again long before; a leaker whose pool is exhausted never does.
pub fn quiet_after(threshold: Duration) -> Duration {
    threshold.saturating_mul(12)
}

/// An idle connection as the staircase sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub id: u64,
    /// The start of its current idle spell.
    pub idle_since: Instant,
    /// When the proxy accepted it, if it was opened on demand (used as soon as it was ready: its pool had
    /// nothing free when it asked for it).
    pub opened_on_demand: Option<Instant>,
}

/// The longest chain among `idle`: the first member any of them, each later one opened on demand more than
/// [`LINK_MARGIN`] after the one before went idle. Oldest first. Greedy by idle start, which is optimal
/// (interval scheduling).
pub fn longest_chain(idle: &[Step]) -> Vec<Step> {
    let mut sorted = idle.to_vec();
    sorted.sort_by_key(|s| (s.idle_since, s.id));
    let mut chain: Vec<Step> = Vec::new();
    for s in sorted {
        let links = match chain.last() {
            None => true,
            Some(prev) => {
                let after = prev.idle_since.checked_add(LINK_MARGIN).unwrap_or(prev.idle_since);
                s.opened_on_demand.is_some_and(|o| o > after)
            }
        };
        if links {
            chain.push(s);
        }
    }
    chain
}

/// How long a connection must have sat idle to count as a step: the threshold, or twice the longest spell
/// the history's pools ended themselves.
pub fn beyond(threshold: Duration, bound: Duration) -> Duration {
    threshold.max(bound.saturating_mul(2))
}

/// What the staircase found in one history at one tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Staircase {
    /// The chain's members idle past `beyond`, oldest first (suspects when there are enough of them).
    pub steps: Vec<u64>,
    /// The age a step must be idle: the threshold or twice `bound`.
    pub beyond: Duration,
    /// The longest idle spell the history's pools ended themselves (zero when none was seen).
    pub bound: Duration,
    /// Over how long the steps were opened (the oldest step's idle start to the newest one's).
    pub span: Duration,
}

impl Staircase {
    /// The chain among `idle` (every idle, used connection of the history) whose members have been idle past
    /// `beyond(threshold, bound)` at `now`, kept when it has at least `min_steps` members.
    pub fn find(
        idle: &[Step],
        now: Instant,
        threshold: Duration,
        bound: Duration,
        min_steps: usize,
        last_spell_end: Option<Instant>,
    ) -> Staircase {
        let beyond = beyond(threshold, bound);
        let old: Vec<Step> =
            idle.iter().copied().filter(|s| now.saturating_duration_since(s.idle_since) >= beyond).collect();
        let chain = longest_chain(&old);
        // A quiet staircase: fewer steps, but nothing of the history's has been used again (nor closed while
        // free) since the first step went idle, long ago: a pool that leaked all it had and now waits.
        let quiet = chain.first().is_some_and(|first| {
            last_spell_end.is_none_or(|end| end < first.idle_since)
                && now.saturating_duration_since(first.idle_since) >= quiet_after(threshold)
        });
        let needed = if quiet { MIN_STEPS_QUIET.min(min_steps) } else { min_steps };
        if chain.len() < needed.max(1) {
            return Staircase { steps: Vec::new(), beyond, bound, span: Duration::ZERO };
        }
        let span = match (chain.first(), chain.last()) {
            (Some(a), Some(b)) => b.idle_since.saturating_duration_since(a.idle_since),
            _ => Duration::ZERO,
        };
        Staircase { steps: chain.iter().map(|s| s.id).collect(), beyond, bound, span }
    }

    pub fn contains(&self, id: u64) -> bool {
        self.steps.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(t0: Instant, id: u64, opened_ms: Option<u64>, idle_ms: u64) -> Step {
        let ms = |m| t0 + Duration::from_millis(m);
        Step { id, idle_since: ms(idle_ms), opened_on_demand: opened_ms.map(ms) }
    }

    #[test]
    fn a_connection_per_request_never_closed_is_one_long_chain() {
        let t0 = Instant::now();
        // One request a second: opened on demand at i s, idle 50 ms later, never used again.
        let idle: Vec<Step> = (0..10).map(|i| step(t0, i, Some(i * 1_000), i * 1_000 + 50)).collect();
        assert_eq!(longest_chain(&idle).len(), 10);
        // Ten a second: each opened 100 ms after the one before went idle, within the margin: every fourth links.
        let fast: Vec<Step> = (0..10).map(|i| step(t0, i, Some(i * 100), i * 100 + 50)).collect();
        assert_eq!(longest_chain(&fast).len(), 3);
    }

    #[test]
    fn one_pool_reusing_its_connections_has_no_chain() {
        let t0 = Instant::now();
        // Opened together in a burst (each while the others were busy), then idle together.
        let idle: Vec<Step> = (0..6).map(|i| step(t0, i, Some(i * 10), 5_000 + i * 10)).collect();
        assert_eq!(longest_chain(&idle).len(), 1);
        // Opened by the pool itself (not on demand): no link.
        let spares: Vec<Step> = (0..6).map(|i| step(t0, i, None, i * 3_000)).collect();
        assert_eq!(longest_chain(&spares).len(), 1);
    }

    #[test]
    fn the_chain_is_the_longest_one() {
        let t0 = Instant::now();
        // A: idle from 0. B: opened at 0.5 s (too soon after A), idle at 2 s. C: opened at 3 s, idle at 10 s.
        // D: opened at 4 s, idle at 4.1 s. E: opened at 6 s. Best: A, B, D, E (C went idle too late).
        let idle = [
            step(t0, 1, None, 0),
            step(t0, 2, Some(500), 2_000),
            step(t0, 3, Some(3_000), 10_000),
            step(t0, 4, Some(4_000), 4_100),
            step(t0, 5, Some(6_000), 6_100),
        ];
        let ids: Vec<u64> = longest_chain(&idle).iter().map(|s| s.id).collect();
        assert_eq!(ids, vec![1, 2, 4, 5]);
    }

    #[test]
    fn steps_must_be_idle_beyond_what_the_pools_allow_themselves() {
        let t0 = Instant::now();
        let idle: Vec<Step> = (0..10).map(|i| step(t0, i, Some(i * 1_500), i * 1_500 + 50)).collect();
        let now = t0 + Duration::from_secs(15);
        let th = Duration::from_secs(5);
        // Threshold only: the connections idle at least 5 s (the first seven).
        let s = Staircase::find(&idle, now, th, Duration::ZERO, 3, Some(now));
        assert_eq!(s.steps.len(), 7);
        assert_eq!(s.beyond, th);
        // Pools seen ending 4 s spells: steps must be idle 8 s.
        let s = Staircase::find(&idle, now, th, Duration::from_secs(4), 3, Some(now));
        assert_eq!(s.steps.len(), 5);
        assert_eq!(s.beyond, Duration::from_secs(8));
        // Fewer than the minimum: nothing.
        assert!(Staircase::find(&idle, now, th, Duration::from_secs(4), 6, Some(now)).steps.is_empty());
    }
}
