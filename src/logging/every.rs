//! At most one log line per interval for an event that can repeat in a tight loop (a database outage makes
//! every pool redial at once): the line that is written says how many were held back since the last one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Every {
    every: Duration,
    /// When a line was last let through, and how many were held back since.
    last: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    pub fn new(every: Duration) -> Every {
        Every { every, last: Mutex::new((None, 0)) }
    }

    /// `Some(held_back)` when a line may be written at `now`, else `None` (and it is counted).
    pub fn hit(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.0 {
            Some(at) if now < at + self.every => {
                last.1 += 1;
                None
            }
            _ => {
                let held = last.1;
                *last = (Some(now), 0);
                Some(held)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_saying_how_many_were_held_back() {
        let e = Every::new(Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(e.hit(t), Some(0));
        for ms in 1..=500 {
            assert_eq!(e.hit(t + Duration::from_millis(ms)), None);
        }
        assert_eq!(e.hit(t + Duration::from_secs(10)), Some(500));
        assert_eq!(e.hit(t + Duration::from_secs(11)), None);
        assert_eq!(e.hit(t + Duration::from_secs(25)), Some(1));
    }
}
