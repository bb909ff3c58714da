//! Config reload: on SIGHUP and whenever the config file's content changes.
//!
//! The file is re-read every [`POLL_INTERVAL`] and compared with what was last loaded. Comparing content
//! (rather than watching inotify events) catches every way a file is replaced: an in-place write, a rename
//! over it, and the `..data` symlink swap of a mounted ConfigMap, with no event to miss. A new config is
//! applied with [`State::update_settings`]; an invalid one is logged and the old settings stay.

use crate::config::source::ConfigSource;
use crate::state::{Settings, State};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info};

pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// [`watch`] as a task of its own.
pub fn spawn(state: Arc<State>, source: ConfigSource, requests: mpsc::Receiver<()>, poll: Duration) -> JoinHandle<()> {
    tokio::spawn(watch(state, source, requests, poll))
}

/// Runs the reloader until `requests` closes (SIGHUP sends on it): the file is read every `poll`.
pub async fn watch(state: Arc<State>, source: ConfigSource, mut requests: mpsc::Receiver<()>, poll: Duration) {
    let read = || source.config.as_ref().and_then(|p| std::fs::read(p).ok());
    let mut seen = read();
    let mut tick = tokio::time::interval(poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let why = tokio::select! {
            r = requests.recv() => match r { Some(()) => "SIGHUP", None => return },
            _ = tick.tick(), if source.config.is_some() => {
                let now = read();
                // A missing file (mid-swap) is not a change: wait for the new one.
                if now.is_none() || now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
        };
        apply(&state, &source, why);
    }
}

fn apply(state: &State, source: &ConfigSource, why: &str) {
    match source.load().and_then(|config| Settings::reloaded(config, &state.settings())) {
        Ok(settings) => {
            let same = *settings.config == *state.settings().config;
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
