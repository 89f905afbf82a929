//! The worker's journal: what it must know to carry on after its own process dies.
//!
//! ```text
//! <state>/worker/
//!     active.json     the sandbox this worker runs (absent when idle): its actor, spec,
//!                     the backend's handle, the forwarder's endpoint and the phase
//!     lost.json       actors whose workload a restarted worker found dead (newest last)
//! ```
//!
//! `active.json` is replaced atomically at every phase change (before the change takes effect
//! on the sandbox), so a restarted worker always knows what it may find: a running sandbox to
//! adopt, a checkpoint to finish or undo, or a push that did not end.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ateom_core::{ActorRef, Destination, SandboxHandle, SnapshotId, WorkloadSpec};
use serde::{Deserialize, Serialize};

/// Version of `active.json`'s layout.
pub const JOURNAL_VERSION: u32 = 1;
/// How many lost actors `lost.json` remembers.
const LOST_KEPT: usize = 32;

/// What the worker is doing with its sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Serving traffic.
    Running,
    /// Freezing it into `snapshot_id` (the capture is under `.partial-`/`.quarantine-`).
    Checkpointing {
        snapshot_id: SnapshotId,
        destination: Destination,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        uri_prefix: Option<String>,
    },
    /// The sandbox is gone; `snapshot_id` is committed locally and being shipped.
    Pushing { snapshot_id: SnapshotId, uri_prefix: String },
}

/// The sandbox this worker runs (`active.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ActiveRecord {
    pub version: u32,
    pub actor: ActorRef,
    pub spec: WorkloadSpec,
    /// The backend's handle (empty in the `Pushing` phase: no sandbox is left).
    pub sandbox: SandboxHandle,
    pub work_dir: PathBuf,
    /// The loopback endpoint the forwarder serves the workload on.
    pub host_endpoint: SocketAddr,
    pub service_port: Option<u16>,
    #[serde(flatten)]
    pub phase: Phase,
}

/// An actor whose workload died while no worker process watched it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostActor {
    pub actor: ActorRef,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// Errors reading or writing the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is unreadable ({detail}); move it away to start the worker without adopting anything")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path} has layout version {found}; this ateom reads version {JOURNAL_VERSION}")]
    Version { path: PathBuf, found: u32 },
}

/// The journal directory of one worker.
#[derive(Clone, Debug)]
pub struct Journal {
    dir: PathBuf,
}

impl Journal {
    /// `<state>/worker` (created, mode 0700).
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = state_dir.join("worker");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| JournalError::Io { context: format!("creating {}", dir.display()), source })?;
        Ok(Self { dir })
    }

    fn active_path(&self) -> PathBuf {
        self.dir.join("active.json")
    }

    /// The recorded sandbox, if any.
    pub fn active(&self) -> Result<Option<ActiveRecord>, JournalError> {
        let path = self.active_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io { context: format!("reading {}", path.display()), source });
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| JournalError::Corrupt { path: path.clone(), detail: e.to_string() })?;
        let found = v.get("version").and_then(serde_json::Value::as_u64).unwrap_or(0) as u32;
        if found != JOURNAL_VERSION {
            return Err(JournalError::Version { path, found });
        }
        serde_json::from_value(v).map(Some).map_err(|e| JournalError::Corrupt { path, detail: e.to_string() })
    }

    /// Records the sandbox (replacing the previous record atomically).
    pub fn record(&self, rec: &ActiveRecord) -> Result<(), JournalError> {
        let path = self.active_path();
        let bytes = serde_json::to_vec_pretty(rec).expect("the record serializes");
        ateom_sys::atomic_write(&path, &bytes, 0o600)
            .map_err(|source| JournalError::Io { context: format!("writing {}", path.display()), source })
    }

    /// Forgets the sandbox (it is gone and nothing about it is pending).
    pub fn clear(&self) -> Result<(), JournalError> {
        let path = self.active_path();
        match std::fs::remove_file(&path) {
            Ok(()) => ateom_sys::sync_dir(&self.dir).map_err(|source| JournalError::Io {
                context: format!("syncing {}", self.dir.display()),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io { context: format!("removing {}", path.display()), source }),
        }
    }

    /// Actors found dead, oldest first.
    pub fn lost(&self) -> Vec<LostActor> {
        std::fs::read(self.dir.join("lost.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Remembers an actor found dead (the newest [`LOST_KEPT`] are kept).
    pub fn add_lost(&self, lost: LostActor) -> Result<(), JournalError> {
        let mut all = self.lost();
        all.push(lost);
        let excess = all.len().saturating_sub(LOST_KEPT);
        all.drain(..excess);
        let path = self.dir.join("lost.json");
        ateom_sys::atomic_write(&path, &serde_json::to_vec_pretty(&all).expect("serializes"), 0o600)
            .map_err(|source| JournalError::Io { context: format!("writing {}", path.display()), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: Phase) -> ActiveRecord {
        ActiveRecord {
            version: JOURNAL_VERSION,
            actor: ActorRef::parse("ns", "t", "a1").unwrap(),
            spec: WorkloadSpec { containers: vec![] },
            sandbox: SandboxHandle(serde_json::json!({"cid": "x", "pid": 7})),
            work_dir: "/state/actors/ns:t:a1/work".into(),
            host_endpoint: "127.0.0.1:4000".parse().unwrap(),
            service_port: Some(8080),
            phase,
        }
    }

    #[test]
    fn records_round_trip_through_every_phase() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        assert_eq!(j.active().unwrap(), None);
        let id = SnapshotId::parse("id", "20261128T000000.000-00000001").unwrap();
        for phase in [
            Phase::Running,
            Phase::Checkpointing {
                snapshot_id: id.clone(),
                destination: Destination::Local,
                uri_prefix: None,
            },
            Phase::Checkpointing {
                snapshot_id: id.clone(),
                destination: Destination::Durable,
                uri_prefix: Some("file:///b".into()),
            },
            Phase::Pushing { snapshot_id: id.clone(), uri_prefix: "s3://b/p".into() },
        ] {
            let r = record(phase);
            j.record(&r).unwrap();
            assert_eq!(j.active().unwrap(), Some(r));
        }
        j.clear().unwrap();
        j.clear().unwrap();
        assert_eq!(j.active().unwrap(), None);
    }

    #[test]
    fn a_damaged_or_foreign_record_is_an_error_not_a_guess() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("worker/active.json"), b"{\"version\":1,").unwrap();
        assert!(matches!(j.active(), Err(JournalError::Corrupt { .. })));
        std::fs::write(tmp.path().join("worker/active.json"), b"{\"version\":99}").unwrap();
        assert!(matches!(j.active(), Err(JournalError::Version { found: 99, .. })));
    }

    #[test]
    fn lost_actors_are_remembered_boundedly() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).unwrap();
        for i in 0..40 {
            j.add_lost(LostActor {
                actor: ActorRef::parse("ns", "t", &format!("a{i}")).unwrap(),
                reason: "dead".into(),
                at: "now".into(),
            })
            .unwrap();
        }
        let lost = j.lost();
        assert_eq!(lost.len(), LOST_KEPT);
        assert_eq!(lost.last().unwrap().actor.actor_id.as_str(), "a39");
    }
}
