//! One client's entry: its identity, counters and latency histograms, shared with its connections.

use super::latency::Latencies;
use crate::identity::ClientId;
use crate::vocab::{CloseCounts, RefuseCounts};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counters of one client; read without locks by the stats endpoints.
#[derive(Debug, Default)]
pub struct ClientCounters {
    pub open: AtomicU32,
    pub waiting: AtomicU32,
    pub opened: AtomicU64,
    pub refused: RefuseCounts,
    pub would_refuse: RefuseCounts,
    pub closed: CloseCounts,
    pub would_close: CloseCounts,
}

/// One client's entry: its identity and counters. Shared with every connection of the client.
#[derive(Debug)]
pub struct ClientEntry {
    pub id: Arc<ClientId>,
    /// Which entry of its key this is: a key forgotten and seen again gets a new one (its counters start
    /// from zero), so an exporter tells the two apart (never by address, which a new entry can reuse).
    pub generation: u64,
    pub counters: ClientCounters,
    /// Query latency, transaction duration and slot wait, recorded by the client's sessions.
    pub latency: Latencies,
    /// Cap in force for this client (from the last admission), for display; `None` is unlimited.
    pub max_connections: Mutex<Option<u32>>,
    /// Last refusal log line, for rate-limiting: (when, refusals not logged since).
    refusal_log: Mutex<(Option<Instant>, u64)>,
    /// A session of this client logged in (its server sent BackendKeyData). A key whose connections never
    /// did (failed or abandoned logins, anyone's invented names) is forgotten within seconds.
    pub logged_in: AtomicBool,
}

impl ClientEntry {
    /// A new entry for `id`, the `generation`th made by its table.
    pub fn new(id: Arc<ClientId>, generation: u64) -> ClientEntry {
        ClientEntry {
            id,
            generation,
            counters: ClientCounters::default(),
            latency: Latencies::new(Instant::now()),
            max_connections: Mutex::new(None),
            refusal_log: Mutex::new((None, 0)),
            logged_in: AtomicBool::new(false),
        }
    }

    /// Decides whether to log a refusal now: at most one line per `every`; returns how many were suppressed.
    pub fn refusal_log_due(&self, now: Instant, every: Duration) -> Option<u64> {
        let mut g = self.refusal_log.lock().unwrap_or_else(|e| e.into_inner());
        match g.0 {
            Some(last) if now.duration_since(last) < every => {
                g.1 += 1;
                None
            }
            _ => {
                let suppressed = std::mem::take(&mut g.1);
                g.0 = Some(now);
                Some(suppressed)
            }
        }
    }
}
