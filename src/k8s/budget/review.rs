//! Who is asking: a sidecar's projected ServiceAccount token, checked with a TokenReview for the
//! coordinator's audience, names the pod it was issued to.
//!
//! Owns: the TokenReview call, what an answer must hold (authenticated, our audience, a service account
//! user, the pod name the API server binds into the token), and a small cache so a sidecar's poll every few
//! seconds is not a TokenReview every few seconds: tokens are keyed by their SHA-256 (the token itself is
//! never kept), good answers for a minute, refusals for ten seconds, at most [`MAX_CACHED`] entries.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const MAX_CACHED: usize = 10_000;
const GOOD_FOR: Duration = Duration::from_secs(60);
const REFUSED_FOR: Duration = Duration::from_secs(10);
/// The user-info key under which the API server names the pod a bound token belongs to.
pub const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
pub const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";

/// The pod a token was issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPod {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// Why a token does not name a pod (said to the caller as a 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the token was not accepted by the API server{0}")]
    NotAuthenticated(String),
    #[error("the token is not for audience {0:?}; mount a projected token with that audience")]
    WrongAudience(String),
    #[error("the token is not a pod's ServiceAccount token bound to the pod (user {0:?})")]
    NotAPod(String),
    #[error("cannot check the token: {0}")]
    Unavailable(String),
}

/// Answers by the token's SHA-256, with when they stop being used.
type Cache = HashMap<[u8; 32], (Instant, Result<TokenPod, Refused>)>;

pub struct Reviewer {
    api: Api<TokenReview>,
    audience: String,
    cache: Mutex<Cache>,
}

impl Reviewer {
    pub fn new(client: kube::Client, audience: String) -> Reviewer {
        Reviewer { api: Api::all(client), audience, cache: Mutex::default() }
    }

    /// The pod `token` belongs to.
    pub async fn review(&self, token: &str) -> Result<TokenPod, Refused> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let key: [u8; 32] = digest.as_ref().try_into().expect("32 bytes");
        let now = Instant::now();
        if let Some((until, answer)) = self.lock().get(&key) {
            if now < *until {
                return answer.clone();
            }
        }
        let answer = self.ask(token).await;
        if matches!(answer, Err(Refused::Unavailable(_))) {
            return answer;
        }
        let until = now + if answer.is_ok() { GOOD_FOR } else { REFUSED_FOR };
        let mut cache = self.lock();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (u, _)| now < *u);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (until, answer.clone()));
        answer
    }

    async fn ask(&self, token: &str) -> Result<TokenPod, Refused> {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let answer =
            self.api.create(&PostParams::default(), &review).await.map_err(|e| Refused::Unavailable(e.to_string()))?;
        pod_of(&answer, &self.audience)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a TokenReview's status says about the pod (pure).
pub fn pod_of(review: &TokenReview, audience: &str) -> Result<TokenPod, Refused> {
    let status = review.status.clone().unwrap_or_default();
    if status.authenticated != Some(true) {
        let why = status.error.map(|e| format!(": {e}")).unwrap_or_default();
        return Err(Refused::NotAuthenticated(why));
    }
    if !status.audiences.iter().flatten().any(|a| a == audience) {
        return Err(Refused::WrongAudience(audience.to_string()));
    }
    let user = status.user.unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let namespace = username.strip_prefix("system:serviceaccount:").and_then(|r| r.split_once(':')).map(|(ns, _)| ns);
    let extra = user.extra.unwrap_or_default();
    let first = |k: &str| extra.get(k).and_then(|v| v.first()).cloned();
    match (namespace, first(POD_NAME_KEY)) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Ok(TokenPod { namespace: ns.to_string(), name, uid: first(POD_UID_KEY) })
        }
        _ => Err(Refused::NotAPod(username)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(json: serde_json::Value) -> TokenReview {
        serde_json::from_value(serde_json::json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {}, "status": json})).unwrap()
    }

    #[test]
    fn a_bound_token_names_its_pod() {
        let ok = review(serde_json::json!({
            "authenticated": true, "audiences": ["pgwarden-coordinator"],
            "user": {"username": "system:serviceaccount:shop:api", "extra": {POD_NAME_KEY: ["api-a"], POD_UID_KEY: ["u1"]}}
        }));
        assert_eq!(
            pod_of(&ok, "pgwarden-coordinator"),
            Ok(TokenPod { namespace: "shop".into(), name: "api-a".into(), uid: Some("u1".into()) })
        );
        assert_eq!(pod_of(&ok, "other"), Err(Refused::WrongAudience("other".into())));
        let forged = review(serde_json::json!({"authenticated": false, "error": "invalid bearer token"}));
        assert!(
            matches!(pod_of(&forged, "pgwarden-coordinator"), Err(Refused::NotAuthenticated(e)) if e.contains("invalid"))
        );
        let unbound = review(serde_json::json!({
            "authenticated": true, "audiences": ["pgwarden-coordinator"], "user": {"username": "system:serviceaccount:shop:api"}
        }));
        assert!(matches!(pod_of(&unbound, "pgwarden-coordinator"), Err(Refused::NotAPod(_))));
        let person = review(serde_json::json!({
            "authenticated": true, "audiences": ["pgwarden-coordinator"], "user": {"username": "alice", "extra": {POD_NAME_KEY: ["x"]}}
        }));
        assert!(matches!(pod_of(&person, "pgwarden-coordinator"), Err(Refused::NotAPod(_))));
    }
}
