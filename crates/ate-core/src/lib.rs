//! # ate-core
//!
//! The domain of `ate`, the control plane above ateom workers, with no I/O:
//!
//! * [`resource`]: the declared resources (ActorTemplate, WorkerPool, Actor) and their YAML;
//! * [`actor`]: the actor record and its state machine as pure transitions, including the
//!   lease invariant that ties an actor to the worker it occupies;
//! * [`placement`]: which worker may restore which snapshot, from worker capabilities,
//!   host fingerprints, snapshot provenance and free snapshot space;
//! * [`snapshot`]: snapshot ids chosen before a checkpoint, and the reasons that name the
//!   newest existing snapshot when a recorded one is missing;
//! * [`store`]: the store contract (versioned records, one atomic multi-record
//!   compare-and-set per transition, replica liveness leases) and the typed records.
//!
//! Nothing here knows a backend, a wire format or a database: the `ate` binary speaks the
//! ateom gRPC contract and `ate-store` implements the store.

pub mod actor;
pub mod placement;
pub mod resource;
pub mod snapshot;
pub mod store;

pub use actor::{
    Actor, ActorState, DurableRef, Host, LeaseChange, LocalRef, Op, OpKind, Provenance, Source, Tier,
    TransitionError, lease_change,
};
pub use placement::{Candidate, Decision, Mismatch, WorkerInfo, fits, place};
pub use resource::{Resource, ResourceError, TemplateSpec, parse_resources};
pub use store::{
    Change, Expect, Golden, GoldenStatus, Holder, Kind, Lease, PoolRecord, Record, Store, StoreError,
    StoreExt, TemplateRecord, Versioned, WorkerRecord,
};
