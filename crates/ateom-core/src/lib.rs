//! # ateom-core
//!
//! The vocabulary of ateom, shared by the runtime, the gRPC layer and every backend:
//!
//! * [`ids`]: validated identifiers ([`Name`], [`ActorRef`], [`SnapshotId`]) that are safe as
//!   path components;
//! * [`spec`]: validated requests ([`RunRequest`], [`CheckpointRequest`], [`RestoreRequest`])
//!   and the workload they describe;
//! * [`manifest`]: the snapshot manifest and the provenance check run before every restore;
//! * [`backend`]: the [`Backend`] / [`Sandbox`] seam;
//! * [`errtext`]: how the command-line tools print an error's chain to a user.
//!
//! This crate does no I/O and knows no backend and no wire format.

pub mod backend;
pub mod errtext;
pub mod ids;
pub mod manifest;
pub mod spec;
pub mod time;

pub use backend::*;
pub use ids::*;
pub use manifest::*;
pub use spec::*;

/// A request field that is missing or malformed. `field` is the request's field path
/// (`spec.containers[0].readyz.port`), so the caller knows what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidArgument {
    pub field: String,
    pub reason: String,
}

impl InvalidArgument {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { field: field.into(), reason: reason.into() }
    }
}
