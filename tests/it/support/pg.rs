//! One real PostgreSQL per test binary (pgwarden's own `TempPostgres`): `max_connections` 300, TLS with a
//! CA made here, scram-sha-256 and md5 roles. A watchdog process stops the server and removes its
//! directory when the test process exits, however it ends.

use pgwarden::demo::postgres::TempPostgres;
use std::path::PathBuf;
use std::sync::OnceLock;

pub use pgwarden::demo::postgres::free_port as try_free_port;

pub struct Postgres {
    pub port: u16,
    pub bindir: PathBuf,
    /// PEM of the CA that signed the server certificate (for `verify-full`).
    pub ca_file: PathBuf,
    server: TempPostgres,
}

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = "scram-secret";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-secret";

static PG: OnceLock<Postgres> = OnceLock::new();

pub fn pg() -> &'static Postgres {
    PG.get_or_init(|| Postgres::start().expect("start the test PostgreSQL"))
}

pub fn free_port() -> u16 {
    try_free_port().unwrap()
}

impl Postgres {
    fn start() -> anyhow::Result<Postgres> {
        let tls = "max_connections = 300\nshared_buffers = 64MB\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n";
        let server = TempPostgres::init("pgwarden-it-", tls)?;
        server.spawn_watchdog(std::process::id())?;
        let ca_file = server.dir.join("ca.crt");
        write_certs(&server.dir, &ca_file);
        // Relative paths in postgresql.conf are relative to the data directory.
        for f in ["server.crt", "server.key"] {
            std::fs::rename(server.dir.join(f), server.dir.join("data").join(f))?;
        }
        std::fs::write(
            server.dir.join("data/pg_hba.conf"),
            format!(
                "local all all trust\nhost all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
                 host all {MD5_USER} 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 trust\n"
            ),
        )?;
        server.start()?;
        server.psql(&format!(
            "CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';\n\
             SET password_encryption = 'md5';\nCREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\n\
             CREATE TABLE kill_test (id int);\nGRANT ALL ON kill_test TO PUBLIC;"
        ))?;
        Ok(Postgres { port: server.port, bindir: server.bindir.clone(), ca_file, server })
    }

    /// Runs SQL as the superuser over the Unix socket.
    pub fn psql(&self, sql: &str) -> String {
        self.server.psql(sql).unwrap()
    }

    /// Number of backends with `application_name = app`.
    pub fn backends_of(&self, app: &str) -> usize {
        self.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'")).parse().unwrap()
    }

    pub fn backend_exists(&self, pid: i32) -> bool {
        self.psql(&format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}")) == "1"
    }
}

fn write_certs(dir: &std::path::Path, ca_file: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pgwarden test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    std::fs::write(ca_file, ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    let key_path = dir.join("server.key");
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
