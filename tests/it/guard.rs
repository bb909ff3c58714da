//! `pgwarden guard -- COMMAND` against the real PostgreSQL (TLS, SCRAM), with psycopg programs as COMMAND:
//! a leaky pool and an open transaction fail the run with the statements that leaked; healthy programs pass;
//! COMMAND's own failure is passed on; DATABASE_URL is rewritten with its password intact and never shown;
//! a SIGINT reaches COMMAND and guard leaves nothing running.

use crate::lifecycle::bin;
use crate::support::libpq::python;
use crate::support::pg::{pg, SCRAM_PASSWORD, SCRAM_USER};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// A pool as applications write one: borrow takes a free connection or opens one, give_back returns it.
const POOL: &str = r#"
import os, sys, time, threading, psycopg
class Pool:
    def __init__(self, app):
        self.app, self.free, self.lock = app, [], threading.Lock()
    def borrow(self):
        with self.lock:
            if self.free:
                return self.free.pop()
        return psycopg.connect(application_name=self.app, autocommit=True)
    def give_back(self, c):
        with self.lock:
            self.free.append(c)
"#;

fn guard(args: &[&str], script: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = bin();
    cmd.arg("guard").args(args).arg("--").arg(python()).arg("-c").arg(format!("{POOL}\n{script}"));
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", pg().port.to_string())
        .env("PGUSER", SCRAM_USER)
        .env("PGPASSWORD", SCRAM_PASSWORD)
        .env("PGDATABASE", "postgres")
        .env_remove("DATABASE_URL")
        .env_remove("PGSSLMODE")
        .env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null()).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_leaky_pool_and_an_open_transaction_fail_the_run_with_their_statements() {
    let dir = tempfile::tempdir().unwrap();
    let (json, junit) = (dir.path().join("guard.json"), dir.path().join("guard.xml"));
    let script = r#"
pool = Pool("leaky-pool")
def txn():
    c = psycopg.connect(application_name="open-txn")
    c.execute("UPDATE kill_test SET id = id WHERE id = 41")
    time.sleep(4)   # idle in transaction, then the process ends with it open
t = threading.Thread(target=txn); t.start()
forgotten = []   # still referenced, as a leak is (a request object, a cache): never closed, never given back
for i in range(8):
    c = pool.borrow()
    c.execute("SELECT 'forgotten' AS leak_marker, %s::int", (i,))
    if i % 2 == 1:
        pool.give_back(c)
    else:
        forgotten.append(c)
    time.sleep(0.6)
t.join()
print("done")
"#;
    let a = ["--idle-threshold", "1s", "--idle-in-transaction-threshold", "1s"];
    let args = [&a[..], &["--json", json.to_str().unwrap(), "--junit", junit.to_str().unwrap()]].concat();
    let out = guard(&args, script, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_eq!(stdout.trim(), "done", "COMMAND's stdout is untouched");
    let line = |kind: &str, client: &str| {
        stderr
            .lines()
            .find(|l| l.contains(kind) && l.contains(client))
            .unwrap_or_else(|| panic!("no {kind} finding for {client} in:\n{stderr}"))
            .to_string()
    };
    let grew = line("idle_while_client_grew", "leaky-pool");
    assert!(grew.contains("AS leak_marker") && !grew.contains("forgotten"), "the leaking statement, redacted: {grew}");
    let txn = line("idle_in_transaction", "open-txn");
    assert!(txn.contains("UPDATE kill_test SET id = id WHERE id = ") && !txn.contains("= 41"), "{txn}");

    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(doc["exit_code"], 3);
    let findings = doc["findings"].as_array().unwrap();
    let of = |kind: &str| findings.iter().filter(|f| f["kind"] == kind).count();
    assert!(of("idle_while_client_grew") >= 2, "{doc:#}");
    assert!(of("idle_in_transaction") >= 1, "{doc:#}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<failure ").count(), findings.len(), "one failing case per finding:\n{xml}");
    for f in findings {
        let pid = f["connection"]["backend_pid"].as_i64().map_or("-".to_string(), |p| p.to_string());
        let name = format!("{} {} (backend pid {pid})", f["kind"].as_str().unwrap(), f["client"].as_str().unwrap());
        assert!(xml.contains(&name), "{name} missing from:\n{xml}");
    }
    assert!(xml.contains("leak_marker"), "the statement is in the failure's text");
}

/// A 10-second test suite whose helper leaks every connection it borrows, with guard's defaults (5 s
/// thresholds): the run fails naming the helper's statement.
#[test]
fn a_ten_second_suite_leaking_every_borrow_fails_the_run() {
    let script = r#"
held = []
for i in range(20):
    c = psycopg.connect(application_name="suite", autocommit=True)
    c.execute("SELECT 1 AS helper_marker")
    held.append(c)
    time.sleep(0.5)
print("done")
"#;
    let out = guard(&[], script, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "stderr:\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("idle_while_client_grew") && l.contains("suite") && l.contains("helper_marker")),
        "{stderr}"
    );
}

#[test]
fn healthy_programs_pass_with_no_findings() {
    let script = r#"
pool = Pool("healthy-pool")
listener = psycopg.connect(application_name="listener", autocommit=True)
listener.execute("LISTEN jobs")
cron = psycopg.connect(application_name="cron", autocommit=True)
def work(n):
    for i in range(n):
        c = pool.borrow()
        c.execute("SELECT pg_sleep(0.02)")
        pool.give_back(c)
ts = [threading.Thread(target=work, args=(40,)) for _ in range(3)]
for t in ts: t.start()
for i in range(5):
    cron.execute("SELECT now()")
    time.sleep(0.5)
for t in ts: t.join()
time.sleep(1.5)  # the listener and the pool's free connections idle past the threshold
for c in pool.free: c.close()
listener.close(); cron.close()
"#;
    let out = guard(&["--idle-threshold", "1s", "--idle-in-transaction-threshold", "1s"], script, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("no connection leaks found"), "{stderr}");
}

#[test]
fn the_command_failing_is_its_status_and_the_report_still_comes() {
    let script = "c = psycopg.connect(application_name='left-open')\nc.execute('SELECT 1')\nos._exit(7)";
    let out = guard(&["--exit-grace", "0s"], script, &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{stderr}");
    assert!(stderr.contains("command exited 7"), "{stderr}");
}

#[test]
fn a_connection_still_open_when_the_command_exits_is_a_finding() {
    // The command leaves a background process holding a connection (a server the tests started).
    let script = r#"
import subprocess
child = subprocess.Popen([sys.executable, "-c",
    "import psycopg, time\nc = psycopg.connect(application_name='left-running')\nc.execute('SELECT 42 AS still_here')\nprint('up', flush=True)\ntime.sleep(30)"],
    stdout=subprocess.PIPE, start_new_session=True)
child.stdout.readline()
print(child.pid)
"#;
    let out = guard(&["--fail-on", "open_at_exit"], script, &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    let pid: i32 = stdout.trim().parse().unwrap_or_else(|_| panic!("{stdout}\n{stderr}"));
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("open_at_exit")).unwrap_or_else(|| panic!("{stderr}"));
    assert!(line.contains("left-running") && line.contains("AS still_here"), "{line}");
}

#[test]
fn database_url_is_rewritten_with_its_parts_intact_and_its_password_never_shown() {
    let url = format!(
        "postgres://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{}/postgres?sslmode=disable&application_name=url-app",
        pg().port
    );
    let script = r#"
url = os.environ["DATABASE_URL"]
print(url)
print(os.environ["PGHOST"], os.environ["PGPORT"])
with psycopg.connect(url) as c:
    print(c.execute("SELECT current_user || ' ' || current_setting('application_name')").fetchone()[0])
"#;
    let out = guard(&[], script, &[("DATABASE_URL", &url), ("PGHOST", ""), ("PGPORT", "")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let (host, port) = lines[1].split_once(' ').unwrap();
    assert_eq!(host, "127.0.0.1");
    assert_ne!(port, pg().port.to_string(), "the proxy's port, not the database's");
    assert_eq!(
        lines[0],
        format!("postgres://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{port}/postgres?sslmode=disable&application_name=url-app")
    );
    assert_eq!(lines[2], format!("{SCRAM_USER} url-app"), "SCRAM through the proxy with the URL's password");
    assert!(stderr.contains("from DATABASE_URL") && stderr.contains(":***@"), "{stderr}");
    assert!(!stderr.contains(SCRAM_PASSWORD), "the password leaked into guard's output:\n{stderr}");
}

/// Passwords with `#`, `?`, `/` or `@` unencoded (issue 27 item 6): the command gets the URL with its user info
/// byte for byte (and libpq reads the `#?` one: the connection works), and nothing of the password is in
/// guard's output. Before, `#` cut the URL and guard exited 64 printing a piece of the password.
#[test]
fn passwords_with_url_delimiters_reach_the_command_whole_and_are_never_shown() {
    for pw in ["Xy#9k?zz", "Xy/9k!q", "Xy@9k!q"] {
        let url = format!("postgresql://postgres:{pw}@127.0.0.1:{}/postgres?application_name=punct", pg().port);
        let script = r#"
url = os.environ["DATABASE_URL"]
print(url)
if "Xy#" in url:  # the one libpq can read as it is
    with psycopg.connect(url) as c:
        print(c.execute("SELECT current_setting('application_name')").fetchone()[0])
"#;
        let out = guard(&[], script, &[("DATABASE_URL", &url), ("PGHOST", ""), ("PGPORT", "")]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{pw}: stdout:\n{stdout}\nstderr:\n{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        let (userinfo, rest) = lines[0].rsplit_once("@127.0.0.1:").unwrap();
        assert_eq!(userinfo, format!("postgresql://postgres:{pw}"), "{pw}");
        assert!(rest.ends_with("/postgres?application_name=punct") && !rest.starts_with(&pg().port.to_string()));
        if pw.starts_with("Xy#") {
            assert_eq!(lines[1], "punct", "libpq connected with the URL as the command got it");
        }
        for piece in ["Xy", "9k", "zz", "!q"] {
            assert!(!stderr.contains(piece), "{pw}: a piece of the password in guard's output:\n{stderr}");
        }
    }
}

#[test]
fn sigint_reaches_the_command_and_guard_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().display().to_string();
    let script = format!(
        r#"
import signal
c = psycopg.connect(application_name="interrupted")
c.execute("SELECT 1")
def stop(sig, frame):
    open("{marks}/got-sigint", "w").close()
    sys.exit(2)
signal.signal(signal.SIGINT, stop)
open("{marks}/{{}}".format(os.getpid()), "w").close()
open("{marks}/ready", "w").close()
time.sleep(60)
"#
    );
    let mut cmd = bin();
    cmd.arg("guard").arg("--").arg(python()).arg("-c").arg(format!("{POOL}\n{script}"));
    cmd.env("PGHOST", "127.0.0.1").env("PGPORT", pg().port.to_string()).env("PGUSER", SCRAM_USER);
    cmd.env("PGPASSWORD", SCRAM_PASSWORD).env("PGDATABASE", "postgres").env_remove("DATABASE_URL");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    let started = Instant::now();
    while !dir.path().join("ready").exists() {
        assert!(started.elapsed() < Duration::from_secs(20), "COMMAND never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let command_pid: i32 = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str().and_then(|n| n.parse().ok()))
        .next()
        .unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(dir.path().join("got-sigint").exists(), "COMMAND never got the SIGINT:\n{stderr}");
    assert_eq!(out.status.code(), Some(2), "COMMAND's status:\n{stderr}");
    assert_ne!(unsafe { libc::kill(command_pid, 0) }, 0, "COMMAND still runs");
    let proxy_port: u16 = stderr
        .split("proxy on 127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(std::net::TcpStream::connect(("127.0.0.1", proxy_port)).is_err(), "the proxy still listens");
    let end = Instant::now() + Duration::from_secs(5);
    while pg().backends_of("interrupted") > 0 {
        assert!(Instant::now() < end, "the server connection is still open");
        std::thread::sleep(Duration::from_millis(50));
    }
}
