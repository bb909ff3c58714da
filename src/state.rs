//! The shared state every session, view and background task receives: the current settings, the registry
//! of live connections, the client table, the leak detector, the upstream dial metrics, the pod identity and
//! whether the proxy is draining.
//!
//! Owns: [`Settings`] (a validated config plus what is derived from it once), [`State`] and the operations
//! on it that span its parts (a settings update, a session's close, a round of housekeeping). Does not own:
//! any socket, task or loop (see `server`), nor what a session does (see `session`).

use crate::budget::lease::{self, Lease, Source};
use crate::clients::Clients;
use crate::config::PodIdentityFrom;
use crate::config::{Config, ConfigError};
use crate::identity::{Peer, PodIdentity};
use crate::leak::Detector;
use crate::logging::Every;
use crate::pods::{PeerPod, PodDirectory};
use crate::registry::{signal, Conn, Registry};
use crate::tls::ClientTlsSetup;
use crate::vocab::ConnState;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

/// A validated config plus what is derived from it once (the TLS setups).
pub struct Settings {
    pub config: Arc<Config>,
    /// TLS towards the upstream (`None` for `upstream_tls: disable`).
    pub upstream_tls: Option<Arc<rustls::ClientConfig>>,
    /// TLS towards clients (`None` for `client_tls: disable`).
    pub client_tls: Option<Arc<ClientTlsSetup>>,
}

impl Settings {
    pub fn new(config: Config) -> Result<Settings, ConfigError> {
        let upstream_tls = crate::tls::client_config(&config)?;
        let client_tls = crate::tls::server_setup(&config)?;
        Ok(Settings { config: Arc::new(config), upstream_tls, client_tls })
    }

    /// The settings of a reloaded `config`: client TLS is kept from `previous` when its keys did not change
    /// (a self-signed certificate stays the same; files are followed by the certificate watcher anyway).
    /// Upstream TLS is kept when its keys did not change and it trusts the system's roots (read once, not on
    /// every reload); an `upstream_ca_file` is read again, so a rotated CA bundle applies on reload.
    pub fn reloaded(config: Config, previous: &Settings) -> Result<Settings, ConfigError> {
        let old = &previous.config;
        let same_tls = (config.client_tls, &config.client_tls_cert_file, &config.client_tls_key_file)
            == (old.client_tls, &old.client_tls_cert_file, &old.client_tls_key_file);
        let client_tls = if same_tls { previous.client_tls.clone() } else { crate::tls::server_setup(&config)? };
        let system_roots_again = config.upstream_tls == old.upstream_tls
            && config.upstream_ca_file.is_none()
            && old.upstream_ca_file.is_none();
        let upstream_tls =
            if system_roots_again { previous.upstream_tls.clone() } else { crate::tls::client_config(&config)? };
        Ok(Settings { config: Arc::new(config), upstream_tls, client_tls })
    }
}

/// Upstream dial metrics, recorded where dials happen; the metrics view exports them.
pub struct DialMetrics {
    pub duration: Histogram,
    pub errors: IntCounter,
    /// The "upstream unreachable" WARN: at most one line per 10 s (a database outage makes every pool
    /// redial in a loop); each failure is counted in `errors` all the same.
    pub unreachable_lines: Every,
}

impl Default for DialMetrics {
    fn default() -> Self {
        let buckets = vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        DialMetrics {
            duration: Histogram::with_opts(
                HistogramOpts::new("upstream_connect_duration_seconds", "resolve + connect + TLS to the upstream")
                    .namespace("pgwarden")
                    .buckets(buckets),
            )
            .expect("valid histogram"),
            errors: IntCounter::with_opts(
                Opts::new("upstream_connect_errors_total", "failed upstream dials").namespace("pgwarden"),
            )
            .expect("valid counter"),
            unreachable_lines: Every::new(Duration::from_secs(10)),
        }
    }
}

/// pgwarden's own limits, counted apart from the upstream's errors; the metrics view exports them.
pub struct LocalMetrics {
    /// Accepts and upstream dials that failed because pgwarden ran out of file descriptors (`at`: where).
    pub fd_exhausted: IntCounterVec,
    /// Sockets accepted whose startup packet has not arrived yet (TLS negotiation included): before it no
    /// client is known, so only this shows a flood of sockets that never start (a slowloris).
    pub awaiting_startup: IntGauge,
    /// Log lines dropped because stderr was not read fast enough (the log queue was full).
    pub log_lines_dropped: IntCounter,
    /// Admin connections closed at the admin port's cap: `idle_closed` (the oldest idle one, for a new
    /// one), `refused` (every one was serving a request).
    pub admin_connections_shed: IntCounterVec,
    /// Connections refused because they named a new client key while `max_clients` keys held connections.
    pub client_keys_refused: IntCounter,
    /// Their WARN line: at most one per 10 s.
    pub client_keys_refused_lines: Every,
}

impl Default for LocalMetrics {
    fn default() -> Self {
        let local = LocalMetrics {
            fd_exhausted: IntCounterVec::new(
                Opts::new(
                    "fd_exhausted_total",
                    "accepts and upstream dials that failed because pgwarden ran out of file descriptors",
                )
                .namespace("pgwarden"),
                &["at"],
            )
            .expect("valid counter"),
            awaiting_startup: IntGauge::with_opts(
                Opts::new("connections_awaiting_startup", "accepted sockets whose startup packet has not arrived")
                    .namespace("pgwarden"),
            )
            .expect("valid gauge"),
            log_lines_dropped: IntCounter::with_opts(
                Opts::new(
                    "log_lines_dropped_total",
                    "log lines dropped because stderr was not read fast enough (the log queue was full)",
                )
                .namespace("pgwarden"),
            )
            .expect("valid counter"),
            client_keys_refused: IntCounter::with_opts(
                Opts::new(
                    "client_keys_refused_total",
                    "connections refused because they named a new client key while max_clients keys held connections",
                )
                .namespace("pgwarden"),
            )
            .expect("valid counter"),
            client_keys_refused_lines: Every::new(Duration::from_secs(10)),
            admin_connections_shed: IntCounterVec::new(
                Opts::new(
                    "admin_connections_shed_total",
                    "admin connections closed at the admin port's cap (idle_closed: the oldest idle one, for a new one)",
                )
                .namespace("pgwarden"),
                &["outcome"],
            )
            .expect("valid counter"),
        };
        // Both series exist from the start, so an alert on them has something to compare.
        for at in ["accept", "dial"] {
            local.fd_exhausted.with_label_values(&[at]);
        }
        for outcome in ["idle_closed", "refused"] {
            local.admin_connections_shed.with_label_values(&[outcome]);
        }
        local
    }
}

impl LocalMetrics {
    /// Counts an accept or dial (`at`) that failed for want of a file descriptor.
    pub fn count_fd_exhausted(&self, at: &str) {
        self.fd_exhausted.with_label_values(&[at]).inc();
    }

    /// Holds one socket in `awaiting_startup` until dropped.
    pub fn awaiting_startup(&self) -> AwaitingStartup<'_> {
        self.awaiting_startup.inc();
        AwaitingStartup(&self.awaiting_startup)
    }
}

/// EMFILE or ENFILE: the process or the system is out of file descriptors.
pub fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE))
}

/// One socket counted in `pgwarden_connections_awaiting_startup`.
pub struct AwaitingStartup<'a>(&'a IntGauge);

impl Drop for AwaitingStartup<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl DialMetrics {
    pub fn observe(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        if !ok {
            self.errors.inc();
        }
    }
}

/// Clients with no connection for this long are forgotten (and leave the metrics).
pub const FORGET_IDLE_CLIENTS: Duration = Duration::from_secs(600);

/// A client none of whose connections ever logged in (failed or abandoned logins, names anyone can invent
/// before authenticating) is forgotten this long after its last connection.
pub const FORGET_NEVER_LOGGED_IN: Duration = Duration::from_secs(10);

pub struct State {
    pub registry: Arc<Registry>,
    pub clients: Arc<Clients>,
    /// The pod this pgwarden runs in.
    pub pod: Arc<PodIdentity>,
    /// Gateway mode (`pod_identity.from: peer_address`): the pods by IP, kept by the pod watcher.
    pub peers: Option<Arc<PodDirectory>>,
    pub dials: DialMetrics,
    pub local: LocalMetrics,
    /// This pod's share of its workload budget (`budget.coordinator`), written by the budget poller.
    pub budget: Arc<Lease>,
    /// Kubernetes Events for this pod, waiting for the control plane to post them.
    pub events: crate::events::Outbox,
    /// The live policy from the control plane (`control.url`): what was served, applied and reclaimed.
    pub live: crate::livepolicy::status::Status,
    /// Read once per connection (and on reload), never per message.
    settings: RwLock<Arc<Settings>>,
    detector: Mutex<Detector>,
    draining: AtomicBool,
    /// The last housekeeping round asked sessions to give their large buffers back (see `housekeeping`).
    shrinks_asked: AtomicBool,
}

impl State {
    pub fn new(settings: Settings, pod: PodIdentity) -> Arc<State> {
        let peers = (settings.config.pod_identity.from == PodIdentityFrom::PeerAddress).then(Arc::default);
        let b = &settings.config.budget;
        let budget = Arc::new(Lease::new(b.coordinator.is_some(), b.keep_last.0, b.fallback_max_connections.0));
        let events = crate::events::Outbox::new(settings.config.control.url.is_some());
        let live = crate::livepolicy::status::Status::default();
        live.set_started(settings.config.clone());
        Arc::new(State {
            events,
            live,
            registry: Arc::default(),
            clients: Arc::default(),
            pod: Arc::new(pod),
            peers,
            dials: DialMetrics::default(),
            local: LocalMetrics::default(),
            budget,
            settings: RwLock::new(Arc::new(settings)),
            detector: Mutex::default(),
            draining: AtomicBool::new(false),
            shrinks_asked: AtomicBool::new(false),
        })
    }

    /// The pod a connection from `peer` belongs to: this pod, or in gateway mode the pod behind the peer's
    /// address (a peer no pod carries is named by its address: [`PodIdentity::unknown_peer`]).
    pub fn pod_of(&self, peer: &Peer) -> Arc<PodIdentity> {
        let Some(peers) = &self.peers else { return self.pod.clone() };
        match peer {
            Peer::Tcp(addr) => match peers.lookup(addr.ip()) {
                PeerPod::Pod(pod) => pod,
                PeerPod::Unknown => Arc::new(PodIdentity::unknown_peer(peer)),
            },
            Peer::Unix { .. } => Arc::new(PodIdentity::unknown_peer(peer)),
        }
    }

    /// The settings new connections use now.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the settings: new connections use them at once; live ones recompute their policy and timers
    /// (caps are checked at admission only, so lowering a cap closes nothing).
    pub fn update_settings(&self, settings: Settings) {
        let config = settings.config.clone();
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(settings);
        self.clients
            .recheck(|id| crate::policy::effective(&config, id).0.max_connections.0, config.max_total_connections.0);
        self.registry.signal_all(signal::RELOAD);
    }

    pub fn detector(&self) -> MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once shutdown began (`/readyz` fails).
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// Shutdown began: `/readyz` fails from now on and every session is told.
    pub fn start_draining(&self) {
        self.draining.store(true, Relaxed);
        self.registry.signal_all(signal::SHUTDOWN);
    }

    /// A session ends: its connection leaves the registry next; the leak detector keeps it as evidence if it
    /// was a suspect.
    pub fn session_closed(&self, conn: &Arc<Conn>) {
        self.detector().closing(conn, Instant::now(), &self.settings().config.leak);
    }

    /// Puts the budget cap in force now into admission and, when the budget says `reclaim_idle` and the pod
    /// holds more than its share, tells the longest-idle connections above it to close (busy ones never).
    /// Returns how many were told. Runs after every answer from the coordinator and at every housekeeping.
    pub fn apply_budget(&self, now: Instant) -> usize {
        if !self.budget.enabled {
            return 0;
        }
        let view = self.budget.view(now);
        self.clients.set_budget_cap(view.effective.cap);
        // Report-only mode closes nothing, so it reclaims nothing either.
        let reclaiming = matches!(view.effective.source, Source::Share | Source::Kept)
            && view.answer.as_ref().is_some_and(|a| a.reclaim_idle)
            && self.settings().config.enforce;
        let (Some(cap), true) = (view.effective.cap, reclaiming) else { return 0 };
        let open = self.clients.total_open();
        if open <= cap {
            return 0;
        }
        let conns = self.registry.snapshot();
        let candidates: Vec<lease::Candidate> = conns
            .iter()
            .map(|c| {
                let (state, since) = c.state_and_since();
                lease::Candidate { id: c.id, state, since, listening: c.listening() }
            })
            .collect();
        let chosen = lease::reclaim(&candidates, open, cap);
        for conn in conns.iter().filter(|c| chosen.contains(&c.id)) {
            conn.signal(signal::RECLAIM_BUDGET);
        }
        chosen.len()
    }

    /// `pgwarden fleet reclaim`: tells this pod's idle leak suspects (idle or idle in a transaction), and its
    /// connections idle longer than `idle_over`, to close (each closes only if still idle when it hears).
    /// Returns how many were chosen; report-only mode tells none.
    pub fn fleet_reclaim(&self, idle_over: Option<Duration>, now: Instant) -> usize {
        let suspects: std::collections::HashSet<u64> = self.detector().live().map(|s| s.conn.id).collect();
        let chosen: Vec<_> = self
            .registry
            .snapshot()
            .into_iter()
            .filter(|c| {
                let (state, since) = c.state_and_since();
                let idle_for = now.saturating_duration_since(since);
                !c.listening()
                    && match state {
                        ConnState::Idle => suspects.contains(&c.id) || idle_over.is_some_and(|d| idle_for >= d),
                        s if s.in_transaction() => suspects.contains(&c.id),
                        _ => false,
                    }
            })
            .collect();
        if self.settings().config.enforce {
            for c in &chosen {
                c.signal(signal::RECLAIM);
            }
            if !chosen.is_empty() {
                let clients: std::collections::BTreeSet<&str> = chosen.iter().map(|c| c.client.display()).collect();
                let clients: Vec<&str> = clients.into_iter().collect();
                self.events.push(
                    crate::events::Reason::LeakReclaimed,
                    format!(
                        "pgwarden fleet reclaim: closing {} idle suspect connection{} of {}",
                        chosen.len(),
                        if chosen.len() == 1 { "" } else { "s" },
                        clients.join(", ")
                    ),
                );
            }
        }
        chosen.len()
    }

    /// One round of housekeeping: leak detection, forgetting long-idle clients, the budget cap, and asking
    /// sessions idle for a while to give their large buffers back.
    pub fn housekeeping(&self, now: Instant) {
        self.apply_budget(now);
        let evidence = self.detector().clients_with_evidence();
        self.clients.prune(now, FORGET_IDLE_CLIENTS, FORGET_NEVER_LOGGED_IN, |key| evidence.contains(key));
        let settings = self.settings();
        let conns = self.registry.snapshot();
        let asked = crate::registry::signal_shrinks(&conns, now) > 0;
        // The sessions asked last round have given their buffers back since (they run between rounds).
        if self.shrinks_asked.swap(asked, Relaxed) {
            release_free_memory();
        }
        let clients = self.clients.entries();
        let mut detector = self.detector();
        detector.tick(now, &conns, &clients, &settings.config.leak, &settings.config.stats);
        let flagged = detector.take_flagged();
        drop(detector);
        for (_, message) in flagged {
            self.events.push(crate::events::Reason::ConnectionLeak, message);
        }
    }

    /// How often housekeeping runs: often enough for the leak thresholds, at most once a second.
    pub fn housekeeping_interval(&self) -> Duration {
        let leak = &self.settings().config.leak;
        let shortest = [leak.idle_threshold.0, leak.idle_in_transaction_threshold.0].into_iter().flatten().min();
        let longest = crate::leak::MAX_SAMPLE_INTERVAL;
        shortest.map_or(longest, |t| (t / 8).clamp(Duration::from_millis(100), longest))
    }
}

/// Hands the allocator's whole free pages back to the OS. Sessions give 16 KiB buffers back after a busy spell;
/// when many held them at once, the freed chunks sit between live ones and glibc's `free` alone keeps those
/// pages resident (1,000 sessions idle after large answers measured 31 KB each instead of ~8 KB).
fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `malloc_trim` only walks the allocator's own free lists, under its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsMode;

    #[test]
    fn a_reload_keeps_upstream_tls_built_on_system_roots_and_rereads_a_ca_file() {
        let config = Config { upstream_tls: TlsMode::Prefer, ..Config::default() };
        let first = Settings::new(config.clone()).unwrap();
        let again = Settings::reloaded(config.clone(), &first).unwrap();
        assert!(Arc::ptr_eq(first.upstream_tls.as_ref().unwrap(), again.upstream_tls.as_ref().unwrap()));

        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".to_string()]).unwrap().self_signed(&key).unwrap();
        std::fs::write(&ca, cert.pem()).unwrap();
        let config = Config { upstream_tls: TlsMode::VerifyFull, upstream_ca_file: Some(ca), ..config };
        let first = Settings::new(config.clone()).unwrap();
        let again = Settings::reloaded(config.clone(), &first).unwrap();
        assert!(!Arc::ptr_eq(first.upstream_tls.as_ref().unwrap(), again.upstream_tls.as_ref().unwrap()));
        let back = Settings::reloaded(Config { upstream_tls: TlsMode::Disable, ..config }, &again).unwrap();
        assert!(back.upstream_tls.is_none(), "a changed mode is built anew");
    }
}
