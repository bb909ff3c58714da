//! Log lines of the real binary: one WARN when a client becomes a leak suspect, one INFO when it recovers,
//! never one per poll; report-only mode detects too.

use crate::lifecycle::{bin, spawn_proxy_binary};
use crate::support::raw::{self, Raw};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

/// Stops the proxy (SIGTERM, a clean exit) and returns its stderr and each line of it as JSON.
fn stop_for_json_lines(child: &mut std::process::Child) -> (String, Vec<serde_json::Value>) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(child.wait().unwrap().success());
    let lines = stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
    (stderr, lines)
}

#[tokio::test]
async fn one_warn_per_transition_in_report_only_mode() {
    let yaml =
        "upstream_tls: disable\nenforce: false\nlog_format: json\nleak:\n  idle_in_transaction_threshold: 500ms\n";
    let (mut child, port, _) = spawn_proxy_binary(yaml, &[("RUST_LOG", "info")], Stdio::piped()).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Raw::connect(addr, "postgres", "logs-app").await;
    c.send(&raw::query("begin; select 'card 4111111111111111'")).await;
    assert_eq!(c.until_ready().await.1, b'T');
    // Many detector polls while it stays a suspect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    c.send(&raw::query("commit")).await;
    assert_eq!(c.until_ready().await.1, b'I');
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (stderr, lines) = stop_for_json_lines(&mut child);
    let msg = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or_default().to_string();
    let warns: Vec<&serde_json::Value> = lines.iter().filter(|l| msg(l).starts_with("leak suspected")).collect();
    assert_eq!(warns.len(), 1, "one WARN per transition:\n{stderr}");
    let w = warns[0];
    assert_eq!(w["level"], "WARN");
    assert_eq!(w["fields"]["client"], "logs-app/postgres");
    assert_eq!(w["fields"]["reason"], "idle_in_transaction");
    assert_eq!(w["fields"]["suspects"], 1);
    assert_eq!(w["fields"]["last_statement"], "begin; select ?", "redacted: the card number never reaches the log");
    assert!(!stderr.contains("4111111111111111"));
    let cleared: Vec<&serde_json::Value> =
        lines.iter().filter(|l| msg(l).starts_with("leak suspicion cleared")).collect();
    assert_eq!(cleared.len(), 1, "one INFO on recovery:\n{stderr}");
    assert_eq!(cleared[0]["level"], "INFO");
}

#[tokio::test]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let (mut child, port, _) =
        spawn_proxy_binary("upstream_tls: disable\n", &[("RUST_LOG", "info")], Stdio::piped()).await;
    tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(stderr.contains("pgwarden proxy ready"), "{stderr}");
    assert!(!stderr.contains('\x1b'), "ANSI escapes in piped logs: {stderr:?}");
}

/// No byte below 0x20 but a newline or a tab, and no DEL.
fn terminal_safe(b: &[u8]) -> bool {
    b.iter().all(|&c| (c >= 0x20 && c != 0x7f) || c == b'\n' || c == b'\t')
}

/// An `application_name` and a statement carrying terminal escapes (a clipboard write, a screen clear) and
/// a forged log line (issue 27 item 7): `top`, `leaks` and the text logs show them as `?` or escaped, never
/// raw; the client key is cut to 63 bytes and cleaned as PostgreSQL does.
#[tokio::test]
async fn control_characters_from_a_client_reach_no_terminal_and_no_text_log() {
    let yaml = "upstream_tls: disable\nleak:\n  idle_in_transaction_threshold: 500ms\n";
    let (mut child, port, admin) = spawn_proxy_binary(yaml, &[("RUST_LOG", "debug")], Stdio::piped()).await;
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = { stderr }.read_to_end(&mut all);
        all
    });
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let evil = format!("evil\x1b]52;c;aGk=\x07\n2026-12-07T00:00:00Z  INFO forged\r\x1b[2J\x7f{}", "-".repeat(4000));
    let mut c = Raw::connect(addr, "postgres", &evil).await;
    c.send(&raw::query("begin; select 1 as \"x\x1b[2J\ny\"")).await;
    assert_eq!(c.until_ready().await.1, b'T');
    tokio::time::sleep(Duration::from_secs(2)).await;
    let url = format!("http://127.0.0.1:{admin}");
    let top = bin().args(["top", "--once", "--admin", &url]).output().unwrap();
    let leaks = bin().args(["leaks", "--admin", &url]).output().unwrap();
    for (what, out) in [("top", &top), ("leaks", &leaks)] {
        assert!(
            terminal_safe(&out.stdout) && terminal_safe(&out.stderr),
            "{what}: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let shown = String::from_utf8_lossy(&leaks.stdout);
    assert!(shown.contains("evil?]52;c;aGk=??2026-12-07T00:00:00Z  INFO"), "{shown}");
    assert!(shown.contains("x?[2J y"), "the statement, printable: {shown}");
    let clients = crate::support::http::json(&format!("127.0.0.1:{admin}"), "/clients").await;
    let name = clients["clients"][0]["application_name"].as_str().unwrap().to_string();
    assert_eq!(name.len(), 63, "cut to 63 bytes as PostgreSQL does: {name:?}");
    drop(c);
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let logs = reader.join().unwrap();
    assert!(String::from_utf8_lossy(&logs).contains("leak suspected"), "{}", String::from_utf8_lossy(&logs));
    assert!(terminal_safe(&logs), "a control byte reached the text log: {:?}", String::from_utf8_lossy(&logs));
}

/// stderr a pipe nobody reads (a stuck container log collector), debug logging: once the pipe is full the
/// relay keeps serving queries and `/healthz` answers; the lines that did not fit are counted (issue 27
/// item 9). Before, a full pipe blocked `write(2)` on the runtime thread and every session with it.
#[tokio::test]
async fn a_stderr_nobody_reads_never_stops_the_relay_or_the_probes() {
    let (mut child, port, admin) =
        spawn_proxy_binary("upstream_tls: disable\n", &[("RUST_LOG", "debug")], Stdio::piped()).await;
    let unread = child.stderr.take();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin = format!("127.0.0.1:{admin}");
    let mut dropped = 0.0;
    for i in 0..3000 {
        let session = async {
            let mut c = Raw::connect(addr, "postgres", "pipe").await;
            c.send(&raw::query("select 1")).await;
            c.until_ready().await
        };
        let (_, status) = tokio::time::timeout(Duration::from_secs(5), session)
            .await
            .unwrap_or_else(|_| panic!("connection {i} stalled: logging blocked the relay"));
        assert_eq!(status, b'I');
        if i % 100 == 99 {
            let metrics = crate::support::http::get(&admin, "/metrics").await;
            dropped = metrics
                .lines()
                .find_map(|l| l.strip_prefix("pgwarden_log_lines_dropped_total ")?.trim().parse::<f64>().ok())
                .unwrap();
            if dropped > 0.0 {
                break;
            }
        }
    }
    assert!(dropped > 0.0, "the pipe never filled: nothing was tested");
    let started = std::time::Instant::now();
    let health = tokio::time::timeout(Duration::from_secs(1), crate::support::http::status(&admin, "/healthz")).await;
    assert_eq!(health.ok(), Some(200), "/healthz after {:?}", started.elapsed());
    let mut c = Raw::connect(addr, "postgres", "pipe").await;
    c.send(&raw::query("select 1")).await;
    assert_eq!(c.until_ready().await.1, b'I');
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    drop(unread);
}

/// The relay logs outside its span (entering it on every wake-up cost too much, issue 31) but names it as each
/// line's parent: a relay line still says which connection, client and backend it is about.
#[tokio::test]
async fn relay_lines_carry_the_connection_span() {
    let yaml =
        "upstream_tls: disable\nenforce: false\nlog_format: json\ndefaults:\n  idle_in_transaction_timeout: 500ms\n";
    let (mut child, port, _) = spawn_proxy_binary(yaml, &[("RUST_LOG", "info")], Stdio::piped()).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = Raw::connect(addr, "postgres", "span-app").await;
    c.send(&raw::query("begin; select pg_backend_pid()")).await;
    let (rows, status) = c.until_ready().await;
    assert_eq!(status, b'T');
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(&raw::query("commit")).await;
    assert_eq!(c.until_ready().await.1, b'I');
    let (stderr, lines) = stop_for_json_lines(&mut child);
    let msg = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or_default().to_string();
    let would: Vec<&serde_json::Value> =
        lines.iter().filter(|l| msg(l).starts_with("report-only: would close connection")).collect();
    assert_eq!(would.len(), 1, "{stderr}");
    let span = &would[0]["span"];
    assert_eq!(span["name"], "conn", "{stderr}");
    assert_eq!(span["client"], "span-app/postgres", "{stderr}");
    // The DataRow of pg_backend_pid(): one column, its length, then the pid as text.
    let row = rows.iter().find(|(tag, _)| *tag == b'D').map(|(_, body)| body.clone()).expect("a row");
    let pid: i64 = String::from_utf8_lossy(&row[6..]).parse().expect("a pid");
    assert_eq!(span["backend_pid"], pid, "{span}");
}
