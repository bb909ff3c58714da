//! `GET /v1/share?namespace=NS&pod=NAME[&known=TAG&wait=SECONDS]` with `Authorization: Bearer TOKEN`:
//! the asking pod's share of its workload budget, as JSON (`budget::lease::ShareAnswer`).
//!
//! Owns: the checks of a sidecar's request about itself (shared with `GET /v1/policy`, `control::served`)
//! and the share's long poll. The token must name the pod asked about (a pod may only
//! ask about itself: another pod's share is 403, as is a token the API server does not accept). With
//! `known` (the tag of the answer the sidecar has), the answer waits until it differs or `wait` seconds
//! (at most [`MAX_WAIT`]) pass, so a share changes in the sidecar within moments of the pod change.

use super::members::{Members, NoAnswer};
use super::review::{Refused, Reviewer, TokenPod};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// The longest a long poll waits before answering with what it has.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

pub struct Coordinator {
    pub members: Arc<Members>,
    pub reviewer: Reviewer,
    /// `budgets.enabled`: `/v1/share` answers (else 404).
    pub budgets: bool,
    /// `control.enabled`: `/v1/policy` answers (else 404).
    pub policy: Option<crate::k8s::control::served::PolicyServer>,
    /// `control.enabled`: `POST /v1/events` posts the sidecars' Events on their pods.
    pub events: Option<std::sync::Arc<crate::k8s::control::events::Recorder>>,
}

/// A status and a body (JSON on 200, plain text otherwise).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn text(status: u16, body: impl Into<String>) -> Reply {
    Reply { status, body: format!("{}\n", body.into()) }
}

fn query(q: &str) -> HashMap<String, String> {
    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), percent_decode(v))).collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A request whose token was checked: the pod asking, and the query.
pub struct Asked {
    pub namespace: String,
    pub pod: String,
    pub token: TokenPod,
    pub query: HashMap<String, String>,
}

impl Asked {
    /// How long the long poll may wait (`wait`, at most [`MAX_WAIT`]), and the tag the sidecar has (`known`).
    pub fn wait_and_known(&self) -> (Duration, Option<String>) {
        let wait = self
            .query
            .get("wait")
            .and_then(|w| w.parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs)
            .min(MAX_WAIT);
        (wait, self.query.get("known").cloned())
    }

    /// A 403 when the pod now under this name is not the one the token was issued to.
    pub fn check_uid(&self, uid: &str) -> Result<(), Reply> {
        if self.token.uid.as_ref().is_some_and(|u| u != uid) {
            return Err(text(
                403,
                format!("this token belongs to an earlier pod named {}/{}", self.namespace, self.pod),
            ));
        }
        Ok(())
    }
}

/// The answer when `answer` is an error.
pub fn no_answer(e: NoAnswer, namespace: &str, pod: &str) -> Reply {
    match e {
        NoAnswer::NotSynced => text(503, "the coordinator has not listed the pods yet"),
        NoAnswer::UnknownPod => {
            text(404, format!("pod {namespace}/{pod} is not a scheduled, injected pod the coordinator knows (yet)"))
        }
    }
}

impl Coordinator {
    /// Checks the request of a sidecar about itself (`what` names the endpoint in the 400): the token must be
    /// the pod's own, reviewed by the API server, and the pod known.
    pub async fn authenticate(&self, authorization: Option<&str>, raw_query: &str, what: &str) -> Result<Asked, Reply> {
        let q = query(raw_query);
        let (Some(namespace), Some(pod)) = (q.get("namespace"), q.get("pod")) else {
            return Err(text(400, format!("GET {what} needs ?namespace=NS&pod=NAME")));
        };
        let Some(token) =
            authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
        else {
            return Err(text(401, "a projected ServiceAccount token is needed: Authorization: Bearer TOKEN"));
        };
        // Read locally first: a token that cannot be good, or that claims another pod, or asks about a pod the
        // coordinator does not know, costs the API server no TokenReview.
        let claimed = match self.reviewer.precheck(token) {
            Ok(c) => c,
            Err(e) => {
                debug!(namespace, pod, error = %e, "coordinator: token refused unreviewed");
                return Err(text(403, e.to_string()));
            }
        };
        if (&claimed.namespace, &claimed.pod) != (namespace, pod) {
            return Err(text(403, "this token claims another pod; a pod may only ask about itself"));
        }
        if let Err(e) = self.members.member(namespace, pod) {
            return Err(no_answer(e, namespace, pod));
        }
        let asker = match self.reviewer.review(token).await {
            Ok(p) => p,
            Err(e @ Refused::Unavailable(_)) => {
                warn!(error = %e, "coordinator: cannot review a token");
                return Err(text(503, e.to_string()));
            }
            Err(e @ Refused::Busy) => {
                debug!(namespace, pod, "coordinator: new-token reviews at their rate; 503");
                return Err(text(503, e.to_string()));
            }
            Err(e) => {
                debug!(namespace, pod, error = %e, "coordinator: token refused");
                return Err(text(403, e.to_string()));
            }
        };
        if (&asker.namespace, &asker.name) != (namespace, pod) {
            warn!(namespace, pod, token_pod = %format!("{}/{}", asker.namespace, asker.name), "coordinator: a pod asked about another");
            return Err(text(
                403,
                format!(
                    "this token belongs to pod {}/{}; a pod may only ask about itself",
                    asker.namespace, asker.name
                ),
            ));
        }
        Ok(Asked { namespace: namespace.clone(), pod: pod.clone(), token: asker, query: q })
    }

    /// Answers one request: `authorization` is the header's value, `raw_query` the URL's query.
    pub async fn share(&self, authorization: Option<&str>, raw_query: &str) -> Reply {
        if !self.budgets {
            return text(404, "budgets are not enabled in this injector");
        }
        let asked = match self.authenticate(authorization, raw_query, "/v1/share").await {
            Ok(a) => a,
            Err(reply) => return reply,
        };
        let (namespace, pod) = (asked.namespace.as_str(), asked.pod.as_str());
        long_poll(&asked, vec![self.members.subscribe()], || self.members.answer(namespace, pod), |a| a.tag()).await
    }
}

/// Answers `asked` with `answer()` at once, or (with `known`) once its tag differs from `known` or the wait
/// is over, looking again whenever one of `changes` moves.
pub async fn long_poll<A: serde::Serialize>(
    asked: &Asked,
    mut changes: Vec<tokio::sync::watch::Receiver<u64>>,
    answer: impl Fn() -> Result<(String, A), NoAnswer>,
    tag: impl Fn(&A) -> String,
) -> Reply {
    let (wait, known) = asked.wait_and_known();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        for c in &mut changes {
            c.borrow_and_update();
        }
        let now = answer();
        let same = match (&now, &known) {
            (Ok((_, a)), Some(k)) => &tag(a) == k,
            _ => false,
        };
        if !same || tokio::time::Instant::now() >= deadline {
            return match now {
                Ok((uid, a)) => match asked.check_uid(&uid) {
                    Ok(()) => Reply { status: 200, body: serde_json::to_string(&a).expect("answer serializes") },
                    Err(reply) => reply,
                },
                Err(e) => no_answer(e, &asked.namespace, &asked.pod),
            };
        }
        let any = futures_util::future::select_all(changes.iter_mut().map(|c| Box::pin(c.changed())));
        let _ = tokio::time::timeout_at(deadline, any).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded() {
        let q = query("namespace=shop&pod=api%2Da&known=api%3A6%3A2%3A3%3Afalse&wait=20");
        assert_eq!(q["pod"], "api-a");
        assert_eq!(q["known"], "api:6:2:3:false");
        assert_eq!(percent_decode("a%zz%4"), "a%zz%4");
    }
}
