//! Integration tests: a real PostgreSQL (started once per test binary by `support::pg`), pgwarden running
//! in-process on port 0, and real clients (tokio-postgres, psql, raw protocol bytes).

mod support;

mod admin;
mod config_cli;
mod demo;
mod leaks;
mod lifecycle;
mod logs;
mod policy;
mod relay;
mod reload;
mod startup;
mod state;
mod upstream;
