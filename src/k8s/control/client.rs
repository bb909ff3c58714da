//! The sidecar's control client: asks the injector for this pod's live policy and puts it in force as a
//! reload does (caps for new connections, timeouts and thresholds for every connection at once).
//!
//! Owns: the long poll on one kept-alive connection (`channel`), retries with backoff (the last policy
//! holds meanwhile: a sidecar never falls back because the control plane is away), logging each change
//! once with what changed, and acting on a reclaim once.

use super::channel::{jittered, Channel, Target};
use crate::config::control::ControlClient;
use crate::livepolicy::{changes, LivePolicy};
use crate::state::{Settings, State};
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a long poll may wait at the injector.
const WAIT: Duration = Duration::from_secs(20);
/// An answer beyond the wait.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failure: from 500 ms, doubling, at most this, with up to a quarter more at random.
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// A policy (its rules included) is small; anything larger is refused.
const MAX_ANSWER: usize = 256 * 1024;

pub struct Poller {
    state: Arc<State>,
    settings: ControlClient,
    channel: Channel,
    /// The same injector, for the pod's Events (a connection of their own: the poll holds this one).
    events: Target,
    namespace: String,
    pod: String,
}

impl Poller {
    /// Fails when the URL or its CA is unusable, or the pod's name is not known.
    pub fn new(state: Arc<State>, settings: ControlClient) -> anyhow::Result<Poller> {
        let url = settings.url.as_deref().context("control.url is not set")?;
        let tls = crate::tls::control_client_config(&settings)?;
        let events = Target::new(url, "control.url", tls)?;
        let channel = Channel::new(events.clone());
        let (namespace, pod) = match (&state.pod.namespace, &state.pod.pod) {
            (Some(ns), Some(pod)) => (ns.clone(), pod.clone()),
            _ => bail!("control.url needs this pod's name and namespace (PGWARDEN_POD_NAME, PGWARDEN_POD_NAMESPACE)"),
        };
        Ok(Poller { state, settings, channel, events, namespace, pod })
    }

    /// The sender of this pod's Events (`events::send`), on the URL, TLS and identity checked here.
    pub fn events(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let enc = crate::k8s::fleet::prometheus::encode;
        let path = format!("/v1/events?namespace={}&pod={}", enc(&self.namespace), enc(&self.pod));
        let channel = Channel::new(self.events.clone());
        super::events::send(self.state.clone(), channel, self.settings.token_file.clone(), path)
    }

    /// Asks for ever; the config the sidecar started with holds until the first answer.
    pub async fn run(mut self) {
        let mut known: Option<String> = None;
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        loop {
            let waiting_for_change = if failing { None } else { known.as_deref() };
            let asked = self.ask(waiting_for_change).await;
            self.state.live.set_connections_opened(self.channel.handshakes);
            match asked {
                Ok(policy) => {
                    let tag = policy.tag();
                    if failing {
                        info!(control_plane = %self.channel.authority(), "control plane answering again");
                    }
                    if known.as_deref() != Some(tag.as_str()) {
                        match apply(&self.state, policy, tag.clone()).await {
                            Ok(()) => known = Some(tag),
                            Err(e) => {
                                // Keep the policy in force; ask again when the served one changes.
                                warn!(error = %e, "control plane: the served policy cannot apply; keeping the one in force");
                                self.state.live.failed(e, false);
                                known = Some(tag);
                            }
                        }
                    } else {
                        self.state.live.answered(Instant::now());
                    }
                    failing = false;
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    if !failing {
                        warn!(error, control_plane = %self.channel.authority(), "control plane: no answer; the policy in force holds");
                    }
                    self.state.live.failed(error, true);
                    failing = true;
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn ask(&mut self, known: Option<&str>) -> anyhow::Result<LivePolicy> {
        let token = tokio::fs::read_to_string(&self.settings.token_file)
            .await
            .with_context(|| format!("cannot read the token file {}", self.settings.token_file.display()))?;
        let enc = crate::k8s::fleet::prometheus::encode;
        let mut path = format!("/v1/policy?namespace={}&pod={}", enc(&self.namespace), enc(&self.pod));
        if let Some(tag) = known {
            path.push_str(&format!("&known={}&wait={}", enc(tag), WAIT.as_secs()));
        }
        let limit = if known.is_some() { WAIT + TIMEOUT } else { TIMEOUT };
        let (status, body) = self.channel.get(&path, &token, limit, MAX_ANSWER).await?;
        if !status.is_success() {
            bail!("the injector answered {status}: {}", String::from_utf8_lossy(&body).trim());
        }
        serde_json::from_slice(&body).context("the injector's answer is not a policy")
    }
}

/// Puts `policy` in force over the config the sidecar started with, logs what changed (once), and acts on
/// a reclaim not acted on before.
pub async fn apply(state: &Arc<State>, policy: LivePolicy, tag: String) -> Result<(), String> {
    let started = state.live.started().ok_or("no config to lay the policy over")?;
    let (config, sources) = policy.apply(&started)?;
    let before = state.settings();
    let what = changes(&before.config, &config);
    let built = {
        let before = before.clone();
        tokio::task::spawn_blocking(move || Settings::reloaded(config, &before))
            .await
            .map_err(|_| "building the settings panicked".to_string())?
            .map_err(|e| e.to_string())?
    };
    let reclaim = policy.reclaim().cloned();
    state.live.applied(policy, tag.clone(), sources.clone(), !what.is_empty(), Instant::now());
    if !what.is_empty() {
        state.update_settings(built);
        info!(tag, changes = %what.join("; "), sources = %sources.join(" < "), "live policy applied");
    }
    if let Some(r) = reclaim {
        if state.live.take_reclaim(&r) {
            let n = state.fleet_reclaim(r.idle_over.and_then(|t| t.0), Instant::now());
            let enforce = state.settings().config.enforce;
            info!(
                asked_at = %r.at,
                by = r.by.as_deref().unwrap_or(""),
                connections = n,
                report_only = !enforce,
                "pgwarden fleet reclaim: {}",
                if enforce { "closing the idle suspects" } else { "report-only: would close the idle suspects" }
            );
        }
    }
    Ok(())
}
