//! Exact tracking in the cases real drivers hit: each test drives the protocol by hand through the proxy
//! and checks what a user would see (a timeout that must not fire mid-work, the statement `/connections`
//! names, a committed row).

use crate::support::pg::pg;
use crate::support::raw::{self, message, query, Raw};
use crate::support::{start_proxy, test_config};
use pgwarden::config::Timeout;
use std::time::Duration;

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    message(b'P', &[cstr(name), cstr(sql), vec![0, 0]].concat())
}

fn bind(stmt: &str) -> Vec<u8> {
    message(b'B', &[cstr(""), cstr(stmt), vec![0, 0, 0, 0, 0, 0]].concat())
}

fn execute() -> Vec<u8> {
    message(b'E', &[cstr(""), vec![0, 0, 0, 0]].concat())
}

fn sync() -> Vec<u8> {
    message(b'S', b"")
}

/// A proxy whose idle_timeout (500 ms) closes any connection the tracker wrongly believes idle.
async fn strict_proxy() -> crate::support::TestProxy {
    let mut config = test_config();
    config.defaults.idle_timeout = Timeout(Some(Duration::from_millis(500)));
    start_proxy(config).await
}

/// Reads until `n` ReadyForQuery messages arrived; panics on an ErrorResponse (e.g. a wrong 57P05).
async fn until_ready_n(s: &mut Raw, n: usize) -> Vec<(u8, Vec<u8>)> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let (msgs, _) = s.until_ready().await;
        for (tag, body) in &msgs {
            assert_ne!(*tag, b'E', "unexpected error {}", raw::error_code(body));
        }
        seen.extend(msgs);
    }
    seen
}

#[tokio::test]
async fn copy_data_sent_before_the_copy_in_response_leaves_no_copy_mode_behind() {
    // pgx's CopyFrom: the data and CopyDone follow the COPY query at once.
    let p = strict_proxy().await;
    let mut s = Raw::connect(p.addr, "postgres", "tracking-copy-early").await;
    s.send(&query("create temp table early (x int)")).await;
    until_ready_n(&mut s, 1).await;
    let copy = [query("copy early from stdin"), message(b'd', b"1\n"), message(b'c', b"")].concat();
    s.send(&copy).await;
    until_ready_n(&mut s, 1).await;
    // Two pipelined batches: the tracker must stay active until the second is answered.
    let batch = |secs: &str| [parse("", &format!("select pg_sleep({secs})")), bind(""), execute(), sync()].concat();
    s.send(&[batch("0.01"), batch("1.2")].concat()).await;
    until_ready_n(&mut s, 2).await;
    p.stop().await;
}

#[tokio::test]
async fn a_simple_query_after_an_extended_batch_resets_the_sync_accounting() {
    let p = strict_proxy().await;
    let mut s = Raw::connect(p.addr, "postgres", "tracking-after-extended").await;
    s.send(&query("create temp table after_ext (x int)")).await;
    until_ready_n(&mut s, 1).await;
    s.send(&[parse("", "select 1"), bind(""), execute(), sync()].concat()).await;
    until_ready_n(&mut s, 1).await;
    s.send(&query("copy after_ext from stdin")).await;
    let (tag, _) = raw::read_message(&mut s.stream).await.unwrap();
    assert_eq!(tag, b'G', "CopyInResponse");
    s.send(&[message(b'd', b"1\n"), message(b'c', b""), query("select pg_sleep(1.2)")].concat()).await;
    until_ready_n(&mut s, 2).await;
    p.stop().await;
}

#[tokio::test]
async fn prepared_statements_past_1024_names_and_after_deallocate_are_named() {
    let p = start_proxy(test_config()).await;
    let app = "tracking-many-names";
    let mut s = Raw::connect(p.addr, "postgres", app).await;
    // Rails-style names a1, a2, ... past 1,024, each prepared in its own round trip.
    for i in 1..=1100 {
        s.send(&[parse(&format!("a{i}"), &format!("select {i} as c{i}")), sync()].concat()).await;
        until_ready_n(&mut s, 1).await;
    }
    let last = || p.conns_of(app)[0].last_statement();
    s.send(&[bind("a1100"), execute(), sync()].concat()).await;
    until_ready_n(&mut s, 1).await;
    assert_eq!(last(), "select 1100 as c1100");
    // DEALLOCATE ALL as SQL, then new names are learnt (also with the old table full).
    s.send(&query("DEALLOCATE ALL")).await;
    until_ready_n(&mut s, 1).await;
    s.send(&[parse("b1", "select 'b' as after_deallocate"), sync()].concat()).await;
    until_ready_n(&mut s, 1).await;
    s.send(&query("select 'something else'")).await;
    until_ready_n(&mut s, 1).await;
    s.send(&[bind("b1"), execute(), sync()].concat()).await;
    until_ready_n(&mut s, 1).await;
    assert_eq!(last(), "select 'b' as after_deallocate");
    // A Parse the server rejects defines nothing: the name keeps its earlier text.
    s.send(&[parse("b1", "selec oops"), sync()].concat()).await;
    let (msgs, _) = s.until_ready().await;
    assert!(msgs.iter().any(|(t, _)| *t == b'E'), "duplicate statement name refused");
    s.send(&[bind("b1"), execute(), sync()].concat()).await;
    until_ready_n(&mut s, 1).await;
    assert_eq!(last(), "select 'b' as after_deallocate");
    p.stop().await;
}

#[tokio::test]
async fn unlisten_all_and_discard_all_end_listening() {
    let p = start_proxy(test_config()).await;
    let app = "tracking-unlisten";
    let mut s = Raw::connect(p.addr, "postgres", app).await;
    for (sql, listening) in
        [("LISTEN jobs", true), ("UNLISTEN *", false), ("LISTEN jobs", true), ("DISCARD ALL", false)]
    {
        s.send(&query(sql)).await;
        until_ready_n(&mut s, 1).await;
        assert_eq!(p.conns_of(app)[0].listening(), listening, "after {sql}");
    }
    p.stop().await;
}

#[tokio::test]
async fn a_message_arriving_slowly_is_not_idle() {
    // max_connection_age closes at the next idle point: never in the middle of a Query still arriving.
    let mut config = test_config();
    config.defaults.max_connection_age = Timeout(Some(Duration::from_millis(300)));
    config.defaults.idle_timeout = Timeout(Some(Duration::from_millis(300)));
    let p = start_proxy(config).await;
    let mut s = Raw::connect(p.addr, "postgres", "tracking-slow-upload").await;
    let big = query(&format!("select length('{}')", "x".repeat(200_000)));
    s.send(&big[..100_000]).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.send(&big[100_000..]).await;
    let msgs = until_ready_n(&mut s, 1).await;
    assert!(msgs.iter().any(|(t, _)| *t == b'D'), "the query ran");
    p.stop().await;
}

#[tokio::test]
async fn whole_messages_before_a_bad_header_are_forwarded_then_08p01() {
    let p = start_proxy(test_config()).await;
    let mut s = Raw::connect(p.addr, "postgres", "tracking-bad-length").await;
    pg().psql("DELETE FROM kill_test WHERE id = 4242");
    // The INSERT and the bad header arrive in one chunk: the INSERT is committed whatever the segmentation.
    s.send(&[query("insert into kill_test values (4242)"), vec![b'Q', 0, 0, 0, 1]].concat()).await;
    let mut tags = Vec::new();
    let mut code = None;
    while let Some((tag, body)) = raw::read_message(&mut s.stream).await {
        if tag == b'E' {
            code = Some(raw::error_code(&body));
        }
        tags.push(tag);
    }
    assert_eq!(code.as_deref(), Some("08P01"));
    assert_eq!(tags, [b'C', b'Z', b'E'], "the INSERT's answer, then the error");
    assert_eq!(pg().psql("SELECT count(*) FROM kill_test WHERE id = 4242"), "1");
    p.stop().await;
}
