//! `pgwarden fleet top` and `pgwarden fleet leaks`: every injected pod's leak picture in one command, from a
//! laptop with the user's kubeconfig (or from Prometheus), aggregated per workload and client key. The
//! incident actions (`cap`, `reclaim`, `policy`) are in `fleet_control`.

use super::Failure;
use crate::config::values::parse_duration;
use crate::config::ConfigError;
use crate::k8s::fleet::aggregate::{summarize, Summary};
use crate::k8s::fleet::read::{self, Scope, Target};
use crate::k8s::fleet::{prometheus, render, Outcome};
use clap::{Args, Subcommand};
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// A live table of every injected pod's clients, per workload and per client, leakers first.
    Top {
        #[command(flatten)]
        args: FleetArgs,
        /// Print the table once and exit.
        #[arg(long)]
        once: bool,
        /// Refresh interval.
        #[arg(long, default_value = "5s", value_name = "DURATION")]
        interval: String,
    },
    /// The verdict: which workloads leak, their worst pods and the evidence. Exit 3 when anything is
    /// suspected, 0 when nothing is.
    Leaks {
        #[command(flatten)]
        args: FleetArgs,
    },
    /// Cap one workload everywhere: every pod of it holds at most N connections to the database (`off`
    /// removes the cap), through the control plane's overrides; needs `update` on that ConfigMap.
    Cap {
        /// The workload (a Deployment, StatefulSet, … as `pgwarden fleet top` names it).
        workload: String,
        /// Connections per pod, or `off`.
        #[arg(value_name = "N|off")]
        connections: String,
        /// Lift the cap after this long (e.g. 30m).
        #[arg(long = "for", value_name = "DURATION")]
        r#for: Option<String>,
        #[command(flatten)]
        args: super::fleet_control::ControlArgs,
    },
    /// Close one workload's idle leak suspects on every pod, once (57P01 naming the action).
    Reclaim {
        workload: String,
        /// Also close its connections idle longer than this, suspects or not.
        #[arg(long, value_name = "DURATION")]
        idle_over: Option<String>,
        #[command(flatten)]
        args: super::fleet_control::ControlArgs,
    },
    /// What each pod (of one workload, or of the namespace) applies now, and where it comes from.
    Policy {
        workload: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        args: super::fleet_control::ControlArgs,
    },
}

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The kubeconfig context to use (default: the current one; KUBECONFIG is honoured).
    #[arg(long)]
    pub context: Option<String>,
    /// The namespace to look in (default: the context's namespace).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Look in every namespace.
    #[arg(long, short = 'A', conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Which pods: a label selector.
    #[arg(long, short = 'l', default_value = "pgwarden.io/injected=true")]
    pub selector: String,
    /// Read the figures from this Prometheus (one query per figure instead of one read per pod), then the
    /// evidence from the worst pods through the API server.
    #[arg(long, value_name = "URL")]
    pub prometheus: Option<String>,
    /// Per-pod (and per-query) timeout.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    pub timeout: String,
    /// Pods read at once.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Pods whose evidence is read through the API server after a Prometheus summary.
const EVIDENCE_PODS: usize = 3;

fn duration(flag: &str, v: &str) -> Result<Duration, ConfigError> {
    match parse_duration(v) {
        Ok(t) => t.0.filter(|d| !d.is_zero()).ok_or_else(|| ConfigError::invalid(flag, "must be greater than 0")),
        Err(m) => Err(ConfigError::invalid(flag, m)),
    }
}

pub async fn run(command: FleetCommand) -> Result<(), Failure> {
    match command {
        FleetCommand::Leaks { args } => {
            let summary = collect(&args).await?;
            print(&args, &summary, render::verdict)?;
            if summary.leaking().next().is_some() {
                Err(Failure::LeaksFound)
            } else {
                Ok(())
            }
        }
        FleetCommand::Cap { workload, connections, r#for, args } => {
            super::fleet_control::cap(args, workload, connections, r#for).await
        }
        FleetCommand::Reclaim { workload, idle_over, args } => {
            super::fleet_control::reclaim(args, workload, idle_over).await
        }
        FleetCommand::Policy { workload, json, args } => super::fleet_control::policy(args, workload, json).await,
        FleetCommand::Top { args, once, interval } => {
            let interval = duration("--interval", &interval)?;
            loop {
                let summary = collect(&args).await?;
                if once || args.json {
                    return print(&args, &summary, render::table);
                }
                println!("\x1b[2J\x1b[H(every {}; Ctrl-C quits)", crate::config::values::format_duration(interval));
                print(&args, &summary, render::table)?;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
            }
        }
    }
}

fn print(args: &FleetArgs, summary: &Summary, text: fn(&Summary) -> String) -> Result<(), Failure> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(summary).map_err(anyhow::Error::from)?);
    } else {
        print!("{}", text(summary));
    }
    Ok(())
}

pub async fn kube_client(context: Option<&str>) -> anyhow::Result<(kube::Client, String)> {
    let config = match context {
        Some(c) => {
            let options = kube::config::KubeConfigOptions { context: Some(c.to_string()), ..Default::default() };
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| anyhow::anyhow!("kubeconfig context {c:?}: {e}"))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| anyhow::anyhow!("no Kubernetes config (kubeconfig or in-cluster): {e}"))?,
    };
    let namespace = config.default_namespace.clone();
    Ok((kube::Client::try_from(config)?, namespace))
}

/// The summary of the fleet the arguments name.
pub async fn collect(args: &FleetArgs) -> Result<Summary, Failure> {
    let timeout = duration("--timeout", &args.timeout)?;
    if let Some(url) = &args.prometheus {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "--prometheus",
                format!("must be an http:// or https:// URL, got {url:?}"),
            )
            .into());
        }
        return from_prometheus(args, url, timeout).await;
    }
    let (client, default_ns) = kube_client(args.context.as_deref()).await?;
    let scope = scope(args, default_ns, timeout);
    let targets = read::list(&client, &scope).await?;
    if targets.is_empty() {
        return Err(anyhow::anyhow!(
            "no pods match {} {}; is this the right context? (--all-namespaces looks everywhere)",
            scope.selector,
            scope.namespace.as_deref().map_or("in any namespace".to_string(), |n| format!("in namespace {n}"))
        )
        .into());
    }
    let reports = read::read_all(&client, &targets, &scope).await;
    let summary = summarize(&reports);
    if summary.pods_read == 0 {
        eprint!("{}", render::table(&summary));
        return Err(anyhow::anyhow!("none of the {} pods could be read (reasons above)", targets.len()).into());
    }
    Ok(summary)
}

fn scope(args: &FleetArgs, default_ns: String, timeout: Duration) -> Scope {
    Scope {
        namespace: if args.all_namespaces { None } else { Some(args.namespace.clone().unwrap_or(default_ns)) },
        selector: args.selector.clone(),
        timeout,
        concurrency: args.concurrency as usize,
    }
}

/// The figures from Prometheus; then the evidence of the worst pods through the pod proxy, when the
/// kubeconfig allows (otherwise the summary says the evidence is missing and why).
async fn from_prometheus(args: &FleetArgs, url: &str, timeout: Duration) -> Result<Summary, Failure> {
    let namespace = if args.all_namespaces { None } else { args.namespace.as_deref() };
    let mut reports = prometheus::read(url, namespace, timeout).await?;
    let first = summarize(&reports);
    let worst: Vec<(String, String)> = first
        .leaking()
        .flat_map(|w| w.leaking_pods.iter().map(move |p| (w.namespace.clone(), p.pod.clone())))
        .take(EVIDENCE_PODS)
        .collect();
    if worst.is_empty() {
        return Ok(first);
    }
    let evidence = async {
        let (client, _) = kube_client(args.context.as_deref()).await?;
        let mut found = Vec::new();
        for (ns, pod) in &worst {
            let scope = Scope { namespace: Some(ns.clone()), selector: args.selector.clone(), timeout, concurrency: 1 };
            let targets: Vec<Target> =
                read::list(&client, &scope).await?.into_iter().filter(|t| &t.pod == pod).collect();
            for t in &targets {
                found.push(read::read_one(&client, t, timeout).await);
            }
        }
        Ok::<_, anyhow::Error>(found)
    };
    match evidence.await {
        Ok(found) => {
            for f in found {
                let Some(r) = reports.iter_mut().find(|r| r.namespace == f.namespace && r.pod == f.pod) else {
                    continue;
                };
                match (&mut r.outcome, f.outcome) {
                    (Outcome::Read { evidence, .. }, Outcome::Read { evidence: from_pod, .. }) => *evidence = from_pod,
                    (_, Outcome::Failed { reason }) => {
                        eprintln!("pgwarden: evidence of {}/{}: {reason}", f.namespace, f.pod)
                    }
                    _ => {}
                }
            }
        }
        Err(e) => eprintln!("pgwarden: no evidence from the pods (figures from Prometheus only): {e:#}"),
    }
    Ok(summarize(&reports))
}
