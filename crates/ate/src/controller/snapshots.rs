//! Which snapshots of an actor exist and where: local ones on every worker of its pool
//! (`ListSnapshots`: complete or quarantined), its own durable ones (the object store under
//! its prefix), and the golden snapshot its record references. Used for `ate snapshots actor
//! NAME`, to find the snapshot of `--from-snapshot`, and for the reason of an actor whose
//! recorded snapshot is missing (which names the newest one that exists and its age).

use std::time::Duration;

use ate_core::snapshot::{Place, Seen};
use ate_core::store::TemplateRecord;
use ate_core::{Actor, Tier};
use serde::{Deserialize, Serialize};

use super::{Controller, CtlError, now_ms};

/// One existing snapshot of an actor, as `ate snapshots` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSnapshot {
    #[serde(flatten)]
    pub seen: Seen,
    /// Disk space it occupies (local snapshots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// What in the actor's record names it: `local`, `durable`, `intent`, `restored_from`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referenced_as: Vec<String>,
}

/// Every snapshot of an actor that could be found, newest first.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ActorSnapshots {
    pub actor: String,
    pub snapshots: Vec<ActorSnapshot>,
    /// Places that could not be asked (a worker that does not answer, the object store):
    /// snapshots there are missing from the list.
    #[serde(default)]
    pub unreachable: Vec<String>,
}

/// Where an explicitly chosen snapshot is.
pub(super) enum Found {
    /// The actor's own durable snapshot; `local_copy_on`: a worker holding it locally too.
    Durable { prefix: String, local_copy_on: Option<String> },
    /// The golden snapshot the actor's record references.
    Golden { prefix: String },
    /// A complete local snapshot on `worker`.
    Local { worker: String },
}

impl Controller {
    /// Every snapshot of `actor` that exists, newest first (`GET /v1/actors/<name>/snapshots`).
    pub async fn actor_snapshots(&self, actor: &str) -> Result<ActorSnapshots, CtlError> {
        let a = self.actor(actor).await?;
        let t = self.template(&a.value.template).await?;
        Ok(self.snapshots_of(&t.value, &a.value).await)
    }

    pub(super) async fn snapshots_of(&self, t: &TemplateRecord, a: &Actor) -> ActorSnapshots {
        let mut out = ActorSnapshots { actor: a.name.clone(), ..Default::default() };
        let home = a.local.as_ref().map(|l| l.worker.as_str());
        let workers: Vec<_> = match self.worker_records().await {
            Ok(ws) => ws
                .into_iter()
                .map(|w| w.value)
                .filter(|w| w.pool == t.spec.pool || Some(w.name.as_str()) == home)
                .collect(),
            Err(e) => {
                out.unreachable.push(format!("the worker list: {e}"));
                Vec::new()
            }
        };
        let timeout = Duration::from_secs(5);
        let answers = futures::future::join_all(workers.iter().map(|w| async move {
            self.workers.list_snapshots(&w.name, &w.target(), t, &a.name, timeout).await
        }))
        .await;
        for (w, answer) in workers.iter().zip(answers) {
            match answer {
                Ok(list) => out.snapshots.extend(list.into_iter().map(|s| ActorSnapshot {
                    seen: Seen {
                        id: s.id,
                        place: Place::Local { worker: w.name.clone(), quarantined: s.quarantined },
                        created_ms: s.created_ms,
                    },
                    bytes: Some(s.bytes),
                    referenced_as: Vec::new(),
                })),
                Err(e) => out.unreachable.push(format!("worker {}: {e}", w.name)),
            }
        }
        let prefix = t.actor_prefix(&a.name);
        match self.snapshot_store(&prefix) {
            Ok(store) => match store.list().await {
                Ok(list) => out.snapshots.extend(list.into_iter().map(|s| ActorSnapshot {
                    seen: Seen {
                        id: s.snapshot_id,
                        place: Place::Durable,
                        created_ms: u64::try_from(s.committed_unix_ms).ok(),
                    },
                    bytes: None,
                    referenced_as: Vec::new(),
                })),
                Err(e) => out.unreachable.push(format!("{prefix}: {e}")),
            },
            Err(e) => out.unreachable.push(e.to_string()),
        }
        if let Some(g) = a.durable.as_ref().filter(|d| d.tier == Tier::Golden) {
            let created = match self.snapshot_store(&g.prefix) {
                Ok(store) => store.read_index(&g.snapshot_id).await.ok().map(|i| i.created_unix_ms),
                Err(_) => None,
            };
            out.snapshots.push(ActorSnapshot {
                seen: Seen { id: g.snapshot_id.clone(), place: Place::Golden, created_ms: created },
                bytes: None,
                referenced_as: Vec::new(),
            });
        }
        for s in &mut out.snapshots {
            let id = s.seen.id.as_str();
            let mut refs = Vec::new();
            if a.local.as_ref().is_some_and(|l| {
                l.snapshot_id == id
                    && matches!(&s.seen.place, Place::Local { worker, .. } if *worker == l.worker)
            }) {
                refs.push("local".to_owned());
            }
            if a.durable.as_ref().is_some_and(|d| d.snapshot_id == id)
                && matches!(s.seen.place, Place::Durable | Place::Golden)
            {
                refs.push("durable".to_owned());
            }
            if a.intended_snapshot() == Some(id) {
                refs.push("intent".to_owned());
            }
            if a.restored_from.as_deref() == Some(id) {
                refs.push("restored_from".to_owned());
            }
            s.referenced_as = refs;
        }
        out.snapshots.sort_by(|x, y| (y.seen.created_ms, &y.seen.id).cmp(&(x.seen.created_ms, &x.seen.id)));
        out
    }

    /// The reason of an actor whose snapshot `id` (described by `what`) does not exist: it
    /// names the newest snapshot that does and its age (and what could not be asked).
    pub(super) async fn missing_reason(&self, t: &TemplateRecord, a: &Actor, id: &str, what: &str) -> String {
        let all = self.snapshots_of(t, a).await;
        let seen: Vec<Seen> = all.snapshots.iter().map(|s| s.seen.clone()).collect();
        let mut reason = if id.is_empty() {
            format!("{what}; {}", ate_core::snapshot::newest_hint(&a.name, &seen, now_ms(), false))
        } else {
            ate_core::snapshot::missing_reason(&a.name, what, id, &seen, now_ms())
        };
        if !all.unreachable.is_empty() {
            reason.push_str(&format!(" (not asked: {})", all.unreachable.join("; ")));
        }
        reason
    }

    /// Where snapshot `id` of the actor is (for `--from-snapshot`): its durable copy first (it
    /// restores on any fitting worker), then the golden one, then a complete local one.
    pub(super) async fn find_snapshot(
        &self,
        t: &TemplateRecord,
        a: &Actor,
        id: &str,
    ) -> Result<Found, CtlError> {
        let all = self.snapshots_of(t, a).await;
        let matching: Vec<&ActorSnapshot> = all.snapshots.iter().filter(|s| s.seen.id == id).collect();
        let local_complete = matching.iter().find_map(|s| match &s.seen.place {
            Place::Local { worker, quarantined: false } => Some(worker.clone()),
            _ => None,
        });
        if matching.iter().any(|s| s.seen.place == Place::Durable) {
            return Ok(Found::Durable { prefix: t.actor_prefix(&a.name), local_copy_on: local_complete });
        }
        if matching.iter().any(|s| s.seen.place == Place::Golden)
            && let Some(g) = &a.durable
        {
            return Ok(Found::Golden { prefix: g.prefix.clone() });
        }
        if let Some(worker) = local_complete {
            return Ok(Found::Local { worker });
        }
        if let Some(q) = matching.iter().find(|s| !s.seen.usable()) {
            return Err(CtlError::Conflict(format!(
                "snapshot {id} of actor {} is {}: captured but not committed; free space there, run `ateom snapshots recover`, then try again",
                a.name, q.seen.place
            )));
        }
        let ids: Vec<String> =
            all.snapshots.iter().map(|s| format!("{} ({})", s.seen.id, s.seen.place)).collect();
        let not_asked = if all.unreachable.is_empty() {
            String::new()
        } else {
            format!("; not asked: {}", all.unreachable.join("; "))
        };
        Err(CtlError::NotFound {
            what: "snapshot",
            name: format!(
                "{id} of actor {} (its snapshots: {}{not_asked}; see `ate snapshots actor {}`)",
                a.name,
                if ids.is_empty() { "none".into() } else { ids.join(", ") },
                a.name
            ),
        })
    }
}
