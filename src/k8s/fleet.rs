//! `pgwarden fleet`: the leak picture of every injected pod at once, read from a laptop through the
//! Kubernetes API server, or from Prometheus.
//!
//! - `read`: lists the pods labelled `pgwarden.io/injected=true` and GETs each sidecar's `/clients` and
//!   `/leaks` through the API server's pod proxy, bounded in concurrency and time per pod;
//! - `prometheus`: the same figures from Prometheus' HTTP API (one query per figure, not one read per pod);
//! - `aggregate`: a pure function from per-pod reports to the summary per workload and per client;
//! - `render`: the text the commands print.
//!
//! The report types below are what both sources produce and what `aggregate` consumes.

pub mod aggregate;
pub mod prometheus;
pub mod read;
pub mod render;

use serde::{Deserialize, Serialize};

/// One client of one pod, as much as both sources know.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientFigures {
    pub client: String,
    pub open: u32,
    pub suspects: u32,
    pub refused_total: u64,
    pub oldest_idle_in_transaction_seconds: Option<f64>,
    /// Distinct reasons of its suspects (empty from Prometheus, which does not export them).
    #[serde(default)]
    pub leak_reasons: Vec<String>,
}

/// A suspect connection of one pod: the evidence a verdict cites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub pod: String,
    pub client: String,
    pub backend_pid: Option<i32>,
    pub state: String,
    pub state_seconds: f64,
    pub age_seconds: f64,
    pub last_statement: Option<String>,
    /// The query tags of where it was borrowed, else of its last statement (`k=v k=v`; absent from older
    /// sidecars and untagged statements).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub leak_reason: Option<String>,
    /// Set when pgwarden already reclaimed it: how it ended.
    pub closed_reason: Option<String>,
}

/// What one pod's sidecar said, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodReport {
    /// From the API server, never from what the pod says about itself.
    pub namespace: String,
    pub pod: String,
    /// The pod's owner chain, from the API server.
    pub workload: String,
    pub outcome: Outcome,
    /// The sidecar named itself otherwise than the API server does (shown, never believed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_mismatch: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Read { clients: Vec<ClientFigures>, evidence: Vec<Evidence> },
    Failed { reason: String },
}

impl PodReport {
    /// The report of a pod read through its admin API.
    pub fn from_sidecar(
        namespace: &str,
        pod: &str,
        workload: &str,
        clients: &crate::views::stats::ClientsResponse,
        leaks: &crate::views::stats::LeaksResponse,
    ) -> PodReport {
        let figures = clients
            .clients
            .iter()
            .map(|c| ClientFigures {
                client: c.client.clone(),
                open: c.open,
                suspects: c.suspect_connections,
                refused_total: c.refused_total,
                oldest_idle_in_transaction_seconds: c.oldest_idle_in_transaction_seconds,
                leak_reasons: c.leak_reasons.clone(),
            })
            .collect();
        let evidence = leaks
            .leaks
            .iter()
            .flat_map(|l| l.suspects.iter())
            .map(|s| Evidence {
                pod: pod.to_string(),
                client: s.client.clone(),
                backend_pid: s.backend_pid,
                state: s.state.clone(),
                state_seconds: s.state_seconds,
                age_seconds: s.age_seconds,
                last_statement: s.last_statement.clone(),
                tags: crate::views::tags::code_of(s),
                trace_id: s.trace_id.clone(),
                leak_reason: s.leak_reason.clone(),
                closed_reason: s.closed_reason.clone(),
            })
            .collect();
        // A pod can say anything about itself: the API server's namespace and workload are the ones shown.
        let said = (clients.identity.namespace.as_deref(), clients.identity.workload.as_deref());
        let identity_mismatch = match said {
            (Some(ns), _) if ns != namespace => Some(format!("says it is in namespace {ns}")),
            (_, Some(w)) if w != workload => Some(format!("says it belongs to workload {w}")),
            _ => None,
        }
        .map(|said| format!("{said}; the API server says {namespace}/{workload} (shown)"));
        PodReport {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            workload: workload.to_string(),
            outcome: Outcome::Read { clients: figures, evidence },
            identity_mismatch,
        }
    }
}
