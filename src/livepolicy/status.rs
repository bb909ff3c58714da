//! A sidecar's live policy as it stands: the config it started with (or last re-read), the policy the
//! control plane last served, where the applied settings come from, and the reclaims already acted on.
//! Written by the control client and the reloader, read by `/policy`.

use super::{LivePolicy, Reclaim};
use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Reclaims remembered as done (each acted on once); the oldest is forgotten past this.
const REMEMBERED_RECLAIMS: usize = 16;

#[derive(Default)]
struct Inner {
    started: Option<Arc<Config>>,
    policy: Option<LivePolicy>,
    tag: Option<String>,
    sources: Vec<String>,
    applied_at: Option<Instant>,
    answered_at: Option<Instant>,
    error: Option<String>,
    reclaims_done: VecDeque<String>,
    reclaim_in_force: Option<Reclaim>,
    connections_opened: u64,
}

/// What `/policy` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveView {
    /// `https://…` of the control plane, if this sidecar has one.
    pub control_plane: Option<String>,
    /// The tag of the policy applied (as the control plane served it).
    pub tag: Option<String>,
    /// Where the settings come from, in the order applied.
    pub sources: Vec<String>,
    pub applied_seconds_ago: Option<f64>,
    pub last_answer_seconds_ago: Option<f64>,
    /// The last failure to ask or to apply; `null` once an answer was applied again.
    pub error: Option<String>,
    /// TLS connections opened to the control plane so far (one, while it stays reachable: polls share it).
    #[serde(default)]
    pub connections_opened: u64,
    /// The policy keys in force now.
    pub policy: super::PolicyKeys,
}

pub struct Status {
    inner: Mutex<Inner>,
    /// 1 while the last ask of the control plane failed (the policy in force holds).
    pub failing: prometheus::IntGauge,
    /// Policies applied that changed the settings.
    pub applied_total: prometheus::IntCounter,
}

impl Default for Status {
    fn default() -> Self {
        let opts = |name: &str, help: &str| prometheus::Opts::new(name, help).namespace("pgwarden");
        Status {
            inner: Mutex::default(),
            failing: prometheus::IntGauge::with_opts(opts(
                "control_plane_failing",
                "1 while the control plane (the injector) does not answer; the policy in force holds",
            ))
            .expect("valid gauge"),
            applied_total: prometheus::IntCounter::with_opts(opts(
                "live_policy_applied_total",
                "policies from the control plane that changed this sidecar's settings",
            ))
            .expect("valid counter"),
        }
    }
}

impl Status {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The config as started (or re-read from its source on reload): what the live policy is laid over.
    pub fn set_started(&self, config: Arc<Config>) {
        self.lock().started = Some(config);
    }

    pub fn started(&self) -> Option<Arc<Config>> {
        self.lock().started.clone()
    }

    /// `config` (just read from its source) with the last live policy laid over it; unchanged when there is
    /// none or it no longer applies.
    pub fn overlay(&self, config: Config) -> Config {
        match &self.lock().policy {
            Some(p) => p.apply(&config).map(|(c, _)| c).unwrap_or(config),
            None => config,
        }
    }

    /// A policy was applied (`changed`: the settings changed with it).
    pub fn applied(&self, policy: LivePolicy, tag: String, sources: Vec<String>, changed: bool, now: Instant) {
        self.failing.set(0);
        if changed {
            self.applied_total.inc();
        }
        let mut i = self.lock();
        i.policy = Some(policy);
        i.tag = Some(tag);
        i.sources = sources;
        i.applied_at = Some(now);
        i.answered_at = Some(now);
        i.error = None;
    }

    /// An answer that changed nothing arrived.
    pub fn answered(&self, now: Instant) {
        self.failing.set(0);
        let mut i = self.lock();
        i.answered_at = Some(now);
        i.error = None;
    }

    /// Asking failed (`unreachable`) or the answer could not apply.
    pub fn failed(&self, error: String, unreachable: bool) {
        if unreachable {
            self.failing.set(1);
        }
        self.lock().error = Some(error);
    }

    /// How many connections the control client has opened so far.
    pub fn set_connections_opened(&self, n: u64) {
        self.lock().connections_opened = n;
    }

    /// Whether `r` is new here: true once per reclaim (then it is the one in force for the close messages).
    pub fn take_reclaim(&self, r: &Reclaim) -> bool {
        let mut i = self.lock();
        if i.reclaims_done.contains(&r.at) {
            return false;
        }
        if i.reclaims_done.len() >= REMEMBERED_RECLAIMS {
            i.reclaims_done.pop_front();
        }
        i.reclaims_done.push_back(r.at.clone());
        i.reclaim_in_force = Some(r.clone());
        true
    }

    /// The reclaim being acted on (for the message a closed client gets).
    pub fn reclaim_in_force(&self) -> Option<Reclaim> {
        self.lock().reclaim_in_force.clone()
    }

    pub fn view(&self, control_plane: Option<String>, config: &Config, now: Instant) -> LiveView {
        let i = self.lock();
        let ago = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_secs_f64());
        let sources = if i.sources.is_empty() {
            vec!["the config the sidecar started with (file, environment, flags)".to_string()]
        } else {
            i.sources.clone()
        };
        LiveView {
            control_plane,
            tag: i.tag.clone(),
            sources,
            applied_seconds_ago: ago(i.applied_at),
            last_answer_seconds_ago: ago(i.answered_at),
            error: i.error.clone(),
            connections_opened: i.connections_opened,
            policy: super::PolicyKeys::of(config),
        }
    }
}
