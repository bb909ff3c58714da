use super::*;
use crate::config::{Limit, OnLimit, Timeout};
use crate::identity::Field;

#[test]
fn globs() {
    let yes = [
        ("image-*", "image-processor"),
        ("*", ""),
        ("*", "x"),
        ("a?c", "abc"),
        ("*-api", "checkout-api"),
        ("a*b*c", "aXbYc"),
        ("", ""),
    ];
    for (p, t) in yes {
        assert!(glob(p.as_bytes(), t.as_bytes()), "{p} ~ {t}");
    }
    let no = [("image-*", "images"), ("a?c", "ac"), ("", "x"), ("*-api", "checkout-apis"), ("a*b*c", "aXbY")];
    for (p, t) in no {
        assert!(!glob(p.as_bytes(), t.as_bytes()), "{p} !~ {t}");
    }
}

fn client(app: &str, user: &str) -> ClientId {
    ClientId::new(vec![(Field::ApplicationName, app.into()), (Field::User, user.into())])
}

fn config(yaml: &str) -> Config {
    Config::from_yaml(yaml, "test").unwrap()
}

#[test]
fn first_matching_rule_overrides_defaults_field_by_field() {
    let c = config(
        r#"
defaults: { max_connections: 50, idle_timeout: 10m, on_limit: wait }
rules:
  - name: image-workers
    match: { application_name: "image-*" }
    max_connections: 10
  - name: alice-anything
    match: { user: alice }
    max_connections: 2
    on_limit: reject
  - match: { application_name: "", user: "*" }
    idle_timeout: 1m
"#,
    );
    let (p, rule) = effective(&c, &client("image-processor", "alice"));
    assert_eq!(rule.as_deref(), Some("image-workers"));
    assert_eq!(p.max_connections, Limit(Some(10)));
    assert_eq!(p.on_limit, OnLimit::Wait, "unset fields come from defaults");
    assert_eq!(p.idle_timeout, Timeout(Some(Duration::from_secs(600))));
    let (p, rule) = effective(&c, &client("api", "alice"));
    assert_eq!(
        (p.max_connections, p.on_limit, rule.as_deref()),
        (Limit(Some(2)), OnLimit::Reject, Some("alice-anything"))
    );
    let (p, rule) = effective(&c, &client("", "bob"));
    assert_eq!(rule.as_deref(), Some("rules[2]"));
    assert_eq!(p.idle_timeout, Timeout(Some(Duration::from_secs(60))));
    let (p, rule) = effective(&c, &client("api", "bob"));
    assert_eq!((p, rule), (c.defaults, None));
}

#[test]
fn missing_field_matches_as_empty() {
    let c = config("client_key: [user]\nrules:\n  - match: { user: '' }\n    max_connections: 1");
    let anonymous = ClientId::new(vec![(Field::User, String::new())]);
    assert_eq!(effective(&c, &anonymous).0.max_connections, Limit(Some(1)));
}

fn input(state: ConnState, policy: &Policy, since: Instant, opened: Instant) -> TimerInput<'_> {
    TimerInput {
        state,
        state_since: since,
        opened,
        login_deadline: None,
        drain_deadline: None,
        policy,
        idle_timers_spent: false,
        transaction_since: None,
        transaction_timer_spent: false,
        query_timer_spent: false,
    }
}

#[test]
fn timers_by_state() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let policy = Policy {
        idle_timeout: Timeout(Some(s(10))),
        idle_in_transaction_timeout: Timeout(Some(s(3))),
        max_connection_age: Timeout(Some(s(60))),
        ..Policy::default()
    };
    let since = t0 + s(100);
    assert_eq!(next_timer(&input(ConnState::Active, &policy, since, t0)), None, "a running query is never idle");
    assert_eq!(next_timer(&input(ConnState::Waiting, &policy, since, t0)), None);
    // Idle, older than max age: closes at once (its idle point), before the idle timeout.
    assert_eq!(next_timer(&input(ConnState::Idle, &policy, since, t0)), Some((since, Timer::MaxAge)));
    // Young connection: the idle timeout comes first.
    assert_eq!(next_timer(&input(ConnState::Idle, &policy, since, t0 + s(95))), Some((since + s(10), Timer::Idle)));
    for st in [ConnState::IdleInTransaction, ConnState::IdleInFailedTransaction] {
        assert_eq!(next_timer(&input(st, &policy, since, t0)), Some((since + s(3), Timer::IdleInTransaction)));
    }
    let mut spent = input(ConnState::Idle, &policy, since, t0);
    spent.idle_timers_spent = true;
    assert_eq!(next_timer(&spent), None);
}

#[test]
fn login_and_drain_timers() {
    let t0 = Instant::now();
    let policy = Policy::default();
    let mut i = input(ConnState::Startup, &policy, t0, t0);
    assert_eq!(next_timer(&i), None);
    i.login_deadline = Some(t0 + Duration::from_secs(15));
    assert_eq!(next_timer(&i), Some((t0 + Duration::from_secs(15), Timer::Login)));
    i.drain_deadline = Some(t0 + Duration::from_secs(1));
    assert_eq!(next_timer(&i), Some((t0 + Duration::from_secs(1), Timer::DrainGrace)));
    i.state = ConnState::Active;
    assert_eq!(next_timer(&i), Some((t0 + Duration::from_secs(1), Timer::DrainGrace)));
}

#[test]
fn deadlines_past_what_an_instant_holds_are_no_deadline() {
    let now = Instant::now();
    let huge = Timeout(Some(Duration::MAX));
    let policy = Policy {
        idle_timeout: huge,
        max_connection_age: huge,
        idle_in_transaction_timeout: huge,
        transaction_timeout: huge,
        query_timeout: huge,
        ..Policy::default()
    };
    for state in [ConnState::Idle, ConnState::IdleInTransaction, ConnState::Active] {
        let i = TimerInput {
            state,
            state_since: now,
            opened: now,
            login_deadline: None,
            drain_deadline: None,
            policy: &policy,
            idle_timers_spent: false,
            transaction_since: Some(now),
            transaction_timer_spent: false,
            query_timer_spent: false,
        };
        assert_eq!(next_timer(&i), None, "{state:?}");
    }
}

#[test]
fn transaction_and_query_timeouts() {
    let t0 = Instant::now();
    let s = Duration::from_secs;
    let policy = Policy {
        transaction_timeout: Timeout(Some(s(30))),
        query_timeout: Timeout(Some(s(5))),
        idle_in_transaction_timeout: Timeout(Some(s(20))),
        ..Policy::default()
    };
    // A query that began 2 s into its transaction: cancelled 5 s after it began.
    let mut i = input(ConnState::Active, &policy, t0 + s(2), t0);
    i.transaction_since = Some(t0);
    assert_eq!(next_timer(&i), Some((t0 + s(7), Timer::Query)));
    // Cancelled already: the transaction's deadline is next.
    i.query_timer_spent = true;
    assert_eq!(next_timer(&i), Some((t0 + s(30), Timer::Transaction)));
    // Idle in the transaction since 15 s: the transaction timeout (30 s) comes before the idle one (35 s).
    let mut i = input(ConnState::IdleInTransaction, &policy, t0 + s(15), t0);
    i.transaction_since = Some(t0);
    assert_eq!(next_timer(&i), Some((t0 + s(30), Timer::Transaction)));
    i.transaction_timer_spent = true;
    assert_eq!(next_timer(&i), Some((t0 + s(35), Timer::IdleInTransaction)));
    // Idle outside a transaction: neither runs.
    let mut i = input(ConnState::Idle, &policy, t0, t0);
    i.transaction_since = None;
    assert_eq!(next_timer(&i), None);
    // Without a transaction start (never left idle) a query still has its own timeout.
    let i = input(ConnState::Active, &policy, t0, t0);
    assert_eq!(next_timer(&i), Some((t0 + s(5), Timer::Query)));
}
