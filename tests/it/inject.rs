//! The injection webhook over real HTTPS: AdmissionReview fixtures in, JSON patches out that make pods
//! which validate against Kubernetes 1.33; certificate rotation without restart; ConfigMap configs read
//! through a mocked Kubernetes API.

use base64::Engine as _;
use pgwarden::k8s::inject::config::InjectConfig;
use pgwarden::k8s::inject::server::{serve, Injector};
use pgwarden::tls::reloading::ReloadingCert;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)).unwrap()
}

/// Writes a new CA and a server certificate for `localhost` (key in PKCS#8 PEM); returns the CA PEM.
pub(crate) fn write_cert(dir: &Path, ca_name: &str) -> String {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .unwrap();
    // Key first: the reloader must cope with a moment where the pair does not match.
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    ca.pem()
}

/// A TLS connection to the webhook on `port`, trusting `ca_pem`.
pub(crate) async fn tls_connect(
    port: u16,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())
}

/// POSTs `body` to `path` over TLS trusting `ca_pem`; returns (status, body).
pub(crate) async fn https(
    port: u16,
    ca_pem: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut tls = tls_connect(port, ca_pem).await?;
    let head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(body).await.unwrap();
    let mut resp = Vec::new();
    let _ = tls.read_to_end(&mut resp).await;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no HTTP response")?;
    let status = String::from_utf8_lossy(&resp[9..12]).parse().unwrap();
    Ok((status, resp[split + 4..].to_vec()))
}

/// kubernetes-validate --strict for Kubernetes 1.33 on one manifest.
fn validate_1_33(doc: &Value) {
    // kubernetes-validate needs a name; a pod from a controller carries only generateName at admission.
    let mut doc = doc.clone();
    if doc["metadata"]["name"].is_null() {
        doc["metadata"]["name"] = json!(format!("{}x2x7q", doc["metadata"]["generateName"].as_str().unwrap()));
    }
    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    for version in ["1.29.0", "1.33.0"] {
        let out = std::process::Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .arg(file.path())
            .output()
            .expect("kubernetes-validate is installed by scripts/setup.sh (run the suite with scripts/test.sh)");
        let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "patched pod does not validate for {version}:\n{report}");
    }
}

fn patch_of(response: &Value) -> Option<Vec<Value>> {
    let r = &response["response"];
    let b64 = r["patch"].as_str()?;
    assert_eq!(r["patchType"], "JSONPatch");
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).ok()
}

#[tokio::test]
async fn webhook_over_https_patches_validate_and_certificates_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = write_cert(dir.path(), "pgwarden test CA 1");
    let cert = ReloadingCert::new(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let injector = Arc::new(Injector { config: InjectConfig::default(), kube: None, coordinator: None });
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve(injector, listener, cert, stop.clone()));

    let (status, body) = https(port, &ca1, "GET", "/healthz", b"").await.unwrap();
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));

    for name in ["statefulset-pod-with-init.json", "deployment-pod-no-init.json", "bare-pod-no-annotations.json"] {
        let review = fixture(name);
        let (status, body) = https(port, &ca1, "POST", "/mutate", &review).await.unwrap();
        assert_eq!(status, 200, "{name}");
        let response: Value = serde_json::from_slice(&body).unwrap();
        let request: Value = serde_json::from_slice(&review).unwrap();
        assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(response["kind"], "AdmissionReview");
        assert_eq!(response["response"]["uid"], request["request"]["uid"], "{name}: uid echoed");
        assert_eq!(response["response"]["allowed"], true);
        let ops = patch_of(&response).expect("a patch");
        let mut pod = request["request"]["object"].clone();
        json_patch::patch(&mut pod, &serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).unwrap()).unwrap();
        let sidecars: Vec<&Value> =
            pod["spec"]["initContainers"].as_array().unwrap().iter().filter(|c| c["name"] == "pgwarden").collect();
        assert_eq!(sidecars.len(), 1, "{name}: exactly one sidecar");
        assert_eq!(pod["spec"]["initContainers"][0]["name"], "pgwarden", "{name}: first");
        assert_eq!(
            pod["spec"]["containers"], request["request"]["object"]["spec"]["containers"],
            "{name}: app untouched"
        );
        validate_1_33(&pod);
        // Re-admitting the patched pod changes nothing.
        let mut again = request.clone();
        again["request"]["object"] = pod;
        let (_, body) = https(port, &ca1, "POST", "/mutate", &serde_json::to_vec(&again).unwrap()).await.unwrap();
        let response: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(response["response"]["allowed"], true);
        assert!(patch_of(&response).is_none(), "{name}: idempotent");
    }
    // A pod asking for the shared Unix socket and client TLS: mounts in every container, and it validates.
    let review = fixture("unix-socket-tls-pod.json");
    let (_, body) = https(port, &ca1, "POST", "/mutate", &review).await.unwrap();
    let response: Value = serde_json::from_slice(&body).unwrap();
    let request: Value = serde_json::from_slice(&review).unwrap();
    let mut pod = request["request"]["object"].clone();
    let ops = patch_of(&response).expect("a patch");
    json_patch::patch(&mut pod, &serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).unwrap()).unwrap();
    for c in pod["spec"]["containers"].as_array().unwrap() {
        assert!(c["volumeMounts"].as_array().unwrap().iter().any(|m| m["mountPath"] == "/var/run/pgwarden"), "{c}");
    }
    validate_1_33(&pod);
    let (_, body) = https(port, &ca1, "POST", "/mutate", &fixture("opted-out-pod.json")).await.unwrap();
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["response"]["allowed"], true);
    assert!(patch_of(&response).is_none(), "opted out");
    let (_, body) = https(port, &ca1, "POST", "/mutate", &fixture("bad-annotation-pod.json")).await.unwrap();
    let response: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(response["response"]["allowed"], false);
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("pgwarden.io/max-connections") && message.contains("lots"), "{message}");
    // The legacy (non-native) sidecar validates too.
    let legacy = InjectConfig { native_sidecar: false, ..InjectConfig::default() };
    let request: Value = serde_json::from_slice(&fixture("bare-pod-no-annotations.json")).unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(request["request"]["object"].clone()).unwrap();
    let ops = pgwarden::k8s::inject::mutate(&pod, &legacy, None).unwrap().unwrap();
    let mut doc = request["request"]["object"].clone();
    json_patch::patch(&mut doc, &serde_json::from_value::<json_patch::Patch>(Value::Array(ops)).unwrap()).unwrap();
    validate_1_33(&doc);
    let (status, _) = https(port, &ca1, "POST", "/mutate", b"{not json").await.unwrap();
    assert_eq!(status, 400);
    let (status, _) = https(port, &ca1, "GET", "/mutate", b"").await.unwrap();
    assert_eq!(status, 405);

    // Rotate: a certificate from another CA is served without a restart.
    let ca2 = write_cert(dir.path(), "pgwarden test CA 2");
    let started = Instant::now();
    loop {
        if https(port, &ca2, "GET", "/healthz", b"").await.is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(https(port, &ca1, "GET", "/healthz", b"").await.is_err(), "the old certificate is gone");
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A kube client whose API server is this test: answers each request with `respond(path)`.
fn mock_kube(respond: impl Fn(&str) -> (u16, Value) + Send + 'static) -> kube::Client {
    let (service, mut handle) =
        tower_test::mock::pair::<http::Request<kube::client::Body>, http::Response<kube::client::Body>>();
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (status, body) = respond(request.uri().path());
            let response = http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
                .unwrap();
            send.send_response(response);
        }
    });
    kube::Client::new(service, "default")
}

#[tokio::test]
async fn configmap_named_by_the_pod_is_read_from_its_namespace() {
    let kube = mock_kube(|path| match path {
        "/api/v1/namespaces/shop/configmaps/checkout-pgwarden" => (
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "checkout-pgwarden", "namespace": "shop"},
                   "data": {"pgwarden.yaml": "upstream: from-configmap.shop.svc:5432\ndefaults:\n  max_connections: 7\n"}}),
        ),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "configmaps not found", "reason": "NotFound", "code": 404}),
        ),
    });
    let injector = Injector { config: InjectConfig::default(), kube: Some(kube), coordinator: None };
    let review = fixture("configmap-pod.json");
    let response: Value = serde_json::from_slice(&injector.review(&review).await.unwrap()).unwrap();
    assert_eq!(response["response"]["allowed"], true, "{response}");
    let ops = patch_of(&response).unwrap_or_else(|| panic!("{response}"));
    let env = ops[0]["value"][0]["env"].as_array().unwrap();
    let yaml = env.iter().find(|e| e["name"] == "PGWARDEN_CONFIG_YAML").unwrap()["value"].as_str().unwrap();
    let cfg = pgwarden::config::Config::from_yaml(yaml, "sidecar").unwrap();
    assert_eq!(cfg.upstream.to_string(), "from-configmap.shop.svc:5432");
    assert_eq!(cfg.defaults.max_connections.to_string(), "7");
    assert!(!cfg.enforce, "annotations apply over the ConfigMap");

    // A ConfigMap that does not exist: refused, naming the annotation.
    let mut missing: Value = serde_json::from_slice(&review).unwrap();
    missing["request"]["object"]["metadata"]["annotations"]["pgwarden.io/config"] = json!("nope");
    let response: Value =
        serde_json::from_slice(&injector.review(&serde_json::to_vec(&missing).unwrap()).await.unwrap()).unwrap();
    assert_eq!(response["response"]["allowed"], false);
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("pgwarden.io/config") && message.contains("shop/nope"), "{message}");
}

#[tokio::test]
async fn sidecar_identity_from_the_downward_api() {
    let env = [
        ("PGWARDEN_POD_NAME", "checkout-api-7d9f8c6b5-x2x7q"),
        ("PGWARDEN_POD_NAMESPACE", "shop"),
        ("PGWARDEN_WORKLOAD", "checkout-api"),
        ("PGWARDEN_NODE_NAME", "node-3"),
        ("PGWARDEN_SERVICE_ACCOUNT", "checkout"),
    ];
    let yaml = "upstream_tls: disable\nclient_key: [namespace, workload, application_name]\n";
    let (mut child, port, admin) = crate::lifecycle::spawn_proxy_binary(yaml, &env, std::process::Stdio::null()).await;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1").port(port).user("postgres").dbname("postgres").application_name("api");
    let c = crate::support::proxy::connect(cfg).await.unwrap();
    c.simple_query("select 1").await.unwrap();
    let url = format!("http://127.0.0.1:{admin}");
    let clients: Value = pgwarden::views::report::get_json(&url, "/clients").await.unwrap();
    assert_eq!(
        clients["identity"],
        json!({"pod": "checkout-api-7d9f8c6b5-x2x7q", "namespace": "shop", "workload": "checkout-api", "node": "node-3", "service_account": "checkout"})
    );
    assert_eq!(clients["clients"][0]["client"], "shop/checkout-api/api", "pod fields usable in client_key");
    let metrics = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        metrics.contains(
            "pgwarden_info{namespace=\"shop\",pod=\"checkout-api-7d9f8c6b5-x2x7q\",workload=\"checkout-api\"} 1"
        ),
        "{metrics}"
    );
    drop(c);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn stalled_bodies_and_silent_sockets_are_cut_and_capped() {
    use pgwarden::http_server::Limits;
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path(), "pgwarden test CA stall");
    let cert = ReloadingCert::new(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let injector = Arc::new(Injector { config: InjectConfig::default(), kube: None, coordinator: None });
    let limits = Limits {
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        max_connections: 8,
        ..Limits::default()
    };
    let stop = CancellationToken::new();
    tokio::spawn(pgwarden::k8s::inject::server::serve_with(injector, listener, cert, stop.clone(), limits));
    // 20 sockets that never start TLS: 12 over the cap closed at once, the rest at the handshake timeout.
    let silent: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let started = Instant::now();
                let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                let mut buf = [0u8; 16];
                let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
                started.elapsed()
            })
        })
        .collect();
    let mut lasted = Vec::new();
    for t in silent {
        lasted.push(t.await.unwrap());
    }
    lasted.sort();
    assert!(lasted[11] < Duration::from_millis(400), "over the cap: closed at once: {lasted:?}");
    assert!(lasted[19] < Duration::from_secs(2), "cut at the handshake timeout: {lasted:?}");
    // A request whose body never comes: 408 at the body timeout.
    let started = Instant::now();
    let (status, _) = https_head_only(port, &ca).await;
    assert_eq!(status, 408);
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let (status, _) = https(port, &ca, "GET", "/healthz", b"").await.unwrap();
    assert_eq!(status, 200);
    stop.cancel();
}

/// POST /mutate announcing a body that never comes.
async fn https_head_only(port: u16, ca_pem: &str) -> (u16, Vec<u8>) {
    let mut tls = tls_connect(port, ca_pem).await.unwrap();
    tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n").await.unwrap();
    let mut resp = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut resp)).await.expect("an answer").unwrap();
    let status = String::from_utf8_lossy(&resp[9..12]).parse().unwrap();
    (status, resp[..n].to_vec())
}

/// 2,048 connections sitting in an unfinished TLS handshake (past the webhook's cap, which they fill):
/// `/mutate` still answers within a second, the oldest idle connection closed to make room (issue 27 item
/// 2; before, every new connection was closed while the cap was full, and with `failurePolicy: Ignore`
/// pods started without a sidecar).
#[tokio::test]
async fn admission_reviews_are_answered_while_unfinished_handshakes_fill_the_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_cert(dir.path(), "pgwarden test CA flood");
    let cert = ReloadingCert::new(&dir.path().join("tls.crt"), &dir.path().join("tls.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let injector = Arc::new(Injector { config: InjectConfig::default(), kube: None, coordinator: None });
    let limits = pgwarden::http_server::Limits { max_connections: 1024, ..Default::default() };
    let stop = CancellationToken::new();
    tokio::spawn(pgwarden::k8s::inject::server::serve_with(injector, listener, cert, stop.clone(), limits));
    let mut held = Vec::new();
    for _ in 0..2048 {
        held.push(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let review = fixture("opted-out-pod.json");
    let answer = tokio::time::timeout(Duration::from_secs(1), https(port, &ca, "POST", "/mutate", &review)).await;
    let (status, body) = answer.expect("answered within a second").unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(held);
    stop.cancel();
}
