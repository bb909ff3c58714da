//! Policy as plain functions: which rule applies to a client, and which timer a connection runs next.
//!
//! Nothing here touches sockets or clocks; callers pass the snapshot and the current time in.

use crate::config::{Config, Policy, Rule};
use crate::identity::ClientId;
use crate::vocab::ConnState;
use std::time::{Duration, Instant};

/// The policy that applies to `client`: `defaults`, overridden by the first matching rule's fields.
/// Returns the policy and the name of the rule (`None` for defaults; `rules[i]` for an unnamed rule).
pub fn effective(config: &Config, client: &ClientId) -> (Policy, Option<String>) {
    let mut policy = config.defaults;
    let Some((i, rule)) = config.rules.iter().enumerate().find(|(_, r)| matches(r, client)) else {
        return (policy, None);
    };
    if let Some(v) = rule.max_connections {
        policy.max_connections = v;
    }
    if let Some(v) = rule.on_limit {
        policy.on_limit = v;
    }
    if let Some(v) = rule.wait_timeout {
        policy.wait_timeout = v;
    }
    if let Some(v) = rule.idle_timeout {
        policy.idle_timeout = v;
    }
    if let Some(v) = rule.idle_in_transaction_timeout {
        policy.idle_in_transaction_timeout = v;
    }
    if let Some(v) = rule.max_connection_age {
        policy.max_connection_age = v;
    }
    if let Some(v) = rule.transaction_timeout {
        policy.transaction_timeout = v;
    }
    if let Some(v) = rule.query_timeout {
        policy.query_timeout = v;
    }
    (policy, Some(rule.name.clone().unwrap_or_else(|| format!("rules[{i}]"))))
}

/// Every glob of the rule matches; a field missing from the client matches as the empty string.
pub fn matches(rule: &Rule, client: &ClientId) -> bool {
    rule.matches.iter().all(|(field, pattern)| glob(pattern.as_bytes(), client.get(*field).unwrap_or("").as_bytes()))
}

/// Glob with `*` (any run, also empty) and `?` (one byte); everything else matches itself.
pub fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Why a connection's timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Still in startup at `client_login_timeout`.
    Login,
    /// Draining and `shutdown_grace` is over.
    DrainGrace,
    Idle,
    IdleInTransaction,
    /// Past `max_connection_age` at an idle point.
    MaxAge,
    /// In one transaction (or one statement outside any) for `transaction_timeout`.
    Transaction,
    /// One query running for `query_timeout`: cancelled, the session stays.
    Query,
}

/// What the timer of one connection depends on.
#[derive(Debug, Clone, Copy)]
pub struct TimerInput<'a> {
    pub state: ConnState,
    pub state_since: Instant,
    pub opened: Instant,
    pub login_deadline: Option<Instant>,
    pub drain_deadline: Option<Instant>,
    pub policy: &'a Policy,
    /// Timeouts of the current idle period were already reported (report-only mode): do not rearm them.
    pub idle_timers_spent: bool,
    /// When the current transaction began (the session left idle), if one is open.
    pub transaction_since: Option<Instant>,
    /// The current transaction's timeout fired already (report-only: reported once per transaction).
    pub transaction_timer_spent: bool,
    /// The running query's timeout fired already (it was cancelled, or reported).
    pub query_timer_spent: bool,
}

/// The next timer of a connection, if any: the earliest deadline that applies to its state.
pub fn next_timer(i: &TimerInput<'_>) -> Option<(Instant, Timer)> {
    // Checked: a deadline past what an Instant holds is no deadline.
    let after = |d: Option<Duration>| d.and_then(|d| i.state_since.checked_add(d));
    let earliest = |a: Option<(Instant, Timer)>, b: Option<(Instant, Timer)>| match (a, b) {
        (Some(x), Some(y)) => Some(if y.0 < x.0 { y } else { x }),
        (x, y) => x.or(y),
    };
    let drain = i.drain_deadline.map(|at| (at, Timer::DrainGrace));
    let own = match i.state {
        ConnState::Startup => i.login_deadline.map(|at| (at, Timer::Login)),
        ConnState::Idle if !i.idle_timers_spent => earliest(
            after(i.policy.idle_timeout.0).map(|at| (at, Timer::Idle)),
            i.policy
                .max_connection_age
                .0
                .and_then(|age| Some((i.opened.checked_add(age)?.max(i.state_since), Timer::MaxAge))),
        ),
        ConnState::IdleInTransaction | ConnState::IdleInFailedTransaction if !i.idle_timers_spent => {
            after(i.policy.idle_in_transaction_timeout.0).map(|at| (at, Timer::IdleInTransaction))
        }
        _ => None,
    };
    let query = match i.state {
        ConnState::Active if !i.query_timer_spent => after(i.policy.query_timeout.0).map(|at| (at, Timer::Query)),
        _ => None,
    };
    let transaction = match (i.state, i.transaction_since) {
        (ConnState::Active | ConnState::IdleInTransaction | ConnState::IdleInFailedTransaction, Some(since))
            if !i.transaction_timer_spent =>
        {
            i.policy.transaction_timeout.0.and_then(|d| since.checked_add(d)).map(|at| (at, Timer::Transaction))
        }
        _ => None,
    };
    earliest(earliest(drain, own), earliest(transaction, query))
}

#[cfg(test)]
mod tests;
