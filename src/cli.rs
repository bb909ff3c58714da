//! The command line: subcommands, where the config comes from, and running each command.
//!
//! Precedence: a flag beats its `PGWARDEN_*` variable (clap's `env`), which beats the file; the file is
//! `--config FILE` (or `PGWARDEN_CONFIG`), else the YAML text in `PGWARDEN_CONFIG_YAML`, else the defaults.

use crate::config::overrides::Overrides;
use crate::config::source::ConfigSource;
use crate::config::ConfigError;
use crate::identity::PodIdentity;
use crate::proxy::{Proxy, Settings};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

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
        crate::reload::spawn(proxy.clone(), source, reload_rx, crate::reload::POLL_INTERVAL);
        info!(listen = %listener.local_addr().map_err(anyhow::Error::from)?, upstream = %config.upstream, "pgwarden proxy ready");
        proxy.serve(listener, shutdown).await;
        Ok(())
    })
}
