//! `GET /v1/share?namespace=NS&pod=NAME[&known=TAG&wait=SECONDS]` with `Authorization: Bearer TOKEN`:
//! the asking pod's share of its workload budget, as JSON (`budget::lease::ShareAnswer`).
//!
//! Owns: the request's checks and its long poll. The token must name the pod asked about (a pod may only
//! ask about itself: another pod's share is 403, as is a token the API server does not accept). With
//! `known` (the tag of the answer the sidecar has), the answer waits until it differs or `wait` seconds
//! (at most [`MAX_WAIT`]) pass, so a share changes in the sidecar within moments of the pod change.

use super::members::{Members, NoAnswer};
use super::review::{Refused, Reviewer};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

/// The longest a long poll waits before answering with what it has.
pub const MAX_WAIT: Duration = Duration::from_secs(25);

pub struct Coordinator {
    pub members: Arc<Members>,
    pub reviewer: Reviewer,
}

/// A status and a body (JSON on 200, plain text otherwise).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

fn text(status: u16, body: impl Into<String>) -> Reply {
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

impl Coordinator {
    /// Answers one request: `authorization` is the header's value, `raw_query` the URL's query.
    pub async fn share(&self, authorization: Option<&str>, raw_query: &str) -> Reply {
        let q = query(raw_query);
        let (Some(namespace), Some(pod)) = (q.get("namespace"), q.get("pod")) else {
            return text(400, "GET /v1/share needs ?namespace=NS&pod=NAME");
        };
        let Some(token) =
            authorization.and_then(|h| h.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
        else {
            return text(401, "a projected ServiceAccount token is needed: Authorization: Bearer TOKEN");
        };
        // Read locally first: a token that cannot be good, or that claims another pod, or asks about a pod the
        // coordinator does not know, costs the API server no TokenReview.
        let claimed = match self.reviewer.precheck(token) {
            Ok(c) => c,
            Err(e) => {
                debug!(namespace, pod, error = %e, "budget coordinator: token refused unreviewed");
                return text(403, e.to_string());
            }
        };
        if (&claimed.namespace, &claimed.pod) != (namespace, pod) {
            return text(403, "this token claims another pod; a pod may only ask for its own share");
        }
        match self.members.answer(namespace, pod) {
            Err(NoAnswer::NotSynced) => return text(503, "the coordinator has not listed the pods yet"),
            Err(NoAnswer::UnknownPod) => {
                return text(
                    404,
                    format!("pod {namespace}/{pod} is not a scheduled, injected pod the coordinator knows (yet)"),
                )
            }
            Ok(_) => {}
        }
        let asker = match self.reviewer.review(token).await {
            Ok(p) => p,
            Err(e @ Refused::Unavailable(_)) => {
                warn!(error = %e, "budget coordinator: cannot review a token");
                return text(503, e.to_string());
            }
            Err(e @ Refused::Busy) => {
                debug!(namespace, pod, "budget coordinator: new-token reviews at their rate; 503");
                return text(503, e.to_string());
            }
            Err(e) => {
                debug!(namespace, pod, error = %e, "budget coordinator: token refused");
                return text(403, e.to_string());
            }
        };
        if (&asker.namespace, &asker.name) != (namespace, pod) {
            warn!(namespace, pod, token_pod = %format!("{}/{}", asker.namespace, asker.name), "budget coordinator: a pod asked about another");
            return text(
                403,
                format!(
                    "this token belongs to pod {}/{}; a pod may only ask for its own share",
                    asker.namespace, asker.name
                ),
            );
        }
        let wait =
            q.get("wait").and_then(|w| w.parse::<u64>().ok()).map_or(Duration::ZERO, Duration::from_secs).min(MAX_WAIT);
        let known = q.get("known").cloned();
        let mut changes = self.members.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            changes.borrow_and_update();
            let answer = self.members.answer(namespace, pod);
            let same = match (&answer, &known) {
                (Ok((_, a)), Some(k)) => &a.tag() == k,
                _ => false,
            };
            if !same || tokio::time::Instant::now() >= deadline {
                return match answer {
                    Ok((uid, a)) => {
                        if asker.uid.as_ref().is_some_and(|u| u != &uid) {
                            return text(403, format!("this token belongs to an earlier pod named {namespace}/{pod}"));
                        }
                        Reply { status: 200, body: serde_json::to_string(&a).expect("answer serializes") }
                    }
                    Err(NoAnswer::NotSynced) => text(503, "the coordinator has not listed the pods yet"),
                    Err(NoAnswer::UnknownPod) => text(
                        404,
                        format!("pod {namespace}/{pod} is not a scheduled, injected pod the coordinator knows (yet)"),
                    ),
                };
            }
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                continue;
            }
        }
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
