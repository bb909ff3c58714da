//! The webhook's HTTPS envelope (hyper 1 over rustls): `POST /mutate` takes an AdmissionReview v1 and
//! answers it, `GET /healthz` answers 200. Only unwrapping and wrapping happen here, plus reading the
//! ConfigMap a pod names; the decision is [`super::mutate`].

use super::annotations::{CONFIG, CONFIG_KEY};
use super::config::InjectConfig;
use crate::http_server::{Admitted, Connections, Limits};
use crate::tls::reloading::ReloadingCert;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// AdmissionReviews are small; anything larger is refused before it is read whole.
const MAX_BODY: usize = 4 << 20;

pub struct Injector {
    pub config: InjectConfig,
    /// For `pgwarden.io/config` ConfigMaps; `None` outside a cluster (such pods are refused with a reason).
    pub kube: Option<kube::Client>,
    /// The budget coordinator (`budgets.enabled`): answers `GET /v1/share`.
    pub coordinator: Option<crate::k8s::budget::coordinator::Coordinator>,
}

impl Injector {
    /// Answers one AdmissionReview (JSON in, JSON out).
    pub async fn review(&self, body: &[u8]) -> Result<Vec<u8>, String> {
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(body).map_err(|e| format!("not an AdmissionReview: {e}"))?;
        let req: AdmissionRequest<Pod> =
            review.try_into().map_err(|e| format!("AdmissionReview without a request: {e}"))?;
        let response = self.decide(&req).await;
        let mut review = serde_json::to_value(response.into_review()).map_err(|e| e.to_string())?;
        base64_patch(&mut review);
        serde_json::to_vec(&review).map_err(|e| e.to_string())
    }

    async fn decide(&self, req: &AdmissionRequest<Pod>) -> AdmissionResponse {
        let base = AdmissionResponse::from(req);
        let Some(pod) = &req.object else {
            return base;
        };
        let namespace = req.namespace.clone().or_else(|| pod.metadata.namespace.clone()).unwrap_or_default();
        let pod_name = pod.metadata.name.clone().or_else(|| pod.metadata.generate_name.clone()).unwrap_or_default();
        let configmap = match pod.metadata.annotations.as_ref().and_then(|a| a.get(CONFIG)) {
            Some(name) => match self.configmap(&namespace, name).await {
                Ok(text) => Some(text),
                Err(e) => return deny(base, &namespace, &pod_name, &e),
            },
            None => None,
        };
        match super::mutate(pod, &self.config, configmap.as_deref()) {
            Ok(None) => base,
            Ok(Some(ops)) => {
                let patch: json_patch::Patch =
                    serde_json::from_value(serde_json::Value::Array(ops)).expect("valid JSON patch");
                info!(namespace, pod = pod_name, "injecting the pgwarden sidecar");
                match base.with_patch(patch) {
                    Ok(r) => r,
                    Err(e) => AdmissionResponse::from(req).deny(format!("pgwarden: cannot encode the patch: {e}")),
                }
            }
            Err(e) => deny(base, &namespace, &pod_name, &e),
        }
    }

    async fn configmap(&self, namespace: &str, name: &str) -> Result<String, String> {
        let client = self.kube.clone().ok_or_else(|| {
            format!("annotation {CONFIG}: no Kubernetes API to read ConfigMap {namespace}/{name} from")
        })?;
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
        let cm = api
            .get(name)
            .await
            .map_err(|e| format!("annotation {CONFIG}: cannot read ConfigMap {namespace}/{name}: {e}"))?;
        cm.data
            .and_then(|mut d| d.remove(CONFIG_KEY))
            .ok_or_else(|| format!("annotation {CONFIG}: ConfigMap {namespace}/{name} has no key {CONFIG_KEY}"))
    }
}

/// The API server's `patch` is a `[]byte`, which JSON carries as base64; kube-core writes the bytes as a
/// number array, so it is re-encoded here to keep to the AdmissionReview v1 wire format.
fn base64_patch(review: &mut serde_json::Value) {
    use base64::Engine as _;
    let Some(patch) = review.pointer_mut("/response/patch") else { return };
    if let Some(bytes) = patch.as_array() {
        let bytes: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
        *patch = serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
}

fn deny(base: AdmissionResponse, namespace: &str, pod: &str, reason: &str) -> AdmissionResponse {
    warn!(namespace, pod, reason, "pod refused");
    base.deny(format!("pgwarden: {reason}"))
}

/// Serves HTTPS on `listener` until `stop`; the certificate is re-read when its files change.
pub async fn serve(
    injector: Arc<Injector>,
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    serve_with(injector, listener, cert, stop, Limits::default()).await
}

/// [`serve`] under `limits` (header and body read timeouts, connection lifetime, connection cap).
pub async fn serve_with(
    injector: Arc<Injector>,
    listener: TcpListener,
    cert: Arc<ReloadingCert>,
    stop: CancellationToken,
    limits: Limits,
) -> anyhow::Result<()> {
    let acceptor = TlsAcceptor::from(cert.server_config(b"http/1.1")?);
    let connections = Connections::new(&limits);
    let builder = crate::http_server::builder(&limits);
    let watcher = tokio::spawn(cert.clone().watch(Duration::from_secs(2)));
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match connections.admit() {
            Admitted::Yes { slot, shed } => {
                if shed {
                    debug!(%peer, "webhook connections at their cap: the oldest idle one closed for this one");
                }
                slot
            }
            Admitted::Full => {
                debug!(%peer, max = limits.max_connections, "webhook connections at their cap, each serving: closed");
                continue;
            }
        };
        let (acceptor, injector, builder) = (acceptor.clone(), injector.clone(), builder.clone());
        tokio::spawn(async move {
            let serve = async {
                let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(%peer, "TLS handshake timed out"),
                };
                let flag = slot.serving_flag();
                let service = service_fn(move |req| {
                    let (injector, flag) = (injector.clone(), flag.clone());
                    async move {
                        // A long poll for a share waits, and may be closed to make room (the sidecar asks again);
                        // an admission review or a probe is served to the end.
                        let long_poll = matches!(req.uri().path(), "/v1/share" | "/v1/policy");
                        let _serving = (!long_poll).then(|| flag.serving());
                        Ok::<_, Infallible>(route(&injector, req, limits.body_read_timeout).await)
                    }
                });
                let connection = builder.serve_connection(TokioIo::new(tls), service);
                match tokio::time::timeout(limits.connection_timeout, connection).await {
                    Ok(Err(e)) => debug!(%peer, error = %e, "connection error"),
                    Err(_) => debug!(%peer, "connection closed at its time limit"),
                    Ok(Ok(())) => {}
                }
            };
            tokio::select! {
                () = serve => {}
                () = slot.shed() => debug!(%peer, "idle webhook connection closed to make room for a new one"),
            }
        });
    }
    watcher.abort();
    Ok(())
}

async fn route(injector: &Injector, req: Request<Incoming>, body_timeout: Duration) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        (&Method::POST, "/mutate") => {
            let body = match tokio::time::timeout(body_timeout, Limited::new(req.into_body(), MAX_BODY).collect()).await
            {
                Ok(Ok(b)) => b.to_bytes(),
                Ok(Err(e)) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("{e}\n").into()),
                Err(_) => return reply(StatusCode::REQUEST_TIMEOUT, "text/plain", "request body too slow\n".into()),
            };
            match injector.review(&body).await {
                Ok(json) => reply(StatusCode::OK, "application/json", json),
                Err(e) => reply(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n").into()),
            }
        }
        (&Method::GET, "/v1/share") => match &injector.coordinator {
            Some(coordinator) => {
                let auth = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let r = coordinator.share(auth, req.uri().query().unwrap_or("")).await;
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let kind = if r.status == 200 { "application/json" } else { "text/plain" };
                reply(status, kind, r.body.into_bytes())
            }
            None => reply(StatusCode::NOT_FOUND, "text/plain", "budgets are not enabled in this injector\n".into()),
        },
        (&Method::GET, "/v1/policy") => match &injector.coordinator {
            Some(coordinator) => {
                let auth = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok());
                let r = crate::k8s::control::served::policy(coordinator, auth, req.uri().query().unwrap_or("")).await;
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let kind = if r.status == 200 { "application/json" } else { "text/plain" };
                reply(status, kind, r.body.into_bytes())
            }
            None => {
                reply(StatusCode::NOT_FOUND, "text/plain", "the control plane is not enabled in this injector\n".into())
            }
        },
        (&Method::POST, "/v1/events") => match &injector.coordinator {
            Some(coordinator) => {
                let auth =
                    req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_string);
                let query = req.uri().query().unwrap_or("").to_string();
                let limited = Limited::new(req.into_body(), crate::k8s::control::events::MAX_REPORT).collect();
                let body = match tokio::time::timeout(body_timeout, limited).await {
                    Ok(Ok(b)) => b.to_bytes(),
                    Ok(Err(e)) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "text/plain", format!("{e}\n").into()),
                    Err(_) => {
                        return reply(StatusCode::REQUEST_TIMEOUT, "text/plain", "request body too slow\n".into())
                    }
                };
                let r = crate::k8s::control::served::events(coordinator, auth.as_deref(), &query, &body).await;
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                reply(status, "text/plain", r.body.into_bytes())
            }
            None => {
                reply(StatusCode::NOT_FOUND, "text/plain", "the control plane is not enabled in this injector\n".into())
            }
        },
        (_, "/healthz" | "/mutate" | "/v1/share" | "/v1/policy" | "/v1/events") => {
            reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n".into())
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; endpoints: POST /mutate, GET /healthz, GET /v1/share, GET /v1/policy, POST /v1/events\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}
