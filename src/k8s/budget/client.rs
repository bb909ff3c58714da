//! The sidecar's budget client: asks the coordinator for this pod's share and puts it in force.
//!
//! Owns: the request (HTTPS, the projected token read again before each one, since the kubelet rotates
//! it), the long poll (`known` + `wait`: an answer comes at once when the share changes), retries with
//! backoff, and logging a change once. What the cap is from the answers, and reclaiming, are
//! `budget::lease` and `State::apply_budget`.

use crate::budget::lease::{describe, ShareAnswer};
use crate::config::BudgetClient;
use crate::state::State;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
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

/// The coordinator's address, parsed once.
struct Target {
    host: String,
    port: u16,
    authority: String,
    tls: tokio_rustls::TlsConnector,
}

fn target(settings: &BudgetClient) -> anyhow::Result<Target> {
    let url = settings.coordinator.as_deref().context("budget.coordinator is not set")?;
    let rest = url.strip_prefix("https://").context("budget.coordinator must be an https:// URL")?;
    let authority = rest.split('/').next().unwrap_or_default().to_string();
    // HTTPS's port when the URL names none (`host`, `[::1]`); the config's own host:port parser does the rest.
    let with_port = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:443")
    } else {
        authority.clone()
    };
    let at = crate::config::values::parse_host_port(&with_port).map_err(|e| anyhow!("budget.coordinator: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(crate::tls::budget_client_config(settings)?);
    Ok(Target { host: at.host, port: at.port, authority, tls })
}

/// The budget client of this sidecar, checked before the proxy starts.
pub struct Poller {
    state: Arc<State>,
    settings: BudgetClient,
    target: Target,
    namespace: String,
    pod: String,
}

impl Poller {
    /// Fails when the coordinator URL or its CA is unusable, or the pod's name is not known.
    pub fn new(state: Arc<State>, settings: BudgetClient) -> anyhow::Result<Poller> {
        let target = target(&settings)?;
        let (namespace, pod) = match (&state.pod.namespace, &state.pod.pod) {
            (Some(ns), Some(pod)) => (ns.clone(), pod.clone()),
            _ => bail!(
                "budget.coordinator needs this pod's name and namespace (PGWARDEN_POD_NAME, PGWARDEN_POD_NAMESPACE)"
            ),
        };
        Ok(Poller { state, settings, target, namespace, pod })
    }

    /// Asks for ever. Before the first answer (and `keep_last` after the last one) the fallback cap holds.
    pub async fn run(self) {
        let state = &self.state;
        let mut known: Option<String> = None;
        let mut backoff = Duration::from_millis(500);
        let mut failing = false;
        loop {
            // After a failure the share in force is kept or the fallback: ask for an answer at once, not a long
            // poll that the coordinator, back with the same share, would hold until it changes.
            let waiting_for_change = if failing { None } else { known.as_deref() };
            let answer = ask(&self.target, &self.settings, &self.namespace, &self.pod, waiting_for_change).await;
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
                        warn!(error, coordinator = %self.target.authority, "budget coordinator: no answer; the last share holds for budget.keep_last, then budget.fallback_max_connections");
                    }
                    failing = true;
                    tokio::time::sleep(jittered(backoff)).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// `d` plus up to a quarter of it, at random.
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    d + d.mul_f64((random % 1000) as f64 / 4000.0)
}

async fn ask(
    target: &Target,
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
    let connect = async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
        let name = crate::tls::server_name(&target.host).map_err(|e| anyhow!(e))?;
        anyhow::Ok(target.tls.connect(name, tcp).await?)
    };
    let tls = tokio::time::timeout(TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("connecting to {} timed out", target.authority))?
        .with_context(|| format!("cannot reach the coordinator at {}", target.authority))?;
    let req = hyper::Request::get(&path)
        .header("host", &target.authority)
        .header("authorization", format!("Bearer {}", token.trim()))
        .body(Empty::<Bytes>::new())?;
    let exchange = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_ANSWER).collect().await.map_err(|e| anyhow!(e))?.to_bytes();
        anyhow::Ok((status, body))
    };
    let limit = if known.is_some() { WAIT + TIMEOUT } else { TIMEOUT };
    let (status, body) = tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| anyhow!("the coordinator did not answer in time"))??;
    if !status.is_success() {
        bail!("the coordinator answered {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    serde_json::from_slice(&body).context("the coordinator's answer is not a share")
}
