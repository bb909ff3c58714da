//! Per-pod overrides: `pgwarden.io/*` annotations applied over the injector's proxy config. Every value is
//! parsed with the config file's own parsers; a bad one refuses the pod with a message naming it.

use crate::config::values::{parse_bool, parse_duration, parse_host_port, parse_limit};
use crate::config::{Config, HostPort};
use std::collections::BTreeMap;

pub const PREFIX: &str = "pgwarden.io/";
pub const UPSTREAM: &str = "pgwarden.io/upstream";
pub const LISTEN_PORT: &str = "pgwarden.io/listen-port";
pub const MAX_CONNECTIONS: &str = "pgwarden.io/max-connections";
pub const IDLE_TIMEOUT: &str = "pgwarden.io/idle-timeout";
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "pgwarden.io/idle-in-transaction-timeout";
pub const ENFORCE: &str = "pgwarden.io/enforce";
/// A ConfigMap in the pod's namespace whose key `pgwarden.yaml` holds a whole config.
pub const CONFIG: &str = "pgwarden.io/config";
/// Set by the injector on pods it injected.
pub const STATUS: &str = "pgwarden.io/status";
/// The ConfigMap key holding the config.
pub const CONFIG_KEY: &str = "pgwarden.yaml";

const KNOWN: [&str; 8] =
    [UPSTREAM, LISTEN_PORT, MAX_CONNECTIONS, IDLE_TIMEOUT, IDLE_IN_TRANSACTION_TIMEOUT, ENFORCE, CONFIG, STATUS];

/// Applies the annotations to `config`. `Err` names the annotation and the problem.
pub fn apply(annotations: &BTreeMap<String, String>, config: &mut Config) -> Result<(), String> {
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        if !KNOWN.contains(&key.as_str()) {
            return Err(format!("unknown annotation {key} (known: {})", KNOWN[..7].join(", ")));
        }
    }
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let fail = |k: &str, e: String| format!("annotation {k}: {e}");
    if let Some(v) = get(UPSTREAM) {
        config.upstream = parse_host_port(v).map_err(|e| fail(UPSTREAM, e))?;
    }
    if let Some(v) = get(LISTEN_PORT) {
        let port = v
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| fail(LISTEN_PORT, format!("invalid port {v:?} (expected 1-65535)")))?;
        config.listen = HostPort { host: "127.0.0.1".into(), port };
    }
    if let Some(v) = get(MAX_CONNECTIONS) {
        config.defaults.max_connections = parse_limit(v).map_err(|e| fail(MAX_CONNECTIONS, e))?;
    }
    if let Some(v) = get(IDLE_TIMEOUT) {
        config.defaults.idle_timeout = parse_duration(v).map_err(|e| fail(IDLE_TIMEOUT, e))?;
    }
    if let Some(v) = get(IDLE_IN_TRANSACTION_TIMEOUT) {
        config.defaults.idle_in_transaction_timeout =
            parse_duration(v).map_err(|e| fail(IDLE_IN_TRANSACTION_TIMEOUT, e))?;
    }
    if let Some(v) = get(ENFORCE) {
        config.enforce = parse_bool(v).map_err(|e| fail(ENFORCE, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limit;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn applies_each_annotation() {
        let mut c = Config::default();
        apply(
            &ann(&[
                (UPSTREAM, "orders-db.prod.svc:5432"),
                (LISTEN_PORT, "5433"),
                (MAX_CONNECTIONS, "20"),
                (IDLE_TIMEOUT, "10m"),
                (IDLE_IN_TRANSACTION_TIMEOUT, "30s"),
                (ENFORCE, "false"),
                ("other.io/thing", "ignored"),
            ]),
            &mut c,
        )
        .unwrap();
        assert_eq!(c.upstream.to_string(), "orders-db.prod.svc:5432");
        assert_eq!(c.listen.to_string(), "127.0.0.1:5433");
        assert_eq!(c.defaults.max_connections, Limit(Some(20)));
        assert_eq!(c.defaults.idle_timeout.to_string(), "10m");
        assert_eq!(c.defaults.idle_in_transaction_timeout.to_string(), "30s");
        assert!(!c.enforce);
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v) in [
            (MAX_CONNECTIONS, "lots"),
            (UPSTREAM, "db"),
            (LISTEN_PORT, "0"),
            (LISTEN_PORT, "70000"),
            (IDLE_TIMEOUT, "soon"),
            (ENFORCE, "maybe"),
            ("pgwarden.io/max-conections", "3"),
        ] {
            let e = apply(&ann(&[(k, v)]), &mut Config::default()).unwrap_err();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }
}
