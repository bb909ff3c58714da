//! A pod's worker processes sharing one client key (the same `application_name`), each with its own
//! psycopg_pool (min 1, max 6), under bursty load with quiet spells longer than the idle threshold.
//! Over the Unix socket the proxy tells the processes apart and judges each pool on its own: healthy
//! workers are never flagged; one worker leaking a borrowed connection every half threshold is flagged,
//! and the evidence lists only its leaked connections. Over TCP the wire proves several pools and their
//! growth is not judged: healthy workers are never flagged there either, and nothing healthy is named.
//! A proxy in another PID namespace (a pod without `shareProcessNamespace`) still tells them apart.

use crate::lifecycle::{bin, listening_or_exited};
use crate::support::libpq::python;
use crate::support::pg::{free_port, pg};
use crate::support::{start_proxy, test_config, TestProxy};
use pgwarden::config::Timeout;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const THRESHOLD: Duration = Duration::from_secs(2);

/// One worker: a pool (min 1, max 6, idle connections above the minimum closed after 4 s); bursts of
/// requests from 1 to 4 threads for 0.5 to 2 s, then a quiet spell of 2.2 to 3.6 s (somewhat longer than
/// the threshold), each worker on its own random schedule, for argv[2] seconds; argv[3] == "leak": also
/// borrows a connection every second and never gives it back (still referenced, as a leak is).
const WORKER: &str = r#"
import os, random, sys, time, threading, psycopg_pool
conninfo, run_for, leak = sys.argv[1], float(sys.argv[2]), sys.argv[3] == "leak"
random.seed(int(sys.argv[4]))
pool = psycopg_pool.ConnectionPool(conninfo, min_size=1, max_size=6, max_idle=4, open=True, kwargs={"autocommit": True})
pool.wait()
end = time.monotonic() + run_for
held = []
def leaker():
    while time.monotonic() < end - 1:
        try:
            c = pool.getconn(timeout=0.5)
        except psycopg_pool.PoolTimeout:
            time.sleep(1); continue
        c.execute("select 1 as leaked_marker")
        held.append(c)
        time.sleep(1)
if leak:
    threading.Thread(target=leaker, daemon=True).start()
def burst(until):
    while time.monotonic() < until:
        try:
            with pool.connection(timeout=0.5) as c:
                c.execute("select pg_sleep(0.03)")
        except psycopg_pool.PoolTimeout:
            pass
time.sleep(random.uniform(0, 2))
while time.monotonic() < end:
    until = time.monotonic() + random.uniform(0.5, 2.0)
    ts = [threading.Thread(target=burst, args=(until,)) for _ in range(random.randint(1, 4))]
    for t in ts: t.start()
    for t in ts: t.join()
    time.sleep(random.uniform(2.2, 3.6))
print("done", flush=True)
"#;

/// Runs `workers` worker processes against `conninfo` for `run_for`, the last one leaking if `leak`;
/// returns every `/leaks` suspect seen during the run (sampled every 200 ms), the leaking worker's pid and
/// the last `/clients` entry of the key.
async fn run_pod(
    admin: &str,
    conninfo: &str,
    workers: usize,
    run_for: Duration,
    leak: bool,
) -> (Vec<Value>, u32, Value) {
    let mut children = Vec::new();
    for i in 0..workers {
        let mut cmd = tokio::process::Command::new(python());
        let role = if leak && i == workers - 1 { "leak" } else { "healthy" };
        cmd.args(["-c", WORKER, conninfo, &run_for.as_secs_f64().to_string(), role, &(i + 1).to_string()]);
        cmd.stdout(std::process::Stdio::null()).kill_on_drop(true);
        children.push(cmd.spawn().unwrap());
    }
    let leaker = children.last().and_then(|c| c.id()).unwrap();
    let mut seen = Vec::new();
    let mut client = Value::Null;
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        let leaks = admin_json(admin, "/leaks").await;
        for l in leaks["leaks"].as_array().unwrap() {
            seen.extend(l["suspects"].as_array().unwrap().iter().cloned());
        }
        let clients = admin_json(admin, "/clients").await;
        if let Some(c) = clients["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == "web") {
            client = c.clone();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for mut c in children {
        let status = c.wait().await.unwrap();
        assert!(status.success(), "a worker failed: {status}");
    }
    (seen, leaker, client)
}

async fn admin_json(admin: &str, path: &str) -> Value {
    crate::support::http::json(admin, path).await
}

fn config(unix: Option<&Path>) -> pgwarden::config::Config {
    let mut c = test_config();
    c.leak.idle_threshold = Timeout(Some(THRESHOLD));
    c.leak.idle_in_transaction_threshold = Timeout(Some(THRESHOLD));
    c.listen_unix = unix.map(Path::to_path_buf);
    c
}

fn tcp(p: &TestProxy) -> String {
    format!("host=127.0.0.1 port={} user=postgres dbname=postgres application_name=web", p.addr.port())
}

fn unix(dir: &Path, port: u16) -> String {
    format!("host={} port={port} user=postgres dbname=postgres application_name=web", dir.display())
}

/// The issue's case: over TCP, today's rule flagged these healthy workers in 14 of 20 samples.
#[tokio::test]
async fn healthy_workers_over_tcp_are_never_flagged_and_are_proven_several_pools() {
    let p = start_proxy(config(None)).await;
    let (seen, _, client) = run_pod(&p.admin.to_string(), &tcp(&p), 4, Duration::from_secs(40), false).await;
    assert!(seen.is_empty(), "healthy workers flagged: {:#?}", &seen[..seen.len().min(3)]);
    assert_eq!(client["leak_detection"]["processes"], 0, "{client:#}");
    assert_eq!(client["leak_detection"]["several_pools"], true, "{client:#}");
    p.stop().await;
}

#[tokio::test]
async fn healthy_workers_over_the_unix_socket_are_never_flagged_each_judged_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let p = start_proxy(config(Some(dir.path()))).await;
    let conninfo = unix(dir.path(), p.addr.port());
    let (seen, _, client) = run_pod(&p.admin.to_string(), &conninfo, 4, Duration::from_secs(30), false).await;
    assert!(seen.is_empty(), "healthy workers flagged: {:#?}", &seen[..seen.len().min(3)]);
    assert_eq!(client["leak_detection"]["processes"], 4, "{client:#}");
    assert_eq!(client["leak_detection"]["processes_with_several_pools"], 0, "{client:#}");
    p.stop().await;
}

#[tokio::test]
async fn one_leaking_worker_over_the_unix_socket_is_flagged_with_only_its_leaked_connections() {
    let dir = tempfile::tempdir().unwrap();
    let p = start_proxy(config(Some(dir.path()))).await;
    let conninfo = unix(dir.path(), p.addr.port());
    let (seen, leaker, _) = run_pod(&p.admin.to_string(), &conninfo, 4, Duration::from_secs(16), true).await;
    assert!(!seen.is_empty(), "the leaking worker was never flagged");
    for s in &seen {
        let statement = s["last_statement"].as_str().unwrap_or_default();
        assert!(statement.contains("leaked_marker"), "a healthy worker's connection was named: {s:#}");
        assert_eq!(s["peer_pid"], leaker, "{s:#}");
        assert_eq!(s["leak_reason"], "idle_while_client_grew", "{s:#}");
    }
    p.stop().await;
}

/// Over TCP a leaking worker among healthy ones may go unflagged once the wire proves several pools
/// (README says so and what to do), but a healthy worker's connection is never named.
#[tokio::test]
async fn one_leaking_worker_over_tcp_never_gets_a_healthy_connection_named() {
    let p = start_proxy(config(None)).await;
    let (seen, _, _) = run_pod(&p.admin.to_string(), &tcp(&p), 4, Duration::from_secs(16), true).await;
    for s in &seen {
        let statement = s["last_statement"].as_str().unwrap_or_default();
        assert!(statement.contains("leaked_marker"), "a healthy worker's connection was named: {s:#}");
    }
    p.stop().await;
}

/// pgwarden in a PID namespace of its own, as a sidecar is without `shareProcessNamespace`: the workers'
/// pids are not visible to it (SO_PEERCRED reads 0), yet each is told apart by its pidfd (Linux 6.9+).
#[tokio::test]
async fn a_proxy_in_another_pid_namespace_still_tells_the_worker_processes_apart() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: unshare --pid needs root");
        return;
    }
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut v = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    if (v.next().unwrap_or(0), v.next().unwrap_or(0)) < (6, 9) {
        eprintln!("skipped: kernel {release} has no pidfs (pidfd inodes name nothing before 6.9)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let yaml = format!("upstream_tls: disable\nlisten_unix: {}\n", dir.path().display());
    let exe = bin().get_program().to_owned();
    let mut child = std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--kill-child"])
        .arg(exe)
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("127.0.0.1:{}", pg().port)])
        .env("PGWARDEN_CONFIG_YAML", yaml)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("unshare (util-linux)");
    assert!(listening_or_exited(&mut child, port).await, "pgwarden under unshare exited");
    let conninfo = unix(dir.path(), port);
    let script = "import sys, time, psycopg\nc = psycopg.connect(sys.argv[1])\nc.execute('select 1')\nd = psycopg.connect(sys.argv[1])\nd.execute('select 1')\nprint('up', flush=True)\ntime.sleep(4)\n";
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut cmd = tokio::process::Command::new(python());
        cmd.args(["-c", script, &conninfo]).stdout(std::process::Stdio::piped()).kill_on_drop(true);
        workers.push(cmd.spawn().unwrap());
    }
    let admin = format!("127.0.0.1:{admin}");
    let until = Instant::now() + Duration::from_secs(10);
    let client = loop {
        let clients = admin_json(&admin, "/clients").await;
        let c = clients["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == "web").cloned();
        if let Some(c) = c.filter(|c| c["open"] == 6 && c["leak_detection"]["processes"] == 3) {
            break c;
        }
        assert!(Instant::now() < until, "three processes with two connections each, never told apart: {clients:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let conns = admin_json(&admin, "/connections").await;
    for c in conns["connections"].as_array().unwrap() {
        assert!(c["peer_pid"].as_i64().unwrap_or(0) == 0, "a pid visible across namespaces? {c:#}");
    }
    assert_eq!(client["leak_detection"]["several_pools"], false, "{client:#}");
    for mut w in workers {
        let _ = w.kill().await;
    }
    // unshare --fork ignores SIGTERM while it waits; --kill-child takes pgwarden with it.
    let _ = child.kill();
    let _ = child.wait();
}
