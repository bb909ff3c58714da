//! `pgwarden fleet cap|reclaim|policy`: incident actions on one workload across all its pods, through the
//! overrides ConfigMap the control plane serves (`k8s::control`), and what each pod applies now.

use super::Failure;
use crate::config::values::{format_duration, parse_duration};
use crate::config::ConfigError;
use crate::k8s::control::edit::{edit, OverridesAt};
use crate::k8s::fleet::read::{self, Scope};
use crate::livepolicy::status::LiveView;
use crate::livepolicy::{Cap, PolicyPatch, Reclaim};
use clap::Args;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::time::Duration;

#[derive(Debug, Args)]
pub struct ControlArgs {
    /// The kubeconfig context to use (default: the current one; KUBECONFIG is honoured).
    #[arg(long)]
    pub context: Option<String>,
    /// The workload's namespace (default: the context's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The namespace pgwarden (its injector) is installed in, where the overrides ConfigMap lives.
    #[arg(long, env = "PGWARDEN_CONTROL_NAMESPACE", default_value = "pgwarden-system")]
    pub control_namespace: String,
    /// The overrides ConfigMap's name.
    #[arg(long, default_value = crate::k8s::control::overrides::DEFAULT_NAME)]
    pub overrides: String,
}

fn positive(flag: &str, v: &str) -> Result<Duration, ConfigError> {
    match parse_duration(v) {
        Ok(t) => t.0.filter(|d| !d.is_zero()).ok_or_else(|| ConfigError::invalid(flag, "must be greater than 0")),
        Err(m) => Err(ConfigError::invalid(flag, m)),
    }
}

async fn client_and_namespace(args: &ControlArgs) -> anyhow::Result<(kube::Client, String, OverridesAt)> {
    let (client, default_ns) = super::fleet::kube_client(args.context.as_deref()).await?;
    let namespace = args.namespace.clone().unwrap_or(default_ns);
    let at = OverridesAt { namespace: args.control_namespace.clone(), name: args.overrides.clone() };
    Ok((client, namespace, at))
}

/// The injected pods of `workload` in `namespace` (`None` when they cannot be listed).
async fn pods_of(client: &kube::Client, namespace: &str, workload: &str) -> Option<Vec<read::Target>> {
    let scope = Scope {
        namespace: Some(namespace.to_string()),
        selector: Scope::default_selector(),
        timeout: Duration::from_secs(5),
        concurrency: 16,
    };
    let targets = read::list(client, &scope).await.ok()?;
    Some(targets.into_iter().filter(|t| t.workload == workload).collect())
}

/// `pgwarden fleet cap WORKLOAD N|off [--for D]`.
pub async fn cap(
    args: ControlArgs,
    workload: String,
    connections: String,
    r#for: Option<String>,
) -> Result<(), Failure> {
    let n = match connections.trim() {
        "off" | "none" => None,
        v => Some(v.parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
            ConfigError::invalid(
                "N",
                format!("{v:?} is not a number of connections (1 or more), or off to remove the cap"),
            )
        })?),
    };
    let until = match (&r#for, n) {
        (Some(d), Some(_)) => {
            let d = positive("--for", d)?;
            let t = Timestamp::now()
                .checked_add(SignedDuration::try_from(d).map_err(anyhow::Error::from)?)
                .map_err(anyhow::Error::from)?;
            Some(t.round(k8s_openapi::jiff::Unit::Second).map_err(anyhow::Error::from)?.to_string())
        }
        (Some(_), None) => return Err(ConfigError::invalid("--for", "a cap that is removed has no duration").into()),
        (None, _) => None,
    };
    let (client, namespace, at) = client_and_namespace(&args).await?;
    let cap = n.map(|connections| Cap { connections, until: until.clone() });
    let edited = edit(&client, &at, &namespace, &workload, |now| {
        let mut p = now.unwrap_or_default();
        p.cap = cap.clone();
        Ok((p != PolicyPatch::default()).then_some(p))
    })
    .await?;
    let pods = pods_of(&client, &namespace, &workload).await;
    match n {
        Some(n) => {
            let until = until.map(|u| format!(" until {u}")).unwrap_or_default();
            println!("{namespace}/{workload}: every pod holds at most {n} connections to the database{until}.");
            if let Some(pods) = pods {
                println!(
                    "{} injected pods of it now: at most {} connections in all.",
                    pods.len(),
                    pods.len() as u64 * n as u64
                );
            }
            println!(
                "Open connections stay (a cap refuses new ones with 53300); `pgwarden fleet reclaim {workload}` closes its idle suspects."
            );
        }
        None => println!("{namespace}/{workload}: cap removed."),
    }
    println!(
        "Written to configmaps/{} key {} in {}; the sidecars apply it within seconds (`pgwarden fleet policy {workload}` shows each pod).",
        at.name, edited.key, at.namespace
    );
    Ok(())
}

/// `pgwarden fleet reclaim WORKLOAD [--idle-over D]`.
pub async fn reclaim(args: ControlArgs, workload: String, idle_over: Option<String>) -> Result<(), Failure> {
    let idle_over = idle_over.map(|d| positive("--idle-over", &d)).transpose()?;
    let (client, namespace, at) = client_and_namespace(&args).await?;
    let asked = Timestamp::now().round(k8s_openapi::jiff::Unit::Second).map_err(anyhow::Error::from)?.to_string();
    let by = std::env::var("USER").ok().filter(|u| !u.is_empty());
    let reclaim = Reclaim { at: asked.clone(), idle_over: idle_over.map(|d| crate::config::Timeout(Some(d))), by };
    edit(&client, &at, &namespace, &workload, |now| {
        let mut p = now.unwrap_or_default();
        p.reclaim = Some(reclaim.clone());
        Ok(Some(p))
    })
    .await?;
    let also = idle_over.map(|d| format!(" and every connection idle over {}", format_duration(d))).unwrap_or_default();
    println!(
        "{namespace}/{workload}: reclaim asked at {asked}: each of its sidecars closes its idle leak suspects{also} once, \
         within seconds, with 57P01 naming this reclaim (report-only sidecars only log what they would close)."
    );
    if let Some(pods) = pods_of(&client, &namespace, &workload).await {
        println!("{} injected pods of it now. `pgwarden fleet leaks` shows what remains.", pods.len());
    }
    Ok(())
}

/// `pgwarden fleet policy [WORKLOAD]`: each pod's policy in force, and where it comes from.
pub async fn policy(args: ControlArgs, workload: Option<String>, json: bool) -> Result<(), Failure> {
    let (client, namespace, _) = client_and_namespace(&args).await?;
    let scope = Scope {
        namespace: Some(namespace.clone()),
        selector: Scope::default_selector(),
        timeout: Duration::from_secs(5),
        concurrency: 16,
    };
    let targets: Vec<read::Target> = read::list(&client, &scope)
        .await?
        .into_iter()
        .filter(|t| workload.as_ref().is_none_or(|w| &t.workload == w))
        .collect();
    if targets.is_empty() {
        return Err(anyhow::anyhow!(
            "no injected pods{} in namespace {namespace}",
            workload.as_ref().map(|w| format!(" of workload {w}")).unwrap_or_default()
        )
        .into());
    }
    let reads = targets.iter().map(|t| {
        let client = client.clone();
        async move {
            let r = tokio::time::timeout(Duration::from_secs(5), read::get::<LiveView>(&client, t, "policy")).await;
            (t, r.unwrap_or_else(|_| Err("timed out after 5s".into())))
        }
    });
    let results = futures_util::future::join_all(reads).await;
    if json {
        let out: Vec<serde_json::Value> = results
            .iter()
            .map(|(t, r)| match r {
                Ok(v) => {
                    serde_json::json!({"namespace": t.namespace, "pod": t.pod, "workload": t.workload, "policy": v})
                }
                Err(e) => {
                    serde_json::json!({"namespace": t.namespace, "pod": t.pod, "workload": t.workload, "error": e})
                }
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out).map_err(anyhow::Error::from)?);
        return Ok(());
    }
    println!(
        "{:<40} {:<24} {:>6} {:>10} {:>8} {:>8}  FROM",
        "POD", "WORKLOAD", "CAP", "PER-CLIENT", "ENFORCE", "ANSWER"
    );
    for (t, r) in &results {
        match r {
            Ok(v) => {
                let answer = match (&v.error, v.last_answer_seconds_ago) {
                    (Some(_), _) => "failing".to_string(),
                    (None, Some(s)) => format!("{s:.0}s ago"),
                    (None, None) => "-".to_string(),
                };
                println!(
                    "{:<40} {:<24} {:>6} {:>10} {:>8} {:>8}  {}",
                    t.pod,
                    t.workload,
                    v.policy.max_total_connections.to_string(),
                    v.policy.defaults.max_connections.to_string(),
                    v.policy.enforce,
                    answer,
                    v.sources.join(" < ")
                );
                if let Some(e) = &v.error {
                    println!("{:<40}   control plane: {e}", "");
                }
            }
            Err(e) => println!("{:<40} {:<24} cannot read: {e}", t.pod, t.workload),
        }
    }
    Ok(())
}
