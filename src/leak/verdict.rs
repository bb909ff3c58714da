//! A suspect's verdict: its reason (the contract), the signal that fired, the evidence in words an on-call
//! engineer can check, and whether the verdict may still be wrong. Pure.

use super::{
    ClientHistory, ConnView, LeakReason, Thresholds, SHARED_MIN_REUSES, SHARED_WARMTH, SHARED_WARM_UP_THRESHOLDS,
};
use crate::vocab::ConnState;
use std::time::{Duration, Instant};

/// Which signal named a suspect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    IdleInTransaction,
    AtCap,
    /// The staircase: one of a chain of connections each opened on demand while the one before sat idle.
    Staircase,
    /// One pool kept more connections open since this one went idle.
    Growth,
}

/// How sure a verdict is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confidence {
    /// What the wire showed holds whatever the client's shape.
    Certain,
    /// Holds if the client key is one pool or few; a pod's many worker processes sharing the key over TCP could
    /// look the same.
    Probable,
}

impl Confidence {
    pub fn as_str(self) -> &'static str {
        match self {
            Confidence::Certain => "certain",
            Confidence::Probable => "probable",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub reason: LeakReason,
    pub signal: Signal,
    pub confidence: Confidence,
    /// What was measured against what, in words.
    pub evidence: String,
}

/// `4 min 10 s`, `12 s`, `1 h 3 min`, `0.8 s`.
pub fn words(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=9 if d.subsec_millis() > 0 => format!("{:.1} s", d.as_secs_f64()),
        0..=59 => format!("{s} s"),
        60..=3599 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ if s % 3600 < 60 => format!("{} h", s / 3600),
        _ => format!("{} h {} min", s / 3600, s % 3600 / 60),
    }
}

const SHARED_CAVEAT: &str = "; this client key is shared over TCP, where several worker processes each taking \
                             its first request in turn would look the same (connect over the Unix socket, or set \
                             application_name per process, to be certain)";

/// A whole key's pools have reused connections, and recently at least once for every [`SHARED_WARMTH`]
/// on-demand opens.
fn warm(h: &ClientHistory, now: Instant) -> bool {
    let (reuses, opens) = h.warmth.get(now);
    h.reuses >= SHARED_MIN_REUSES && reuses.saturating_mul(SHARED_WARMTH) >= opens
}

/// Whether one connection is a suspect, why, and on what evidence.
pub fn judge(c: &ConnView, h: &ClientHistory, now: Instant, th: &Thresholds) -> Option<Verdict> {
    let idle_for = now.saturating_duration_since(c.state_since);
    if c.state.in_transaction() {
        let t = th.idle_in_transaction.filter(|t| idle_for >= *t)?;
        return Some(Verdict {
            reason: LeakReason::IdleInTransaction,
            signal: Signal::IdleInTransaction,
            confidence: Confidence::Certain,
            evidence: format!("idle in transaction {} (threshold {})", words(idle_for), words(t)),
        });
    }
    if c.state != ConnState::Idle || c.listening {
        return None;
    }
    let t = th.idle?;
    if idle_for < t {
        return None;
    }
    if let Some(at) = h.last_at_cap.filter(|at| *at >= c.state_since) {
        return Some(Verdict {
            reason: LeakReason::IdleWhileClientAtCap,
            signal: Signal::AtCap,
            confidence: Confidence::Certain,
            evidence: format!(
                "idle {}; its client was refused or queued at its cap {} ago, after this connection went idle",
                words(idle_for),
                words(now.saturating_duration_since(at))
            ),
        });
    }
    let confidence = if h.one_process { Confidence::Certain } else { Confidence::Probable };
    let caveat = if h.one_process { "" } else { SHARED_CAVEAT };
    if h.staircase.contains(c.id) {
        let s = &h.staircase;
        let pools = if s.bound.is_zero() {
            "its pools were never seen reusing or closing a free connection".to_string()
        } else {
            format!("its pools reuse or close a free connection within ~{}", words(s.bound))
        };
        return Some(Verdict {
            reason: LeakReason::IdleWhileClientGrew,
            signal: Signal::Staircase,
            confidence,
            evidence: format!(
                "idle {}; one of {} connections this client opened on demand in turn over {}, each while the one \
                 before sat idle, none used again; {pools}{caveat}",
                words(idle_for),
                s.steps.len(),
                words(s.span)
            ),
        });
    }
    // Growth of one pool: several pools (proven, or a key whose pools have not reused a connection yet, when
    // nothing can prove it) grow while another's connection waits for work. Never used: a pool's spare.
    // Growth counts only when it includes an on-demand open after this one went idle (a pool refilling its
    // minimum or replacing an old connection is not asking for one more because none was free).
    // A whole key (TCP) may hide several pools: one of its worker processes' pools grows while another's
    // connection waits for its next request. Its connections are judged by growth only while its pools are
    // warm (cold workers taking their first requests each open one, like one pool leaking each), only once
    // idle beyond what its pools let a free connection wait (the staircase's bar), and never once proven
    // several pools.
    if h.several_pools_since.is_some()
        || (!h.one_process && (!warm(h, now) || idle_for < super::staircase::beyond(t, h.staircase.bound)))
        || c.queries == 0
        || h.last_on_demand_open().is_none_or(|open| open <= c.state_since)
    {
        return None;
    }
    // A pool's warm-up is its first threshold; a whole key's is three (its worker processes warm up in turn).
    let warm_up = if h.one_process { t } else { t.saturating_mul(SHARED_WARM_UP_THRESHOLDS) };
    let warmed_up = h.first_seen.checked_add(warm_up)?;
    let baseline_at = c.state_since.max(warmed_up);
    // Growth must have lasted half a threshold (a replacement opened before the old one closes does not).
    let window_start = now.checked_sub(t / 2)?;
    if window_start < baseline_at {
        return None;
    }
    let (from, held) = (h.trough_after(baseline_at, window_start), h.min_open(window_start, now));
    (held > from).then(|| Verdict {
        reason: LeakReason::IdleWhileClientGrew,
        signal: Signal::Growth,
        confidence,
        evidence: format!(
            "idle {}; since it went idle its client opened connections on demand and held {held} open for {} \
             (it had {from}), while this one was free{caveat}",
            words(idle_for),
            words(now.saturating_duration_since(window_start))
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_words() {
        let s = Duration::from_secs;
        assert_eq!(words(s(12)), "12 s");
        assert_eq!(words(Duration::from_millis(800)), "0.8 s");
        assert_eq!(words(s(250)), "4 min 10 s");
        assert_eq!(words(s(120)), "2 min");
        assert_eq!(words(s(3600 + 180 + 5)), "1 h 3 min");
        assert_eq!(words(s(7200)), "2 h");
    }
}
