//! pgwarden: a PostgreSQL-aware sidecar proxy that caps connections per client, closes idle and
//! idle-in-transaction connections, and names the client that leaks them.
//!
//! The binary (`main.rs`) only parses the command line; everything runs from this library so tests drive
//! it in-process: build [`proxy::Settings`] from a [`config::Config`], make a [`proxy::Proxy`] and call
//! [`proxy::Proxy::serve`] with a listener and a shutdown token.

pub mod admin;
pub mod cli;
pub mod clients;
pub mod config;
pub mod demo;
pub mod identity;
pub mod inject;
pub mod leak;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod protocol;
pub mod proxy;
pub mod redact;
pub mod registry;
pub mod relay;
pub mod reload;
pub mod report;
pub mod session;
pub mod stats;
pub mod tls;
pub mod upstream;
