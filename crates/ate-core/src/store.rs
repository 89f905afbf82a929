//! The store contract: versioned records and one atomic multi-record compare-and-set.
//!
//! Everything the control plane knows lives in records `(kind, name) -> (version, body)`.
//! A **write** ([`Store::commit`]) is a list of puts and deletes, each with an expectation
//! on the record's current version ([`Expect`]); either every expectation holds and every
//! change is applied, or nothing is and [`StoreError::Conflict`] names the first record that
//! did not match. Versions come from one store-wide counter (a *revision*, like etcd's), so a
//! record deleted and created again never reuses a version (no ABA).
//!
//! Every actor transition is one such write: the actor record (expecting the version it was
//! read at) plus the worker lease records it takes or gives back (expecting theirs). Two
//! control planes racing to claim a worker cannot both succeed; a control plane killed between
//! two writes leaves a record that says exactly what it was doing.
//!
//! **Replica liveness.** Besides records, a store keeps one short lease per control-plane
//! replica ([`Store::heartbeat`]): a live replica renews it every second or so with a TTL of a
//! few seconds; an intent whose owner's lease has expired was abandoned (that replica died)
//! and any other replica may finish or roll it back at once ([`Store::replica_alive`]).
//! Leases are not versioned records and are not part of any write's expectations: they only
//! decide *when* another replica starts reconciling; the compare-and-set of the actor record
//! still decides *what* is written.
//!
//! **Leadership.** Work that must run on one replica at a time (reconciling other replicas'
//! intents, the idle policy, golden builds, repairs after observing workers) is done by the
//! holder of a named leadership lease ([`Store::try_lead`]): one atomic step that takes the
//! lease when it is free or expired, renews it when the caller already holds it, and
//! otherwise answers who holds it and for how much longer. Like liveness leases, it is no
//! versioned record; what the leader writes still goes through compare-and-set.
//!
//! Implementations (`ate-store`): SQLite (one table, `BEGIN IMMEDIATE`) and Redis/Valkey (a
//! Lua script). Both run the same conformance suite.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::actor::Actor;
use crate::placement::WorkerInfo;
use crate::resource::{PoolSpec, TemplateSpec};

/// Record kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Template,
    Pool,
    Worker,
    Lease,
    Actor,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Template, Kind::Pool, Kind::Worker, Kind::Lease, Kind::Actor];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Template => "template",
            Kind::Pool => "pool",
            Kind::Worker => "worker",
            Kind::Lease => "lease",
            Kind::Actor => "actor",
        }
    }
}

/// A stored record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub version: u64,
    pub body: Vec<u8>,
}

/// What a write expects of a record's current version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (or nothing).
    Any,
    /// The record must not exist.
    Absent,
    /// The record must exist at exactly this version.
    Version(u64),
}

/// One change of a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub kind: Kind,
    pub name: String,
    pub expect: Expect,
    /// `Some(body)`: put; `None`: delete.
    pub body: Option<Vec<u8>>,
}

/// Errors of a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An expectation did not hold; nothing was written.
    #[error("conflict on {kind} {name}: expected {expected:?}, found version {found:?}")]
    Conflict { kind: &'static str, name: String, expected: Expect, found: Option<u64> },
    #[error("store backend: {0}")]
    Backend(String),
    #[error("record {kind} {name} does not decode: {detail}")]
    Decode { kind: &'static str, name: String, detail: String },
}

impl StoreError {
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Conflict { .. })
    }
}

/// A store of versioned records with atomic multi-record compare-and-set writes.
///
/// Implementations are synchronous and cheap per call (an embedded database or one round
/// trip); async callers run them on a blocking thread.
pub trait Store: Send + Sync {
    /// "sqlite" or "redis".
    fn backend(&self) -> &'static str;
    fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError>;
    /// Every record of a kind, sorted by name, read consistently.
    fn list(&self, kind: Kind) -> Result<Vec<(String, Record)>, StoreError>;
    /// Applies every change or none; returns the revision all written records now carry.
    fn commit(&self, changes: &[Change]) -> Result<u64, StoreError>;
    /// Creates or renews `replica`'s liveness lease for `ttl` from now.
    fn heartbeat(&self, replica: &str, ttl: std::time::Duration) -> Result<(), StoreError>;
    /// Whether `replica` holds an unexpired liveness lease.
    fn replica_alive(&self, replica: &str) -> Result<bool, StoreError>;
    /// Gives `replica`'s lease up at once (a replica that stops cleanly).
    fn release_replica(&self, replica: &str) -> Result<(), StoreError>;
    /// One atomic step on the leadership lease `name`: taken by `owner` for `ttl` from now
    /// when nobody holds it or its holder's lease expired, renewed for `ttl` from now when
    /// `owner` already holds it; otherwise left alone. Answers who holds it afterwards.
    fn try_lead(&self, name: &str, owner: &str, ttl: std::time::Duration) -> Result<LeaderState, StoreError>;
    /// Who holds the leadership lease `name` now (None: nobody, or it expired).
    fn leader(&self, name: &str) -> Result<Option<LeaderState>, StoreError>;
    /// Gives the leadership lease `name` up at once if `owner` holds it (a clean stop);
    /// answers whether it did.
    fn resign(&self, name: &str, owner: &str) -> Result<bool, StoreError>;
}

/// The holder of a leadership lease, as the store saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderState {
    pub holder: String,
    /// How long the lease lasts from the moment the store answered, unless renewed.
    pub ttl_left_ms: u64,
}

impl LeaderState {
    pub fn held_by(&self, owner: &str) -> bool {
        self.holder == owner
    }
}

/// A decoded record with its version.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned<T> {
    pub version: u64,
    pub value: T,
}

/// Typed access on top of any [`Store`].
pub trait StoreExt: Store {
    fn get_as<T: DeserializeOwned>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<Versioned<T>>, StoreError> {
        match self.get(kind, name)? {
            None => Ok(None),
            Some(r) => Ok(Some(Versioned { version: r.version, value: decode(kind, name, &r.body)? })),
        }
    }

    fn list_as<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<Versioned<T>>, StoreError> {
        self.list(kind)?
            .into_iter()
            .map(|(name, r)| Ok(Versioned { version: r.version, value: decode(kind, &name, &r.body)? }))
            .collect()
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

fn decode<T: DeserializeOwned>(kind: Kind, name: &str, body: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(body).map_err(|e| StoreError::Decode {
        kind: kind.as_str(),
        name: name.to_owned(),
        detail: e.to_string(),
    })
}

/// A put of a serializable value.
pub fn put<T: Serialize>(kind: Kind, name: &str, expect: Expect, value: &T) -> Change {
    Change {
        kind,
        name: name.to_owned(),
        expect,
        body: Some(serde_json::to_vec(value).expect("records serialize")),
    }
}

/// A delete.
pub fn delete(kind: Kind, name: &str, expect: Expect) -> Change {
    Change { kind, name: name.to_owned(), expect, body: None }
}

/// Who holds a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "holder", content = "name", rename_all = "lowercase")]
pub enum Holder {
    Actor(String),
    /// A template's golden-snapshot build.
    Golden(String),
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::Actor(a) => write!(f, "actor {a}"),
            Holder::Golden(t) => write!(f, "golden build of {t}"),
        }
    }
}

/// A worker's lease: the exclusive claim on it (kind `lease`, name = worker).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<Holder>,
    #[serde(default)]
    pub since_ms: u64,
}

/// A worker as last observed (kind `worker`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRecord {
    pub name: String,
    pub pool: String,
    /// Its unix socket (a worker on this host); empty for a worker on another host.
    #[serde(default)]
    pub socket: String,
    /// A worker on another host: its address, TLS front and TLS material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<crate::resource::RemoteWorker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<WorkerInfo>,
    pub healthy: bool,
    /// What the worker said runs on it, "namespace/template/actor" or empty.
    #[serde(default)]
    pub running: String,
    /// Its slot state as reported (`idle`, `restoring`, `running`, `checkpointing`,
    /// `pushing`, ...; empty when unknown).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// Free bytes on its snapshot file system (rounded down to 16 MiB), when reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_bytes_free: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub observed_ms: u64,
    /// Unhealthy: since when it has not answered (its host may be lost).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since_ms: Option<u64>,
}

impl WorkerRecord {
    /// How `ate` reaches it.
    pub fn target(&self) -> crate::resource::WorkerTarget {
        match &self.remote {
            Some(r) => crate::resource::WorkerTarget::Tls(r.clone()),
            None => crate::resource::WorkerTarget::Socket(self.socket.clone()),
        }
    }
}

/// A worker pool (kind `pool`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    pub spec: PoolSpec,
}

/// The golden snapshot of a template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GoldenStatus {
    /// Waiting for a worker.
    Pending,
    /// Booting and checkpointing on `worker`.
    Building,
    Ready,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Golden {
    pub status: GoldenStatus,
    /// Generation of the build (the golden actor's id is `golden.<generation>`).
    pub generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// `<snapshot location>/golden`.
    pub prefix: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub boot_ms: u64,
}

/// A template (kind `template`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TemplateRecord {
    pub name: String,
    pub namespace: String,
    pub spec: TemplateSpec,
    pub golden: Golden,
}

impl TemplateRecord {
    /// Where the template's golden snapshot lives.
    pub fn golden_prefix(spec: &TemplateSpec) -> String {
        format!("{}/golden", spec.snapshot.location.trim_end_matches('/'))
    }

    /// Where an actor's own durable snapshots live.
    pub fn actor_prefix(&self, actor: &str) -> String {
        format!("{}/actors/{actor}", self.spec.snapshot.location.trim_end_matches('/'))
    }
}

/// Decodes an actor record.
pub type ActorRecord = Versioned<Actor>;
