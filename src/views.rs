//! The views: what pgwarden tells about its connections, built on request from the shared state.
//!
//! `stats` gathers one snapshot and shapes SPEC's JSON (`/clients`, `/connections`, `/leaks`); `metrics`
//! exports the Prometheus series; `admin` is the read-only HTTP server that serves both; `report` reads that
//! JSON back for `pgwarden top` and `pgwarden leaks` and renders their tables. Nothing here changes state.

pub mod admin;
pub mod metrics;
pub mod report;
pub mod stats;
pub mod tags;
