//! The overrides ConfigMap (in the injector's namespace, `pgwarden-overrides` unless the chart names
//! another): each data key is a namespace (`shop`) or a namespace and a workload (`shop.image-processor`),
//! each value a YAML policy patch (`livepolicy::PolicyPatch`). The chart renders it from values; `pgwarden
//! fleet cap|reclaim` edit it; who may change it is who may update that ConfigMap.
//!
//! Owns: reading the data into overrides by namespace and workload (a bad entry is reported and left out,
//! the rest apply), dropping what has expired (a cap past its `until`, a reclaim older than
//! [`RECLAIM_SERVED`]), and the injector's poll of the ConfigMap ([`Holder::run`], every [`POLL`]),
//! which wakes the long polls when what is served changes.

use crate::livepolicy::{PolicyPatch, Sourced};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the injector reads the ConfigMap (a change reaches the sidecars within this and a moment).
pub const POLL: Duration = Duration::from_secs(1);
/// How long a reclaim is served after it was asked: sidecars that are reachable act on it within seconds;
/// a pod started later has no connection that old.
pub const RECLAIM_SERVED: Duration = Duration::from_secs(600);
/// The ConfigMap's default name.
pub const DEFAULT_NAME: &str = "pgwarden-overrides";

/// The overrides in force, by (namespace, workload); a namespace's own under workload `None`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    by_key: BTreeMap<(String, Option<String>), Sourced>,
    /// Entries left out, with why (logged when they change).
    pub problems: Vec<String>,
}

/// The data key of a workload's (or, without one, a namespace's) entry.
pub fn key_of(namespace: &str, workload: Option<&str>) -> String {
    match workload {
        Some(w) => format!("{namespace}.{w}"),
        None => namespace.to_string(),
    }
}

/// Seconds since the epoch of an RFC 3339 time.
pub fn unix_of(text: &str) -> Option<i64> {
    text.parse::<Timestamp>().ok().map(|t| t.as_second())
}

impl Overrides {
    /// The overrides `data` holds at `now` (seconds since the epoch); `origin` names the ConfigMap.
    pub fn parse(origin: &str, data: &BTreeMap<String, String>, now: i64) -> Overrides {
        let mut out = Overrides::default();
        for (key, text) in data {
            let source = format!("{origin} key {key}");
            let (namespace, workload) = match key.split_once('.') {
                Some((ns, w)) => (ns.to_string(), Some(w.to_string())),
                None => (key.clone(), None),
            };
            if namespace.is_empty() || workload.as_deref() == Some("") {
                out.problems.push(format!("{source}: not NAMESPACE or NAMESPACE.WORKLOAD"));
                continue;
            }
            let mut patch: PolicyPatch = match serde_norway::from_str(text) {
                Ok(p) => p,
                Err(e) => {
                    out.problems.push(format!("{source}: {e}"));
                    continue;
                }
            };
            if let Some(until) = patch.cap.as_ref().and_then(|c| c.until.as_deref()) {
                match unix_of(until) {
                    Some(t) if t <= now => patch.cap = None,
                    Some(_) => {}
                    None => {
                        out.problems.push(format!("{source}: cap.until {until:?} is not an RFC 3339 time"));
                        patch.cap = None;
                    }
                }
            }
            if let Some(at) = patch.reclaim.as_ref().map(|r| r.at.clone()) {
                match unix_of(&at) {
                    Some(t) if now.saturating_sub(t) > RECLAIM_SERVED.as_secs() as i64 => patch.reclaim = None,
                    Some(_) => {}
                    None => {
                        out.problems.push(format!("{source}: reclaim.at {at:?} is not an RFC 3339 time"));
                        patch.reclaim = None;
                    }
                }
            }
            if patch != PolicyPatch::default() {
                out.by_key.insert((namespace, workload), Sourced { source, patch });
            }
        }
        out
    }

    /// A pod's overrides: its namespace's, then its workload's.
    pub fn for_pod(&self, namespace: &str, workload: &str) -> Vec<Sourced> {
        [None, Some(workload.to_string())]
            .into_iter()
            .filter_map(|w| self.by_key.get(&(namespace.to_string(), w)).cloned())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The overrides the injector serves, kept fresh by [`Holder::run`].
pub struct Holder {
    current: RwLock<Overrides>,
    changes: watch::Sender<u64>,
    /// Set once the ConfigMap was read (or found absent) once.
    synced: std::sync::atomic::AtomicBool,
}

impl Default for Holder {
    fn default() -> Self {
        Holder { current: RwLock::default(), changes: watch::Sender::new(0), synced: Default::default() }
    }
}

impl Holder {
    pub fn get(&self) -> Overrides {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves at the next change of what is served.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Replaces the overrides; true (and the long polls woken) when they changed.
    pub fn set(&self, o: Overrides) -> bool {
        self.synced.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        if *current == o {
            return false;
        }
        *current = o;
        drop(current);
        self.changes.send_modify(|g| *g = g.wrapping_add(1));
        true
    }

    /// Reads ConfigMap `namespace/name` every [`POLL`], for ever. A missing ConfigMap is no overrides; an
    /// API error keeps the last ones (logged once until the reads succeed again).
    pub async fn run(self: std::sync::Arc<Self>, client: kube::Client, namespace: String, name: String) {
        let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, &namespace);
        let origin = format!("ConfigMap {namespace}/{name}");
        let mut failing = false;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let data = match api.get_opt(&name).await {
                Ok(Some(cm)) => cm.data.unwrap_or_default(),
                Ok(None) => BTreeMap::new(),
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        warn!(error = %e, configmap = %origin, "control plane: cannot read the overrides; serving the last ones");
                    }
                    continue;
                }
            };
            if std::mem::replace(&mut failing, false) {
                info!(configmap = %origin, "control plane: reading the overrides again");
            }
            let now = Timestamp::now().as_second();
            let o = Overrides::parse(&origin, &data, now);
            let problems = o.problems.clone();
            let before = self.get().problems;
            if self.set(o) {
                info!(configmap = %origin, entries = self.get().len(), "control plane: overrides changed");
            }
            if problems != before {
                for p in &problems {
                    warn!(problem = %p, "control plane: an override entry is left out");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn entries_by_namespace_and_workload_with_expiry() {
        let now = unix_of("2026-12-07T10:00:00Z").unwrap();
        let o = Overrides::parse(
            "cm",
            &data(&[
                ("shop", "defaults: {idle_timeout: 10m}"),
                ("shop.images", "cap: {connections: 5, until: '2026-12-07T10:30:00Z'}"),
                ("shop.api", "cap: {connections: 5, until: '2026-12-07T09:30:00Z'}"),
                ("shop.old", "reclaim: {at: '2026-12-07T09:00:00Z'}"),
                ("shop.fresh", "reclaim: {at: '2026-12-07T09:58:00Z', idle_over: 1m}"),
                ("shop.bad", "listen: 0.0.0.0:1"),
                (".x", "enforce: false"),
            ]),
            now,
        );
        let images = o.for_pod("shop", "images");
        assert_eq!(images.len(), 2, "the namespace's, then the workload's");
        assert_eq!(images[1].patch.cap.as_ref().map(|c| c.connections), Some(5));
        assert_eq!(o.for_pod("shop", "api").len(), 1, "an expired cap is gone (the entry with it: nothing left)");
        assert_eq!(o.for_pod("shop", "old").len(), 1, "a reclaim asked 1 h ago is no longer served");
        assert!(o.for_pod("shop", "fresh")[1].patch.reclaim.is_some());
        assert_eq!(o.for_pod("other", "images"), vec![]);
        assert_eq!(o.problems.len(), 2, "{:?}", o.problems);
        assert!(o.problems.iter().any(|p| p.contains("shop.bad") && p.contains("listen")), "{:?}", o.problems);
    }
}
