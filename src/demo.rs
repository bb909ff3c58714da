//! `pgwarden demo`: the incident pgwarden exists for, end to end, on this machine in under a minute.
//!
//! Starts a throwaway PostgreSQL, runs the proxy in-process with a demo policy, and drives three services
//! through it: `checkout-api` (a healthy pool), `image-processor` (leaks a connection every second) and
//! `report-cron` (leaves a transaction open). Prints the live per-client table, then the verdict from the
//! same stats the admin API serves. Removes every process and file it made, also on Ctrl-C.

pub mod client;
pub mod postgres;
pub mod services;

use crate::config::Config;
use crate::identity::PodIdentity;
use crate::server::Server;
use crate::state::{Settings, State};
use crate::views::stats::Snapshot;
use anyhow::{anyhow, Context};
use postgres::TempPostgres;
use services::Tally;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const RUN_FOR: Duration = Duration::from_secs(40);
const TABLE_EVERY: Duration = Duration::from_secs(5);
/// How often the demo looks for the moment image-processor is first named.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// When image-processor was first named: the time, the connections it held then, and why.
struct Named {
    at: Duration,
    open: u32,
    reasons: String,
}

fn first_named(snap: &Snapshot, at: Duration) -> Option<Named> {
    let leaks = snap.leaks_response();
    let l = leaks.leaks.iter().find(|l| l.stats.application_name.as_deref() == Some("image-processor"))?;
    Some(Named { at, open: l.stats.open, reasons: l.stats.leak_reasons.join(", ") })
}

const POLICY: &str = r#"upstream_tls: disable
defaults:
  max_connections: 20
rules:
  - name: image-processor
    match: { application_name: "image-processor" }
    max_connections: 12
  - name: report-cron
    match: { application_name: "report-cron" }
    idle_in_transaction_timeout: 12s
leak:
  idle_threshold: 5s
  idle_in_transaction_threshold: 5s
"#;

const SETUP_SQL: &str = "CREATE ROLE app LOGIN;
CREATE TABLE orders (id serial PRIMARY KEY, customer_id int, total numeric);
INSERT INTO orders (customer_id, total) SELECT i % 50, i * 1.5 FROM generate_series(1, 5000) i;
CREATE TABLE images (id int PRIMARY KEY, format text, data text);
INSERT INTO images SELECT i, 'webp', md5(i::text) FROM generate_series(1, 5000) i;
CREATE TABLE reports (id int PRIMARY KEY, status text, started_at timestamptz);
INSERT INTO reports VALUES (42, 'idle', NULL);
GRANT ALL ON ALL TABLES IN SCHEMA public TO app;";

/// Stops the server and removes its directory on every exit path.
struct PgGuard(TempPostgres);

impl Drop for PgGuard {
    fn drop(&mut self) {
        self.0.stop();
    }
}

pub fn run(keep_running: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        tokio::select! {
            r = demo(keep_running) => r,
            _ = tokio::signal::ctrl_c() => {
                // `demo` is dropped here: its guards stop PostgreSQL and remove the files.
                Err(anyhow!("interrupted; everything the demo started was stopped and removed"))
            }
        }
    })
}

async fn demo(keep_running: bool) -> anyhow::Result<()> {
    println!("pgwarden demo: a service leaks connections; pgwarden contains it, reclaims slots and names it.\n");
    let pg = tokio::task::spawn_blocking(|| -> anyhow::Result<PgGuard> {
        let pg = PgGuard(TempPostgres::init("pgwarden-demo-", "max_connections = 100\nshared_buffers = 32MB\n")?);
        pg.0.spawn_watchdog(std::process::id())?;
        pg.0.start()?;
        pg.0.psql(SETUP_SQL)?;
        Ok(pg)
    })
    .await??;
    println!("PostgreSQL {} started on 127.0.0.1:{} (data in {})", version(&pg.0), pg.0.port, pg.0.dir.display());

    let mut config = Config::from_yaml(POLICY, "demo policy").context("demo policy")?;
    config.upstream = crate::config::HostPort { host: "127.0.0.1".into(), port: pg.0.port };
    let state = State::new(Settings::new(config)?, PodIdentity::default());
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let admin_listener = TcpListener::bind("127.0.0.1:0").await?;
    let (addr, admin) = (listener.local_addr()?, admin_listener.local_addr()?);
    let shutdown = CancellationToken::new();
    let proxy_task = tokio::spawn(Server::new(state.clone()).run(listener, admin_listener, shutdown.clone()));
    println!("pgwarden proxy on {addr}, admin API on http://{admin}\n\nDemo policy:\n{POLICY}");

    let stop = CancellationToken::new();
    let tallies: [Arc<Tally>; 3] = Default::default();
    let services = [
        tokio::spawn(services::checkout_api(addr, stop.clone(), tallies[0].clone())),
        tokio::spawn(services::image_processor(addr, stop.clone(), tallies[1].clone())),
        tokio::spawn(services::report_cron(addr, stop.clone(), tallies[2].clone())),
    ];
    println!("Running checkout-api (healthy pool), image-processor (leaks a connection every second) and report-cron");
    println!("(leaves a transaction open) through pgwarden for {} s...\n", RUN_FOR.as_secs());
    let started = Instant::now();
    let (mut next_table, mut named) = (TABLE_EVERY, None);
    while started.elapsed() < RUN_FOR {
        tokio::time::sleep(WATCH_EVERY.min(RUN_FOR.saturating_sub(started.elapsed()))).await;
        let snap = Snapshot::take(&state);
        if named.is_none() {
            named = first_named(&snap, started.elapsed());
        }
        if started.elapsed() >= next_table || started.elapsed() >= RUN_FOR {
            next_table += TABLE_EVERY;
            println!("t={:>2}s", started.elapsed().as_secs());
            print!("{}", crate::views::report::clients_table(&snap.clients_response(&state.pod)));
            println!();
        }
    }
    let verdict = verdict(&state, &pg.0, &tallies, named);
    println!("{}", verdict.as_ref().map_or_else(|e| format!("{e:#}"), |v| v.clone()));
    if keep_running {
        let me = command_name();
        println!(
            "\n--keep-running: explore with `{me} top --admin http://{admin}` or `{me} leaks --admin http://{admin}`;"
        );
        println!(
            "psql \"host=127.0.0.1 port={} user=app dbname=postgres\" goes through the proxy. Ctrl-C stops everything.",
            addr.port()
        );
        std::future::pending::<()>().await;
    }
    stop.cancel();
    for s in services {
        let _ = s.await;
    }
    shutdown.cancel();
    proxy_task.await??;
    let dir = pg.0.dir.clone();
    tokio::task::spawn_blocking(move || drop(pg)).await?;
    println!("\nStopped PostgreSQL and the proxy; removed {}.", dir.display());
    verdict.map(|_| ())
}

fn version(pg: &TempPostgres) -> String {
    pg.psql("SHOW server_version").unwrap_or_default()
}

/// The verdict, from the same stats `/leaks` and `/clients` serve. An error if the demo did not show what
/// it should (the test suite runs the demo and relies on that).
fn verdict(
    state: &State,
    pg: &TempPostgres,
    tallies: &[Arc<Tally>; 3],
    named: Option<Named>,
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let snap = Snapshot::take(state);
    let leaks = snap.leaks_response();
    let clients = snap.clients_response(&state.pod);
    let find = |name: &str| leaks.leaks.iter().find(|l| l.stats.application_name.as_deref() == Some(name));
    let mut out = String::from("VERDICT\n");
    let image = find("image-processor").ok_or_else(|| anyhow!("the demo did not flag image-processor"))?;
    let s = &image.stats;
    let _ = writeln!(
        out,
        "* LEAK: client {} holds {} connections and {} of them are suspected leaked ({}).",
        s.client,
        s.open,
        s.suspect_connections,
        s.leak_reasons.join(", ")
    );
    match &image.tags {
        Some(tags) => {
            let _ = writeln!(out, "  The code that leaked them, from the statements' query tags: {tags}.");
        }
        None => anyhow::bail!("{out}\nimage-processor's suspects carry no query tags"),
    }
    for c in image.suspects.iter().take(5) {
        let _ = writeln!(
            out,
            "    backend pid {:>6}: idle {:>4.0}s, opened {:>4.0}s ago, last statement: {}",
            c.backend_pid.unwrap_or_default(),
            c.state_seconds,
            c.age_seconds,
            c.last_statement.as_deref().unwrap_or("-")
        );
    }
    let cap = s.max_connections.unwrap_or_default();
    match named {
        Some(n) if n.open < cap => {
            let _ = writeln!(
                out,
                "  Named at t={}s holding {} connections ({}), before its cap of {cap} held it.",
                n.at.as_secs(),
                n.open,
                n.reasons
            );
        }
        _ => anyhow::bail!("{out}\nimage-processor was not named before its cap held it"),
    }
    let refused = tallies[1].refused.load(Relaxed);
    let _ = writeln!(
        out,
        "  The cap held it at {} (max_connections from rule \"image-processor\"): {} further connection attempts got SQLSTATE 53300.",
        s.max_connections.unwrap_or_default(),
        refused
    );
    let checkout = &tallies[0];
    let (ok, attempts) = (checkout.ok.load(Relaxed), checkout.attempts.load(Relaxed));
    let rate = 100.0 * ok as f64 / attempts.max(1) as f64;
    let _ = writeln!(
        out,
        "* checkout-api kept being served meanwhile: {ok} of {attempts} queries succeeded ({rate:.1}%), never flagged."
    );
    if clients.clients.iter().any(|c| c.application_name.as_deref() == Some("checkout-api") && c.leak_suspected)
        || rate < 99.0
    {
        anyhow::bail!("{out}\nthe healthy service was flagged or failed");
    }
    let cron = find("report-cron").ok_or_else(|| anyhow!("{out}\nthe demo did not flag report-cron"))?;
    let closed = cron.suspects.iter().find(|c| c.closed_reason.is_some());
    let Some(c) = closed else {
        anyhow::bail!("{out}\nreport-cron's transaction was not reclaimed");
    };
    let status = pg.psql("SELECT status FROM reports WHERE id = 42").unwrap_or_default();
    let _ = writeln!(
        out,
        "* LEAK: client {} left a transaction open: flagged idle_in_transaction; after {:.0}s idle in transaction\n  \
         pgwarden closed it ({}, SQLSTATE 25P03) {:.0}s ago, giving the slot back. The evidence stays in /leaks:\n    \
         backend pid {}: last statement: {}\n  Its update was rolled back: reports.status is '{status}'.",
        cron.stats.client,
        c.state_seconds,
        c.closed_reason.as_deref().unwrap_or_default(),
        c.closed_seconds_ago.unwrap_or_default(),
        c.backend_pid.unwrap_or_default(),
        c.last_statement.as_deref().unwrap_or("-"),
    );
    let me = command_name();
    let _ = write!(
        out,
        "Against a running proxy, `{me} leaks` prints this evidence and exits 3; `{me} top` shows the table live."
    );
    if me != "pgwarden" {
        let _ = write!(out, "\n(`cargo install --locked --path .` puts `pgwarden` on your PATH, in ~/.cargo/bin.)");
    }
    Ok(out)
}

/// How to run this binary again from here: `pgwarden` when that is what PATH finds, else its path
/// (relative to the current directory when under it, like `./target/release/pgwarden`).
fn command_name() -> String {
    let Ok(exe) = std::env::current_exe() else { return "pgwarden".into() };
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join("pgwarden").canonicalize().ok().as_ref() == Some(&exe))
    });
    if on_path {
        return "pgwarden".into();
    }
    let cwd = std::env::current_dir().ok().and_then(|d| d.canonicalize().ok());
    match cwd.as_ref().and_then(|d| exe.strip_prefix(d).ok()) {
        Some(rel) => format!("./{}", rel.display()),
        None => exe.display().to_string(),
    }
}
