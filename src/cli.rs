//! The command line: subcommands, where the config comes from, and running each command.
//!
//! Precedence: a flag beats its `PGWARDEN_*` variable (clap's `env`), which beats the file; the file is
//! `--config FILE` (or `PGWARDEN_CONFIG`), else the YAML text in `PGWARDEN_CONFIG_YAML`, else the defaults.

pub mod fleet;
pub mod fleet_control;
pub mod invocation;
pub mod pod_source;

use crate::config::overrides::Overrides;
use crate::config::source::ConfigSource;
use crate::config::ConfigError;
use crate::identity::PodIdentity;
use crate::server::{reload, signals, Server};
use crate::state::{Settings, State};
use crate::views::report;
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
    /// Live per-client table from a running proxy's admin API, or from a pod's sidecar (POD).
    Top {
        /// The proxy's admin URL.
        #[arg(long, env = "PGWARDEN_ADMIN", default_value = report::DEFAULT_ADMIN)]
        admin: String,
        #[command(flatten)]
        pod: pod_source::PodArgs,
        /// Print the table once and exit.
        #[arg(long)]
        once: bool,
    },
    /// One-shot leak report from a proxy's admin API or a pod's sidecar (POD): exit 0 when clean, 3 when
    /// leaks are suspected.
    Leaks {
        /// The proxy's admin URL.
        #[arg(long, env = "PGWARDEN_ADMIN", default_value = report::DEFAULT_ADMIN)]
        admin: String,
        #[command(flatten)]
        pod: pod_source::PodArgs,
        /// Print the `/leaks` JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Every injected pod at once, through the Kubernetes API server (or Prometheus): which workload leaks.
    Fleet {
        #[command(subcommand)]
        command: fleet::FleetCommand,
    },
    /// The mutating admission webhook that injects the sidecar (HTTPS: POST /mutate, GET /healthz, and with
    /// budgets GET /v1/share, the budget coordinator sidecars ask for their share).
    Inject {
        /// Address to serve HTTPS on.
        #[arg(long, env = "PGWARDEN_INJECT_LISTEN", value_name = "ADDR", required_unless_present = "check")]
        listen: Option<String>,
        /// PEM certificate chain; re-read when the file changes.
        #[arg(long, value_name = "FILE", required_unless_present = "check")]
        tls_cert: Option<PathBuf>,
        /// PEM private key (PKCS#1, SEC1 or PKCS#8); re-read when the file changes.
        #[arg(long, value_name = "FILE", required_unless_present = "check")]
        tls_key: Option<PathBuf>,
        /// Only validate --config and print the sidecar's proxy config it yields; serve nothing.
        #[arg(long)]
        check: bool,
        /// The injector's config (sidecar image and the proxy defaults); built-in defaults without it.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log format: text or json.
        #[arg(long, env = "PGWARDEN_LOG_FORMAT", default_value = "text", value_name = "FORMAT")]
        log_format: String,
    },
    /// Print a shell completion script: `pgwarden completions bash > /etc/bash_completion.d/pgwarden`, or
    /// `source <(pgwarden completions zsh)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Run COMMAND with its database connections through an in-process proxy and fail on leaks: exit with
    /// COMMAND's status when it failed, else 3 when a finding in --fail-on occurred, else 0.
    Guard(crate::guard::GuardArgs),
    /// An end-to-end run of the incident pgwarden exists for, against a throwaway PostgreSQL.
    Demo {
        /// Leave the database, the proxy and the services running to explore with `top` (Ctrl-C ends).
        #[arg(long)]
        keep_running: bool,
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
    /// `leaks` found suspects: exit 3 (the report was printed).
    #[error("leaks suspected")]
    LeaksFound,
    /// Exit with this code, nothing more to say (`guard` passes on its command's status).
    #[error("exit status {0}")]
    Exit(u8),
}

impl From<crate::guard::Error> for Failure {
    fn from(e: crate::guard::Error) -> Failure {
        match e {
            crate::guard::Error::Config(e) => Failure::Config(e),
            crate::guard::Error::Runtime(e) => Failure::Runtime(e),
        }
    }
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Config(_) => 64,
            Failure::Runtime(_) => 1,
            Failure::LeaksFound => 3,
            Failure::Exit(code) => *code as i32,
        }
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::CheckConfig { file, overrides } => {
            let source = ConfigSource { config: Some(file), config_yaml: None, overrides };
            let config = source.load()?;
            Settings::new(config.clone())?;
            print!("{}", config.to_yaml());
            Ok(())
        }
        Command::Proxy(source) => run_proxy(source),
        Command::Top { admin, pod, once } => runtime()?.block_on(async {
            let source = pod_source::Source::new(admin, pod).await?;
            top(&source, once).await
        }),
        Command::Leaks { admin, pod, json } => runtime()?.block_on(async {
            let source = pod_source::Source::new(admin, pod).await?;
            leaks(&source, json).await
        }),
        Command::Fleet { command } => runtime()?.block_on(fleet::run(command)),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "pgwarden", &mut std::io::stdout());
            Ok(())
        }
        Command::Guard(args) => match crate::guard::run(args)? {
            0 => Ok(()),
            code => Err(Failure::Exit(code.clamp(1, 255) as u8)),
        },
        Command::Demo { keep_running } => Ok(crate::demo::run(keep_running)?),
        Command::Inject { check: true, config, .. } => {
            let cfg = match config {
                Some(path) => crate::k8s::inject::config::InjectConfig::read_file(&path)?,
                None => Default::default(),
            };
            let proxy = crate::k8s::inject::proxy_config(&cfg, &Default::default(), None)
                .map_err(|m| ConfigError::invalid("--config", m))?;
            print!("{}", proxy.to_yaml());
            Ok(())
        }
        Command::Inject { listen, tls_cert, tls_key, config, log_format, .. } => {
            let (Some(listen), Some(cert), Some(key)) = (listen, tls_cert, tls_key) else {
                unreachable!("clap requires them without --check")
            };
            run_inject(&listen, &cert, &key, config.as_deref(), &log_format)
        }
    }
}

/// The tokio runtime: `PGWARDEN_WORKER_THREADS` worker threads, default 1 (everything on one thread, as
/// PgBouncer does: a sidecar shares its pod's CPUs with the application, and on 2 CPUs one thread measured
/// as fast as two with less CPU; see BENCHMARKS.md).
fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    let threads = match std::env::var("PGWARDEN_WORKER_THREADS") {
        Ok(v) => v.parse::<usize>().ok().filter(|n| (1..=64).contains(n)).ok_or_else(|| {
            ConfigError::invalid("PGWARDEN_WORKER_THREADS", format!("invalid value {v:?} (a number from 1 to 64)"))
        })?,
        Err(_) => 1,
    };
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    Ok(builder.enable_all().build().map_err(anyhow::Error::from)?)
}

async fn top(source: &pod_source::Source, once: bool) -> Result<(), Failure> {
    loop {
        let clients: crate::views::stats::ClientsResponse = source.get("clients").await?;
        let table = report::clients_table(&clients);
        if once {
            print!("{table}");
            return Ok(());
        }
        // Clear the screen and home the cursor, then the table.
        print!("\x1b[2J\x1b[H{}  (every 2 s; Ctrl-C quits)\n{table}", source.describe());
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn leaks(source: &pod_source::Source, json: bool) -> Result<(), Failure> {
    let found: crate::views::stats::LeaksResponse = source.get("leaks").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&found).map_err(anyhow::Error::from)?);
    } else {
        print!("{}", report::leaks_report(&found));
    }
    if found.leaks.is_empty() {
        Ok(())
    } else {
        Err(Failure::LeaksFound)
    }
}

fn run_proxy(source: ConfigSource) -> Result<(), Failure> {
    let config = source.load()?;
    let log = crate::logging::init(config.log_format);
    signals::raise_nofile_limit();
    let settings = Settings::new(config.clone())?;
    runtime()?.block_on(async move {
        // The Unix socket first: its lock says plainly when another pgwarden serves the same socket.
        let unix = match &config.listen_unix {
            Some(dir) => {
                let socket = crate::server::unix::UnixSocket::bind(dir, config.listen.port, config.listen_unix_mode)
                    .map_err(|e| anyhow::anyhow!("cannot listen on the Unix socket (listen_unix): {e}"))?;
                info!(socket = %socket.path.display(), "listening on a Unix socket");
                Some(socket)
            }
            None => None,
        };
        let listener = TcpListener::bind((config.listen.host.as_str(), config.listen.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        let admin_listener = TcpListener::bind((config.admin_listen.host.as_str(), config.admin_listen.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin_listen): {e}", config.admin_listen))?;
        let pod = PodIdentity::from_lookup(|k| std::env::var(k).ok());
        let state = State::new(settings, pod);
        log.count_drops_in(state.local.log_lines_dropped.clone());
        let mut server = Server::new(state.clone());
        if let Some(socket) = unix {
            server.listen_unix(socket);
        }
        if let Some(directory) = state.peers.clone() {
            let client = kube::Client::try_default().await.map_err(|e| {
                anyhow::anyhow!("pod_identity.from: peer_address (gateway mode) needs the Kubernetes API: {e}")
            })?;
            let namespaces = config.pod_identity.namespaces.clone();
            info!(namespaces = ?namespaces, "gateway mode: naming clients by the pod behind their address");
            server.supervise("pod identity watch", crate::k8s::pods::watch(client, directory, namespaces));
        }
        if config.budget.coordinator.is_some() {
            let poller = crate::k8s::budget::client::Poller::new(state.clone(), config.budget.clone())
                .map_err(|e| ConfigError::invalid("budget", format!("{e:#}")))?;
            server.supervise("budget client", poller.run());
        }
        if config.control.url.is_some() {
            let poller = crate::k8s::control::client::Poller::new(state.clone(), config.control.clone())
                .map_err(|e| ConfigError::invalid("control", format!("{e:#}")))?;
            server.supervise("pod events", poller.events());
            server.supervise("control client", poller.run());
        }
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = mpsc::channel(1);
        signals::spawn_signal_handlers(shutdown.clone(), reload_tx).map_err(anyhow::Error::from)?;
        server.supervise("config reload", reload::watch(state, source, reload_rx, reload::POLL_INTERVAL));
        info!(
            listen = %listener.local_addr().map_err(anyhow::Error::from)?,
            admin = %config.admin_listen,
            upstream = %config.upstream,
            "pgwarden proxy ready"
        );
        server.run(listener, admin_listener, shutdown).await.map_err(anyhow::Error::from)?;
        Ok(())
    })
}

fn run_inject(
    listen: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
    config: Option<&std::path::Path>,
    log_format: &str,
) -> Result<(), Failure> {
    use crate::k8s::inject::{config::InjectConfig, server};
    use crate::tls::reloading::ReloadingCert;
    let format = match log_format {
        "text" => crate::config::LogFormat::Text,
        "json" => crate::config::LogFormat::Json,
        other => {
            return Err(ConfigError::invalid("--log-format", format!("invalid value {other:?} (text or json)")).into())
        }
    };
    let listen_addr =
        crate::config::values::parse_host_port(listen).map_err(|m| ConfigError::invalid("--listen", m))?;
    let mut inject_config = match config {
        Some(path) => InjectConfig::read_file(path)?,
        None => InjectConfig::default(),
    };
    inject_config.read_budget_ca()?;
    let cert =
        ReloadingCert::new(cert, key).map_err(|e| ConfigError::invalid("--tls-cert/--tls-key", format!("{e:#}")))?;
    let _log = crate::logging::init(format);
    runtime()?.block_on(async move {
        let listener = TcpListener::bind((listen_addr.host.as_str(), listen_addr.port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {listen_addr}: {e}"))?;
        let kube = match kube::Client::try_default().await {
            Ok(client) => Some(client),
            Err(e) => {
                tracing::warn!(error = %e, "no Kubernetes API: pods naming a pgwarden.io/config ConfigMap will be refused");
                None
            }
        };
        let mut limits = crate::http_server::Limits::default();
        let coordinator = if inject_config.budgets.enabled || inject_config.control.enabled {
            let Some(client) = kube.clone() else {
                let which = if inject_config.budgets.enabled { "budgets.enabled: the budget coordinator" } else { "control.enabled: the control plane" };
                return Err(anyhow::anyhow!("{which} needs the Kubernetes API").into());
            };
            let budgets = &inject_config.budgets;
            let members = std::sync::Arc::new(crate::k8s::budget::members::Members::new(budgets.entries.clone()));
            let selector = format!("{}=true", crate::k8s::inject::INJECTED_LABEL);
            tokio::spawn(crate::k8s::pods::watch_into(
                client.clone(),
                members.clone(),
                Vec::new(),
                Some(selector),
                "coordinator",
            ));
            limits.max_connections = budgets.max_connections;
            if budgets.enabled {
                info!(entries = budgets.entries.len(), audience = %budgets.audience, "budget coordinator on: GET /v1/share");
            }
            let recorder = crate::k8s::control::events::Recorder::new(client.clone());
            let events = inject_config.control.enabled.then(|| recorder.clone());
            let policy = if inject_config.control.enabled {
                let control = &inject_config.control;
                let holder = std::sync::Arc::new(crate::k8s::control::overrides::Holder::default());
                let namespace = control.overrides_namespace.clone().unwrap_or_default();
                info!(overrides = %format!("{namespace}/{}", control.overrides_name), "control plane on: GET /v1/policy");
                tokio::spawn(holder.clone().run(client.clone(), namespace, control.overrides_name.clone()));
                tokio::spawn(recorder.clone().run());
                Some(crate::k8s::control::served::PolicyServer { base: inject_config.proxy.clone(), overrides: holder })
            } else {
                None
            };
            let reviewer = crate::k8s::budget::review::Reviewer::new(client, budgets.audience.clone());
            Some(crate::k8s::budget::coordinator::Coordinator {
                members,
                reviewer,
                budgets: budgets.enabled,
                policy,
                events,
            })
        } else {
            None
        };
        let injector = std::sync::Arc::new(server::Injector { config: inject_config, kube, coordinator });
        let stop = CancellationToken::new();
        let (reload_tx, _reload_rx) = mpsc::channel(1);
        signals::spawn_signal_handlers(stop.clone(), reload_tx).map_err(anyhow::Error::from)?;
        info!(listen = %listen_addr, "pgwarden injector ready");
        server::serve_with(injector, listener, cert, stop, limits).await?;
        Ok(())
    })
}
