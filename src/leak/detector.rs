//! The stateful side of leak detection: per-client history, live and reclaimed suspects, transition logs.
//!
//! `tick` runs every second or so (never per message). Everything it decides goes through the pure
//! [`suspect_reason`](super::suspect_reason).

use super::{suspect_reason, ClientHistory, ConnView, LeakReason, Thresholds};
use crate::clients::ClientEntry;
use crate::config::{Leak, Stats};
use crate::registry::Conn;
use crate::vocab::RefuseReason;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

#[derive(Debug, Clone)]
pub struct Suspect {
    pub conn: Arc<Conn>,
    pub reason: LeakReason,
}

#[derive(Debug, Clone)]
pub struct ClosedSuspect {
    pub conn: Arc<Conn>,
    pub reason: LeakReason,
    pub closed_at: Instant,
    pub closed_reason: &'static str,
}

struct Tracked {
    history: ClientHistory,
    /// Refusals (and would-refusals) at the client's own cap seen so far.
    cap_events: u64,
    /// The client has live suspects (for one WARN when it becomes a suspect, one INFO when it recovers).
    flagged: bool,
}

#[derive(Default)]
pub struct Detector {
    clients: HashMap<String, Tracked>,
    live: HashMap<u64, Suspect>,
    closed: VecDeque<ClosedSuspect>,
}

impl Detector {
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
        // History is kept back to the oldest idle connection of each client, whose baseline it holds.
        let mut oldest_idle: HashMap<&str, Instant> = HashMap::new();
        for conn in conns {
            if conn.state() == crate::vocab::ConnState::Idle {
                let since = conn.state_since();
                let e = oldest_idle.entry(conn.client.display()).or_insert(since);
                *e = (*e).min(since);
            }
        }
        let mut present = HashMap::with_capacity(clients.len());
        for entry in clients {
            let key = entry.id.display().to_string();
            let c = &entry.counters;
            let open = c.open.load(Relaxed);
            let cap_events = c.refused.get(RefuseReason::ClientLimit)
                + c.refused.get(RefuseReason::WaitTimeout)
                + c.would_refuse.get(RefuseReason::ClientLimit);
            let t = self.clients.entry(key.clone()).or_insert_with(|| Tracked {
                history: ClientHistory::new(now, open),
                cap_events,
                flagged: false,
            });
            t.history.record(now, open);
            if cap_events > t.cap_events || c.waiting.load(Relaxed) > 0 {
                t.history.last_at_cap = Some(now);
            }
            t.cap_events = cap_events;
            if let Some(cutoff) = now.checked_sub(keep_history) {
                let cutoff = oldest_idle.get(key.as_str()).map_or(cutoff, |&since| since.min(cutoff));
                t.history.prune(cutoff);
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
            let Some(t) = self.clients.get(conn.client.display()) else {
                continue;
            };
            let (state, state_since) = conn.state_and_since();
            let view = ConnView { state, state_since, listening: conn.listening() };
            if let Some(reason) = suspect_reason(&view, &t.history, now, &th) {
                live.insert(conn.id, Suspect { conn: conn.clone(), reason });
            }
        }
        // Suspects whose connection closed become evidence.
        for (id, s) in self.live.drain() {
            if !live.contains_key(&id) {
                if let Some((closed_at, closed_reason)) = s.conn.closed() {
                    self.closed.push_back(ClosedSuspect { conn: s.conn, reason: s.reason, closed_at, closed_reason });
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
        let live = self.live.remove(&conn.id).map(|s| s.reason);
        let Some((closed_at, closed_reason)) = conn.closed() else { return };
        let th = Thresholds { idle: leak.idle_threshold.0, idle_in_transaction: leak.idle_in_transaction_threshold.0 };
        let (state, state_since) = conn.state_and_since();
        let view = ConnView { state, state_since, listening: conn.listening() };
        let now_reason =
            self.clients.get(conn.client.display()).and_then(|t| suspect_reason(&view, &t.history, now, &th));
        if let Some(reason) = now_reason.or(live) {
            self.closed.push_back(ClosedSuspect { conn: conn.clone(), reason, closed_at, closed_reason });
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
                    warn!(
                        client = %key,
                        suspects = suspects.len(),
                        oldest_idle_seconds = now.saturating_duration_since(oldest.conn.state_since()).as_secs(),
                        reason = oldest.reason.as_str(),
                        backend_pid = oldest.conn.backend_pid(),
                        last_statement = statement.as_deref().unwrap_or(""),
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
