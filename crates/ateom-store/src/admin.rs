//! Listing, deleting and garbage collection.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Serialize;

use crate::error::StoreError;
use crate::index::{INDEX_OBJECT, check_snapshot_id, parse_chunk_key};
use crate::push::relative;
use crate::retry::retry;
use crate::store::{Inner, Store, check_id, now_unix_ms};

/// A committed snapshot, as [`Store::list`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    pub snapshot_id: String,
    /// When the index object was written (store clock, ms since the Unix epoch).
    pub committed_unix_ms: i64,
    /// Size of the index object.
    pub index_bytes: u64,
}

/// What [`Store::delete`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DeleteReport {
    pub snapshot_id: String,
    /// The snapshot had an index (it existed, rather than being garbage of a failed push).
    pub had_index: bool,
    /// Objects removed, the index included.
    pub objects_deleted: u64,
    /// `LATEST` pointed at this snapshot and was removed.
    pub latest_removed: bool,
}

/// Options of [`Store::gc`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// Only objects at least this old count as garbage; for a prefix without an index, its
    /// *newest* object must be this old. Must exceed the longest push, since a push that is
    /// still running looks exactly like an abandoned one. Default: 1 hour.
    pub grace: Duration,
    /// Delete the garbage found (default false: only list it).
    pub delete: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions { grace: Duration::from_secs(3600), delete: false }
    }
}

/// Why an object is garbage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GarbageReason {
    /// A chunk under a snapshot prefix that has no index: an interrupted push.
    NoIndex,
    /// A chunk under a snapshot whose index does not reference it (a replaced index whose
    /// cleanup did not finish).
    Unreferenced,
}

/// One garbage object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Garbage {
    pub snapshot_id: String,
    /// Full object key.
    pub key: String,
    pub size: u64,
    pub age_ms: u64,
    pub reason: GarbageReason,
}

/// What [`Store::gc`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// Snapshot prefixes looked at.
    pub prefixes_scanned: u64,
    pub garbage: Vec<Garbage>,
    pub garbage_bytes: u64,
    /// Objects deleted (0 unless `delete` was set).
    pub deleted_objects: u64,
    /// Snapshots whose index exists but does not decode; nothing under them is touched.
    pub unreadable_indexes: Vec<String>,
}

impl Store {
    /// Snapshots that have an index, newest first (ties by id).
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        let inner = self.inner.clone();
        let ids = inner.snapshot_prefixes().await?;
        let heads = futures::stream::iter(ids)
            .map(|id| {
                let inner = inner.clone();
                async move {
                    let key = inner.index_key(&id);
                    match retry(&inner.config.retry, "head index", &key, || inner.store.head(&key)).await {
                        Ok(meta) => Ok(Some(SnapshotInfo {
                            snapshot_id: id,
                            committed_unix_ms: meta.last_modified.timestamp_millis(),
                            index_bytes: meta.size,
                        })),
                        Err(f) if f.is_not_found() => Ok(None),
                        Err(f) => Err(StoreError::from(f)),
                    }
                }
            })
            .buffer_unordered(inner.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        let mut out = Vec::new();
        for h in heads {
            if let Some(info) = h? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| {
            b.committed_unix_ms.cmp(&a.committed_unix_ms).then(a.snapshot_id.cmp(&b.snapshot_id))
        });
        Ok(out)
    }

    /// Delete a snapshot: the index first (from then on the snapshot does not exist), then
    /// `LATEST` if it names this snapshot, then every object under the snapshot prefix.
    /// `NotFound` if there was nothing at all.
    pub async fn delete(&self, snapshot_id: &str) -> Result<DeleteReport, StoreError> {
        check_id(snapshot_id)?;
        let inner = &self.inner;
        let mut report = DeleteReport { snapshot_id: snapshot_id.to_string(), ..DeleteReport::default() };
        report.had_index = inner.delete(&inner.index_key(snapshot_id)).await?;
        report.objects_deleted += u64::from(report.had_index);
        match inner.read_latest().await {
            Ok(latest) if latest == snapshot_id => {
                report.latest_removed = inner.delete(&inner.latest_key()).await?;
            }
            Ok(_) | Err(StoreError::NotFound { .. } | StoreError::CorruptLatest { .. }) => {}
            Err(e) => return Err(e),
        }
        let objects = inner.list_all(&inner.snapshot_dir(snapshot_id)).await?;
        report.objects_deleted += inner.delete_many(objects.into_iter().map(|o| o.location)).await?;
        if report.objects_deleted == 0 {
            return Err(inner.not_found(snapshot_id));
        }
        Ok(report)
    }

    /// Find (and with `opts.delete`, remove) garbage: chunks under snapshot prefixes without
    /// an index, and chunks an index does not reference, older than `opts.grace`. Only objects
    /// named like chunks (`<id>/chunks/<sha256>`) are ever considered, so foreign objects that
    /// share the prefix are left alone.
    pub async fn gc(&self, opts: &GcOptions) -> Result<GcReport, StoreError> {
        let inner = &self.inner;
        let now = now_unix_ms() as i64;
        let grace = opts.grace.as_millis() as i64;
        let mut report = GcReport::default();
        for id in inner.snapshot_prefixes().await? {
            report.prefixes_scanned += 1;
            let dir = inner.snapshot_dir(&id);
            let objects = inner.list_all(&dir).await?;
            let has_index = objects.iter().any(|o| relative(&dir, &o.location) == INDEX_OBJECT);
            let age = |o: &object_store::ObjectMeta| (now - o.last_modified.timestamp_millis()).max(0);
            let chunks = objects.iter().filter(|o| parse_chunk_key(&relative(&dir, &o.location)).is_some());
            let mut found: Vec<Garbage> = Vec::new();
            let mut push = |o: &object_store::ObjectMeta, reason| {
                found.push(Garbage {
                    snapshot_id: id.clone(),
                    key: o.location.to_string(),
                    size: o.size,
                    age_ms: age(o) as u64,
                    reason,
                })
            };
            if has_index {
                let index = match inner.read_index(&id).await {
                    Ok(i) => i,
                    Err(StoreError::CorruptIndex { .. }) => {
                        report.unreadable_indexes.push(id.clone());
                        continue;
                    }
                    // Deleted between the listing and now: nothing to judge.
                    Err(StoreError::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                };
                let referenced: HashSet<&str> = index
                    .artifacts
                    .iter()
                    .flat_map(|a| a.chunks.iter().filter_map(|c| c.key.as_deref()))
                    .collect();
                for o in chunks {
                    if !referenced.contains(relative(&dir, &o.location).as_str()) && age(o) >= grace {
                        push(o, GarbageReason::Unreferenced);
                    }
                }
            } else {
                // The prefix is abandoned only if *nothing* under it is recent.
                let youngest = objects.iter().map(age).min().unwrap_or(0);
                if youngest >= grace {
                    for o in chunks {
                        push(o, GarbageReason::NoIndex);
                    }
                }
            }
            if found.is_empty() {
                continue;
            }
            report.garbage_bytes += found.iter().map(|g| g.size).sum::<u64>();
            if opts.delete {
                // A push may have committed since the listing: look again right before deleting.
                let index_key = inner.index_key(&id);
                let committed = !has_index
                    && retry(&inner.config.retry, "head index", &index_key, || inner.store.head(&index_key))
                        .await
                        .is_ok();
                if !committed {
                    let keys: Vec<Path> = found.iter().map(|g| Path::from(g.key.as_str())).collect();
                    report.deleted_objects += inner.delete_many(keys.into_iter()).await?;
                }
            }
            report.garbage.extend(found);
        }
        Ok(report)
    }
}

impl Inner {
    /// Ids of the snapshot prefixes directly under the store prefix (with or without index).
    pub(crate) async fn snapshot_prefixes(&self) -> Result<Vec<String>, StoreError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listing =
            match retry(&self.config.retry, "list", &self.prefix, || self.store.list_with_delimiter(prefix))
                .await
            {
                Ok(l) => l,
                Err(f) if f.is_not_found() => return Ok(Vec::new()),
                Err(f) => return Err(f.into()),
            };
        let mut ids: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .filter(|id| check_snapshot_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Delete objects with bounded concurrency; returns how many existed.
    pub(crate) async fn delete_many(&self, keys: impl Iterator<Item = Path>) -> Result<u64, StoreError> {
        let results = futures::stream::iter(keys)
            .map(|k| async move { self.delete(&k).await })
            .buffer_unordered(self.config.concurrency)
            .collect::<Vec<_>>()
            .await;
        let mut n = 0;
        for r in results {
            n += u64::from(r?);
        }
        Ok(n)
    }
}
