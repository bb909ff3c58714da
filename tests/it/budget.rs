//! Workload budgets end to end on one machine: a coordinator (the real `pgwarden inject` with budgets on)
//! against the fake API server (pods, watch, TokenReview), and real sidecar processes (`pgwarden proxy`)
//! of one workload in front of the test PostgreSQL, each with its own projected-token file.

use crate::inject::{tls_connect, write_cert};
use crate::lifecycle::{bin, spawn_proxy_binary};
use crate::support::fake_kube::{pod, FakeKube};
use crate::support::pg::{free_port, pg};
use crate::support::proxy::{connect, sqlstate};
use futures_util::StreamExt;
use serde_json::Value;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUDIENCE: &str = "pgwarden-coordinator";

struct Sidecar {
    name: String,
    child: Child,
    port: u16,
    admin: u16,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped, so a failing assertion leaves no process behind.
pub(crate) struct Killed(pub(crate) Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Sidecar {
    async fn budget(&self) -> Value {
        let url = format!("http://127.0.0.1:{}", self.admin);
        let clients: Value = pgwarden::views::report::get_json(&url, "/clients").await.unwrap();
        clients["budget"].clone()
    }

    async fn wait_budget(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let until = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let b = self.budget().await;
            if ok(&b) {
                return b;
            }
            assert!(std::time::Instant::now() < until, "sidecar {}: never {what}: {b}", self.name);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(self.port).user("postgres").dbname("postgres");
        cfg.application_name(format!("budget-{}", self.name));
        connect(cfg).await
    }
}

fn pod_name(x: &str) -> String {
    format!("images-5f7c9d8b4-{x}")
}

async fn start_sidecar(dir: &Path, coordinator: u16, x: &str, kube: &FakeKube) -> Sidecar {
    let name = pod_name(x);
    let token = kube.jwt("shop", &name, AUDIENCE);
    let token_file = dir.join(format!("token-{x}"));
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let yaml = format!(
        "budget:\n  coordinator: https://localhost:{coordinator}\n  ca_file: {}\n  token_file: {}\n  keep_last: 2s\n  fallback_max_connections: 1\n",
        dir.join("ca.crt").display(),
        token_file.display()
    );
    let env =
        [("PGWARDEN_POD_NAME", name.as_str()), ("PGWARDEN_POD_NAMESPACE", "shop"), ("PGWARDEN_WORKLOAD", "images")];
    let (child, port, admin) = spawn_proxy_binary(&yaml, &env, Stdio::null()).await;
    Sidecar { name: x.to_string(), child, port, admin }
}

/// The coordinator on a free port, started again on another when the port was taken meanwhile.
async fn start_coordinator(dir: &Path, kube: &FakeKube) -> (Killed, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut coordinator = spawn_coordinator(dir, kube, port);
        if crate::lifecycle::listening_or_exited(&mut coordinator.0, port).await {
            return (coordinator, port);
        }
    }
    panic!("the coordinator never listened");
}

fn spawn_coordinator(dir: &Path, kube: &FakeKube, port: u16) -> Killed {
    let config = dir.join("injector.yaml");
    std::fs::write(
        &config,
        format!(
            "budgets:\n  enabled: true\n  url: https://localhost:{port}\n  caFile: {}\n  entries:\n    - name: images\n      match: {{namespace: shop, workload: images}}\n      maxConnections: 6\n      reclaimIdle: true\n",
            dir.join("ca.crt").display()
        ),
    )
    .unwrap();
    let kubeconfig = kube.kubeconfig(dir, "shop");
    let child = bin()
        .args(["inject", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .arg("--config")
        .arg(&config)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Killed(child)
}

/// `GET /v1/share` as a sidecar would, with `token`; returns (status, body).
async fn ask(port: u16, ca: &str, token: &str, pod: &str) -> (u16, String) {
    let mut tls = tls_connect(port, ca).await.unwrap();
    let head = format!(
        "GET /v1/share?namespace=shop&pod={pod} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// A JWT-shaped token for the coordinator's audience claiming `pod`, signed by nobody: only a TokenReview
/// can tell it from a real one.
fn forge(pod: &str, i: usize) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let claims = serde_json::json!({
        "aud": [AUDIENCE], "exp": 4_102_444_800u64,
        "kubernetes.io": {"namespace": "shop", "pod": {"name": pod, "uid": "x"}},
    });
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(format!("forged-{i}"))
    )
}

/// `GET /v1/share` for `pod` once per token, over 8 kept-alive TLS connections; the statuses.
async fn ask_many(port: u16, ca: &str, pod: &str, tokens: Vec<String>) -> Vec<u16> {
    let lanes: Vec<Vec<String>> = (0..8).map(|l| tokens.iter().skip(l).step_by(8).cloned().collect()).collect();
    let runs = lanes.into_iter().map(|lane| {
        let (ca, pod) = (ca.to_string(), pod.to_string());
        async move {
            let mut tls = tls_connect(port, &ca).await.unwrap();
            let mut statuses = Vec::new();
            let mut buf = Vec::new();
            for token in lane {
                let head = format!(
                    "GET /v1/share?namespace=shop&pod={pod} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
                );
                tls.write_all(head.as_bytes()).await.unwrap();
                // One response: headers, then Content-Length bytes of body.
                let (status, used) = loop {
                    if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break (head[9..12].parse::<u16>().unwrap(), end + 4 + len);
                        }
                    }
                    let mut chunk = [0u8; 4096];
                    let n = tls.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "the coordinator closed a kept-alive connection");
                    buf.extend_from_slice(&chunk[..n]);
                };
                buf.drain(..used);
                statuses.push(status);
            }
            statuses
        }
    });
    futures_util::future::join_all(runs).await.into_iter().flatten().collect()
}

/// Samples how many connections the workload holds at PostgreSQL, every 20 ms, keeping the maximum.
fn sample_backends(stop: Arc<AtomicBool>, max: Arc<AtomicI64>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(pg().port).user("postgres").dbname("postgres").application_name("budget-sampler");
        let client = connect(cfg).await.unwrap();
        let mut samples = 0;
        while !stop.load(Relaxed) {
            let row = client
                .query_one("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'budget-%' AND application_name <> 'budget-sampler'", &[])
                .await
                .unwrap();
            max.fetch_max(row.get::<_, i64>(0), Relaxed);
            samples += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        samples
    })
}

fn refused_naming(e: &tokio_postgres::Error, what: &str) -> bool {
    sqlstate(e).as_deref() == Some("53300") && e.as_db_error().is_some_and(|d| d.message().contains(what))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_budget_is_shared_by_its_sidecars_rebalanced_on_scale_out_and_kept_through_an_outage() {
    let kube = FakeKube::start().await;
    for (x, second) in [("a", 1), ("b", 2), ("c", 3)] {
        kube.add_pod(pod(
            "shop",
            &pod_name(x),
            "images",
            &format!("10.0.0.{second}"),
            &format!("2026-12-01T10:00:0{second}Z"),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path(), "pgwarden budget test CA");
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    let (coordinator, port) = start_coordinator(dir.path(), &kube).await;

    let mut sidecars = Vec::new();
    for x in ["a", "b", "c"] {
        sidecars.push(start_sidecar(dir.path(), port, x, &kube).await);
    }
    for s in &sidecars {
        let b = s.wait_budget("share 2", |b| b["share"] == 2 && b["source"] == "share").await;
        assert_eq!(
            (b["name"].as_str(), b["max_connections"].as_u64(), b["pods"].as_u64()),
            (Some("images"), Some(6), Some(3)),
            "{b}"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let max = Arc::new(AtomicI64::new(0));
    let sampler = sample_backends(stop.clone(), max.clone());

    // 3 pods, budget 6: two connections each, the third refused naming the budget.
    let mut held = Vec::new();
    for s in &sidecars {
        held.push(vec![s.connect().await.unwrap(), s.connect().await.unwrap()]);
        let refused = s.connect().await.err().expect("a third connection is over the share");
        assert!(refused_naming(&refused, "workload budget \"images\""), "{refused:?}");
        assert!(refused_naming(&refused, "this pod's share 2"), "{refused:?}");
    }
    for c in held.iter().flatten() {
        c.simple_query("select 1").await.unwrap();
    }

    // A pod may only ask about itself; a forged token is refused.
    let (token_a, token_b) = (kube.jwt("shop", &pod_name("a"), AUDIENCE), kube.jwt("shop", &pod_name("b"), AUDIENCE));
    let (status, body) = ask(port, &ca, &token_b, &pod_name("a")).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("may only ask about itself"), "{body}");
    let (status, body) = ask(port, &ca, "forged", &pod_name("a")).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = ask(port, &ca, &token_a, &pod_name("a")).await;
    assert_eq!(status, 200, "{body}");

    // 10,000 requests with random tokens (issue 27 item 5): refused without a TokenReview (not JWTs), and
    // 300 JWT-shaped forgeries claiming pod a cost at most the review budget's burst; no sidecar loses its
    // share.
    let reviews = kube.token_reviews();
    let statuses =
        ask_many(port, &ca, &pod_name("a"), (0..10_000).map(|i| format!("random-{i}-{}", i * 7919)).collect()).await;
    assert!(statuses.iter().all(|&s| s == 403), "{:?}", statuses.iter().find(|&&s| s != 403));
    assert_eq!(kube.token_reviews(), reviews, "a random token cost a TokenReview");
    let forged: Vec<String> = (0..300).map(|i| forge(&pod_name("a"), i)).collect();
    let statuses = ask_many(port, &ca, &pod_name("a"), forged).await;
    assert!(statuses.iter().all(|&s| s == 403 || s == 503), "{statuses:?}");
    let spent = kube.token_reviews() - reviews;
    eprintln!("300 forged tokens: {spent} TokenReviews; 10,000 random: none");
    assert!(spent <= 150, "{spent} TokenReviews for 300 forged tokens");
    for (s, share) in sidecars.iter().zip([2, 2, 2]) {
        let b = s.wait_budget(&format!("share {share} kept"), |b| b["share"] == share && b["source"] == "share").await;
        assert!(b["error"].is_null(), "{b:#}");
    }

    // 2,048 long polls held (budgets.maxConnections, the coordinator's cap): the API server's /mutate is
    // still answered within a second, an idle poll closed to make room (issue 27 item 2).
    let (_, body) = ask(port, &ca, &token_a, &pod_name("a")).await;
    let tag = serde_json::from_str::<pgwarden::budget::lease::ShareAnswer>(&body).unwrap().tag();
    let started = std::time::Instant::now();
    let polls: Vec<_> = futures_util::stream::iter(0..2048)
        .map(|_| {
            let (ca, token, pod, tag) = (ca.clone(), token_a.clone(), pod_name("a"), tag.clone());
            async move {
                let mut tls = tls_connect(port, &ca).await.unwrap();
                let known = pgwarden::k8s::fleet::prometheus::encode(&tag);
                let head = format!(
                    "GET /v1/share?namespace=shop&pod={pod}&known={known}&wait=25 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
                );
                tls.write_all(head.as_bytes()).await.unwrap();
                tls
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    eprintln!("2,048 long polls held after {:?}", started.elapsed());
    let review =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/opted-out-pod.json")).unwrap();
    let mutate =
        tokio::time::timeout(Duration::from_secs(1), crate::inject::https(port, &ca, "POST", "/mutate", &review));
    let (status, body) = mutate.await.expect("/mutate answered within a second").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    drop(polls);

    // A fourth pod: shares 2/2/1/1 (the oldest keep the remainder); pod c closes its longest-idle
    // connection above its new share (reclaim_idle), with 57P01 naming the budget.
    kube.add_pod(pod("shop", &pod_name("d"), "images", "10.0.0.4", "2026-12-01T10:00:04Z"));
    sidecars.push(start_sidecar(dir.path(), port, "d", &kube).await);
    for (s, share) in sidecars.iter().zip([2, 2, 1, 1]) {
        s.wait_budget(&format!("share {share}"), |b| b["share"] == share && b["pods"] == 4).await;
    }
    sidecars[2].wait_budget("reclaimed down to its share", |b| b["connections"] == 1).await;
    let c_conns = &held[2];
    let closed: Vec<&tokio_postgres::Client> = c_conns.iter().filter(|c| c.is_closed()).collect();
    assert_eq!(closed.len(), 1, "exactly the one idle connection above the share was closed");
    let survivor = c_conns.iter().find(|c| !c.is_closed()).unwrap();
    survivor.simple_query("select 1").await.expect("the connection within the share still works");
    let refused = sidecars[2].connect().await.err().expect("pod c is at its share of 1");
    assert!(refused_naming(&refused, "this pod's share 1"), "{refused:?}");
    let d1 = sidecars[3].connect().await.expect("pod d's one connection");
    let refused = sidecars[3].connect().await.err().expect("pod d is at its share of 1");
    assert!(refused_naming(&refused, "images"), "{refused:?}");
    d1.simple_query("select 1").await.unwrap();

    // The coordinator goes away: the last share holds for keep_last (2 s), then the fallback cap (1).
    drop(coordinator);
    let a = &sidecars[0];
    let kept = a.wait_budget("kept", |b| b["source"] == "kept").await;
    assert_eq!(kept["cap"], 2, "{kept}");
    let fallback = a.wait_budget("on the fallback cap", |b| b["source"] == "fallback").await;
    assert_eq!(fallback["cap"], 1, "{fallback}");
    assert!(fallback["error"].as_str().is_some_and(|e| !e.is_empty()), "{fallback}");
    let refused = a.connect().await.err().expect("pod a holds 2, over the fallback cap of 1");
    assert!(refused_naming(&refused, "fallback_max_connections 1"), "{refused:?}");
    for c in &held[0] {
        c.simple_query("select 1").await.expect("busy or idle, connections over the fallback stay open");
    }
    let metrics =
        pgwarden::views::report::get_text(&format!("http://127.0.0.1:{}", a.admin), "/metrics").await.unwrap();
    assert!(metrics.contains("pgwarden_budget_fallback{budget=\"images\"} 1"), "{metrics}");
    assert!(metrics.contains("pgwarden_budget_connections{budget=\"images\"} 2"), "{metrics}");
    let ready = pgwarden::views::report::get_text(&format!("http://127.0.0.1:{}", a.admin), "/readyz").await;
    assert!(ready.is_ok(), "a coordinator outage does not make the sidecar unready: {ready:?}");

    // The outage lasts long enough for every sidecar's retries to space out, then the coordinator is back on
    // its address: every sidecar is on its share again within 6 s (issue 27 item 13; before, ~21 s).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let mut back = spawn_coordinator(dir.path(), &kube, port);
    assert!(crate::lifecycle::listening_or_exited(&mut back.0, port).await, "the coordinator came back");
    let returned = std::time::Instant::now();
    for s in &sidecars {
        s.wait_budget("on its share again", |b| b["source"] == "share").await;
    }
    let took = returned.elapsed();
    eprintln!("sidecars back on their share {took:?} after the coordinator listened again");
    assert!(took < Duration::from_secs(6), "{took:?}");

    stop.store(true, Relaxed);
    let samples = sampler.await.unwrap();
    let peak = max.load(Relaxed);
    eprintln!("workload budget 6: {samples} samples of pg_stat_activity, at most {peak} backends");
    assert!(samples > 10, "the sampler ran");
    assert!(peak <= 6, "the workload never held more than its budget at PostgreSQL: {peak}");
}

#[tokio::test]
async fn the_injector_with_budgets_needs_the_kubernetes_api_and_valid_entries() {
    let dir = tempfile::tempdir().unwrap();
    write_cert(dir.path(), "ca");
    std::fs::write(dir.path().join("ca.crt"), "x").unwrap();
    let config = dir.path().join("injector.yaml");
    let run = |yaml: &str| {
        std::fs::write(&config, yaml).unwrap();
        bin()
            .args(["inject", "--listen", "127.0.0.1:0"])
            .arg("--tls-cert")
            .arg(dir.path().join("tls.crt"))
            .arg("--tls-key")
            .arg(dir.path().join("tls.key"))
            .arg("--config")
            .arg(&config)
            .env("KUBECONFIG", dir.path().join("missing"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap()
    };
    let twice = "budgets:\n  entries:\n    - {match: {namespace: shop, workload: api}, maxConnections: 4}\n    - {name: again, match: {workload: 'a*'}, maxConnections: 5}\n";
    let out = run(twice);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("budgets.entries[1] (again)") && err.contains("same workload"), "{err}");
    let out = run("budgets:\n  entries:\n    - {match: {workload: api}, maxConnections: 2, minPods: 3}\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(err.contains("below minPods 3"), "{err}");
    let out = run("budgets:\n  entries:\n    - {match: {workload: api}, maxConnection: 2}\n");
    assert_eq!(out.status.code(), Some(64), "{}", String::from_utf8_lossy(&out.stderr));
    let ca = dir.path().join("ca.crt");
    let on =
        format!("budgets:\n  enabled: true\n  url: https://pgwarden.pgwarden.svc:443\n  caFile: {}\n", ca.display());
    let out = run(&on);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("budget coordinator needs the Kubernetes API"), "{err}");
}
