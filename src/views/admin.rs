//! The admin HTTP server (hyper 1, HTTP/1.1), read-only. Endpoints:
//!
//! | path | content |
//! |---|---|
//! | `GET /metrics` | Prometheus text format |
//! | `GET /healthz` | liveness: 200 while the process serves |
//! | `GET /readyz` | readiness: 200, or 503 while draining (and in gateway mode until pods were first listed); never depends on the upstream's health |
//! | `GET /clients` | `{"identity": {...}, "clients": [...]}` |
//! | `GET /connections` | `{"connections": [...]}` |
//! | `GET /leaks` | `{"leaks": [...]}`, worst first |
//!
//! Paths are matched in `Admin::route`, the one place that knows them. Other methods get 405.
//!
//! The server runs on a thread of its own (its own single-threaded runtime): rendering a view of 10,000
//! connections takes milliseconds, and on the relay's runtime thread every session in flight would wait
//! for it at each scrape. Here a scrape costs the relay only the moments it takes the registry's, the
//! clients' and the detector's locks to copy what it shows.

use super::metrics::Exporter;
use super::stats::Snapshot;
use crate::http_server::{Admitted, Connections, Limits};
use crate::state::State;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Serves until `stop` is cancelled.
pub async fn serve(state: Arc<State>, listener: TcpListener, stop: CancellationToken) {
    serve_with(state, listener, stop, Limits::default()).await
}

/// [`serve`] under `limits` (header read timeout, connection lifetime, connection cap), on a thread of its
/// own; returns when `stop` is cancelled and the thread is done (dropping this future stops it too).
pub async fn serve_with(state: Arc<State>, listener: TcpListener, stop: CancellationToken, limits: Limits) {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => return warn!(error = %e, "admin server: cannot move its listener to its thread"),
    };
    let stop = stop.child_token();
    let _stop_when_dropped = stop.clone().drop_guard();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new().name("pgwarden-admin".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return warn!(error = %e, "admin server: cannot start its runtime"),
        };
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept_loop(state, listener, stop, limits).await,
                Err(e) => warn!(error = %e, "admin server: cannot take its listener"),
            }
        });
        drop(done);
    });
    if let Err(e) = thread {
        return warn!(error = %e, "admin server: cannot start its thread");
    }
    let _ = finished.await;
}

async fn accept_loop(state: Arc<State>, listener: TcpListener, stop: CancellationToken, limits: Limits) {
    let admin = Arc::new(Admin { exporter: Exporter::new(&state), state });
    let connections = Connections::new(&limits);
    let builder = crate::http_server::builder(&limits);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match connections.admit() {
            Admitted::Yes { slot, shed } => {
                if shed {
                    admin.state.local.admin_connections_shed.with_label_values(&["idle_closed"]).inc();
                }
                slot
            }
            Admitted::Full => {
                admin.state.local.admin_connections_shed.with_label_values(&["refused"]).inc();
                debug!(%peer, max = limits.max_connections, "admin connections at their cap, each serving: closed");
                continue;
            }
        };
        let (admin, builder) = (admin.clone(), builder.clone());
        tokio::spawn(async move {
            let flag = slot.serving_flag();
            let service = service_fn(move |req| {
                let (admin, serving) = (admin.clone(), flag.serving());
                async move {
                    let _serving = serving;
                    Ok::<_, Infallible>(admin.route(&req))
                }
            });
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                served = tokio::time::timeout(limits.connection_timeout, connection) => match served {
                    Ok(Err(e)) => debug!(%peer, error = %e, "admin connection error"),
                    Err(_) => debug!(%peer, "admin connection closed at its time limit"),
                    Ok(Ok(())) => {}
                },
                _ = slot.shed() => debug!(%peer, "idle admin connection closed to make room for a new one"),
            }
        });
    }
}

/// What the admin server answers from: the shared state and the metrics exporter.
struct Admin {
    state: Arc<State>,
    exporter: Exporter,
}

impl Admin {
    /// Answers one request.
    fn route(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        const PATHS: [&str; 7] = ["/metrics", "/healthz", "/readyz", "/clients", "/connections", "/leaks", "/policy"];
        let state = &self.state;
        let path = req.uri().path();
        if !PATHS.contains(&path) {
            return text(StatusCode::NOT_FOUND, format!("not found; endpoints: {}\n", PATHS.join(" ")));
        }
        if req.method() != Method::GET && req.method() != Method::HEAD {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: use GET\n".into());
            r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        match path {
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" if state.draining() => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n".into()),
            "/readyz" if state.peers.as_ref().is_some_and(|p| !p.synced()) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway mode: waiting for the first list of pods from the Kubernetes API\n".into(),
            ),
            "/readyz" => text(StatusCode::OK, "ready\n".into()),
            "/metrics" => {
                let max_tracked = state.settings().config.max_tracked_clients as usize;
                let body = self.exporter.render(&Snapshot::take(state), max_tracked);
                let mut r = text(StatusCode::OK, body);
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
                r
            }
            "/clients" => json(&Snapshot::take(state).clients_response(&state.pod)),
            "/connections" => json(&Snapshot::take(state).connections_response()),
            "/policy" => {
                let settings = state.settings();
                let url = settings.config.control.url.clone();
                json(&state.live.view(url, &settings.config, std::time::Instant::now()))
            }
            _ => json(&Snapshot::take(state).leaks_response()),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).expect("stats serialize");
    let mut r = Response::new(Full::new(Bytes::from(body)));
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
