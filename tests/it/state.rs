//! The registry's view of a session matches what the session is doing; vanished clients leave nothing behind.

use crate::support::pg::pg;
use crate::support::proxy::eventually;
use crate::support::raw::{self, message, Raw};
use crate::support::{start_proxy, test_config};
use futures_util::SinkExt;
use pgwarden::vocab::ConnState;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test]
async fn states_pid_and_last_statement() {
    let p = start_proxy(test_config()).await;
    let app = "state-basic";
    let c = p.connect(app).await.unwrap();
    let conn = p.wait_state(app, ConnState::Idle).await;
    let pid: i32 = c.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
    assert_eq!(conn.backend_pid(), Some(pid));

    // Active during a running query.
    let sleeper = {
        let c2 = p.connect("state-sleeper").await.unwrap();
        tokio::spawn(async move { c2.simple_query("select pg_sleep(1)").await.map(|_| ()) })
    };
    p.wait_state("state-sleeper", ConnState::Active).await;
    sleeper.await.unwrap().unwrap();

    c.batch_execute("begin").await.unwrap();
    p.wait_state(app, ConnState::IdleInTransaction).await;
    assert!(c.batch_execute("select 1/0").await.is_err());
    p.wait_state(app, ConnState::IdleInFailedTransaction).await;
    c.batch_execute("rollback").await.unwrap();
    p.wait_state(app, ConnState::Idle).await;

    // Active during COPY (no ReadyForQuery until it ends).
    c.batch_execute("create temp table st (x int)").await.unwrap();
    let sink = c.copy_in("copy st from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(conn.state(), ConnState::Active, "COPY in progress");
    sink.finish().await.unwrap();
    p.wait_state(app, ConnState::Idle).await;

    // last_statement of an executed cached prepared statement is its text.
    let stmt = c.prepare("select $1::int + 100 as cached").await.unwrap();
    c.batch_execute("select 'other statement'").await.unwrap();
    c.query_one(&stmt, &[&1i32]).await.unwrap();
    assert_eq!(conn.last_statement(), "select $1::int + 100 as cached");
    assert!(conn.queries.load(std::sync::atomic::Ordering::Relaxed) >= 5);
    assert!(conn.bytes_in.load(std::sync::atomic::Ordering::Relaxed) > 0);
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn unanswered_pipelined_batch_is_active() {
    let p = start_proxy(test_config()).await;
    let app = "state-pipeline";
    let mut raw = Raw::connect(p.addr, "postgres", app).await;
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.extend(message(b'P', b"\0select pg_sleep(0.3)\0\0\0"));
        batch.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
        batch.extend(message(b'E', b"\0\0\0\0\0"));
        batch.extend(message(b'S', b""));
    }
    raw.send(&batch).await;
    let conn = p.wait_state(app, ConnState::Active).await;
    // After the first answer two Syncs are still unanswered: still active.
    raw.until_ready().await;
    assert_eq!(conn.state(), ConnState::Active);
    raw.until_ready().await;
    raw.until_ready().await;
    p.wait_state(app, ConnState::Idle).await;
    p.stop().await;
}

/// psql reading SQL from a pipe, through the proxy.
fn psql_through(port: u16, app: &str) -> std::process::Child {
    Command::new(pg().bindir.join("psql"))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
        .env("PGAPPNAME", app)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn killed_client_in_transaction_leaves_no_backend_and_no_commit() {
    let p = start_proxy(test_config()).await;
    let app = "state-killed-tx";
    let mut psql = psql_through(p.addr.port(), app);
    psql.stdin.as_mut().unwrap().write_all(b"BEGIN;\nINSERT INTO kill_test VALUES (4242);\n").unwrap();
    psql.stdin.as_mut().unwrap().flush().unwrap();
    let conn = p.wait_state(app, ConnState::IdleInTransaction).await;
    let pid = conn.backend_pid().unwrap();
    assert!(pg().backend_exists(pid));
    psql.kill().unwrap();
    psql.wait().unwrap();
    let gone = eventually(Duration::from_secs(1), || !pg().backend_exists(pid)).await;
    assert!(gone, "backend {pid} still there 1 s after its client was killed");
    assert_eq!(pg().psql("SELECT count(*) FROM kill_test WHERE id = 4242"), "0", "nothing committed");
    assert!(eventually(Duration::from_secs(2), || p.conns_of(app).is_empty()).await, "registry entry released");
    p.stop().await;
}

#[tokio::test]
async fn killed_client_during_a_query_cancels_it() {
    let p = start_proxy(test_config()).await;
    let app = "state-killed-sleep";
    let mut psql = psql_through(p.addr.port(), app);
    psql.stdin.as_mut().unwrap().write_all(b"SELECT pg_sleep(30);\n").unwrap();
    psql.stdin.as_mut().unwrap().flush().unwrap();
    let conn = p.wait_state(app, ConnState::Active).await;
    let pid = conn.backend_pid().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    psql.kill().unwrap();
    psql.wait().unwrap();
    let gone = eventually(Duration::from_secs(2), || !pg().backend_exists(pid)).await;
    assert!(gone, "backend {pid} still running 2 s after its client was killed");
    p.stop().await;
}

#[tokio::test]
async fn raw_client_vanishing_mid_message_releases_everything() {
    let p = start_proxy(test_config()).await;
    let app = "state-midmessage";
    let mut raw = Raw::connect(p.addr, "postgres", app).await;
    let pid = raw.pid;
    // Half a Query message, then gone.
    let q = raw::query("select 1");
    raw.send(&q[..4]).await;
    drop(raw);
    assert!(eventually(Duration::from_secs(2), || p.conns_of(app).is_empty()).await);
    assert!(eventually(Duration::from_secs(2), || !pg().backend_exists(pid)).await);
    p.stop().await;
}
