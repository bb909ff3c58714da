//! Kubernetes Events on a sidecar's pod, posted by the control plane: sidecars run with the application's
//! service account, which may not create Events, so each sidecar sends its events (`crate::events`) to the
//! injector (`POST /v1/events?namespace=NS&pod=NAME`, the same token check as `/v1/policy`) and the injector
//! posts them with its own rights.
//!
//! Owns: the sidecar's [`send`] loop and the injector's [`Recorder`], which aggregates as Kubernetes does:
//! one Event object per pod × reason (a name derived from both), whose `count` grows on repeats; at most one
//! API write per pod × reason every [`WRITE_EVERY`] (repeats in between are counted and written with the
//! next), so a storm of refusals is one object and a write every few seconds.

use super::channel::Channel;
use crate::events::{PodEvent, Reason, MAX_QUEUED};
use crate::k8s::budget::members::Member;
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// One API write per pod × reason at most this often.
pub const WRITE_EVERY: Duration = Duration::from_secs(5);
/// Pods × reasons the injector keeps counts for; past it the least recently seen is forgotten (its next
/// event starts a count of its own).
pub const MAX_TRACKED: usize = 10_000;
/// A sidecar's report: at most this many bytes.
pub const MAX_REPORT: usize = 128 * 1024;

/// The sidecar side: sends queued events to the injector at `path` for ever, on `channel` (its own
/// kept-alive connection, built with the control client's checked URL and TLS: `client::Poller::events`),
/// retried with backoff; events wait, bounded, meanwhile.
pub async fn send(state: Arc<crate::state::State>, mut channel: Channel, token_file: PathBuf, path: String) {
    let mut backoff = Duration::from_millis(500);
    loop {
        let events = state.events.take().await;
        let sent = async {
            let token = tokio::fs::read_to_string(&token_file).await?;
            let body = bytes::Bytes::from(serde_json::to_vec(&events)?);
            let (status, answer) = channel.post(&path, &token, body, Duration::from_secs(10), 4096).await?;
            if !status.is_success() {
                anyhow::bail!("the injector answered {status}: {}", String::from_utf8_lossy(&answer).trim());
            }
            anyhow::Ok(())
        };
        match sent.await {
            Ok(()) => backoff = Duration::from_millis(500),
            Err(e) => {
                debug!(error = %format!("{e:#}"), events = events.len(), "pod events: not sent yet");
                state.events.put_back(events);
                tokio::time::sleep(super::channel::jittered(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

struct Aggregate {
    name: String,
    count: i32,
    /// Counted but not written yet.
    pending: bool,
    created: bool,
    first: Timestamp,
    last: Timestamp,
    message: String,
    written: Option<Instant>,
    seen: Instant,
    member: Member,
}

/// The injector side: counts per pod × reason, and writes them.
pub struct Recorder {
    client: kube::Client,
    /// This injector's pod name (`reportingInstance`).
    instance: String,
    tracked: Mutex<HashMap<(String, Reason), Aggregate>>,
}

/// The Event's name: the pod's, the reason and a digest of the pod's uid (a pod of the same name later
/// gets its own object).
pub fn event_name(m: &Member, reason: Reason) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, m.key.uid.as_bytes());
    let hex: String = digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.pgwarden-{}-{hex}", m.key.name, reason.as_str().to_ascii_lowercase())
}

impl Recorder {
    pub fn new(client: kube::Client) -> Arc<Recorder> {
        let instance = std::env::var("PGWARDEN_POD_NAME").unwrap_or_else(|_| "pgwarden-injector".into());
        Arc::new(Recorder { client, instance, tracked: Mutex::default() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Reason), Aggregate>> {
        self.tracked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts `events` of pod `m` (at most [`MAX_QUEUED`] are taken from one report).
    pub fn record(&self, m: &Member, events: Vec<PodEvent>) {
        let now = Instant::now();
        let at = Timestamp::now();
        let mut t = self.lock();
        for e in events.into_iter().take(MAX_QUEUED) {
            let key = (m.key.uid.clone(), e.reason);
            if !t.contains_key(&key) && t.len() >= MAX_TRACKED {
                if let Some(oldest) = t.iter().min_by_key(|(_, a)| a.seen).map(|(k, _)| k.clone()) {
                    t.remove(&oldest);
                }
            }
            let a = t.entry(key).or_insert_with(|| Aggregate {
                name: event_name(m, e.reason),
                count: 0,
                pending: false,
                created: false,
                first: at,
                last: at,
                message: String::new(),
                written: None,
                seen: now,
                member: m.clone(),
            });
            a.count = a.count.saturating_add(1);
            a.pending = true;
            a.last = at;
            a.seen = now;
            a.message = e.message;
        }
    }

    /// Writes what is pending and due, for ever (every second).
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = Instant::now();
            let due: Vec<((String, Reason), Event, bool)> = {
                let mut t = self.lock();
                t.iter_mut()
                    .filter(|(_, a)| {
                        a.pending && a.written.is_none_or(|w| now.saturating_duration_since(w) >= WRITE_EVERY)
                    })
                    .map(|(k, a)| {
                        a.pending = false;
                        a.written = Some(now);
                        (k.clone(), self.event(k.1, a), a.created)
                    })
                    .collect()
            };
            for (key, event, created) in due {
                let ok = self.write(event, created).await;
                if let Some(a) = self.lock().get_mut(&key) {
                    if ok {
                        a.created = true;
                    } else {
                        a.pending = true;
                    }
                }
            }
        }
    }

    fn event(&self, reason: Reason, a: &Aggregate) -> Event {
        let m = &a.member;
        Event {
            metadata: ObjectMeta {
                name: Some(a.name.clone()),
                namespace: Some(m.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(m.key.name.clone()),
                namespace: Some(m.namespace.clone()),
                uid: Some(m.key.uid.clone()),
                field_path: Some("spec.containers{pgwarden}".into()),
                ..Default::default()
            },
            reason: Some(reason.as_str().into()),
            message: Some(a.message.clone()),
            type_: Some(reason.kind().into()),
            count: Some(a.count),
            first_timestamp: Some(Time(a.first)),
            last_timestamp: Some(Time(a.last)),
            source: Some(EventSource { component: Some("pgwarden".into()), host: None }),
            reporting_component: Some("pgwarden.io/injector".into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        }
    }

    /// Creates the Event, or (it exists: written before, by this or another replica) patches its count,
    /// last time and message. False when the API server refused both.
    async fn write(&self, e: Event, created: bool) -> bool {
        let ns = e.metadata.namespace.clone().unwrap_or_default();
        let name = e.metadata.name.clone().unwrap_or_default();
        let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
        if !created {
            match api.create(&PostParams::default(), &e).await {
                Ok(_) => return true,
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(err) => {
                    warn!(error = %err, event = %name, "pod events: cannot create the Event");
                    return false;
                }
            }
        }
        let patch = serde_json::json!({
            "count": e.count, "lastTimestamp": e.last_timestamp, "message": e.message,
            "reportingInstance": e.reporting_instance,
        });
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => true,
            Err(err) => {
                warn!(error = %err, event = %name, "pod events: cannot update the Event");
                false
            }
        }
    }
}
