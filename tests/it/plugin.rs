//! `kubectl pgwarden …`: the real binary installed as a kubectl plugin (`kubectl-pgwarden` on PATH, as krew
//! links it) and run by the real kubectl (the repository's tools), against the fake API server whose pod
//! proxy forwards to a real sidecar's admin API: no port-forward anywhere.

use crate::support::fake_kube::{pod, status, FakeKube};
use crate::support::proxy::{eventually, start_proxy_as, TestProxy};
use crate::support::test_config;
use pgwarden::identity::PodIdentity;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NS: &str = "shop";
const POD: &str = "image-processor-5f7c9d8b4-a1b2c";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// A directory holding only `kubectl-pgwarden`, a link to the binary under test.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_pgwarden"), dir.path().join("kubectl-pgwarden")).unwrap();
    dir
}

fn kubectl_binary() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/kubectl");
    assert!(tools.exists(), "{} missing: run scripts/setup.sh", tools.display());
    tools
}

/// `kubectl ARGS` with the plugin first on PATH and the fake API server as the kubeconfig's cluster.
async fn kubectl(kube: &FakeKube, args: &[&str]) -> Run {
    let plugins = plugin_dir();
    let kubeconfig = kube.kubeconfig(plugins.path(), NS);
    let path = format!("{}:{}", plugins.path().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = std::process::Command::new(kubectl_binary());
    cmd.args(args).env("PATH", path).env("KUBECONFIG", &kubeconfig).env_remove("PGWARDEN_ADMIN");
    // The commands run on the blocking pool, so this runtime keeps serving the fake API server meanwhile.
    let out = tokio::time::timeout(Duration::from_secs(30), tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("kubectl finished")
        .unwrap()
        .unwrap();
    drop(plugins);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A real sidecar in POD of image-processor with one transaction left open (flagged), reachable only
/// through the fake API server's pod proxy.
async fn leaking_sidecar(kube: &FakeKube) -> (TestProxy, tokio_postgres::Client) {
    let mut config = test_config();
    config.leak.idle_in_transaction_threshold = pgwarden::config::Timeout(Some(Duration::from_secs(1)));
    let identity = PodIdentity {
        pod: Some(POD.into()),
        namespace: Some(NS.into()),
        workload: Some("image-processor".into()),
        node: Some("node-a".into()),
        service_account: Some("image-processor".into()),
    };
    let proxy = start_proxy_as(config, identity).await;
    let leaked = proxy.connect("image-processor").await.unwrap();
    leaked.simple_query("begin; select 1").await.unwrap();
    let flagged = eventually(Duration::from_secs(10), || proxy.state.detector().live().count() > 0).await;
    assert!(flagged, "the open transaction was never flagged");
    kube.add_pod(pod(NS, POD, "image-processor", "10.0.0.10", "2026-12-01T10:00:00Z"));
    kube.forward_pod(NS, POD, 9187, proxy.admin);
    (proxy, leaked)
}

#[tokio::test]
async fn kubectl_runs_pgwarden_as_its_plugin_for_the_fleet_and_for_one_pod() {
    let kube = FakeKube::start().await;
    let (proxy, leaked) = leaking_sidecar(&kube).await;

    let r = kubectl(&kube, &["plugin", "list"]).await;
    assert!(r.stdout.contains("kubectl-pgwarden"), "kubectl finds the plugin: {}{}", r.stdout, r.stderr);
    let r = kubectl(&kube, &["pgwarden", "--help"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("Usage: kubectl pgwarden <COMMAND>"), "{}", r.stdout);

    let r = kubectl(&kube, &["pgwarden", "fleet", "leaks"]).await;
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.starts_with("LEAK SUSPECTED in 1 workload: shop/image-processor (1 pod read)"), "{}", r.stdout);
    assert!(r.stdout.contains(POD), "{}", r.stdout);
    let r = kubectl(&kube, &["pgwarden", "fleet", "top", "--once"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("shop/image-processor"), "{}", r.stdout);

    // One pod, through the pod proxy.
    let mut direct = crate::lifecycle::bin();
    direct.args(["leaks", "--admin", &format!("http://{}", proxy.admin)]);
    let direct = tokio::task::spawn_blocking(move || direct.output()).await.unwrap().unwrap();
    let r = kubectl(&kube, &["pgwarden", "leaks", POD, "-n", NS]).await;
    assert_eq!(r.code, 3, "{}{}", r.stdout, r.stderr);
    // The same report `pgwarden leaks` prints from the admin URL, but for the ages (IDLE, AGE, the evidence's)
    // read a moment later: a second may have turned between the two reads.
    let age = |t: &str| {
        t.starts_with(|c: char| c.is_ascii_digit())
            && t.ends_with(['s', 'm', 'h', 'd'])
            && t.chars().all(|c| c.is_ascii_alphanumeric())
    };
    let table = |s: &str| {
        s.lines()
            .take_while(|l| !l.trim_start().starts_with("evidence"))
            .map(|l| l.split_whitespace().map(|t| if age(t) { "<age>" } else { t }).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        table(&r.stdout),
        table(&String::from_utf8_lossy(&direct.stdout)),
        "the pod's report is the admin API's"
    );
    assert!(r.stdout.contains("evidence (certain): idle in transaction"), "{}", r.stdout);
    assert!(r.stdout.contains("image-processor"), "{}", r.stdout);
    let r = kubectl(&kube, &["pgwarden", "leaks", POD, "--json"]).await;
    assert_eq!(r.code, 3, "the kubeconfig's namespace by default: {}", r.stderr);
    let json: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(json["leaks"].as_array().unwrap().len(), 1, "{json}");
    let r = kubectl(&kube, &["pgwarden", "top", POD, "--once"]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("image-processor"), "{}", r.stdout);
    let proxied = kube.requests().into_iter().filter(|p| p.contains(&format!("/pods/{POD}:9187/proxy/"))).count();
    assert!(proxied >= 6, "every read went through the pod proxy ({proxied})");

    drop(leaked);
    proxy.stop().await;
}

#[tokio::test]
async fn a_pod_that_cannot_be_read_says_why() {
    let kube = FakeKube::start().await;
    let r = kubectl(&kube, &["pgwarden", "leaks", "nope-0"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("no pod nope-0 in namespace shop"), "{}", r.stderr);
    let r = kubectl(&kube, &["pgwarden", "leaks", "nope-0", "-n", "other"]).await;
    assert!(r.stderr.contains("no pod nope-0 in namespace other"), "{}", r.stderr);

    // Listed, but nothing answers on its admin port (the fake API server's 503 for an unforwarded pod).
    kube.add_pod(pod(NS, "web-0", "web", "10.0.0.11", "2026-12-01T10:00:00Z"));
    let r = kubectl(&kube, &["pgwarden", "leaks", "web-0"]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("pod shop/web-0: /leaks through the API server"), "{}", r.stderr);

    // May not get the pod, or may not proxy to it.
    let forbidden = status(403, "Forbidden", "pods \"web-1\" is forbidden: User \"dev\" cannot get resource \"pods\"");
    kube.answer(&format!("/api/v1/namespaces/{NS}/pods/web-1"), 403, forbidden);
    let r = kubectl(&kube, &["pgwarden", "leaks", "web-1"]).await;
    assert!(r.stderr.contains("forbidden: this user may not get pods in namespace shop"), "{}", r.stderr);
    let proxy_forbidden = status(403, "Forbidden", "cannot get resource \"pods/proxy\"");
    kube.answer(&format!("/api/v1/namespaces/{NS}/pods/web-0:9187/proxy/leaks"), 403, proxy_forbidden);
    let r = kubectl(&kube, &["pgwarden", "leaks", "web-0"]).await;
    assert!(r.stderr.contains("forbidden: this user may not get pods/proxy in namespace shop"), "{}", r.stderr);
    // -n without a pod is a usage error.
    let r = kubectl(&kube, &["pgwarden", "leaks", "-n", NS]).await;
    assert_eq!(r.code, 64, "{}", r.stderr);
}
