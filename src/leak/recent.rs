//! What a history's pools did recently, remembered for one to two windows of [`SPELL_WINDOW`] so that memory
//! is bounded and old behaviour fades: the longest idle spell they ended themselves ([`SpellBound`]), and
//! how often they reused a connection against how often they opened one on demand ([`Warmth`]). Pure.

use std::time::{Duration, Instant};

/// How long an observed spell counts towards [`SpellBound`]: a spell is remembered for one to two windows.
pub const SPELL_WINDOW: Duration = Duration::from_secs(600);

/// A value kept per [`SPELL_WINDOW`]: the current window's and the previous one's, so that what is read
/// covers the last one to two windows.
#[derive(Debug, Clone, Copy)]
struct Windows<T> {
    start: Instant,
    current: T,
    previous: T,
}

impl<T: Copy + Default> Windows<T> {
    fn new(now: Instant) -> Self {
        Windows { start: now, current: T::default(), previous: T::default() }
    }

    /// The current window's value at `now`, the windows rolled forward first.
    fn current_at(&mut self, now: Instant) -> &mut T {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= SPELL_WINDOW * 2 {
            *self = Windows::new(now);
        } else if elapsed >= SPELL_WINDOW {
            self.previous = self.current;
            self.current = T::default();
            self.start = self.start.checked_add(SPELL_WINDOW).unwrap_or(now);
        }
        &mut self.current
    }

    /// `(current, previous)` as they stand at `now` (what has aged out reads as the default).
    fn at(&self, now: Instant) -> (T, T) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < SPELL_WINDOW {
            (self.current, self.previous)
        } else if elapsed < SPELL_WINDOW * 2 {
            (T::default(), self.current)
        } else {
            (T::default(), T::default())
        }
    }
}

/// The longest idle spell a history's pools ended themselves (by reusing the connection, or by closing it
/// while it was free), over the last one to two [`SPELL_WINDOW`]s.
#[derive(Debug, Clone, Copy)]
pub struct SpellBound {
    longest: Windows<Duration>,
    last_end: Option<Instant>,
}

impl SpellBound {
    pub fn new(now: Instant) -> Self {
        SpellBound { longest: Windows::new(now), last_end: None }
    }

    /// When the last spell ended.
    pub fn last_end(&self) -> Option<Instant> {
        self.last_end
    }

    pub fn record(&mut self, now: Instant, spell: Duration) {
        let longest = self.longest.current_at(now);
        *longest = (*longest).max(spell);
        self.last_end = Some(now);
    }

    pub fn get(&self, now: Instant) -> Duration {
        let (current, previous) = self.longest.at(now);
        current.max(previous)
    }
}

/// Reuses and on-demand opens over the last one to two [`SPELL_WINDOW`]s: a key whose pools open about as
/// often as they reuse is cold (workers taking their first requests) or leaking every borrow; a warm pool
/// reuses far more than it opens.
#[derive(Debug, Clone, Copy)]
pub struct Warmth {
    /// `(reuses, on-demand opens)`.
    counts: Windows<(u64, u64)>,
}

impl Warmth {
    pub fn new(now: Instant) -> Self {
        Warmth { counts: Windows::new(now) }
    }

    pub fn reused(&mut self, now: Instant) {
        self.counts.current_at(now).0 += 1;
    }

    pub fn opened(&mut self, now: Instant) {
        self.counts.current_at(now).1 += 1;
    }

    /// `(reuses, on-demand opens)` recently.
    pub fn get(&self, now: Instant) -> (u64, u64) {
        let (current, previous) = self.counts.at(now);
        (current.0 + previous.0, current.1 + previous.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spell_bound_forgets_after_two_windows() {
        let t0 = Instant::now();
        let mut b = SpellBound::new(t0);
        b.record(t0 + Duration::from_secs(5), Duration::from_secs(30));
        assert_eq!(b.get(t0 + SPELL_WINDOW + Duration::from_secs(1)), Duration::from_secs(30));
        b.record(t0 + SPELL_WINDOW + Duration::from_secs(2), Duration::from_secs(3));
        assert_eq!(b.get(t0 + SPELL_WINDOW * 2 + Duration::from_secs(1)), Duration::from_secs(3));
        assert_eq!(b.get(t0 + SPELL_WINDOW * 5), Duration::ZERO);
    }

    #[test]
    fn warmth_counts_over_two_windows() {
        let t0 = Instant::now();
        let mut w = Warmth::new(t0);
        w.reused(t0);
        w.opened(t0);
        w.opened(t0 + SPELL_WINDOW);
        assert_eq!(w.get(t0 + SPELL_WINDOW), (1, 2));
        w.reused(t0 + SPELL_WINDOW * 2);
        assert_eq!(w.get(t0 + SPELL_WINDOW * 2), (1, 1));
        w.reused(t0 + SPELL_WINDOW * 5);
        assert_eq!(w.get(t0 + SPELL_WINDOW * 5), (1, 0));
        assert_eq!(w.get(t0 + SPELL_WINDOW * 8), (0, 0), "read long after, nothing is left");
    }
}
