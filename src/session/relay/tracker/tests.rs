use super::*;
use crate::protocol::scanner::{encode, Scanner};

/// Feeds encoded messages through a scanner into the tracker, like the relay does.
fn client(t: &mut Tracker, msgs: &[(u8, &[u8])]) {
    let mut sc = Scanner::default();
    let bytes: Vec<u8> = msgs.iter().flat_map(|(tag, body)| encode(*tag, body)).collect();
    let cap = t.statement_cap;
    let want = |tag| client_want(cap, tag);
    let mut frames = Vec::new();
    sc.feed(&bytes, want, |f| frames.push((f.tag, f.len, f.body.to_vec()))).unwrap();
    for (tag, len, body) in frames {
        t.on_client(Frame { tag, len, body: &body });
    }
}

fn server(t: &mut Tracker, msgs: &[(u8, &[u8])]) {
    for (tag, body) in msgs {
        t.on_server(Frame { tag: *tag, len: body.len(), body });
    }
}

fn ready(t: &mut Tracker) -> Tracker {
    let mut key = 4711i32.to_be_bytes().to_vec();
    key.extend_from_slice(&[1, 2, 3, 4]);
    server(t, &[(b'R', b"\0\0\0\0"), (b'K', &key), (b'Z', b"I")]);
    std::mem::replace(t, Tracker::new(0))
}

#[test]
fn startup_then_idle_with_backend_key() {
    let mut t = Tracker::new(100);
    assert_eq!(t.state(), ConnState::Startup);
    client(&mut t, &[(b'p', b"secret\0")]);
    assert_eq!(t.state(), ConnState::Startup);
    let t = ready(&mut t);
    assert_eq!(t.state(), ConnState::Idle);
    assert_eq!(t.backend_key, Some((4711, vec![1, 2, 3, 4])));
}

#[test]
fn simple_query_and_transaction_states() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    t.statement_cap = 100;
    client(&mut t, &[(b'Q', b"begin\0")]);
    assert_eq!(t.state(), ConnState::Active);
    server(&mut t, &[(b'C', b"BEGIN\0"), (b'Z', b"T")]);
    assert_eq!(t.state(), ConnState::IdleInTransaction);
    client(&mut t, &[(b'Q', b"select 1/0\0")]);
    server(&mut t, &[(b'E', b"SERROR\0C22012\0\0"), (b'Z', b"E")]);
    assert_eq!(t.state(), ConnState::IdleInFailedTransaction);
    assert!(!t.server_fatal);
    assert_eq!(t.take_statement().as_deref(), Some(&b"select 1/0"[..]));
    assert_eq!(t.take_statement(), None);
    assert_eq!(t.queries, 2);
}

#[test]
fn pipelined_batch_is_active_until_every_sync_is_answered() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    let mut msgs = Vec::new();
    for _ in 0..100 {
        msgs.extend_from_slice(&[
            (b'P', &b"\0select 1\0\0\0"[..]),
            (b'B', b"\0\0\0\0\0\0\0\0"),
            (b'E', b"\0\0\0\0\0"),
            (b'S', b""),
        ]);
    }
    client(&mut t, &msgs);
    for i in 0..100 {
        assert_eq!(t.state(), ConnState::Active, "after {i} answers");
        server(&mut t, &[(b'1', b""), (b'2', b""), (b'C', b"SELECT 1\0"), (b'Z', b"I")]);
    }
    assert_eq!(t.state(), ConnState::Idle);
}

#[test]
fn messages_without_sync_keep_the_session_active() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    client(&mut t, &[(b'P', b"s\0select 1\0\0\0"), (b'H', b"")]);
    server(&mut t, &[(b'1', b"")]);
    assert_eq!(t.state(), ConnState::Active);
    client(&mut t, &[(b'S', b"")]);
    server(&mut t, &[(b'Z', b"I")]);
    assert_eq!(t.state(), ConnState::Idle);
}

#[test]
fn copy_in_is_active_until_ready() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    client(&mut t, &[(b'Q', b"copy t from stdin\0")]);
    server(&mut t, &[(b'G', b"\0\0\0")]);
    client(&mut t, &[(b'd', b"1\n"), (b'c', b"")]);
    assert_eq!(t.state(), ConnState::Active);
    server(&mut t, &[(b'C', b"COPY 1\0"), (b'Z', b"I")]);
    assert_eq!(t.state(), ConnState::Idle);
}

#[test]
fn notifications_and_notices_do_not_change_state() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    server(&mut t, &[(b'A', b"\0\0\0\x01chan\0payload\0"), (b'N', b"SNOTICE\0\0"), (b'S', b"a\0b\0")]);
    assert_eq!(t.state(), ConnState::Idle);
}

#[test]
fn named_prepared_statement_text_is_reported_on_execute() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    t.statement_cap = 100;
    client(&mut t, &[(b'P', b"s1\0select $1::int\0\0\0"), (b'S', b"")]);
    server(&mut t, &[(b'1', b""), (b'Z', b"I")]);
    client(&mut t, &[(b'Q', b"select 2\0")]);
    server(&mut t, &[(b'Z', b"I")]);
    assert_eq!(t.take_statement().as_deref(), Some(&b"select 2"[..]));
    client(&mut t, &[(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0"), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
    assert_eq!(t.take_statement().as_deref(), Some(&b"select $1::int"[..]));
    client(&mut t, &[(b'C', b"Ss1\0")]);
    assert!(t.statements.is_empty());
}

#[test]
fn statement_cap_zero_keeps_no_text_and_cap_truncates() {
    let mut t = Tracker::new(0);
    client(&mut t, &[(b'Q', b"select 1\0")]);
    assert_eq!(t.take_statement(), None);
    let mut t = Tracker::new(6);
    client(&mut t, &[(b'Q', b"select 12345\0")]);
    assert_eq!(t.take_statement().as_deref(), Some(&b"select"[..]));
}

#[test]
fn terminate_fatal_and_listen() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    client(&mut t, &[(b'Q', b"  LISTEN jobs\0")]);
    assert!(t.listening);
    server(&mut t, &[(b'E', b"SFATAL\0VFATAL\0C57P01\0\0")]);
    assert!(t.server_fatal);
    client(&mut t, &[(b'X', b"")]);
    assert!(t.terminated);
    assert!(!starts_with_listen(b"listener"));
    assert!(starts_with_listen(b"listen"));
    assert!(starts_with_listen(b"/* app */ LISTEN jobs"));
    assert!(starts_with_listen(b"SELECT 1; listen jobs"));
    assert!(starts_with_listen(b"-- worker\nLISTEN jobs"));
    assert!(!starts_with_listen(b"select 'listen here'"));
}

#[test]
fn extended_copy_in_ignores_the_sync_sent_during_copy() {
    // tokio-postgres: Bind, Execute, Sync, then CopyData..., CopyDone, Sync. The server ignores the first
    // Sync (it arrives in COPY IN mode) and answers one ReadyForQuery.
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    client(&mut t, &[(b'B', b"\0\0\0\0\0\0\0\0"), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
    server(&mut t, &[(b'2', b""), (b'G', b"\0\0\0")]);
    client(&mut t, &[(b'd', b"1\n"), (b'S', b""), (b'c', b""), (b'S', b"")]);
    assert_eq!(t.state(), ConnState::Active);
    server(&mut t, &[(b'C', b"COPY 1\0"), (b'Z', b"I")]);
    assert_eq!(t.state(), ConnState::Idle);
}

#[test]
fn copy_in_error_then_sync() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    client(&mut t, &[(b'B', b"\0\0\0\0\0\0\0\0"), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
    server(&mut t, &[(b'G', b"\0\0\0")]);
    client(&mut t, &[(b'd', b"garbage\n")]);
    server(&mut t, &[(b'E', b"SERROR\0C22P02\0\0")]);
    client(&mut t, &[(b'S', b"")]);
    assert_eq!(t.state(), ConnState::Active);
    server(&mut t, &[(b'Z', b"I")]);
    assert_eq!(t.state(), ConnState::Idle);
}

#[test]
fn client_ends_copy_before_the_copy_in_response_arrives() {
    let mut t = Tracker::new(100);
    let mut t = ready(&mut t);
    client(&mut t, &[(b'B', b"\0\0\0\0\0\0\0\0"), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
    client(&mut t, &[(b'd', b"1\n"), (b'c', b""), (b'S', b"")]);
    server(&mut t, &[(b'G', b"\0\0\0"), (b'C', b"COPY 1\0")]);
    assert_eq!(t.state(), ConnState::Active);
    server(&mut t, &[(b'Z', b"I")]);
    assert_eq!(t.state(), ConnState::Idle);
    client(&mut t, &[(b'Q', b"select 1\0")]);
    server(&mut t, &[(b'Z', b"I")]);
    assert_eq!(t.state(), ConnState::Idle, "no COPY IN mode left over");
}

#[test]
fn a_statement_sent_again_is_neither_copied_nor_published_again() {
    let mut t = Tracker::new(4096);
    let mut t = ready(&mut t);
    let sql = format!("select '{}'\0", "x".repeat(2000));
    client(&mut t, &[(b'Q', sql.as_bytes())]);
    let first = t.take_statement().expect("published");
    assert_eq!(first.len(), sql.len() - 1);
    server(&mut t, &[(b'Z', b"I")]);
    client(&mut t, &[(b'Q', sql.as_bytes())]);
    assert_eq!(t.take_statement(), None, "the same text: nothing to publish");
    client(&mut t, &[(b'Q', b"select 1\0")]);
    assert_eq!(t.take_statement().as_deref(), Some(&b"select 1"[..]));
    // A prepared statement executed again shares the cache's text: published once, by pointer.
    client(&mut t, &[(b'P', b"s1\0select $1::int\0\0\0"), (b'S', b"")]);
    server(&mut t, &[(b'1', b""), (b'Z', b"I")]);
    let execute: &[(u8, &[u8])] = &[(b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0"), (b'E', b"\0\0\0\0\0"), (b'S', b"")];
    client(&mut t, execute);
    let shared = t.take_statement().expect("published");
    server(&mut t, &[(b'2', b""), (b'Z', b"I")]);
    client(&mut t, execute);
    assert_eq!(t.take_statement(), None, "executed again: nothing to publish");
    assert!(Arc::ptr_eq(&shared, t.last_statement.as_ref().unwrap()), "one copy, shared");
}

#[test]
fn a_quiet_prepared_statement_is_looked_at_once_and_a_listen_one_every_time() {
    let mut t = Tracker::new(4096);
    let mut t = ready(&mut t);
    client(
        &mut t,
        &[(b'P', b"q\0select $1::int\0\0\0"), (b'P', b"l\0listen jobs\0\0\0"), (b'P', b"u\0unlisten *\0\0\0")],
    );
    client(&mut t, &[(b'S', b"")]);
    server(&mut t, &[(b'1', b""), (b'1', b""), (b'1', b""), (b'Z', b"I")]);
    let exec = |name: &str| -> Vec<u8> { format!("\0{name}\0\0\0\0\0\0\0").into_bytes() };
    let run = |t: &mut Tracker, name: &str| {
        client(t, &[(b'B', &exec(name)), (b'E', b"\0\0\0\0\0"), (b'S', b"")]);
        server(t, &[(b'2', b""), (b'C', b"SELECT 1\0"), (b'Z', b"I")]);
    };
    run(&mut t, "q");
    assert!(t.quiet_sql.is_some(), "no command of interest: remembered");
    run(&mut t, "q");
    run(&mut t, "l");
    assert!(t.listening, "another statement is looked at");
    run(&mut t, "u");
    assert!(!t.listening);
    run(&mut t, "l");
    assert!(t.listening, "a statement with a command is looked at each time it runs");
    run(&mut t, "q");
    assert!(t.listening, "the quiet one changes nothing");
    assert_eq!(t.take_statement().as_deref(), Some(&b"select $1::int"[..]));
}
