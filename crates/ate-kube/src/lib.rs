//! ate on Kubernetes.
//!
//! * [`crd`]: `WorkerPool` and `ActorTemplate` (`ate.dev/v1`) derived from ate-core's
//!   resource types, so one YAML works for `ate apply` and `kubectl apply`;
//! * [`shape`]: pure pod shaping per backend (workload, Service, PodDisruptionBudget), or the
//!   reason a pool is refused;
//! * [`operator`]: the reconciler (`ate operator`) applying those objects with server-side
//!   apply and writing the pool's status, and its dry run;
//! * [`discovery`]: worker entries from a pool's pods (pure) and the pod watcher that feeds
//!   `ate serve`;
//! * [`kube_lease`]: leader election with a `coordination.k8s.io` Lease (in a cluster);
//! * [`probe`]: `ate node-probe`, which labels a node with what `ateom doctor` found;
//! * [`strict`]: decoding into k8s-openapi types with unknown fields refused.
//!
//! No API server runs on the development machines: the logic is tested against the
//! k8s-openapi types and kube's client over a mock service; `tests/e2e.rs` needs `KUBECONFIG`.

pub mod cli;
pub mod crd;
pub mod discovery;
pub mod kube_lease;
pub mod operator;
pub mod probe;
pub mod shape;
pub mod strict;

pub use crd::{ActorTemplate, WorkerPool};
