//! Reading the fleet through the Kubernetes API server: list the injected pods, then GET each sidecar's
//! `/clients` and `/leaks` through the pod proxy (`/api/v1/namespaces/NS/pods/NAME:PORT/proxy/PATH`), so no
//! port-forward is needed. Needs `list` on pods and `get` on `pods/proxy` (the chart's fleet-reader role).
//!
//! At most `concurrency` pods are read at once, each within `timeout`; a pod that cannot be read is a
//! [`Outcome::Failed`] with the reason in words (RBAC, not ready, timed out, not a pgwarden), never an abort.

use super::{Outcome, PodReport};
use crate::k8s::inject::{ADMIN_PORT_NAME, INJECTED_LABEL};
use crate::views::stats::{ClientsResponse, LeaksResponse};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use std::time::Duration;

/// The sidecar's admin port when the pod does not name one `pgwarden-admin`.
pub const DEFAULT_ADMIN_PORT: u16 = 9187;

/// Which pods, and how to read them.
#[derive(Debug, Clone)]
pub struct Scope {
    /// `None`: all namespaces.
    pub namespace: Option<String>,
    /// A label selector; the default selects the pods the webhook injected.
    pub selector: String,
    pub timeout: Duration,
    pub concurrency: usize,
}

impl Scope {
    pub fn default_selector() -> String {
        format!("{INJECTED_LABEL}=true")
    }
}

/// A pod to read: where, and what the report falls back to when the sidecar does not say.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub namespace: String,
    pub pod: String,
    pub workload: String,
    pub port: u16,
    /// Why the pod is not ready, if it is not (reported with a failure, so the reason is plain).
    pub not_ready: Option<String>,
}

impl Target {
    pub fn of(pod: &Pod) -> Target {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let port = spec
            .into_iter()
            .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(ADMIN_PORT_NAME))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .unwrap_or(DEFAULT_ADMIN_PORT);
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".into());
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True");
        Target {
            namespace: meta.namespace.clone().unwrap_or_default(),
            pod: meta.name.clone().unwrap_or_default(),
            workload: crate::k8s::owner::workload(meta),
            port,
            not_ready: (!ready).then(|| format!("pod not ready (phase {phase})")),
        }
    }
}

/// The injected pods of the scope, every page.
pub async fn list(client: &kube::Client, scope: &Scope) -> anyhow::Result<Vec<Target>> {
    let api: Api<Pod> = match &scope.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut params = ListParams::default().labels(&scope.selector).limit(500);
    let mut targets = Vec::new();
    loop {
        let page = api.list(&params).await.map_err(|e| {
            let where_ = scope.namespace.as_deref().map_or("in any namespace".into(), |n| format!("in namespace {n}"));
            anyhow::anyhow!("cannot list pods {where_} ({}): {}", scope.selector, describe(&e))
        })?;
        targets.extend(page.items.iter().map(Target::of));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(targets),
        }
    }
}

/// Reads every target, `scope.concurrency` at a time; reports come back in the targets' order.
pub async fn read_all(client: &kube::Client, targets: &[Target], scope: &Scope) -> Vec<PodReport> {
    futures_util::stream::iter(targets.iter().map(|t| read_one(client, t, scope.timeout)))
        .buffered(scope.concurrency.max(1))
        .collect()
        .await
}

/// One pod's `/clients` and `/leaks`, or why not.
pub async fn read_one(client: &kube::Client, t: &Target, timeout: Duration) -> PodReport {
    let read = async {
        let clients: ClientsResponse = get(client, t, "clients").await?;
        let leaks: LeaksResponse = get(client, t, "leaks").await?;
        Ok::<_, String>((clients, leaks))
    };
    let outcome = match tokio::time::timeout(timeout, read).await {
        Ok(Ok((clients, leaks))) => {
            return PodReport::from_sidecar(&t.namespace, &t.pod, &t.workload, &clients, &leaks);
        }
        Ok(Err(reason)) => reason,
        Err(_) => format!("timed out after {}", crate::config::values::Timeout(Some(timeout))),
    };
    let reason = match &t.not_ready {
        Some(not_ready) => format!("{not_ready}: {outcome}"),
        None => outcome,
    };
    PodReport {
        namespace: t.namespace.clone(),
        pod: t.pod.clone(),
        workload: t.workload.clone(),
        outcome: Outcome::Failed { reason },
        identity_mismatch: None,
    }
}

/// The pod proxy path of one admin endpoint.
pub fn proxy_path(t: &Target, endpoint: &str) -> String {
    format!("/api/v1/namespaces/{}/pods/{}:{}/proxy/{endpoint}", t.namespace, t.pod, t.port)
}

pub async fn get<T: serde::de::DeserializeOwned>(
    client: &kube::Client,
    t: &Target,
    endpoint: &str,
) -> Result<T, String> {
    use crate::views::report::MAX_ANSWER;
    use http_body_util::{BodyExt, Limited};
    let request =
        http::Request::get(proxy_path(t, endpoint)).body(kube::client::Body::empty()).map_err(|e| e.to_string())?;
    let response =
        client.send(request).await.map_err(|e| format!("/{endpoint} through the API server: {}", describe(&e)))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_ANSWER).collect().await.map_err(|e| {
        format!("/{endpoint} on port {}: an answer over {} MiB, or cut short ({e})", t.port, MAX_ANSWER >> 20)
    })?;
    let body = body.to_bytes();
    match status.as_u16() {
        200..=299 => {}
        403 => {
            return Err(format!(
                "forbidden: this user may not get pods/proxy in namespace {} (kubectl auth can-i get pods/proxy -n {}; \
                 the chart's fleet-reader ClusterRole grants it)",
                t.namespace, t.namespace
            ))
        }
        404 => {
            let said = crate::text::printable(&api_message(&body)).into_owned();
            return Err(format!("nothing answers /{endpoint} on port {} (is the sidecar pgwarden? {said})", t.port));
        }
        code => {
            let said = crate::text::printable(&api_message(&body)).into_owned();
            return Err(format!("/{endpoint} through the API server: {said} ({code})"));
        }
    }
    crate::text::from_json_printable(&body)
        .map_err(|e| format!("/{endpoint} on port {} is not pgwarden's JSON: {e}", t.port))
}

/// The message of an API server error: a `Status` object's `message`, else the body's first 200 bytes.
fn api_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Status {
        message: String,
    }
    match serde_json::from_slice::<Status>(body) {
        Ok(s) => s.message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string(),
    }
}

/// A kube error in a line: the API's own message when it sent one.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        kube::Error::Api(s) => format!("HTTP {}", s.code),
        other => other.to_string(),
    }
}
