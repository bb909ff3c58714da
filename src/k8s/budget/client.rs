//! The sidecar's budget client: asks the coordinator for this pod's share and puts it in force.
//!
//! Owns: the request (HTTPS on one kept-alive connection, `control::channel`; the projected token read
//! again before each one, since the kubelet rotates it), the long poll (`known` + `wait`: an answer comes at once when the share changes), retries with
//! backoff, and logging a change once. What the cap is from the answers, and reclaiming, are
//! `budget::lease` and `State::apply_budget`.

use crate::budget::lease::{describe, ShareAnswer};
use crate::config::BudgetClient;
use crate::k8s::control::channel::{jittered, Channel, Target};
use crate::state::State;
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long a long poll may wait at the coordinator.
const WAIT: Duration = Duration::from_secs(20);
/// Connect and TLS handshake, and an answer beyond the wait.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Retries after a failure: from 500 ms, doubling, at most this (each with up to a quarter more at random,
/// so the sidecars of a fleet do not come back in step). Short, so a coordinator that is back (a rollout,
/// a restart) is asked again within seconds; a failed ask costs it one refused connection or one 503.
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Answers are small; anything larger is refused.
const MAX_ANSWER: usize = 16 * 1024;

/// The budget client of this sidecar, checked before the proxy starts.
pub struct Poller {
    state: Arc<State>,
    settings: BudgetClient,
    channel: Channel,
    namespace: String,
    pod: String,
}

impl Poller {
    /// Fails when the coordinator URL or its CA is unusable, or the pod's name is not known.
    pub fn new(state: Arc<State>, settings: BudgetClient) -> anyhow::Result<Poller> {
        let url = settings.coordinator.as_deref().context("budget.coordinator is not set")?;
        let tls = crate::tls::budget_client_config(&settings)?;
        let channel = Channel::new(Target::new(url, "budget.coordinator", tls)?);
        let (namespace, pod) = match (&state.pod.namespace, &state.pod.pod) {
            (Some(ns), Some(pod)) => (ns.clone(), pod.clone()),
            _ => bail!(
                "budget.coordinator needs this pod's name and namespace (PGWARDEN_POD_NAME, PGWARDEN_POD_NAMESPACE)"
            ),
        };
        Ok(Poller { state, settings, channel, namespace, pod })
    }

    /// Asks for ever. Before the first answer (and `keep_last` after the last one) the fallback cap holds.
    pub async fn run(mut self) {
        let state = &self.state;
        let mut known: Option<String> = None;
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        loop {
            // After a failure the share in force is kept or the fallback: ask for an answer at once, not a long
            // poll that the coordinator, back with the same share, would hold until it changes.
            let waiting_for_change = if failing { None } else { known.as_deref() };
            let answer = ask(&mut self.channel, &self.settings, &self.namespace, &self.pod, waiting_for_change).await;
            let now = Instant::now();
            match answer {
                Ok(a) => {
                    let tag = a.tag();
                    let changed = known.as_deref() != Some(tag.as_str());
                    state.budget.received(a, now);
                    let reclaimed = state.apply_budget(now);
                    if changed || failing {
                        info!(budget = %describe(&state.budget.view(now)), reclaimed, "budget share");
                    }
                    known = Some(tag);
                    failing = false;
                    backoff = Duration::from_millis(500);
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    state.budget.failed(error.clone(), now);
                    state.apply_budget(now);
                    if !failing {
                        warn!(error, coordinator = %self.channel.authority(), "budget coordinator: no answer; the last share holds for budget.keep_last, then budget.fallback_max_connections");
                    }
                    failing = true;
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

async fn ask(
    channel: &mut Channel,
    settings: &BudgetClient,
    namespace: &str,
    pod: &str,
    known: Option<&str>,
) -> anyhow::Result<ShareAnswer> {
    let token = tokio::fs::read_to_string(&settings.token_file)
        .await
        .with_context(|| format!("cannot read the token file {}", settings.token_file.display()))?;
    let enc = crate::k8s::fleet::prometheus::encode;
    let mut path = format!("/v1/share?namespace={}&pod={}", enc(namespace), enc(pod));
    if let Some(tag) = known {
        path.push_str(&format!("&known={}&wait={}", enc(tag), WAIT.as_secs()));
    }
    let limit = if known.is_some() { WAIT + TIMEOUT } else { TIMEOUT };
    let (status, body) = channel.get(&path, &token, limit, MAX_ANSWER).await?;
    if !status.is_success() {
        bail!("the coordinator answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).context("the coordinator's answer is not a share")
}
