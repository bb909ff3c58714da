//! The injector's own config (`pgwarden inject --config FILE`, rendered by the Helm chart): the sidecar
//! image and shape, and the proxy config every sidecar starts from.

use crate::budget::spec::{self, Entry};
use crate::config::{Config, ConfigError, Limit, Timeout};
use k8s_openapi::api::core::v1::ResourceRequirements;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectConfig {
    /// The sidecar image (the same pgwarden binary).
    #[serde(default = "default_image")]
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    /// `true`: an `initContainers` entry with `restartPolicy: Always` (Kubernetes ≥ 1.29);
    /// `false`: a regular container with a preStop delay.
    #[serde(default = "yes")]
    pub native_sidecar: bool,
    #[serde(default = "listen_port")]
    pub listen_port: u16,
    #[serde(default = "admin_port")]
    pub admin_port: u16,
    #[serde(default)]
    pub resources: Option<ResourceRequirements>,
    /// The proxy config of every sidecar, before per-pod annotations.
    #[serde(default)]
    pub proxy: Config,
    /// Workload budgets: the coordinator in this injector, and the budget client of every sidecar.
    #[serde(default)]
    pub budgets: BudgetsConfig,
    /// The PEM text of `budgets.caFile`, read with the config (sidecars get it inline).
    #[serde(skip)]
    pub budget_ca_pem: Option<String>,
    /// The control plane: live policy served to every sidecar.
    #[serde(default)]
    pub control: ControlConfig,
    /// The PEM text of `control.caFile`.
    #[serde(skip)]
    pub control_ca_pem: Option<String>,
}

/// `control:` of the injector config.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Serve `GET /v1/policy` and give every injected sidecar a control client.
    pub enabled: bool,
    /// The `https://` URL sidecars reach this injector's Service at.
    pub url: Option<String>,
    /// PEM CA that signed this injector's serving certificate.
    pub ca_file: Option<std::path::PathBuf>,
    /// Where the overrides ConfigMap lives (the injector's namespace) and its name.
    pub overrides_namespace: Option<String>,
    pub overrides_name: String,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            enabled: false,
            url: None,
            ca_file: None,
            overrides_namespace: None,
            overrides_name: crate::k8s::control::overrides::DEFAULT_NAME.to_string(),
        }
    }
}

impl ControlConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        if !self.enabled {
            return Ok(());
        }
        if !self.url.as_deref().is_some_and(|u| u.starts_with("https://") && u.len() > 8) {
            return Err(("control.url".into(), "must be the https:// URL sidecars reach this injector at".into()));
        }
        if self.ca_file.is_none() {
            return Err((
                "control.caFile".into(),
                "must name the CA file that signed this injector's certificate".into(),
            ));
        }
        if self.overrides_namespace.as_deref().is_none_or(str::is_empty) {
            return Err((
                "control.overridesNamespace".into(),
                "must name the namespace of the overrides ConfigMap".into(),
            ));
        }
        if self.overrides_name.is_empty() {
            return Err(("control.overridesName".into(), "must not be empty".into()));
        }
        Ok(())
    }
}

/// `budgets:` of the injector config.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BudgetsConfig {
    /// Run the coordinator here and give every injected sidecar a budget client.
    pub enabled: bool,
    /// The `https://` URL sidecars reach this injector's Service at.
    pub url: Option<String>,
    /// PEM CA that signed this injector's serving certificate (sidecars trust the coordinator with it).
    pub ca_file: Option<std::path::PathBuf>,
    /// The audience of the sidecars' projected tokens; the TokenReview asks for it.
    pub audience: String,
    pub keep_last: Timeout,
    pub fallback_max_connections: Limit,
    /// Connections this injector serves at once (each waiting sidecar holds one).
    pub max_connections: usize,
    pub entries: Vec<Entry>,
}

/// The projected token's audience unless `budgets.audience` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "pgwarden-coordinator";

impl Default for BudgetsConfig {
    fn default() -> Self {
        BudgetsConfig {
            enabled: false,
            url: None,
            ca_file: None,
            audience: DEFAULT_AUDIENCE.into(),
            keep_last: Timeout(Some(std::time::Duration::from_secs(60))),
            fallback_max_connections: Limit(None),
            max_connections: 2048,
            entries: Vec::new(),
        }
    }
}

impl BudgetsConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        spec::validate(&self.entries).map_err(|e| ("budgets.entries".to_string(), e))?;
        if !self.enabled {
            return Ok(());
        }
        if !self.url.as_deref().is_some_and(|u| u.starts_with("https://") && u.len() > 8) {
            return Err(("budgets.url".into(), "must be the https:// URL sidecars reach this injector at".into()));
        }
        if self.ca_file.is_none() {
            return Err((
                "budgets.caFile".into(),
                "must name the CA file that signed this injector's certificate".into(),
            ));
        }
        if self.audience.is_empty() {
            return Err(("budgets.audience".into(), "must not be empty".into()));
        }
        if self.max_connections == 0 {
            return Err(("budgets.maxConnections".into(), "must be at least 1".into()));
        }
        Ok(())
    }
}

fn default_image() -> String {
    format!("ghcr.io/pgwarden/pgwarden:{}", env!("CARGO_PKG_VERSION"))
}

fn yes() -> bool {
    true
}

fn listen_port() -> u16 {
    6432
}

fn admin_port() -> u16 {
    9187
}

impl Default for InjectConfig {
    fn default() -> Self {
        serde_norway::from_str("{}").expect("defaults")
    }
}

impl InjectConfig {
    pub fn from_yaml(text: &str, origin: &str) -> Result<InjectConfig, ConfigError> {
        let de = serde_norway::Deserializer::from_str(text);
        let config: InjectConfig = serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::invalid(format!("{origin}: key `{}`", e.path()), e.into_inner().to_string()))?;
        config
            .proxy
            .validate()
            .map_err(|(key, msg)| ConfigError::invalid(format!("{origin}: key `proxy.{key}`"), msg))?;
        config.budgets.validate().map_err(|(key, msg)| ConfigError::invalid(format!("{origin}: key `{key}`"), msg))?;
        config.control.validate().map_err(|(key, msg)| ConfigError::invalid(format!("{origin}: key `{key}`"), msg))?;
        Ok(config)
    }

    pub fn read_file(path: &Path) -> Result<InjectConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        InjectConfig::from_yaml(&text, &path.display().to_string())
    }

    /// Reads `budgets.caFile` and `control.caFile` (when on) for the sidecars; the serving injector calls it at
    /// start (`inject --check` does not: the file is in the pod).
    pub fn read_budget_ca(&mut self) -> Result<(), ConfigError> {
        if let (true, Some(ca)) = (self.budgets.enabled, &self.budgets.ca_file) {
            let pem = std::fs::read_to_string(ca).map_err(|source| ConfigError::Read { path: ca.clone(), source })?;
            self.budget_ca_pem = Some(pem);
        }
        if let (true, Some(ca)) = (self.control.enabled, &self.control.ca_file) {
            let pem = std::fs::read_to_string(ca).map_err(|source| ConfigError::Read { path: ca.clone(), source })?;
            self.control_ca_pem = Some(pem);
        }
        Ok(())
    }
}
