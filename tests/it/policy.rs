//! Per-client policy through the proxy: caps, the wait queue, timeouts, report-only mode, hot reload.

use crate::support::pg::pg;
use crate::support::proxy::{connect, eventually, sqlstate};
use crate::support::raw::{self, Raw};
use crate::support::{start_proxy, test_config, TestProxy};
use futures_util::future::join_all;
use pgwarden::config::{Config, Limit, OnLimit, Timeout};
use pgwarden::identity::{ClientId, Field};
use pgwarden::vocab::CloseReason;
use pgwarden::vocab::ConnState;
use pgwarden::vocab::RefuseReason;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn capped(n: u32) -> Config {
    let mut c = test_config();
    c.defaults.max_connections = Limit(Some(n));
    c
}

fn secs(s: f64) -> Timeout {
    Timeout(Some(Duration::from_secs_f64(s)))
}

fn entry(p: &TestProxy, app: &str) -> Arc<pgwarden::clients::ClientEntry> {
    let id = Arc::new(ClientId::new(vec![(Field::ApplicationName, app.into()), (Field::User, "postgres".into())]));
    p.state.clients.entry(&id)
}

#[tokio::test]
async fn cap_refuses_the_fourth_and_frees_on_close() {
    let p = start_proxy(capped(3)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(p.connect("policy-cap").await.unwrap());
    }
    let err = p.connect("policy-cap").await.err().expect("4th refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(
        msg.contains("policy-cap/postgres") && msg.contains("max_connections 3") && msg.contains("defaults"),
        "{msg}"
    );
    let other = p.connect("policy-other").await.expect("another client is not affected");
    drop(held.pop());
    let again = async {
        loop {
            if let Ok(c) = p.connect("policy-cap").await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _new = tokio::time::timeout(Duration::from_secs(5), again).await.expect("accepted once one closed");
    let e = entry(&p, "policy-cap");
    assert_eq!(e.counters.refused.get(RefuseReason::ClientLimit), 1);
    assert_eq!(e.counters.open.load(Relaxed), 3);
    drop(other);
    p.stop().await;
}

#[tokio::test]
async fn connect_race_never_exceeds_the_cap() {
    let p = start_proxy(capped(3)).await;
    let app = "policy-burst";
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = tokio::task::spawn_blocking({
        let done = done.clone();
        move || {
            let mut max = 0;
            while !done.load(Relaxed) {
                max = max.max(pg().backends_of(app));
            }
            max
        }
    });
    let attempts = (0..60).map(|_| {
        let cfg = p.pg_config("postgres", app);
        tokio::spawn(async move {
            match connect(cfg).await {
                Ok(c) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    drop(c);
                    true
                }
                Err(e) => {
                    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e:?}");
                    false
                }
            }
        })
    });
    let results: Vec<bool> = join_all(attempts).await.into_iter().map(|r| r.unwrap()).collect();
    done.store(true, Relaxed);
    let max = sampler.await.unwrap();
    assert!(max <= 3, "pg_stat_activity showed {max} backends for a client capped at 3");
    let ok = results.iter().filter(|r| **r).count();
    assert!((3..60).contains(&ok), "{ok} admitted");
    let e = entry(&p, app);
    assert_eq!(e.counters.refused.get(RefuseReason::ClientLimit) as usize, 60 - ok);
    p.stop().await;
}

#[tokio::test]
async fn wait_queue_admits_on_release_and_times_out() {
    let mut config = capped(1);
    config.defaults.on_limit = OnLimit::Wait;
    config.defaults.wait_timeout = secs(30.0);
    config.rules = serde_norway::from_str("- match: { application_name: 'policy-wait-short' }\n  wait_timeout: 1s\n  max_connections: 1\n  on_limit: wait").unwrap();
    let p = start_proxy(config).await;
    let app = "policy-wait";
    let holder = p.connect(app).await.unwrap();
    // A waiter that gives up: connects, is queued, disconnects. It must free nothing.
    let mut quitter = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut quitter,
        &raw::startup_packet(&[("user", "postgres"), ("application_name", app)]),
    )
    .await
    .unwrap();
    assert!(eventually(Duration::from_secs(5), || entry(&p, app).counters.waiting.load(Relaxed) == 1).await);
    drop(quitter);
    assert!(eventually(Duration::from_secs(5), || entry(&p, app).counters.waiting.load(Relaxed) == 0).await);
    assert_eq!(entry(&p, app).counters.open.load(Relaxed), 1, "a waiter that leaves frees nothing");
    // A real waiter is admitted as soon as the holder closes.
    let waiter = tokio::spawn({
        let cfg = p.pg_config("postgres", app);
        async move { connect(cfg).await }
    });
    assert!(eventually(Duration::from_secs(5), || entry(&p, app).counters.waiting.load(Relaxed) == 1).await);
    assert!(p.conns_of(app).iter().any(|c| c.state() == ConnState::Waiting));
    drop(holder);
    let admitted =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("admitted when the slot freed").unwrap();
    let c = admitted.expect("the waiter connects");
    assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    // With no release, a waiter gets 53300 after its wait_timeout.
    let short = "policy-wait-short";
    let _hold = p.connect(short).await.unwrap();
    let started = Instant::now();
    let err = p.connect(short).await.err().expect("timed out");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(err.as_db_error().unwrap().message().contains("waited 1s"), "{err:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "{took:?}");
    assert_eq!(entry(&p, short).counters.refused.get(RefuseReason::WaitTimeout), 1);
    p.stop().await;
}

/// Reads until an ErrorResponse; returns its SQLSTATE and whether the socket then closed.
async fn next_error(raw: &mut Raw, within: Duration) -> (String, bool) {
    let read = async {
        loop {
            match raw::read_message(&mut raw.stream).await {
                Some((b'E', body)) => return Some(raw::error_code(&body)),
                Some(_) => continue,
                None => return None,
            }
        }
    };
    let code =
        tokio::time::timeout(within, read).await.expect("an error in time").expect("an ErrorResponse before EOF");
    let closed = raw::read_message(&mut raw.stream).await.is_none();
    (code, closed)
}

#[tokio::test]
async fn idle_timeout_closes_idle_but_not_a_long_query() {
    let mut config = test_config();
    config.defaults.idle_timeout = secs(2.0);
    let p = start_proxy(config).await;
    let mut idle = Raw::connect(p.addr, "postgres", "policy-idle").await;
    let mut busy = Raw::connect(p.addr, "postgres", "policy-idle-busy").await;
    busy.send(&raw::query("select pg_sleep(4)")).await;
    let started = Instant::now();
    let (code, closed) = next_error(&mut idle, Duration::from_secs(5)).await;
    assert_eq!((code.as_str(), closed), ("57P05", true));
    assert!(started.elapsed() >= Duration::from_millis(1800));
    let (msgs, status) = busy.until_ready().await;
    assert!(msgs.iter().any(|(t, _)| *t == b'C'), "the 4 s query completed");
    assert_eq!(status, b'I');
    assert_eq!(entry(&p, "policy-idle").counters.closed.get(CloseReason::IdleTimeout), 1);
    p.stop().await;
}

#[tokio::test]
async fn idle_in_transaction_timeout_closes_and_rolls_back() {
    let mut config = test_config();
    config.defaults.idle_in_transaction_timeout = secs(2.0);
    let p = start_proxy(config).await;
    let mut raw = Raw::connect(p.addr, "postgres", "policy-iit").await;
    raw.send(&raw::query("begin; insert into kill_test values (2525)")).await;
    assert_eq!(raw.until_ready().await.1, b'T');
    let (code, closed) = next_error(&mut raw, Duration::from_secs(5)).await;
    assert_eq!((code.as_str(), closed), ("25P03", true));
    assert!(
        eventually(Duration::from_secs(2), || pg().psql("select count(*) from kill_test where id = 2525") == "0").await
    );
    // Also in a failed transaction.
    let mut failed = Raw::connect(p.addr, "postgres", "policy-iit").await;
    failed.send(&raw::query("begin; select 1/0")).await;
    assert_eq!(failed.until_ready().await.1, b'E');
    assert_eq!(next_error(&mut failed, Duration::from_secs(5)).await.0, "25P03");
    p.stop().await;
}

#[tokio::test]
async fn max_connection_age_waits_for_the_next_idle_point() {
    let mut config = test_config();
    config.defaults.max_connection_age = secs(2.0);
    let p = start_proxy(config).await;
    let mut raw = Raw::connect(p.addr, "postgres", "policy-age").await;
    raw.send(&raw::query("begin; select pg_sleep(3)")).await;
    let (msgs, status) = raw.until_ready().await;
    assert!(msgs.iter().all(|(t, _)| *t != b'E'), "the busy query was not interrupted");
    assert_eq!(status, b'T');
    // Still in a transaction: not an idle point.
    tokio::time::sleep(Duration::from_millis(500)).await;
    raw.send(&raw::query("commit")).await;
    assert_eq!(raw.until_ready().await.1, b'I');
    let (code, closed) = next_error(&mut raw, Duration::from_secs(2)).await;
    assert_eq!((code.as_str(), closed), ("57P01", true));
    p.stop().await;
}

#[tokio::test]
async fn max_total_connections_caps_the_sum() {
    let mut config = test_config();
    config.max_total_connections = Limit(Some(3));
    let p = start_proxy(config).await;
    let _a = p.connect("policy-total-a").await.unwrap();
    let _b = p.connect("policy-total-b").await.unwrap();
    let _c = p.connect("policy-total-c").await.unwrap();
    let err = p.connect("policy-total-d").await.err().expect("over the total");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    assert!(err.as_db_error().unwrap().message().contains("max_total_connections 3"));
    assert_eq!(entry(&p, "policy-total-d").counters.refused.get(RefuseReason::TotalLimit), 1);
    p.stop().await;
}

#[tokio::test]
async fn report_only_counts_instead_of_acting() {
    let mut config = capped(3);
    config.enforce = false;
    config.defaults.idle_timeout = secs(1.0);
    let p = start_proxy(config).await;
    let app = "policy-report";
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(p.connect(app).await.expect("report-only refuses nothing"));
    }
    let e = entry(&p, app);
    assert_eq!(e.counters.would_refuse.get(RefuseReason::ClientLimit), 1);
    assert_eq!(e.counters.refused.get(RefuseReason::ClientLimit), 0);
    let mut idle = Raw::connect(p.addr, "postgres", "policy-report-idle").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    idle.send(&raw::query("select 1")).await;
    let (msgs, _) = idle.until_ready().await;
    assert!(msgs.iter().all(|(t, _)| *t != b'E'), "still open past idle_timeout");
    let e = entry(&p, "policy-report-idle");
    assert_eq!(e.counters.would_close.get(CloseReason::IdleTimeout), 1, "counted once per connection");
    for c in &held {
        assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    }
    p.stop().await;
}

/// `max_clients`: with every client key holding a connection, a new key is refused with 53300 naming the
/// setting and counted; once a key is empty, a new one takes its place.
#[tokio::test]
async fn a_new_client_key_past_max_clients_waits_for_an_empty_one() {
    let mut config = test_config();
    config.max_clients = 2;
    let p = start_proxy(config).await;
    let a = p.connect("keys-a").await.unwrap();
    let _b = p.connect("keys-b").await.unwrap();
    let err = p.connect("keys-c").await.err().expect("a third key refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("53300"));
    let msg = err.as_db_error().unwrap().message().to_string();
    assert!(msg.contains("max_clients") && msg.contains("all 2 client keys"), "{msg}");
    let metrics = crate::support::http::get(&p.admin.to_string(), "/metrics").await;
    assert!(metrics.contains("pgwarden_client_keys_refused_total 1"), "{metrics}");
    drop(a);
    let again = async {
        loop {
            if let Ok(c) = p.connect("keys-c").await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let _c = tokio::time::timeout(Duration::from_secs(5), again).await.expect("keys-a gave way");
    p.stop().await;
}
