//! The command line: subcommands, where the config comes from, and running each command.
//!
//! Precedence: a flag beats its `PGWARDEN_*` variable (clap's `env`), which beats the file; the file is
//! `--config FILE` (or `PGWARDEN_CONFIG`), else the YAML text in `PGWARDEN_CONFIG_YAML`, else the defaults.

use crate::config::overrides::Overrides;
use crate::config::{Config, ConfigError};
use crate::identity::PodIdentity;
use crate::proxy::{Proxy, Settings};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Debug, Parser)]
#[command(
    name = "pgwarden",
    version,
    about = "A PostgreSQL sidecar proxy that caps connections per client and names the leaker"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Proxy(ConfigSource),
    /// Validate a config file and print the effective settings (flags and PGWARDEN_* variables applied).
    CheckConfig {
        /// The config file to check.
        file: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ConfigSource {
    /// Config file (YAML). It is re-read on SIGHUP.
    #[arg(long, env = "PGWARDEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The whole config file as YAML text (used by the injected sidecar).
    #[arg(long, env = "PGWARDEN_CONFIG_YAML", value_name = "YAML", hide = true)]
    pub config_yaml: Option<String>,
    #[command(flatten)]
    pub overrides: Overrides,
}

/// How a command failed; decides the exit code.
#[derive(Debug, Error)]
pub enum Failure {
    /// Bad usage or config: exit 64.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Anything else at run time: exit 1.
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(_) => 64,
            Failure::Runtime(_) => 1,
        }
    }
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
        config
            .validate()
            .map_err(|(key, msg)| ConfigError::invalid(format!("config key `{key}`"), msg))?;
        Ok(config)
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::CheckConfig { file, overrides } => {
            let source = ConfigSource {
                config: Some(file),
                config_yaml: None,
                overrides,
            };
            let config = source.load()?;
            Settings::new(config.clone())?;
            print!("{}", config.to_yaml());
            Ok(())
        }
        Command::Proxy(source) => run_proxy(source),
    }
}

fn run_proxy(source: ConfigSource) -> Result<(), Failure> {
    let config = source.load()?;
    crate::logging::init(config.log_format);
    crate::lifecycle::raise_nofile_limit();
    let settings = Settings::new(config.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)?;
    runtime.block_on(async move {
        let listener = TcpListener::bind((config.listen.host.as_str(), config.listen.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let pod = PodIdentity::from_lookup(|k| std::env::var(k).ok());
        let proxy = Proxy::new(settings, pod);
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::channel(1);
        crate::lifecycle::spawn_signal_handlers(shutdown.clone(), reload_tx).map_err(anyhow::Error::from)?;
        tokio::spawn(reload_on_request(proxy.clone(), source, reload_rx));
        info!(listen = %listener.local_addr().map_err(anyhow::Error::from)?, upstream = %config.upstream, "pgwarden proxy ready");
        proxy.serve(listener, shutdown).await;
        Ok(())
    })
}

/// Re-reads the config on each request; an invalid one is logged and the old settings stay.
async fn reload_on_request(
    proxy: Arc<Proxy>,
    source: ConfigSource,
    mut requests: mpsc::Receiver<()>,
) {
    while requests.recv().await.is_some() {
        match source.load().and_then(Settings::new) {
            Ok(settings) => {
                proxy.update_settings(settings);
                info!("config reloaded");
            }
            Err(e) => error!(error = %e, "config reload rejected; keeping the previous settings"),
        }
    }
}
