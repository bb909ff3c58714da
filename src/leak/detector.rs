//! The stateful side of leak detection: per-client history, live and reclaimed suspects, transition logs.
//!
//! `tick` runs every second or so (never per message). Everything it decides goes through the pure
//! [`suspect_reason`](super::suspect_reason).

use super::observe::{FirstUse, Observed, Seen};
use super::verdict::{judge, Verdict};
use super::{ClientHistory, ConnView, Thresholds};
use crate::clients::ClientEntry;
use crate::config::{Leak, Stats};
use crate::registry::Conn;
use crate::vocab::{CloseReason, RefuseReason};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct Suspect {
    pub conn: Arc<Conn>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub struct ClosedSuspect {
    pub conn: Arc<Conn>,
    pub verdict: Verdict,
    pub closed_at: Instant,
    pub closed_reason: &'static str,
}

struct Tracked {
    /// The key's connections whose process the proxy cannot name (TCP): one history.
    shared: Observed,
    /// One history per process the kernel names (Unix-socket peers): each worker's pool on its own.
    processes: HashMap<u64, Observed>,
    /// The last time the client was refused or queued at its cap (the key's cap, shared by its processes).
    last_at_cap: Option<Instant>,
    /// Refusals (and would-refusals) at the client's own cap seen so far.
    cap_events: u64,
    /// The client has live suspects (for one WARN when it becomes a suspect, one INFO when it recovers).
    flagged: bool,
}

impl Tracked {
    fn history(&self, process: Option<u64>) -> Option<&ClientHistory> {
        match process {
            None => Some(&self.shared.history),
            Some(p) => self.processes.get(&p).map(|o| &o.history),
        }
    }

    fn observed_mut(&mut self, process: Option<u64>) -> Option<&mut Observed> {
        match process {
            None => Some(&mut self.shared),
            Some(p) => self.processes.get_mut(&p),
        }
    }
}

/// What the detector knows of a client's pools (for `/clients`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolsSeen {
    /// Processes the proxy tells apart among the client's open connections (Unix-socket peers).
    pub processes: usize,
    /// When the wire proved the connections it cannot attribute to a process to be several pools.
    pub several_pools_since: Option<Instant>,
    /// Processes proven to hold several pools each.
    pub processes_with_several_pools: usize,
}

/// One history's tick: its connections observed (a proof of several pools logged once), its history pruned
/// back to its oldest idle connection's baseline or `keep_history`.
#[allow(clippy::too_many_arguments)]
fn observe_one(
    key: &str,
    process: Option<u64>,
    o: &mut Observed,
    seen: &[Seen],
    now: Instant,
    th: &Thresholds,
    last_at_cap: Option<Instant>,
    keep_history: Duration,
) {
    o.history.last_at_cap = last_at_cap;
    if o.observe(now, seen, th) {
        let pid = process.filter(|p| p >> 63 == 0).map(|p| p.to_string()).unwrap_or_default();
        info!(
            client = %key,
            peer_pid = %pid,
            "several pools share client {key}{}: growth is no longer evidence of a leak there (one pool grows \
             while another's connection waits for work); {}",
            if process.is_some() { " within one process" } else { "" },
            if process.is_some() {
                "idle_in_transaction and idle_while_client_at_cap still apply"
            } else {
                "connect over the Unix socket so that each process is judged on its own"
            }
        );
    }
    if let Some(cutoff) = now.checked_sub(keep_history) {
        let oldest_idle =
            seen.iter().filter(|c| c.view.state == crate::vocab::ConnState::Idle).map(|c| c.view.state_since).min();
        o.history.prune(oldest_idle.map_or(cutoff, |since| since.min(cutoff)));
    }
}

fn view_of(conn: &Conn) -> ConnView {
    let (state, state_since) = conn.state_and_since();
    ConnView { id: conn.id, state, state_since, listening: conn.listening(), queries: conn.queries.load(Relaxed) }
}

/// Closed suspects kept per client (its newest), and in all (the newest), within `leak.keep_closed_suspects`:
/// each holds its connection's record (statement text included) until it expires.
pub const KEEP_CLOSED_PER_CLIENT: usize = 100;
pub const KEEP_CLOSED_IN_ALL: usize = 1000;

pub struct Detector {
    clients: HashMap<String, Tracked>,
    live: HashMap<u64, Suspect>,
    /// Oldest first.
    closed: VecDeque<ClosedSuspect>,
    /// Closed suspects let go before their time for the caps above.
    closed_dropped: prometheus::IntCounter,
    /// Clients newly flagged since the last [`Detector::take_flagged`]: (client key, what the WARN line says).
    flagged: Vec<(String, String)>,
}

impl Default for Detector {
    fn default() -> Self {
        let closed_dropped = prometheus::IntCounter::with_opts(
            prometheus::Opts::new(
                "leak_closed_suspects_dropped_total",
                "closed leak suspects let go before leak.keep_closed_suspects (over 100 for a client or 1,000 in all)",
            )
            .namespace("pgwarden"),
        )
        .expect("valid counter");
        Detector {
            clients: HashMap::new(),
            live: HashMap::new(),
            closed: VecDeque::new(),
            closed_dropped,
            flagged: Vec::new(),
        }
    }
}

impl Detector {
    /// The counter of closed suspects let go for the caps (for the metrics exporter to register).
    pub fn closed_dropped(&self) -> prometheus::IntCounter {
        self.closed_dropped.clone()
    }

    /// Keeps a closed suspect as evidence: a client's oldest gives way past [`KEEP_CLOSED_PER_CLIENT`], the
    /// oldest of all past [`KEEP_CLOSED_IN_ALL`].
    fn keep_closed(&mut self, s: ClosedSuspect) {
        let key = s.conn.client.display().to_string();
        self.closed.push_back(s);
        let mine = self.closed.iter().filter(|c| c.conn.client.display() == key).count();
        if mine > KEEP_CLOSED_PER_CLIENT {
            if let Some(i) = self.closed.iter().position(|c| c.conn.client.display() == key) {
                self.closed.remove(i);
                self.closed_dropped.inc();
            }
        }
        while self.closed.len() > KEEP_CLOSED_IN_ALL {
            self.closed.pop_front();
            self.closed_dropped.inc();
        }
    }

    /// Clients flagged since the last call, with what was said (for the pod's Events).
    pub fn take_flagged(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.flagged)
    }

    /// The live suspect connections.
    pub fn live(&self) -> impl Iterator<Item = &Suspect> {
        self.live.values()
    }

    /// Suspects closed within `leak.keep_closed_suspects`, newest first.
    pub fn closed(&self) -> impl Iterator<Item = &ClosedSuspect> {
        self.closed.iter().rev()
    }

    pub fn tick(
        &mut self,
        now: Instant,
        conns: &[Arc<Conn>],
        clients: &[Arc<ClientEntry>],
        leak: &Leak,
        stats: &Stats,
    ) {
        let th = Thresholds { idle: leak.idle_threshold.0, idle_in_transaction: leak.idle_in_transaction_threshold.0 };
        let keep_history = th.idle.unwrap_or(Duration::ZERO).saturating_mul(3).saturating_add(Duration::from_secs(10));
        // History is kept back to the oldest idle connection of each history, whose baseline it holds.
        // Each history's open connections this tick (a connection queued at the cap is not open yet).
        let mut groups: HashMap<&str, HashMap<Option<u64>, Vec<Seen>>> = HashMap::new();
        for conn in conns {
            if conn.closed().is_some() || conn.state() == crate::vocab::ConnState::Waiting {
                continue;
            }
            let first_use = FirstUse::of(conn.ready_at(), conn.first_active_at());
            let seen = Seen { id: conn.id, opened: conn.opened, view: view_of(conn), first_use };
            groups.entry(conn.client.display()).or_default().entry(conn.peer.process()).or_default().push(seen);
        }
        let mut present = HashMap::with_capacity(clients.len());
        for entry in clients {
            let key = entry.id.display().to_string();
            let c = &entry.counters;
            let cap_events = c.refused.get(RefuseReason::ClientLimit)
                + c.refused.get(RefuseReason::WaitTimeout)
                + c.would_refuse.get(RefuseReason::ClientLimit);
            let mut seen = groups.remove(key.as_str()).unwrap_or_default();
            let t = self.clients.entry(key.clone()).or_insert_with(|| Tracked {
                shared: Observed::new(now, 0),
                processes: HashMap::new(),
                last_at_cap: None,
                cap_events,
                flagged: false,
            });
            if cap_events > t.cap_events || c.waiting.load(Relaxed) > 0 {
                t.last_at_cap = Some(now);
            }
            t.cap_events = cap_events;
            let shared = seen.remove(&None).unwrap_or_default();
            t.processes.retain(|p, _| seen.contains_key(&Some(*p)));
            let last_at_cap = t.last_at_cap;
            observe_one(&key, None, &mut t.shared, &shared, now, &th, last_at_cap, keep_history);
            for (p, s) in seen {
                let p = p.expect("None removed above");
                let o = t.processes.entry(p).or_insert_with(|| {
                    let mut o = Observed::new(now, 0);
                    o.history.one_process = true;
                    o
                });
                observe_one(&key, Some(p), o, &s, now, &th, last_at_cap, keep_history);
            }
            present.insert(key, ());
        }
        self.clients.retain(|k, _| present.contains_key(k));

        let mut live = HashMap::new();
        for conn in conns {
            // A connection that closed after `conns` was taken was judged by `closing` already; a snapshot from
            // before that (another worker thread's) must not make it a live suspect again.
            if conn.closed().is_some() {
                continue;
            }
            let Some(h) = self.clients.get(conn.client.display()).and_then(|t| t.history(conn.peer.process())) else {
                continue;
            };
            if let Some(verdict) = judge(&view_of(conn), h, now, &th) {
                live.insert(conn.id, Suspect { conn: conn.clone(), verdict });
            }
        }
        // Suspects whose connection closed become evidence.
        for (id, s) in std::mem::take(&mut self.live) {
            if !live.contains_key(&id) {
                if let Some((closed_at, closed_reason)) = s.conn.closed() {
                    self.keep_closed(ClosedSuspect { conn: s.conn, verdict: s.verdict, closed_at, closed_reason });
                }
            }
        }
        self.live = live;
        let keep = leak.keep_closed_suspects.0.unwrap_or(Duration::ZERO);
        while self.closed.front().is_some_and(|c| now.saturating_duration_since(c.closed_at) > keep) {
            self.closed.pop_front();
        }
        self.log_transitions(now, stats);
    }

    /// A connection is closing: if it is a suspect at this moment (checked now, not at the last tick, so a
    /// timeout equal to the threshold still leaves evidence), it is kept as a reclaimed suspect.
    pub fn closing(&mut self, conn: &Arc<Conn>, now: Instant, leak: &Leak) {
        let live = self.live.remove(&conn.id).map(|s| s.verdict);
        let Some((closed_at, closed_reason)) = conn.closed() else { return };
        let th = Thresholds { idle: leak.idle_threshold.0, idle_in_transaction: leak.idle_in_transaction_threshold.0 };
        let process = conn.peer.process();
        let tracked = self.clients.get_mut(conn.client.display());
        let now_verdict =
            tracked.as_ref().and_then(|t| t.history(process)).and_then(|h| judge(&view_of(conn), h, now, &th));
        // Closed by its own client: a free connection closed so is its pool's idle timeout at work.
        if let Some(o) =
            tracked.filter(|_| closed_reason == CloseReason::Client.as_str()).and_then(|t| t.observed_mut(process))
        {
            o.client_closed(conn.id, now);
        }
        if let Some(verdict) = now_verdict.or(live) {
            self.keep_closed(ClosedSuspect { conn: conn.clone(), verdict, closed_at, closed_reason });
        }
    }

    /// What the detector knows of the client's pools.
    pub fn pools_seen(&self, key: &str) -> PoolsSeen {
        let Some(t) = self.clients.get(key) else { return PoolsSeen::default() };
        PoolsSeen {
            processes: t.processes.len(),
            several_pools_since: t.shared.history.several_pools_since,
            processes_with_several_pools: t
                .processes
                .values()
                .filter(|o| o.history.several_pools_since.is_some())
                .count(),
        }
    }

    /// Client keys with reclaimed suspects still kept (their client must not be forgotten before them).
    pub fn clients_with_evidence(&self) -> std::collections::HashSet<String> {
        self.closed.iter().map(|c| c.conn.client.display().to_string()).collect()
    }

    fn log_transitions(&mut self, now: Instant, stats: &Stats) {
        let mut by_client: HashMap<&str, Vec<&Suspect>> = HashMap::new();
        for s in self.live.values() {
            by_client.entry(s.conn.client.display()).or_default().push(s);
        }
        for (key, t) in self.clients.iter_mut() {
            match (by_client.get(key.as_str()), t.flagged) {
                (Some(suspects), false) => {
                    t.flagged = true;
                    let oldest = suspects.iter().min_by_key(|s| s.conn.state_since()).expect("non-empty");
                    let statement = crate::redact::render(
                        &oldest.conn.last_statement(),
                        stats.statement_text,
                        stats.statement_max_length as usize,
                    );
                    let keys = &stats.query_tag_keys;
                    let mut tags = crate::redact::tags::extract(&oldest.conn.borrowed_statement(), keys);
                    if tags.is_empty() {
                        tags = crate::redact::tags::extract(&oldest.conn.last_statement(), keys);
                    }
                    let code = crate::redact::tags::line(&tags);
                    self.flagged.push((
                        key.clone(),
                        format!(
                            "client {key} holds {} suspect connection{} ({}; oldest idle {} s{}): {}",
                            suspects.len(),
                            if suspects.len() == 1 { "" } else { "s" },
                            oldest.verdict.reason.as_str(),
                            now.saturating_duration_since(oldest.conn.state_since()).as_secs(),
                            if code.is_empty() { String::new() } else { format!("; code: {code}") },
                            oldest.verdict.evidence
                        ),
                    ));
                    warn!(
                        client = %key,
                        suspects = suspects.len(),
                        tags = %crate::redact::tags::line(&tags),
                        oldest_idle_seconds = now.saturating_duration_since(oldest.conn.state_since()).as_secs(),
                        reason = oldest.verdict.reason.as_str(),
                        backend_pid = oldest.conn.backend_pid(),
                        last_statement = statement.as_deref().unwrap_or(""),
                        trace_id = oldest.conn.trace_id().as_deref().unwrap_or(""),
                        confidence = oldest.verdict.confidence.as_str(),
                        evidence = %oldest.verdict.evidence,
                        "leak suspected: client {key} holds {} suspect connection{}",
                        suspects.len(),
                        if suspects.len() == 1 { "" } else { "s" }
                    );
                }
                (None, true) => {
                    t.flagged = false;
                    info!(client = %key, "leak suspicion cleared: client {key} has no suspect connections");
                }
                _ => {}
            }
        }
    }
}
