//! Byte-exact relay through pgwarden against the real PostgreSQL.

use crate::support::pg::pg;
use crate::support::proxy::eventually;
use crate::support::raw::{self, Raw};
use crate::support::{start_proxy, test_config};
use futures_util::{future::join_all, SinkExt, StreamExt};
use pgwarden::vocab::ConnState;
use sha2::{Digest, Sha256};
use std::time::Duration;

#[tokio::test]
async fn simple_extended_pipelined_and_prepared() {
    let p = start_proxy(test_config()).await;
    let c = p.connect("relay-basic").await.unwrap();
    let rows = c.simple_query("select 1 as a; select 'x' as b").await.unwrap();
    assert_eq!(rows.iter().filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_))).count(), 2);
    let v: i32 = c.query_one("select $1::int + 1", &[&41i32]).await.unwrap().get(0);
    assert_eq!(v, 42);
    // 200 queries in flight at once: tokio-postgres pipelines them on one connection.
    let stmt = c.prepare("select $1::int * 2").await.unwrap();
    let futures = (0..200i32).map(|i| {
        let (c, stmt) = (&c, &stmt);
        async move { c.query_one(stmt, &[&i]).await.unwrap().get::<_, i32>(0) }
    });
    let results = join_all(futures).await;
    assert_eq!(results, (0..200).map(|i| i * 2).collect::<Vec<_>>());
    // A named prepared statement reused many times.
    let named = c.prepare("select $1::text || '!'").await.unwrap();
    for i in 0..20 {
        let s: String = c.query_one(&named, &[&i.to_string()]).await.unwrap().get(0);
        assert_eq!(s, format!("{i}!"));
    }
    let err = c.query_one("select 1/0", &[]).await.unwrap_err();
    assert_eq!(err.code().unwrap().code(), "22012", "server errors pass through");
    assert_eq!(c.query_one("select 5", &[]).await.unwrap().get::<_, i32>(0), 5);
    drop(c);
    p.stop().await;
}

/// Deterministic text rows of `total` bytes (plain characters, so COPY OUT returns exactly these bytes).
fn copy_rows(total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total + 200);
    let mut i = 0u64;
    while out.len() < total {
        let pad = "abcdefghijklmnopqrstuvwxyz0123456789".repeat(1 + (i % 5) as usize);
        out.extend_from_slice(format!("{i}\t{pad}-{}\n", i.wrapping_mul(2654435761) % 1_000_003).as_bytes());
        i += 1;
    }
    out
}

#[tokio::test]
async fn copy_in_and_out_64_mib_is_byte_exact() {
    let p = start_proxy(test_config()).await;
    let c = p.connect("relay-copy").await.unwrap();
    c.batch_execute("create temp table copy_t (id bigint, payload text)").await.unwrap();
    let data = copy_rows(64 << 20);
    let sent = Sha256::digest(&data);
    let sink = c.copy_in("copy copy_t from stdin").await.unwrap();
    futures_util::pin_mut!(sink);
    for chunk in data.chunks(1 << 20) {
        sink.send(bytes::Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let rows = sink.finish().await.unwrap();
    assert!(rows > 100_000);
    let stream = c.copy_out("copy (select * from copy_t order by id) to stdout").await.unwrap();
    futures_util::pin_mut!(stream);
    let mut hash = Sha256::new();
    let mut len = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        len += chunk.len();
        hash.update(&chunk);
    }
    assert_eq!(len, data.len());
    assert_eq!(hash.finalize(), sent, "COPY OUT returns exactly what COPY IN sent");
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn bytea_32_mib_round_trip() {
    let p = start_proxy(test_config()).await;
    let c = p.connect("relay-bytea").await.unwrap();
    let mut blob = vec![0u8; 32 << 20];
    let mut x = 0x1234_5678_9abc_def0u64;
    for b in blob.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let back: Vec<u8> = c.query_one("select $1::bytea", &[&blob]).await.unwrap().get(0);
    assert!(back == blob, "32 MiB bytea comes back byte-exact");
    let md5: String = c.query_one("select md5($1::bytea)", &[&blob]).await.unwrap().get(0);
    assert_eq!(md5.len(), 32);
    drop(c);
    p.stop().await;
}

#[tokio::test]
async fn listen_notify_delivers_while_idle() {
    let p = start_proxy(test_config()).await;
    let mut listener = Raw::connect(p.addr, "postgres", "relay-listener").await;
    listener.send(&raw::query("LISTEN jobs")).await;
    assert_eq!(listener.until_ready().await.1, b'I');
    p.wait_state("relay-listener", ConnState::Idle).await;
    let sender = p.connect("relay-notifier").await.unwrap();
    for i in 0..3 {
        sender.batch_execute(&format!("NOTIFY jobs, 'payload-{i}'")).await.unwrap();
        let (tag, body) = tokio::time::timeout(Duration::from_secs(5), raw::read_message(&mut listener.stream))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tag, b'A');
        assert!(String::from_utf8_lossy(&body).contains(&format!("payload-{i}")));
        let conn = p.wait_state("relay-listener", ConnState::Idle).await;
        assert_eq!(conn.state(), ConnState::Idle, "a notification does not make the listener active");
    }
    p.stop().await;
}

#[tokio::test]
async fn hundred_concurrent_clients_twenty_queries_each() {
    let p = start_proxy(test_config()).await;
    let tasks = (0..100).map(|i| {
        let cfg = p.pg_config("postgres", "relay-many");
        tokio::spawn(async move {
            let c = crate::support::proxy::connect(cfg).await.unwrap();
            for q in 0..20 {
                let v: i32 = c.query_one("select $1::int", &[&(i * 100 + q)]).await.unwrap().get(0);
                assert_eq!(v, i * 100 + q);
            }
        })
    });
    for r in join_all(tasks).await {
        r.unwrap();
    }
    assert!(crate::support::proxy::eventually(Duration::from_secs(5), || p.conns_of("relay-many").is_empty()).await);
    p.stop().await;
}

/// A client that pipelines megabytes of queries while it reads the megabytes of results (as libpq's
/// pipeline mode does): both directions are full at once, and the relay must not stall either.
#[tokio::test]
async fn full_duplex_flood_does_not_deadlock() {
    use tokio::io::AsyncWriteExt;
    let p = start_proxy(test_config()).await;
    let raw = Raw::connect(p.addr, "postgres", "relay-flood").await;
    let (mut rd, mut wr) = raw.stream.into_split();
    let n = 4000;
    let padding = "x".repeat(1500);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::new();
        for i in 0..n {
            batch.extend(raw::query(&format!("select repeat('y', 4000) as r{i} /* {padding} */")));
        }
        wr.write_all(&batch).await.unwrap();
        wr
    });
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut ready, mut bytes) = (0, 0usize);
        let mut buf = vec![0u8; 65536];
        let mut pending: Vec<u8> = Vec::new();
        while ready < n {
            let k = rd.read(&mut buf).await.unwrap();
            assert!(k > 0, "closed early");
            bytes += k;
            pending.extend_from_slice(&buf[..k]);
            let mut at = 0;
            while pending.len() - at >= 5 {
                let len = u32::from_be_bytes(pending[at + 1..at + 5].try_into().unwrap()) as usize;
                if pending.len() - at < 1 + len {
                    break;
                }
                if pending[at] == b'Z' {
                    ready += 1;
                }
                at += 1 + len;
            }
            pending.drain(..at);
        }
        bytes
    });
    let bytes = tokio::time::timeout(Duration::from_secs(60), reader).await.expect("no deadlock").unwrap();
    assert!(bytes > n * 4000);
    writer.await.unwrap();
    p.stop().await;
}

/// A client that pipelines queries with large results, reads none of them and vanishes: PostgreSQL is
/// blocked writing to pgwarden (so a CancelRequest does nothing and it reads nothing more), and the queries
/// still queued cannot be delivered. pgwarden must not wait on a server that cannot progress: it resets the
/// upstream socket, and the backend and the slot are gone in well under the 5 s a polite close could take.
#[tokio::test]
async fn a_vanished_client_with_a_blocked_server_frees_its_backend_at_once() {
    use tokio::io::AsyncWriteExt;
    let p = start_proxy(test_config()).await;
    let app = "relay-vanish-blocked";
    let mut raw = Raw::connect(p.addr, "postgres", app).await;
    let pid = raw.pid;
    let (mut batch, padding) = (Vec::new(), "p".repeat(4000));
    for i in 0..8_000 {
        batch.extend(raw::query(&format!(
            "select repeat('z', 100000) as r{i} from generate_series(1, 50) /* {padding} */"
        )));
    }
    // Until every buffer on the way is full: the client's, pgwarden's and PostgreSQL's.
    let _ = tokio::time::timeout(Duration::from_secs(3), raw.stream.write_all(&batch)).await;
    assert!(pg().backend_exists(pid), "the backend runs");
    socket2::SockRef::from(&raw.stream).set_linger(Some(Duration::ZERO)).unwrap();
    let gone = std::time::Instant::now();
    drop(raw);
    assert!(
        eventually(Duration::from_secs(20), || !pg().backend_exists(pid) && p.conns_of(app).is_empty()).await,
        "backend and slot released"
    );
    let took = gone.elapsed();
    assert!(took < Duration::from_millis(2500), "released after {took:?}, not at once");
    p.stop().await;
}
