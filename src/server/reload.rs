//! Config reload: on SIGHUP and whenever the config file's content changes.
//!
//! The file is re-read every [`POLL_INTERVAL`] and compared with what was last loaded. Comparing content
//! (rather than watching inotify events) catches every way a file is replaced: an in-place write, a rename
//! over it, and the `..data` symlink swap of a mounted ConfigMap, with no event to miss. A new config is
//! applied with [`State::update_settings`]; an invalid one is logged and the old settings stay.
//!
//! Reading the file and building the settings (TLS files, the system's root certificates) block, so they
//! run on tokio's blocking pool, never on the runtime thread that relays every session.

use crate::config::source::ConfigSource;
use crate::state::{Settings, State};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// [`watch`] as a task of its own.
pub fn spawn(state: Arc<State>, source: ConfigSource, requests: mpsc::Receiver<()>, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(watch(state, source, requests, poll))
}

/// Runs the reloader until `requests` closes (SIGHUP sends on it): the file is read every `poll`.
pub async fn watch(state: Arc<State>, source: ConfigSource, mut requests: mpsc::Receiver<()>, poll: Duration) {
    let source = Arc::new(source);
    let read = || async {
        match &source.config {
            Some(p) => tokio::fs::read(p).await.ok(),
            None => None,
        }
    };
    let mut seen = read().await;
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            r = requests.recv() => match r { Some(()) => "SIGHUP", None => return },
            _ = tick.tick(), if source.config.is_some() => {
                let now = read().await;
                // A missing file (mid-swap) is not a change: wait for the new one.
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
        };
        apply(&state, &source, why).await;
    }
}

async fn apply(state: &Arc<State>, source: &Arc<ConfigSource>, why: &str) {
    let (state2, source2) = (state.clone(), source.clone());
    // The live policy (control plane) stays laid over what the source says now.
    let built = tokio::task::spawn_blocking(move || {
        source2.load().and_then(|config| {
            state2.live.set_started(Arc::new(config.clone()));
            Settings::reloaded(state2.live.overlay(config), &state2.settings())
        })
    })
    .await;
    let Ok(built) = built else {
        error!(trigger = why, "config reload failed (the loader panicked); keeping the previous settings");
        return;
    };
    match built {
        Ok(settings) => {
            let before = state.settings();
            let same = *settings.config == *before.config;
            for (key, changed) in [
                ("listen", settings.config.listen != before.config.listen),
                ("listen_unix", settings.config.listen_unix != before.config.listen_unix),
                ("admin_listen", settings.config.admin_listen != before.config.admin_listen),
                ("pod_identity", settings.config.pod_identity != before.config.pod_identity),
                ("budget", settings.config.budget != before.config.budget),
                ("control", settings.config.control != before.config.control),
            ] {
                if changed {
                    warn!(
                        trigger = why,
                        key, "this key applies at the next restart only; the running proxy keeps its value"
                    );
                }
            }
            state.update_settings(settings);
            if same {
                debug!(trigger = why, "config re-read, unchanged");
            } else {
                info!(trigger = why, "config reloaded");
            }
        }
        Err(e) => {
            error!(trigger = why, error = %e, "config reload rejected; keeping the previous settings")
        }
    }
}
