//! Leak detection through the proxy with real clients and thresholds of seconds: each reason is found, and
//! healthy pool behaviours are not flagged.

use crate::support::pg::pg;
use crate::support::proxy::{connect, eventually};
use crate::support::{start_proxy, test_config, TestProxy};
use pgwarden::config::{Config, Limit, Timeout};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_postgres::Client;

fn leak_config(idle: f64, iit: f64) -> Config {
    let mut c = test_config();
    c.leak.idle_threshold = Timeout(Some(Duration::from_secs_f64(idle)));
    c.leak.idle_in_transaction_threshold = Timeout(Some(Duration::from_secs_f64(iit)));
    c
}

/// The `/leaks` entry of the client with `application_name = app`.
async fn leak_of(p: &TestProxy, app: &str) -> Option<Value> {
    let leaks = p.admin_json("/leaks").await;
    leaks["leaks"].as_array().unwrap().iter().find(|l| l["application_name"] == app).cloned()
}

async fn wait_flagged(p: &TestProxy, app: &str, reason: &str, within: Duration) -> (Value, Duration) {
    let started = Instant::now();
    loop {
        if let Some(l) = leak_of(p, app).await {
            if l["leak_reasons"].as_array().unwrap().iter().any(|r| r == reason) {
                return (l, started.elapsed());
            }
        }
        assert!(started.elapsed() < within, "{app} not flagged {reason} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn pool_leaking_one_connection_per_second_is_flagged_within_three_thresholds() {
    let threshold = 4.0;
    let p = start_proxy(leak_config(threshold, 30.0)).await;
    let app = "leak-grow";
    // A warm pool of 2, in use past the client's warm-up.
    let mut free: Vec<Client> = vec![p.connect(app).await.unwrap(), p.connect(app).await.unwrap()];
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_secs_f64(threshold + 0.5) {
        for c in &free {
            c.simple_query("select 1").await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The bug: every second a request borrows a connection (a free one, else a new one) and never returns it.
    let leak_started = Instant::now();
    let mut leaked = Vec::new();
    let flagged = async {
        let mut n = 0;
        loop {
            let c = match free.pop() {
                Some(c) => c,
                None => p.connect(app).await.unwrap(),
            };
            n += 1;
            c.simple_query(&format!("select 'order-{n}', {n}")).await.unwrap();
            leaked.push(c);
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(l) = leak_of(&p, app).await {
                if l["leak_reasons"].as_array().unwrap().iter().any(|r| r == "idle_while_client_grew") {
                    return l;
                }
            }
            assert!(n < 20, "never flagged");
        }
    };
    let l = flagged.await;
    let took = leak_started.elapsed();
    // Three thresholds: over TCP a key's growth is judged after its first three (its worker processes warm up
    // in turn), and the staircase needs six steps idle for a threshold.
    assert!(took <= Duration::from_secs_f64(3.0 * threshold), "flagged after {took:?}");
    let suspect = &l["suspects"][0];
    assert_eq!(suspect["leak_reason"], "idle_while_client_grew");
    assert_eq!(suspect["last_statement"], "select ?, ?", "redacted by default");
    let pid = suspect["backend_pid"].as_i64().unwrap();
    assert_eq!(pg().psql(&format!("select application_name from pg_stat_activity where pid = {pid}")), app);
    assert_eq!(l["leak_suspected"], true);
    p.stop().await;
}

#[tokio::test]
async fn open_transaction_is_flagged_then_reclaimed_with_evidence_kept() {
    let mut config = leak_config(60.0, 1.0);
    config.defaults.idle_in_transaction_timeout = Timeout(Some(Duration::from_secs(3)));
    let p = start_proxy(config).await;
    let app = "leak-tx";
    let c = p.connect(app).await.unwrap();
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    c.batch_execute("begin; update kill_test set id = id where id = -1").await.unwrap();
    let (l, took) = wait_flagged(&p, app, "idle_in_transaction", Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(500), "not before the threshold");
    assert_eq!(l["suspects"][0]["backend_pid"], pid);
    assert_eq!(l["suspects"][0]["state"], "idle_in_transaction");
    // Reclaimed by the timeout: still in /leaks, with how it ended.
    assert!(eventually(Duration::from_secs(5), || c.is_closed()).await);
    let reclaimed = async {
        loop {
            if let Some(l) = leak_of(&p, app).await {
                if l["suspects"][0]["closed_reason"] == "idle_in_transaction_timeout" {
                    return l;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let l = tokio::time::timeout(Duration::from_secs(5), reclaimed).await.expect("kept as evidence");
    let s = &l["suspects"][0];
    assert_eq!(s["backend_pid"], pid);
    assert!(s["closed_seconds_ago"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["last_statement"], "begin; update kill_test set id = id where id = -?");
    assert_eq!(l["leak_suspected"], false, "nothing live any more");
    assert_eq!(l["timed_out_total"], 1);
    p.stop().await;
}

#[tokio::test]
async fn client_starved_at_its_cap_is_flagged_and_refusals_counted() {
    let mut config = leak_config(2.0, 30.0);
    config.rules = serde_norway::from_str("- match: { application_name: 'leak-cap' }\n  max_connections: 5").unwrap();
    let p = start_proxy(config).await;
    let app = "leak-cap";
    let mut leaked = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    // Its pool would grow to 20: it keeps asking, leaking each connection it gets.
    let flagged = loop {
        match p.connect(app).await {
            Ok(c) => {
                c.simple_query("select 'thumbnail', 7").await.unwrap();
                leaked.push(c);
            }
            Err(e) => {
                assert_eq!(e.code().unwrap().code(), "53300");
                refused += 1;
            }
        }
        if let Some(l) = leak_of(&p, app).await {
            if l["suspect_connections"] == 5 {
                break l;
            }
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never flagged");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(leaked.len(), 5);
    assert!(flagged["suspects"].as_array().unwrap().iter().all(|s| s["leak_reason"] == "idle_while_client_at_cap"));
    assert_eq!(flagged["refused_total"], refused);
    assert!(refused > 0);
    p.stop().await;
}

/// Healthy behaviours, each for 10 × the threshold: none may ever be flagged.
#[tokio::test]
async fn healthy_pools_are_never_flagged() {
    let threshold = Duration::from_secs(1);
    let p = start_proxy(leak_config(threshold.as_secs_f64(), 1.0)).await;
    let run_for = threshold * 10;
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();

    // 1. A pool that warms up one connection at a time, then sits idle.
    let cfg = p.pg_config("postgres", "healthy-warmup");
    tasks.push(tokio::spawn(async move {
        let mut pool = Vec::new();
        for _ in 0..5 {
            let c = connect(cfg.clone()).await.unwrap();
            c.simple_query("select 1").await.unwrap();
            pool.push(c);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pool
    }));
    // 2. A LIFO pool of 4 whose top connection serves traffic and whose oldest retires every 2.5 s,
    //    alternately close-then-open and open-then-close.
    let (cfg, s) = (p.pg_config("postgres", "healthy-lifo"), stop.clone());
    tasks.push(tokio::spawn(async move {
        let mut pool: Vec<Client> = Vec::new();
        for _ in 0..4 {
            pool.push(connect(cfg.clone()).await.unwrap());
        }
        let mut last_retire = Instant::now();
        let mut flip = false;
        while !s.is_cancelled() {
            pool.last().unwrap().simple_query("select 1").await.unwrap();
            if last_retire.elapsed() > Duration::from_millis(2500) {
                if flip {
                    drop(pool.remove(0));
                    pool.push(connect(cfg.clone()).await.unwrap());
                } else {
                    pool.push(connect(cfg.clone()).await.unwrap());
                    drop(pool.remove(0));
                }
                flip = !flip;
                last_retire = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        pool
    }));
    // 3. A LISTEN connection, idle by design, in a client that also grows.
    let (cfg, s) = (p.pg_config("postgres", "healthy-listen"), stop.clone());
    tasks.push(tokio::spawn(async move {
        let listener = connect(cfg.clone()).await.unwrap();
        listener.batch_execute("LISTEN jobs").await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut workers = Vec::new();
        for _ in 0..3 {
            workers.push(connect(cfg.clone()).await.unwrap());
        }
        while !s.is_cancelled() {
            for w in &workers {
                w.simple_query("select 1").await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        workers.push(listener);
        workers
    }));
    // 4. One connection used every 7 s.
    let (cfg, s) = (p.pg_config("postgres", "healthy-rare"), stop.clone());
    tasks.push(tokio::spawn(async move {
        let c = connect(cfg).await.unwrap();
        while !s.is_cancelled() {
            c.simple_query("select 1").await.unwrap();
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(7)) => {}
                _ = s.cancelled() => {}
            }
        }
        vec![c]
    }));
    let started = Instant::now();
    while started.elapsed() < run_for {
        let leaks = p.admin_json("/leaks").await;
        let flagged: Vec<&Value> = leaks["leaks"].as_array().unwrap().iter().map(|l| &l["client"]).collect();
        assert!(flagged.is_empty(), "healthy clients flagged: {flagged:?} at {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    stop.cancel();
    for t in tasks {
        drop(t.await.unwrap());
    }
    p.stop().await;
}

#[tokio::test]
async fn killed_client_counts_as_abandoned_not_as_a_leak() {
    let p = start_proxy(leak_config(1.0, 1.0)).await;
    let app = "leak-killed";
    let raw = crate::support::raw::Raw::connect(p.addr, "postgres", app).await;
    drop(raw); // gone without Terminate, as a SIGKILLed pod
    let abandoned = async {
        loop {
            let clients = p.admin_json("/clients").await;
            let c = clients["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == app).cloned();
            if let Some(c) = c.filter(|c| c["abandoned_total"] == 1) {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let c = tokio::time::timeout(Duration::from_secs(5), abandoned).await.expect("abandoned counted");
    assert_eq!(c["open"], 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(leak_of(&p, app).await.is_none());
    p.stop().await;
}

#[tokio::test]
async fn report_only_still_detects_leaks() {
    let mut config = leak_config(60.0, 1.0);
    config.enforce = false;
    config.defaults.max_connections = Limit(Some(1));
    config.defaults.idle_in_transaction_timeout = Timeout(Some(Duration::from_secs(1)));
    let p = start_proxy(config).await;
    let c = p.connect("leak-report-only").await.unwrap();
    c.batch_execute("begin").await.unwrap();
    let (l, _) = wait_flagged(&p, "leak-report-only", "idle_in_transaction", Duration::from_secs(5)).await;
    assert_eq!(l["would_close_total"], 1);
    assert!(!c.is_closed(), "report-only closes nothing");
    p.stop().await;
}

/// The README's own setting: a timeout equal to the leak threshold. The reclaimed connection is a suspect
/// at the moment it is closed, so its evidence is kept even though no detector tick saw it live.
#[tokio::test]
async fn timeout_equal_to_the_threshold_still_leaves_evidence() {
    let mut config = leak_config(60.0, 2.0);
    config.defaults.idle_in_transaction_timeout = Timeout(Some(Duration::from_secs(2)));
    let p = start_proxy(config).await;
    let c = p.connect("leak-same").await.unwrap();
    c.batch_execute("begin; select 'forgotten'").await.unwrap();
    assert!(eventually(Duration::from_secs(6), || c.is_closed()).await, "reclaimed");
    let evidence = async {
        loop {
            if let Some(l) = leak_of(&p, "leak-same").await {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let l = tokio::time::timeout(Duration::from_secs(3), evidence).await.expect("kept in /leaks");
    assert_eq!(l["suspects"][0]["closed_reason"], "idle_in_transaction_timeout");
    assert_eq!(l["suspects"][0]["leak_reason"], "idle_in_transaction");
    p.stop().await;
}
