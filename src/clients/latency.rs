//! Per-client latency histograms: query latency, transaction duration and time spent waiting for a slot.
//!
//! Owns: recording a duration (lock-free: a bucket search and four relaxed atomic adds, the relay's whole
//! cost per query), the cumulative counts the metrics export, and a recent view (the last one to two
//! [`WINDOW`]s) from which `/clients` and `pgwarden top` show p50/p99. Quantiles are estimated from the
//! buckets the way Prometheus' `histogram_quantile` does (linear within a bucket), so the two agree.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Bucket upper bounds in microseconds (the exported `le`, in seconds, are these / 10⁶); a last bucket
/// (+Inf) catches the rest. Fine at the bottom, where a sidecar's queries on a nearby database fall; the
/// first (1 µs) holds the slot waits of connections admitted at once.
pub const BOUNDS_US: [u64; 22] = [
    1, 50, 100, 200, 300, 500, 750, 1_000, 2_000, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
/// Buckets: one per bound, and +Inf.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;
/// How long one window of the recent view lasts; the view covers the current and the previous one.
pub const WINDOW: Duration = Duration::from_secs(30);

/// Bucket counts (not cumulative) and the sum of the durations recorded, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hist {
    pub buckets: [u64; BUCKETS],
    pub sum_us: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist { buckets: [0; BUCKETS], sum_us: 0 }
    }
}

impl Hist {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// `self - o` (`o` an earlier snapshot of the same histogram).
    pub fn since(&self, o: &Hist) -> Hist {
        let mut d = *self;
        d.buckets.iter_mut().zip(&o.buckets).for_each(|(x, y)| *x -= y);
        d.sum_us -= o.sum_us;
        d
    }

    pub fn add(&mut self, o: &Hist) {
        self.buckets.iter_mut().zip(&o.buckets).for_each(|(x, y)| *x += y);
        self.sum_us += o.sum_us;
    }

    /// The `q` quantile (0..=1) estimated from the buckets: linear within the bucket it falls in (from 0 in
    /// the first); in +Inf it is the last bound. `None` with nothing recorded.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let Some(&upper) = BOUNDS_US.get(i) else { break };
                let lower = if i == 0 { 0 } else { BOUNDS_US[i - 1] };
                let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
                let us = lower as f64 + (upper - lower) as f64 * within;
                return Some(Duration::from_nanos((us * 1000.0) as u64));
            }
            below += n;
        }
        Some(Duration::from_micros(BOUNDS_US[BOUNDS_US.len() - 1]))
    }
}

/// The bucket a duration falls in (`le` semantics: a duration equal to a bound is in that bound's bucket).
pub fn bucket_of(d: Duration) -> usize {
    let us = d.as_micros().min(u64::MAX as u128) as u64;
    BOUNDS_US.partition_point(|&b| b < us)
}

/// One window of the recent view: which window number it holds, and its counts.
#[derive(Debug)]
struct Window {
    number: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// The recent view's window one relay's records fall in, worked out again only once `now` passes its end
/// (otherwise an `Instant` subtraction and a division per record, issue 31).
#[derive(Debug, Default)]
pub struct WindowClock {
    number: u64,
    ends: Option<Instant>,
}

impl WindowClock {
    /// [`Recorder::window_number`] of `now`, for `r` and every recorder sharing its base.
    pub fn number(&mut self, now: Instant, r: &Recorder) -> u64 {
        if self.ends.is_some_and(|end| now < end) {
            return self.number;
        }
        self.number = r.window_number(now);
        self.ends = r.window_end(self.number);
        self.number
    }
}

/// One latency histogram of one client, shared by its connections.
#[derive(Debug)]
pub struct Recorder {
    total: [AtomicU64; BUCKETS],
    sum_us: AtomicU64,
    /// Window numbers count [`WINDOW`]s from `base`; window `n` lives in `windows[n % 2]`.
    base: Instant,
    windows: [Window; 2],
}

impl Recorder {
    pub fn new(base: Instant) -> Recorder {
        let window = |n: u64| Window { number: AtomicU64::new(n), buckets: std::array::from_fn(|_| AtomicU64::new(0)) };
        Recorder {
            total: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
            base,
            // Window 0 is current at `base`; slot 1 holds a window that is never recent.
            windows: [window(0), window(u64::MAX)],
        }
    }

    /// The recent view's window that `now` falls in (the same for every [`Recorder`] of one [`Latencies`]).
    pub fn window_number(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.base).as_secs() / WINDOW.as_secs()) + 1
    }

    /// When window `n` ends (`None` past what an `Instant` holds).
    pub fn window_end(&self, n: u64) -> Option<Instant> {
        self.base.checked_add(Duration::from_secs(WINDOW.as_secs().checked_mul(n)?))
    }

    /// Records one duration that ended at `now`.
    pub fn record(&self, d: Duration, now: Instant) {
        self.record_in(d, self.window_number(now));
    }

    /// Records one duration that ended in window `n` (from [`Recorder::window_number`]): the relay records a
    /// query and its transaction at one instant and works the window out once (issue 31).
    pub fn record_in(&self, d: Duration, n: u64) {
        let b = bucket_of(d);
        self.total[b].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(d.as_micros().min(u64::MAX as u128) as u64, Relaxed);
        let w = &self.windows[(n % 2) as usize];
        let held = w.number.load(Relaxed);
        if held != n && w.number.compare_exchange(held, n, Relaxed, Relaxed).is_ok() {
            // This window's slot held an older window: it starts empty. (A record racing with the reset may
            // be lost from the recent view; the totals are exact.)
            w.buckets.iter().for_each(|c| c.store(0, Relaxed));
        }
        w.buckets[b].fetch_add(1, Relaxed);
    }

    /// Everything recorded (what the metrics export).
    pub fn total(&self) -> Hist {
        Hist { buckets: std::array::from_fn(|i| self.total[i].load(Relaxed)), sum_us: self.sum_us.load(Relaxed) }
    }

    /// What was recorded in the current and the previous window at `now` (its `sum_us` is not kept: 0).
    pub fn recent(&self, now: Instant) -> Hist {
        let n = self.window_number(now);
        let mut h = Hist::default();
        for w in &self.windows {
            let held = w.number.load(Relaxed);
            if held == n || held.wrapping_add(1) == n {
                h.buckets.iter_mut().zip(&w.buckets).for_each(|(x, c)| *x += c.load(Relaxed));
            }
        }
        h
    }
}

/// A client's three histograms.
#[derive(Debug)]
pub struct Latencies {
    /// A Query, or a batch ending in Sync, to the ReadyForQuery that leaves nothing pending (the session
    /// busy to idle): what the application waits for per round trip.
    pub query: Recorder,
    /// From leaving idle to being idle again outside a transaction (an autocommit statement is one).
    pub transaction: Recorder,
    /// From the connection's arrival at admission to its slot (0 when granted at once).
    pub slot_wait: Recorder,
}

impl Latencies {
    pub fn new(base: Instant) -> Latencies {
        Latencies { query: Recorder::new(base), transaction: Recorder::new(base), slot_wait: Recorder::new(base) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_le_and_the_last_catches_everything_beyond() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(50)), 1, "le: equal to the bound");
        assert_eq!(bucket_of(Duration::from_micros(51)), 2);
        assert_eq!(bucket_of(Duration::from_secs(60)), BUCKETS - 2);
        assert_eq!(bucket_of(Duration::from_secs(3600)), BUCKETS - 1);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let r = Recorder::new(Instant::now());
        let now = Instant::now();
        for _ in 0..99 {
            r.record(Duration::from_micros(150), now); // (100, 200]
        }
        r.record(Duration::from_millis(40), now); // (25 ms, 50 ms]
        let h = r.total();
        assert_eq!(h.count(), 100);
        assert_eq!(h.sum_us, 99 * 150 + 40_000);
        let p50 = h.quantile(0.5).unwrap();
        assert!(p50 > Duration::from_micros(100) && p50 <= Duration::from_micros(200), "{p50:?}");
        assert!(h.quantile(0.99).unwrap() <= Duration::from_micros(200));
        assert!(h.quantile(1.0).unwrap() > Duration::from_millis(25));
        assert_eq!(Hist::default().quantile(0.5), None);
        let mut inf = Hist::default();
        inf.buckets[BUCKETS - 1] = 1;
        assert_eq!(inf.quantile(0.5), Some(Duration::from_secs(60)), "+Inf: the last bound");
    }

    #[test]
    fn the_window_clock_agrees_with_the_recorder_across_window_ends() {
        let base = Instant::now();
        let r = Recorder::new(base);
        let mut clock = WindowClock::default();
        let ms = |n: u64| base + Duration::from_millis(n);
        let w = WINDOW.as_millis() as u64;
        for at in [0, 1, w - 1, w, w + 1, 2 * w - 1, 2 * w, 5 * w + 7] {
            assert_eq!(clock.number(ms(at), &r), r.window_number(ms(at)), "{at} ms after the base");
        }
        assert_eq!(r.window_end(1), Some(base + WINDOW));
    }

    #[test]
    fn the_recent_view_covers_the_current_and_previous_window_only() {
        let base = Instant::now();
        let r = Recorder::new(base);
        r.record(Duration::from_micros(80), base);
        assert_eq!(r.recent(base).count(), 1);
        let next = base + WINDOW;
        r.record(Duration::from_micros(80), next);
        assert_eq!(r.recent(next).count(), 2, "previous window still recent");
        let later = base + 2 * WINDOW;
        assert_eq!(r.recent(later).count(), 1, "the first window aged out");
        r.record(Duration::from_micros(80), later);
        assert_eq!(r.recent(later).count(), 2, "its slot was reused from empty");
        assert_eq!(r.recent(base + 10 * WINDOW).count(), 0, "nothing recent after a quiet spell");
        assert_eq!(r.total().count(), 3, "the totals keep everything");
    }

    #[test]
    fn since_and_add_are_inverse() {
        let r = Recorder::new(Instant::now());
        let now = Instant::now();
        r.record(Duration::from_micros(10), now);
        let a = r.total();
        r.record(Duration::from_secs(2), now);
        let b = r.total();
        let d = b.since(&a);
        assert_eq!(d.count(), 1);
        let mut back = a;
        back.add(&d);
        assert_eq!(back, b);
    }
}
