//! libpq clients, the ones most users run: `psql` and psycopg (its binary wheel ships libpq 18). Each runs
//! off the runtime thread so the in-process proxy keeps serving.

use super::pg::pg;
use std::path::PathBuf;
use std::process::Command;

/// Runs `sql` with psql against `conninfo` (a libpq connection string); stdout on success, stderr on failure.
pub async fn psql(conninfo: &str, sql: &str) -> Result<String, String> {
    let (conninfo, sql) = (conninfo.to_string(), sql.to_string());
    let mut cmd = Command::new(pg().bindir.join("psql"));
    cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", &conninfo, "-c", &sql]);
    run(cmd).await
}

/// The virtualenv's python with psycopg (installed by scripts/setup.sh).
pub fn python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "psycopg is installed into .tools/venv by scripts/setup.sh (run the suite with scripts/test.sh)"
    );
    python
}

/// Runs `sql` with psycopg against `conninfo`; prints the first column of each row.
pub async fn psycopg(conninfo: &str, sql: &str) -> Result<String, String> {
    let script = "import sys, psycopg\nwith psycopg.connect(sys.argv[1]) as c:\n    for row in c.execute(sys.argv[2]):\n        print(row[0])\n";
    let mut cmd = Command::new(python());
    cmd.args(["-c", script, conninfo, sql]);
    run(cmd).await
}

async fn run(mut cmd: Command) -> Result<String, String> {
    cmd.env_remove("PGPASSWORD").env_remove("PGSSLMODE");
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
