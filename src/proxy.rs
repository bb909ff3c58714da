//! The proxy as a value: settings, registry and pod identity, and the accept loop that runs sessions.
//!
//! `Proxy::serve(listener, shutdown)` is what `pgwarden proxy` runs and what tests run in-process.
//! Owns: the accept loop, the drain on shutdown, the current [`Settings`]. Does not own: what a session does
//! (see `session`) or signals (see `lifecycle`).

use crate::clients::Clients;
use crate::config::{Config, ConfigError};
use crate::identity::PodIdentity;
use crate::leak::Detector;
use crate::metrics::Metrics;
use crate::registry::{signal, Registry};
use crate::upstream::Dialer;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use std::time::Instant;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

/// A validated config plus what is derived from it once (the upstream dialer with its TLS setup).
pub struct Settings {
    pub config: Arc<Config>,
    pub dialer: Dialer,
}

impl Settings {
    pub fn new(config: Config) -> Result<Settings, ConfigError> {
        let dialer = Dialer {
            target: config.upstream.clone(),
            mode: config.upstream_tls,
            tls: crate::tls::client_config(&config)?,
            timeout: config.upstream_connect_timeout.0.unwrap_or(Duration::from_secs(5)),
        };
        Ok(Settings { config: Arc::new(config), dialer })
    }
}

pub struct Proxy {
    registry: Arc<Registry>,
    clients: Arc<Clients>,
    /// Read once per connection (and on reload), never per message.
    settings: std::sync::RwLock<Arc<Settings>>,
    pod: PodIdentity,
    detector: Mutex<Detector>,
    metrics: Metrics,
    draining: AtomicBool,
}

/// Clients with no connection for this long are forgotten (and leave the metrics).
pub const FORGET_IDLE_CLIENTS: Duration = Duration::from_secs(600);

impl Proxy {
    pub fn new(settings: Settings, pod: PodIdentity) -> Arc<Proxy> {
        Arc::new(Proxy {
            registry: Arc::default(),
            clients: Arc::default(),
            settings: std::sync::RwLock::new(Arc::new(settings)),
            metrics: Metrics::new(&pod),
            pod,
            detector: Mutex::default(),
            draining: AtomicBool::new(false),
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn clients(&self) -> &Arc<Clients> {
        &self.clients
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn detector(&self) -> MutexGuard<'_, Detector> {
        self.detector.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True once shutdown began (`/readyz` fails).
    pub fn draining(&self) -> bool {
        self.draining.load(Relaxed)
    }

    /// One round of housekeeping: leak detection and forgetting long-idle clients.
    pub fn housekeeping(&self, now: Instant) {
        let evidence = self.detector().clients_with_evidence();
        self.clients.prune(now, FORGET_IDLE_CLIENTS, |key| evidence.contains(key));
        let settings = self.settings();
        let conns = self.registry.snapshot();
        let clients = self.clients.entries();
        self.detector().tick(now, &conns, &clients, &settings.config.leak, &settings.config.stats);
    }

    /// How often housekeeping runs: often enough for the leak thresholds, at most once a second.
    fn housekeeping_interval(&self) -> Duration {
        let leak = &self.settings().config.leak;
        let shortest = [leak.idle_threshold.0, leak.idle_in_transaction_threshold.0].into_iter().flatten().min();
        shortest.map_or(Duration::from_secs(1), |t| (t / 8).clamp(Duration::from_millis(100), Duration::from_secs(1)))
    }

    pub fn pod(&self) -> &PodIdentity {
        &self.pod
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

    /// A session ends: its connection leaves the registry next; the leak detector keeps it as evidence if it
    /// was a suspect.
    pub fn session_closed(&self, conn: &Arc<crate::registry::Conn>) {
        self.detector().closing(conn, Instant::now(), &self.settings().config.leak);
    }

    /// Serves clients and the admin API until `shutdown`; the admin API outlives the drain (so `/readyz`
    /// reports it) and stops once every session is closed.
    pub async fn run(self: &Arc<Self>, listener: TcpListener, admin: TcpListener, shutdown: CancellationToken) {
        let admin_stop = CancellationToken::new();
        let admin_task = tokio::spawn(crate::admin::serve(self.clone(), admin, admin_stop.clone()));
        self.serve(listener, shutdown).await;
        admin_stop.cancel();
        let _ = admin_task.await;
    }

    /// Accepts clients until `shutdown` is cancelled, then waits for every session to drain.
    pub async fn serve(self: &Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let sessions = TaskTracker::new();
        let housekeeping = tokio::spawn({
            let proxy = self.clone();
            async move {
                loop {
                    tokio::time::sleep(proxy.housekeeping_interval()).await;
                    proxy.housekeeping(Instant::now());
                }
            }
        });
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        debug!(%peer, "accepted");
                        sessions.spawn(crate::session::run(self.clone(), stream, peer, shutdown.clone()));
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
        drop(listener);
        self.draining.store(true, Relaxed);
        self.registry.signal_all(signal::SHUTDOWN);
        sessions.close();
        let open = sessions.len();
        if open > 0 {
            info!(sessions = open, "draining");
        }
        sessions.wait().await;
        housekeeping.abort();
        info!("all sessions closed");
    }
}
