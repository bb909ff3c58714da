//! The pod watcher: list, then watch, the pods of the cluster (or of the listed namespaces) and keep a
//! [`PodSink`] equal to them: gateway mode's `pods::PodDirectory`, the budget coordinator's members.
//!
//! Owns: which pods become records ([`record`]: a pod with an IP of its own that has not ended; host-network
//! pods share their node's address and are left out, so their clients are named by address), the list and
//! watch loop with its resume, relist on `410 Gone` and backoff. Memory stays bounded by the cluster's pod
//! count: a Pod object is turned into a [`PodRecord`] (uid, IPs, creation time, five names) as it arrives
//! and dropped; managed fields, specs and statuses are never kept.

use super::owner;
use crate::identity::PodIdentity;
use crate::pods::{PodDirectory, PodRecord};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Pods per list page.
const PAGE: u32 = 500;
/// The server ends a watch after this long (it is resumed from the last resource version).
const WATCH_SECONDS: u32 = 290;
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The record of a pod, or `None` when its IP must not name it: no IP yet, host network, or ended (a
/// Succeeded or Failed pod's IP may already belong to a new pod).
pub fn record(pod: &Pod) -> Option<PodRecord> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    if spec.host_network == Some(true) || matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let mut ips: Vec<IpAddr> = status.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.is_empty() {
        return None;
    }
    Some(PodRecord {
        uid: meta.uid.clone()?,
        ips,
        created: meta.creation_timestamp.as_ref().map_or(0, |t| t.0.as_second()),
        identity: Arc::new(PodIdentity {
            pod: meta.name.clone(),
            namespace: meta.namespace.clone(),
            workload: Some(owner::workload(meta)),
            node: spec.node_name.clone(),
            service_account: spec.service_account_name.clone(),
        }),
    })
}

/// What a pod watch keeps equal to the pods it lists and watches (gateway mode's directory; the budget
/// coordinator's members).
pub trait PodSink: Send + Sync + 'static {
    type Record: Send;
    /// The record of a pod, or `None` when the pod is not one (then a record with its uid is removed).
    fn record(pod: &Pod) -> Option<Self::Record>;
    fn apply(&self, record: Self::Record);
    fn remove(&self, uid: &str);
    /// The full list of one scope (a namespace; `None`: all) replaces what the sink had of it.
    fn replace_scope(&self, scope: Option<&str>, records: Vec<Self::Record>);
    /// Every scope has been listed once.
    fn mark_synced(&self);
}

impl PodSink for PodDirectory {
    type Record = PodRecord;
    fn record(pod: &Pod) -> Option<PodRecord> {
        record(pod)
    }
    fn apply(&self, record: PodRecord) {
        PodDirectory::apply(self, record)
    }
    fn remove(&self, uid: &str) {
        PodDirectory::remove(self, uid)
    }
    fn replace_scope(&self, scope: Option<&str>, records: Vec<PodRecord>) {
        PodDirectory::replace_scope(self, scope, records)
    }
    fn mark_synced(&self) {
        PodDirectory::mark_synced(self)
    }
}

/// Keeps `directory` equal to the pods of `namespaces` (all namespaces when empty). Errors are logged and
/// retried with backoff (the directory keeps what it knew meanwhile); this never returns.
pub async fn watch(client: kube::Client, directory: Arc<PodDirectory>, namespaces: Vec<String>) {
    watch_into(client, directory, namespaces, None, "pod identity").await
}

/// Keeps `sink` equal to the pods of `namespaces` (all when empty) that match the label `selector`;
/// `what` names the watch in logs. Never returns.
pub async fn watch_into<S: PodSink>(
    client: kube::Client,
    sink: Arc<S>,
    namespaces: Vec<String>,
    selector: Option<String>,
    what: &'static str,
) {
    let scopes: Vec<Option<String>> =
        if namespaces.is_empty() { vec![None] } else { namespaces.into_iter().map(Some).collect() };
    let unsynced = Arc::new(AtomicUsize::new(scopes.len()));
    let tasks = scopes.into_iter().map(|scope| {
        let api: Api<Pod> = match &scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let watch = Watch { api, scope, selector: selector.clone(), what };
        watch.run(sink.clone(), unsynced.clone())
    });
    futures_util::future::join_all(tasks).await;
}

struct Watch {
    api: Api<Pod>,
    scope: Option<String>,
    selector: Option<String>,
    what: &'static str,
}

impl Watch {
    async fn run<S: PodSink>(self, sink: Arc<S>, unsynced: Arc<AtomicUsize>) {
        let (name, what) = (self.scope.as_deref().unwrap_or("all namespaces"), self.what);
        let mut backoff = Duration::from_millis(500);
        let mut first = true;
        loop {
            let version = match self.list(&*sink).await {
                Ok((version, count)) => {
                    if first {
                        first = false;
                        if unsynced.fetch_sub(1, Relaxed) == 1 {
                            sink.mark_synced();
                        }
                        info!(namespaces = name, pods = count, "{what}: pods listed");
                    }
                    backoff = Duration::from_millis(500);
                    version
                }
                Err(e) => {
                    warn!(namespaces = name, error = %e, retry_in = ?backoff, "{what}: cannot list pods");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            let mut version = version;
            // Watch from the list's version; resume after each server timeout; relist when the version is gone.
            loop {
                match self.follow(&mut version, &*sink).await {
                    Ok(Follow::TimedOut) => backoff = Duration::from_millis(500),
                    Ok(Follow::Gone) => {
                        debug!(namespaces = name, "{what}: watch version gone; listing again");
                        break;
                    }
                    Err(e) => {
                        warn!(namespaces = name, error = %e, retry_in = ?backoff, "{what}: watch failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        break;
                    }
                }
            }
        }
    }

    /// Lists every page and replaces the scope's records; returns the list's resource version and the count.
    async fn list<S: PodSink>(&self, sink: &S) -> kube::Result<(String, usize)> {
        let mut records = Vec::new();
        let mut params = ListParams::default().limit(PAGE);
        if let Some(selector) = &self.selector {
            params = params.labels(selector);
        }
        loop {
            let page = self.api.list(&params).await?;
            records.extend(page.items.iter().filter_map(S::record));
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => {
                    let version = page.metadata.resource_version.unwrap_or_default();
                    let count = records.len();
                    sink.replace_scope(self.scope.as_deref(), records);
                    return Ok((version, count));
                }
            }
        }
    }

    async fn follow<S: PodSink>(&self, version: &mut String, sink: &S) -> kube::Result<Follow> {
        let mut params = WatchParams { bookmarks: true, ..WatchParams::default() }.timeout(WATCH_SECONDS);
        if let Some(selector) = &self.selector {
            params = params.labels(selector);
        }
        let mut events = std::pin::pin!(self.api.watch(&params, version).await?);
        while let Some(event) = events.next().await {
            let seen = |pod: &Pod| pod.metadata.resource_version.clone();
            match event? {
                WatchEvent::Added(pod) | WatchEvent::Modified(pod) => {
                    match S::record(&pod) {
                        Some(r) => sink.apply(r),
                        None => sink.remove(pod.metadata.uid.as_deref().unwrap_or_default()),
                    }
                    *version = seen(&pod).unwrap_or_else(|| version.clone());
                }
                WatchEvent::Deleted(pod) => {
                    sink.remove(pod.metadata.uid.as_deref().unwrap_or_default());
                    *version = seen(&pod).unwrap_or_else(|| version.clone());
                }
                WatchEvent::Bookmark(b) => *version = b.metadata.resource_version,
                WatchEvent::Error(status) if status.code == 410 => return Ok(Follow::Gone),
                WatchEvent::Error(status) => return Err(kube::Error::Api(status)),
            }
        }
        Ok(Follow::TimedOut)
    }
}

enum Follow {
    /// The server ended the watch; resume from the version reached.
    TimedOut,
    /// The version is too old (`410 Gone`): list again.
    Gone,
}

#[cfg(test)]
mod tests;
