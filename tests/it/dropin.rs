//! Drop-in: pgwarden's default config in front of a PostgreSQL with `ssl=on` and `scram-sha-256` (what every
//! managed database runs), driven by libpq clients (psql, psycopg) and tokio-postgres.

use crate::support::libpq::{psql, psycopg};
use crate::support::pg::{pg, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::proxy::connect;
use crate::support::start_proxy;
use pgwarden::config::{Config, HostPort, TlsMode};

/// The default config, pointed at the test server.
fn default_config() -> Config {
    let config = Config { upstream: HostPort { host: "127.0.0.1".into(), port: pg().port }, ..Config::default() };
    assert_eq!(config.upstream_tls, TlsMode::Prefer, "the default");
    config
}

const SSL_IN_USE: &str = "select ssl::text from pg_stat_ssl where pid = pg_backend_pid()";

#[tokio::test]
async fn libpq_clients_and_tokio_postgres_log_in_with_scram_through_the_default_config() {
    let p = start_proxy(default_config()).await;
    let port = p.addr.port();
    let base = format!("host=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres");
    for sslmode in ["disable", "prefer", "allow"] {
        for channel_binding in ["disable", "prefer"] {
            let conninfo =
                format!("{base} sslmode={sslmode} channel_binding={channel_binding} application_name=dropin-psql");
            let got = psql(&conninfo, SSL_IN_USE).await;
            assert_eq!(got.as_deref(), Ok("true"), "psql {sslmode}/{channel_binding}: the upstream link is TLS");
            let got = psycopg(&conninfo, &format!("select current_user::text union all {SSL_IN_USE}")).await;
            assert_eq!(
                got.as_deref(),
                Ok(format!("{SCRAM_USER}\ntrue").as_str()),
                "psycopg {sslmode}/{channel_binding}"
            );
        }
    }
    let mut cfg = p.pg_config(SCRAM_USER, "dropin-tokio");
    cfg.password(SCRAM_PASSWORD);
    let c = connect(cfg).await.expect("tokio-postgres");
    let ssl: String = c.query_one(SSL_IN_USE, &[]).await.unwrap().get(0);
    assert_eq!(ssl, "true");
    p.stop().await;
}

#[tokio::test]
async fn a_client_that_requires_channel_binding_is_told_it_cannot_have_it() {
    let p = start_proxy(default_config()).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres channel_binding=require",
        p.addr.port()
    );
    let err = psql(&conninfo, "select 1").await.expect_err("channel binding cannot pass a proxy");
    assert!(err.contains("channel binding"), "{err}");
    p.stop().await;
}

/// A CA-signed certificate for localhost in `dir` (tls.crt, tls.key); returns the CA's path.
fn client_cert(dir: &std::path::Path) -> std::path::PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "dropin client CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf.signed_by(&key, &Issuer::from_params(&ca, &ca_key)).unwrap();
    std::fs::write(dir.join("tls.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("client-ca.crt"), ca_cert.pem()).unwrap();
    dir.join("client-ca.crt")
}

#[tokio::test]
async fn every_upstream_mode_with_every_client_mode_logs_in_with_scram() {
    use crate::support::tls_front;
    let dir = tempfile::tempdir().unwrap();
    let client_ca = client_cert(dir.path());
    // A self-signed server certificate that is its own root (PostgreSQL's documented recipe), in front of
    // the test server.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    let self_signed = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("self-signed.crt"), self_signed.pem()).unwrap();
    let front = tls_front::spawn(vec![self_signed.der().clone()], key.serialize_der()).await;
    let upstreams = [
        ("prefer", TlsMode::Prefer, pg().port, None),
        ("require", TlsMode::Require, pg().port, None),
        ("verify-ca", TlsMode::VerifyCa, pg().port, Some(pg().ca_file.clone())),
        ("verify-full", TlsMode::VerifyFull, pg().port, Some(pg().ca_file.clone())),
        ("verify-full, self-signed", TlsMode::VerifyFull, front.port(), Some(dir.path().join("self-signed.crt"))),
    ];
    let client_modes = [
        ("sslmode=disable", ""),
        ("sslmode=require", "sslmode=require channel_binding=disable"),
        (
            "sslmode=verify-full",
            &*format!("sslmode=verify-full sslrootcert={} channel_binding=disable", client_ca.display()),
        ),
        ("direct TLS", "sslmode=require sslnegotiation=direct channel_binding=disable"),
    ];
    for (name, mode, port, ca) in upstreams {
        let mut config = default_config();
        config.upstream = HostPort { host: "localhost".into(), port };
        config.upstream_tls = mode;
        config.upstream_ca_file = ca;
        config.client_tls = pgwarden::config::ClientTls::Allow;
        config.client_tls_cert_file = Some(dir.path().join("tls.crt"));
        config.client_tls_key_file = Some(dir.path().join("tls.key"));
        let p = start_proxy(config).await;
        let base = format!(
            "host=localhost port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres",
            p.addr.port()
        );
        for (client_mode, options) in &client_modes {
            let conninfo = format!("{base} {options}");
            let sql = "select current_user::text";
            if *client_mode != "direct TLS" {
                // psql 15 does not know sslnegotiation.
                assert_eq!(
                    psql(&conninfo, sql).await.as_deref(),
                    Ok(SCRAM_USER),
                    "psql, upstream {name}, client {client_mode}"
                );
            }
            assert_eq!(
                psycopg(&conninfo, sql).await.as_deref(),
                Ok(SCRAM_USER),
                "psycopg, upstream {name}, client {client_mode}"
            );
        }
        let mut cfg = p.pg_config(SCRAM_USER, "dropin-matrix");
        cfg.password(SCRAM_PASSWORD);
        let c = connect(cfg).await.unwrap_or_else(|e| panic!("tokio-postgres, upstream {name}: {e}"));
        assert_eq!(c.query_one("select current_user::text", &[]).await.unwrap().get::<_, String>(0), SCRAM_USER);
        p.stop().await;
    }
}
