//! `GET /v1/policy?namespace=NS&pod=NAME[&known=TAG&wait=SECONDS]` with `Authorization: Bearer TOKEN`: the
//! asking pod's live policy, as JSON (`livepolicy::LivePolicy`), at once or (with `known`) when it
//! changes. The same checks as `/v1/share` (`budget::coordinator`): the token must be the pod's own.
//!
//! Owns: what one pod is served: the chart values' policy with the pod's current `pgwarden.io/*`
//! annotations applied (none for a pod naming its own `pgwarden.io/config`), then the overrides for its
//! namespace and its workload.

use super::overrides::Holder;
use crate::config::Config;
use crate::k8s::budget::coordinator::{long_poll, text, Coordinator, Reply};
use crate::k8s::budget::members::{Member, Members, NoAnswer};
use crate::k8s::inject::annotations;
use crate::livepolicy::{LivePolicy, PolicyKeys};
use std::sync::Arc;
use tracing::debug;

pub struct PolicyServer {
    /// The chart values' proxy config (the injector's `proxy`).
    pub base: Config,
    pub overrides: Arc<Holder>,
}

impl PolicyServer {
    /// The policy of `member`.
    pub fn policy_of(&self, member: &Member) -> LivePolicy {
        let base = if member.annotations.contains_key(annotations::CONFIG) {
            None
        } else {
            let mut c = self.base.clone();
            if let Err(e) = annotations::apply(&member.annotations, &mut c) {
                // Admitted with them, so edited since: the chart values alone, and the pod's own problem named.
                debug!(pod = %member.key.name, error = %e, "control plane: the pod's annotations no longer apply");
                c = self.base.clone();
            }
            Some(PolicyKeys::of(&c))
        };
        LivePolicy {
            namespace: member.namespace.clone(),
            workload: member.workload.clone(),
            base,
            overrides: self.overrides.get().for_pod(&member.namespace, &member.workload),
        }
    }

    fn answer(&self, members: &Members, namespace: &str, pod: &str) -> Result<(String, LivePolicy), NoAnswer> {
        if !self.overrides.synced() {
            return Err(NoAnswer::NotSynced);
        }
        let m = members.member(namespace, pod)?;
        Ok((m.key.uid.clone(), self.policy_of(&m)))
    }
}

/// Answers one `POST /v1/events` (`body`: the sidecar's events, JSON): 202 once counted.
pub async fn events(c: &Coordinator, authorization: Option<&str>, raw_query: &str, body: &[u8]) -> Reply {
    let Some(recorder) = &c.events else {
        return text(404, "the control plane is not enabled in this injector (control.enabled)");
    };
    let asked = match c.authenticate(authorization, raw_query, "/v1/events").await {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let events: Vec<crate::events::PodEvent> = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => return text(400, format!("not a list of pod events: {e}")),
    };
    match c.members.member(&asked.namespace, &asked.pod) {
        Ok(m) => match asked.check_uid(&m.key.uid) {
            Ok(()) => {
                // Messages come from the pod: kept printable and bounded, as the sidecar made them.
                let events = events.into_iter().map(|e| crate::events::PodEvent::new(e.reason, e.message)).collect();
                recorder.record(&m, events);
                text(202, "counted")
            }
            Err(reply) => reply,
        },
        Err(e) => crate::k8s::budget::coordinator::no_answer(e, &asked.namespace, &asked.pod),
    }
}

/// Answers one `GET /v1/policy`.
pub async fn policy(c: &Coordinator, authorization: Option<&str>, raw_query: &str) -> Reply {
    let Some(server) = &c.policy else {
        return text(404, "the control plane is not enabled in this injector (control.enabled)");
    };
    let asked = match c.authenticate(authorization, raw_query, "/v1/policy").await {
        Ok(a) => a,
        Err(reply) => return reply,
    };
    let (namespace, pod) = (asked.namespace.as_str(), asked.pod.as_str());
    let changes = vec![c.members.subscribe(), server.overrides.subscribe()];
    long_poll(&asked, changes, || server.answer(&c.members, namespace, pod), LivePolicy::tag).await
}
