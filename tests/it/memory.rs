//! What a client can make the sidecar hold: 1,000 connections through the real binary, each running queries
//! and then sending 2,000 distinct named Parses that the server rejects or skips, and named statements past
//! the per-connection budget. The RSS of the pgwarden process must stay within the bounds README states
//! ("How it works", memory): little per idle connection after queries, nothing kept for rejected Parses
//! (before the fix: 1,024 of them kept, ~1.2 MB per connection), at most the 64 KiB budget of statement text.
//!
//! Its own PostgreSQL (1,000 backends do not fit beside the other tests in the shared one).

use crate::lifecycle::spawn_proxy_binary_to;
use crate::support::raw::{self, Raw};
use futures_util::stream::{self, StreamExt};
use pgwarden::demo::postgres::TempPostgres;
use std::process::Stdio;

const CONNECTIONS: usize = 1000;

/// Resident set of process `pid`, in bytes.
fn rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, sql] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&0i16.to_be_bytes());
    raw::message(b'P', &body)
}

fn sync() -> Vec<u8> {
    raw::message(b'S', &[])
}

/// `count` Parses named `{prefix}_{k}` of distinct 1 KB statements.
fn parses(prefix: &str, count: usize) -> Vec<u8> {
    let pad = "t".repeat(1000);
    (0..count).flat_map(|k| parse(&format!("{prefix}_{k}"), &format!("select {k} /* {pad} */"))).collect()
}

/// Sends `bytes` on every connection (a few at a time) and reads each up to `ready` ReadyForQuery messages.
async fn on_all(conns: &mut [Raw], ready: usize, bytes: impl Fn(usize) -> Vec<u8>) {
    let bytes = &bytes;
    stream::iter(conns.iter_mut().enumerate())
        .for_each_concurrent(64, |(i, c)| async move {
            c.send(&bytes(i)).await;
            for _ in 0..ready {
                c.until_ready().await;
            }
        })
        .await;
}

#[tokio::test]
async fn a_thousand_connections_and_two_million_rejected_parses_stay_bounded() {
    let pg = TempPostgres::init("pgwarden-mem-", "max_connections = 1100\nshared_buffers = 16MB\n").unwrap();
    pg.spawn_watchdog(std::process::id()).unwrap();
    pg.start().unwrap();
    let yaml = "upstream_tls: disable\nclient_key: [application_name]\nleak: { idle_threshold: off }\n";
    let (mut child, port, _) = spawn_proxy_binary_to(pg.port, yaml, &[], Stdio::null()).await;
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let pid = child.id();
    let at_start = rss(pid);

    let mut conns: Vec<Raw> = stream::iter(0..CONNECTIONS)
        .map(|i| async move { Raw::connect(addr, "postgres", &format!("mem-{}", i % 50)).await })
        .buffer_unordered(32)
        .collect()
        .await;
    // Queries with results larger than the small buffers, so each direction has grown once.
    on_all(&mut conns, 1, |i| raw::query(&format!("select repeat('r', 40000) as r{i}, '{}'", "q".repeat(2000)))).await;
    let idle = rss(pid);
    let per_idle = (idle - at_start) / CONNECTIONS;

    // 2,000 distinct Parses per connection in 20 batches; the first of each batch is rejected by the
    // server, which then skips the other 99 until the Sync: none defines a statement.
    on_all(&mut conns, 20, |i| {
        let mut b = Vec::new();
        for batch in 0..20 {
            b.extend(parse(&format!("bad_{i}_{batch}"), "selec nothing"));
            b.extend(parses(&format!("s_{i}_{batch}"), 99));
            b.extend(sync());
        }
        b
    })
    .await;
    let after_rejected = rss(pid);
    let per_rejected = after_rejected.saturating_sub(idle) / CONNECTIONS;

    // Named statements the server accepts, 150 KB of text per connection: kept up to the 64 KiB budget.
    on_all(&mut conns, 1, |i| {
        let mut b = parses(&format!("ok_{i}"), 150);
        b.extend(sync());
        b
    })
    .await;
    let after_kept = rss(pid);
    let per_kept = after_kept.saturating_sub(idle) / CONNECTIONS;
    eprintln!(
        "pgwarden RSS: {} KiB at start; per connection: {} B idle after queries, +{} B after 2,000 rejected \
         Parses, +{} B with the statement budget full ({} MiB in all for {CONNECTIONS} connections)",
        at_start / 1024,
        per_idle,
        per_rejected,
        per_kept,
        after_kept / (1 << 20)
    );
    drop(conns);
    let _ = child.kill();
    let _ = child.wait();
    pg.stop();

    // A debug build (the test's) holds somewhat more than the release figure in BENCHMARKS.md; the
    // allocator keeps what 64 connections at a time used transiently (their 64 KiB queues, 16 KiB buffers).
    assert!(per_idle <= 16 * 1024, "{per_idle} B per idle connection after queries");
    assert!(per_rejected <= 12 * 1024, "rejected Parses cost {per_rejected} B per connection");
    assert!(per_kept <= 96 * 1024, "named statements cost {per_kept} B per connection (budget 64 KiB)");
}
