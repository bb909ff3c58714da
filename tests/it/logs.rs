//! Log lines of the real binary: one WARN when a client becomes a leak suspect, one INFO when it recovers,
//! never one per poll; report-only mode detects too.

use crate::lifecycle::spawn_proxy_binary;
use crate::support::raw::{self, Raw};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

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
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(child.wait().unwrap().success());
    let lines: Vec<serde_json::Value> =
        stderr.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"))).collect();
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
