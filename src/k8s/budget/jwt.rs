//! A projected ServiceAccount token read locally, before any TokenReview: a JWT of three base64url parts
//! whose payload is for the coordinator's audience, not expired, and names a pod. Nothing read here is
//! trusted (the signature is the API server's to check); it only spares the API server a TokenReview for
//! a token that cannot be good, so random tokens cost the coordinator nothing but a parse. Pure.

use super::review::Refused;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::Deserialize;

/// Longer tokens are refused unread (a projected token is about 1 KiB).
pub const MAX_TOKEN: usize = 16 * 1024;
/// Clock skew allowed around `exp` and `nbf`.
const SKEW_SECS: u64 = 60;

/// The pod a token claims to be for (unverified until the TokenReview).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub namespace: String,
    pub pod: String,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(default)]
    aud: Audience,
    exp: Option<u64>,
    nbf: Option<u64>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<Kubernetes>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
    #[default]
    None,
}

#[derive(Deserialize)]
struct Kubernetes {
    namespace: String,
    pod: Option<PodRef>,
}

#[derive(Deserialize)]
struct PodRef {
    name: String,
}

/// What `token` claims, or why it cannot be a good token for `audience` at `now` (Unix seconds).
pub fn precheck(token: &str, audience: &str, now: u64) -> Result<Claimed, Refused> {
    let malformed = |why: &str| Refused::Malformed(why.to_string());
    if token.len() > MAX_TOKEN {
        return Err(malformed("longer than any ServiceAccount token"));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("not a JWT (three dot-separated parts)"));
    };
    if header.is_empty() || signature.is_empty() {
        return Err(malformed("not a JWT (an empty part)"));
    }
    let json = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
    let header = json(header).ok_or_else(|| malformed("its header is not base64url"))?;
    serde_json::from_slice::<serde_json::Value>(&header)
        .ok()
        .filter(|h| h.get("alg").is_some_and(serde_json::Value::is_string))
        .ok_or_else(|| malformed("its header is not a JWT header"))?;
    let payload = json(payload).ok_or_else(|| malformed("its payload is not base64url"))?;
    let p: Payload = serde_json::from_slice(&payload).map_err(|_| malformed("its payload is not a JWT's claims"))?;
    let for_us = match &p.aud {
        Audience::One(a) => a == audience,
        Audience::Many(all) => all.iter().any(|a| a == audience),
        Audience::None => false,
    };
    if !for_us {
        return Err(Refused::WrongAudience(audience.to_string()));
    }
    if p.exp.is_none_or(|exp| exp.saturating_add(SKEW_SECS) <= now) {
        return Err(malformed("it has expired (or carries no expiry)"));
    }
    if p.nbf.is_some_and(|nbf| nbf > now.saturating_add(SKEW_SECS)) {
        return Err(malformed("it is not valid yet"));
    }
    match p.kubernetes {
        Some(Kubernetes { namespace, pod: Some(PodRef { name }) }) if !namespace.is_empty() && !name.is_empty() => {
            Ok(Claimed { namespace, pod: name })
        }
        _ => Err(Refused::NotAPod("a token not bound to a pod".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: serde_json::Value) -> String {
        let enc = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(&serde_json::json!({"alg": "RS256", "kid": "k"})), enc(&payload))
    }

    #[test]
    fn a_projected_token_claims_its_pod_and_anything_else_is_refused_unreviewed() {
        let now = 1_800_000_000;
        let good = serde_json::json!({
            "aud": ["pgwarden-coordinator"], "exp": now + 3600, "iat": now, "nbf": now,
            "kubernetes.io": {"namespace": "shop", "pod": {"name": "api-a", "uid": "u1"}, "serviceaccount": {"name": "api"}},
            "sub": "system:serviceaccount:shop:api"
        });
        assert_eq!(
            precheck(&jwt(good.clone()), "pgwarden-coordinator", now),
            Ok(Claimed { namespace: "shop".into(), pod: "api-a".into() })
        );
        assert!(matches!(precheck(&jwt(good.clone()), "other", now), Err(Refused::WrongAudience(_))));
        assert!(matches!(precheck(&jwt(good.clone()), "pgwarden-coordinator", now + 7200), Err(Refused::Malformed(_))));
        let mut one_aud = good.clone();
        one_aud["aud"] = "pgwarden-coordinator".into();
        assert!(precheck(&jwt(one_aud), "pgwarden-coordinator", now).is_ok());
        let mut no_pod = good.clone();
        no_pod["kubernetes.io"]["pod"] = serde_json::Value::Null;
        assert!(matches!(precheck(&jwt(no_pod), "pgwarden-coordinator", now), Err(Refused::NotAPod(_))));
        for junk in ["", "abc", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(MAX_TOKEN + 1)] {
            assert!(matches!(precheck(junk, "pgwarden-coordinator", now), Err(Refused::Malformed(_))), "{junk:.20}");
        }
    }
}
