//! The detector's decisions for the pool behaviours pgwarden meets, on simulated time.

use super::*;

const T: Duration = Duration::from_secs(10);

fn th() -> Thresholds {
    Thresholds { idle: Some(T), idle_in_transaction: Some(Duration::from_secs(5)) }
}

fn idle(since: Instant) -> ConnView {
    ConnView { id: 1, state: ConnState::Idle, state_since: since, listening: false, queries: 1 }
}

/// One pool's history (one process told apart), warm: its pools reused connections far more often than they
/// opened one (tests of a whole key's history set `one_process: false`).
fn hist(t0: Instant, open: u32) -> ClientHistory {
    let mut h = ClientHistory::new(t0, open);
    h.one_process = true;
    h.reuses = SHARED_MIN_REUSES;
    for _ in 0..100 {
        h.warmth.reused(t0);
    }
    h
}

fn secs(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

#[test]
fn idle_in_transaction_past_threshold() {
    let t0 = Instant::now();
    let h = hist(t0, 1);
    for state in [ConnState::IdleInTransaction, ConnState::IdleInFailedTransaction] {
        let c = ConnView { id: 1, state, state_since: t0, listening: true, queries: 1 };
        assert_eq!(suspect_reason(&c, &h, secs(t0, 4), &th()), None);
        assert_eq!(
            suspect_reason(&c, &h, secs(t0, 5), &th()),
            Some(LeakReason::IdleInTransaction),
            "LISTEN does not excuse an open transaction"
        );
    }
    let off = Thresholds { idle: None, idle_in_transaction: None };
    let c = ConnView { id: 1, state: ConnState::IdleInTransaction, state_since: t0, listening: false, queries: 1 };
    assert_eq!(suspect_reason(&c, &h, secs(t0, 100), &off), None);
}

#[test]
fn leak_one_per_second_after_warm_up_is_flagged_within_two_thresholds() {
    // A warm pool of 2 since t0; from t=30 the app borrows a connection every second and never returns it.
    let t0 = Instant::now();
    let mut h = hist(t0, 2);
    let leak_start = 30;
    let mut flagged_at = None;
    for s in leak_start..leak_start + 3 * T.as_secs() {
        // The first two borrows take the pool's free connections; then each borrow opens a new one.
        let open = 2 + (s - leak_start).saturating_sub(1) as u32;
        if s >= leak_start + 2 {
            h.record_on_demand_open(secs(t0, s));
        }
        h.record(secs(t0, s), open);
        let first_leaked = idle(secs(t0, leak_start));
        if flagged_at.is_none() && suspect_reason(&first_leaked, &h, secs(t0, s), &th()).is_some() {
            flagged_at = Some(s - leak_start);
        }
    }
    let after = flagged_at.expect("flagged");
    assert!(after <= 2 * T.as_secs(), "flagged after {after}s");
    assert_eq!(
        suspect_reason(&idle(secs(t0, leak_start)), &h, secs(t0, leak_start + 2 * T.as_secs()), &th()),
        Some(LeakReason::IdleWhileClientGrew)
    );
}

/// Housekeeping samples the open count once a second (thresholds of 8 s or more): growth the pool made
/// just before this connection went idle is recorded only at the next sample, after `state_since`. It is
/// growth from before, not while this one sat idle.
#[test]
fn growth_recorded_at_the_sample_after_it_went_idle_is_not_growth_while_idle() {
    let t0 = Instant::now();
    let ms = |m: u64| t0 + Duration::from_millis(m);
    let mut h = hist(t0, 2);
    for s in 1..=20 {
        h.record(secs(t0, s), 2);
    }
    // At 20.3 s a burst opens a third connection; at 20.6 s this one is returned; the sample at 21 s sees 3.
    let c = idle(ms(20_600));
    h.record_on_demand_open(ms(20_300));
    for s in 21..=60 {
        h.record(secs(t0, s), 3);
        assert_eq!(suspect_reason(&c, &h, secs(t0, s), &th()), None, "at {s}s");
    }
    // A real leak after it: a later borrow opens a fourth, recorded at 31 s, and it stays.
    let mut leaky = hist(t0, 2);
    leaky.record_on_demand_open(ms(20_300));
    leaky.record_on_demand_open(ms(30_500));
    for s in 1..=60 {
        leaky.record(
            secs(t0, s),
            match s {
                0..=20 => 2,
                21..=30 => 3,
                _ => 4,
            },
        );
    }
    assert_eq!(suspect_reason(&c, &leaky, secs(t0, 41), &th()), Some(LeakReason::IdleWhileClientGrew));
}

/// The same growth, judged by what else the history knows: a spare never used, growth with no on-demand
/// open after it went idle (a pool refilling its minimum), or a history proven to be several pools; and
/// for a whole key (TCP), its warm-up, its warmth and how long its pools let a free connection wait.
#[test]
fn growth_is_evidence_only_of_a_used_connection_in_one_pool_that_opened_on_demand() {
    let t0 = Instant::now();
    let mut h = hist(t0, 2);
    for s in 1..=90 {
        h.record(secs(t0, s), if s <= 40 { 2 } else { 4 });
    }
    let c = idle(secs(t0, 35));
    let now = secs(t0, 60);
    assert_eq!(suspect_reason(&c, &h, now, &th()), None, "no on-demand open: maintenance growth");
    h.record_on_demand_open(secs(t0, 32));
    assert_eq!(suspect_reason(&c, &h, now, &th()), None, "the open came before it went idle");
    h.record_on_demand_open(secs(t0, 41));
    assert_eq!(suspect_reason(&c, &h, now, &th()), Some(LeakReason::IdleWhileClientGrew));
    let spare = ConnView { queries: 0, ..c };
    assert_eq!(suspect_reason(&spare, &h, now, &th()), None, "never used: a pool's spare");
    // A whole key: judged while warm, past its warm-up and past what its pools let a connection wait.
    let shared = ClientHistory { one_process: false, ..h.clone() };
    assert_eq!(suspect_reason(&c, &shared, now, &th()), Some(LeakReason::IdleWhileClientGrew), "a warm key");
    let mut patient = shared.clone();
    patient.staircase.bound = Duration::from_secs(20);
    assert_eq!(
        suspect_reason(&c, &patient, now, &th()),
        None,
        "a TCP key whose pools let free connections wait 20 s: growth is judged only past 40 s idle"
    );
    let cold = ClientHistory { reuses: SHARED_MIN_REUSES - 1, ..shared.clone() };
    assert_eq!(suspect_reason(&c, &cold, now, &th()), None, "a key whose pools never reused a connection");
    let mut opening = shared.clone();
    for _ in 0..250 {
        opening.warmth.opened(secs(t0, 30));
    }
    assert_eq!(
        suspect_reason(&c, &opening, now, &th()),
        None,
        "a key whose pools open on demand more often than they reuse (cold worker processes)"
    );
    let early = idle(secs(t0, 12));
    let mut young = shared.clone();
    young.record(secs(t0, 20), 2);
    assert_eq!(suspect_reason(&early, &young, secs(t0, 29), &th()), None, "a key's first three thresholds");
    h.several_pools_since = Some(secs(t0, 50));
    assert_eq!(suspect_reason(&c, &h, now, &th()), None, "several pools: growth proves nothing");
    h.last_at_cap = Some(secs(t0, 55));
    assert_eq!(suspect_reason(&c, &h, now, &th()), Some(LeakReason::IdleWhileClientAtCap));
}

#[test]
fn warm_up_one_at_a_time_then_idle_is_not_flagged() {
    let t0 = Instant::now();
    let mut h = hist(t0, 1);
    for i in 1..=5 {
        h.record(t0 + Duration::from_millis(500 * i), 1 + i as u32);
    }
    let first = idle(t0);
    for s in 0..10 * T.as_secs() {
        assert_eq!(suspect_reason(&first, &h, secs(t0, s), &th()), None, "at {s}s");
    }
}

#[test]
fn transient_growth_and_lifo_retirement_are_not_flagged() {
    let t0 = Instant::now();
    let mut h = hist(t0, 4);
    let bottom = idle(secs(t0, 1));
    for s in 1..10 * T.as_secs() {
        // Every 3 s the oldest connection retires: open-then-close (5 for a moment) or close-then-open (3).
        if s % 3 == 0 {
            h.record(secs(t0, s), if s % 2 == 0 { 5 } else { 3 });
        } else {
            h.record(secs(t0, s), 4);
        }
        assert_eq!(suspect_reason(&bottom, &h, secs(t0, s), &th()), None, "at {s}s");
    }
}

#[test]
fn growth_that_recedes_is_not_sustained() {
    let t0 = Instant::now();
    let mut h = hist(t0, 2);
    let c = idle(secs(t0, 20));
    h.record(secs(t0, 25), 5);
    h.record(secs(t0, 32), 2);
    for s in 20..60 {
        assert_eq!(suspect_reason(&c, &h, secs(t0, s), &th()), None, "at {s}s");
    }
}

#[test]
fn at_cap_refusals_after_idle_flag_it() {
    let t0 = Instant::now();
    let mut h = hist(t0, 5);
    let c = idle(secs(t0, 20));
    h.last_at_cap = Some(secs(t0, 19));
    assert_eq!(suspect_reason(&c, &h, secs(t0, 40), &th()), None, "pressure before it went idle does not count");
    h.last_at_cap = Some(secs(t0, 22));
    assert_eq!(suspect_reason(&c, &h, secs(t0, 29), &th()), None, "not idle for the threshold yet");
    assert_eq!(suspect_reason(&c, &h, secs(t0, 30), &th()), Some(LeakReason::IdleWhileClientAtCap));
}

#[test]
fn listen_and_active_connections_are_never_idle_suspects() {
    let t0 = Instant::now();
    let mut h = hist(t0, 1);
    h.record(secs(t0, 30), 9);
    h.last_at_cap = Some(secs(t0, 31));
    let listener = ConnView { id: 1, state: ConnState::Idle, state_since: secs(t0, 15), listening: true, queries: 1 };
    assert_eq!(suspect_reason(&listener, &h, secs(t0, 100), &th()), None);
    let active = ConnView { id: 1, state: ConnState::Active, state_since: t0, listening: false, queries: 1 };
    assert_eq!(suspect_reason(&active, &h, secs(t0, 100), &th()), None);
}

#[test]
fn a_connection_used_every_seven_seconds_is_not_flagged() {
    let t0 = Instant::now();
    let h = hist(t0, 1);
    let short = Thresholds { idle: Some(Duration::from_secs(5)), idle_in_transaction: None };
    for s in 0..200u64 {
        let since = secs(t0, s / 7 * 7);
        assert_eq!(suspect_reason(&idle(since), &h, secs(t0, s), &short), None);
    }
}

#[test]
fn history_queries() {
    let t0 = Instant::now();
    let mut h = hist(t0, 1);
    h.record(secs(t0, 1), 1);
    h.record(secs(t0, 2), 3);
    h.record(secs(t0, 4), 2);
    assert_eq!(h.open_at(secs(t0, 0)), 1);
    assert_eq!(h.open_at(secs(t0, 3)), 3);
    assert_eq!(h.min_open(secs(t0, 2), secs(t0, 10)), 2);
    assert_eq!(h.min_open(secs(t0, 2), secs(t0, 3)), 3);
    h.prune(secs(t0, 3));
    assert_eq!(h.open_at(secs(t0, 3)), 3);
    assert_eq!(h.open_at(t0), 3, "before the kept history: the oldest known value");
}

mod pools;

/// With more than one worker thread, housekeeping's snapshot can be older than a session's close: the
/// suspect it still lists was kept as evidence by `closing` and must not be kept twice.
#[test]
fn a_suspect_closing_after_the_snapshot_is_kept_once() {
    use crate::clients::Clients;
    use crate::config::{Leak, Stats};
    use crate::identity::{ClientId, Field, Peer};
    use crate::registry::Registry;
    use crate::vocab::ConnState;
    use std::sync::Arc;
    let (registry, clients) = (Arc::new(Registry::default()), Arc::new(Clients::default()));
    let id = Arc::new(ClientId::new(vec![(Field::ApplicationName, "app".into())]));
    let _entry = clients.entry(&id);
    let now = Instant::now();
    let guard = registry.register(id, Peer::Tcp("127.0.0.1:1".parse().unwrap()), now);
    let conn = guard.conn().clone();
    conn.set_state(ConnState::IdleInTransaction, now);
    let now = now + Duration::from_secs(120);
    let (leak, stats) = (Leak::default(), Stats::default());
    let mut d = Detector::default();
    d.tick(now, &registry.snapshot(), &clients.entries(), &leak, &stats);
    assert_eq!(d.live().count(), 1, "idle in transaction for 2 min: a suspect");
    let stale = registry.snapshot();
    conn.mark_closed(now, "idle_in_transaction_timeout");
    d.closing(&conn, now, &leak);
    d.tick(now, &stale, &clients.entries(), &leak, &stats);
    drop(guard);
    d.tick(now, &registry.snapshot(), &clients.entries(), &leak, &stats);
    assert_eq!(d.live().count(), 0);
    assert_eq!(d.closed().count(), 1, "kept once");
}

/// Closed suspects are evidence, bounded: a client's newest 100, the newest 1,000 in all; the rest are let go
/// and counted (issue 27 item 10).
#[test]
fn closed_suspects_are_capped_per_client_and_in_all() {
    use super::detector::{KEEP_CLOSED_IN_ALL, KEEP_CLOSED_PER_CLIENT};
    use crate::clients::Clients;
    use crate::config::{Leak, Stats};
    use crate::identity::{ClientId, Field, Peer};
    use crate::registry::Registry;
    use crate::vocab::ConnState;
    use std::sync::Arc;
    let (registry, clients) = (Arc::new(Registry::default()), Arc::new(Clients::default()));
    let (leak, stats) = (Leak::default(), Stats::default());
    let mut d = Detector::default();
    let t0 = Instant::now();
    let close_one = |d: &mut Detector, app: &str, i: u64| {
        // Judged a suspect at a tick, then closed.
        let id = Arc::new(ClientId::new(vec![(Field::ApplicationName, app.into())]));
        let _entry = clients.entry(&id);
        let guard = registry.register(id, Peer::Tcp("127.0.0.1:1".parse().unwrap()), t0);
        let conn = guard.conn().clone();
        conn.set_state(ConnState::IdleInTransaction, t0);
        let now = t0 + Duration::from_secs(120) + Duration::from_millis(i);
        d.tick(now, &registry.snapshot(), &clients.entries(), &leak, &stats);
        conn.mark_closed(now, "idle_in_transaction_timeout");
        d.closing(&conn, now, &leak);
    };
    for i in 0..150 {
        close_one(&mut d, "one", i);
    }
    assert_eq!(d.closed().count(), KEEP_CLOSED_PER_CLIENT);
    assert_eq!(d.closed_dropped().get(), 50);
    for i in 0..1200u64 {
        close_one(&mut d, &format!("many-{}", i % 40), 200 + i);
    }
    assert_eq!(d.closed().count(), KEEP_CLOSED_IN_ALL);
    assert!(d.closed().all(|c| c.conn.client.display().starts_with("many-")), "the newest kept");
    d.tick(t0 + Duration::from_secs(130), &registry.snapshot(), &clients.entries(), &leak, &stats);
    assert_eq!(d.closed().count(), KEEP_CLOSED_IN_ALL);
}
