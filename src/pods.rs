//! Gateway mode's map from a peer's IP address to its pod: fed by the pod watcher (`k8s::pods`), read once
//! by every session at startup.
//!
//! Owns: which pod an address belongs to when several records carry it (the newest one: a pod that ended
//! gives its IP back, and Kubernetes may hand it to the next pod before the old one's deletion is seen), and
//! how an address that no pod carries is named. Does not own: the Kubernetes API, or which pods are records
//! at all (host-network and finished pods are left out by `k8s::pods`).

use crate::identity::PodIdentity;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

/// What the directory keeps of one pod: only the fields a connection is named by.
#[derive(Debug, Clone, PartialEq)]
pub struct PodRecord {
    pub uid: String,
    pub ips: Vec<IpAddr>,
    /// Creation time in seconds since the epoch: of two records with one IP, the newer one is the live pod.
    pub created: i64,
    pub identity: Arc<PodIdentity>,
}

/// Who a peer address is.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerPod {
    /// A pod carries this address.
    Pod(Arc<PodIdentity>),
    /// No pod known carries it (a host-network pod, a pod not seen yet, another network).
    Unknown,
}

#[derive(Default)]
struct Inner {
    by_uid: HashMap<String, PodRecord>,
    /// The records carrying each address (almost always one).
    by_ip: HashMap<IpAddr, Vec<String>>,
}

impl Inner {
    fn insert(&mut self, record: PodRecord) {
        self.remove(&record.uid);
        for ip in &record.ips {
            self.by_ip.entry(ip.to_canonical()).or_default().push(record.uid.clone());
        }
        self.by_uid.insert(record.uid.clone(), record);
    }

    fn remove(&mut self, uid: &str) {
        let Some(old) = self.by_uid.remove(uid) else { return };
        for ip in &old.ips {
            let ip = ip.to_canonical();
            if let Some(uids) = self.by_ip.get_mut(&ip) {
                uids.retain(|u| u != uid);
                if uids.is_empty() {
                    self.by_ip.remove(&ip);
                }
            }
        }
    }
}

/// The pods of the watched namespaces by IP. Lookups take a read lock once per connection.
#[derive(Default)]
pub struct PodDirectory {
    inner: RwLock<Inner>,
    synced: AtomicBool,
    /// Connections from addresses no pod carried.
    unknown_peers: AtomicU64,
}

impl PodDirectory {
    /// Adds a pod or replaces its record (a pod's IP is set once it runs: the record changes then).
    pub fn apply(&self, record: PodRecord) {
        self.write().insert(record);
    }

    /// A pod was deleted, or ended and gave its IP back.
    pub fn remove(&self, uid: &str) {
        self.write().remove(uid);
    }

    /// A full list of one namespace (`None`: of all), at start and after a watch lost its place: that
    /// namespace's records are exactly these afterwards.
    pub fn replace_scope(&self, namespace: Option<&str>, records: Vec<PodRecord>) {
        let mut inner = self.write();
        match namespace {
            None => *inner = Inner::default(),
            Some(ns) => {
                let stale: Vec<String> = inner
                    .by_uid
                    .values()
                    .filter(|r| r.identity.namespace.as_deref() == Some(ns))
                    .map(|r| r.uid.clone())
                    .collect();
                for uid in stale {
                    inner.remove(&uid);
                }
            }
        }
        for r in records {
            inner.insert(r);
        }
    }

    /// Every watched namespace has been listed once.
    pub fn mark_synced(&self) {
        self.synced.store(true, Relaxed);
    }

    /// The pod behind `ip`: of several records, the newest (ties: the greater uid, so every replica agrees).
    pub fn lookup(&self, ip: IpAddr) -> PeerPod {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let newest = inner
            .by_ip
            .get(&ip.to_canonical())
            .into_iter()
            .flatten()
            .filter_map(|uid| inner.by_uid.get(uid))
            .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.uid.cmp(&b.uid)));
        match newest {
            Some(r) => PeerPod::Pod(r.identity.clone()),
            None => {
                self.unknown_peers.fetch_add(1, Relaxed);
                PeerPod::Unknown
            }
        }
    }

    /// Pods known now.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).by_uid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first full list has arrived.
    pub fn synced(&self) -> bool {
        self.synced.load(Relaxed)
    }

    pub fn unknown_peers_total(&self) -> u64 {
        self.unknown_peers.load(Relaxed)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uid: &str, ip: &str, created: i64, pod: &str, workload: &str) -> PodRecord {
        PodRecord {
            uid: uid.into(),
            ips: vec![ip.parse().unwrap()],
            created,
            identity: Arc::new(PodIdentity {
                pod: Some(pod.into()),
                namespace: Some("shop".into()),
                workload: Some(workload.into()),
                ..Default::default()
            }),
        }
    }

    fn workload(d: &PodDirectory, ip: &str) -> Option<String> {
        match d.lookup(ip.parse().unwrap()) {
            PeerPod::Pod(p) => p.workload.clone(),
            PeerPod::Unknown => None,
        }
    }

    #[test]
    fn an_address_is_its_newest_pod_and_a_deleted_pod_gives_it_back() {
        let d = PodDirectory::default();
        assert!(!d.synced());
        d.replace_scope(None, vec![record("u1", "10.0.0.7", 100, "api-1", "api")]);
        d.mark_synced();
        assert!(d.synced());
        assert_eq!(workload(&d, "10.0.0.7").as_deref(), Some("api"));
        // The IP reused by a newer pod before the old one's deletion arrives: the newer one is live.
        d.apply(record("u2", "10.0.0.7", 200, "batch-1", "batch"));
        assert_eq!(workload(&d, "10.0.0.7").as_deref(), Some("batch"));
        d.remove("u2");
        assert_eq!(workload(&d, "10.0.0.7").as_deref(), Some("api"));
        d.remove("u1");
        assert_eq!(workload(&d, "10.0.0.7"), None);
        assert_eq!(d.unknown_peers_total(), 1);
        assert!(d.is_empty());
    }

    #[test]
    fn a_changed_record_moves_its_address_and_a_relist_forgets_the_rest() {
        let d = PodDirectory::default();
        d.apply(record("u1", "10.0.0.7", 100, "api-1", "api"));
        d.apply(record("u1", "10.0.0.8", 100, "api-1", "api"));
        assert_eq!(workload(&d, "10.0.0.7"), None);
        assert_eq!(workload(&d, "10.0.0.8").as_deref(), Some("api"));
        d.replace_scope(None, vec![record("u3", "10.0.0.9", 300, "web-1", "web")]);
        assert_eq!(workload(&d, "10.0.0.8"), None);
        assert_eq!(d.len(), 1);
        // A namespace's relist leaves the other namespaces' records alone.
        let mut other = record("u4", "10.0.1.1", 400, "etl-1", "etl");
        Arc::make_mut(&mut other.identity).namespace = Some("batch".into());
        d.apply(other);
        d.replace_scope(Some("shop"), vec![]);
        assert_eq!(workload(&d, "10.0.0.9"), None);
        assert_eq!(workload(&d, "10.0.1.1").as_deref(), Some("etl"));
    }

    #[test]
    fn an_ipv4_mapped_peer_finds_its_ipv4_pod() {
        let d = PodDirectory::default();
        d.apply(record("u1", "10.0.0.7", 100, "api-1", "api"));
        assert_eq!(workload(&d, "::ffff:10.0.0.7").as_deref(), Some("api"));
    }
}
