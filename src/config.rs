//! The effective configuration: every key of the config file, its defaults, and how a file, `PGWARDEN_*`
//! environment variables and command-line flags combine into one validated [`Config`].
//!
//! Owns: parsing, validation, precedence (flag > env > file), and rendering the effective settings.
//! Does not own: watching the file for changes (see `server::reload`) or acting on any setting.

pub mod control;
pub mod overrides;
pub mod source;
pub mod values;

use crate::identity::Field;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;
pub use values::{FileMode, HostPort, Limit, Timeout};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: HostPort,
    /// A directory for a Unix-domain socket too: `DIR/.s.PGSQL.<listen port>`, as libpq expects.
    pub listen_unix: Option<PathBuf>,
    /// File mode of that socket.
    pub listen_unix_mode: FileMode,
    /// TLS for clients: `disable` answers `N` to SSLRequest, `allow` offers it, `require` insists.
    pub client_tls: ClientTls,
    /// PEM certificate chain and key for client TLS; without them a self-signed certificate is made at start.
    pub client_tls_cert_file: Option<PathBuf>,
    pub client_tls_key_file: Option<PathBuf>,
    pub upstream: HostPort,
    pub upstream_tls: TlsMode,
    pub upstream_ca_file: Option<PathBuf>,
    pub upstream_connect_timeout: Timeout,
    /// Unacknowledged data to the upstream for this long means the link is dead (`TCP_USER_TIMEOUT`).
    pub upstream_tcp_user_timeout: Timeout,
    /// TCP keepalive on client and upstream sockets, so a peer that vanished without a reset is noticed.
    pub tcp_keepalive: Keepalive,
    pub client_login_timeout: Timeout,
    pub admin_listen: HostPort,
    pub log_format: LogFormat,
    pub shutdown_grace: Timeout,
    /// `false` is report-only: nothing refused or closed, only counted and logged.
    pub enforce: bool,
    pub client_key: Vec<Field>,
    /// Where the `pod`, `namespace` and `workload` fields come from: this pod, or the peer's pod (gateway).
    pub pod_identity: PodIdentityConfig,
    pub max_total_connections: Limit,
    /// Distinct clients labelled in metrics; the rest share the label `other`.
    pub max_tracked_clients: u32,
    /// Distinct client keys held at once (each with its counters, histograms and leak history). A new key
    /// past it takes the place of the longest-empty one (keys that never logged in first); when every key
    /// holds a connection, the new one is refused with 53300.
    pub max_clients: u32,
    pub stats: Stats,
    pub defaults: Policy,
    pub leak: Leak,
    pub rules: Vec<Rule>,
    /// Workload budgets: where this sidecar asks for its share (the injector sets it; off by default).
    pub budget: BudgetClient,
    /// The control plane: where this sidecar asks for its live policy (the injector sets it).
    pub control: control::ControlClient,
}

/// A sidecar's budget client: the coordinator to ask, how it is trusted, and what holds when it is away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetClient {
    /// `https://HOST[:PORT]` of the coordinator (the injector's Service); `None`: budgets off.
    pub coordinator: Option<String>,
    /// PEM CA certificates that sign the coordinator's certificate (the injector writes them inline);
    /// without it and `ca_file`, the system's roots.
    pub ca_pem: Option<String>,
    pub ca_file: Option<PathBuf>,
    /// The projected ServiceAccount token (audience-bound), read again before every request.
    pub token_file: PathBuf,
    /// How long the last share holds once the coordinator stops answering (`off`: until it answers again).
    pub keep_last: Timeout,
    /// The per-pod cap after that, and before the first answer (`off`: none beyond the local rules).
    pub fallback_max_connections: Limit,
}

impl Default for BudgetClient {
    fn default() -> Self {
        BudgetClient {
            coordinator: None,
            ca_pem: None,
            ca_file: None,
            token_file: PathBuf::from("/var/run/secrets/pgwarden.io/budget/token"),
            keep_last: secs(60),
            fallback_max_connections: Limit(None),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    Disable,
    Allow,
    Require,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatementText {
    Redacted,
    Full,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimit {
    Reject,
    Wait,
}

/// Where a connection's pod identity comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PodIdentityFrom {
    /// The sidecar's own pod, from the Downward API environment (`PGWARDEN_POD_*`).
    DownwardApi,
    /// Gateway mode: the pod whose IP the client connects from, from a watch on pods in the Kubernetes API.
    PeerAddress,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodIdentityConfig {
    pub from: PodIdentityFrom,
    /// `peer_address` only: the namespaces whose pods are watched; empty watches the whole cluster.
    pub namespaces: Vec<String>,
}

impl Default for PodIdentityConfig {
    fn default() -> Self {
        PodIdentityConfig { from: PodIdentityFrom::DownwardApi, namespaces: Vec::new() }
    }
}

/// The largest `stats.statement_max_length`: a connection keeps up to four texts of this size (its last
/// statement, the unnamed and the bound statement, the published copy) beside its named statements' budget
/// (`relay::statements::MAX_BYTES`), so this bounds what a client can make the sidecar hold per connection.
pub const MAX_STATEMENT_LENGTH: u32 = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stats {
    pub statement_text: StatementText,
    /// At most [`MAX_STATEMENT_LENGTH`].
    pub statement_max_length: u32,
    /// Query tag keys read beside the built-in ones (`redact::tags::KEYS`).
    pub query_tag_keys: Vec<String>,
}

/// The per-client policy: `defaults`, overridden field by field by the first matching rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    pub max_connections: Limit,
    pub on_limit: OnLimit,
    pub wait_timeout: Timeout,
    pub idle_timeout: Timeout,
    pub idle_in_transaction_timeout: Timeout,
    /// Closed at its next idle point once older than this.
    pub max_connection_age: Timeout,
    /// A transaction (explicit, or the implicit one of a single statement) open this long is closed with
    /// FATAL `25P04`, as PostgreSQL 17's `transaction_timeout`; the server rolls it back.
    pub transaction_timeout: Timeout,
    /// A query running this long is cancelled with a CancelRequest under the session's own key: the client
    /// gets PostgreSQL's `57014` and the session lives. `SET statement_timeout` cannot lift it.
    pub query_timeout: Timeout,
}

/// TCP keepalive: probe after `idle` without traffic, every `interval`, give up after `count` unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Keepalive {
    /// `off` disables keepalive.
    pub idle: Timeout,
    pub interval: Timeout,
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Leak {
    pub idle_threshold: Timeout,
    pub idle_in_transaction_threshold: Timeout,
    /// Reclaimed suspects stay in `/leaks` this long, with how they ended.
    pub keep_closed_suspects: Timeout,
}

/// A rule: globs over `client_key` fields, and the policy fields it overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: BTreeMap<Field, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_limit: Option<OnLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connection_age: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_timeout: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_timeout: Option<Timeout>,
}

fn secs(n: u64) -> Timeout {
    Timeout(Some(std::time::Duration::from_secs(n)))
}

fn addr(host: &str, port: u16) -> HostPort {
    HostPort { host: host.into(), port }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: addr("127.0.0.1", 6432),
            listen_unix: None,
            listen_unix_mode: FileMode(0o777),
            client_tls: ClientTls::Disable,
            client_tls_cert_file: None,
            client_tls_key_file: None,
            upstream: addr("127.0.0.1", 5432),
            upstream_tls: TlsMode::Prefer,
            upstream_ca_file: None,
            upstream_connect_timeout: secs(5),
            upstream_tcp_user_timeout: secs(60),
            tcp_keepalive: Keepalive::default(),
            client_login_timeout: secs(15),
            admin_listen: addr("127.0.0.1", 9187),
            log_format: LogFormat::Text,
            shutdown_grace: secs(30),
            enforce: true,
            client_key: vec![Field::ApplicationName, Field::User],
            pod_identity: PodIdentityConfig::default(),
            max_total_connections: Limit(None),
            max_tracked_clients: 200,
            max_clients: 5000,
            stats: Stats::default(),
            defaults: Policy::default(),
            leak: Leak::default(),
            rules: Vec::new(),
            budget: BudgetClient::default(),
            control: control::ControlClient::default(),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats { statement_text: StatementText::Redacted, statement_max_length: 1024, query_tag_keys: Vec::new() }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_connections: Limit(None),
            on_limit: OnLimit::Reject,
            wait_timeout: secs(5),
            idle_timeout: Timeout(None),
            idle_in_transaction_timeout: Timeout(None),
            max_connection_age: Timeout(None),
            transaction_timeout: Timeout(None),
            query_timeout: Timeout(None),
        }
    }
}

impl Default for Keepalive {
    /// A dead peer is noticed within a minute: 30 s idle, then 3 probes 10 s apart.
    fn default() -> Self {
        Keepalive { idle: secs(30), interval: secs(10), count: 3 }
    }
}

impl Default for Leak {
    fn default() -> Self {
        Leak { idle_threshold: secs(300), idle_in_transaction_threshold: secs(30), keep_closed_suspects: secs(900) }
    }
}

/// The policy timeouts that may not be 0, in the order [`timeouts_of`] gives them.
const POLICY_TIMEOUTS: [&str; 5] =
    ["idle_timeout", "idle_in_transaction_timeout", "max_connection_age", "transaction_timeout", "query_timeout"];

fn timeouts_of(p: &Policy) -> [Timeout; 5] {
    [p.idle_timeout, p.idle_in_transaction_timeout, p.max_connection_age, p.transaction_timeout, p.query_timeout]
}

/// A config problem, always naming the key, flag or variable it is about.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl ConfigError {
    pub fn invalid(origin: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { origin: origin.into(), message: message.into() }
    }
}

/// Where the YAML came from, for error messages.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Env,
    Defaults,
}

/// serde's messages in the words of a YAML file: no Rust type names.
fn plain_words(msg: &str) -> String {
    let mut out = msg.to_string();
    for int in ["u8", "u16", "u32", "u64", "usize", "i32", "i64"] {
        out = out.replace(&format!("expected {int}"), "expected a whole number");
    }
    out = out.replace("expected struct Config", "expected a mapping of config keys (key: value)");
    while let Some(i) = out.find("expected struct ") {
        let end = out[i + 16..].find(|c: char| !c.is_alphanumeric()).map_or(out.len(), |e| i + 16 + e);
        out.replace_range(i..end, "expected a mapping (key: value)");
    }
    out.replace("expected a sequence", "expected a list ([a, b])")
        .replace("expected a scalar value", "expected a single value, not a list or a mapping")
}

/// Where an unknown top-level key is (serde_norway gives no position for it): ` at line N column 1`.
fn unknown_key_line(msg: &str, text: &str) -> Option<String> {
    let key = msg.strip_prefix("unknown field `")?.split('`').next()?;
    let line = text.lines().position(|l| l.strip_prefix(key).is_some_and(|rest| rest.trim_start().starts_with(':')))?;
    Some(format!(" at line {} column 1", line + 1))
}

impl Config {
    /// Parses YAML text; `origin` names the file or variable in errors.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = serde_norway::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let mut inner = e.into_inner().to_string();
            // serde_norway prefixes the parent key ("defaults: "); the origin below already names the key.
            if let Some((prefix, rest)) = inner.split_once(": ") {
                if !prefix.contains(' ') && path.starts_with(prefix) {
                    inner = rest.to_string();
                }
            }
            inner = plain_words(&inner);
            if !inner.contains(" at line ") {
                if let Some(at) = unknown_key_line(&inner, text) {
                    inner.push_str(&at);
                }
            }
            if path.is_empty() || path == "." {
                ConfigError::invalid(origin, inner)
            } else {
                ConfigError::invalid(format!("{origin}: config key `{path}`"), inner)
            }
        })?;
        config.validate().map_err(|(key, msg)| ConfigError::invalid(format!("{origin}: config key `{key}`"), msg))?;
        Ok(config)
    }

    pub fn read_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_yaml(&text, &path.display().to_string())
    }

    /// Checks what the types alone cannot; returns the key and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, msg: &str| Err((key.to_string(), msg.to_string()));
        for (key, value) in
            [("upstream_connect_timeout", self.upstream_connect_timeout), ("shutdown_grace", self.shutdown_grace)]
        {
            if value.0.is_none() {
                return fail(key, "must be a duration, not off");
            }
        }
        if self.upstream_connect_timeout.0 == Some(std::time::Duration::ZERO) {
            return fail("upstream_connect_timeout", "must be greater than 0");
        }
        // Linux's limits for TCP_KEEPIDLE/TCP_KEEPINTVL (32767 s) and TCP_KEEPCNT (127).
        let ka = &self.tcp_keepalive;
        let keepalive_secs =
            |t: Timeout| t.0.is_some_and(|d| d >= std::time::Duration::from_secs(1) && d.as_secs() <= 32_767);
        if ka.idle.0.is_some() {
            if !keepalive_secs(ka.idle) {
                return fail("tcp_keepalive.idle", "must be off or between 1s and 32767s");
            }
            if !keepalive_secs(ka.interval) {
                return fail("tcp_keepalive.interval", "must be between 1s and 32767s");
            }
            if !(1..=127).contains(&ka.count) {
                return fail("tcp_keepalive.count", "must be between 1 and 127");
            }
        }
        if self.upstream_tcp_user_timeout.0.is_some_and(|d| d.is_zero() || d.as_millis() > u32::MAX as u128) {
            return fail("upstream_tcp_user_timeout", "must be off or between 1ms and 49 days");
        }
        // PgBouncer reads 0 as "disabled"; here 0 would close every connection at once. Say so.
        let zero = |t: Timeout| t.0 == Some(std::time::Duration::ZERO);
        let zero_msg = "0 would close every connection at once; write `off` to disable";
        if zero(self.client_login_timeout) {
            return fail("client_login_timeout", zero_msg);
        }
        let policies = std::iter::once(("defaults".to_string(), timeouts_of(&self.defaults))).chain(
            self.rules.iter().enumerate().map(|(i, r)| {
                let t = |v: Option<Timeout>| v.unwrap_or_default();
                let values = [
                    t(r.idle_timeout),
                    t(r.idle_in_transaction_timeout),
                    t(r.max_connection_age),
                    t(r.transaction_timeout),
                    t(r.query_timeout),
                ];
                (format!("rules[{i}]"), values)
            }),
        );
        for (at, values) in policies {
            for (name, value) in POLICY_TIMEOUTS.iter().zip(values) {
                if zero(value) {
                    return Err((format!("{at}.{name}"), zero_msg.to_string()));
                }
            }
        }
        match (&self.client_tls_cert_file, &self.client_tls_key_file) {
            (Some(_), None) => return fail("client_tls_key_file", "must be set with client_tls_cert_file"),
            (None, Some(_)) => return fail("client_tls_cert_file", "must be set with client_tls_key_file"),
            (Some(_), Some(_)) if self.client_tls == ClientTls::Disable => {
                return fail("client_tls_cert_file", "is set but client_tls is disable")
            }
            _ => {}
        }
        if self.listen_unix.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return fail("listen_unix", "must be a directory (or null)");
        }
        if self.upstream_tls == TlsMode::Disable && self.upstream_ca_file.is_some() {
            return fail("upstream_ca_file", "is set but upstream_tls is disable");
        }
        if self.client_key.is_empty() {
            return fail("client_key", "must list at least one field");
        }
        for (i, f) in self.client_key.iter().enumerate() {
            if self.client_key[..i].contains(f) {
                return fail("client_key", &format!("lists {} twice", f.name()));
            }
        }
        if self.pod_identity.from == PodIdentityFrom::PeerAddress
            && !self.client_key.iter().any(|f| matches!(f, Field::Pod | Field::Namespace | Field::Workload))
        {
            return fail(
                "client_key",
                "pod_identity.from: peer_address names clients by their pod, but client_key has none of pod, \
                 namespace, workload (e.g. [namespace, workload, application_name, user])",
            );
        }
        if self.pod_identity.from == PodIdentityFrom::DownwardApi && !self.pod_identity.namespaces.is_empty() {
            return fail("pod_identity.namespaces", "is only used with pod_identity.from: peer_address");
        }
        for (i, ns) in self.pod_identity.namespaces.iter().enumerate() {
            let dns_label = |s: &str| {
                (1..=63).contains(&s.len())
                    && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !s.starts_with('-')
                    && !s.ends_with('-')
            };
            if !dns_label(ns) {
                return Err((format!("pod_identity.namespaces[{i}]"), format!("{ns:?} is not a namespace name")));
            }
        }
        let b = &self.budget;
        control::validate_endpoint(
            "budget",
            "coordinator",
            b.coordinator.as_deref(),
            b.ca_pem.as_deref(),
            b.ca_file.as_ref(),
        )?;
        let c = &self.control;
        control::validate_endpoint("control", "url", c.url.as_deref(), c.ca_pem.as_deref(), c.ca_file.as_ref())?;
        if self.max_tracked_clients == 0 {
            return fail("max_tracked_clients", "must be at least 1");
        }
        if self.max_clients == 0 {
            return fail("max_clients", "must be at least 1");
        }
        if self.stats.statement_max_length == 0 || self.stats.statement_max_length > MAX_STATEMENT_LENGTH {
            return fail("stats.statement_max_length", &format!("must be between 1 and {MAX_STATEMENT_LENGTH}"));
        }
        let tag_key = |k: &String| {
            (1..=64).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if self.stats.query_tag_keys.len() > 32 || !self.stats.query_tag_keys.iter().all(tag_key) {
            return fail("stats.query_tag_keys", "at most 32 keys of 1-64 letters, digits, `_` or `-`");
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let key = |k: &str| format!("rules[{i}]{}{k}", if k.is_empty() { "" } else { "." });
            if rule.matches.is_empty() {
                return Err((
                    key("match"),
                    "must name at least one field (a rule without one would match every client; use defaults)".into(),
                ));
            }
            for (field, glob) in &rule.matches {
                if !self.client_key.contains(field) {
                    return Err((
                        key(&format!("match.{}", field.name())),
                        format!(
                            "{} is not in client_key [{}]; a rule can only match fields of the client key",
                            field.name(),
                            self.client_key.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
                if glob.len() > 256 {
                    return Err((key(&format!("match.{}", field.name())), "glob longer than 256 characters".into()));
                }
            }
        }
        Ok(())
    }

    /// The effective settings as YAML (what `check-config` prints).
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("config serializes")
    }
}

#[cfg(test)]
mod tests;
