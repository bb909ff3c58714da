//! Integration tests: a real PostgreSQL (started once per test binary by `support::pg`), pgwarden running
//! in-process on port 0, and real clients (tokio-postgres, psql, raw protocol bytes).

// tokio_postgres::Client is not Debug, so `expect_err` is not available for connect results.
#![allow(clippy::err_expect)]

mod support;

mod admin;
mod budget;
mod client_tls;
mod config_cli;
mod control;
mod control_scale;
mod deadpeer;
mod demo;
mod dropin;
mod fleet;
mod gateway;
mod guard;
mod incident;
mod inject;
mod layers;
mod leaks;
mod lifecycle;
mod limits;
mod logs;
mod memory;
mod plugin;
mod policy;
mod relay;
mod reload;
mod startup;
mod state;
mod tags;
mod timeouts;
mod traces;
mod tracking;
mod unix;
mod upstream;
mod upstream_tls;
mod workers;
