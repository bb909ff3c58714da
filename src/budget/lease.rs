//! A sidecar's side of its workload budget: the last share the coordinator gave, and the cap that follows
//! from it now.
//!
//! Owns: the answer format (`GET /v1/share`), [`effective`] (pure: the share while the coordinator answers,
//! the same share for `keep_last` after it stops answering, then the fallback cap; the fallback also before
//! the first answer), and [`reclaim`] (pure: which idle connections to close when the pod holds more than
//! its share). [`Lease`] is the small locked record the poller writes and admission and the views read.

use crate::vocab::ConnState;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The coordinator's answer about one pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareAnswer {
    pub namespace: String,
    pub workload: String,
    /// The budget's name; `None`: the workload has no budget (no cap from the coordinator).
    pub budget: Option<String>,
    /// The budget across the workload's pods.
    pub max_connections: Option<u32>,
    /// This pod's share of it.
    pub share: Option<u32>,
    /// The workload's pods counted.
    pub pods: u32,
    pub reclaim_idle: bool,
}

impl ShareAnswer {
    /// Changes whenever anything a sidecar acts on changes (the long poll waits for a different tag).
    pub fn tag(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            self.budget.as_deref().unwrap_or("-"),
            self.max_connections.map_or(-1, i64::from),
            self.share.map_or(-1, i64::from),
            self.pods,
            self.reclaim_idle
        )
    }
}

/// Where the cap in force comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Budgets are not configured for this sidecar.
    Off,
    /// The coordinator's share, from an answer that is current.
    Share,
    /// The coordinator stopped answering; its last share is kept for `keep_last` from the first failure.
    Kept,
    /// No share known (before the first answer, or `keep_last` ran out): the fallback cap.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Off => "off",
            Source::Share => "share",
            Source::Kept => "kept",
            Source::Fallback => "fallback",
        }
    }
}

/// The cap in force and where it comes from (`cap: None`: no cap from the budget).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub cap: Option<u32>,
    pub source: Source,
}

/// What the cap is at `now`, given the last answer, since when asking has failed (`None`: the last request
/// succeeded, or a long poll is waiting), `keep_last` and the fallback cap. `keep_last` counts from the
/// first failure, not from the last answer: a long poll may hold a current answer for many seconds.
pub fn effective(
    last: Option<&ShareAnswer>,
    failing_since: Option<Instant>,
    now: Instant,
    keep_last: Option<Duration>,
    fallback: Option<u32>,
) -> Effective {
    let fallback = Effective { cap: fallback, source: Source::Fallback };
    let Some(answer) = last else { return fallback };
    match failing_since {
        None => Effective { cap: answer.share, source: Source::Share },
        Some(since) if keep_last.is_none_or(|keep| now.saturating_duration_since(since) <= keep) => {
            Effective { cap: answer.share, source: Source::Kept }
        }
        Some(_) => fallback,
    }
}

/// A live connection as [`reclaim`] sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    pub id: u64,
    pub state: ConnState,
    pub since: Instant,
    pub listening: bool,
}

/// The connections to close so that `open` comes down to `cap`: idle ones only (never one in a
/// transaction, busy, or holding a LISTEN), the longest idle first. May return fewer than the excess: busy
/// connections are never closed to meet a share.
pub fn reclaim(candidates: &[Candidate], open: u32, cap: u32) -> Vec<u64> {
    let excess = open.saturating_sub(cap) as usize;
    if excess == 0 {
        return Vec::new();
    }
    let mut idle: Vec<&Candidate> = candidates.iter().filter(|c| c.state == ConnState::Idle && !c.listening).collect();
    idle.sort_by_key(|c| (c.since, c.id));
    idle.into_iter().take(excess).map(|c| c.id).collect()
}

/// The budget a refusal or a reclaim names, in words: `workload budget "images" (max_connections 6 across 3
/// pods of shop/images; this pod's share 2)`, or the fallback cap and why it is in force.
pub fn describe(view: &LeaseView) -> String {
    let age =
        |v: &LeaseView| v.age.map_or("since this sidecar started".to_string(), |a| format!("for {}s", a.as_secs()));
    match (&view.effective.source, &view.answer) {
        (Source::Fallback, _) => format!(
            "the budget fallback cap (budget.fallback_max_connections {}: no answer from the budget coordinator {})",
            view.effective.cap.map_or("off".to_string(), |c| c.to_string()),
            age(view)
        ),
        (source, Some(a)) => format!(
            "workload budget \"{}\" (max_connections {} across {} pods of {}/{}; this pod's share {}{})",
            a.budget.as_deref().unwrap_or("none"),
            a.max_connections.map_or("off".to_string(), |m| m.to_string()),
            a.pods,
            a.namespace,
            a.workload,
            a.share.map_or("off".to_string(), |s| s.to_string()),
            if *source == Source::Kept { ", kept while the coordinator does not answer" } else { "" }
        ),
        _ => "no workload budget".to_string(),
    }
}

/// The sidecar's budget settings and its last answer.
pub struct Lease {
    pub enabled: bool,
    pub keep_last: Option<Duration>,
    pub fallback: Option<u32>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last: Option<(ShareAnswer, Instant)>,
    /// Since when, and the last error.
    failing: Option<(Instant, String)>,
}

/// A copy of the lease for views: the last answer, its age, the cap in force, and the last error.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub answer: Option<ShareAnswer>,
    pub age: Option<Duration>,
    pub effective: Effective,
    pub error: Option<String>,
}

impl Lease {
    pub fn new(enabled: bool, keep_last: Option<Duration>, fallback: Option<u32>) -> Lease {
        Lease { enabled, keep_last, fallback, inner: Mutex::new(Inner::default()) }
    }

    pub fn off() -> Lease {
        Lease::new(false, None, None)
    }

    /// An answer arrived.
    pub fn received(&self, answer: ShareAnswer, now: Instant) {
        let mut inner = self.lock();
        inner.last = Some((answer, now));
        inner.failing = None;
    }

    /// Asking failed (the coordinator is unreachable, or answered with an error).
    pub fn failed(&self, error: String, now: Instant) {
        let mut inner = self.lock();
        let since = inner.failing.as_ref().map_or(now, |(since, _)| *since);
        inner.failing = Some((since, error));
    }

    pub fn view(&self, now: Instant) -> LeaseView {
        let inner = self.lock();
        if !self.enabled {
            return LeaseView {
                answer: None,
                age: None,
                effective: Effective { cap: None, source: Source::Off },
                error: None,
            };
        }
        let last = inner.last.as_ref().map(|(a, _)| a);
        let since = inner.failing.as_ref().map(|(since, _)| *since);
        LeaseView {
            answer: last.cloned(),
            age: inner.last.as_ref().map(|(_, at)| now.saturating_duration_since(*at)),
            effective: effective(last, since, now, self.keep_last, self.fallback),
            error: inner.failing.as_ref().map(|(_, e)| e.clone()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(share: Option<u32>) -> ShareAnswer {
        ShareAnswer {
            namespace: "shop".into(),
            workload: "api".into(),
            budget: share.map(|_| "api".into()),
            max_connections: share.map(|_| 6),
            share,
            pods: 3,
            reclaim_idle: false,
        }
    }

    #[test]
    fn share_then_kept_then_fallback() {
        let t0 = Instant::now();
        let keep = Some(Duration::from_secs(60));
        let a = answer(Some(2));
        assert_eq!(effective(None, None, t0, keep, Some(1)), Effective { cap: Some(1), source: Source::Fallback });
        assert_eq!(effective(None, Some(t0), t0, keep, None), Effective { cap: None, source: Source::Fallback });
        let later = t0 + Duration::from_secs(120);
        assert_eq!(
            effective(Some(&a), None, later, keep, Some(1)).source,
            Source::Share,
            "a long poll is not a failure"
        );
        let kept = effective(Some(&a), Some(t0), t0 + Duration::from_secs(60), keep, Some(1));
        assert_eq!(kept, Effective { cap: Some(2), source: Source::Kept });
        let fell = effective(Some(&a), Some(t0), t0 + Duration::from_secs(61), keep, Some(1));
        assert_eq!(fell, Effective { cap: Some(1), source: Source::Fallback });
        assert_eq!(effective(Some(&a), Some(t0), later, None, Some(1)).source, Source::Kept, "keep_last off keeps it");
        let none = answer(None);
        assert_eq!(effective(Some(&none), None, t0, keep, Some(1)).cap, None, "no budget, no cap");
    }

    #[test]
    fn the_lease_records_answers_and_failures() {
        let lease = Lease::new(true, Some(Duration::from_secs(5)), Some(3));
        let now = Instant::now();
        assert_eq!(lease.view(now).effective.source, Source::Fallback);
        lease.received(answer(Some(2)), now);
        assert_eq!(lease.view(now).effective, Effective { cap: Some(2), source: Source::Share });
        lease.failed("connection refused".into(), now);
        lease.failed("connection refused again".into(), now + Duration::from_secs(3));
        assert_eq!(lease.view(now + Duration::from_secs(5)).effective.source, Source::Kept);
        let v = lease.view(now + Duration::from_secs(6));
        assert_eq!((v.effective.cap, v.effective.source), (Some(3), Source::Fallback));
        assert_eq!(v.error.as_deref(), Some("connection refused again"), "the latest error, the first failure's time");
        assert_eq!(v.age, Some(Duration::from_secs(6)));
        assert_eq!(Lease::off().view(now).effective.source, Source::Off);
        assert_ne!(answer(Some(2)).tag(), answer(Some(1)).tag());
        let text = describe(&lease.view(now + Duration::from_secs(6)));
        assert!(text.contains("fallback_max_connections 3") && text.contains("for 6s"), "{text}");
        lease.received(answer(Some(2)), now);
        let text = describe(&lease.view(now));
        assert_eq!(text, "workload budget \"api\" (max_connections 6 across 3 pods of shop/api; this pod's share 2)");
    }

    #[test]
    fn reclaim_takes_the_longest_idle_and_never_a_busy_one() {
        let t0 = Instant::now();
        let c = |id, state, secs, listening| Candidate { id, state, since: t0 + Duration::from_secs(secs), listening };
        let conns = [
            c(1, ConnState::Idle, 5, false),
            c(2, ConnState::Active, 0, false),
            c(3, ConnState::Idle, 1, false),
            c(4, ConnState::IdleInTransaction, 0, false),
            c(5, ConnState::Idle, 0, true),
            c(6, ConnState::Idle, 3, false),
        ];
        assert_eq!(reclaim(&conns, 6, 4), [3, 6]);
        assert_eq!(reclaim(&conns, 6, 0), [3, 6, 1], "only the idle ones, however far over");
        assert!(reclaim(&conns, 3, 4).is_empty());
    }
}
