//! Workload budgets: one connection budget per workload, shared out among its pods.
//!
//! Owns the pure parts both sides use: which budget a workload has (`spec`), each pod's share of it
//! (`share`), and what a sidecar's cap is from the last share it received (`lease`: the share while fresh,
//! kept for `keep_last` when the coordinator is unreachable, then the fallback cap), with the choice of which
//! idle connections to close when a share shrinks. Does not own: the coordinator's pod watch, its HTTPS
//! endpoint or the sidecar's polling (see `k8s::budget`), nor admission (see `clients`).

pub mod lease;
pub mod share;
pub mod spec;
