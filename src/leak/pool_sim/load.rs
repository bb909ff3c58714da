//! How requests arrive in the simulator: shared rate curves, or each worker's own bursts and quiet spells.

use std::time::Duration;

/// How requests arrive over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// 20 s cycles: a 3 s burst (~10 requests/s per two workers), 5 s moderate (~5/s), 12 s quiet (~1/s).
    Bursty,
    /// 200 s days: a 60 s night with almost nothing, a 40 s morning ramp, a 60 s busy day with spikes, a
    /// 40 s evening decline.
    Diurnal,
    /// Bursty, but one worker takes 80 % of the requests.
    Skewed,
    /// Each worker on its own: after 0–2 s, bursts of 1–4 threads issuing short requests back to back for
    /// 0.5–2 s, then quiet for 1.5–2.5 thresholds (the real-process tests' worker, tests/it/incident.rs).
    Spells,
}

/// The rate curves (the loads shared across a pod's workers).
pub const LOADS: [Load; 3] = [Load::Bursty, Load::Diurnal, Load::Skewed];

/// Requests per second for two workers at `t` (a worker has ~4 requests in flight at the peak of a burst).
pub(super) fn rate(load: Load, t: Duration) -> f64 {
    let s = t.as_secs_f64();
    match load {
        Load::Bursty | Load::Skewed => match (s as u64) % 20 {
            0..=2 => 10.0,
            3..=7 => 5.0,
            _ => 1.0,
        },
        Load::Diurnal => {
            let d = s % 200.0;
            if d < 60.0 {
                0.05
            } else if d < 100.0 {
                0.5 + (d - 60.0) / 40.0 * 9.5
            } else if d < 160.0 {
                if (d as u64) % 15 < 3 {
                    14.0
                } else {
                    7.0
                }
            } else {
                10.0 - (d - 160.0) / 40.0 * 9.5
            }
        }
        Load::Spells => 0.0,
    }
}

/// One worker's schedule under [`Load::Spells`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Spell {
    /// When the current burst started (or the next one starts), and when it ends.
    from: Duration,
    until: Duration,
    threads: usize,
}

impl Spell {
    pub(super) fn first(draw: &mut impl FnMut() -> u64) -> Spell {
        let from = Duration::from_millis(draw() % 2_000);
        Spell::burst(from, draw)
    }

    fn burst(from: Duration, draw: &mut impl FnMut() -> u64) -> Spell {
        let until = from + Duration::from_millis(500 + draw() % 1_500);
        Spell { from, until, threads: 1 + (draw() % 4) as usize }
    }

    /// The requests this worker starts in the tick ending at `t` (each holds its connection for the tick,
    /// as back-to-back short requests from one thread do), moving on to the next burst after a quiet spell
    /// of 1.5–2.5 `threshold` once this one is over.
    pub(super) fn requests(&mut self, t: Duration, threshold: Duration, draw: &mut impl FnMut() -> u64) -> usize {
        if t >= self.until {
            let quiet = threshold.mul_f64(1.5 + (draw() % 1_000) as f64 / 1_000.0);
            *self = Spell::burst(self.until + quiet, draw);
        }
        if t >= self.from {
            self.threads
        } else {
            0
        }
    }
}
