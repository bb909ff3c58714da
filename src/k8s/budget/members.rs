//! The coordinator's view of the injected pods, grouped by workload, and each pod's answer.
//!
//! Owns: which pods are members of their workload's budget and the index by workload. A member is a pod
//! scheduled to a node that has not ended: also one that is not ready yet (its application may need a
//! connection to become ready, so leaving it out could keep it unready forever) and one that is terminating
//! (it holds its connections until it is gone, so its share is handed on only then: shares never sum past
//! the budget during a rollout). Every change wakes the long polls (`changes`).

use crate::budget::lease::ShareAnswer;
use crate::budget::share::{share_at, MemberKey};
use crate::budget::spec::{self, Entry, BUDGET_ANNOTATION, RECLAIM_ANNOTATION};
use crate::k8s::owner;
use crate::k8s::pods::PodSink;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::RwLock;
use tokio::sync::watch;

/// What the coordinator keeps of one pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub key: MemberKey,
    pub namespace: String,
    pub workload: String,
    pub budget_annotation: Option<String>,
    pub reclaim_annotation: Option<String>,
    /// Its `pgwarden.io/*` annotations (the live policy applies them over the chart values).
    pub annotations: std::collections::BTreeMap<String, String>,
}

type WorkloadKey = (String, String);

#[derive(Default)]
struct Inner {
    by_uid: HashMap<String, Member>,
    by_workload: HashMap<WorkloadKey, BTreeSet<MemberKey>>,
    /// (namespace, pod name) → uid.
    by_pod: HashMap<(String, String), String>,
}

impl Inner {
    fn insert(&mut self, m: Member) {
        self.remove(&m.key.uid);
        self.by_workload.entry((m.namespace.clone(), m.workload.clone())).or_default().insert(m.key.clone());
        self.by_pod.insert((m.namespace.clone(), m.key.name.clone()), m.key.uid.clone());
        self.by_uid.insert(m.key.uid.clone(), m);
    }

    fn remove(&mut self, uid: &str) -> bool {
        let Some(m) = self.by_uid.remove(uid) else { return false };
        let wk = (m.namespace.clone(), m.workload.clone());
        if let Some(set) = self.by_workload.get_mut(&wk) {
            set.remove(&m.key);
            if set.is_empty() {
                self.by_workload.remove(&wk);
            }
        }
        let pk = (m.namespace, m.key.name);
        if self.by_pod.get(&pk).is_some_and(|u| u == uid) {
            self.by_pod.remove(&pk);
        }
        true
    }
}

/// The members of every workload, and the budget entries to share out.
pub struct Members {
    entries: Vec<Entry>,
    inner: RwLock<Inner>,
    synced: AtomicBool,
    changes: watch::Sender<u64>,
}

/// Why there is no answer for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoAnswer {
    /// The pods have not been listed yet.
    NotSynced,
    /// No injected, scheduled, unfinished pod of that name (yet).
    UnknownPod,
}

impl Members {
    pub fn new(entries: Vec<Entry>) -> Members {
        Members { entries, inner: RwLock::default(), synced: AtomicBool::new(false), changes: watch::Sender::new(0) }
    }

    /// Resolves at the next change to any member.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    pub fn len(&self) -> usize {
        self.read().by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record of the pod `namespace/name`.
    pub fn member(&self, namespace: &str, name: &str) -> Result<Member, NoAnswer> {
        if !self.synced() {
            return Err(NoAnswer::NotSynced);
        }
        let inner = self.read();
        let uid = inner.by_pod.get(&(namespace.to_string(), name.to_string())).ok_or(NoAnswer::UnknownPod)?;
        inner.by_uid.get(uid).cloned().ok_or(NoAnswer::UnknownPod)
    }

    /// The answer for the pod `namespace/name`, and its uid.
    pub fn answer(&self, namespace: &str, name: &str) -> Result<(String, ShareAnswer), NoAnswer> {
        if !self.synced() {
            return Err(NoAnswer::NotSynced);
        }
        let inner = self.read();
        let uid = inner.by_pod.get(&(namespace.to_string(), name.to_string())).ok_or(NoAnswer::UnknownPod)?;
        let me = inner.by_uid.get(uid).ok_or(NoAnswer::UnknownPod)?;
        let group = inner.by_workload.get(&(me.namespace.clone(), me.workload.clone())).ok_or(NoAnswer::UnknownPod)?;
        let annotations = group
            .iter()
            .filter_map(|k| inner.by_uid.get(&k.uid))
            .map(|m| (m.budget_annotation.as_deref(), m.reclaim_annotation.as_deref()));
        let budget = spec::budget_of(&self.entries, &me.namespace, &me.workload, annotations);
        let rank = group.iter().position(|k| k == &me.key).unwrap_or(0);
        let answer = ShareAnswer {
            namespace: me.namespace.clone(),
            workload: me.workload.clone(),
            share: budget.as_ref().map(|b| share_at(b.max_connections, group.len(), rank)),
            max_connections: budget.as_ref().map(|b| b.max_connections),
            reclaim_idle: budget.as_ref().is_some_and(|b| b.reclaim_idle),
            budget: budget.map(|b| b.name),
            pods: group.len() as u32,
        };
        Ok((uid.clone(), answer))
    }

    fn changed(&self) {
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The member record of a pod: scheduled, not ended (terminating pods stay members until deleted).
pub fn member(pod: &Pod) -> Option<Member> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref()?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) || spec.node_name.as_deref().is_none_or(str::is_empty) {
        return None;
    }
    let annotation = |k: &str| meta.annotations.as_ref().and_then(|a| a.get(k)).cloned();
    Some(Member {
        key: MemberKey {
            created: meta.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
            name: meta.name.clone()?,
            uid: meta.uid.clone()?,
        },
        namespace: meta.namespace.clone()?,
        workload: owner::workload(meta),
        budget_annotation: annotation(BUDGET_ANNOTATION),
        reclaim_annotation: annotation(RECLAIM_ANNOTATION),
        annotations: meta
            .annotations
            .iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(crate::k8s::inject::annotations::PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

impl PodSink for Members {
    type Record = Member;

    fn record(pod: &Pod) -> Option<Member> {
        member(pod)
    }

    fn apply(&self, record: Member) {
        let mut inner = self.write();
        if inner.by_uid.get(&record.key.uid) == Some(&record) {
            return;
        }
        inner.insert(record);
        drop(inner);
        self.changed();
    }

    fn remove(&self, uid: &str) {
        let removed = self.write().remove(uid);
        if removed {
            self.changed();
        }
    }

    fn replace_scope(&self, scope: Option<&str>, records: Vec<Member>) {
        let mut inner = self.write();
        let stale: Vec<String> = inner
            .by_uid
            .values()
            .filter(|m| scope.is_none_or(|ns| m.namespace == ns))
            .map(|m| m.key.uid.clone())
            .collect();
        for uid in stale {
            inner.remove(&uid);
        }
        for r in records {
            inner.insert(r);
        }
        drop(inner);
        self.changed();
    }

    fn mark_synced(&self) {
        self.synced.store(true, Relaxed);
        self.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::spec::Match;

    fn pod(ns: &str, name: &str, rs: &str, created: i64, annotations: &[(&str, &str)]) -> Member {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{name}"),
                "creationTimestamp": format!("2026-01-01T00:00:{created:02}Z"),
                "labels": {"pod-template-hash": "5d9f7c8b6"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "rs", "controller": true}],
            },
            "spec": {"nodeName": "node-1", "containers": []},
            "status": {"phase": "Running"},
        }))
        .unwrap();
        p.metadata.annotations = Some(annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        member(&p).unwrap()
    }

    fn entries() -> Vec<Entry> {
        vec![Entry {
            name: Some("api".into()),
            matches: Match { namespace: "shop".into(), workload: "api".into() },
            max_connections: 6,
            reclaim_idle: true,
            min_pods: None,
        }]
    }

    #[test]
    fn shares_follow_the_pods_of_the_workload() {
        let m = Members::new(entries());
        assert_eq!(m.answer("shop", "api-a"), Err(NoAnswer::NotSynced));
        let rs = "api-5d9f7c8b6";
        m.replace_scope(
            None,
            vec![pod("shop", "api-a", rs, 1, &[]), pod("shop", "api-b", rs, 2, &[]), pod("shop", "api-c", rs, 3, &[])],
        );
        m.mark_synced();
        let share = |name: &str| m.answer("shop", name).map(|(_, a)| a.share.unwrap());
        assert_eq!([share("api-a"), share("api-b"), share("api-c")], [Ok(2), Ok(2), Ok(2)]);
        let (_, a) = m.answer("shop", "api-a").unwrap();
        assert_eq!(
            (a.budget.as_deref(), a.max_connections, a.pods, a.reclaim_idle, a.workload.as_str()),
            (Some("api"), Some(6), 3, true, "api")
        );
        let mut rx = m.subscribe();
        rx.borrow_and_update();
        m.apply(pod("shop", "api-d", rs, 4, &[]));
        assert!(rx.has_changed().unwrap(), "a new pod wakes the long polls");
        assert_eq!([share("api-a"), share("api-b"), share("api-c"), share("api-d")], [Ok(2), Ok(2), Ok(1), Ok(1)]);
        m.remove("uid-api-a");
        assert_eq!([share("api-b"), share("api-c"), share("api-d")], [Ok(2), Ok(2), Ok(2)]);
        assert_eq!(m.answer("shop", "api-a"), Err(NoAnswer::UnknownPod));
    }

    #[test]
    fn annotation_budgets_and_workloads_without_one() {
        let m = Members::new(entries());
        m.replace_scope(
            None,
            vec![
                pod("jobs", "w-1", "worker-6c8d9f7b5", 1, &[(BUDGET_ANNOTATION, "5")]),
                pod("jobs", "w-2", "worker-6c8d9f7b5", 2, &[(BUDGET_ANNOTATION, "3")]),
                pod("jobs", "x-1", "other-6c8d9f7b5", 1, &[]),
            ],
        );
        m.mark_synced();
        let (_, a) = m.answer("jobs", "w-1").unwrap();
        assert_eq!((a.budget.as_deref(), a.max_connections, a.share), (Some("annotation"), Some(3), Some(2)));
        let (_, a) = m.answer("jobs", "x-1").unwrap();
        assert_eq!((a.budget, a.share), (None, None), "no budget: no cap");
        let unscheduled: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "jobs", "uid": "u"}, "spec": {"containers": []}
        }))
        .unwrap();
        assert!(member(&unscheduled).is_none());
    }
}
