//! The upstream side: unreachable servers, TLS modes, resolution on every dial.

use crate::support::pg::pg;
use crate::support::proxy::sqlstate;
use crate::support::{start_proxy, test_config};
use pgwarden::config::{HostPort, Timeout, TlsMode};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn refused_upstream_gets_08001() {
    let mut config = test_config();
    config.upstream = HostPort { host: "127.0.0.1".into(), port: crate::support::pg::free_port() };
    let p = start_proxy(config).await;
    let err = p.connect("up-refused").await.err().expect("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    assert!(format!("{err:?}").contains("upstream"), "{err:?}");
    assert!(p.state.registry.is_empty());
    p.stop().await;
}

#[tokio::test]
async fn silent_upstream_gets_08001_within_connect_timeout() {
    // Accepts TCP, never answers the SSLRequest: a hung database.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hole.local_addr().unwrap().port();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            held.push(s);
        }
    });
    let mut config = test_config();
    config.upstream = HostPort { host: "127.0.0.1".into(), port };
    config.upstream_tls = TlsMode::Prefer;
    config.upstream_connect_timeout = Timeout(Some(Duration::from_secs(1)));
    let p = start_proxy(config).await;
    let started = Instant::now();
    let err = p.connect("up-silent").await.err().expect("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    p.stop().await;
}

#[tokio::test]
async fn unresolvable_upstream_gets_08001() {
    let mut config = test_config();
    config.upstream = HostPort { host: "no-such-host.invalid".into(), port: 5432 };
    let p = start_proxy(config).await;
    let err = p.connect("up-dns").await.err().expect("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    p.stop().await;
}

async fn ssl_in_use(p: &crate::support::TestProxy, app: &str) -> bool {
    let c = p.connect(app).await.unwrap();
    c.query_one("select ssl from pg_stat_ssl where pid = pg_backend_pid()", &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn tls_modes_against_the_test_server() {
    // verify-full with the test CA and the name in the certificate.
    let mut config = test_config();
    config.upstream = HostPort { host: "localhost".into(), port: pg().port };
    config.upstream_tls = TlsMode::VerifyFull;
    config.upstream_ca_file = Some(pg().ca_file.clone());
    let p = start_proxy(config).await;
    assert!(ssl_in_use(&p, "up-verify").await);
    // Larger traffic over TLS stays intact.
    let c = p.connect("up-verify-big").await.unwrap();
    let s: String = c.query_one("select repeat('x', 3000000)", &[]).await.unwrap().get(0);
    assert_eq!(s.len(), 3_000_000);
    p.stop().await;

    // prefer and require encrypt without checking the certificate.
    for mode in [TlsMode::Prefer, TlsMode::Require] {
        let mut config = test_config();
        config.upstream_tls = mode;
        let p = start_proxy(config).await;
        assert!(ssl_in_use(&p, "up-tls").await, "{mode:?}");
        p.stop().await;
    }
    // disable stays plain.
    let p = start_proxy(test_config()).await;
    assert!(!ssl_in_use(&p, "up-plain").await);
    p.stop().await;

    // verify-full with a name the certificate does not carry is refused.
    let mut config = test_config();
    config.upstream_tls = TlsMode::VerifyFull;
    config.upstream = HostPort { host: "127.0.0.2".into(), port: pg().port };
    config.upstream_ca_file = Some(pg().ca_file.clone());
    let p = start_proxy(config).await;
    let err = p.connect("up-wrong-name").await.err().expect("refused");
    assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
    p.stop().await;
}

#[tokio::test]
async fn require_against_a_server_without_ssl_gets_08001() {
    // What a PostgreSQL with ssl=off answers to SSLRequest: 'N'.
    let no_ssl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = no_ssl.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = no_ssl.accept().await {
            let mut req = [0u8; 8];
            if s.read_exact(&mut req).await.is_ok() {
                let _ = s.write_all(b"N").await;
            }
        }
    });
    for mode in [TlsMode::Require, TlsMode::VerifyFull] {
        let mut config = test_config();
        config.upstream = HostPort { host: "127.0.0.1".into(), port };
        config.upstream_tls = mode;
        config.upstream_ca_file = (mode == TlsMode::VerifyFull).then(|| pg().ca_file.clone());
        let p = start_proxy(config).await;
        let err = p.connect("up-nossl").await.err().expect("refused");
        assert_eq!(sqlstate(&err).as_deref(), Some("08001"), "{err}");
        assert!(format!("{err:?}").contains("does not support TLS"), "{err:?}");
        p.stop().await;
    }
}
