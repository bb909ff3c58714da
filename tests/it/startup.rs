//! Startup: bad input gets what PostgreSQL answers, SSL/GSS negotiation, cancel requests, authentication passthrough.

use crate::support::pg::{pg, MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::proxy::{connect, sqlstate};
use crate::support::raw::{self, expect_error_after, startup_packet, Raw};
use crate::support::{start_proxy, test_config};
use pgwarden::config::Timeout;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a server answered to a startup-phase input: nothing, a v3 ErrorResponse (its SQLSTATE), a pre-3.0
/// error, or other bytes.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Silent,
    Error(String),
    OldStyleError,
    Bytes(Vec<u8>),
}

/// Sends `bytes` (then half-closes when asked) and reads until the server closes.
async fn answer_of(addr: std::net::SocketAddr, bytes: &[u8], half_close: bool) -> Answer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("read");
    if out.is_empty() {
        return Answer::Silent;
    }
    if out.starts_with(b"EFATAL:  ") && out.ends_with(b"\n\0") {
        return Answer::OldStyleError;
    }
    if out[0] == b'E' && out.len() > 5 {
        let len = i32::from_be_bytes(out[1..5].try_into().unwrap()) as usize;
        if len + 1 == out.len() {
            return Answer::Error(raw::error_code(&out[5..]));
        }
    }
    Answer::Bytes(out)
}

#[tokio::test]
async fn bad_startup_input_gets_what_postgresql_answers_and_others_are_unaffected() {
    let p = start_proxy(test_config()).await;
    let direct: std::net::SocketAddr = format!("127.0.0.1:{}", pg().port).parse().unwrap();
    let healthy = p.connect("startup-healthy").await.unwrap();
    let full = startup_packet(&[("user", "postgres")]);
    let cancel_short = [&[0, 0, 0, 12][..], &80_877_102i32.to_be_bytes(), b"abcd"].concat();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("garbage", b"\x00\x00\x00\x10\xde\xad\xbe\xef\x01\x02\x03\x04\x05\x06\x07\x08".to_vec(), false),
        ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), false),
        ("absurd length", vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0], false),
        ("negative length", vec![0xff, 0xff, 0xff, 0xf0], false),
        ("too short", vec![0, 0, 0, 4, 0, 3, 0, 0], false),
        ("protocol 2", vec![0, 0, 0, 8, 0, 2, 0, 0], false),
        ("protocol 4", vec![0, 0, 0, 8, 0, 4, 0, 0], false),
        ("malformed params", [&[0, 0, 0, 13][..], &[0, 3, 0, 0], b"user\0"].concat(), false),
        ("truncated startup", full[..full.len() - 3].to_vec(), true),
        ("half a length", vec![0, 0], true),
        ("cancel of 12 bytes", cancel_short, false),
        // node-postgres' quick disconnect: Terminate before the StartupMessage.
        ("terminate first", [&b"X\0\0\0\x04"[..], &full].concat(), false),
    ];
    for (name, bytes, half_close) in &cases {
        let want = answer_of(direct, bytes, *half_close).await;
        let got = answer_of(p.addr, bytes, *half_close).await;
        assert_eq!(got, want, "{name}: pgwarden answered {got:?}, PostgreSQL {want:?}");
    }
    // Spot checks that the comparison compares something.
    assert_eq!(answer_of(p.addr, &cases[2].1, false).await, Answer::Silent);
    assert_eq!(answer_of(p.addr, &cases[5].1, false).await, Answer::OldStyleError);
    assert_eq!(answer_of(p.addr, &cases[7].1, false).await, Answer::Error("08P01".into()));
    // After the startup, a bad message length gets 08P01 (SPEC: bad input gets 08P01).
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[full.clone(), vec![b'Q', 0, 0, 0, 1]].concat()).await.unwrap();
    let mut code = None;
    while let Some((tag, body)) = raw::read_message(&mut s).await {
        if tag == b'E' {
            code = Some(raw::error_code(&body));
        }
    }
    assert_eq!(code.as_deref(), Some("08P01"), "bad message length after startup");
    assert_eq!(healthy.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1);
    assert!(p.state.registry.snapshot().iter().all(|c| c.client.display() != "-/-"), "refused clients hold no entry");
    p.stop().await;
}

/// What PostgreSQL with `ssl=off` answers (pgwarden's client_tls: disable is that server): `N`, then for
/// data sent before the answer `08P01`, for a second SSLRequest `0A000` (protocol 1234.5679).
#[tokio::test]
async fn encryption_requests_are_answered_as_postgresql_without_ssl_answers() {
    let p = start_proxy(test_config()).await;
    let ssl = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut with_data = ssl.to_vec();
    with_data.push(b'x');
    match answer_of(p.addr, &with_data, false).await {
        Answer::Bytes(b) => {
            assert_eq!(b[0], b'N');
            assert_eq!(raw::error_code(&b[6..]), "08P01");
        }
        other => panic!("{other:?}"),
    }
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&ssl).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&ssl).await.unwrap();
    let (tag, body) = raw::read_message(&mut s).await.expect("an error");
    assert_eq!((tag, raw::error_code(&body).as_str()), (b'E', "0A000"));
    p.stop().await;
}

#[tokio::test]
async fn silent_client_is_closed_at_login_timeout() {
    let mut config = test_config();
    config.client_login_timeout = Timeout(Some(Duration::from_millis(800)));
    let p = start_proxy(config).await;
    let started = Instant::now();
    let silent = tokio::spawn({
        let addr = p.addr;
        async move { expect_error_after(addr, b"", false).await }
    });
    // A client that sends half its startup packet and waits is also timed out.
    let half = tokio::spawn({
        let addr = p.addr;
        async move { expect_error_after(addr, &startup_packet(&[("user", "postgres")])[..6], false).await }
    });
    let c = p.connect("startup-meanwhile").await.unwrap();
    assert_eq!(c.query_one("select 2", &[]).await.unwrap().get::<_, i32>(0), 2);
    assert_eq!(silent.await.unwrap(), "08P01");
    assert_eq!(half.await.unwrap(), "08P01");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "closed at the timeout, took {took:?}"
    );
    p.stop().await;
}

#[tokio::test]
async fn ssl_and_gssenc_requests_are_declined_then_startup_works() {
    let p = start_proxy(test_config()).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
    assert_eq!(s.read_u8().await.unwrap(), b'N');
    s.write_all(&startup_packet(&[("user", "postgres"), ("application_name", "startup-ssl")])).await.unwrap();
    loop {
        let (tag, _) = raw::read_message(&mut s).await.unwrap();
        if tag == b'Z' {
            break;
        }
    }
    // tokio-postgres with sslmode=prefer gets N and carries on in plain text.
    let mut cfg = p.pg_config("postgres", "startup-prefer");
    cfg.ssl_mode(tokio_postgres::config::SslMode::Prefer);
    let c = connect(cfg).await.unwrap();
    assert_eq!(c.query_one("select 3", &[]).await.unwrap().get::<_, i32>(0), 3);
    p.stop().await;
}

async fn assert_cancelled_quickly(p: &crate::support::TestProxy, via_ssl_request: bool) {
    let app = if via_ssl_request { "startup-cancel-ssl" } else { "startup-cancel" };
    let mut session = Raw::connect(p.addr, "postgres", app).await;
    session.send(&raw::query("select pg_sleep(20)")).await;
    p.wait_state(app, pgwarden::vocab::ConnState::Active).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let mut cancel = TcpStream::connect(p.addr).await.unwrap();
    if via_ssl_request {
        cancel.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
        assert_eq!(cancel.read_u8().await.unwrap(), b'N');
    }
    cancel.write_all(&pgwarden::protocol::startup::encode_cancel(session.pid, &session.key)).await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(cancel.read_to_end(&mut rest).await.unwrap(), 0, "a cancel request gets no answer");
    let (msgs, status) =
        tokio::time::timeout(Duration::from_secs(2), session.until_ready()).await.expect("cancelled within 2 s");
    let code = msgs.iter().find(|(t, _)| *t == b'E').map(|(_, b)| raw::error_code(b));
    assert_eq!(code.as_deref(), Some("57014"), "query_canceled");
    assert_eq!(status, b'I');
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn cancel_request_reaches_the_backend() {
    let p = start_proxy(test_config()).await;
    assert_cancelled_quickly(&p, false).await;
    assert_cancelled_quickly(&p, true).await;
    // tokio-postgres's own cancel through the proxy.
    let c = p.connect("startup-cancel-driver").await.unwrap();
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move { c.simple_query("select pg_sleep(20)").await });
    p.wait_state("startup-cancel-driver", pgwarden::vocab::ConnState::Active).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel_query_raw(TcpStream::connect(p.addr).await.unwrap(), tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(Duration::from_secs(2), sleeper).await.unwrap().unwrap().unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("57014"));
    // A cancel for a key nobody owns is dropped silently and counts as no client.
    let mut bogus = TcpStream::connect(p.addr).await.unwrap();
    bogus.write_all(&pgwarden::protocol::startup::encode_cancel(1, &[9; 32])).await.unwrap();
    let mut rest = Vec::new();
    assert_eq!(bogus.read_to_end(&mut rest).await.unwrap(), 0);
    p.stop().await;
}

#[tokio::test]
async fn scram_and_md5_pass_through() {
    let p = start_proxy(test_config()).await;
    for (user, password) in [(SCRAM_USER, SCRAM_PASSWORD), (MD5_USER, MD5_PASSWORD)] {
        let mut cfg = p.pg_config(user, "startup-auth");
        cfg.password(password);
        let c = connect(cfg).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        let who: String = c.query_one("select current_user::text", &[]).await.unwrap().get(0);
        assert_eq!(who, user);
        let mut wrong = p.pg_config(user, "startup-auth");
        wrong.password("not-the-password");
        let err = connect(wrong).await.err().expect("wrong password refused");
        assert_eq!(sqlstate(&err).as_deref(), Some("28P01"), "{user}: {err}");
    }
    // psql (libpq) too; run off the runtime so the in-process proxy keeps serving.
    let port = p.addr.port().to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(pg().bindir.join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                SCRAM_USER,
                "-d",
                "postgres",
                "-c",
                "select 40 + 2",
            ])
            .env("PGPASSWORD", SCRAM_PASSWORD)
            .env("PGSSLMODE", "prefer")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    p.stop().await;
}
