//! What a history's pools did recently, remembered for one to two windows of [`SPELL_WINDOW`] so that memory
//! is bounded and old behaviour fades: the longest idle spell they ended themselves ([`SpellBound`]), and
//! how often they reused a connection against how often they opened one on demand ([`Warmth`]). Pure.

use std::time::{Duration, Instant};

/// How long an observed spell counts towards [`SpellBound`]: a spell is remembered for one to two windows.
pub const SPELL_WINDOW: Duration = Duration::from_secs(600);

/// The longest idle spell a history's pools ended themselves (by reusing the connection, or by closing it
/// while it was free), over the last one to two [`SPELL_WINDOW`]s.
#[derive(Debug, Clone, Copy)]
pub struct SpellBound {
    window_start: Instant,
    current: Duration,
    previous: Duration,
    last_end: Option<Instant>,
}

impl SpellBound {
    pub fn new(now: Instant) -> Self {
        SpellBound { window_start: now, current: Duration::ZERO, previous: Duration::ZERO, last_end: None }
    }

    /// When the last spell ended.
    pub fn last_end(&self) -> Option<Instant> {
        self.last_end
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= SPELL_WINDOW * 2 {
            *self = SpellBound { last_end: self.last_end, ..SpellBound::new(now) };
        } else if elapsed >= SPELL_WINDOW {
            self.previous = self.current;
            self.current = Duration::ZERO;
            self.window_start = self.window_start.checked_add(SPELL_WINDOW).unwrap_or(now);
        }
    }

    pub fn record(&mut self, now: Instant, spell: Duration) {
        self.roll(now);
        self.current = self.current.max(spell);
        self.last_end = Some(now);
    }

    pub fn get(&mut self, now: Instant) -> Duration {
        self.roll(now);
        self.current.max(self.previous)
    }
}

/// Reuses and on-demand opens over the last one to two [`SPELL_WINDOW`]s: a key whose pools open about as
/// often as they reuse is cold (workers taking their first requests) or leaking every borrow; a warm pool
/// reuses far more than it opens.
#[derive(Debug, Clone, Copy)]
pub struct Warmth {
    window_start: Instant,
    current: (u64, u64),
    previous: (u64, u64),
}

impl Warmth {
    pub fn new(now: Instant) -> Self {
        Warmth { window_start: now, current: (0, 0), previous: (0, 0) }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= SPELL_WINDOW * 2 {
            *self = Warmth::new(now);
        } else if elapsed >= SPELL_WINDOW {
            self.previous = self.current;
            self.current = (0, 0);
            self.window_start = self.window_start.checked_add(SPELL_WINDOW).unwrap_or(now);
        }
    }

    pub fn reused(&mut self, now: Instant) {
        self.roll(now);
        self.current.0 += 1;
    }

    pub fn opened(&mut self, now: Instant) {
        self.roll(now);
        self.current.1 += 1;
    }

    /// `(reuses, on-demand opens)` recently.
    pub fn get(&self) -> (u64, u64) {
        (self.current.0 + self.previous.0, self.current.1 + self.previous.1)
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
        assert_eq!(w.get(), (1, 2));
        w.reused(t0 + SPELL_WINDOW * 2);
        assert_eq!(w.get(), (1, 1));
        w.reused(t0 + SPELL_WINDOW * 5);
        assert_eq!(w.get(), (1, 0));
    }
}
