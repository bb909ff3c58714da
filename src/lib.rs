//! pgwarden: a PostgreSQL-aware sidecar proxy that caps connections per client, closes idle and
//! idle-in-transaction connections, and names the client that leaks them.
//!
//! The binary (`main.rs`) only parses the command line; everything runs from this library so tests drive
//! it in-process: build [`state::Settings`] from a [`config::Config`], make a [`state::State`], and call
//! [`server::Server::run`] with a listener, an admin listener and a shutdown token.
//!
//! # Layers
//! Each module imports only from its own layer or lower ones (a test, `tests/it/layers.rs`, enforces it):
//!
//! 0. **foundations**: `vocab` (reasons, states, SQLSTATEs, `Fatal`), `protocol` (wire decoders, no I/O),
//!    `config`, `identity`, `redact`, `logging`, `text` (client text made safe for terminals and logs);
//! 1. **state parts**: `registry` (live connections), `clients` (caps, wait queue, counters), `policy`
//!    (pure rules and timers), `leak` (the detector), `tls` (TLS configurations from the config),
//!    `http_server` (the limits both HTTP servers run under), `pods` (gateway mode: peer address → pod),
//!    `budget` (workload budgets: the share function, budget entries, a sidecar's lease), `livepolicy`
//!    (the policy the control plane serves a sidecar, its overrides, laying them over a config), `events`
//!    (the pod's Kubernetes Events waiting for the control plane);
//! 2. **shared state**: `state` (settings, the parts above, dial metrics, pod identity, draining);
//! 3. **connection pipeline**: `session` (startup → identify → admit → dial → relay → close);
//! 4. **views** (`views`: stats JSON, metrics, admin HTTP, CLI reports) and **Kubernetes** (`k8s`: the
//!    webhook, gateway mode's pod watcher, the fleet view, the control plane serving live policy);
//! 5. **composition root**: `server` (listeners, accept loop, supervised tasks, reload, signals, drain);
//! 6. **commands**: `demo`, `guard` (the CI leak gate), `cli`.

pub mod budget;
pub mod cli;
pub mod clients;
pub mod config;
pub mod demo;
pub mod events;
pub mod guard;
pub mod http_server;
pub mod identity;
pub mod k8s;
pub mod leak;
pub mod livepolicy;
pub mod logging;
pub mod pods;
pub mod policy;
pub mod protocol;
pub mod redact;
pub mod registry;
pub mod server;
pub mod session;
pub mod state;
pub mod text;
pub mod tls;
pub mod views;
pub mod vocab;
