//! The composition root: listeners, the accept loop, the admin server, supervised background tasks and the
//! drain. Nothing below imports it.
//!
//! `Server::run(listener, admin, shutdown)` is what `pgwarden proxy` runs and what tests and the demo run
//! in-process. Every background task (housekeeping, the admin server, the config reloader) is supervised: one
//! that panics or ends is logged at ERROR, the proxy drains and `run` returns an error, so the process exits
//! non-zero and Kubernetes restarts it; nothing stops silently.
//! Owns: the accept loop and the drain on shutdown. Does not own: what a session does (see `session`), the
//! shared state (see `state`), signals (see `server::signals`) or the reload watcher (see `server::reload`).

pub mod peer;
pub mod reload;
pub mod signals;
pub mod unix;

use crate::identity::Peer;
use crate::session::stream::ClientStream;
use crate::state::State;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use unix::UnixSocket;

/// A supervised background task stopped while the proxy was serving.
#[derive(Debug, Error)]
#[error("background task `{task}` {how}; the proxy drained and stopped")]
pub struct TaskFailed {
    pub task: &'static str,
    pub how: String,
}

/// The proxy's root: the shared state and the background tasks it supervises.
pub struct Server {
    state: Arc<State>,
    tasks: JoinSet<()>,
    names: HashMap<Id, &'static str>,
    unix: Option<UnixSocket>,
}

impl Server {
    pub fn new(state: Arc<State>) -> Server {
        Server { state, tasks: JoinSet::new(), names: HashMap::new(), unix: None }
    }

    /// Serves clients on `socket` too (the same sessions as on TCP).
    pub fn listen_unix(&mut self, socket: UnixSocket) {
        self.unix = Some(socket);
    }

    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Runs `task` in the background under supervision: it must not end while the proxy serves.
    pub fn supervise(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let handle = self.tasks.spawn(task);
        self.names.insert(handle.id(), name);
    }

    /// Serves clients on `listener` and the admin API on `admin` until `shutdown` (or until a supervised task
    /// fails), then drains: the admin API outlives the drain (so `/readyz` reports it) and stops once every
    /// session is closed.
    pub async fn run(
        mut self,
        listener: TcpListener,
        admin: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), TaskFailed> {
        let admin_stop = CancellationToken::new();
        self.supervise("admin server", {
            let (state, stop) = (self.state.clone(), admin_stop.clone());
            crate::views::admin::serve(state, admin, stop)
        });
        self.supervise("housekeeping", housekeeping(self.state.clone()));
        self.supervise("client certificate reload", follow_client_certificate(self.state.clone()));
        let sessions = TaskTracker::new();
        let mut failed = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(ended) = self.tasks.join_next_with_id() => {
                    failed = Some(self.task_ended(ended));
                    break;
                }
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        debug!(%peer, "accepted");
                        let session = crate::session::run(self.state.clone(), ClientStream::Tcp(stream), Peer::Tcp(peer), shutdown.clone());
                        sessions.spawn(session);
                    }
                    Err(e) => accept_failed(&self.state, e).await,
                },
                accepted = async { self.unix.as_ref().expect("branch enabled").listener.accept().await }, if self.unix.is_some() => match accepted {
                    Ok((stream, _)) => {
                        let peer = peer::unix_peer(&stream);
                        debug!(%peer, "accepted");
                        let session = crate::session::run(self.state.clone(), ClientStream::Unix(stream), peer, shutdown.clone());
                        sessions.spawn(session);
                    }
                    Err(e) => accept_failed(&self.state, e).await,
                },
            }
        }
        drop(listener);
        drop(self.unix.take());
        // A failed task drains like SIGTERM: sessions are told and may finish within shutdown_grace.
        shutdown.cancel();
        self.state.start_draining();
        sessions.close();
        let open = sessions.len();
        if open > 0 {
            info!(sessions = open, "draining");
        }
        loop {
            tokio::select! {
                _ = sessions.wait() => break,
                Some(ended) = self.tasks.join_next_with_id() => {
                    let f = self.task_ended(ended);
                    failed.get_or_insert(f);
                }
            }
        }
        admin_stop.cancel();
        self.tasks.shutdown().await;
        info!("all sessions closed");
        failed.map_or(Ok(()), Err)
    }

    /// A supervised task ended or panicked: log it at ERROR and say which.
    fn task_ended(&mut self, ended: Result<(Id, ()), JoinError>) -> TaskFailed {
        let (id, how) = match ended {
            Ok((id, ())) => (id, "ended".to_string()),
            Err(e) => {
                let id = e.id();
                let how = if e.is_panic() {
                    format!("panicked: {}", panic_text(e.into_panic()))
                } else {
                    "was cancelled".into()
                };
                (id, how)
            }
        };
        let task = self.names.remove(&id).unwrap_or("background task");
        error!(task, how, "a background task stopped; draining and exiting");
        TaskFailed { task, how }
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_string())
}

/// Out of file descriptors and the like: back off instead of spinning.
async fn accept_failed(state: &State, e: std::io::Error) {
    if crate::state::is_fd_exhaustion(&e) {
        state.local.count_fd_exhausted("accept");
        error!(error = %e, "accept failed: out of file descriptors (pgwarden's own limit: raise RLIMIT_NOFILE)");
    } else {
        warn!(error = %e, "accept failed");
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Re-reads the client TLS certificate files every few seconds (cert-manager rotates them in place), off the
/// runtime thread.
async fn follow_client_certificate(state: Arc<State>) {
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        if let Some(tls) = state.settings().client_tls.clone() {
            let _ = tokio::task::spawn_blocking(move || tls.cert.refresh()).await;
        }
    }
}

/// Leak detection and client pruning, forever.
async fn housekeeping(state: Arc<State>) {
    loop {
        tokio::time::sleep(state.housekeeping_interval()).await;
        state.housekeeping(Instant::now());
    }
}
