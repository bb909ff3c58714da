//! The injector's own config (`pgwarden inject --config FILE`, rendered by the Helm chart): the sidecar
//! image and shape, and the proxy config every sidecar starts from.

use crate::config::{Config, ConfigError};
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
        Ok(config)
    }

    pub fn read_file(path: &Path) -> Result<InjectConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        InjectConfig::from_yaml(&text, &path.display().to_string())
    }
}
