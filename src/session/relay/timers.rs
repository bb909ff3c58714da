//! The relay's timers: which one runs next (from `policy::next_timer`), pointing the sleep at it without
//! touching the timer wheel when nothing changed, and what a fired timer does (close, or in report-only
//! mode count and log).

use super::Relay;
use crate::policy::{self, Timer, TimerInput};
use crate::vocab::{CloseReason, Fatal, SqlState};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// How long a CancelRequest may take to reach the server.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(2);

impl Relay<'_, '_> {
    pub(super) fn next_timer(&self) -> Option<(Instant, Timer)> {
        policy::next_timer(&TimerInput {
            state: self.published,
            state_since: self.published_at,
            opened: self.ctx.conn.opened,
            login_deadline: self.ctx.login_deadline,
            drain_deadline: self.drain_deadline,
            policy: &self.policy,
            idle_timers_spent: self.would_closed,
            transaction_since: self.transaction_since.map(|(since, _)| since),
            transaction_timer_spent: self.transaction_timer_spent,
            query_timer_spent: self.query_timer_spent,
        })
    }

    /// The pod holds more than its workload budget share and this idle connection is one of those to close.
    pub(super) fn budget_reclaim(&self) -> Fatal {
        let budget = crate::budget::lease::describe(&self.ctx.state.budget.view(Instant::now()));
        Fatal::closed(
            CloseReason::BudgetReclaim,
            SqlState::ADMIN_SHUTDOWN,
            format!(
                "pgwarden: terminating idle connection of client \"{}\": this pod holds more than its share under {budget}",
                self.ctx.conn.client.display()
            ),
        )
    }

    /// `pgwarden fleet reclaim` chose this idle connection.
    pub(super) fn fleet_reclaim(&self) -> Fatal {
        let asked = match self.ctx.state.live.reclaim_in_force() {
            Some(r) => format!(" asked at {}{}", r.at, r.by.map(|b| format!(" by {b}")).unwrap_or_default()),
            None => String::new(),
        };
        Fatal::closed(
            CloseReason::Reclaim,
            SqlState::ADMIN_SHUTDOWN,
            format!(
                "pgwarden: terminating idle connection of client \"{}\": reclaimed by `pgwarden fleet reclaim`{asked}",
                self.ctx.conn.client.display()
            ),
        )
    }

    /// Decides what a fired timer does: `Some` closes with that error; `None` goes on (report-only: counted
    /// and logged instead).
    pub(super) fn on_timer(&mut self, which: Timer) -> Option<Fatal> {
        let client_key = self.ctx.conn.client.display();
        let fatal = match which {
            Timer::Login => Fatal::protocol(format!(
                "pgwarden: client \"{client_key}\" did not finish startup within client_login_timeout"
            )),
            Timer::DrainGrace => Fatal::shutdown(format!(
                "pgwarden is shutting down: shutdown_grace is over for client \"{client_key}\""
            )),
            Timer::Idle => Fatal::closed(
                CloseReason::IdleTimeout,
                SqlState::IDLE_SESSION_TIMEOUT,
                format!("pgwarden: terminating connection of client \"{client_key}\" due to idle_timeout"),
            ),
            Timer::IdleInTransaction => Fatal::closed(
                CloseReason::IdleInTransactionTimeout,
                SqlState::IDLE_IN_TRANSACTION_TIMEOUT,
                format!(
                    "pgwarden: terminating connection of client \"{client_key}\" due to idle_in_transaction_timeout"
                ),
            ),
            Timer::MaxAge => Fatal::closed(
                CloseReason::MaxAge,
                SqlState::ADMIN_SHUTDOWN,
                format!("pgwarden: terminating connection of client \"{client_key}\" due to max_connection_age"),
            ),
            Timer::Transaction => Fatal::closed(
                CloseReason::TransactionTimeout,
                SqlState::TRANSACTION_TIMEOUT,
                format!("pgwarden: terminating connection of client \"{client_key}\" due to transaction_timeout"),
            ),
            Timer::Query => {
                self.query_timeout();
                return None;
            }
        };
        if which == Timer::Transaction && !self.enforce {
            self.transaction_timer_spent = true;
            if !std::mem::replace(&mut self.would_close_counted, true) {
                self.report_would_close(&fatal);
            }
            return None;
        }
        let policy_timer = matches!(which, Timer::Idle | Timer::IdleInTransaction | Timer::MaxAge);
        if policy_timer && !self.enforce {
            self.would_closed = true;
            if !std::mem::replace(&mut self.would_close_counted, true) {
                self.report_would_close(&fatal);
            }
            return None;
        }
        Some(fatal)
    }

    /// The running query reached `query_timeout`: the server is asked to cancel it with the session's own
    /// key (the client gets PostgreSQL's `57014`; the session and its transaction state are the server's
    /// to decide, as for a client's own cancel). Report-only: counted and logged. Once per query.
    fn query_timeout(&mut self) {
        self.query_timer_spent = true;
        let stats = &self.ctx.state.settings().config.stats;
        let last = crate::redact::render(
            &self.ctx.conn.last_statement(),
            stats.statement_text,
            stats.statement_max_length as usize,
        );
        let last = last.as_deref().unwrap_or("");
        let client = self.ctx.conn.client.display();
        let counters = &self.ctx.entry.counters;
        if !self.enforce {
            counters.would_cancel.fetch_add(1, Relaxed);
            tracing::warn!(
                parent: self.ctx.span,
                client,
                last_statement = last,
                "report-only: would cancel a query at query_timeout"
            );
            return;
        }
        let Some(target) = self.ctx.conn.cancel_target().cloned() else { return };
        counters.canceled.fetch_add(1, Relaxed);
        let span = self.ctx.span.clone();
        tracing::warn!(parent: &span, client, pid = target.pid, last_statement = last, "cancelling a query at query_timeout");
        // On its own task: the relay goes on moving bytes (the server's 57014 among them) meanwhile.
        tokio::spawn(async move {
            let sent = crate::session::upstream::send_cancel(target.addr, target.pid, &target.key, CANCEL_TIMEOUT);
            if let Err(e) = sent.await {
                tracing::warn!(parent: &span, error = %e, pid = target.pid, "query_timeout: the cancel request failed");
            }
        });
    }

    /// Report-only: counts and logs the close that enforcement would have made.
    fn report_would_close(&self, fatal: &Fatal) {
        let reason = fatal.close_reason();
        self.ctx.entry.counters.would_close.add(reason);
        let stats = &self.ctx.state.settings().config.stats;
        let last = crate::redact::render(
            &self.ctx.conn.last_statement(),
            stats.statement_text,
            stats.statement_max_length as usize,
        );
        tracing::warn!(
            parent: self.ctx.span,
            reason = reason.as_str(),
            state = self.published.as_str(),
            last_statement = last.as_deref().unwrap_or(""),
            "report-only: would close connection: {}",
            fatal.message
        );
    }
}

/// Points the sleep at `timer`'s deadline, touching the timer wheel only when the deadline changes (state
/// changes happen twice per query; most of them need no timer at all).
pub(super) fn arm(sleep: Pin<&mut tokio::time::Sleep>, armed: &mut Option<Instant>, timer: Option<(Instant, Timer)>) {
    let want = timer.map(|t| t.0);
    if want.is_some() && want != *armed {
        sleep.reset(far_future(timer));
        *armed = want;
    }
}

/// A far deadline for a disabled timer (the branch is also switched off, this only keeps the Sleep valid).
pub(super) fn far_future(timer: Option<(Instant, Timer)>) -> tokio::time::Instant {
    match timer {
        Some((at, _)) => at.into(),
        None => (Instant::now() + Duration::from_secs(86_400 * 365)).into(),
    }
}
