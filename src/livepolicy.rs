//! Live policy: what the control plane (the injector) serves each sidecar, and how a sidecar lays it over the
//! config it started with.
//!
//! Owns: the answer's shape ([`LivePolicy`]), the override format of the overrides ConfigMap
//! ([`PolicyPatch`]), laying them over a config ([`LivePolicy::apply`]) and saying what changed
//! ([`changes`]). Pure: no I/O, no clocks (the injector drops expired overrides before it serves them).
//!
//! The policy keys are the ones a reload changes for live connections: `enforce`, `max_total_connections`,
//! `defaults`, `leak` and `rules`. Listening addresses, TLS and the upstream stay as the pod started.

pub mod status;

use crate::config::{Config, Leak, Limit, OnLimit, Policy, Rule, Timeout};
use serde::{Deserialize, Serialize};

/// The policy keys of a config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyKeys {
    pub enforce: bool,
    pub max_total_connections: Limit,
    pub defaults: Policy,
    pub leak: Leak,
    pub rules: Vec<Rule>,
}

impl PolicyKeys {
    pub fn of(c: &Config) -> PolicyKeys {
        PolicyKeys {
            enforce: c.enforce,
            max_total_connections: c.max_total_connections,
            defaults: c.defaults,
            leak: c.leak.clone(),
            rules: c.rules.clone(),
        }
    }

    fn put(&self, c: &mut Config) {
        c.enforce = self.enforce;
        c.max_total_connections = self.max_total_connections;
        c.defaults = self.defaults;
        c.leak = self.leak.clone();
        c.rules = self.rules.clone();
    }
}

/// One entry of the overrides ConfigMap: any of the policy keys, each field on its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enforce: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_total_connections: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub defaults: Option<DefaultsPatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leak: Option<LeakPatch>,
    /// Replaces the rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
    /// `pgwarden fleet cap`: every pod of the workload holds at most this many connections
    /// (`max_total_connections`), until `until` if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<Cap>,
    /// `pgwarden fleet reclaim`: close the idle suspects (and idle connections past `idle_over`) once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaim: Option<Reclaim>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultsPatch {
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeakPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_threshold: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_in_transaction_threshold: Option<Timeout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_closed_suspects: Option<Timeout>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cap {
    pub connections: u32,
    /// RFC 3339; absent: until removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reclaim {
    /// When it was asked (RFC 3339): the action's identity, so each sidecar acts on it once.
    pub at: String,
    /// Also close idle connections idle longer than this (suspects or not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_over: Option<Timeout>,
    /// Who asked, for the log and the client's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl PolicyPatch {
    /// Lays this patch over `c`.
    pub fn apply(&self, c: &mut Config) {
        if let Some(v) = self.enforce {
            c.enforce = v;
        }
        if let Some(v) = self.max_total_connections {
            c.max_total_connections = v;
        }
        if let Some(cap) = &self.cap {
            c.max_total_connections = Limit(Some(cap.connections));
        }
        if let Some(d) = &self.defaults {
            let p = &mut c.defaults;
            let set = |slot: &mut Timeout, v: Option<Timeout>| {
                if let Some(v) = v {
                    *slot = v;
                }
            };
            if let Some(v) = d.max_connections {
                p.max_connections = v;
            }
            if let Some(v) = d.on_limit {
                p.on_limit = v;
            }
            set(&mut p.wait_timeout, d.wait_timeout);
            set(&mut p.idle_timeout, d.idle_timeout);
            set(&mut p.idle_in_transaction_timeout, d.idle_in_transaction_timeout);
            set(&mut p.max_connection_age, d.max_connection_age);
            set(&mut p.transaction_timeout, d.transaction_timeout);
            set(&mut p.query_timeout, d.query_timeout);
        }
        if let Some(l) = &self.leak {
            for (slot, v) in [
                (&mut c.leak.idle_threshold, l.idle_threshold),
                (&mut c.leak.idle_in_transaction_threshold, l.idle_in_transaction_threshold),
                (&mut c.leak.keep_closed_suspects, l.keep_closed_suspects),
            ] {
                if let Some(v) = v {
                    *slot = v;
                }
            }
        }
        if let Some(rules) = &self.rules {
            c.rules = rules.clone();
        }
    }
}

/// An override and where it comes from (`ConfigMap NS/NAME key KEY`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sourced {
    pub source: String,
    pub patch: PolicyPatch,
}

/// What the control plane serves one sidecar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LivePolicy {
    pub namespace: String,
    pub workload: String,
    /// The chart values' policy with the pod's annotations applied; `None` when the pod names its own
    /// config (`pgwarden.io/config`), which stays its base.
    pub base: Option<PolicyKeys>,
    /// The overrides for the pod's namespace, then for its workload, in that order.
    pub overrides: Vec<Sourced>,
}

impl LivePolicy {
    /// A short tag that changes whenever the answer does (the long poll's `known`).
    pub fn tag(&self) -> String {
        let text = serde_json::to_vec(self).expect("a policy serializes");
        let digest = ring::digest::digest(&ring::digest::SHA256, &text);
        digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// `started` (the config the sidecar started with) with this policy laid over it, validated; and the
    /// sources, in the order they were applied.
    pub fn apply(&self, started: &Config) -> Result<(Config, Vec<String>), String> {
        let mut c = started.clone();
        let mut sources = Vec::new();
        match &self.base {
            Some(base) => {
                base.put(&mut c);
                sources.push("chart values and pod annotations (control plane)".to_string());
            }
            None => sources.push("the pod's own config (pgwarden.io/config)".to_string()),
        }
        for o in &self.overrides {
            o.patch.apply(&mut c);
            sources.push(o.source.clone());
        }
        c.validate().map_err(|(key, msg)| format!("the live policy is invalid: key `{key}`: {msg}"))?;
        Ok((c, sources))
    }

    /// The reclaim asked of this pod's workload (or namespace), the latest if both ask.
    pub fn reclaim(&self) -> Option<&Reclaim> {
        self.overrides.iter().filter_map(|o| o.patch.reclaim.as_ref()).max_by(|a, b| a.at.cmp(&b.at))
    }
}

/// What differs between two configs' policy keys, one `key: old -> new` line each (rules as a whole).
pub fn changes(before: &Config, after: &Config) -> Vec<String> {
    let (a, b) = (PolicyKeys::of(before), PolicyKeys::of(after));
    let mut out = Vec::new();
    let mut diff = |key: &str, x: String, y: String| {
        if x != y {
            out.push(format!("{key}: {x} -> {y}"));
        }
    };
    diff("enforce", a.enforce.to_string(), b.enforce.to_string());
    diff("max_total_connections", a.max_total_connections.to_string(), b.max_total_connections.to_string());
    let json = |v: Result<serde_json::Value, serde_json::Error>| v.unwrap_or_default();
    let sections = [
        ("defaults", json(serde_json::to_value(a.defaults)), json(serde_json::to_value(b.defaults))),
        ("leak", json(serde_json::to_value(&a.leak)), json(serde_json::to_value(&b.leak))),
    ];
    for (key, x, y) in sections {
        if let (Some(x), Some(y)) = (x.as_object(), y.as_object()) {
            for (k, v) in y {
                let old = x.get(k).cloned().unwrap_or_default();
                if &old != v {
                    out.push(format!("{key}.{k}: {} -> {}", plain(&old), plain(v)));
                }
            }
        }
    }
    if a.rules != b.rules {
        out.push(format!("rules: {} -> {} rules", a.rules.len(), b.rules.len()));
    }
    out
}

fn plain(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
