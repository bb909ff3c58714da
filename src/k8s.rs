//! The Kubernetes code: the mutating admission webhook that injects the sidecar (`inject`).
//!
//! It depends on the config and nothing of the data path; the sidecar's own Kubernetes identity (the
//! Downward API) is read in `identity`.

pub mod inject;
