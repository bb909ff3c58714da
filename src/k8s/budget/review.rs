//! Who is asking: a sidecar's projected ServiceAccount token, checked with a TokenReview for the
//! coordinator's audience, names the pod it was issued to.
//!
//! Owns: the TokenReview call, what an answer must hold (authenticated, our audience, a service account
//! user, the pod name the API server binds into the token), and what spares the API server: a token is read
//! locally first ([`super::jwt::precheck`]: not a JWT for our audience, expired, or naming no pod: refused
//! without a review); answers are cached by the token's SHA-256 (the token itself is never kept), good
//! ones for ten minutes and refusals for ten seconds, in two caches of [`MAX_CACHED`] each so refusals never
//! push out a good sidecar's answer (the least recently used goes when one is full); concurrent requests
//! with one token share one review; and at most [`NEW_REVIEWS_PER_SECOND`] reviews of tokens not cached
//! start each second (a burst of [`NEW_REVIEWS_BURST`]); past that the answer is 503 (the sidecar asks again
//! and keeps its share meanwhile).

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::OnceCell;

pub const MAX_CACHED: usize = 10_000;
/// A good answer is kept this long: a pod that is gone meanwhile is refused anyway (the coordinator answers
/// only pods it sees, by uid), and a fleet of N sidecars costs N reviews per this period, not per minute.
const GOOD_FOR: Duration = Duration::from_secs(600);
const REFUSED_FOR: Duration = Duration::from_secs(10);
pub const NEW_REVIEWS_PER_SECOND: f64 = 20.0;
pub const NEW_REVIEWS_BURST: f64 = 100.0;
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

/// Why a token does not name a pod (said to the caller as a 403; `Unavailable` as a 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("the token was not accepted by the API server{0}")]
    NotAuthenticated(String),
    #[error("the token is not a projected ServiceAccount token: {0}")]
    Malformed(String),
    #[error("the token is not for audience {0:?}; mount a projected token with that audience")]
    WrongAudience(String),
    #[error("the token is not a pod's ServiceAccount token bound to the pod (user {0:?})")]
    NotAPod(String),
    #[error("cannot check the token: {0}")]
    Unavailable(String),
    #[error("too many new tokens to review at once; ask again")]
    Busy,
}

type Answer = Result<TokenPod, Refused>;

/// Answers by the token's SHA-256: until when each holds, and when it was last used.
struct Cache {
    entries: HashMap<[u8; 32], (Instant, Instant, Answer)>,
}

impl Cache {
    fn new() -> Cache {
        Cache { entries: HashMap::new() }
    }

    fn get(&mut self, key: &[u8; 32], now: Instant) -> Option<Answer> {
        let (until, used, answer) = self.entries.get_mut(key)?;
        if now >= *until {
            return None;
        }
        *used = now;
        Some(answer.clone())
    }

    /// Keeps `answer`; when full, what expired goes, then the least recently used.
    fn put(&mut self, key: [u8; 32], until: Instant, now: Instant, answer: Answer) {
        if self.entries.len() >= MAX_CACHED && !self.entries.contains_key(&key) {
            self.entries.retain(|_, (u, _, _)| now < *u);
            if self.entries.len() >= MAX_CACHED {
                let lru = self.entries.iter().min_by_key(|(_, (_, used, _))| *used).map(|(k, _)| *k);
                if let Some(k) = lru {
                    self.entries.remove(&k);
                }
            }
        }
        self.entries.insert(key, (until, now, answer));
    }
}

/// Reviews that may start: refilled at [`NEW_REVIEWS_PER_SECOND`] up to [`NEW_REVIEWS_BURST`].
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * NEW_REVIEWS_PER_SECOND;
        self.tokens = (self.tokens + refill).min(NEW_REVIEWS_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

pub struct Reviewer {
    api: Api<TokenReview>,
    audience: String,
    good: Mutex<Cache>,
    refused: Mutex<Cache>,
    /// Reviews under way, by token digest: a second request with the token waits for the first's answer.
    inflight: Mutex<HashMap<[u8; 32], Arc<OnceCell<Answer>>>>,
    bucket: Mutex<Bucket>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reviewer {
    pub fn new(client: kube::Client, audience: String) -> Reviewer {
        Reviewer {
            api: Api::all(client),
            audience,
            good: Mutex::new(Cache::new()),
            refused: Mutex::new(Cache::new()),
            inflight: Mutex::default(),
            bucket: Mutex::new(Bucket { tokens: NEW_REVIEWS_BURST, at: Instant::now() }),
        }
    }

    /// The pod `token` claims, read locally (no review): a token that cannot be good is refused here.
    pub fn precheck(&self, token: &str) -> Result<super::jwt::Claimed, Refused> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        super::jwt::precheck(token, &self.audience, now)
    }

    /// The pod `token` belongs to (call [`Reviewer::precheck`] first).
    pub async fn review(&self, token: &str) -> Answer {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let key: [u8; 32] = digest.as_ref().try_into().expect("32 bytes");
        let now = Instant::now();
        if let Some(answer) = lock(&self.good).get(&key, now).or_else(|| lock(&self.refused).get(&key, now)) {
            return answer;
        }
        let cell = lock(&self.inflight).entry(key).or_default().clone();
        let answer = cell
            .get_or_init(|| async {
                if !lock(&self.bucket).take(Instant::now()) {
                    return Err(Refused::Busy);
                }
                let answer = self.ask(token).await;
                let now = Instant::now();
                match &answer {
                    Ok(_) => lock(&self.good).put(key, now + GOOD_FOR, now, answer.clone()),
                    Err(Refused::Unavailable(_) | Refused::Busy) => {}
                    Err(_) => lock(&self.refused).put(key, now + REFUSED_FOR, now, answer.clone()),
                }
                answer
            })
            .await
            .clone();
        let mut inflight = lock(&self.inflight);
        if inflight.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            inflight.remove(&key);
        }
        answer
    }

    async fn ask(&self, token: &str) -> Answer {
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: Some(vec![self.audience.clone()]) },
            ..TokenReview::default()
        };
        let answer =
            self.api.create(&PostParams::default(), &review).await.map_err(|e| Refused::Unavailable(e.to_string()))?;
        pod_of(&answer, &self.audience)
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
