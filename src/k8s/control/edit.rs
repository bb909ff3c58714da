//! `pgwarden fleet cap` and `pgwarden fleet reclaim`: one entry of the overrides ConfigMap changed with the
//! user's own kubeconfig, so Kubernetes RBAC decides who may (a refusal names the missing permission and the
//! `kubectl auth can-i` line that checks it). Read, change, replace with the resourceVersion read; a
//! conflicting write by someone else is read again and retried.

use super::overrides::key_of;
use crate::livepolicy::PolicyPatch;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;

/// Attempts when someone else writes the ConfigMap between our read and our write.
const ATTEMPTS: usize = 5;

/// Where the overrides live.
#[derive(Debug, Clone)]
pub struct OverridesAt {
    pub namespace: String,
    pub name: String,
}

/// What an edit did.
#[derive(Debug, Clone, PartialEq)]
pub struct Edited {
    pub key: String,
    /// The entry now (`None`: removed).
    pub entry: Option<PolicyPatch>,
}

fn refused(e: &kube::Error, verb: &str, at: &OverridesAt) -> anyhow::Error {
    match e {
        kube::Error::Api(s) if s.code == 403 => anyhow::anyhow!(
            "not allowed: your Kubernetes user may not {verb} configmaps/{name} in namespace {ns} (the pgwarden \
             overrides); the permission needed is `{verb}` on `configmaps` named {name} in {ns}. Check with: kubectl \
             auth can-i {verb} configmaps/{name} -n {ns}. The API server said: {msg}",
            name = at.name,
            ns = at.namespace,
            msg = s.message
        ),
        kube::Error::Api(s) if s.code == 404 && verb == "create" => anyhow::anyhow!(
            "namespace {} not found: is pgwarden installed there? (--control-namespace names the injector's namespace)",
            at.namespace
        ),
        other => anyhow::anyhow!(
            "{verb} configmaps/{} in {}: {}",
            at.name,
            at.namespace,
            crate::k8s::fleet::read::describe(other)
        ),
    }
}

/// Changes the entry of `namespace.workload` with `change` (given the entry now, if any; returning the new
/// one, or `None` to remove it).
pub async fn edit(
    client: &kube::Client,
    at: &OverridesAt,
    namespace: &str,
    workload: &str,
    change: impl Fn(Option<PolicyPatch>) -> anyhow::Result<Option<PolicyPatch>>,
) -> anyhow::Result<Edited> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &at.namespace);
    let key = key_of(namespace, Some(workload));
    for _ in 0..ATTEMPTS {
        let current = api.get_opt(&at.name).await.map_err(|e| refused(&e, "get", at))?;
        let mut data: BTreeMap<String, String> = current.as_ref().and_then(|c| c.data.clone()).unwrap_or_default();
        let now = match data.get(&key) {
            Some(text) => Some(serde_norway::from_str::<PolicyPatch>(text).map_err(|e| {
                anyhow::anyhow!("the entry {key} of configmaps/{} is not a policy override: {e}", at.name)
            })?),
            None => None,
        };
        let entry = change(now)?;
        match &entry {
            Some(p) => {
                data.insert(key.clone(), serde_norway::to_string(p)?);
            }
            None => {
                data.remove(&key);
            }
        }
        let written = match current {
            Some(mut cm) => {
                cm.data = Some(data);
                api.replace(&at.name, &PostParams::default(), &cm).await.map_err(|e| (e, "update"))
            }
            None => {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(at.name.clone());
                cm.metadata.namespace = Some(at.namespace.clone());
                cm.metadata.labels =
                    Some(BTreeMap::from([("app.kubernetes.io/managed-by".to_string(), "pgwarden-cli".to_string())]));
                cm.data = Some(data);
                api.create(&PostParams::default(), &cm).await.map_err(|e| (e, "create"))
            }
        };
        match written {
            Ok(_) => return Ok(Edited { key, entry }),
            Err((kube::Error::Api(s), _)) if s.code == 409 => continue,
            Err((e, verb)) => return Err(refused(&e, verb, at)),
        }
    }
    anyhow::bail!("configmaps/{} kept changing under this edit ({ATTEMPTS} attempts); try again", at.name)
}
