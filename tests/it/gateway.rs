//! Gateway mode end to end on one machine: clients connect from distinct loopback addresses (127.0.0.2,
//! 127.0.0.3, …) that the fake API server's pods carry as pod IPs; pgwarden names each client by the pod
//! behind its address, enforces a rule on `workload`, and follows the pod watch when an IP is reused.

use crate::support::fake_kube::{pod, FakeKube};
use crate::support::proxy::{eventually, sqlstate};
use crate::support::{start_proxy, test_config, TestProxy};
use pgwarden::config::{Config, PodIdentityFrom};
use pgwarden::identity::Field;
use pgwarden::pods::PeerPod;
use serde_json::Value;
use std::time::Duration;

async fn connect_from(
    proxy: &TestProxy,
    source: &str,
    app: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    let stream = socket.connect(proxy.addr).await.unwrap();
    let (client, connection) = proxy.pg_config("postgres", app).connect_raw(stream, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

fn gateway_config() -> Config {
    let rules = Config::from_yaml(
        "client_key: [namespace, workload, application_name]\n\
         rules: [{name: image-workers, match: {workload: 'image-*'}, max_connections: 1}]",
        "test",
    )
    .unwrap();
    let mut config = test_config();
    config.pod_identity.from = PodIdentityFrom::PeerAddress;
    config.client_key = rules.client_key;
    config.rules = rules.rules;
    config
}

fn open_of(clients: &Value, key: &str) -> Option<u64> {
    clients["clients"].as_array().unwrap().iter().find(|c| c["client"] == key).map(|c| c["open"].as_u64().unwrap())
}

#[tokio::test]
async fn clients_are_named_by_the_pod_behind_their_address_and_a_workload_rule_caps_one() {
    let kube = FakeKube::start().await;
    kube.add_pod(pod(
        "shop",
        "image-processor-5f7c9d8b4-aaaaa",
        "image-processor",
        "127.0.0.2",
        "2026-12-01T10:00:00Z",
    ));
    kube.add_pod(pod("shop", "web-5f7c9d8b4-bbbbb", "web", "127.0.0.3", "2026-12-01T10:00:00Z"));
    let proxy = start_proxy(gateway_config()).await;
    let directory = proxy.state.peers.clone().expect("gateway mode has a pod directory");
    let readyz = pgwarden::views::report::get_text(&proxy.admin_url(), "/readyz").await.unwrap_err().to_string();
    assert!(readyz.contains("503"), "not ready before the first pod list: {readyz}");
    tokio::spawn(pgwarden::k8s::pods::watch(kube.client(), directory.clone(), vec![]));
    assert!(eventually(Duration::from_secs(10), || directory.synced()).await, "the pods were never listed");
    pgwarden::views::report::get_text(&proxy.admin_url(), "/readyz").await.expect("ready once the pods are listed");

    let img = connect_from(&proxy, "127.0.0.2", "img").await.expect("the first image-processor connection");
    let refused = connect_from(&proxy, "127.0.0.2", "img").await.err().expect("the second is over the rule's cap");
    assert_eq!(sqlstate(&refused).as_deref(), Some("53300"));
    assert!(format!("{refused:?}").contains("image-workers"), "{refused:?}");
    let web1 = connect_from(&proxy, "127.0.0.3", "web").await.unwrap();
    let web2 = connect_from(&proxy, "127.0.0.3", "web").await.expect("web has no cap");
    let stranger = connect_from(&proxy, "127.0.0.4", "web").await.unwrap();
    for c in [&img, &web1, &web2, &stranger] {
        c.simple_query("select 1").await.unwrap();
    }
    let clients = proxy.admin_json("/clients").await;
    assert_eq!(open_of(&clients, "shop/image-processor/img"), Some(1), "{clients}");
    assert_eq!(open_of(&clients, "shop/web/web"), Some(2), "{clients}");
    assert_eq!(open_of(&clients, "-/peer:127.0.0.4/web"), Some(1), "an unknown address says so: {clients}");
    let web = clients["clients"].as_array().unwrap().iter().find(|c| c["client"] == "shop/web/web").unwrap();
    assert_eq!((web["namespace"].as_str(), web["workload"].as_str()), (Some("shop"), Some("web")));
    let metrics = pgwarden::views::report::get_text(&proxy.admin_url(), "/metrics").await.unwrap();
    assert!(metrics.contains("pgwarden_pod_identity_pods 2"), "{metrics}");
    assert!(metrics.contains("pgwarden_pod_identity_synced 1"), "{metrics}");
    assert!(metrics.contains("pgwarden_pod_identity_unknown_peers_total 1"), "{metrics}");
    assert!(metrics.contains(r#"pgwarden_client_connections{client="shop/web/web",state="idle"} 2"#), "{metrics}");

    // The web pod is deleted and its IP handed to a new pod of another workload: new connections from that
    // address belong to the new pod; the ones already open keep the name they were admitted under.
    kube.delete_pod("shop", "web-5f7c9d8b4-bbbbb");
    kube.add_pod(pod("batch", "etl-5f7c9d8b4-ccccc", "etl", "127.0.0.3", "2026-12-02T10:00:00Z"));
    let moved = eventually(Duration::from_secs(10), || {
        matches!(directory.lookup("127.0.0.3".parse().unwrap()), PeerPod::Pod(p) if p.workload.as_deref() == Some("etl"))
    })
    .await;
    assert!(moved, "the watch never delivered the reused IP");
    let etl = connect_from(&proxy, "127.0.0.3", "web").await.unwrap();
    etl.simple_query("select 1").await.unwrap();
    let clients = proxy.admin_json("/clients").await;
    assert_eq!(open_of(&clients, "batch/etl/web"), Some(1), "{clients}");
    assert_eq!(open_of(&clients, "shop/web/web"), Some(2), "{clients}");
    let conn = proxy.state.registry.snapshot().into_iter().find(|c| c.client.get(Field::Workload) == Some("etl"));
    assert!(conn.is_some_and(|c| c.peer.ip_label() == "127.0.0.3"));

    // The watch loses its place (410 Gone): the watcher lists again and follows later changes.
    let requests_before = kube.requests().iter().filter(|r| !r.contains("watch")).count();
    kube.expire_watches();
    let relisted = eventually(Duration::from_secs(10), || {
        kube.requests().iter().filter(|r| !r.contains("watch")).count() > requests_before && kube.watchers() == 1
    })
    .await;
    assert!(relisted, "no relist after 410: {:?}", kube.requests());
    kube.add_pod(pod(
        "shop",
        "image-processor-5f7c9d8b4-ddddd",
        "image-processor",
        "127.0.0.4",
        "2026-12-02T11:00:00Z",
    ));
    let seen = eventually(Duration::from_secs(10), || {
        matches!(directory.lookup("127.0.0.4".parse().unwrap()), PeerPod::Pod(p) if p.workload.as_deref() == Some("image-processor"))
    })
    .await;
    assert!(seen, "a pod added after the relist was never seen");
    let list = kube.requests().into_iter().find(|r| !r.contains("watch")).unwrap();
    assert!(list.starts_with("/api/v1/pods?"), "cluster-wide list of pods: {list}");
    drop((img, web1, web2, stranger, etl));
    proxy.stop().await;
}

#[tokio::test]
async fn watched_namespaces_are_listed_one_by_one() {
    let kube = FakeKube::start().await;
    kube.add_pod(pod("shop", "web-5f7c9d8b4-bbbbb", "web", "127.0.0.3", "2026-12-01T10:00:00Z"));
    kube.add_pod(pod("other", "api-5f7c9d8b4-eeeee", "api", "127.0.0.5", "2026-12-01T10:00:00Z"));
    let directory = std::sync::Arc::new(pgwarden::pods::PodDirectory::default());
    tokio::spawn(pgwarden::k8s::pods::watch(kube.client(), directory.clone(), vec!["shop".into(), "batch".into()]));
    assert!(eventually(Duration::from_secs(10), || directory.synced()).await);
    assert_eq!(directory.len(), 1, "only the watched namespaces' pods");
    assert!(matches!(directory.lookup("127.0.0.5".parse().unwrap()), PeerPod::Unknown));
    let paths = kube.requests();
    assert!(paths.iter().any(|p| p.starts_with("/api/v1/namespaces/shop/pods?")), "{paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("/api/v1/namespaces/batch/pods?")), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with("/api/v1/pods")), "no cluster-wide request: {paths:?}");
}

#[tokio::test]
async fn the_binary_in_gateway_mode_watches_pods_from_its_kubeconfig_and_says_when_it_has_no_api() {
    let kube = FakeKube::start().await;
    kube.add_pod(pod("shop", "web-5f7c9d8b4-bbbbb", "web", "127.0.0.3", "2026-12-01T10:00:00Z"));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.kubeconfig(dir.path(), "shop");
    let yaml = "upstream_tls: disable\npod_identity: {from: peer_address}\nclient_key: [namespace, workload, application_name]\n";
    let (mut child, port, admin) = crate::lifecycle::spawn_proxy_binary(
        yaml,
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
        std::process::Stdio::null(),
    )
    .await;
    let url = format!("http://127.0.0.1:{admin}");
    let ready = async {
        loop {
            if pgwarden::views::report::get_text(&url, "/readyz").await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), ready).await.expect("ready once the pods were listed");
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let stream = socket.connect(format!("127.0.0.1:{port}").parse().unwrap()).await.unwrap();
    let mut config = tokio_postgres::Config::new();
    config.user("postgres").dbname("postgres").application_name("web");
    let (client, connection) = config.connect_raw(stream, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    client.simple_query("select 1").await.unwrap();
    let clients: Value = pgwarden::views::report::get_json(&url, "/clients").await.unwrap();
    assert_eq!(clients["clients"][0]["client"], "shop/web/web", "{clients}");
    assert!(kube.requests().iter().any(|r| r.starts_with("/api/v1/pods?") && r.contains("watch=true")), "a watch");
    let _ = child.kill();
    let _ = child.wait();

    // No Kubernetes API at all: exit 1 naming the setting, instead of a gateway that cannot name anyone.
    let out = crate::lifecycle::bin()
        .args(["proxy", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("PGWARDEN_CONFIG_YAML", yaml)
        .env("KUBECONFIG", dir.path().join("missing"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("pod_identity.from: peer_address (gateway mode) needs the Kubernetes API"), "{stderr}");
}
