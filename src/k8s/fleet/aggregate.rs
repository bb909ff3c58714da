//! From per-pod reports to the fleet's summary: per workload and per client key across pods, leakers first,
//! and the verdict's evidence. A pure function, so every case (duplicates, failed pods, one client key in two
//! workloads) is a unit test.

use super::{Evidence, Outcome, PodReport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Suspect connections cited per workload in the verdict.
pub const EVIDENCE_PER_WORKLOAD: usize = 5;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Pods whose report was read.
    pub pods_read: usize,
    pub failed: Vec<FailedPod>,
    /// Pods that named themselves otherwise than the API server does (`namespace/pod: what it said`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identity_mismatches: Vec<String>,
    /// Leaking workloads first (most suspects, then most leaking pods), then by open connections.
    pub workloads: Vec<WorkloadSummary>,
    /// Per (workload, client key) across the workload's pods, in the same order.
    pub clients: Vec<ClientSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailedPod {
    pub namespace: String,
    pub pod: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkloadSummary {
    pub namespace: String,
    pub workload: String,
    /// Pods read.
    pub pods: u32,
    pub open: u32,
    pub suspects: u32,
    pub refused_total: u64,
    pub oldest_idle_in_transaction_seconds: Option<f64>,
    /// Pods with suspects, worst first: (pod, suspects).
    pub leaking_pods: Vec<PodSuspects>,
    /// Client keys with suspects.
    pub leaking_clients: Vec<String>,
    /// The worst suspects of the worst pods (at most [`EVIDENCE_PER_WORKLOAD`]): longest in their state first.
    pub evidence: Vec<Evidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSuspects {
    pub pod: String,
    pub suspects: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientSummary {
    pub namespace: String,
    pub workload: String,
    pub client: String,
    /// Pods where this client has connections or counters.
    pub pods: u32,
    pub open: u32,
    pub suspects: u32,
    pub refused_total: u64,
    pub oldest_idle_in_transaction_seconds: Option<f64>,
    pub leak_reasons: Vec<String>,
}

impl Summary {
    pub fn leaking(&self) -> impl Iterator<Item = &WorkloadSummary> {
        self.workloads.iter().filter(|w| w.suspects > 0)
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, y) => x.or(y),
    }
}

/// Summarises `reports`. A pod reported twice (the same namespace and name) counts once: its first report
/// that was read, else its first failure. Workloads are told apart by namespace and name, and clients by
/// workload too, so one client key in two workloads is two rows.
pub fn summarize(reports: &[PodReport]) -> Summary {
    let mut chosen: BTreeMap<(&str, &str), &PodReport> = BTreeMap::new();
    for r in reports {
        let slot = chosen.entry((&r.namespace, &r.pod)).or_insert(r);
        if matches!(slot.outcome, Outcome::Failed { .. }) && matches!(r.outcome, Outcome::Read { .. }) {
            *slot = r;
        }
    }
    let mut failed = Vec::new();
    let mut workloads: BTreeMap<(String, String), WorkloadSummary> = BTreeMap::new();
    let mut clients: BTreeMap<(String, String, String), (ClientSummary, BTreeSet<String>)> = BTreeMap::new();
    let mut evidence: BTreeMap<(String, String), Vec<Evidence>> = BTreeMap::new();
    let mut pods_read = 0;
    let mut identity_mismatches = Vec::new();
    for r in chosen.values() {
        if let Some(m) = &r.identity_mismatch {
            identity_mismatches.push(format!("{}/{}: {m}", r.namespace, r.pod));
        }
        let (figures, pod_evidence) = match &r.outcome {
            Outcome::Failed { reason } => {
                failed.push(FailedPod { namespace: r.namespace.clone(), pod: r.pod.clone(), reason: reason.clone() });
                continue;
            }
            Outcome::Read { clients, evidence } => (clients, evidence),
        };
        pods_read += 1;
        let wkey = (r.namespace.clone(), r.workload.clone());
        let w = workloads.entry(wkey.clone()).or_insert_with(|| WorkloadSummary {
            namespace: r.namespace.clone(),
            workload: r.workload.clone(),
            pods: 0,
            open: 0,
            suspects: 0,
            refused_total: 0,
            oldest_idle_in_transaction_seconds: None,
            leaking_pods: Vec::new(),
            leaking_clients: Vec::new(),
            evidence: Vec::new(),
        });
        w.pods += 1;
        let mut pod_suspects = 0;
        for f in figures {
            w.open += f.open;
            w.suspects += f.suspects;
            w.refused_total += f.refused_total;
            w.oldest_idle_in_transaction_seconds =
                max_opt(w.oldest_idle_in_transaction_seconds, f.oldest_idle_in_transaction_seconds);
            pod_suspects += f.suspects;
            let ckey = (r.namespace.clone(), r.workload.clone(), f.client.clone());
            let (c, reasons) = clients.entry(ckey).or_insert_with(|| {
                let c = ClientSummary {
                    namespace: r.namespace.clone(),
                    workload: r.workload.clone(),
                    client: f.client.clone(),
                    pods: 0,
                    open: 0,
                    suspects: 0,
                    refused_total: 0,
                    oldest_idle_in_transaction_seconds: None,
                    leak_reasons: Vec::new(),
                };
                (c, BTreeSet::new())
            });
            c.pods += 1;
            c.open += f.open;
            c.suspects += f.suspects;
            c.refused_total += f.refused_total;
            c.oldest_idle_in_transaction_seconds =
                max_opt(c.oldest_idle_in_transaction_seconds, f.oldest_idle_in_transaction_seconds);
            reasons.extend(f.leak_reasons.iter().cloned());
        }
        if pod_suspects > 0 {
            w.leaking_pods.push(PodSuspects { pod: r.pod.clone(), suspects: pod_suspects });
        }
        evidence.entry(wkey).or_default().extend(pod_evidence.iter().cloned());
    }
    let mut clients: Vec<ClientSummary> = clients
        .into_values()
        .map(|(mut c, reasons)| {
            c.leak_reasons = reasons.into_iter().collect();
            c
        })
        .collect();
    for c in clients.iter().filter(|c| c.suspects > 0) {
        if let Some(w) = workloads.get_mut(&(c.namespace.clone(), c.workload.clone())) {
            w.leaking_clients.push(c.client.clone());
        }
    }
    let mut workloads: Vec<WorkloadSummary> = workloads
        .into_iter()
        .map(|(key, mut w)| {
            w.leaking_pods.sort_by(|a, b| b.suspects.cmp(&a.suspects).then_with(|| a.pod.cmp(&b.pod)));
            let rank: BTreeMap<&str, usize> =
                w.leaking_pods.iter().enumerate().map(|(i, p)| (p.pod.as_str(), i)).collect();
            let mut ev = evidence.remove(&key).unwrap_or_default();
            // Worst pods first; within a pod, live suspects before reclaimed ones, longest in state first.
            ev.sort_by(|a, b| {
                let r = |e: &Evidence| rank.get(e.pod.as_str()).copied().unwrap_or(usize::MAX);
                r(a).cmp(&r(b))
                    .then(a.closed_reason.is_some().cmp(&b.closed_reason.is_some()))
                    .then(b.state_seconds.total_cmp(&a.state_seconds))
            });
            ev.truncate(EVIDENCE_PER_WORKLOAD);
            w.evidence = ev;
            w
        })
        .collect();
    let order = |a: &WorkloadSummary, b: &WorkloadSummary| {
        b.suspects
            .cmp(&a.suspects)
            .then(b.leaking_pods.len().cmp(&a.leaking_pods.len()))
            .then(b.open.cmp(&a.open))
            .then_with(|| (&a.namespace, &a.workload).cmp(&(&b.namespace, &b.workload)))
    };
    workloads.sort_by(order);
    let position: BTreeMap<(&str, &str), usize> =
        workloads.iter().enumerate().map(|(i, w)| ((w.namespace.as_str(), w.workload.as_str()), i)).collect();
    clients.sort_by(|a, b| {
        let p = |c: &ClientSummary| position.get(&(c.namespace.as_str(), c.workload.as_str())).copied();
        p(a).cmp(&p(b))
            .then(b.suspects.cmp(&a.suspects))
            .then(b.open.cmp(&a.open))
            .then_with(|| a.client.cmp(&b.client))
    });
    failed.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
    Summary { pods_read, failed, identity_mismatches, workloads, clients }
}

#[cfg(test)]
mod tests;
