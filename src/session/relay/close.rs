//! How a relayed session ends: the client went away, the server went away, or pgwarden closes it.
//!
//! Owns: delivering the last bytes each way under [`CLOSE_WRITE_TIMEOUT`], the ErrorResponse at a message
//! boundary, Terminate to the server, and a CancelRequest first when a query is still running, so pgwarden
//! never leaves a backend behind. A server that takes nothing for [`UPSTREAM_STALL`] is reset instead
//! (it is blocked, most often writing results nobody will read, and a CancelRequest cannot reach it there).

use super::flow::BUF_SIZE;
use super::{Direction, Relay, Tracker};
use crate::protocol::error_response;
use crate::protocol::scanner::TERMINATE;
use crate::session::stream::ClientStream;
use crate::session::upstream::Upstream;
use crate::vocab::{CloseReason, ConnState, Fatal, SqlState};
use std::io;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::debug;

/// How long closing may spend delivering the last bytes and the ErrorResponse to a peer that does not read.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server whose client is gone may take to accept the last bytes and the Terminate before the
/// connection is reset: the slot and the backend are held meanwhile.
const UPSTREAM_STALL: Duration = Duration::from_secs(1);

impl Relay<'_, '_> {
    /// The client closed or reset its socket.
    pub(super) async fn client_gone(&mut self, server: &mut Upstream) -> CloseReason {
        let reason = if self.tracker.terminated { CloseReason::Client } else { CloseReason::Abandoned };
        // Bytes it sent before closing (a Terminate, say) still go to the server, if the server takes them.
        if !within(UPSTREAM_STALL, self.to_server.flow.drain_to(server)).await {
            server.reset();
            return reason;
        }
        if !self.tracker.terminated {
            self.cancel_running_query().await;
            if self.to_server.scanner.at_boundary() && !within(UPSTREAM_STALL, write_flush(server, &TERMINATE)).await {
                server.reset();
                return reason;
            }
        }
        if !within(UPSTREAM_STALL, server.shutdown()).await {
            server.reset();
        }
        reason
    }

    /// The server closed its side, or the link to it failed with `error`.
    pub(super) async fn server_gone(&mut self, client: &mut ClientStream, error: Option<io::Error>) -> CloseReason {
        // What it sent last (often a FATAL ErrorResponse) still goes to the client.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, self.to_client.flow.drain_to(client)).await;
        if self.tracker.terminated {
            return CloseReason::Client;
        }
        if !self.tracker.server_fatal && self.to_client.scanner.at_boundary() {
            let message = match &error {
                Some(e) => format!("pgwarden: the connection to the upstream server failed: {e}"),
                None => "pgwarden: the server closed the connection unexpectedly".to_string(),
            };
            if let Some(e) = &error {
                tracing::warn!(parent: self.ctx.span, error = %e, "upstream connection failed");
            }
            let e = error_response::fatal(SqlState::CONNECTION_FAILURE.code(), &message);
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, client.write_all(&e)).await;
        }
        let _ = client.shutdown().await;
        CloseReason::Server
    }

    /// Closes both sides on pgwarden's initiative, telling the client why at a message boundary: what the
    /// server already sent is delivered up to the end of its current message, then the ErrorResponse.
    pub(super) async fn close(
        &mut self,
        client: &mut ClientStream,
        server: &mut Upstream,
        fatal: Fatal,
    ) -> CloseReason {
        self.cancel_running_query().await;
        let finish = async {
            let Direction { flow, scanner, .. } = &mut self.to_client;
            let _ = flow.drain_to(client).await;
            // Complete the server's current message (the cancel above makes a long result end soon).
            let mut chunk = if scanner.at_boundary() { Vec::new() } else { vec![0; BUF_SIZE] };
            while !scanner.at_boundary() {
                let want = scanner.bytes_to_boundary().clamp(1, chunk.len());
                let n = match server.read(&mut chunk[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let tracker = &mut self.tracker;
                if scanner.feed(&chunk[..n], Tracker::server_want, |f| tracker.on_server(f)).is_err() {
                    break;
                }
                if client.write_all(&chunk[..n]).await.is_err() {
                    break;
                }
            }
            if scanner.at_boundary() {
                let _ = client.write_all(&fatal.encode()).await;
            }
            // After the FATAL nothing the client sent goes on (it could be a COMMIT the client was just told
            // did not happen): only Terminate, and only where the server stands at a message boundary.
            let at_boundary = self.to_server.receiver_at_boundary();
            self.to_server.flow.discard();
            if at_boundary {
                let _ = write_flush(server, &TERMINATE).await;
            }
        };
        if tokio::time::timeout(CLOSE_WRITE_TIMEOUT, finish).await.is_ok() {
            let _ = tokio::time::timeout(UPSTREAM_STALL, server.shutdown()).await;
        } else {
            server.reset();
        }
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, client.shutdown()).await;
        fatal.close_reason()
    }

    /// If a query is running, asks the server to stop it so the backend does not run on.
    async fn cancel_running_query(&self) {
        if self.tracker.state() != ConnState::Active {
            return;
        }
        if let Some(target) = self.ctx.conn.cancel_target() {
            debug!(parent: self.ctx.span, pid = target.pid, "cancelling the running query");
            if let Err(e) =
                crate::session::upstream::send_cancel(target.addr, target.pid, &target.key, Duration::from_secs(2))
                    .await
            {
                debug!(parent: self.ctx.span, error = %e, "cancel request failed");
            }
        }
    }
}

/// Whether `io` completed without error within `limit`.
async fn within(limit: Duration, io: impl std::future::Future<Output = io::Result<()>>) -> bool {
    tokio::time::timeout(limit, io).await.is_ok_and(|r| r.is_ok())
}

async fn write_flush(server: &mut Upstream, bytes: &[u8]) -> io::Result<()> {
    server.write_all(bytes).await?;
    server.flush().await
}
