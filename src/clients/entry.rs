//! One client's entry: its identity, counters and latency histograms, shared with its connections.

use super::latency::Latencies;
use crate::identity::ClientId;
use crate::logging::Every;
use crate::vocab::{CloseCounts, RefuseCounts};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long refusal log lines of one client are apart at least.
pub const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

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
    /// Queries cancelled at `query_timeout` (report-only: that would have been).
    pub canceled: AtomicU64,
    pub would_cancel: AtomicU64,
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
    /// Its refusal log lines: at most one per [`REFUSAL_LOG_EVERY`], saying how many were held back.
    pub refusal_lines: Every,
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
            refusal_lines: Every::new(REFUSAL_LOG_EVERY),
            logged_in: AtomicBool::new(false),
        }
    }
}
