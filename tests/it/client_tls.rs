//! TLS between clients and pgwarden (`client_tls`): `sslmode=require` with zero setup (a self-signed
//! certificate), `verify-full` with a certificate from files (followed when they rotate), PostgreSQL 17's
//! direct TLS, `require` refusing plaintext, and cancel requests over TLS.

use crate::support::libpq::{psql, psycopg, python};
use crate::support::pg::{SCRAM_PASSWORD, SCRAM_USER};
use crate::support::{start_proxy, test_config};
use pgwarden::config::{ClientTls, Config, TlsMode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::path::Path;
use std::time::Duration;

const SSL_IN_USE: &str = "import sys, psycopg\nwith psycopg.connect(sys.argv[1]) as c:\n    print(c.pgconn.ssl_in_use, c.execute('select 40 + 2').fetchone()[0])\n";

async fn psycopg_ssl(conninfo: &str) -> Result<String, String> {
    let mut cmd = std::process::Command::new(python());
    cmd.args(["-c", SSL_IN_USE, conninfo]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A CA and a certificate for localhost/127.0.0.1 it signed, written to `dir`; returns the CA's path.
fn write_certs(dir: &Path, prefix: &str) -> std::path::PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, format!("{prefix} CA"));
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    let ca_path = dir.join(format!("{prefix}-ca.crt"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    // Written to temporary names and renamed, as a Secret volume swaps them.
    std::fs::write(dir.join("tls.crt.new"), leaf.pem()).unwrap();
    std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("tls.key.new"), dir.join("tls.key")).unwrap();
    std::fs::rename(dir.join("tls.crt.new"), dir.join("tls.crt")).unwrap();
    ca_path
}

fn tls_config(mode: ClientTls) -> Config {
    let mut config = test_config();
    config.client_tls = mode;
    // Upstream TLS too: SCRAM through both TLS links.
    config.upstream_tls = TlsMode::Prefer;
    config
}

#[tokio::test]
async fn sslmode_require_works_with_no_setup_and_plaintext_still_works_under_allow() {
    let p = start_proxy(tls_config(ClientTls::Allow)).await;
    // SCRAM on TLS both sides: the client must not ask for channel binding (README "TLS and SCRAM").
    let base = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres channel_binding=disable",
        p.addr.port()
    );
    assert_eq!(psycopg_ssl(&format!("{base} sslmode=require")).await.as_deref(), Ok("True 42"));
    assert_eq!(psycopg_ssl(&format!("{base} sslmode=disable")).await.as_deref(), Ok("False 42"));
    assert_eq!(psql(&format!("{base} sslmode=require"), "select 1").await.as_deref(), Ok("1"));
    // PostgreSQL 17's direct TLS (libpq 18 in psycopg's wheel).
    let direct = psycopg_ssl(&format!("{base} sslmode=require sslnegotiation=direct")).await;
    assert_eq!(direct.as_deref(), Ok("True 42"));
    // The self-signed certificate is not one libpq can verify.
    let err = psql(&format!("{base} sslmode=verify-full"), "select 1").await.expect_err("not verifiable");
    assert!(err.contains("root certificate") || err.contains("certificate"), "{err}");
    p.stop().await;
}

#[tokio::test]
async fn verify_full_with_a_certificate_from_files_followed_when_they_rotate() {
    let dir = tempfile::tempdir().unwrap();
    let ca1 = write_certs(dir.path(), "first");
    let mut config = tls_config(ClientTls::Require);
    config.client_tls_cert_file = Some(dir.path().join("tls.crt"));
    config.client_tls_key_file = Some(dir.path().join("tls.key"));
    let p = start_proxy(config).await;
    let base = |ca: &Path| {
        format!(
            "host=localhost port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres sslmode=verify-full sslrootcert={} channel_binding=disable",
            p.addr.port(),
            ca.display()
        )
    };
    assert_eq!(psql(&base(&ca1), "select 1").await.as_deref(), Ok("1"));
    assert_eq!(psycopg_ssl(&base(&ca1)).await.as_deref(), Ok("True 42"));
    // require refuses a plaintext client, naming the setting.
    let plain = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=disable", p.addr.port());
    let err = psql(&plain, "select 1").await.expect_err("plaintext refused");
    assert!(err.contains("client_tls is require"), "{err}");
    // Rotation: new files, served within the watcher's period without a restart.
    let ca2 = write_certs(dir.path(), "second");
    let mut served = false;
    for _ in 0..40 {
        if psql(&base(&ca2), "select 1").await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(served, "the rotated certificate is served");
    p.stop().await;
}

#[tokio::test]
async fn a_cancel_request_over_tls_reaches_the_backend() {
    let p = start_proxy(tls_config(ClientTls::Allow)).await;
    let conninfo = format!("host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require", p.addr.port());
    // libpq 17+ sends the cancel request over TLS when the connection uses it.
    let script = r#"
import sys, threading, time, psycopg
with psycopg.connect(sys.argv[1]) as c:
    assert c.pgconn.ssl_in_use
    errors = []
    def cancel():
        time.sleep(0.5)
        try:
            c.cancel_safe()
        except Exception as e:
            errors.append(e)
    threading.Thread(target=cancel).start()
    t = time.monotonic()
    try:
        c.execute('select pg_sleep(20)')
    except psycopg.errors.QueryCanceled:
        print('cancelled', round(time.monotonic() - t))
    time.sleep(0.2)
    # libpq 17+ reports a cancel whose TLS connection ends without close_notify as failed.
    print('cancel errors', errors)
"#;
    let mut cmd = std::process::Command::new(python());
    cmd.args(["-c", script, &conninfo]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cancelled 1\ncancel errors []");
    p.stop().await;
}

#[tokio::test]
async fn a_tls_client_that_offers_channel_binding_is_told_the_fix() {
    let p = start_proxy(tls_config(ClientTls::Allow)).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres sslmode=require",
        p.addr.port()
    );
    for client in ["psql", "psycopg"] {
        let err =
            if client == "psql" { psql(&conninfo, "select 1").await } else { psycopg(&conninfo, "select 1").await };
        let err = err.expect_err("libpq's channel_binding=prefer over TLS cannot log in through a proxy");
        assert!(err.contains("channel_binding=disable"), "{client}: {err}");
    }
    p.stop().await;
}

/// node-postgres with `enableChannelBinding: true` sends the channel binding flag on a plaintext connection
/// too: the database (on TLS to pgwarden) refuses, and the client is told to turn the option off, not to
/// connect without TLS, which it already does (issue 27 item 12).
#[tokio::test]
async fn a_plaintext_client_that_sends_the_channel_binding_flag_is_told_its_own_fix() {
    let p = start_proxy(tls_config(ClientTls::Allow)).await;
    let url = format!("postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{}/postgres", p.addr.port());
    let script = "const { Client } = require('pg');\
        const c = new Client({ connectionString: process.argv[1], enableChannelBinding: true });\
        c.connect().then(() => { console.log('connected'); process.exit(0); }, (e) => { console.log(e.message); process.exit(1); });";
    let modules = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/node/node_modules");
    let out = tokio::process::Command::new("node")
        .args(["-e", script, "--", &url])
        .env("NODE_PATH", modules)
        .env_remove("PGSSLMODE")
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("enableChannelBinding: false") && !said.contains("without TLS"), "{said}");
    p.stop().await;
}
