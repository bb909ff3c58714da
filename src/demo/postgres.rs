//! A throwaway PostgreSQL: initdb into a temp dir (as the `postgres` user when running as root), a free
//! port on 127.0.0.1, stopped and removed on drop. Used by `pgwarden demo` and by the test suite.

use anyhow::{bail, Context};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub struct TempPostgres {
    pub port: u16,
    pub dir: PathBuf,
    pub bindir: PathBuf,
    /// uid/gid the server runs as (the `postgres` user when we are root).
    pub owner: Option<(u32, u32)>,
}

/// Finds the server binaries: `PG_BINDIR`, `pg_config --bindir`, `$PATH`, `/usr/lib/postgresql/*/bin` (newest).
pub fn find_bindir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("postgres").exists() && d.join("initdb").exists() && d.join("pg_ctl").exists();
    if let Some(dir) = std::env::var_os("PG_BINDIR").map(PathBuf::from).filter(|d| has_server(d)) {
        return Some(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_server(&dir) {
            return Some(dir);
        }
    }
    if let Some(dir) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).find(|d| has_server(d)) {
        return Some(dir);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|d| has_server(d))
        .collect();
    dirs.sort_by_key(|d| d.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()).unwrap_or(0));
    dirs.pop()
}

pub const INSTALL_HINT: &str =
    "PostgreSQL server binaries not found (looked at PG_BINDIR, pg_config --bindir, PATH and \
/usr/lib/postgresql/*/bin). Install them, e.g. `apt-get install postgresql` on Debian/Ubuntu, \
`brew install postgresql` on macOS, or point PG_BINDIR at the directory holding initdb, pg_ctl and postgres.";

pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn postgres_owner() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    let Some(line) = passwd.lines().find(|l| l.starts_with("postgres:")) else {
        bail!("PostgreSQL refuses to run as root and there is no `postgres` user to run it as");
    };
    let f: Vec<&str> = line.split(':').collect();
    Ok(Some((f[2].parse()?, f[3].parse()?)))
}

impl TempPostgres {
    /// Runs initdb (trust authentication) in a new temp dir and appends `conf` to postgresql.conf.
    pub fn init(prefix: &str, conf: &str) -> anyhow::Result<TempPostgres> {
        let bindir = find_bindir().context(INSTALL_HINT)?;
        let owner = postgres_owner()?;
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?.keep();
        let pg = TempPostgres { port: free_port()?, dir, bindir, owner };
        pg.chown()?;
        pg.run("initdb", &["-D", "data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])?;
        let base = format!(
            "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n\
             synchronous_commit = off\nfull_page_writes = off\nlog_min_messages = warning\n",
            pg.port,
            pg.dir.display()
        );
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(pg.dir.join("data/postgresql.conf"))?;
        f.write_all(base.as_bytes())?;
        f.write_all(conf.as_bytes())?;
        Ok(pg)
    }

    /// Gives every file below the directory to the server's user (after writing files into it).
    pub fn chown(&self) -> anyhow::Result<()> {
        if let Some((uid, gid)) = self.owner {
            let ok = Command::new("chown").arg("-R").arg(format!("{uid}:{gid}")).arg(&self.dir).status()?.success();
            if !ok {
                bail!("chown of {} failed", self.dir.display());
            }
        }
        Ok(())
    }

    pub fn start(&self) -> anyhow::Result<()> {
        self.chown()?;
        self.run("pg_ctl", &["-D", "data", "-l", "server.log", "-w", "-t", "60", "start"])
    }

    /// A command from the server's bin dir, run as the server's user in its directory.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.current_dir(&self.dir).env("LC_ALL", "C").env_remove("PGDATA").stdin(Stdio::null());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self.command(program).args(args).output().with_context(|| format!("running {program}"))?;
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            bail!(
                "{program} failed: {}{}\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Runs SQL as the superuser over the Unix socket; returns unaligned tuples-only output.
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", "postgres", "-d", "postgres", "-c", sql])
            .output()?;
        if !out.status.success() {
            bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Stops the server when process `pid` is gone, however it ends, then removes the directory.
    pub fn spawn_watchdog(&self, pid: u32) -> anyhow::Result<()> {
        let script = format!(
            "while [ -d /proc/{pid} ]; do sleep 0.5; done; '{}' -D '{dir}/data' stop -m immediate >/dev/null 2>&1; rm -rf '{dir}'",
            self.bindir.join("pg_ctl").display(),
            dir = self.dir.display(),
        );
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).process_group(0);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.spawn()?;
        Ok(())
    }

    /// Stops the server (fast shutdown) and removes the directory.
    pub fn stop(&self) {
        let _ = self.command("pg_ctl").args(["-D", "data", "stop", "-m", "fast", "-w", "-t", "30"]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
