//! The Unix-domain socket listener: `DIR/.s.PGSQL.<port>`, where libpq looks for `host=DIR port=PORT`.
//!
//! A lock file beside it (`.s.PGSQL.<port>.lock`, holding the owner's pid, as PostgreSQL's does) is held
//! with `flock` while pgwarden runs, so a second pgwarden on the same socket refuses to start; a socket file
//! left by a pgwarden that died is removed at start. A lock file of a live process that does not hold the
//! lock (a PostgreSQL server's own) is never taken over. Both files are removed when the listener drops.

use crate::config::FileMode;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use thiserror::Error;
use tokio::net::UnixListener;

#[derive(Debug, Error)]
pub enum UnixSocketError {
    #[error("{path}: another pgwarden (pid {pid}) is serving this socket")]
    Taken { path: PathBuf, pid: String },
    #[error("{path}: the lock file belongs to live process {pid} (a PostgreSQL server?); not taking it over")]
    Foreign { path: PathBuf, pid: i32 },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

pub struct UnixSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl UnixSocket {
    /// Binds `dir/.s.PGSQL.<port>` with file mode `mode`. Needs a tokio runtime.
    pub fn bind(dir: &Path, port: u16, mode: FileMode) -> Result<UnixSocket, UnixSocketError> {
        let path = dir.join(format!(".s.PGSQL.{port}"));
        let lock_path = dir.join(format!(".s.PGSQL.{port}.lock"));
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| UnixSocketError::Io { path: p, source }
        };
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        let mut previous = String::new();
        let _ = lock.read_to_string(&mut previous);
        let previous_pid = previous.lines().next().unwrap_or("").trim().to_string();
        // SAFETY: flock on a file descriptor we own; no memory is touched.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(UnixSocketError::Taken { path, pid: previous_pid });
        }
        if let Ok(pid) = previous_pid.parse::<i32>() {
            // SAFETY: kill with signal 0 only checks that the process exists.
            if pid > 0 && pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } == 0 {
                return Err(UnixSocketError::Foreign { path: lock_path, pid });
            }
        }
        lock.set_len(0).map_err(io(&lock_path))?;
        lock.rewind().map_err(io(&lock_path))?;
        writeln!(lock, "{}", std::process::id()).map_err(io(&lock_path))?;
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed a stale socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(UnixSocketError::Io { path, source: e }),
        }
        let listener = UnixListener::bind(&path).map_err(io(&path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode.0)).map_err(io(&path))?;
        Ok(UnixSocket { listener, path, lock_path, _lock: lock })
    }
}

impl Drop for UnixSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_file(&self.lock_path);
    }
}
