//! Pull: index -> chunk objects fetched in parallel, each verified -> positional writes into
//! pre-sized files (zero chunks stay holes) -> fsync -> rename into place.
//!
//! ```text
//! chunk table (file order) ──> buffered(concurrency): GET ─> length check ─> zstd decode
//!                                                     ─> sha256 check   (blocking pool)
//!                          ──(in order)──> writer thread: pwrite at offset, whole-file sha256,
//!                                          fsync at the end of each artifact
//! ```
//! `buffered` (not `buffer_unordered`) keeps results in file order with `concurrency` fetches
//! in flight, so the writer can hash each artifact as one stream without re-reading it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::chunk::{ZeroDigests, decode_verified, is_zero};
use crate::error::{ChunkFault, StoreError};
use crate::index::{Digest, PARTIAL_SUFFIX, SnapshotIndex};
use crate::store::{Bounded, Inner, PullOptions, PullReport, Store, check_id};

/// In-order work for the writer.
enum Item {
    Chunk { artifact: usize, offset: u64, len: u64, data: Option<Bytes> },
    EndArtifact { artifact: usize },
}

/// Removes the `.ateom-partial` files of a pull that did not finish (error or dropped future).
struct PartialFiles {
    paths: Vec<PathBuf>,
    armed: bool,
}

impl Drop for PartialFiles {
    fn drop(&mut self) {
        if self.armed {
            for p in &self.paths {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Store {
    /// Pull snapshot `snapshot_id` (`None`: the one `LATEST` names) into `dest_dir`, creating
    /// it. Each artifact is written to `<name>.ateom-partial`, verified, fsynced and renamed to
    /// `<name>`, so an interrupted pull never leaves a file that looks complete.
    pub async fn pull(&self, snapshot_id: Option<&str>, dest_dir: &FsPath) -> Result<PullReport, StoreError> {
        self.pull_with(snapshot_id, dest_dir, &PullOptions::default()).await
    }

    /// [`Store::pull`] with progress reporting and digest options.
    pub async fn pull_with(
        &self,
        snapshot_id: Option<&str>,
        dest_dir: &FsPath,
        opts: &PullOptions,
    ) -> Result<PullReport, StoreError> {
        let start = Instant::now();
        let inner = self.inner.clone();
        let id = match snapshot_id {
            Some(id) => {
                check_id(id)?;
                id.to_string()
            }
            None => inner.read_latest().await?,
        };
        let index = Arc::new(inner.read_index(&id).await?);
        // Every table entry is consistent before a byte moves (zero chunks are checked here,
        // with no I/O: the sha256 of a run of zeros is computed once per length).
        check_table(&index)?;

        // Pre-size every file: holes everywhere until a non-zero chunk is written.
        std::fs::create_dir_all(dest_dir).map_err(|e| StoreError::io(dest_dir, e))?;
        let mut partial = PartialFiles { paths: Vec::new(), armed: true };
        let mut files = Vec::with_capacity(index.artifacts.len());
        let mut finals = Vec::with_capacity(index.artifacts.len());
        for a in &index.artifacts {
            let path = dest_dir.join(&a.name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::io(parent, e))?;
            }
            let tmp = PathBuf::from(format!("{}{PARTIAL_SUFFIX}", path.display()));
            // Whatever a crashed pull left there (a file, a symlink) is removed, not written
            // through: the new file is created fresh, so every hole in it reads as zeros.
            match std::fs::remove_file(&tmp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::io(&tmp, e)),
                _ => {}
            }
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| StoreError::io(&tmp, e))?;
            partial.paths.push(tmp.clone());
            f.set_len(a.size).map_err(|e| StoreError::io(&tmp, e))?;
            files.push((tmp.clone(), f));
            finals.push((tmp, path));
        }

        let cfg = &inner.config;
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(cfg.concurrency);
        let writer = {
            let index = index.clone();
            tokio::task::spawn_blocking(move || write_all(&index, files, rx))
        };

        let mut report = PullReport { snapshot_id: id.clone(), ..PullReport::default() };
        let total = index.logical_bytes();
        report.logical_bytes = total;
        if let Some(p) = &opts.progress {
            p.update(0, total);
        }
        let cpu = Arc::new(Semaphore::new(cfg.cpu_workers));
        // A plain Vec (not a borrowing iterator chain) keeps this future `Send` for callers
        // that spawn it (rustc cannot prove higher-ranked lifetimes through nested closures).
        let mut work: Vec<(usize, Option<usize>)> = Vec::new();
        for (ai, a) in index.artifacts.iter().enumerate() {
            work.extend((0..a.chunks.len()).map(|ci| (ai, Some(ci))));
            work.push((ai, None));
        }
        let mut items = futures::stream::iter(work)
            .map(|(ai, ci)| {
                let inner = inner.clone();
                let index = index.clone();
                let cpu = cpu.clone();
                let id = id.clone();
                async move {
                    match ci {
                        None => Ok(Item::EndArtifact { artifact: ai }),
                        Some(ci) => fetch_chunk(&inner, &index, &id, ai, ci, &cpu).await,
                    }
                }
            })
            .buffered(cfg.concurrency);
        let mut done = 0u64;
        let mut send_failed = false;
        while let Some(item) = items.try_next().await? {
            if let Item::Chunk { len, data, .. } = &item {
                report.chunks_total += 1;
                done += len;
                match data {
                    None => report.chunks_zero += 1,
                    Some(_) => report.chunks_fetched += 1,
                }
            }
            if tx.send(item).await.is_err() {
                send_failed = true; // the writer stopped: its error is below
                break;
            }
            if let Some(p) = &opts.progress {
                p.update(done, total);
            }
        }
        drop(items);
        drop(tx);
        writer.await.map_err(|source| StoreError::Task { what: "writer", source })??;
        if send_failed {
            return Err(StoreError::Io {
                path: dest_dir.to_path_buf(),
                source: std::io::Error::other("writer stopped early"),
            });
        }

        // Everything is verified and fsynced: move files into place, then fsync directories.
        let mut dirs = Vec::new();
        for (tmp, path) in &finals {
            std::fs::rename(tmp, path).map_err(|e| StoreError::io(path, e))?;
            let parent = path.parent().unwrap_or(dest_dir);
            if !dirs.contains(&parent) {
                dirs.push(parent);
            }
        }
        partial.armed = false;
        for d in dirs {
            File::open(d).and_then(|f| f.sync_all()).map_err(|e| StoreError::io(d, e))?;
        }
        report.stored_bytes = index.stored_bytes();
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            store = %inner.display,
            snapshot = %id,
            logical_bytes = report.logical_bytes,
            stored_bytes = report.stored_bytes,
            chunks = report.chunks_total,
            zero = report.chunks_zero,
            elapsed_ms = report.elapsed_ms,
            "snapshot pulled"
        );
        Ok(report)
    }
}

/// GET one chunk object and decode it, checking stored length, decoded length and sha256.
async fn fetch_chunk(
    inner: &Inner,
    index: &SnapshotIndex,
    id: &str,
    ai: usize,
    ci: usize,
    cpu: &Semaphore,
) -> Result<Item, StoreError> {
    let artifact = &index.artifacts[ai];
    let c = &artifact.chunks[ci];
    let item = |data| Item::Chunk { artifact: ai, offset: c.offset, len: c.length, data };
    let (Some(rel), Some(clen)) = (&c.key, c.compressed_length) else {
        return Ok(item(None)); // zero chunk (validated: zero <=> no object)
    };
    let key = inner.key(&format!("{id}/{rel}"));
    let corrupt = |fault| StoreError::CorruptChunk {
        id: id.to_string(),
        artifact: artifact.name.clone(),
        chunk: ci,
        key: key.to_string(),
        fault: Box::new(fault),
    };
    // At most `clen` bytes are read: a larger object is refused from its size alone.
    let stored = match inner.get_bounded("get chunk", &key, clen).await {
        Ok(Bounded::Bytes(b)) => b,
        Ok(Bounded::TooLarge { size, .. }) => {
            return Err(corrupt(ChunkFault::StoredLength { expected: clen, actual: size }));
        }
        Err(f) if f.is_not_found() => {
            return Err(StoreError::MissingChunk {
                id: id.to_string(),
                artifact: artifact.name.clone(),
                chunk: ci,
                key: key.to_string(),
            });
        }
        Err(f) => return Err(f.into()),
    };
    if stored.len() as u64 != clen {
        return Err(corrupt(ChunkFault::StoredLength { expected: clen, actual: stored.len() as u64 }));
    }
    let (length, sha) = (c.length, c.sha256);
    let decoded = {
        let _permit = cpu.acquire().await.ok();
        tokio::task::spawn_blocking(move || decode_verified(&stored, length, &sha))
            .await
            .map_err(|source| StoreError::Task { what: "decode", source })?
    };
    decoded.map(|d| item(Some(Bytes::from(d)))).map_err(corrupt)
}

/// Refuse a chunk table whose entries contradict themselves: a zero chunk (nothing stored, a
/// hole) must carry the sha256 of its length in zeros, and a stored chunk must not (no writer
/// stores zeros). Together with each fetched chunk's own check, every chunk of the table is
/// then verified, holes included; no I/O, one zero digest per distinct length.
fn check_table(index: &SnapshotIndex) -> Result<(), StoreError> {
    let zeros = ZeroDigests::default();
    for a in &index.artifacts {
        for (ci, c) in a.chunks.iter().enumerate() {
            let z = zeros.get(c.length);
            let fault = match (c.zero, c.sha256 == z) {
                (true, false) => ChunkFault::ZeroDigest {
                    expected: c.sha256.to_hex(),
                    zeros: z.to_hex(),
                    length: c.length,
                },
                (false, true) => ChunkFault::StoredZeros { length: c.length },
                _ => continue,
            };
            return Err(StoreError::InconsistentChunk {
                id: index.snapshot_id.clone(),
                artifact: a.name.clone(),
                chunk: ci,
                fault: Box::new(fault),
            });
        }
    }
    Ok(())
}

/// Write items in file order: pwrite non-zero chunks, hash (zeros included, from memory: holes
/// are never read back), fsync and check the whole-file digest at the end of each artifact.
fn write_all(
    index: &SnapshotIndex,
    files: Vec<(PathBuf, File)>,
    mut rx: tokio::sync::mpsc::Receiver<Item>,
) -> Result<(), StoreError> {
    let zeros = vec![0u8; index.chunk_size as usize];
    let mut hasher = Sha256::new();
    while let Some(item) = rx.blocking_recv() {
        match item {
            Item::Chunk { artifact, offset, len, data } => {
                let (path, file) = &files[artifact];
                match data {
                    Some(d) => {
                        write_sparse(file, &d, offset).map_err(|e| StoreError::io(path, e))?;
                        hasher.update(&d);
                    }
                    None => hasher.update(&zeros[..len as usize]),
                }
            }
            Item::EndArtifact { artifact } => {
                let (path, file) = &files[artifact];
                file.sync_all().map_err(|e| StoreError::io(path, e))?;
                let actual = Digest(std::mem::take(&mut hasher).finalize().into());
                let a = &index.artifacts[artifact];
                if actual != a.sha256 {
                    return Err(StoreError::ArtifactDigestMismatch {
                        id: index.snapshot_id.clone(),
                        artifact: a.name.clone(),
                        expected: a.sha256.to_hex(),
                        actual: actual.to_hex(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Write `data` at `offset`, skipping all-zero 4 KiB pages so that they stay holes: a chunk
/// with a few touched pages of a memory image allocates only those pages.
fn write_sparse(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    const PAGE: usize = 4096;
    let mut run_start: Option<usize> = None;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + PAGE).min(data.len());
        let zero = is_zero(&data[pos..end]);
        match (zero, run_start) {
            (false, None) => run_start = Some(pos),
            (true, Some(start)) => {
                file.write_all_at(&data[start..pos], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
        pos = end;
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
    }
    Ok(())
}
