//! A small fake Kubernetes API server on a loopback port: pods that list and watch (label and field
//! selectors ignored except `labelSelector=k=v`), pod proxy answers set by the test, and a kubeconfig that
//! points at it, so both in-process kube clients and the `pgwarden` binary talk to it over real HTTP.

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct World {
    pods: Vec<Value>,
    version: u64,
    watchers: Vec<(Option<String>, mpsc::UnboundedSender<Value>)>,
    /// Pod proxy answers by path (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/clients`).
    answers: HashMap<String, (u16, String)>,
    requests: Vec<String>,
    /// TokenReview: bound ServiceAccount tokens → (namespace, pod, audience).
    tokens: HashMap<String, (String, String, String)>,
    /// ConfigMaps and Events by (resource, namespace, name).
    objects: HashMap<(String, String, String), Value>,
    /// Users (bearer tokens) that may read ConfigMaps but not write them: 403 as RBAC answers.
    readers: HashMap<String, String>,
    /// Pod proxy prefixes (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/`) forwarded to a real admin server.
    forwards: HashMap<String, SocketAddr>,
}

pub struct FakeKube {
    pub addr: SocketAddr,
    world: Arc<Mutex<World>>,
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

pub fn status(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
        .to_string()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

fn query(q: &str) -> HashMap<String, String> {
    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), decode(v))).collect()
}

fn matches(pod: &Value, namespace: Option<&str>, selector: Option<&str>) -> bool {
    if namespace.is_some_and(|ns| pod["metadata"]["namespace"] != ns) {
        return false;
    }
    selector.is_none_or(|sel| {
        sel.split(',').filter(|s| !s.is_empty()).all(|term| match term.split_once('=') {
            Some((k, v)) => pod["metadata"]["labels"][k] == v,
            None => true,
        })
    })
}

impl FakeKube {
    pub async fn start() -> FakeKube {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let world: Arc<Mutex<World>> = Arc::default();
        let w = world.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let w = w.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let w = w.clone();
                        async move {
                            if req.method() == hyper::Method::POST && req.uri().path() == TOKEN_REVIEWS {
                                let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                return Ok::<_, Infallible>(token_review(&w, &body));
                            }
                            let forward = {
                                let mut w = w.lock().unwrap();
                                let found = w
                                    .forwards
                                    .iter()
                                    .find(|(p, _)| req.uri().path().starts_with(p.as_str()))
                                    .map(|(p, a)| (p.clone(), *a));
                                if found.is_some() {
                                    w.requests.push(req.uri().to_string());
                                }
                                found
                            };
                            if let Some((prefix, to)) = forward {
                                let rest = req.uri().path()[prefix.len()..].to_string();
                                return Ok::<_, Infallible>(forward_get(to, &format!("/{rest}")).await);
                            }
                            if req.uri().path().contains("/configmaps") || req.uri().path().contains("/events") {
                                return Ok::<_, Infallible>(objects(&w, req).await);
                            }
                            Ok::<_, Infallible>(route(&w, req))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeKube { addr, world }
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    /// Adds (or replaces, by uid) a pod and tells the watchers.
    pub fn add_pod(&self, mut pod: Value) {
        let mut w = self.world();
        w.version += 1;
        pod["metadata"]["resourceVersion"] = json!(w.version.to_string());
        let uid = pod["metadata"]["uid"].clone();
        let kind = if w.pods.iter().any(|p| p["metadata"]["uid"] == uid) { "MODIFIED" } else { "ADDED" };
        w.pods.retain(|p| p["metadata"]["uid"] != uid);
        w.pods.push(pod.clone());
        notify(&mut w, kind, &pod);
    }

    /// A projected ServiceAccount token for `audience`, bound to pod `namespace/pod`: TokenReviews accept it.
    pub fn token(&self, token: &str, namespace: &str, pod: &str, audience: &str) {
        self.world().tokens.insert(token.into(), (namespace.into(), pod.into(), audience.into()));
    }

    /// A projected ServiceAccount token as the kubelet mounts one (a JWT for `audience`, bound to pod
    /// `namespace/pod`, expiring in 2100; its signature is nothing, as only this API server checks it),
    /// registered so TokenReviews accept it. The same arguments give the same token.
    pub fn jwt(&self, namespace: &str, pod: &str, audience: &str) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine as _;
        let header = json!({"alg": "RS256", "kid": "fake-kube"});
        let claims = json!({
            "aud": [audience], "exp": 4_102_444_800u64, "iat": 1_700_000_000u64, "nbf": 1_700_000_000u64,
            "iss": "https://kubernetes.default.svc", "sub": format!("system:serviceaccount:{namespace}:default"),
            "kubernetes.io": {"namespace": namespace, "pod": {"name": pod, "uid": "fake"}, "serviceaccount": {"name": "default"}},
        });
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string()),
            URL_SAFE_NO_PAD.encode(format!("signed-for-{namespace}-{pod}"))
        );
        self.token(&token, namespace, pod, audience);
        token
    }

    /// Forwards the pod proxy of `namespace/pod` (admin port `port`) to a real admin server at `to`.
    pub fn forward_pod(&self, namespace: &str, pod: &str, port: u16, to: SocketAddr) {
        let prefix = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/");
        self.world().forwards.insert(prefix, to);
    }

    /// Creates or replaces ConfigMap `namespace/name` with `data`.
    pub fn put_configmap(&self, namespace: &str, name: &str, data: Value) {
        let mut w = self.world();
        w.version += 1;
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": namespace, "resourceVersion": w.version.to_string()}, "data": data});
        w.objects.insert(("configmaps".into(), namespace.into(), name.into()), cm);
    }

    /// The Events posted so far.
    pub fn events(&self) -> Vec<Value> {
        let w = self.world();
        let mut v: Vec<Value> = w.objects.iter().filter(|(k, _)| k.0 == "events").map(|(_, e)| e.clone()).collect();
        v.sort_by_key(|e| e["metadata"]["name"].as_str().unwrap_or("").to_string());
        v
    }

    /// ConfigMap `namespace/name`, if it exists.
    pub fn configmap(&self, namespace: &str, name: &str) -> Option<Value> {
        self.world().objects.get(&("configmaps".to_string(), namespace.to_string(), name.to_string())).cloned()
    }

    /// A kubeconfig like [`FakeKube::kubeconfig`] (file `name`) for user `user`, who may read ConfigMaps but
    /// not write them.
    pub fn kubeconfig_reader(&self, dir: &Path, namespace: &str, user: &str) -> PathBuf {
        let token = format!("reader-{user}");
        self.world().readers.insert(token.clone(), user.to_string());
        let path = dir.join(format!("kubeconfig-{user}"));
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: {user}\n    namespace: {namespace}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// TokenReviews answered so far.
    pub fn token_reviews(&self) -> usize {
        self.world().requests.iter().filter(|r| r.as_str() == TOKEN_REVIEWS).count()
    }

    /// Deletes a pod by namespace and name and tells the watchers.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        let mut w = self.world();
        w.version += 1;
        let Some(i) =
            w.pods.iter().position(|p| p["metadata"]["namespace"] == namespace && p["metadata"]["name"] == name)
        else {
            return;
        };
        let mut pod = w.pods.remove(i);
        pod["metadata"]["resourceVersion"] = json!(w.version.to_string());
        notify(&mut w, "DELETED", &pod);
    }

    /// Ends every watch with `410 Gone`, as an API server does when a watcher's version is compacted away.
    pub fn expire_watches(&self) {
        let mut w = self.world();
        let event = json!({"type": "ERROR", "object": serde_json::from_str::<Value>(&status(410, "Expired", "too old resource version")).unwrap()});
        for (_, tx) in w.watchers.drain(..) {
            let _ = tx.send(event.clone());
        }
    }

    /// The answer of a pod proxy path (or any other GET path).
    pub fn answer(&self, path: &str, code: u16, body: impl Into<String>) {
        self.world().answers.insert(path.to_string(), (code, body.into()));
    }

    /// Paths (with query) requested so far.
    pub fn requests(&self) -> Vec<String> {
        self.world().requests.clone()
    }

    /// Watches open now.
    pub fn watchers(&self) -> usize {
        let mut w = self.world();
        w.watchers.retain(|(_, tx)| !tx.is_closed());
        w.watchers.len()
    }

    /// A kubeconfig whose current context `fake` points here with namespace `namespace`; a second context
    /// `other` points at a closed port.
    pub fn kubeconfig(&self, dir: &Path, namespace: &str) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             - name: nowhere\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    \
             user: tester\n    namespace: {namespace}\n- name: other\n  context:\n    cluster: nowhere\n    user: tester\n\
             users:\n- name: tester\n  user:\n    token: not-a-real-token\n",
            self.addr
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }
}

fn notify(w: &mut World, kind: &str, pod: &Value) {
    let event = json!({"type": kind, "object": pod});
    w.watchers.retain(|(ns, tx)| {
        if ns.as_deref().is_some_and(|ns| pod["metadata"]["namespace"] != ns) {
            return !tx.is_closed();
        }
        tx.send(event.clone()).is_ok()
    });
}

const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";

/// Answers a TokenReview as the API server does: authenticated with the pod in the user's extra when the
/// token is known and asked for its audience, else unauthenticated with an error.
fn token_review(world: &Arc<Mutex<World>>, body: &[u8]) -> Response<Body> {
    let mut w = world.lock().unwrap();
    w.requests.push(TOKEN_REVIEWS.to_string());
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let token = review["spec"]["token"].as_str().unwrap_or_default();
    let wanted: Vec<&str> = review["spec"]["audiences"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let uid_of = |ns: &str, pod: &str| {
        w.pods
            .iter()
            .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == pod)
            .map(|p| p["metadata"]["uid"].clone())
    };
    let status = match w.tokens.get(token) {
        Some((ns, pod, _)) if uid_of(ns, pod).is_none() => {
            json!({"authenticated": false, "error": "pod does not exist"})
        }
        Some((ns, pod, aud)) if wanted.is_empty() || wanted.contains(&aud.as_str()) => json!({
            "authenticated": true,
            "audiences": [aud],
            "user": {
                "username": format!("system:serviceaccount:{ns}:default"),
                "uid": "sa-uid",
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{ns}")],
                "extra": {
                    "authentication.kubernetes.io/pod-name": [pod],
                    "authentication.kubernetes.io/pod-uid": [uid_of(ns, pod)],
                }
            }
        }),
        Some(_) => json!({"authenticated": false, "error": "token audiences is invalid for the target audiences"}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let answer = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "metadata": {}, "spec": review["spec"], "status": status});
    full(201, answer.to_string())
}

/// A GET forwarded to `to` (HTTP/1.0, the whole answer), as the API server's pod proxy does.
async fn forward_get(to: SocketAddr, path: &str) -> Response<Body> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let answer = async {
        let mut s = tokio::net::TcpStream::connect(to).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: pod\r\n\r\n").as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        std::io::Result::Ok(out)
    };
    match answer.await {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out).into_owned();
            let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(502);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
            full(code, body)
        }
        Err(e) => full(503, status(503, "ServiceUnavailable", &format!("error trying to reach service: {e}"))),
    }
}

/// `/api/v1/namespaces/NS/{configmaps,events}[/NAME]`: GET, create (POST), replace (PUT, with the
/// resourceVersion read: 409 when it changed) and merge PATCH, as the API server does; a reader's write is a
/// 403 naming the verb.
async fn objects(world: &Arc<Mutex<World>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let bearer = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let body: Value =
        serde_json::from_slice(&req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default())
            .unwrap_or_default();
    let mut w = world.lock().unwrap();
    w.requests.push(format!("{method} {path}"));
    let rest = path.strip_prefix("/api/v1/namespaces/").unwrap_or("");
    let (ns, resource, name) = match rest.split('/').collect::<Vec<_>>()[..] {
        [ns, res] => (ns.to_string(), res.to_string(), body["metadata"]["name"].as_str().unwrap_or("").to_string()),
        [ns, res, name] => (ns.to_string(), res.to_string(), name.to_string()),
        _ => return full(404, status(404, "NotFound", &format!("the server could not find {path}"))),
    };
    let verb = match method {
        hyper::Method::GET => "get",
        hyper::Method::POST => "create",
        hyper::Method::PUT => "update",
        hyper::Method::PATCH => "patch",
        _ => return full(405, status(405, "MethodNotAllowed", "method not allowed")),
    };
    if verb != "get" {
        if let Some(user) = w.readers.get(&bearer) {
            let message = format!(
                "{resource} \"{name}\" is forbidden: User \"{user}\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{ns}\""
            );
            return full(403, status(403, "Forbidden", &message));
        }
    }
    let key = (resource.clone(), ns.clone(), name.clone());
    let not_found = || full(404, status(404, "NotFound", &format!("{resource} \"{name}\" not found")));
    match verb {
        "get" => match w.objects.get(&key) {
            Some(o) => full(200, o.to_string()),
            None => not_found(),
        },
        "create" if w.objects.contains_key(&key) => {
            full(409, status(409, "AlreadyExists", &format!("{resource} \"{name}\" already exists")))
        }
        "patch" => {
            w.version += 1;
            let version = w.version;
            let Some(o) = w.objects.get_mut(&key) else { return not_found() };
            if let (Some(o), Some(patch)) = (o.as_object_mut(), body.as_object()) {
                for (k, v) in patch {
                    o.insert(k.clone(), v.clone());
                }
            }
            o["metadata"]["resourceVersion"] = json!(version.to_string());
            full(200, o.to_string())
        }
        _ => {
            let current = w.objects.get(&key).map(|c| c["metadata"]["resourceVersion"].clone());
            if verb == "update" {
                match current {
                    None => return not_found(),
                    Some(rv) if rv != body["metadata"]["resourceVersion"] => {
                        return full(409, status(409, "Conflict", "the object has been modified; please apply your changes to the latest version and try again"))
                    }
                    Some(_) => {}
                }
            }
            w.version += 1;
            let mut o = body;
            o["metadata"]["resourceVersion"] = json!(w.version.to_string());
            o["metadata"]["namespace"] = json!(ns);
            w.objects.insert(key, o.clone());
            full(if verb == "create" { 201 } else { 200 }, o.to_string())
        }
    }
}

fn route(world: &Arc<Mutex<World>>, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = query(req.uri().query().unwrap_or(""));
    let mut w = world.lock().unwrap();
    w.requests.push(req.uri().to_string());
    let w = &mut *w;
    let uri = req.uri().to_string();
    if let Some((code, body)) = w.answers.get(&uri).or_else(|| w.answers.get(&path)) {
        return full(*code, body.clone());
    }
    let namespace = path.strip_prefix("/api/v1/namespaces/").and_then(|r| r.strip_suffix("/pods"));
    if path != "/api/v1/pods" && namespace.is_none() {
        if path.contains("/proxy/") {
            return full(
                503,
                status(503, "ServiceUnavailable", "error trying to reach service: dial tcp: connection refused"),
            );
        }
        // One pod: `/api/v1/namespaces/NS/pods/NAME`.
        let one = path.strip_prefix("/api/v1/namespaces/").and_then(|r| r.split_once("/pods/"));
        if let Some((ns, name)) = one.filter(|(_, name)| !name.contains('/')) {
            let found = w.pods.iter().find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name);
            return match found {
                Some(pod) => full(200, pod.to_string()),
                None => full(404, status(404, "NotFound", &format!("pods \"{name}\" not found"))),
            };
        }
        return full(404, status(404, "NotFound", &format!("the server could not find {path}")));
    }
    let selector = q.get("labelSelector").map(String::as_str);
    if q.get("watch").is_some_and(|v| v == "true" || v == "1") {
        let (tx, rx) = mpsc::unbounded_channel::<Value>();
        w.watchers.push((namespace.map(str::to_string), tx));
        let selector = selector.map(str::to_string);
        let ns = namespace.map(str::to_string);
        let stream = futures_util::stream::unfold(rx, move |mut rx| {
            let (selector, ns) = (selector.clone(), ns.clone());
            async move {
                loop {
                    let event = rx.recv().await?;
                    if event["type"] != "ERROR" && !matches(&event["object"], ns.as_deref(), selector.as_deref()) {
                        continue;
                    }
                    let mut line = serde_json::to_vec(&event).unwrap();
                    line.push(b'\n');
                    return Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx));
                }
            }
        });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .unwrap();
    }
    let items: Vec<&Value> = w.pods.iter().filter(|p| matches(p, namespace, selector)).collect();
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": w.version.to_string()}, "items": items});
    full(200, list.to_string())
}

/// A running pod of `workload` (a Deployment's ReplicaSet) with `ip`, the sidecar's admin port named, and
/// the injected label.
pub fn pod(namespace: &str, name: &str, workload: &str, ip: &str, created: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": format!("uid-{namespace}-{name}-{ip}"),
            "creationTimestamp": created,
            "labels": {"app": workload, "pod-template-hash": "5f7c9d8b4", "pgwarden.io/injected": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{workload}-5f7c9d8b4"),
                                 "uid": "rs-uid", "controller": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "fieldsV1": {"f:metadata": {}}}]
        },
        "spec": {
            "nodeName": "node-a",
            "serviceAccountName": workload,
            "containers": [{"name": "app", "image": "app:1"}],
            "initContainers": [{"name": "pgwarden", "image": "pgwarden:test", "restartPolicy": "Always",
                                "ports": [{"name": "pgwarden-admin", "containerPort": 9187}]}]
        },
        "status": {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]
        }
    })
}
