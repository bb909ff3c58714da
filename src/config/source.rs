//! Where the config comes from: `--config FILE` (or `PGWARDEN_CONFIG`), else the YAML text in
//! `PGWARDEN_CONFIG_YAML`, else the defaults; then flags and `PGWARDEN_*` variables on top.

use super::overrides::Overrides;
use super::{Config, ConfigError};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Clone, Args)]
pub struct ConfigSource {
    /// Config file (YAML). Re-read when its content changes (checked every 0.5 s, so a mounted ConfigMap's
    /// update applies) and on SIGHUP.
    #[arg(long, env = "PGWARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The whole config file as YAML text (used by the injected sidecar).
    #[arg(long, env = "PGWARDEN_CONFIG_YAML", value_name = "YAML", hide = true)]
    pub config_yaml: Option<String>,
    #[command(flatten)]
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads and validates the config this source names.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match (&self.config, &self.config_yaml) {
            (Some(path), _) => Config::read_file(path)?,
            (None, Some(yaml)) => Config::from_yaml(yaml, "PGWARDEN_CONFIG_YAML")?,
            (None, None) => Config::default(),
        };
        self.overrides.apply(&mut config)?;
        config.validate().map_err(|(key, msg)| {
            let origin = self.overrides.origin_of(&key).unwrap_or_else(|| format!("config key `{key}`"));
            ConfigError::invalid(origin, msg)
        })?;
        Ok(config)
    }
}
