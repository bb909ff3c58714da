//! Per-pod overrides: `pgwarden.io/*` annotations applied over the injector's proxy config. Every value is
//! parsed with the config file's own parsers; a bad one refuses the pod with a message naming it.

use crate::config::values::{parse_bool, parse_duration, parse_host_port, parse_limit};
use crate::config::{ClientTls, Config, HostPort};
use std::collections::BTreeMap;

pub const PREFIX: &str = "pgwarden.io/";
pub const UPSTREAM: &str = "pgwarden.io/upstream";
pub const LISTEN_PORT: &str = "pgwarden.io/listen-port";
pub const MAX_CONNECTIONS: &str = "pgwarden.io/max-connections";
pub const IDLE_TIMEOUT: &str = "pgwarden.io/idle-timeout";
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "pgwarden.io/idle-in-transaction-timeout";
pub const TRANSACTION_TIMEOUT: &str = "pgwarden.io/transaction-timeout";
pub const QUERY_TIMEOUT: &str = "pgwarden.io/query-timeout";
pub const ENFORCE: &str = "pgwarden.io/enforce";
/// `disable`, `allow` or `require`: TLS between the application and its sidecar.
pub const CLIENT_TLS: &str = "pgwarden.io/client-tls";
/// A `kubernetes.io/tls` Secret in the pod's namespace to serve for client TLS (else a self-signed one).
pub const CLIENT_TLS_SECRET: &str = "pgwarden.io/client-tls-secret";
/// `true` (or a directory): a Unix socket in an `emptyDir` shared by the sidecar and the app containers.
pub const UNIX_SOCKET: &str = "pgwarden.io/unix-socket";
/// Where the shared socket directory is mounted unless `pgwarden.io/unix-socket` names another.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/pgwarden";
/// Where the client TLS Secret is mounted in the sidecar.
pub const CLIENT_TLS_DIR: &str = "/etc/pgwarden/client-tls";
/// A ConfigMap in the pod's namespace whose key `pgwarden.yaml` holds a whole config.
pub const CONFIG: &str = "pgwarden.io/config";
/// Set by the injector on pods it injected.
pub const STATUS: &str = "pgwarden.io/status";
/// The ConfigMap key holding the config.
pub const CONFIG_KEY: &str = "pgwarden.yaml";

use crate::budget::spec::{BUDGET_ANNOTATION, RECLAIM_ANNOTATION};

/// Every annotation the injector reads (the coordinator reads the two budget ones); `STATUS` last.
const KNOWN: [&str; 15] = [
    UPSTREAM,
    LISTEN_PORT,
    MAX_CONNECTIONS,
    IDLE_TIMEOUT,
    IDLE_IN_TRANSACTION_TIMEOUT,
    TRANSACTION_TIMEOUT,
    QUERY_TIMEOUT,
    ENFORCE,
    CLIENT_TLS,
    CLIENT_TLS_SECRET,
    UNIX_SOCKET,
    CONFIG,
    BUDGET_ANNOTATION,
    RECLAIM_ANNOTATION,
    STATUS,
];

/// Applies the annotations to `config`. `Err` names the annotation and the problem.
pub fn apply(annotations: &BTreeMap<String, String>, config: &mut Config) -> Result<(), String> {
    for key in annotations.keys().filter(|k| k.starts_with(PREFIX)) {
        if !KNOWN.contains(&key.as_str()) {
            return Err(format!("unknown annotation {key} (known: {})", KNOWN[..KNOWN.len() - 1].join(", ")));
        }
    }
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let fail = |k: &str, e: String| format!("annotation {k}: {e}");
    if let Some(v) = get(BUDGET_ANNOTATION) {
        crate::budget::spec::parse_annotation(v)?;
    }
    if let Some(v) = get(RECLAIM_ANNOTATION) {
        if !matches!(v.trim(), "true" | "false") {
            return Err(fail(RECLAIM_ANNOTATION, format!("{v:?} is neither true nor false")));
        }
    }
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
    if let Some(v) = get(TRANSACTION_TIMEOUT) {
        config.defaults.transaction_timeout = parse_duration(v).map_err(|e| fail(TRANSACTION_TIMEOUT, e))?;
    }
    if let Some(v) = get(QUERY_TIMEOUT) {
        config.defaults.query_timeout = parse_duration(v).map_err(|e| fail(QUERY_TIMEOUT, e))?;
    }
    if let Some(v) = get(ENFORCE) {
        config.enforce = parse_bool(v).map_err(|e| fail(ENFORCE, e))?;
    }
    if let Some(v) = get(CLIENT_TLS) {
        config.client_tls = match v.trim() {
            "disable" => ClientTls::Disable,
            "allow" => ClientTls::Allow,
            "require" => ClientTls::Require,
            other => return Err(fail(CLIENT_TLS, format!("invalid value {other:?} (disable, allow or require)"))),
        };
    }
    if let Some(secret) = client_tls_secret(annotations)? {
        if config.client_tls == ClientTls::Disable {
            return Err(fail(
                CLIENT_TLS_SECRET,
                format!("names Secret {secret:?} but client TLS is disable (set {CLIENT_TLS})"),
            ));
        }
        config.client_tls_cert_file = Some(format!("{CLIENT_TLS_DIR}/tls.crt").into());
        config.client_tls_key_file = Some(format!("{CLIENT_TLS_DIR}/tls.key").into());
    }
    if let Some(dir) = socket_dir(annotations)? {
        config.listen_unix = Some(dir.into());
    }
    Ok(())
}

/// The directory of the shared Unix socket, if the pod asks for one.
pub fn socket_dir(annotations: &BTreeMap<String, String>) -> Result<Option<String>, String> {
    let Some(v) = annotations.get(UNIX_SOCKET).map(|v| v.trim()) else { return Ok(None) };
    if v.starts_with('/') {
        let ok = v.len() > 1 && !v.contains("..") && !v.contains(char::is_whitespace);
        return if ok {
            Ok(Some(v.trim_end_matches('/').to_string()))
        } else {
            Err(format!("annotation {UNIX_SOCKET}: invalid directory {v:?}"))
        };
    }
    match parse_bool(v) {
        Ok(true) => Ok(Some(DEFAULT_SOCKET_DIR.to_string())),
        Ok(false) => Ok(None),
        Err(_) => Err(format!("annotation {UNIX_SOCKET}: invalid value {v:?} (true, false, or an absolute directory)")),
    }
}

/// The Secret named for client TLS, checked to be a valid object name.
pub fn client_tls_secret(annotations: &BTreeMap<String, String>) -> Result<Option<&str>, String> {
    let Some(name) = annotations.get(CLIENT_TLS_SECRET).map(|v| v.trim()) else { return Ok(None) };
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(Some(name))
    } else {
        Err(format!("annotation {CLIENT_TLS_SECRET}: invalid Secret name {name:?}"))
    }
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
            (CLIENT_TLS, "yes"),
            (CLIENT_TLS_SECRET, "Not_A_Name"),
            (UNIX_SOCKET, "sometimes"),
            (UNIX_SOCKET, "/a/../b"),
            ("pgwarden.io/max-conections", "3"),
        ] {
            let e = apply(&ann(&[(k, v)]), &mut Config::default()).unwrap_err();
            assert!(e.contains(k), "{k}={v}: {e}");
        }
    }
}
