//! `pgwarden demo` reaches its verdict in under 90 s and leaves no process or directory behind.

use crate::lifecycle::bin;
use std::time::{Duration, Instant};

#[test]
fn demo_reaches_its_verdict_and_cleans_up() {
    let started = Instant::now();
    let out = bin().arg("demo").output().unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(took < Duration::from_secs(90), "took {took:?}");
    for needle in [
        "VERDICT",
        "LEAK: client image-processor/app",
        "idle_while_client_grew), before its cap of 12 held it",
        "idle_while_client_at_cap",
        "SQLSTATE 53300",
        "checkout-api kept being served",
        "LEAK: client report-cron/app",
        "idle_in_transaction_timeout",
        "rolled back",
    ] {
        assert!(stdout.contains(needle), "{needle:?} missing from:\n{stdout}");
    }
    let dir = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Stopped PostgreSQL and the proxy; removed "))
        .expect("cleanup line");
    let dir = dir.trim_end_matches('.');
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
    let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let leftovers: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.contains(dir) && !l.contains("while [ -d /proc"))
        .map(String::from)
        .collect();
    assert!(leftovers.is_empty(), "processes left: {leftovers:?}");
}
