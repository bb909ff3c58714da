//! Bounded transactions: `query_timeout` cancels the running query under the session's own key (the client
//! gets PostgreSQL's `57014`, the session lives) and `transaction_timeout` closes the session with FATAL
//! `25P04`, as PostgreSQL 17 does. Neither is escaped by `SET statement_timeout = 0`. Driven by libpq clients
//! (psql, psycopg) over the default config (TLS and SCRAM to the server) with only the timeouts set.

use crate::support::libpq::python;
use crate::support::pg::{pg, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::start_proxy;
use pgwarden::config::{Config, HostPort, Timeout};
use std::process::Command;
use std::time::{Duration, Instant};

fn config(query: Option<u64>, transaction: Option<u64>, enforce: bool) -> Config {
    let mut c = Config { upstream: HostPort { host: "127.0.0.1".into(), port: pg().port }, ..Config::default() };
    c.defaults.query_timeout = Timeout(query.map(Duration::from_millis));
    c.defaults.transaction_timeout = Timeout(transaction.map(Duration::from_millis));
    c.enforce = enforce;
    c
}

async fn output(mut cmd: Command) -> (String, String) {
    cmd.env_remove("PGPASSWORD").env_remove("PGSSLMODE");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    (String::from_utf8_lossy(&out.stdout).trim().to_string(), String::from_utf8_lossy(&out.stderr).trim().to_string())
}

/// psql runs each `-c` in the same session and goes on after an error (no ON_ERROR_STOP).
async fn psql(conninfo: &str, commands: &[&str]) -> (String, String) {
    let mut cmd = Command::new(pg().bindir.join("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "VERBOSITY=verbose", "-d", conninfo]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    output(cmd).await
}

async fn psycopg(conninfo: &str, script: &str) -> (String, String) {
    let mut cmd = Command::new(python());
    cmd.args(["-c", script, conninfo]);
    output(cmd).await
}

fn conninfo(port: u16, app: &str) -> String {
    format!(
        "host=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres application_name={app}"
    )
}

#[tokio::test]
async fn query_timeout_cancels_with_57014_and_the_session_lives() {
    let p = start_proxy(config(Some(700), None, true)).await;
    let port = p.addr.port();
    let started = Instant::now();
    let (out, err) = psql(
        &conninfo(port, "qt-psql"),
        &["set statement_timeout = 0", "select pg_sleep(20)", "select 'alive:' || pg_backend_pid()"],
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(10), "the sleep was cut short");
    assert!(err.contains("57014") && err.contains("canceling statement due to user request"), "psql: {err}");
    assert!(out.contains("alive:"), "psql: the session answered after the cancel: {out:?} / {err}");

    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as c:
    pid = c.execute("select pg_backend_pid()").fetchone()[0]
    c.execute("set statement_timeout = 0")
    try:
        c.execute("select pg_sleep(20)")
        print("not cancelled")
    except psycopg.Error as e:
        print("sqlstate", e.sqlstate)
    print("same session", c.execute("select pg_backend_pid()").fetchone()[0] == pid)
    # A quick query is never touched.
    print("quick", c.execute("select pg_sleep(0.2)::text").fetchone()[0] == "")
"#;
    let (out, err) = psycopg(&conninfo(port, "qt-psycopg"), script).await;
    assert_eq!(out, "sqlstate 57014\nsame session True\nquick True", "psycopg: {err}");
    let client = p.admin_json("/clients").await;
    let psy = client["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == "qt-psycopg").cloned();
    assert_eq!(psy.as_ref().map(|c| c["queries_canceled_total"].as_u64()), Some(Some(1)), "{client}");
    let metrics = crate::support::http::get(&p.admin.to_string(), "/metrics").await;
    assert!(
        metrics.contains(
            "pgwarden_client_queries_canceled_total{client=\"qt-psycopg/scram_user\",reason=\"query_timeout\"} 1"
        ),
        "{metrics}"
    );
    p.stop().await;
}

#[tokio::test]
async fn transaction_timeout_closes_with_25p04_even_after_set_statement_timeout_0() {
    let p = start_proxy(config(None, Some(1500), true)).await;
    let port = p.addr.port();
    // Idle inside the transaction: closed at 1.5 s, the transaction rolled back.
    let script = r#"
import sys, time, psycopg
with psycopg.connect(sys.argv[1]) as c:
    c.execute("set statement_timeout = 0")
    c.execute("set idle_in_transaction_session_timeout = 0")
    c.execute("create temp table t (x int)")
    c.execute("insert into t values (1)")
    time.sleep(3)
    try:
        c.execute("select 1")
        print("not closed")
    except psycopg.Error as e:
        print("sqlstate", e.sqlstate)
        print("closed", c.closed or c.broken)
"#;
    let (out, err) = psycopg(&conninfo(port, "tt-psycopg"), script).await;
    assert_eq!(out, "sqlstate 25P04\nclosed True", "psycopg: {err}");
    // A single long statement is a transaction too (as in PostgreSQL 17): it is cancelled and closed.
    let started = Instant::now();
    let (out, err) = psql(&conninfo(port, "tt-psql"), &["set statement_timeout = 0", "select pg_sleep(20)"]).await;
    assert!(started.elapsed() < Duration::from_secs(10), "the statement was cut short");
    assert!(err.contains("25P04") && err.contains("transaction_timeout"), "psql: {out} / {err}");
    let clients = p.admin_json("/clients").await;
    let closed =
        clients["clients"].as_array().unwrap().iter().map(|c| c["timed_out_total"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(closed, 2, "{clients}");
    let metrics = crate::support::http::get(&p.admin.to_string(), "/metrics").await;
    assert!(metrics.contains("reason=\"transaction_timeout\"} 1"), "{metrics}");
    // No backend is left behind.
    assert!(
        crate::support::proxy::eventually(Duration::from_secs(5), || pg().backends_of("tt-psql") == 0).await,
        "the cancelled statement's backend ended"
    );
    p.stop().await;
}

#[tokio::test]
async fn report_only_counts_both_and_acts_on_nothing() {
    let p = start_proxy(config(Some(300), Some(600), false)).await;
    let (out, err) =
        psql(&conninfo(p.addr.port(), "report-psql"), &["begin; select pg_sleep(1.2); commit", "select 'alive'"]).await;
    assert_eq!(out, "BEGIN\n\nCOMMIT\nalive", "nothing was cancelled or closed: {err}");
    let clients = p.admin_json("/clients").await;
    let c = clients["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == "report-psql").unwrap();
    assert_eq!((c["would_cancel_total"].as_u64(), c["would_close_total"].as_u64()), (Some(1), Some(1)), "{c}");
    assert_eq!((c["queries_canceled_total"].as_u64(), c["timed_out_total"].as_u64()), (Some(0), Some(0)), "{c}");
    p.stop().await;
}
