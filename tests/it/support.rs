//! Test support: the shared PostgreSQL, an in-process proxy, and clients.

#![allow(dead_code)]

pub mod fake_kube;
pub mod http;
pub mod libpq;
pub mod pg;
pub mod proxy;
pub mod raw;
pub mod tls_front;

pub use proxy::{start_proxy, test_config, TestProxy};
