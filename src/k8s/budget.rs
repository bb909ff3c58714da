//! Workload budgets across a fleet of sidecars, with Kubernetes as the source of truth.
//!
//! The coordinator runs inside the injector (`budgets.enabled`): it watches the injected pods
//! (`members`), checks each sidecar's projected ServiceAccount token with a TokenReview (`review`), and
//! answers `GET /v1/share` with that pod's share, at once or when it changes (`coordinator`). Replicas keep
//! no state of their own and need no leader: the share is `budget::share`, a pure function of what the
//! API server says. The sidecar's side asks for its share and puts it in force (`client`).

pub mod client;
pub mod coordinator;
pub mod jwt;
pub mod members;
pub mod review;
