//! The Kubernetes code: the mutating admission webhook that injects the sidecar (`inject`), the pod watcher
//! (`pods`) of gateway mode and of workload budgets (`budget`: the coordinator and the sidecar's client), the fleet view that reads every sidecar through the API server (`fleet`), and the
//! owner chain both use (`owner`).
//!
//! None of it is on the data path; the sidecar's own Kubernetes identity (the Downward API) is read in
//! `identity`, and sessions read the watcher's results from `pods::PodDirectory`.

pub mod budget;
pub mod control;
pub mod fleet;
pub mod inject;
pub mod owner;
pub mod pods;
