//! Propagation at scale (issue 28, acceptance 2): 1,000 simulated sidecars long-polling one real injector
//! (`pgwarden inject`, `PGWARDEN_BIN` when set, e.g. the release build) for their live policy over the
//! real sidecar channel (one kept-alive TLS connection each), against the fake API server. A change of the
//! overrides ConfigMap is timed until every sidecar holds the new policy; the injector's CPU (utime + stime
//! from /proc) and memory (VmRSS, VmHWM) are read around it. Run by hand, BENCHMARKS.md has the figures:
//!
//!   cargo build --release --bin pgwarden
//!   PGWARDEN_BIN=$PWD/target/release/pgwarden cargo test --test it -- --ignored --nocapture control_scale

use crate::budget::Killed;
use crate::inject::write_cert;
use crate::lifecycle::listening_or_exited;
use crate::support::fake_kube::{pod, FakeKube};
use crate::support::pg::free_port;
use pgwarden::k8s::control::channel::{Channel, Target};
use pgwarden::livepolicy::LivePolicy;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIDECARS: usize = 1000;

/// Each tag a simulated sidecar received, and when.
type Seen = Arc<Mutex<Vec<(String, Instant)>>>;

fn injector_bin() -> Command {
    match std::env::var_os("PGWARDEN_BIN") {
        Some(p) if !p.is_empty() => Command::new(p),
        _ => Command::new(env!("CARGO_BIN_EXE_pgwarden")),
    }
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(") ").unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// (VmRSS, VmHWM) of `pid`, in MiB.
fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| {
        status.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
    };
    (kib("VmRSS:").unwrap_or(0.0) / 1024.0, kib("VmHWM:").unwrap_or(0.0) / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// One simulated sidecar: asks as the real control client does (at once, then long polls with `known`)
/// and records when each tag first arrived.
async fn sidecar(target: Target, token: String, pod: String, seen: Seen) {
    let mut channel = Channel::new(target);
    let mut known: Option<String> = None;
    loop {
        let mut path = format!("/v1/policy?namespace=shop&pod={pod}");
        if let Some(k) = &known {
            path.push_str(&format!("&known={k}&wait=20"));
        }
        match channel.get(&path, &token, Duration::from_secs(30), 256 * 1024).await {
            Ok((status, body)) if status.is_success() => {
                let p: LivePolicy = serde_json::from_slice(&body).unwrap();
                let tag = p.tag();
                if known.as_deref() != Some(tag.as_str()) {
                    seen.lock().unwrap().push((tag.clone(), Instant::now()));
                    known = Some(tag);
                }
            }
            // 503 while the reviews of 1,000 new tokens run at their rate: ask again, as sidecars do.
            _ => tokio::time::sleep(Duration::from_millis(500 + rand_ms())).await,
        }
    }
}

fn rand_ms() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish() % 500
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark (about a minute): run by hand, see BENCHMARKS.md"]
async fn control_scale_propagation_to_1000_sidecars() {
    let kube = FakeKube::start().await;
    for i in 0..SIDECARS {
        kube.add_pod(pod(
            "shop",
            &format!("w-5f7c9d8b4-{i}"),
            "w",
            &format!("10.1.{}.{}", i / 250, i % 250),
            "2026-12-01T10:00:00Z",
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path(), "pgwarden scale test CA");
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    let (injector, port) = start(dir.path(), &kube).await;
    let pid = injector.0.id();
    let tls = pgwarden::tls::control_client_config(&pgwarden::config::control::ControlClient {
        ca_pem: Some(ca.clone()),
        ..Default::default()
    })
    .unwrap();
    let seen: Vec<Seen> = (0..SIDECARS).map(|_| Arc::default()).collect();
    let started = Instant::now();
    let (cpu0, _) = (cpu_seconds(pid), ());
    let mut tasks = Vec::new();
    for (i, s) in seen.iter().enumerate() {
        let name = format!("w-5f7c9d8b4-{i}");
        let token = kube.jwt("shop", &name, "pgwarden-coordinator");
        let target = Target::new(&format!("https://localhost:{port}"), "url", tls.clone()).unwrap();
        tasks.push(tokio::spawn(sidecar(target, token, name, s.clone())));
    }
    // Every sidecar holds its first policy (new tokens are reviewed at 20 a second after a burst of 100).
    let all_have = |n: usize| seen.iter().all(|s| s.lock().unwrap().len() >= n);
    while !all_have(1) {
        assert!(started.elapsed() < Duration::from_secs(180), "not every sidecar got its policy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cold = started.elapsed();
    let cpu_cold = cpu_seconds(pid) - cpu0;
    // Idle: 30 s of long polls that answer nothing new.
    let cpu_idle0 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let cpu_idle = cpu_seconds(pid) - cpu_idle0;
    let (rss_idle, _) = memory_mib(pid);
    // Three changes of the workload's overrides, each timed until every sidecar holds it.
    let mut all: Vec<Duration> = Vec::new();
    let mut lasts = Vec::new();
    let cpu_change0 = cpu_seconds(pid);
    for (round, cap) in [5, 7, 9].into_iter().enumerate() {
        let changed = Instant::now();
        kube.put_configmap(
            "pgwarden-system",
            "pgwarden-overrides",
            json!({"shop.w": format!("cap: {{connections: {cap}}}")}),
        );
        while !all_have(round + 2) {
            assert!(changed.elapsed() < Duration::from_secs(60), "not every sidecar got change {round}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut took: Vec<Duration> =
            seen.iter().map(|s| s.lock().unwrap()[round + 1].1.saturating_duration_since(changed)).collect();
        took.sort();
        lasts.push(*took.last().unwrap());
        all.extend(took);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let cpu_change = cpu_seconds(pid) - cpu_change0;
    let (rss, hwm) = memory_mib(pid);
    all.sort();
    println!(
        "control plane propagation, {SIDECARS} simulated sidecars, one injector ({})",
        injector_bin().get_program().to_string_lossy()
    );
    println!("  cold start (1,000 new tokens reviewed at 20/s after a burst of 100): every sidecar answered in {cold:.1?}, injector CPU {cpu_cold:.2} s");
    println!(
        "  idle 30 s of long polls: injector CPU {cpu_idle:.3} s ({:.1} ms/s), RSS {rss_idle:.1} MiB",
        cpu_idle * 1000.0 / 30.0
    );
    println!(
        "  change -> sidecar holds it (3 changes x {SIDECARS}): p50 {:.0?}, p99 {:.0?}, max {:.0?}; last sidecar per change {:?}",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().unwrap(),
        lasts
    );
    println!("  injector CPU for the 3 changes (and 9 s around them): {cpu_change:.2} s; RSS {rss:.1} MiB, peak {hwm:.1} MiB");
    for t in tasks {
        t.abort();
    }
    assert!(percentile(&all, 0.99) < Duration::from_secs(5), "p99 within 5 s");
    drop(injector);
}

async fn start(dir: &Path, kube: &FakeKube) -> (Killed, u16) {
    for _ in 0..5 {
        let port = free_port();
        let config = dir.join("injector.yaml");
        std::fs::write(
            &config,
            format!(
                "control:\n  enabled: true\n  url: https://localhost:{port}\n  caFile: {}\n  overridesNamespace: pgwarden-system\n",
                dir.join("ca.crt").display()
            ),
        )
        .unwrap();
        let child = injector_bin()
            .args(["inject", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.join("tls.key"))
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", kube.kubeconfig(dir, "shop"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut k = Killed(child);
        if listening_or_exited(&mut k.0, port).await {
            return (k, port);
        }
    }
    panic!("the injector never listened");
}
