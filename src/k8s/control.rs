//! The control plane: the injector serves every sidecar its live policy (chart values, then the overrides
//! ConfigMap's entries for its namespace and workload) over an authenticated long poll, and the CLI edits
//! those overrides with the user's own Kubernetes rights.
//!
//! `overrides` (the ConfigMap's format and the injector's poll of it), `served` (`GET /v1/policy`),
//! `channel` (the sidecar's kept-alive HTTPS connection, also used by the budget client), `client` (the
//! sidecar's poller, applying a new policy as a reload does), `edit` (`pgwarden fleet cap|reclaim`).

pub mod channel;
pub mod client;
pub mod edit;
pub mod events;
pub mod overrides;
pub mod served;
