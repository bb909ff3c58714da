//! One real PostgreSQL per test binary: initdb into a temp dir (as the `postgres` user when running as
//! root), a free port, `max_connections` 300, TLS with a CA made here, scram-sha-256 and md5 roles.
//! A watchdog process stops the server and removes the directory when the test process exits.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub struct Postgres {
    pub port: u16,
    pub dir: PathBuf,
    pub bindir: PathBuf,
    /// PEM of the CA that signed the server certificate (for `verify-full`).
    pub ca_file: PathBuf,
    owner: Option<(u32, u32)>,
}

pub const SCRAM_USER: &str = "scram_user";
pub const SCRAM_PASSWORD: &str = "scram-secret";
pub const MD5_USER: &str = "md5_user";
pub const MD5_PASSWORD: &str = "md5-secret";

static PG: OnceLock<Postgres> = OnceLock::new();

pub fn pg() -> &'static Postgres {
    PG.get_or_init(Postgres::start)
}

/// Finds the PostgreSQL server binaries: `PG_BINDIR`, `pg_config --bindir`, `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BINDIR") {
        return Some(PathBuf::from(dir));
    }
    let has_server = |d: &Path| d.join("postgres").exists() && d.join("initdb").exists();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| has_server(d))
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn postgres_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("tests run as root need a `postgres` user");
    let f: Vec<&str> = line.split(':').collect();
    Some((f[2].parse().unwrap(), f[3].parse().unwrap()))
}

impl Postgres {
    fn start() -> Postgres {
        let bindir = find_bindir()
            .expect("PostgreSQL server binaries not found (apt-get install postgresql)");
        let owner = postgres_owner();
        let dir = tempfile::Builder::new()
            .prefix("pgwarden-it-")
            .tempdir()
            .unwrap()
            .keep();
        let pg = Postgres {
            port: free_port(),
            ca_file: dir.join("ca.crt"),
            dir,
            bindir,
            owner,
        };
        pg.write_certs();
        pg.chown_all();
        pg.run(
            "initdb",
            &[
                "-D",
                "data",
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
        );
        let conf = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nmax_connections = 300\n\
             shared_buffers = 64MB\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n\
             ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nlog_min_messages = warning\n",
            pg.port,
            pg.dir.display(),
            pg.dir.join("server.crt").display(),
            pg.dir.join("server.key").display(),
        );
        append(&pg.dir.join("data/postgresql.conf"), &conf);
        std::fs::write(
            pg.dir.join("data/pg_hba.conf"),
            format!(
                "local all all trust\nhost all {SCRAM_USER} 127.0.0.1/32 scram-sha-256\n\
                 host all {MD5_USER} 127.0.0.1/32 md5\nhost all all 127.0.0.1/32 trust\n"
            ),
        )
        .unwrap();
        pg.chown_all();
        pg.spawn_watchdog();
        pg.run(
            "pg_ctl",
            &["-D", "data", "-l", "server.log", "-w", "-t", "60", "start"],
        );
        pg.psql(&format!(
            "CREATE ROLE {SCRAM_USER} LOGIN PASSWORD '{SCRAM_PASSWORD}';\n\
             SET password_encryption = 'md5';\nCREATE ROLE {MD5_USER} LOGIN PASSWORD '{MD5_PASSWORD}';\n\
             CREATE TABLE kill_test (id int);\nGRANT ALL ON kill_test TO PUBLIC;"
        ));
        pg
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(&self.dir)
            .env("LC_ALL", "C")
            .env_remove("PGDATA");
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs SQL as the superuser over the Unix socket.
    pub fn psql(&self, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Creates a login role (trust auth) if it does not exist.
    pub fn ensure_role(&self, name: &str) {
        self.psql(&format!(
            "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{name}') THEN CREATE ROLE \"{name}\" LOGIN SUPERUSER; END IF; END $$;"
        ));
    }

    /// Number of backends with `application_name = app`.
    pub fn backends_of(&self, app: &str) -> usize {
        self.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"
        ))
        .parse()
        .unwrap()
    }

    pub fn backend_exists(&self, pid: i32) -> bool {
        self.psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )) == "1"
    }

    fn write_certs(&self) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pgwarden test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(&self.ca_file, ca.pem()).unwrap();
        std::fs::write(self.dir.join("server.crt"), cert.pem()).unwrap();
        let key_path = self.dir.join("server.key");
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    fn chown_all(&self) {
        if let Some((uid, gid)) = self.owner {
            let status = Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(&self.dir)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    /// Stops the server and removes its directory once this test process is gone, however it ends.
    fn spawn_watchdog(&self) {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; '{pg_ctl}' -D '{dir}/data' stop -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bindir.join("pg_ctl").display(),
            dir = self.dir.display(),
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn().expect("spawn watchdog");
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}
