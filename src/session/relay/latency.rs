//! What a state change ends, recorded in the client's latency histograms: busy to not busy is one query,
//! back to idle outside a transaction is the transaction that began when the session left idle. Times are
//! nanoseconds since the registry's epoch, so each latency is an integer subtraction (issue 31).

use super::Relay;
use crate::vocab::ConnState;
use std::time::{Duration, Instant};

impl Relay<'_, '_> {
    /// Records what a state change ends: busy to not busy is one query's latency; back to idle outside a
    /// transaction ends the transaction that began when the session left idle. `at` is `now` in nanoseconds
    /// since the registry's epoch.
    pub(super) fn record_latency(&mut self, from: ConnState, to: ConnState, now: Instant, at: u64) {
        if from != ConnState::Active && to != ConnState::Active {
            return;
        }
        let query = if from == ConnState::Active { self.busy_since.take() } else { None };
        let transaction = match to {
            ConnState::Active => {
                self.busy_since = Some(at);
                if matches!(from, ConnState::Idle | ConnState::Startup) {
                    self.transaction_since = Some((now, at));
                    self.transaction_timer_spent = false;
                }
                None
            }
            ConnState::Idle => self.transaction_since.take().map(|(_, since)| since),
            _ => None,
        };
        if query.is_none() && transaction.is_none() {
            return;
        }
        let latency = &self.ctx.entry.latency;
        // One window for both records (the recorders share a base), worked out again once per window.
        let window = self.window.number(now, &latency.query);
        if let Some(since) = query {
            latency.query.record_in(Duration::from_nanos(at.saturating_sub(since)), window);
        }
        if let Some(since) = transaction {
            latency.transaction.record_in(Duration::from_nanos(at.saturating_sub(since)), window);
        }
    }
}
