//! The control plane end to end on one machine: the real `pgwarden inject` with `control.enabled` against
//! the fake API server (pods, TokenReview, the overrides ConfigMap, a user without rights), three real
//! sidecar processes (`pgwarden proxy`, two of workload `images`, one of `api`) configured as the injector
//! renders them, in front of the test PostgreSQL, and the real `pgwarden fleet cap|reclaim|policy`.

use crate::budget::Killed;
use crate::inject::write_cert;
use crate::lifecycle::{bin, listening_or_exited, spawn_proxy_binary};
use crate::support::fake_kube::{pod, FakeKube};
use crate::support::pg::free_port;
use crate::support::proxy::{connect, sqlstate};
use crate::support::raw::{error_code, query, read_message, Raw};
use pgwarden::k8s::inject::config::InjectConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const CONTROL_NS: &str = "pgwarden-system";
const OVERRIDES: &str = "pgwarden-overrides";

struct Sidecar {
    pod: String,
    child: Child,
    port: u16,
    admin: u16,
    log: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    async fn policy(&self) -> Value {
        let url = format!("http://127.0.0.1:{}", self.admin);
        pgwarden::views::report::get_json(&url, "/policy").await.unwrap()
    }

    /// Waits (at most `within`) until the pod's `/policy` satisfies `ok`; returns it and how long it took.
    async fn wait_policy(&self, what: &str, within: Duration, ok: impl Fn(&Value) -> bool) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let p = self.policy().await;
            if ok(&p) {
                return (p, started.elapsed());
            }
            assert!(started.elapsed() < within, "sidecar {}: not {what} within {within:?}: {p:#}", self.pod);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn connect(&self, app: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1").port(self.port).user("postgres").dbname("postgres").application_name(app);
        connect(cfg).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn inject_yaml(dir: &Path, port: u16) -> String {
    format!(
        "control:\n  enabled: true\n  url: https://localhost:{port}\n  caFile: {}\n  overridesNamespace: {CONTROL_NS}\n\
         proxy:\n  leak:\n    idle_in_transaction_threshold: 1s\n",
        dir.join("ca.crt").display()
    )
}

fn spawn_injector(dir: &Path, kube: &FakeKube, port: u16) -> Killed {
    let config = dir.join("injector.yaml");
    std::fs::write(&config, inject_yaml(dir, port)).unwrap();
    let child = bin()
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
    Killed(child)
}

async fn start_injector(dir: &Path, kube: &FakeKube) -> (Killed, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut injector = spawn_injector(dir, kube, port);
        if listening_or_exited(&mut injector.0, port).await {
            return (injector, port);
        }
    }
    panic!("the injector never listened");
}

/// A sidecar configured as the injector renders it (its `proxy_config` of the same inject.yaml), with the
/// token and CA at this test's paths.
async fn start_sidecar(dir: &Path, kube: &FakeKube, injector: u16, name: &str, workload: &str) -> Sidecar {
    let mut cfg = InjectConfig::from_yaml(&inject_yaml(dir, injector), "test").unwrap();
    cfg.read_budget_ca().unwrap();
    let mut config = pgwarden::k8s::inject::proxy_config(&cfg, &Default::default(), None).unwrap();
    let token_file = dir.join(format!("token-{name}"));
    std::fs::write(&token_file, kube.jwt("shop", name, "pgwarden-coordinator")).unwrap();
    config.control.token_file = token_file;
    let log = dir.join(format!("{name}.log"));
    let env = [("PGWARDEN_POD_NAME", name), ("PGWARDEN_POD_NAMESPACE", "shop"), ("PGWARDEN_WORKLOAD", workload)];
    let stderr = Stdio::from(std::fs::File::create(&log).unwrap());
    let (child, port, admin) = spawn_proxy_binary(&config.to_yaml(), &env, stderr).await;
    Sidecar { pod: name.to_string(), child, port, admin, log }
}

/// `pgwarden fleet ARGS...` with `kubeconfig`; (success, stdout, stderr).
async fn fleet(kubeconfig: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = bin();
    cmd.arg("fleet").args(args).args(["-n", "shop", "--control-namespace", CONTROL_NS]);
    cmd.env("KUBECONFIG", kubeconfig).env("USER", "oncall");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn cap_of(p: &Value) -> Option<u64> {
    p["policy"]["max_total_connections"].as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_cap_and_reclaim_reach_exactly_its_sidecars_and_outlive_the_injector() {
    let kube = FakeKube::start().await;
    let pods = [("images-5f7c9d8b4-a", "images"), ("images-5f7c9d8b4-b", "images"), ("api-5f7c9d8b4-a", "api")];
    for (i, (name, workload)) in pods.iter().enumerate() {
        kube.add_pod(pod("shop", name, workload, &format!("10.0.0.{i}"), &format!("2026-12-01T10:00:0{i}Z")));
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path(), "pgwarden control test CA");
    std::fs::write(dir.path().join("ca.crt"), &ca).unwrap();
    let (injector, port) = start_injector(dir.path(), &kube).await;
    let mut sidecars = Vec::new();
    for (name, workload) in pods {
        sidecars.push(start_sidecar(dir.path(), &kube, port, name, workload).await);
    }
    for s in &sidecars {
        let (p, _) = s.wait_policy("answered", Duration::from_secs(15), |p| p["tag"].is_string()).await;
        assert_eq!(cap_of(&p), None, "no cap yet: {p:#}");
        assert!(p["sources"][0].as_str().unwrap().contains("chart values"), "{p:#}");
    }
    let (images_a, images_b, api) = (&sidecars[0], &sidecars[1], &sidecars[2]);
    for s in &sidecars {
        kube.forward_pod("shop", &s.pod, 9187, format!("127.0.0.1:{}", s.admin).parse().unwrap());
    }

    // A user who may only read the overrides is told which permission is missing.
    let reader = kube.kubeconfig_reader(dir.path(), "shop", "viewer");
    let (ok, _, err) = fleet(&reader, &["cap", "images", "2"]).await;
    assert!(!ok, "{err}");
    assert!(err.contains("kubectl auth can-i create configmaps/pgwarden-overrides -n pgwarden-system"), "{err}");
    assert!(kube.configmap(CONTROL_NS, OVERRIDES).is_none(), "nothing written");

    // The on-call caps the workload: both of its sidecars enforce it within 5 s, the other never.
    let kubeconfig = kube.kubeconfig(dir.path(), "shop");
    let asked = Instant::now();
    let (ok, out, err) = fleet(&kubeconfig, &["cap", "images", "2", "--for", "1h"]).await;
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("every pod holds at most 2 connections") && out.contains("2 injected pods"), "{out}");
    for s in [images_a, images_b] {
        let (_, took) = s.wait_policy("capped at 2", Duration::from_secs(5), |p| cap_of(p) == Some(2)).await;
        eprintln!(
            "{}: cap in force {:?} after the command started ({took:?} after it returned)",
            s.pod,
            asked.elapsed()
        );
    }
    let held_a = [images_a.connect("worker").await.unwrap(), images_a.connect("worker").await.unwrap()];
    let refused = images_a.connect("worker").await.err().expect("a third connection is over the cap");
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"), "{refused:?}");
    let mut api_conns = Vec::new();
    for _ in 0..3 {
        api_conns.push(api.connect("api").await.expect("api is not capped"));
    }
    assert_eq!(cap_of(&api.policy().await), None);
    // The change is logged once by each sidecar it reached, with what changed.
    for s in [images_a, images_b] {
        let log = s.log();
        assert_eq!(log.matches("live policy applied").count(), 1, "{log}");
        assert!(log.contains("max_total_connections: off -> 2"), "{log}");
    }
    assert!(!api.log().contains("live policy applied"), "{}", api.log());
    // An annotation edited on a running pod applies live, to that pod only.
    let mut annotated = pod("shop", "api-5f7c9d8b4-a", "api", "10.0.0.2", "2026-12-01T10:00:02Z");
    annotated["metadata"]["annotations"] = serde_json::json!({"pgwarden.io/idle-timeout": "5m"});
    kube.add_pod(annotated);
    let (p, _) = api
        .wait_policy("idle_timeout 5m", Duration::from_secs(5), |p| p["policy"]["defaults"]["idle_timeout"] == "5m")
        .await;
    assert_eq!(cap_of(&p), None, "{p:#}");
    assert_eq!(images_a.policy().await["policy"]["defaults"]["idle_timeout"], "off");
    // `fleet policy` shows what each pod applies, and from where.
    let (ok, out, err) = fleet(&kubeconfig, &["policy", "images"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("images-5f7c9d8b4-a") && out.contains("key shop.images"), "{out}");
    assert!(!out.contains("api-5f7c9d8b4-a"), "{out}");

    // Leaked transactions on images-b and api (suspects after 1 s idle in a transaction) and a healthy idle
    // connection on images-b: the reclaim closes exactly the images suspect.
    let b_addr: std::net::SocketAddr = format!("127.0.0.1:{}", images_b.port).parse().unwrap();
    let mut leaked_b = Raw::connect(b_addr, "postgres", "worker").await;
    leaked_b.send(&query("begin; select 1")).await;
    assert_eq!(leaked_b.until_ready().await.1, b'T', "in a transaction");
    let idle_b = images_b.connect("worker").await.unwrap();
    let leaked_api = api.connect("api-leak").await.unwrap();
    leaked_api.batch_execute("begin; select 1").await.unwrap();
    for s in [images_b, api] {
        let url = format!("http://127.0.0.1:{}", s.admin);
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let leaks: Value = pgwarden::views::report::get_json(&url, "/leaks").await.unwrap();
            if leaks["leaks"].as_array().is_some_and(|a| !a.is_empty()) {
                break;
            }
            assert!(Instant::now() < until, "{}: no suspect: {leaks:#}", s.pod);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (ok, out, err) = fleet(&kubeconfig, &["reclaim", "images"]).await;
    assert!(ok, "{out}\n{err}");
    let closed = tokio::time::timeout(Duration::from_secs(5), read_message(&mut leaked_b.stream)).await;
    let (tag, body) = closed.expect("the leaked connection was reclaimed within 5 s").expect("an ErrorResponse");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!((tag, error_code(&body).as_str()), (b'E', "57P01"), "{text}");
    assert!(text.contains("pgwarden fleet reclaim") && text.contains("by oncall"), "{text}");
    idle_b.simple_query("select 1").await.expect("a healthy idle connection is not a suspect");
    leaked_api.simple_query("select 1").await.expect("another workload's suspect is not touched");
    for c in held_a.iter().chain(&api_conns) {
        c.simple_query("select 1").await.expect("busy and non-suspect connections stay");
    }

    // Kubernetes Events on the right pods, posted by the injector for the sidecars: the leaks (images-b,
    // api), the refusal at the cap (images-a), the reclaim (images-b).
    let wanted = [
        ("images-5f7c9d8b4-b", "ConnectionLeak"),
        ("api-5f7c9d8b4-a", "ConnectionLeak"),
        ("images-5f7c9d8b4-a", "ConnectionCapReached"),
        ("images-5f7c9d8b4-b", "LeakReclaimed"),
    ];
    let event = |pod: &str, reason: &str| {
        kube.events()
            .into_iter()
            .filter(|e| e["involvedObject"]["name"] == pod && e["reason"] == reason)
            .collect::<Vec<_>>()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while !wanted.iter().all(|(pod, reason)| !event(pod, reason).is_empty()) {
        assert!(Instant::now() < until, "events missing: {:#?}", kube.events());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leak = &event("images-5f7c9d8b4-b", "ConnectionLeak")[0];
    assert!(leak["message"].as_str().unwrap().contains("worker/postgres"), "{leak:#}");
    assert_eq!((leak["type"].as_str(), leak["count"].as_i64()), (Some("Warning"), Some(1)), "{leak:#}");
    assert_eq!(leak["involvedObject"]["kind"], "Pod");
    let cap = &event("images-5f7c9d8b4-a", "ConnectionCapReached")[0];
    assert!(
        cap["message"].as_str().unwrap().contains("53300")
            || cap["message"].as_str().unwrap().contains("max_total_connections"),
        "{cap:#}"
    );
    assert_eq!(kube.events().len(), 4, "one object per pod and reason: {:#?}", kube.events());
    // A second leak reclaimed on the same pod: the same object, its count 2.
    let mut leaked_again = Raw::connect(b_addr, "postgres", "worker").await;
    leaked_again.send(&query("begin; select 2")).await;
    leaked_again.until_ready().await;
    tokio::time::sleep(Duration::from_millis(2500)).await; // a suspect, and a reclaim asked in another second
    let (ok, out, err) = fleet(&kubeconfig, &["reclaim", "images"]).await;
    assert!(ok, "{out}\n{err}");
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let reclaimed = event("images-5f7c9d8b4-b", "LeakReclaimed");
        assert_eq!(reclaimed.len(), 1, "one object: {reclaimed:#?}");
        if reclaimed[0]["count"] == 2 {
            break;
        }
        assert!(Instant::now() < until, "the count never grew: {reclaimed:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every answer so far (the first, the cap, the annotation, the reclaim) came over one TLS connection.
    for s in &sidecars {
        assert_eq!(s.policy().await["connections_opened"], 1, "{}: one kept-alive connection", s.pod);
    }
    // The injector goes away: the sidecars keep the policy in force and say the control plane is failing.
    drop(injector);
    for s in [images_a, images_b] {
        s.wait_policy("failing", Duration::from_secs(30), |p| p["error"].is_string()).await;
        assert_eq!(cap_of(&s.policy().await), Some(2), "the last policy holds");
    }
    let metrics = crate::support::http::get(&format!("127.0.0.1:{}", images_a.admin), "/metrics").await;
    assert!(metrics.contains("pgwarden_control_plane_failing 1"), "{metrics}");
    assert!(metrics.contains("pgwarden_live_policy_applied_total 1"), "{metrics}");
    let refused = images_a.connect("worker").await.err().expect("still capped without the injector");
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"));
    // Back, it serves the same policy: nothing changes, nothing is logged again.
    let _injector = {
        let mut again = spawn_injector(dir.path(), &kube, port);
        assert!(listening_or_exited(&mut again.0, port).await, "the injector came back on its port");
        again
    };
    images_a.wait_policy("answering again", Duration::from_secs(15), |p| p["error"].is_null()).await;
    assert_eq!(images_a.log().matches("live policy applied").count(), 1, "{}", images_a.log());
    // Lifting the cap reaches the sidecars the same way.
    let (ok, _, err) = fleet(&kubeconfig, &["cap", "images", "off"]).await;
    assert!(ok, "{err}");
    images_a.wait_policy("uncapped", Duration::from_secs(5), |p| cap_of(p).is_none()).await;
    images_a.connect("worker").await.expect("the cap is lifted");
}
