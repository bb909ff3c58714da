//! The incident pgwarden exists for, with real processes and real pool libraries over TCP on 127.0.0.1,
//! the default config but for the thresholds (5 s), no cap, SCRAM to a PostgreSQL with TLS on: a service
//! that leaks every connection it borrows is named within three thresholds of its third leaked connection,
//! and only its leaked connections are named; healthy pods with several worker processes sharing the key
//! are never flagged. Each test also runs the pool simulator (src/leak/pool_sim.rs) with the same pool
//! settings, leak rate, load shape and threshold, and asserts the same verdict: the calibration that keeps
//! the simulator, on which the detector is tuned, honest.

use crate::support::libpq::python;
use crate::support::pg::{pg, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::{start_proxy, TestProxy};
use pgwarden::config::{Config, HostPort, Timeout};
use pgwarden::leak::pool_sim::{simulate, Load, Order, PoolKind, Retire, Scenario, POOLS};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

const T: Duration = Duration::from_secs(5);

fn config() -> Config {
    let mut c = Config { upstream: HostPort { host: "127.0.0.1".into(), port: pg().port }, ..Config::default() };
    c.leak.idle_threshold = Timeout(Some(T));
    c.leak.idle_in_transaction_threshold = Timeout(Some(T));
    c
}

fn url(p: &TestProxy, app: &str) -> String {
    format!("postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{}/postgres?application_name={app}", p.addr.port())
}

/// node with npm `pg` (installed into .tools/node by scripts/setup.sh).
fn node(script: &str) -> tokio::process::Command {
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/node/node_modules");
    assert!(modules.join("pg").exists(), "npm pg is installed into .tools/node by scripts/setup.sh");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg("-e").arg(script).arg("--").env("NODE_PATH", modules);
    cmd
}

fn py(script: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg("-c").arg(script);
    cmd
}

/// What a run saw: when the program said it leaked its third connection, and every suspect `/leaks` listed
/// (sampled every 250 ms) with when it was first seen.
struct Run {
    third_leak: Option<Instant>,
    first_named: Option<Instant>,
    suspects: Vec<Value>,
}

/// Runs `cmd` (it prints `leak N` as it leaks its Nth connection) for `run_for`, watching `/leaks` for `app`;
/// the clock starts at the line `clock`.
async fn watch(p: &TestProxy, mut cmd: tokio::process::Command, app: &str, run_for: Duration, clock: &str) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).kill_on_drop(true).env_remove("PGSSLMODE");
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let clock = clock.to_string();
    // Read to the end: a program whose stdout is closed dies of a broken pipe at its next line.
    let third = tokio::spawn(async move {
        let mut at = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == clock && at.is_none() {
                at = Some(Instant::now());
            }
        }
        at
    });
    let (mut first_named, mut suspects) = (None, Vec::new());
    let end = Instant::now() + run_for;
    while Instant::now() < end {
        let leaks = p.admin_json("/leaks").await;
        for l in leaks["leaks"].as_array().unwrap().iter().filter(|l| l["application_name"] == app) {
            for s in l["suspects"].as_array().unwrap() {
                first_named.get_or_insert_with(Instant::now);
                suspects.push(s.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    child.kill().await.ok();
    let third_leak = third.await.unwrap();
    // Suspects are listed with the evidence they had when sampled.
    Run { third_leak, first_named, suspects }
}

/// The simulator, given the same pool, leak rate and threshold over TCP (one history for the key), reaches
/// the same verdict as the real run: named within 3T of the third leaked connection, only leaked ones.
fn simulator_agrees_on_the_leak(kind: PoolKind) {
    for load in [Load::Bursty, Load::Diurnal, Load::Skewed] {
        for seed in 1..=3 {
            let sc = Scenario::healthy(kind, 1, load, seed, false)
                .leaking_only(Duration::from_secs(1), Duration::from_secs(20));
            let r = simulate(sc);
            let third = r.first_leak.expect("leaked") + Duration::from_secs(2);
            let first = r.flagged.first().map(|f| f.at);
            assert!(first.is_some_and(|at| at <= third + 3 * T), "simulated {} {load:?}: {first:?}", kind.name);
            assert!(r.flagged.iter().all(|f| f.leaked), "simulated {} {load:?} named a healthy connection", kind.name);
        }
    }
}

/// psycopg_pool min 1, max 40, defaults otherwise (FIFO, max_idle 10 min, max_lifetime 1 h).
const PSYCOPG_1_40: PoolKind = PoolKind {
    name: "psycopg_pool 1..40",
    order: Order::Fifo,
    max: 40,
    min: 1,
    max_idle: 40,
    idle_timeout: Some(Duration::from_secs(600)),
    lifetime: Some(Duration::from_secs(3600)),
    retire: Retire::OpenThenClose,
};

fn sim_kind(name: &str) -> PoolKind {
    POOLS.into_iter().find(|k| k.name == name).unwrap()
}

/// Named within 3T of the third leaked connection, and every suspect a leaked connection with evidence.
fn assert_named_in_time(run: &Run, within: Duration) {
    let third = run.third_leak.expect("the program leaked its connections");
    let named = run.first_named.expect("the leaking service was never named");
    let first = run.suspects.first().map(|s| s["leak_evidence"].clone()).unwrap_or_default();
    eprintln!("named {:?} after the clock's leak: {first}", named.saturating_duration_since(third));
    assert!(
        named <= third + within,
        "named {:?} after the third leaked connection (allowed {within:?})",
        named.saturating_duration_since(third)
    );
    for s in &run.suspects {
        let statement = s["last_statement"].as_str().unwrap_or_default();
        assert!(statement.contains("leaked_marker"), "a connection that was not leaked was named: {s:#}");
        assert_eq!(s["leak_reason"], "idle_while_client_grew", "{s:#}");
        assert!(s["leak_evidence"].as_str().is_some_and(|e| e.contains("idle")), "{s:#}");
        assert!(s["leak_confidence"].is_string(), "{s:#}");
    }
}

/// Runs a program that leaks a connection a second (the proxy's URL for `app` appended to its arguments)
/// through a proxy of its own: named within 3T of its third leaked connection, only leaked connections named,
/// and the simulator, given the same pool, agrees.
async fn a_leaker_is_named(mut cmd: tokio::process::Command, app: &str, sim: PoolKind) {
    let p = start_proxy(config()).await;
    cmd.arg(url(&p, app));
    let run = watch(&p, cmd, app, Duration::from_secs(24), "leak 3").await;
    assert_named_in_time(&run, 3 * T);
    simulator_agrees_on_the_leak(sim);
    p.stop().await;
}

/// (a) A connection per request (`psycopg.connect()`), never closed: one a second.
#[tokio::test]
async fn connect_per_request_never_closed_is_named() {
    let script = r#"
import sys, time, psycopg
held = []
for i in range(1, 31):
    c = psycopg.connect(sys.argv[1], autocommit=True)
    c.execute("select 1 as leaked_marker")
    held.append(c)
    print(f"leak {i}", flush=True)
    time.sleep(1)
"#;
    a_leaker_is_named(py(script), "uploader", sim_kind("connect per request")).await;
}

/// (b) psycopg_pool's `getconn()` without `putconn()`: one a second.
#[tokio::test]
async fn psycopg_pool_getconn_never_returned_is_named() {
    let script = r#"
import sys, time, psycopg_pool
pool = psycopg_pool.ConnectionPool(sys.argv[1], min_size=1, max_size=40, open=True, kwargs={"autocommit": True})
pool.wait()
held = []
for i in range(1, 31):
    c = pool.getconn()
    c.execute("select 1 as leaked_marker")
    held.append(c)
    print(f"leak {i}", flush=True)
    time.sleep(1)
"#;
    a_leaker_is_named(py(script), "getconn", PSYCOPG_1_40).await;
}

/// (c) node-postgres' `pool.connect()` without `release()` (pool defaults: max 10, idleTimeoutMillis 10 s).
#[tokio::test]
async fn node_postgres_pool_connect_never_released_is_named() {
    let script = r#"
const { Pool } = require('pg');
const pool = new Pool({ connectionString: process.argv[1] });
const held = [];
let i = 0;
const tick = async () => {
  const c = await pool.connect();
  await c.query("select 1 as leaked_marker");
  held.push(c);
  i += 1;
  console.log(`leak ${i}`);
};
setInterval(() => { tick().catch(() => {}); }, 1000);
setTimeout(() => process.exit(0), 30000);
"#;
    a_leaker_is_named(node(script), "node-leaker", sim_kind("node-postgres")).await;
}

/// (d) A pool leaking one request in eight beside healthy traffic (four requests a second from two threads):
/// named within 6T of its first leak; healthy connections never named.
#[tokio::test]
async fn a_pool_leaking_one_request_in_eight_is_named() {
    let p = start_proxy(config()).await;
    let script = r#"
import sys, time, random, threading, psycopg_pool
random.seed(8)
pool = psycopg_pool.ConnectionPool(sys.argv[1], min_size=1, max_size=40, open=True, kwargs={"autocommit": True})
pool.wait()
held, n, lock = [], [0, 0], threading.Lock()
def worker():
    end = time.monotonic() + 40
    while time.monotonic() < end:
        with lock:
            n[0] += 1
            leak = n[0] % 8 == 0
        c = pool.getconn()
        if leak:
            c.execute("select 1 as leaked_marker")
            held.append(c)
            with lock:
                n[1] += 1
                print(f"leak {n[1]}", flush=True)
        else:
            c.execute("select pg_sleep(0.05)")
            pool.putconn(c)
        time.sleep(random.uniform(0.3, 0.7))
ts = [threading.Thread(target=worker) for _ in range(2)]
for t in ts: t.start()
for t in ts: t.join()
"#;
    let mut cmd = py(script);
    cmd.arg(url(&p, "one-in-eight"));
    let run = watch(&p, cmd, "one-in-eight", Duration::from_secs(36), "leak 1").await;
    assert_named_in_time(&run, 6 * T);
    p.stop().await;
}

/// (e) One leaking worker among 4 sharing a key (the same psycopg_pool, min 1 / max 40, and the same bursty
/// traffic in each, quiet spells of 1.5–2.5 T; the fourth also leaks a borrow a second from 5 s on): named
/// within 10T of its first leak over TCP, and only leaked connections are named.
#[tokio::test]
async fn a_leaking_worker_among_four_over_tcp_is_named() {
    a_leaking_worker_among_four(false, 10 * T).await;
}

/// (e) The same pod over the Unix socket, where the proxy tells the worker processes apart: within 3T.
#[tokio::test]
async fn a_leaking_worker_among_four_over_the_unix_socket_is_named() {
    a_leaking_worker_among_four(true, 3 * T).await;
}

async fn a_leaking_worker_among_four(unix: bool, within: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config();
    c.listen_unix = unix.then(|| dir.path().to_path_buf());
    let p = start_proxy(c).await;
    let conninfo = if unix {
        format!(
            "host={} port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres application_name=web",
            dir.path().display(),
            p.addr.port()
        )
    } else {
        url(&p, "web")
    };
    let run_for = within + Duration::from_secs(20);
    let secs = run_for.as_secs().to_string();
    let mut healthy = Vec::new();
    for i in 0..3 {
        let mut cmd = py(WORKER_PSYCOPG);
        cmd.arg(&conninfo).arg(&secs).arg((i + 1).to_string()).arg(MIN1_MAX40);
        healthy.push(cmd.kill_on_drop(true).spawn().unwrap());
    }
    let mut cmd = py(WORKER_PSYCOPG);
    cmd.arg(&conninfo).arg(&secs).arg("4").arg(MIN1_MAX40).arg("leak").arg("5");
    let run = watch(&p, cmd, "web", run_for, "leak 1").await;
    assert_named_in_time(&run, within);
    // The simulator, given the same pools, workers' bursts and quiet spells, leak and threshold: the same.
    for seed in 1..=6 {
        let sc = Scenario::healthy(PSYCOPG_1_40, 4, Load::Spells, seed, unix).leaking(Duration::from_secs(1), T);
        let r = simulate(Scenario { run_for: sc.leak_from + within + Duration::from_secs(10), ..sc });
        let first = r.flagged.first().map(|f| f.at);
        assert!(first.is_some_and(|at| at <= r.first_leak.unwrap() + within), "simulated seed {seed}: {first:?}");
        assert!(r.flagged.iter().all(|f| f.leaked), "simulated seed {seed} named a healthy connection");
    }
    for mut c in healthy {
        c.kill().await.ok();
    }
    p.stop().await;
}

/// A worker process of a pod: a psycopg_pool (argv[4]: its settings as JSON), bursts of 1–4 threads for 0.5–2 s, then quiet
/// for 1.5–2.5 T; with argv[5] == "leak" it also borrows a connection a second from argv[6] s on and never
/// gives it back (an upload handler that forgets to), printing `leak N`.
const WORKER_PSYCOPG: &str = r#"
import sys, json, time, random, threading, psycopg_pool
url, run_for = sys.argv[1], float(sys.argv[2])
random.seed(int(sys.argv[3]))
pool = psycopg_pool.ConnectionPool(url, **json.loads(sys.argv[4]), open=True, kwargs={"autocommit": True})
pool.wait()
start = time.monotonic()
end = start + run_for
held = []
def leaker(since):
    time.sleep(since)
    while time.monotonic() < end:
        c = pool.getconn()
        c.execute("select 1 as leaked_marker")
        held.append(c)
        print(f"leak {len(held)}", flush=True)
        time.sleep(1)
if len(sys.argv) > 5 and sys.argv[5] == "leak":
    threading.Thread(target=leaker, args=(float(sys.argv[6]),), daemon=True).start()
def burst(until):
    while time.monotonic() < until:
        with pool.connection() as c:
            c.execute("select pg_sleep(0.03)")
time.sleep(random.uniform(0, 2))
while time.monotonic() < end:
    until = time.monotonic() + random.uniform(0.5, 2.0)
    ts = [threading.Thread(target=burst, args=(until,)) for _ in range(random.randint(1, 4))]
    for t in ts: t.start()
    for t in ts: t.join()
    time.sleep(random.uniform(7.5, 12.5))
"#;

const MIN1_MAX6: &str = r#"{"min_size": 1, "max_size": 6}"#;
const MIN1_MAX40: &str = r#"{"min_size": 1, "max_size": 40}"#;

/// The same worker with node-postgres' pool (LIFO): argv[4] its idle timeout (ms, 0: never), argv[5] its
/// maximum lifetime (s, 0: none).
const HEALTHY_NODE: &str = r#"
const { Pool } = require('pg');
const [url, runFor, seed, idle, lifetime] = process.argv.slice(1);
let s = Number(seed);
const rnd = () => { s = (s * 16807) % 2147483647; return s / 2147483647; };
const pool = new Pool({ connectionString: url, max: 6, idleTimeoutMillis: Number(idle), maxLifetimeSeconds: Number(lifetime) });
const end = Date.now() + Number(runFor) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const burst = async (until) => { while (Date.now() < until) { await pool.query('select pg_sleep(0.03)'); } };
(async () => {
  await sleep(rnd() * 2000);
  while (Date.now() < end) {
    const until = Date.now() + 500 + rnd() * 1500;
    const n = 1 + Math.floor(rnd() * 4);
    await Promise.all(Array.from({ length: n }, () => burst(until)));
    await sleep(7500 + rnd() * 5000);
  }
  await pool.end();
})();
"#;

/// Healthy pods, all at once on their own keys for 60 s: 1, 2, 4 and 8 psycopg_pool worker processes and
/// 4 node-postgres ones sharing a key each over TCP, bursty with quiet spells of 1.5–2.5 T; node-postgres
/// pools closing idle connections after 1.5 s; a LISTEN connection; a cron-like client. Never flagged.
#[tokio::test]
async fn healthy_pods_sharing_a_key_over_tcp_are_never_flagged() {
    let p = start_proxy(config()).await;
    let run_for = Duration::from_secs(60);
    let secs = run_for.as_secs().to_string();
    let mut children = Vec::new();
    for n in [1usize, 2, 4, 8] {
        for i in 0..n {
            let mut cmd = py(WORKER_PSYCOPG);
            cmd.arg(url(&p, &format!("py-{n}"))).arg(&secs).arg((i + 1).to_string()).arg(MIN1_MAX6);
            children.push(cmd.kill_on_drop(true).spawn().unwrap());
        }
    }
    for (app, idle) in [("node-4", "10000"), ("node-fast-idle", "1500")] {
        for i in 0..4 {
            let mut cmd = node(HEALTHY_NODE);
            cmd.arg(url(&p, app)).arg(&secs).arg((i + 7).to_string()).arg(idle).arg("0");
            children.push(cmd.kill_on_drop(true).spawn().unwrap());
        }
    }
    let listen = r#"
import sys, time, psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
c.execute("LISTEN jobs")
time.sleep(float(sys.argv[2]))
"#;
    let mut cmd = py(listen);
    cmd.arg(url(&p, "listener")).arg(&secs);
    children.push(cmd.kill_on_drop(true).spawn().unwrap());
    let cron = r#"
import sys, time, psycopg
c = psycopg.connect(sys.argv[1], autocommit=True)
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    c.execute("select 1")
    time.sleep(12)
"#;
    let mut cmd = py(cron);
    cmd.arg(url(&p, "cron")).arg(&secs);
    children.push(cmd.kill_on_drop(true).spawn().unwrap());
    never_flagged(&p, run_for).await;
    // The simulator, given the same pools and pod sizes, over TCP: never flagged either.
    simulated_never_flagged(sim_kind("psycopg_pool 1..6 (issue 17's workers)"), &[1, 2, 4, 8]);
    simulated_never_flagged(node_pool(Some(10), None), &[4]);
    simulated_never_flagged(node_pool(Some(1), None), &[4]);
    let clients = p.admin_json("/clients").await;
    let py8 = clients["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == "py-8").unwrap();
    assert!(py8["opened_total"].as_u64().unwrap() >= 8, "{py8:#}");
    for mut c in children {
        c.kill().await.ok();
    }
    p.stop().await;
}

/// The node-postgres pool of [`HEALTHY_NODE`] (LIFO, max 6) with this idle timeout and maximum lifetime (s).
fn node_pool(idle: Option<u64>, lifetime: Option<u64>) -> PoolKind {
    PoolKind {
        name: "node-postgres (max 6)",
        max: 6,
        max_idle: 6,
        idle_timeout: idle.map(Duration::from_secs),
        lifetime: lifetime.map(Duration::from_secs),
        ..sim_kind("node-postgres")
    }
}

/// The simulator runs `kind` × each of `sizes` worker processes over TCP, under the real workers' bursts and
/// quiet spells and under the shared bursty load (4 minutes each, 3 seeds): never flagged.
fn simulated_never_flagged(kind: PoolKind, sizes: &[usize]) {
    for &n in sizes {
        for load in [Load::Spells, Load::Bursty] {
            for seed in 1..=3 {
                let r = simulate(Scenario::healthy(kind, n, load, seed, false));
                assert!(r.flagged.is_empty(), "simulated {} × {n} {load:?} seed {seed} flagged", kind.name);
            }
        }
    }
}

/// Watches `/leaks` for `run_for` (every 500 ms): nothing is ever listed.
async fn never_flagged(p: &TestProxy, run_for: Duration) {
    let end = Instant::now() + run_for;
    let mut flagged = Vec::new();
    while Instant::now() < end {
        let leaks = p.admin_json("/leaks").await;
        flagged.extend(leaks["leaks"].as_array().unwrap().iter().cloned());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(flagged.is_empty(), "healthy clients flagged: {:#}", flagged[0]);
}

/// Healthy pools of other shapes for 60 s, sharing a key each over TCP, bursty with quiet spells of 1.5–2.5 T:
/// node-postgres (LIFO, idle timeout 10 s) at 1, 2 and 8 workers; node-postgres with no idle timeout and a
/// 20 s maximum lifetime (LIFO with retirement: its deeper connections sit idle until retired); psycopg_pool
/// of a fixed size (4) with a 20 s maximum lifetime, 4 workers. Never flagged.
#[tokio::test]
async fn healthy_pools_of_other_shapes_over_tcp_are_never_flagged() {
    let p = start_proxy(config()).await;
    let run_for = Duration::from_secs(60);
    let secs = run_for.as_secs().to_string();
    let mut children = Vec::new();
    let mut seed = 20;
    for (app, n, idle, lifetime) in [
        ("node-1", 1, "10000", "0"),
        ("node-2", 2, "10000", "0"),
        ("node-8", 8, "10000", "0"),
        ("node-lifo-retire", 4, "0", "20"),
    ] {
        for _ in 0..n {
            seed += 1;
            let mut cmd = node(HEALTHY_NODE);
            cmd.arg(url(&p, app)).arg(&secs).arg(seed.to_string()).arg(idle).arg(lifetime);
            children.push(cmd.kill_on_drop(true).spawn().unwrap());
        }
    }
    for i in 0..4 {
        let mut cmd = py(WORKER_PSYCOPG);
        let fixed = r#"{"min_size": 4, "max_size": 4, "max_lifetime": 20}"#;
        cmd.arg(url(&p, "py-fixed-retire")).arg(&secs).arg((i + 40).to_string()).arg(fixed);
        children.push(cmd.kill_on_drop(true).spawn().unwrap());
    }
    never_flagged(&p, run_for).await;
    simulated_never_flagged(node_pool(Some(10), None), &[1, 2, 8]);
    simulated_never_flagged(node_pool(None, Some(20)), &[4]);
    let fixed_pool = PoolKind {
        name: "psycopg_pool 4..4, 20 s",
        min: 4,
        max: 4,
        max_idle: 4,
        lifetime: Some(Duration::from_secs(20)),
        ..PSYCOPG_1_40
    };
    simulated_never_flagged(fixed_pool, &[4]);
    let clients = p.admin_json("/clients").await;
    let fixed = clients["clients"].as_array().unwrap().iter().find(|c| c["application_name"] == "py-fixed-retire");
    // The fixed pools retired connections at their lifetime (and opened their replacements).
    assert!(fixed.is_some_and(|c| c["opened_total"].as_u64().unwrap() >= 20), "{fixed:#?}");
    for mut c in children {
        c.kill().await.ok();
    }
    p.stop().await;
}
