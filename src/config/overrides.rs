//! Settings given as flags or `PGWARDEN_*` variables, applied over the file (flag > env > file).
//!
//! Values stay strings until [`Overrides::apply`], which parses them with the file's own parsers so a flag
//! and a file key accept exactly the same spellings.

use super::values::{parse_bool, parse_duration, parse_host_port, parse_limit};
use super::{Config, ConfigError, LogFormat, OnLimit};
use clap::Args;

#[derive(Debug, Clone, Default, Args)]
pub struct Overrides {
    /// Address to accept clients on (host:port).
    #[arg(long, env = "PGWARDEN_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// The real database (host:port); the host is resolved on every dial.
    #[arg(long, env = "PGWARDEN_UPSTREAM", value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// Address of the admin HTTP server (metrics, stats, probes).
    #[arg(long, env = "PGWARDEN_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "PGWARDEN_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// defaults.max_connections: per-client cap (0 or off = unlimited).
    #[arg(long, env = "PGWARDEN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<String>,
    /// defaults.idle_timeout (e.g. 10m, off).
    #[arg(long, env = "PGWARDEN_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// defaults.idle_in_transaction_timeout (e.g. 30s, off).
    #[arg(long, env = "PGWARDEN_IDLE_IN_TRANSACTION_TIMEOUT", value_name = "DURATION")]
    pub idle_in_transaction_timeout: Option<String>,
    /// defaults.max_connection_age (e.g. 1h, off).
    #[arg(long, env = "PGWARDEN_MAX_CONNECTION_AGE", value_name = "DURATION")]
    pub max_connection_age: Option<String>,
    /// defaults.transaction_timeout: close a transaction open this long with 25P04 (e.g. 5m, off).
    #[arg(long, env = "PGWARDEN_TRANSACTION_TIMEOUT", value_name = "DURATION")]
    pub transaction_timeout: Option<String>,
    /// defaults.query_timeout: cancel a query running this long; the client gets 57014 (e.g. 30s, off).
    #[arg(long, env = "PGWARDEN_QUERY_TIMEOUT", value_name = "DURATION")]
    pub query_timeout: Option<String>,
    /// defaults.on_limit: reject or wait.
    #[arg(long, env = "PGWARDEN_ON_LIMIT", value_name = "reject|wait")]
    pub on_limit: Option<String>,
    /// defaults.wait_timeout (e.g. 5s).
    #[arg(long, env = "PGWARDEN_WAIT_TIMEOUT", value_name = "DURATION")]
    pub wait_timeout: Option<String>,
    /// false = report-only: nothing refused or closed, only counted and logged.
    #[arg(long, env = "PGWARDEN_ENFORCE", value_name = "true|false")]
    pub enforce: Option<String>,
}

impl Overrides {
    /// Applies every override to `config`; an error names the flag and its variable.
    pub fn apply(&self, config: &mut Config) -> Result<(), ConfigError> {
        fn set<T>(
            value: &Option<String>,
            flag: &str,
            parse: impl Fn(&str) -> Result<T, String>,
            slot: &mut T,
        ) -> Result<(), ConfigError> {
            if let Some(v) = value {
                let env = format!("PGWARDEN_{}", flag.to_ascii_uppercase().replace('-', "_"));
                *slot = parse(v).map_err(|m| ConfigError::invalid(format!("--{flag} (or {env})"), m))?;
            }
            Ok(())
        }
        let d = &mut config.defaults;
        set(&self.listen, "listen", parse_host_port, &mut config.listen)?;
        set(&self.upstream, "upstream", parse_host_port, &mut config.upstream)?;
        set(&self.admin_listen, "admin-listen", parse_host_port, &mut config.admin_listen)?;
        set(&self.log_format, "log-format", parse_enum::<LogFormat>, &mut config.log_format)?;
        set(&self.max_connections, "max-connections", parse_limit, &mut d.max_connections)?;
        set(&self.idle_timeout, "idle-timeout", parse_duration, &mut d.idle_timeout)?;
        set(
            &self.idle_in_transaction_timeout,
            "idle-in-transaction-timeout",
            parse_duration,
            &mut d.idle_in_transaction_timeout,
        )?;
        set(&self.max_connection_age, "max-connection-age", parse_duration, &mut d.max_connection_age)?;
        set(&self.transaction_timeout, "transaction-timeout", parse_duration, &mut d.transaction_timeout)?;
        set(&self.query_timeout, "query-timeout", parse_duration, &mut d.query_timeout)?;
        set(&self.on_limit, "on-limit", parse_enum::<OnLimit>, &mut d.on_limit)?;
        set(&self.wait_timeout, "wait-timeout", parse_duration, &mut d.wait_timeout)?;
        set(&self.enforce, "enforce", parse_bool, &mut config.enforce)?;
        Ok(())
    }
}

impl Overrides {
    /// The flag (and its variable) that set config `key`, when one did: a validation error then names
    /// what the user typed, not a file key they never wrote.
    pub fn origin_of(&self, key: &str) -> Option<String> {
        let flag = match key {
            "listen" => (&self.listen, "listen"),
            "upstream" => (&self.upstream, "upstream"),
            "admin_listen" => (&self.admin_listen, "admin-listen"),
            "log_format" => (&self.log_format, "log-format"),
            "defaults.max_connections" => (&self.max_connections, "max-connections"),
            "defaults.idle_timeout" => (&self.idle_timeout, "idle-timeout"),
            "defaults.idle_in_transaction_timeout" => {
                (&self.idle_in_transaction_timeout, "idle-in-transaction-timeout")
            }
            "defaults.max_connection_age" => (&self.max_connection_age, "max-connection-age"),
            "defaults.transaction_timeout" => (&self.transaction_timeout, "transaction-timeout"),
            "defaults.query_timeout" => (&self.query_timeout, "query-timeout"),
            "defaults.on_limit" => (&self.on_limit, "on-limit"),
            "defaults.wait_timeout" => (&self.wait_timeout, "wait-timeout"),
            "enforce" => (&self.enforce, "enforce"),
            _ => return None,
        };
        let (value, flag) = flag;
        value.as_ref()?;
        Some(format!("--{flag} (or PGWARDEN_{})", flag.to_ascii_uppercase().replace('-', "_")))
    }
}

/// Parses a lowercase enum spelled as in the file.
fn parse_enum<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, String> {
    serde_norway::from_str(s.trim()).map_err(|e| {
        let msg = e.to_string();
        // serde says "unknown variant `x`, expected one of ..."; keep that part.
        msg.split(" at line").next().unwrap_or(&msg).to_string()
    })
}
