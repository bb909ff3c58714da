//! The real binary: SIGTERM drains (idle closed at once, transactions may finish), then exit 0.

use crate::support::pg::{free_port, pg};
use crate::support::proxy::connect;
use crate::support::raw::{self, Raw};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pgwarden"))
}

/// Runs the real binary as a proxy in front of the test PostgreSQL with `yaml` as its config and `env`;
/// returns it once it listens, with its listen and admin ports.
pub async fn spawn_proxy_binary(yaml: &str, env: &[(&str, &str)], stderr: Stdio) -> (std::process::Child, u16, u16) {
    spawn_proxy_binary_to(pg().port, yaml, env, stderr).await
}

/// [`spawn_proxy_binary`] in front of the PostgreSQL on `upstream_port`. A free port can be taken again
/// before the proxy binds it (ports from `127.0.0.1:0` are the ephemeral ones the suite's own client
/// connections use too): a proxy that exits before it listens is started again on other ports.
pub async fn spawn_proxy_binary_to(
    upstream_port: u16,
    yaml: &str,
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (std::process::Child, u16, u16) {
    let mut stderr = Some(stderr);
    for _ in 0..5 {
        let (port, admin) = (free_port(), free_port());
        let mut child = bin()
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("127.0.0.1:{upstream_port}")])
            .env("PGWARDEN_CONFIG_YAML", yaml)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr.take().unwrap_or_else(Stdio::piped))
            .spawn()
            .unwrap();
        if listening_or_exited(&mut child, port).await {
            return (child, port, admin);
        }
        eprintln!("pgwarden exited before listening on {port} (a port taken meanwhile?); starting it again");
    }
    panic!("pgwarden never listened in 5 attempts");
}

/// Waits until `port` accepts (true) or `child` exits (false); panics after 10 s.
pub async fn listening_or_exited(child: &mut std::process::Child, port: u16) -> bool {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        assert!(Instant::now() < until, "process never listened on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn wait_listening(port: u16) {
    let until = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < until, "proxy never listened on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sigterm_drains_then_exits_zero() {
    let (mut child, port, admin) =
        spawn_proxy_binary("upstream_tls: disable\nshutdown_grace: 10s\n", &[], Stdio::null()).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut idle = Raw::connect(addr, "postgres", "life-idle").await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("postgres").dbname("postgres").application_name("life-tx");
    let tx = connect(cfg).await.unwrap();
    tx.batch_execute("create table if not exists life_t (x int); begin; insert into life_t values (1)").await.unwrap();

    // SAFETY: kill sends a signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let (tag, body) =
        tokio::time::timeout(Duration::from_secs(2), raw::read_message(&mut idle.stream)).await.unwrap().unwrap();
    assert_eq!((tag, raw::error_code(&body).as_str()), (b'E', "57P01"), "the idle session is closed at once");
    assert!(started.elapsed() < Duration::from_secs(1));

    // Draining: readiness fails (liveness does not), new clients are not accepted.
    let url = format!("http://127.0.0.1:{admin}");
    let ready = reqwest_status(&url, "/readyz").await;
    assert_eq!(ready, 503, "/readyz fails while draining");
    assert_eq!(reqwest_status(&url, "/healthz").await, 200);
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err(), "listener closed");

    // The transaction may still finish, and its work is committed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tx.batch_execute("insert into life_t values (2); commit").await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "exited once the last session finished");
    assert!(tx.is_closed() || tx.batch_execute("select 1").await.is_err());
    assert_eq!(pg().psql("select count(*) from life_t"), "2");
}

#[tokio::test]
async fn sigterm_grace_expiry_closes_open_transactions_with_57p01() {
    let (mut child, port, _) =
        spawn_proxy_binary("upstream_tls: disable\nshutdown_grace: 1s\n", &[], Stdio::null()).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut stuck = Raw::connect(addr, "postgres", "life-stuck").await;
    stuck.send(&raw::query("begin")).await;
    assert_eq!(stuck.until_ready().await.1, b'T');
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let (tag, body) =
        tokio::time::timeout(Duration::from_secs(5), raw::read_message(&mut stuck.stream)).await.unwrap().unwrap();
    assert_eq!((tag, raw::error_code(&body).as_str()), (b'E', "57P01"));
    assert!(started.elapsed() >= Duration::from_millis(900), "waited for the grace period");
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

/// The status code of a GET (a raw HTTP/1.1 request).
async fn reqwest_status(base: &str, path: &str) -> u16 {
    crate::support::http::status(base.strip_prefix("http://").unwrap(), path).await
}

/// Shutdown grace expiring while rows stream: the client reads whole messages up to a boundary, then the
/// 57P01 ErrorResponse, never a torn message.
#[tokio::test]
async fn forced_close_mid_stream_ends_at_a_message_boundary() {
    let mut config = crate::support::test_config();
    config.shutdown_grace = pgwarden::config::Timeout(Some(Duration::from_millis(500)));
    let p = crate::support::start_proxy(config).await;
    let mut c = Raw::connect(p.addr, "postgres", "life-stream").await;
    c.send(&raw::query("select pg_sleep(0.0005), repeat('x', 3000) from generate_series(1, 200000)")).await;
    // Let rows flow, then shut down; the grace runs out mid-stream.
    let (tag, _) = raw::read_message(&mut c.stream).await.unwrap();
    assert_eq!(tag, b'T', "RowDescription");
    p.shutdown.cancel();
    let mut rows = 0;
    let mut codes = Vec::new();
    let read_all = async {
        while let Some((tag, body)) = raw::read_message(&mut c.stream).await {
            match tag {
                b'D' => rows += 1,
                b'E' => codes.push(raw::error_code(&body)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read_all).await.expect("closed in time");
    assert!(rows > 0, "rows were streaming");
    assert_eq!(codes.last().map(String::as_str), Some("57P01"), "ends with 57P01 after whole messages: {codes:?}");
    let _ = tokio::time::timeout(Duration::from_secs(10), p.task).await;
}

#[tokio::test]
async fn a_background_task_that_panics_drains_the_proxy_and_fails_run() {
    use pgwarden::server::Server;
    use pgwarden::state::{Settings, State};
    let state = State::new(Settings::new(crate::support::test_config()).unwrap(), Default::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = Server::new(state.clone());
    server.supervise("doomed", async move {
        let _ = rx.await;
        panic!("the task broke");
    });
    let run = tokio::spawn(server.run(listener, admin, tokio_util::sync::CancellationToken::new()));
    // Serving meanwhile; an open session is drained (idle: closed at once with 57P01).
    let mut idle = Raw::connect(addr, "postgres", "lifecycle-supervised").await;
    tx.send(()).unwrap();
    let failed = tokio::time::timeout(Duration::from_secs(10), run).await.expect("run returns").unwrap();
    let failed = failed.expect_err("a failed task fails run");
    assert_eq!(failed.task, "doomed");
    assert!(failed.how.contains("panicked: the task broke"), "{}", failed.how);
    let (tag, body) = raw::read_message(&mut idle.stream).await.expect("an ErrorResponse before the close");
    assert_eq!((tag, raw::error_code(&body).as_str()), (b'E', "57P01"));
    assert!(state.draining());
    assert!(state.registry.is_empty());
}
