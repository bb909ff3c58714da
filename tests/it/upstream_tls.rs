//! Upstream certificate checks as libpq makes them: for `verify-ca` and `verify-full`, pgwarden accepts
//! exactly the servers `psql` with the same sslmode and root file accepts (a CA + leaf, a self-signed
//! certificate that is its own root, not an expired one, not one from another CA, for verify-full not one
//! for another host), and refuses the rest with `08001` naming the reason.

use crate::support::libpq::psql;
use crate::support::proxy::{connect, sqlstate};
use crate::support::{start_proxy, test_config, tls_front};
use pgwarden::config::{HostPort, TlsMode};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::CertificateDer;
use std::path::PathBuf;

struct Scenario {
    name: &'static str,
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
    /// PEM of the root file both clients get.
    root: String,
}

fn leaf_params(not_after_year: i32) -> CertificateParams {
    let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
    p.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    p.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
    p
}

fn ca() -> (CertificateParams, KeyPair, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, "pgwarden test root");
    let pem = p.self_signed(&key).unwrap().pem();
    (p, key, pem)
}

fn scenarios() -> Vec<Scenario> {
    let (ca_params, ca_key, ca_pem) = ca();
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let signed = |not_after: i32, by: &Issuer<'_, &KeyPair>| {
        let key = KeyPair::generate().unwrap();
        let cert = leaf_params(not_after).signed_by(&key, by).unwrap();
        (vec![cert.der().clone()], key.serialize_der())
    };
    let self_signed = |is_ca: bool| {
        let key = KeyPair::generate().unwrap();
        let mut p = leaf_params(2099);
        if is_ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        let cert = p.self_signed(&key).unwrap();
        (vec![cert.der().clone()], key.serialize_der(), cert.pem())
    };
    let (other_params, other_key, _) = ca();
    let other = Issuer::from_params(&other_params, &other_key);
    let (leaf, leaf_key) = signed(2099, &issuer);
    let (expired, expired_key) = signed(2021, &issuer);
    let (foreign, foreign_key) = signed(2099, &other);
    // `openssl req -new -x509`, PostgreSQL's documented recipe, makes a CA certificate that is its own root.
    let (ss_ca, ss_ca_key, ss_ca_pem) = self_signed(true);
    let (ss, ss_key, ss_pem) = self_signed(false);
    vec![
        Scenario { name: "CA + leaf", chain: leaf, key: leaf_key, root: ca_pem.clone() },
        Scenario { name: "self-signed CA certificate", chain: ss_ca, key: ss_ca_key, root: ss_ca_pem },
        Scenario { name: "self-signed leaf", chain: ss, key: ss_key, root: ss_pem },
        Scenario { name: "expired", chain: expired, key: expired_key, root: ca_pem.clone() },
        Scenario { name: "wrong CA", chain: foreign, key: foreign_key, root: ca_pem },
    ]
}

#[tokio::test]
async fn verify_ca_and_verify_full_accept_what_libpq_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let mut accepted = Vec::new();
    for (i, s) in scenarios().into_iter().enumerate() {
        let root: PathBuf = dir.path().join(format!("root-{i}.crt"));
        std::fs::write(&root, &s.root).unwrap();
        let front = tls_front::spawn(s.chain, s.key).await;
        // localhost is the certificates' name; 127.0.0.1 is not.
        for host in ["localhost", "127.0.0.1"] {
            for (mode, sslmode) in [(TlsMode::VerifyCa, "verify-ca"), (TlsMode::VerifyFull, "verify-full")] {
                let case = format!("{} / {sslmode} / host {host}", s.name);
                let direct = psql(
                    &format!(
                        "host={host} port={} sslmode={sslmode} sslrootcert={} user=postgres dbname=postgres",
                        front.port(),
                        root.display()
                    ),
                    "select 1",
                )
                .await;
                let mut config = test_config();
                config.upstream = HostPort { host: host.into(), port: front.port() };
                config.upstream_tls = mode;
                config.upstream_ca_file = Some(root.clone());
                let p = start_proxy(config).await;
                let through = connect(p.pg_config("postgres", "upstream-tls")).await;
                match (&direct, &through) {
                    (Ok(_), Ok(c)) => {
                        assert_eq!(c.query_one("select 1", &[]).await.unwrap().get::<_, i32>(0), 1, "{case}");
                        accepted.push(case);
                    }
                    (Err(_), Err(e)) => {
                        assert_eq!(sqlstate(e).as_deref(), Some("08001"), "{case}: {e}");
                        let text = format!("{e:?}");
                        assert!(text.contains("certificate"), "{case}: the reason is named: {text}");
                    }
                    (direct, through) => panic!(
                        "{case}: psql {} but pgwarden {}",
                        direct.as_ref().map_or_else(|e| format!("refused ({e})"), |_| "connected".into()),
                        through.as_ref().map_or_else(|e| format!("refused ({e})"), |_| "connected".into())
                    ),
                }
                p.stop().await;
            }
        }
    }
    // What libpq accepts here, so the comparison is not vacuous.
    let want = [
        "CA + leaf / verify-ca / host localhost",
        "CA + leaf / verify-full / host localhost",
        "CA + leaf / verify-ca / host 127.0.0.1",
        "self-signed CA certificate / verify-ca / host localhost",
        "self-signed CA certificate / verify-full / host localhost",
        "self-signed CA certificate / verify-ca / host 127.0.0.1",
        "self-signed leaf / verify-ca / host localhost",
        "self-signed leaf / verify-full / host localhost",
        "self-signed leaf / verify-ca / host 127.0.0.1",
    ];
    assert_eq!(accepted, want);
}
