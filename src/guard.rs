//! `pgwarden guard [options] -- COMMAND [ARGS…]`: a leak gate for CI. Runs the proxy in-process on a free
//! loopback port in front of the test database, runs COMMAND with `PGHOST`/`PGPORT` and its database URLs
//! pointed at the proxy, collects what the leak detector flags during the run (with thresholds suited to
//! tests) and the connections still open when COMMAND exits, reports them (stderr, `--json`, `--junit`) and
//! exits with COMMAND's status when it failed, else 3 when a finding in `--fail-on` occurred, else 0.
//! Owns: the run and its exit code. The upstream and the URL rewrite are in `guard::env`, the findings in
//! `guard::findings`, the reports in `guard::output`.

pub mod env;
pub mod findings;
pub mod output;

use crate::config::values::{parse_duration, parse_host_port};
use crate::config::{ClientTls, Config, ConfigError, HostPort, Leak, Timeout};
use crate::identity::PodIdentity;
use crate::server::Server;
use crate::state::{Settings, State};
use crate::views::stats::Snapshot;
use findings::{Collector, Kind};
use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The exit code for findings in `--fail-on` (as `pgwarden leaks`).
pub const FINDINGS_EXIT: i32 = 3;

#[derive(Debug, clap::Args)]
pub struct GuardArgs {
    /// A proxy config file (YAML, as `pgwarden proxy` reads); its `leak` thresholds apply unless the flags
    /// below set them. Without it: the defaults, `client_tls: allow`, and thresholds of a few seconds.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The database (host:port). Default: PGHOST/PGPORT, else the first --env-url variable (DATABASE_URL).
    #[arg(long, value_name = "HOST:PORT")]
    pub upstream: Option<String>,
    /// Where the proxy listens (COMMAND is pointed at it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// An environment variable holding a postgres:// URL to point at the proxy (user, password, database and
    /// parameters kept); repeatable. Default: DATABASE_URL when it is set.
    #[arg(long = "env-url", value_name = "VAR")]
    pub env_url: Vec<String>,
    /// Idle this long while its client grew or was refused at its cap: a suspect (default 5s without --config).
    #[arg(long, value_name = "DURATION")]
    pub idle_threshold: Option<String>,
    /// Idle inside a transaction this long: a suspect (default 5s without --config).
    #[arg(long, value_name = "DURATION")]
    pub idle_in_transaction_threshold: Option<String>,
    /// Which findings fail the run (exit 3): all, none, or a comma-separated list of idle_in_transaction,
    /// idle_while_client_grew, idle_while_client_at_cap, refused_at_cap, open_at_exit.
    #[arg(long, value_name = "KINDS", default_value = "all")]
    pub fail_on: String,
    /// How long connections may take to close after COMMAND exits before they count as left open.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub exit_grace: String,
    /// Also write the findings as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write the findings as JUnit XML to FILE (each finding a failing test case).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// The command to run, after `--`.
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// How guard itself failed (not COMMAND, whose status guard passes on).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0:#}")]
    Runtime(#[from] anyhow::Error),
}

/// guard's settings, resolved from the flags and the environment before anything starts.
#[derive(Debug)]
struct Plan {
    config: Config,
    /// `(variable, its value rewritten)` for COMMAND's environment.
    urls: Vec<(String, String)>,
    fail_on: Vec<Kind>,
    exit_grace: Duration,
    origin: String,
}

/// Runs COMMAND under guard; returns the exit code.
pub fn run(args: GuardArgs) -> Result<i32, Error> {
    let lookup = |k: &str| std::env::var(k).ok();
    let plan = plan(&args, &lookup)?;
    let _log = crate::logging::init_at(plan.config.log_format, "warn");
    let settings = Settings::new(plan.config.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from)?;
    let code = runtime.block_on(guard(&args, plan, settings))?;
    Ok(code)
}

fn plan(args: &GuardArgs, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Plan, ConfigError> {
    let invalid = |what: &str, m: String| ConfigError::invalid(what, m);
    let fail_on = Kind::parse_list(&args.fail_on).map_err(|m| invalid("--fail-on", m))?;
    let exit_grace = parse_duration(&args.exit_grace).map_err(|m| invalid("--exit-grace", m))?.0.unwrap_or_default();
    let url_vars = if args.env_url.is_empty() {
        lookup("DATABASE_URL").map(|_| vec!["DATABASE_URL".to_string()]).unwrap_or_default()
    } else {
        args.env_url.clone()
    };
    let (upstream, origin) =
        env::upstream(args.upstream.as_deref(), &url_vars, lookup).map_err(|m| invalid("pgwarden guard", m))?;
    let mut config = match &args.config {
        Some(path) => Config::read_file(path)?,
        None => Config {
            // An app whose URL says sslmode=require still connects (a self-signed certificate, made at start).
            client_tls: ClientTls::Allow,
            leak: Leak {
                idle_threshold: Timeout(Some(Duration::from_secs(5))),
                idle_in_transaction_threshold: Timeout(Some(Duration::from_secs(5))),
                ..Leak::default()
            },
            // Whatever is still running when guard ends is closed without waiting.
            shutdown_grace: Timeout(Some(Duration::from_secs(1))),
            ..Config::default()
        },
    };
    config.upstream = upstream;
    config.listen = parse_host_port(&args.listen).map_err(|m| invalid("--listen", m))?;
    config.admin_listen = HostPort { host: "127.0.0.1".into(), port: 0 };
    if let Some(t) = &args.idle_threshold {
        config.leak.idle_threshold = parse_duration(t).map_err(|m| invalid("--idle-threshold", m))?;
    }
    if let Some(t) = &args.idle_in_transaction_threshold {
        config.leak.idle_in_transaction_threshold =
            parse_duration(t).map_err(|m| invalid("--idle-in-transaction-threshold", m))?;
    }
    config.validate().map_err(|(key, msg)| invalid(&format!("config key `{key}`"), msg))?;
    let mut urls = Vec::new();
    for var in url_vars {
        let Some(value) = lookup(&var) else {
            return Err(invalid("--env-url", format!("{var} is not set")));
        };
        // The proxy's real address is known only once it listens; the rewrite is checked here, redone there.
        env::rewrite(&value, &config.listen).map_err(|m| invalid("--env-url", format!("{var}: {m}")))?;
        urls.push((var, value));
    }
    let origin = match origin {
        env::Origin::Flag => "--upstream".to_string(),
        env::Origin::PgEnv => "PGHOST/PGPORT".to_string(),
        env::Origin::Url(var) => var,
    };
    Ok(Plan { config, urls, fail_on, exit_grace, origin })
}

async fn guard(args: &GuardArgs, plan: Plan, settings: Settings) -> Result<i32, Error> {
    let config = &plan.config;
    let listener = TcpListener::bind((config.listen.host.as_str(), config.listen.port))
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let admin = TcpListener::bind("127.0.0.1:0").await.map_err(anyhow::Error::from)?;
    let (addr, admin_addr) =
        (listener.local_addr().map_err(anyhow::Error::from)?, admin.local_addr().map_err(anyhow::Error::from)?);
    let state = State::new(settings, PodIdentity::default());
    let mut server = Server::new(state.clone());
    if let Some(dir) = &config.listen_unix {
        let socket = crate::server::unix::UnixSocket::bind(dir, addr.port(), config.listen_unix_mode)
            .map_err(|e| anyhow::anyhow!("cannot listen on the Unix socket (listen_unix): {e}"))?;
        server.listen_unix(socket);
    }
    let shutdown = CancellationToken::new();
    let mut proxy = tokio::spawn(server.run(listener, admin, shutdown.clone()));
    let proxy_addr = HostPort { host: addr.ip().to_string(), port: addr.port() };

    let mut command = tokio::process::Command::new(&args.command[0]);
    command.args(&args.command[1..]);
    command.env("PGHOST", &proxy_addr.host).env("PGPORT", proxy_addr.port.to_string()).env_remove("PGHOSTADDR");
    let mut pointed = vec!["PGHOST/PGPORT".to_string()];
    for (var, value) in &plan.urls {
        let rewritten = env::rewrite(value, &proxy_addr).map_err(|m| anyhow::anyhow!("{var}: {m}"))?;
        pointed.push(format!("{var} ({})", env::redact(&rewritten)));
        command.env(var, rewritten);
    }
    eprintln!(
        "pgwarden guard: proxy on {addr} → {} (from {}); {} point at it; admin API on http://{admin_addr}",
        config.upstream,
        plan.origin,
        pointed.join(", ")
    );
    // Handlers before COMMAND starts, so a signal from then on is forwarded rather than ending guard. A
    // terminal's Ctrl-C reaches COMMAND itself (same foreground process group): forwarding it too would
    // deliver it twice. Without a terminal (CI), SIGINT sent to guard is passed on like the others.
    let forward_int = !std::io::stdin().is_terminal();
    let mut signals = Vec::new();
    for kind in [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup(), SignalKind::quit()] {
        signals.push((kind.as_raw_value(), signal(kind).map_err(anyhow::Error::from)?));
    }
    let started = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("pgwarden guard: cannot run {:?}: {e}", args.command[0]);
            shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), proxy).await;
            return Ok(if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 });
        }
    };
    let pid = child.id().map(|p| p as i32);
    let mut found = Collector::default();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut interrupted = None;
    let status = loop {
        let any_signal = futures_util::future::select_all(signals.iter_mut().map(|(n, s)| {
            let n = *n;
            Box::pin(async move { s.recv().await.map(|_| n) })
        }));
        tokio::select! {
            status = child.wait() => break status.map_err(anyhow::Error::from)?,
            _ = tick.tick() => observe(&state, &mut found, started.elapsed()),
            (Some(sig), _, _) = any_signal => {
                interrupted = Some(sig);
                if let Some(pid) = pid {
                    if sig != libc::SIGINT || forward_int {
                        // SAFETY: kill(2) with our own child's pid; no memory is involved.
                        unsafe { libc::kill(pid, sig) };
                    }
                }
            }
            ended = &mut proxy => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                let why = match ended {
                    Ok(Ok(())) => "stopped".to_string(),
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                };
                return Err(anyhow::anyhow!("the proxy stopped during the run: {why}").into());
            }
        }
    };
    let command_status = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    // Connections of the command's own processes close with them; give their Terminates a moment.
    let exited = Instant::now();
    while state.registry.snapshot().iter().any(|c| c.closed().is_none()) && exited.elapsed() < plan.exit_grace {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    state.housekeeping(Instant::now());
    observe(&state, &mut found, started.elapsed());
    let snapshot = Snapshot::take(&state);
    found.open_at_exit(started.elapsed(), &snapshot.connections_response().connections);
    let findings = found.findings();
    let exit_code = if command_status != 0 {
        command_status
    } else if let Some(sig) = interrupted {
        128 + sig
    } else if findings.iter().any(|f| plan.fail_on.contains(&f.kind)) {
        FINDINGS_EXIT
    } else {
        0
    };
    let outcome = output::Outcome {
        findings,
        fail_on: &plan.fail_on,
        command_status,
        duration_seconds: started.elapsed().as_secs_f64(),
        exit_code,
    };
    eprint!("{}", output::text(&outcome));
    let mut written = Ok(());
    if let Some(path) = &args.json {
        written = written.and(write(path, &output::json(&outcome)));
    }
    if let Some(path) = &args.junit {
        written = written.and(write(path, &output::junit(&outcome)));
    }
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(3), proxy).await;
    written?;
    Ok(exit_code)
}

fn observe(state: &Arc<State>, found: &mut Collector, at: Duration) {
    let snapshot = Snapshot::take(state);
    found.observe_leaks(at, &snapshot.leaks_response());
    found.observe_clients(at, &snapshot.clients_response(&state.pod).clients);
}

fn write(path: &std::path::Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: GuardArgs,
    }

    fn args(a: &[&str]) -> GuardArgs {
        Cli::try_parse_from(std::iter::once("guard").chain(a.iter().copied())).unwrap().args
    }

    fn env(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_plan_without_a_config_file_suits_tests() {
        let p = plan(&args(&["--", "pytest", "-x"]), &env(&[("DATABASE_URL", "postgres://u:p@db:6000/app")])).unwrap();
        assert_eq!(p.config.upstream.to_string(), "db:6000");
        assert_eq!(p.origin, "DATABASE_URL");
        assert_eq!(p.urls, vec![("DATABASE_URL".to_string(), "postgres://u:p@db:6000/app".to_string())]);
        assert_eq!(p.config.leak.idle_threshold.0, Some(Duration::from_secs(5)));
        assert_eq!(p.config.client_tls, ClientTls::Allow);
        assert_eq!(p.fail_on, Kind::ALL.to_vec());
        assert_eq!(p.exit_grace, Duration::from_secs(1));
    }

    #[test]
    fn flags_beat_the_environment_and_bad_ones_are_usage_errors() {
        let a = args(&["--upstream", "127.0.0.1:5999", "--idle-threshold", "2s", "--fail-on", "none", "--", "true"]);
        let p = plan(&a, &env(&[("PGHOST", "elsewhere")])).unwrap();
        assert_eq!((p.config.upstream.to_string(), p.origin.as_str()), ("127.0.0.1:5999".into(), "--upstream"));
        assert_eq!(p.config.leak.idle_threshold.0, Some(Duration::from_secs(2)));
        assert!(p.fail_on.is_empty() && p.urls.is_empty());
        let bad = plan(&args(&["--env-url", "APP_DB", "--", "true"]), &env(&[("PGHOST", "db")])).unwrap_err();
        assert!(bad.to_string().contains("APP_DB is not set"), "{bad}");
        let bad = plan(&args(&["--", "true"]), &env(&[])).unwrap_err();
        assert!(bad.to_string().contains("--upstream"), "{bad}");
        let bad = plan(&args(&["--fail-on", "leaks", "--", "true"]), &env(&[("PGHOST", "db")])).unwrap_err();
        assert!(bad.to_string().contains("--fail-on"), "{bad}");
        assert!(Cli::try_parse_from(["guard"]).is_err(), "COMMAND is required");
    }
}
