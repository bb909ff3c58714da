//! The per-connection pipeline, from accept to close: startup → identify → admit → dial → relay → close.
//!
//! Each step is its own module: `startup` (SSL/GSS negotiation, CancelRequest routing, the startup packet
//! under `client_login_timeout`), `admit` (the cap slot, the wait queue, the 53300 refusal), `upstream`
//! (dialling the database, TLS towards it), `relay` (bytes both ways with the protocol tracker and the
//! timers). This file strings them together and owns the connection's tracing span and its registry entry.
//! Does not own: the shared state the steps read (see `state`) or the accept loop (see `server`).

pub mod admit;
pub mod relay;
pub mod sockopt;
pub mod startup;
pub mod stream;
pub mod upstream;

use crate::identity::{ClientId, Peer};
use crate::state::State;
use crate::vocab::{CloseReason, Fatal, SqlState};
use admit::Admitted;
use relay::RelayContext;
use std::sync::Arc;
use std::time::Instant;
use stream::ClientStream;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, field, info, info_span, warn, Instrument};

/// Writes `fatal` to the client and closes its side (best effort: the client may be gone).
async fn refuse(client: &mut ClientStream, fatal: &Fatal) {
    let _ = client.write_all(&fatal.encode()).await;
    let _ = client.shutdown().await;
}

/// One client connection, from accept to close.
pub async fn run(state: Arc<State>, mut client: ClientStream, peer: Peer, shutdown: CancellationToken) {
    let accepted = Instant::now();
    let settings = state.settings();
    if let ClientStream::Tcp(tcp) = &client {
        sockopt::client(tcp, &settings.config);
    }
    let login_timeout = settings.config.client_login_timeout.0;
    let mut inbuf = Vec::with_capacity(256);

    let login_deadline = login_timeout.and_then(|d| accepted.checked_add(d));
    let awaiting = state.local.awaiting_startup();
    let read = startup::read(&state, &settings, &mut client, &mut inbuf, login_deadline, &shutdown).await;
    drop(awaiting);
    let (params, used) = match read {
        Ok(Some(found)) => found,
        Ok(None) => {
            // A cancel forwarded, or the client gone: close properly (over TLS with close_notify, which
            // libpq 17+ expects after a cancel request).
            let _ = client.shutdown().await;
            return;
        }
        Err(refused) => {
            debug!(%peer, ?refused, "startup refused");
            let _ = client.write_all(&refused.bytes()).await;
            let _ = client.shutdown().await;
            return;
        }
    };
    let pod = state.pod_of(&peer);
    let client_id = Arc::new(ClientId::from_startup(&settings.config.client_key, &params, &pod, &peer));
    let guard = state.registry.register(client_id.clone(), peer, accepted);
    let conn = guard.conn().clone();
    if let (_, Some(trace)) = crate::text::traceparent::split(params.get("application_name").unwrap_or_default()) {
        conn.set_trace_id(Arc::from(trace));
    }
    let span =
        info_span!("conn", id = conn.id, client = %client_id, %peer, backend_pid = field::Empty, pod = field::Empty);
    if let Some(pod) = &pod.pod {
        span.record("pod", pod.as_str());
    }
    // Admission and the dial run inside the connection's span. The relay does not: an instrumented future
    // enters and leaves its span on every wake-up, which cost a tenth of the relay's own user-space time per
    // transaction (BENCHMARKS.md, issue 31); the relay names the span as the parent of each line it logs.
    let prepared = async {
        let config = &settings.config;
        debug!(user = params.get("user"), database = params.get("database"), "startup");
        let (policy, rule) = crate::policy::effective(config, &client_id);
        let started_wait = Instant::now();
        let slot = match admit::admit(&state, &mut client, &conn, &policy, rule.as_deref(), &shutdown).await {
            Ok(slot) => slot,
            Err(Some(fatal)) => {
                refuse(&mut client, &fatal).await;
                return None;
            }
            Err(None) => return None,
        };
        // Time spent waiting for a slot does not count against client_login_timeout.
        let waited = started_wait.elapsed();
        let mut admitted = Admitted::new(slot, state.clients.entry(&client_id));
        let dial_started = Instant::now();
        let upstream = tokio::select! {
            dialed = upstream::dial(&settings) => dialed,
            _ = shutdown.cancelled() => {
                admitted.reason = CloseReason::Shutdown;
                refuse(&mut client, &Fatal::shutdown("pgwarden is shutting down")).await;
                return None;
            }
        };
        // Out of file descriptors is pgwarden's own limit, not an upstream error: counted apart.
        let out_of_fds = upstream.as_ref().err().is_some_and(upstream::DialError::out_of_fds);
        if out_of_fds {
            state.local.count_fd_exhausted("dial");
        } else {
            state.dials.observe(dial_started.elapsed(), upstream.is_ok());
        }
        let mut upstream = match upstream {
            Ok(u) => u,
            Err(e) if out_of_fds => {
                error!(
                    upstream = %config.upstream,
                    error = %e,
                    "out of file descriptors: cannot dial the upstream (pgwarden's own limit: raise the container's \
                     RLIMIT_NOFILE, e.g. ulimit -n)"
                );
                let message = format!(
                    "pgwarden: out of file descriptors (pgwarden's own limit, not the database's): could not \
                     connect to upstream {}",
                    config.upstream
                );
                refuse(&mut client, &Fatal::closed(CloseReason::Error, SqlState::INSUFFICIENT_RESOURCES, message))
                    .await;
                return None;
            }
            Err(e) => {
                if let Some(held_back) = state.dials.unreachable_lines.hit(Instant::now()) {
                    warn!(upstream = %config.upstream, error = %e, held_back, "upstream unreachable");
                }
                let message = format!("pgwarden: could not connect to upstream {}: {e}", config.upstream);
                refuse(&mut client, &Fatal::closed(CloseReason::Error, SqlState::UNABLE_TO_CONNECT, message)).await;
                return None;
            }
        };
        if let Err(e) = upstream.stream.write_all(&inbuf[..used]).await {
            warn!(error = %e, "upstream closed during startup");
            let message = format!("pgwarden: upstream {} closed the connection: {e}", config.upstream);
            refuse(&mut client, &Fatal::closed(CloseReason::Error, SqlState::UNABLE_TO_CONNECT, message)).await;
            return None;
        }
        // The startup bytes are forwarded: only what followed them goes on, and the buffer goes now.
        let early = inbuf.split_off(used);
        drop(inbuf);
        Some((admitted, upstream, policy, waited, early))
    }
    .instrument(span.clone())
    .await;
    let Some((mut admitted, mut upstream, policy, waited, early)) = prepared else { return };
    let ctx = RelayContext {
        conn: &conn,
        state: &state,
        entry: &admitted.entry,
        policy,
        upstream_addr: upstream.addr,
        shutdown: &shutdown,
        login_deadline: login_timeout.and_then(|d| accepted.checked_add(d)?.checked_add(waited)),
        span: &span,
    };
    let reason = relay::run(&ctx, &mut client, &mut upstream.stream, early).await;
    let _in_span = span.enter();
    admitted.reason = reason;
    conn.mark_closed(Instant::now(), reason.as_str());
    state.session_closed(&conn);
    match reason {
        CloseReason::Client | CloseReason::Server | CloseReason::Abandoned => {
            debug!(reason = reason.as_str(), "closed")
        }
        _ => info!(reason = reason.as_str(), "closed by pgwarden"),
    }
    drop(admitted);
    drop(guard);
}
