//! Admission: a cap slot for the connection before pgwarden dials, or a `53300` naming the client, the rule
//! and the limit; under `on_limit: wait` a place in the FIFO queue first.
//!
//! Owns: the refusal message and its rate-limited log line, and [`Admitted`], which records the connection's
//! close in its client's counters on every path. Does not own: the caps themselves (see `clients`) or which
//! policy applies (see `policy`).

use super::stream::ClientStream;
use crate::budget::lease::describe;
use crate::clients::{Admission, Caps, ClientEntry, Slot};
use crate::config::{Config, OnLimit, Policy};
use crate::identity::ClientId;
use crate::registry::Conn;
use crate::state::State;
use crate::vocab::{CloseReason, ConnState, Fatal, RefuseReason, SqlState};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// An admitted connection: its slot, and the close it records in its client's counters when dropped
/// (`error` unless the session sets another reason), so opened and closed balance on every path.
pub struct Admitted {
    _slot: Slot,
    pub entry: Arc<ClientEntry>,
    pub reason: CloseReason,
}

impl Admitted {
    pub fn new(slot: Slot, entry: Arc<ClientEntry>) -> Admitted {
        Admitted { _slot: slot, entry, reason: CloseReason::Error }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.entry.counters.closed.add(self.reason);
    }
}

/// Takes a cap slot for the connection, waiting in the FIFO queue under `on_limit: wait`.
/// `Err(Some)`: refuse with this error; `Err(None)`: the client left while waiting.
pub async fn admit(
    state: &State,
    client: &mut ClientStream,
    conn: &Conn,
    policy: &Policy,
    rule: Option<&str>,
    shutdown: &CancellationToken,
) -> Result<Slot, Option<Fatal>> {
    let arrived = Instant::now();
    let config = state.settings().config.clone();
    let caps = Caps {
        client: policy.max_connections,
        total: config.max_total_connections,
        wait: policy.on_limit == OnLimit::Wait,
        enforce: config.enforce,
        max_clients: config.max_clients as usize,
    };
    let clients = &state.clients;
    let refusal = |reason: RefuseReason| {
        let budget = (reason == RefuseReason::Budget).then(|| describe(&state.budget.view(Instant::now())));
        Fatal::refused(reason, refusal_message(&conn.client, reason, policy, rule, &config, budget.as_deref()))
    };
    let log = |fatal: &Fatal, would: bool| {
        let entry = clients.entry(&conn.client);
        if let Some(suppressed) = entry.refusal_lines.hit(Instant::now()) {
            let (reason, message) = (fatal.ending.as_str(), &fatal.message);
            if would {
                warn!(reason, rule, suppressed, %message, "report-only: would refuse connection");
            } else {
                warn!(reason, rule, suppressed, %message, "connection refused");
                let more =
                    if suppressed > 0 { format!(" ({suppressed} more refused since the last)") } else { String::new() };
                state.events.push(crate::events::Reason::ConnectionCapReached, format!("{message}{more}"));
            }
        }
    };
    match clients.admit(&conn.client, caps) {
        Admission::Granted { slot, would_refuse } => {
            if let Some(reason) = would_refuse {
                log(&refusal(reason), true);
            }
            clients.entry(&conn.client).latency.slot_wait.record(Duration::ZERO, arrived);
            Ok(slot)
        }
        Admission::Refused(reason) => {
            let fatal = refusal(reason);
            log(&fatal, false);
            Err(Some(fatal))
        }
        Admission::TooManyClients => {
            state.local.client_keys_refused.inc();
            if let Some(held_back) = state.local.client_keys_refused_lines.hit(Instant::now()) {
                warn!(
                    max_clients = config.max_clients,
                    held_back, "new client key refused: every client key holds a connection"
                );
            }
            let message = format!(
                "pgwarden: too many distinct clients: all {} client keys (max_clients) hold connections",
                config.max_clients
            );
            Err(Some(Fatal::closed(CloseReason::Error, SqlState::TOO_MANY_CONNECTIONS, message)))
        }
        Admission::Queued(mut ticket) => {
            conn.set_state(ConnState::Waiting, Instant::now());
            let timeout = async {
                match policy.wait_timeout.0 {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                slot = ticket.granted() => {
                    let now = Instant::now();
                    conn.set_state(ConnState::Startup, now);
                    clients.entry(&conn.client).latency.slot_wait.record(now.duration_since(arrived), now);
                    Ok(slot)
                }
                _ = timeout => {
                    clients.count_refusal(&conn.client, RefuseReason::WaitTimeout);
                    let fatal = refusal(RefuseReason::WaitTimeout);
                    log(&fatal, false);
                    Err(Some(fatal))
                }
                _ = client.closed() => {
                    debug!("client left while waiting for a slot");
                    Err(None)
                }
                _ = shutdown.cancelled() => Err(Some(Fatal::shutdown("pgwarden is shutting down"))),
            }
        }
    }
}

/// The 53300 message: names the client, the rule and the limit.
fn refusal_message(
    client: &ClientId,
    reason: RefuseReason,
    policy: &Policy,
    rule: Option<&str>,
    config: &Config,
    budget: Option<&str>,
) -> String {
    let rule = match rule {
        Some(name) => format!("rule \"{name}\""),
        None => "defaults".to_string(),
    };
    match reason {
        RefuseReason::ClientLimit => format!(
            "pgwarden: too many connections for client \"{client}\" (max_connections {} from {rule})",
            policy.max_connections
        ),
        RefuseReason::TotalLimit => format!(
            "pgwarden: too many connections in total (max_total_connections {}); client \"{client}\" refused",
            config.max_total_connections
        ),
        RefuseReason::Budget => format!(
            "pgwarden: too many connections in this pod under {}; client \"{client}\" refused",
            budget.unwrap_or("its workload budget")
        ),
        RefuseReason::WaitTimeout => format!(
            "pgwarden: client \"{client}\" waited {} for a connection slot (max_connections {} from {rule})",
            policy.wait_timeout, policy.max_connections
        ),
    }
}
