//! `pgwarden fleet`: the real binary, a kubeconfig pointing at the fake API server, and pod proxy answers
//! recorded from real sidecars (`tests/fixtures/fleet/`, written by the ignored `record_fleet_fixtures`),
//! plus Prometheus answers recorded from a real Prometheus scraping those sidecars.

use crate::lifecycle::bin;
use crate::support::fake_kube::{pod, status, FakeKube};
use crate::support::proxy::{eventually, start_proxy_as};
use crate::support::test_config;
use pgwarden::identity::PodIdentity;
use pgwarden::k8s::fleet::prometheus::{encode, query_text, QUERIES};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NS: &str = "shop";
/// The recorded sidecars: three pods of image-processor (the first two leak), one of web.
const PODS: [(&str, &str); 4] = [
    ("image-processor-5f7c9d8b4-a1b2c", "image-processor"),
    ("image-processor-5f7c9d8b4-d3e4f", "image-processor"),
    ("image-processor-5f7c9d8b4-g5h6i", "image-processor"),
    ("web-5f7c9d8b4-j7k8l", "web"),
];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fleet")
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(fixtures().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn proxy_path(namespace: &str, pod: &str, endpoint: &str) -> String {
    format!("/api/v1/namespaces/{namespace}/pods/{pod}:9187/proxy/{endpoint}")
}

/// The fake API server with the recorded pods (`which` of them) answering through the pod proxy.
async fn fleet(which: &[usize]) -> FakeKube {
    let kube = FakeKube::start().await;
    for (i, &(name, workload)) in PODS.iter().enumerate() {
        if !which.contains(&i) {
            continue;
        }
        kube.add_pod(pod(NS, name, workload, &format!("10.0.0.{}", 10 + i), "2026-12-01T10:00:00Z"));
        for endpoint in ["clients", "leaks"] {
            kube.answer(&proxy_path(NS, name, endpoint), 200, fixture(&format!("{name}.{endpoint}.json")));
        }
    }
    kube
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(kube: &FakeKube, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), NS);
    let mut cmd = bin();
    cmd.args(args).env("KUBECONFIG", &kubeconfig).env_remove("PGWARDEN_ADMIN");
    // The binary runs on the blocking pool, so this runtime keeps serving the fake API server meanwhile.
    let out = tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("fleet finished")
        .unwrap()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Backend pids of a recorded pod's suspects.
fn suspect_pids(pod: &str) -> Vec<i64> {
    let leaks: Value = serde_json::from_str(&fixture(&format!("{pod}.leaks.json"))).unwrap();
    leaks["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["suspects"].as_array().unwrap().iter().filter_map(|s| s["backend_pid"].as_i64()))
        .collect()
}

#[tokio::test]
async fn fleet_leaks_names_the_leaking_workload_its_two_leaking_pods_and_their_evidence() {
    let kube = fleet(&[0, 1, 2, 3]).await;
    let r = run(&kube, &["fleet", "leaks"]).await;
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    let first = r.stdout.lines().next().unwrap();
    assert_eq!(first, "LEAK SUSPECTED in 1 workload: shop/image-processor (4 pods read)", "{}", r.stdout);
    assert!(r.stdout.contains("on 2 of 3 pods"), "{}", r.stdout);
    assert!(r.stdout.contains(PODS[0].0) && r.stdout.contains(PODS[1].0), "{}", r.stdout);
    assert!(!r.stdout.contains(PODS[2].0), "the healthy pod of the workload is not blamed: {}", r.stdout);
    assert!(!r.stdout.contains("shop/web"), "{}", r.stdout);
    for pid in suspect_pids(PODS[0].0).into_iter().chain(suspect_pids(PODS[1].0)) {
        assert!(r.stdout.contains(&format!("backend pid {pid} ")), "evidence for pid {pid}: {}", r.stdout);
    }
    assert!(
        r.stdout.contains("last statement: begin; update fleet_images set status = ? where id = ?"),
        "{}",
        r.stdout
    );
    let listed = kube.requests().into_iter().find(|p| p.starts_with("/api/v1/namespaces/shop/pods?")).unwrap();
    assert!(listed.contains("labelSelector=pgwarden.io%2Finjected%3Dtrue"), "{listed}");

    let r = run(&kube, &["fleet", "leaks", "--json"]).await;
    assert_eq!(r.code, 3);
    let json: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["workloads"][0]["workload"], "image-processor");
    assert_eq!(json["workloads"][0]["leaking_pods"].as_array().unwrap().len(), 2);
    assert_eq!(json["workloads"][0]["pods"], 3);
    assert_eq!(json["pods_read"], 4);

    let r = run(&kube, &["fleet", "top", "--once"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.lines().nth(1).unwrap().starts_with("shop/image-processor"), "{}", r.stdout);
    assert!(r.stdout.contains("image-processor/postgres"), "per-client rows: {}", r.stdout);
}

#[tokio::test]
async fn fleet_leaks_exits_0_when_no_pod_leaks() {
    let kube = fleet(&[2, 3]).await;
    let r = run(&kube, &["fleet", "leaks"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stdout, "no leaks suspected in 2 workloads (2 pods read)\n");
}

#[tokio::test]
async fn pods_that_cannot_be_read_are_listed_with_the_reason_and_the_rest_still_count() {
    let kube = fleet(&[0, 3]).await;
    // A pod the user may not proxy to, one not ready (nothing answers), one that is no pgwarden.
    kube.add_pod(pod(NS, "locked-5f7c9d8b4-zzzzz", "locked", "10.0.0.30", "2026-12-01T10:00:00Z"));
    let forbidden = status(
        403,
        "Forbidden",
        "pods \"locked-5f7c9d8b4-zzzzz\" is forbidden: User \"dev\" cannot get resource \"pods/proxy\"",
    );
    for e in ["clients", "leaks"] {
        kube.answer(&proxy_path(NS, "locked-5f7c9d8b4-zzzzz", e), 403, forbidden.clone());
    }
    let mut starting = pod(NS, "starting-5f7c9d8b4-yyyyy", "starting", "10.0.0.31", "2026-12-01T10:00:00Z");
    starting["status"]["phase"] = "Pending".into();
    starting["status"]["conditions"][0]["status"] = "False".into();
    kube.add_pod(starting);
    let r = run(&kube, &["fleet", "leaks"]).await;
    assert_eq!(r.code, 3, "the readable pods still decide: {}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("2 pods read, 2 could not be read"), "{}", r.stdout);
    assert!(
        r.stdout.contains("shop/locked-5f7c9d8b4-zzzzz: forbidden: this user may not get pods/proxy"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("shop/starting-5f7c9d8b4-yyyyy: pod not ready (phase Pending)"), "{}", r.stdout);

    // Nothing readable at all is an error, not a clean bill of health.
    let kube = FakeKube::start().await;
    kube.add_pod(pod(NS, "starting-5f7c9d8b4-yyyyy", "starting", "10.0.0.31", "2026-12-01T10:00:00Z"));
    let r = run(&kube, &["fleet", "leaks"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("none of the 1 pods could be read"), "{}", r.stderr);
    // No pods: says where it looked.
    let r = run(&FakeKube::start().await, &["fleet", "leaks", "-n", "empty"]).await;
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no pods match pgwarden.io/injected=true in namespace empty"), "{}", r.stderr);
}

#[tokio::test]
async fn fleet_flags_are_checked_and_contexts_chosen() {
    let kube = fleet(&[0]).await;
    let r = run(&kube, &["fleet", "leaks", "--timeout", "0"]).await;
    assert_eq!(r.code, 64, "{}", r.stderr);
    assert!(r.stderr.contains("--timeout"), "{}", r.stderr);
    let r = run(&kube, &["fleet", "leaks", "--prometheus", "prom:9090"]).await;
    assert_eq!(r.code, 64);
    assert!(r.stderr.contains("--prometheus") && r.stderr.contains("http://"), "{}", r.stderr);
    let r = run(&kube, &["fleet", "leaks", "-n", "shop", "-A"]).await;
    assert_eq!(r.code, 64, "namespace and all-namespaces conflict");
    let r = run(&kube, &["fleet", "leaks", "--context", "other"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("cannot list pods"), "{}", r.stderr);
    let r = run(&kube, &["fleet", "leaks", "-A"]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(kube.requests().iter().any(|p| p.starts_with("/api/v1/pods?")), "all namespaces: one cluster-wide list");
}

/// A fake Prometheus answering the fleet's queries with the recorded answers.
async fn prometheus(namespace: Option<&str>) -> FakeKube {
    let prom = FakeKube::start().await;
    for query in &QUERIES {
        let q = encode(&query_text(query, namespace));
        prom.answer(&format!("/api/v1/query?query={q}"), 200, fixture(&format!("prometheus/{}.json", query.figure)));
    }
    prom
}

#[tokio::test]
async fn prometheus_gives_the_same_workload_ranking_and_the_pods_give_the_evidence() {
    let prom = prometheus(None).await;
    let kube = fleet(&[0, 1, 2, 3]).await;
    let url = format!("http://{}", prom.addr);
    let from_prometheus = run(&kube, &["fleet", "leaks", "-A", "--json", "--prometheus", &url]).await;
    assert_eq!(from_prometheus.code, 3, "{}", from_prometheus.stderr);
    let proxied: Vec<String> = kube.requests().into_iter().filter(|p| p.contains("/proxy/")).collect();
    let worst = |p: &String| p.contains(PODS[0].0) || p.contains(PODS[1].0);
    assert!(!proxied.is_empty() && proxied.iter().all(worst), "only the worst pods are read: {proxied:?}");
    let from_pods = run(&kube, &["fleet", "leaks", "--json"]).await;
    let (a, b): (Value, Value) =
        (serde_json::from_str(&from_prometheus.stdout).unwrap(), serde_json::from_str(&from_pods.stdout).unwrap());
    let ranking = |v: &Value, field: &str| -> Vec<Value> {
        v["workloads"].as_array().unwrap().iter().map(|w| w[field].clone()).collect()
    };
    for field in ["workload", "pods", "open", "suspects", "refused_total", "leaking_pods"] {
        assert_eq!(ranking(&a, field), ranking(&b, field), "{field}: Prometheus and the pods agree");
    }
    let evidence = a["workloads"][0]["evidence"].as_array().unwrap();
    assert!(!evidence.is_empty(), "evidence of the worst pods read through the pod proxy");
    // The figures alone when the pods cannot be reached: the verdict still names the workload.
    let r = run(&FakeKube::start().await, &["fleet", "leaks", "-A", "--prometheus", &url, "--context", "other"]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stdout.starts_with("LEAK SUSPECTED in 1 workload: shop/image-processor"), "{}", r.stdout);
    assert!(r.stderr.contains("no evidence from the pods"), "{}", r.stderr);
    // A namespace limits every query.
    let prom_ns = prometheus(Some("shop")).await;
    let r = run(&kube, &["fleet", "leaks", "-n", "shop", "--prometheus", &format!("http://{}", prom_ns.addr)]).await;
    assert_eq!(r.code, 3, "{}", r.stderr);
}

/// Records the fixtures: four real sidecars (in-process proxies that believe they run in the pods above)
/// in front of the test PostgreSQL; two image-processor pods leave transactions open, one of them also
/// refuses at its cap. Writes `/clients` and `/leaks` of each, and, when a `prometheus` binary is installed
/// (apt `prometheus`), the answers of a real Prometheus scraping them to `prometheus/`.
/// Run: `cargo test --test it record_fleet_fixtures -- --ignored`.
#[tokio::test]
#[ignore]
async fn record_fleet_fixtures() {
    crate::support::pg::pg().psql(
        "create table if not exists fleet_images (id int primary key, status text); \
         insert into fleet_images select g, 'new' from generate_series(1, 20) g on conflict do nothing",
    );
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    for (name, workload) in PODS {
        let mut config = test_config();
        config.leak.idle_in_transaction_threshold = pgwarden::config::Timeout(Some(Duration::from_secs(1)));
        config.defaults.max_connections = pgwarden::config::Limit(Some(4));
        let identity = PodIdentity {
            pod: Some(name.into()),
            namespace: Some(NS.into()),
            workload: Some(workload.into()),
            node: Some("node-a".into()),
            service_account: Some(workload.into()),
        };
        proxies.push(start_proxy_as(config, identity).await);
    }
    let leak = |n: usize, id: i32| format!("begin; update fleet_images set status = 'processing-{n}' where id = {id}");
    for (i, (_, workload)) in PODS.iter().enumerate() {
        let p = &proxies[i];
        let (healthy, leaked) = match i {
            0 => (1, 2),
            1 => (3, 1),
            2 => (2, 0),
            _ => (3, 0),
        };
        for _ in 0..healthy {
            let c = p.connect(workload).await.unwrap();
            c.simple_query("select count(*) from fleet_images").await.unwrap();
            clients.push(c);
        }
        for n in 0..leaked {
            let c = p.connect(workload).await.unwrap();
            // A row of its own, so the open transactions do not wait on each other's locks.
            c.simple_query(&leak(n, 7 + 2 * i as i32 + n as i32)).await.unwrap();
            clients.push(c);
        }
        if i == 1 {
            assert!(p.connect(workload).await.is_err(), "the fifth connection is refused at the cap of 4");
        }
    }
    for p in &proxies[..2] {
        let flagged = eventually(Duration::from_secs(10), || p.state.detector().live().count() > 0).await;
        assert!(flagged, "the open transactions were never flagged");
    }
    let dir = fixtures();
    std::fs::create_dir_all(dir.join("prometheus")).unwrap();
    for (p, (name, _)) in proxies.iter().zip(PODS) {
        for endpoint in ["clients", "leaks"] {
            let v = p.admin_json(&format!("/{endpoint}")).await;
            std::fs::write(
                dir.join(format!("{name}.{endpoint}.json")),
                serde_json::to_string_pretty(&v).unwrap() + "\n",
            )
            .unwrap();
        }
    }
    let Ok(prometheus) = which("prometheus") else {
        eprintln!("no prometheus binary: the Prometheus answers were not recorded");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let targets: String = proxies
        .iter()
        .zip(PODS)
        .map(|(p, (name, _))| {
            format!("  - targets: ['{}']\n    labels: {{namespace: {NS}, pod: {name}, container: pgwarden}}\n", p.admin)
        })
        .collect();
    let config =
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n- job_name: sidecars\n  static_configs:\n{targets}");
    std::fs::write(tmp.path().join("prometheus.yml"), config).unwrap();
    let port = crate::support::pg::free_port();
    let mut child = std::process::Command::new(prometheus)
        .arg(format!("--config.file={}", tmp.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut recorded = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let url = format!("{base}/api/v1/query?query={}", encode(&query_text(&QUERIES[1], None)));
        let Ok(out) = std::process::Command::new("curl").args(["-sf", &url]).output() else { break };
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let pods: std::collections::BTreeSet<&str> =
            v["data"]["result"].as_array().into_iter().flatten().filter_map(|s| s["metric"]["pod"].as_str()).collect();
        if pods.len() == PODS.len() {
            recorded = true;
            break;
        }
    }
    assert!(recorded, "Prometheus never scraped every sidecar");
    for query in &QUERIES {
        let figure = query.figure;
        let url = format!("{base}/api/v1/query?query={}", encode(&query_text(query, None)));
        let out = std::process::Command::new("curl").args(["-sf", &url]).output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        std::fs::write(dir.join(format!("prometheus/{figure}.json")), serde_json::to_string_pretty(&v).unwrap() + "\n")
            .unwrap();
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(clients);
    for p in proxies {
        p.stop().await;
    }
}

fn which(name: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or(())
}
