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
