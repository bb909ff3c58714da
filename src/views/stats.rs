//! The stats views behind `/clients`, `/connections` and `/leaks` (and the metrics): built on request from
//! the registry, the client table and the leak detector, with exactly SPEC's fields.
//!
//! The same types deserialize the JSON again for `pgwarden top` and `pgwarden leaks`.

use crate::clients::latency::{self, Latencies};
use crate::clients::ClientEntry;
use crate::identity::{Field, Peer, PodIdentity};
use crate::leak::detector::PoolsSeen;
use crate::leak::verdict::Verdict;
use crate::leak::{Detector, LeakReason};
use crate::redact;
use crate::registry::Conn;
use crate::state::State;
use crate::vocab::{CloseReason, ConnState};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClientStats {
    pub client: String,
    pub application_name: Option<String>,
    pub user: Option<String>,
    pub database: Option<String>,
    /// The pod fields, present when they are in the client key (gateway mode names clients by them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub open: u32,
    pub active: u32,
    pub idle: u32,
    pub idle_in_transaction: u32,
    pub waiting: u32,
    pub max_connections: Option<u32>,
    pub opened_total: u64,
    pub closed_total: u64,
    pub refused_total: u64,
    pub timed_out_total: u64,
    pub abandoned_total: u64,
    pub would_refuse_total: u64,
    pub would_close_total: u64,
    /// Queries cancelled at `query_timeout`, and (report-only) that would have been (absent from older sidecars).
    #[serde(default)]
    pub queries_canceled_total: u64,
    #[serde(default)]
    pub would_cancel_total: u64,
    pub oldest_idle_seconds: Option<f64>,
    pub oldest_idle_in_transaction_seconds: Option<f64>,
    pub leak_suspected: bool,
    pub suspect_connections: u32,
    pub leak_reasons: Vec<String>,
    /// Recent latency (absent from sidecars older than this field).
    #[serde(default)]
    pub latency: LatencyStats,
    /// How the leak detector sees the client's pools (absent from sidecars older than this field).
    #[serde(default)]
    pub leak_detection: LeakDetectionStats,
}

/// How the leak detector judges a client's growth (README "What is flagged, and when").
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LeakDetectionStats {
    /// Worker processes told apart among its connections (Unix-socket peers): each one's pool is judged on
    /// its own.
    pub processes: u32,
    /// Its connections that no process is known for (TCP) were proven to come from several pools (a
    /// connection sat free while another was opened on demand, then was used again): their growth is not
    /// judged; `idle_in_transaction` and `idle_while_client_at_cap` still are.
    pub several_pools: bool,
    /// Processes proven to hold several pools each (likewise not judged by growth).
    pub processes_with_several_pools: u32,
}

/// A client's latency over the last `window_seconds` (one to two windows of `clients::latency::WINDOW`),
/// quantiles estimated from the histogram buckets as Prometheus' `histogram_quantile` would; `None` with no
/// sample in the window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LatencyStats {
    pub window_seconds: u64,
    /// Queries (a Query, or a batch up to Sync) answered in the window.
    pub queries: u64,
    pub query_p50_ms: Option<f64>,
    pub query_p99_ms: Option<f64>,
    pub transactions: u64,
    pub transaction_p50_ms: Option<f64>,
    pub transaction_p99_ms: Option<f64>,
    /// Connections admitted in the window, and how long they waited for a slot.
    pub admitted: u64,
    pub slot_wait_p99_ms: Option<f64>,
}

impl LatencyStats {
    fn of(l: &Latencies, now: Instant) -> LatencyStats {
        let ms = |d: std::time::Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let (q, t, w) = (l.query.recent(now), l.transaction.recent(now), l.slot_wait.recent(now));
        LatencyStats {
            window_seconds: 2 * latency::WINDOW.as_secs(),
            queries: q.count(),
            query_p50_ms: q.quantile(0.5).map(ms),
            query_p99_ms: q.quantile(0.99).map(ms),
            transactions: t.count(),
            transaction_p50_ms: t.quantile(0.5).map(ms),
            transaction_p99_ms: t.quantile(0.99).map(ms),
            admitted: w.count(),
            slot_wait_p99_ms: w.quantile(0.99).map(ms),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionStats {
    pub id: u64,
    pub client: String,
    pub peer: String,
    /// Unix-socket peers: the peer process's uid and pid (SO_PEERCRED).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_pid: Option<i32>,
    pub backend_pid: Option<i32>,
    pub state: String,
    pub age_seconds: f64,
    pub state_seconds: f64,
    pub last_statement: Option<String>,
    /// The W3C trace id the session's `application_name` last carried (OpenTelemetry), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Query tags (sqlcommenter, Rails) of the last statement, and of the first statement since the
    /// connection was last idle (where it was borrowed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_tags: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub borrowed_tags: BTreeMap<String, String>,
    pub queries: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub leak_suspect: bool,
    pub leak_reason: Option<String>,
    /// What the detector measured, against what, in words (suspects only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_evidence: Option<String>,
    /// `certain`, or `probable` where a shared TCP key could make the verdict wrong (suspects only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak_confidence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_seconds_ago: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClientsResponse {
    pub identity: PodIdentity,
    pub clients: Vec<ClientStats>,
    /// This pod's workload budget (`budget.coordinator` set), else absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStats>,
}

/// `/clients`' `budget`: the share in force, where it comes from, and what this pod holds against it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BudgetStats {
    /// The budget's name (absent: no budget for this workload, or no answer yet).
    pub name: Option<String>,
    pub workload: Option<String>,
    /// The budget across the workload's pods, and how many pods share it.
    pub max_connections: Option<u32>,
    pub pods: Option<u32>,
    /// This pod's share from the coordinator's last answer.
    pub share: Option<u32>,
    /// The cap in force now (the share, or the fallback cap) and why: `share`, `kept`, `fallback`.
    pub cap: Option<u32>,
    pub source: String,
    /// Connections this pod holds against the cap.
    pub connections: u32,
    /// Seconds since the coordinator's last answer.
    pub age_seconds: Option<f64>,
    pub reclaim_idle: bool,
    /// Why the last request to the coordinator failed, while it fails.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsResponse {
    pub connections: Vec<ConnectionStats>,
}

/// A client with suspects: its stats and its suspect connections (live first, then reclaimed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeakReport {
    #[serde(flatten)]
    pub stats: ClientStats,
    /// The most common code location among the suspects, from their query tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<String>,
    pub suspects: Vec<ConnectionStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaksResponse {
    pub leaks: Vec<LeakReport>,
}

fn secs(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Everything the views are built from, gathered once per request.
pub struct Snapshot {
    pub now: Instant,
    pub conns: Vec<Arc<Conn>>,
    pub clients: Vec<Arc<ClientEntry>>,
    live: HashMap<u64, Verdict>,
    closed: ClosedList,
    /// The reasons of each client's closed suspects, grouped once per snapshot.
    closed_reasons: HashMap<String, BTreeSet<LeakReason>>,
    pools: HashMap<String, PoolsSeen>,
    statement: (crate::config::StatementText, usize),
    /// Query tag keys read beside the built-in ones.
    tag_keys: Vec<String>,
    /// Indices into `conns` by client, so a view is O(connections + clients), not their product.
    by_client: HashMap<String, Vec<usize>>,
    pub budget: Option<BudgetStats>,
}

impl Snapshot {
    pub fn take(state: &State) -> Snapshot {
        let now = Instant::now();
        let settings = state.settings();
        let detector = state.detector();
        let (live, closed) = snapshot_detector(&detector);
        let clients = state.clients.entries();
        let pools = clients.iter().map(|e| (e.id.display().to_string(), detector.pools_seen(e.id.display()))).collect();
        drop(detector);
        let conns = state.registry.snapshot();
        let mut by_client: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, c) in conns.iter().enumerate() {
            by_client.entry(c.client.display().to_string()).or_default().push(i);
        }
        let budget = state.budget.enabled.then(|| {
            let v = state.budget.view(now);
            let a = v.answer.as_ref();
            BudgetStats {
                name: a.and_then(|a| a.budget.clone()),
                workload: a.map(|a| a.workload.clone()),
                max_connections: a.and_then(|a| a.max_connections),
                pods: a.map(|a| a.pods),
                share: a.and_then(|a| a.share),
                cap: v.effective.cap,
                source: v.effective.source.as_str().to_string(),
                connections: state.clients.total_open(),
                age_seconds: v.age.map(secs),
                reclaim_idle: a.is_some_and(|a| a.reclaim_idle),
                error: v.error,
            }
        });
        Snapshot {
            now,
            budget,
            by_client,
            conns,
            clients,
            live,
            closed_reasons: closed_reasons(&closed),
            closed,
            pools,
            statement: (settings.config.stats.statement_text, settings.config.stats.statement_max_length as usize),
            tag_keys: settings.config.stats.query_tag_keys.clone(),
        }
    }

    pub fn connection(&self, c: &Conn) -> ConnectionStats {
        let verdict = self.live.get(&c.id);
        let reason = verdict.map(|v| v.reason);
        ConnectionStats {
            id: c.id,
            client: c.client.display().to_string(),
            peer: c.peer.to_string(),
            peer_uid: match c.peer {
                Peer::Unix { uid, .. } => uid,
                Peer::Tcp(_) => None,
            },
            peer_pid: match c.peer {
                Peer::Unix { pid, .. } => pid,
                Peer::Tcp(_) => None,
            },
            backend_pid: c.backend_pid(),
            state: c.state().as_str().to_string(),
            age_seconds: secs(self.now.saturating_duration_since(c.opened)),
            state_seconds: secs(self.now.saturating_duration_since(c.state_since())),
            last_statement: redact::render(&c.last_statement(), self.statement.0, self.statement.1),
            trace_id: c.trace_id().map(|t| t.to_string()),
            query_tags: super::tags::of(&c.last_statement(), &self.tag_keys),
            borrowed_tags: super::tags::of(&c.borrowed_statement(), &self.tag_keys),
            queries: c.queries.load(Relaxed),
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            leak_suspect: reason.is_some(),
            leak_reason: reason.map(|r| r.as_str().to_string()),
            leak_evidence: verdict.map(|v| v.evidence.clone()),
            leak_confidence: verdict.map(|v| v.confidence.as_str().to_string()),
            closed_seconds_ago: None,
            closed_reason: None,
        }
    }

    fn closed_connection(
        &self,
        c: &Conn,
        verdict: &Verdict,
        closed_at: Instant,
        closed_reason: &str,
    ) -> ConnectionStats {
        let mut s = self.connection(c);
        // Frozen at close: the state it was reclaimed in, and how long it had been in it.
        s.state_seconds = secs(closed_at.saturating_duration_since(c.state_since()));
        s.age_seconds = secs(closed_at.saturating_duration_since(c.opened));
        s.leak_suspect = true;
        s.leak_reason = Some(verdict.reason.as_str().to_string());
        s.leak_evidence = Some(verdict.evidence.clone());
        s.leak_confidence = Some(verdict.confidence.as_str().to_string());
        s.closed_seconds_ago = Some(secs(self.now.saturating_duration_since(closed_at)));
        s.closed_reason = Some(closed_reason.to_string());
        s
    }

    pub fn client(&self, entry: &ClientEntry) -> ClientStats {
        let key = entry.id.display();
        let mine: Vec<&Arc<Conn>> = self.by_client.get(key).into_iter().flatten().map(|&i| &self.conns[i]).collect();
        let count = |f: &dyn Fn(ConnState) -> bool| mine.iter().filter(|c| f(c.state())).count() as u32;
        let oldest = |f: &dyn Fn(ConnState) -> bool| {
            mine.iter()
                .filter(|c| f(c.state()))
                .map(|c| secs(self.now.saturating_duration_since(c.state_since())))
                .reduce(f64::max)
        };
        let c = &entry.counters;
        let closed = |r: CloseReason| c.closed.get(r);
        let suspects: Vec<LeakReason> =
            mine.iter().filter_map(|conn| self.live.get(&conn.id).map(|v| v.reason)).collect();
        let mut reasons: BTreeSet<LeakReason> = suspects.iter().copied().collect();
        reasons.extend(self.closed_reasons.get(key).into_iter().flatten().copied());
        ClientStats {
            client: key.to_string(),
            application_name: entry.id.get(Field::ApplicationName).map(str::to_string),
            user: entry.id.get(Field::User).map(str::to_string),
            database: entry.id.get(Field::Database).map(str::to_string),
            namespace: entry.id.get(Field::Namespace).map(str::to_string),
            workload: entry.id.get(Field::Workload).map(str::to_string),
            pod: entry.id.get(Field::Pod).map(str::to_string),
            open: c.open.load(Relaxed),
            active: count(&|s| s == ConnState::Active),
            idle: count(&|s| s == ConnState::Idle),
            idle_in_transaction: count(&|s: ConnState| s.in_transaction()),
            waiting: c.waiting.load(Relaxed),
            max_connections: *entry.max_connections.lock().unwrap_or_else(|e| e.into_inner()),
            opened_total: c.opened.load(Relaxed),
            closed_total: c.closed.total(),
            refused_total: c.refused.total(),
            timed_out_total: closed(CloseReason::IdleTimeout)
                + closed(CloseReason::IdleInTransactionTimeout)
                + closed(CloseReason::TransactionTimeout),
            abandoned_total: closed(CloseReason::Abandoned),
            would_refuse_total: c.would_refuse.total(),
            would_close_total: c.would_close.total(),
            queries_canceled_total: c.canceled.load(Relaxed),
            would_cancel_total: c.would_cancel.load(Relaxed),
            oldest_idle_seconds: oldest(&|s| s == ConnState::Idle),
            oldest_idle_in_transaction_seconds: oldest(&|s: ConnState| s.in_transaction()),
            leak_suspected: !suspects.is_empty(),
            suspect_connections: suspects.len() as u32,
            leak_reasons: reasons.into_iter().map(|r| r.as_str().to_string()).collect(),
            latency: LatencyStats::of(&entry.latency, self.now),
            leak_detection: {
                let p = self.pools.get(key).copied().unwrap_or_default();
                LeakDetectionStats {
                    processes: p.processes as u32,
                    several_pools: p.several_pools_since.is_some(),
                    processes_with_several_pools: p.processes_with_several_pools as u32,
                }
            },
        }
    }

    /// `/clients`: every known client, most connections first.
    pub fn clients_response(&self, identity: &PodIdentity) -> ClientsResponse {
        let mut clients: Vec<ClientStats> = self.clients.iter().map(|e| self.client(e)).collect();
        clients.sort_by(|a, b| b.open.cmp(&a.open).then_with(|| a.client.cmp(&b.client)));
        ClientsResponse { identity: identity.clone(), clients, budget: self.budget.clone() }
    }

    pub fn connections_response(&self) -> ConnectionsResponse {
        ConnectionsResponse { connections: self.conns.iter().map(|c| self.connection(c)).collect() }
    }

    /// `/leaks`: clients with live or recently reclaimed suspects, worst first.
    pub fn leaks_response(&self) -> LeaksResponse {
        let mut by_client: HashMap<&str, Vec<ConnectionStats>> = HashMap::new();
        for c in &self.conns {
            if self.live.contains_key(&c.id) {
                by_client.entry(c.client.display()).or_default().push(self.connection(c));
            }
        }
        for (c, verdict, at, why) in &self.closed {
            by_client.entry(c.client.display()).or_default().push(self.closed_connection(c, verdict, *at, why));
        }
        let mut leaks: Vec<LeakReport> = self
            .clients
            .iter()
            .filter_map(|e| {
                let mut suspects = by_client.remove(e.id.display())?;
                suspects.sort_by(|a, b| {
                    a.closed_seconds_ago
                        .is_some()
                        .cmp(&b.closed_seconds_ago.is_some())
                        .then(b.state_seconds.total_cmp(&a.state_seconds))
                });
                let tags = super::tags::summary(&suspects);
                Some(LeakReport { stats: self.client(e), tags, suspects })
            })
            .collect();
        leaks.sort_by(|a, b| {
            b.stats
                .suspect_connections
                .cmp(&a.stats.suspect_connections)
                .then(b.suspects.len().cmp(&a.suspects.len()))
                .then(b.stats.open.cmp(&a.stats.open))
        });
        LeaksResponse { leaks }
    }
}

type ClosedList = Vec<(Arc<Conn>, Verdict, Instant, &'static str)>;

fn closed_reasons(closed: &ClosedList) -> HashMap<String, BTreeSet<LeakReason>> {
    let mut by_client: HashMap<String, BTreeSet<LeakReason>> = HashMap::new();
    for (conn, verdict, _, _) in closed {
        by_client.entry(conn.client.display().to_string()).or_default().insert(verdict.reason);
    }
    by_client
}

fn snapshot_detector(d: &Detector) -> (HashMap<u64, Verdict>, ClosedList) {
    let live = d.live().map(|s| (s.conn.id, s.verdict.clone())).collect();
    let closed = d.closed().map(|c| (c.conn.clone(), c.verdict.clone(), c.closed_at, c.closed_reason)).collect();
    (live, closed)
}
