//! Where `top` and `leaks` read a proxy's admin API: its URL (`--admin`), or a pod named on the command line,
//! read through the Kubernetes API server's pod proxy on the user's kubeconfig (as `fleet` reads every pod),
//! so on-call needs no port-forward: `kubectl pgwarden leaks POD -n NS`.

use super::Failure;
use crate::config::ConfigError;
use crate::k8s::fleet::read::{self, Target};
use crate::views::report;
use clap::Args;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use std::time::Duration;

/// A pod to read instead of `--admin`.
#[derive(Debug, Clone, Args)]
pub struct PodArgs {
    /// Read this pod's sidecar through the Kubernetes API server (its pod proxy; needs `get` on pods and
    /// pods/proxy) instead of --admin: no port-forward needed.
    #[arg(value_name = "POD")]
    pub pod: Option<String>,
    /// The pod's namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n', requires = "pod")]
    pub namespace: Option<String>,
    /// The kubeconfig context to use (default: the current one; KUBECONFIG is honoured).
    #[arg(long, requires = "pod")]
    pub context: Option<String>,
}

/// How long one read may take, as for an admin URL.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An admin API to read.
pub enum Source {
    Admin(String),
    Pod { client: kube::Client, target: Target },
}

impl Source {
    /// The pod when one is named (looked up now, so a wrong name or namespace fails before any table),
    /// else the admin URL (checked).
    pub async fn new(admin: String, pod: PodArgs) -> Result<Source, Failure> {
        let Some(name) = pod.pod else {
            report::admin_authority(&admin).map_err(|m| ConfigError::invalid("--admin (or PGWARDEN_ADMIN)", m))?;
            return Ok(Source::Admin(admin));
        };
        let (client, default_ns) = super::fleet::kube_client(pod.context.as_deref()).await?;
        let namespace = pod.namespace.unwrap_or(default_ns);
        let found = tokio::time::timeout(READ_TIMEOUT, Api::<Pod>::namespaced(client.clone(), &namespace).get(&name))
            .await
            .map_err(|_| {
                anyhow::anyhow!("pod {namespace}/{name}: the API server did not answer in {READ_TIMEOUT:?}")
            })?;
        let pod = found.map_err(|e| match &e {
            kube::Error::Api(s) if s.code == 404 => {
                anyhow::anyhow!("no pod {name} in namespace {namespace} (-n NAMESPACE names another)")
            }
            kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
                "forbidden: this user may not get pods in namespace {namespace} (kubectl auth can-i get pods -n \
                 {namespace}; the chart's fleet-reader ClusterRole grants it)"
            ),
            _ => anyhow::anyhow!("pod {namespace}/{name}: {}", read::describe(&e)),
        })?;
        Ok(Source::Pod { client, target: Target::of(&pod) })
    }

    /// What is being read, for the live table's header.
    pub fn describe(&self) -> String {
        match self {
            Source::Admin(admin) => admin.clone(),
            Source::Pod { target, .. } => format!("pod {}/{} (port {})", target.namespace, target.pod, target.port),
        }
    }

    /// One admin endpoint (`clients`, `leaks`) as JSON.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, endpoint: &str) -> anyhow::Result<T> {
        match self {
            Source::Admin(admin) => report::get_json(admin, &format!("/{endpoint}")).await,
            Source::Pod { client, target } => {
                let read = read::get(client, target, endpoint);
                match tokio::time::timeout(READ_TIMEOUT, read).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(reason)) => Err(anyhow::anyhow!("pod {}/{}: {reason}", target.namespace, target.pod)),
                    Err(_) => Err(anyhow::anyhow!(
                        "pod {}/{}: /{endpoint} through the API server timed out after {READ_TIMEOUT:?}",
                        target.namespace,
                        target.pod
                    )),
                }
            }
        }
    }
}
