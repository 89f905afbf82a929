//! Push: local snapshot directory -> chunk objects -> index -> LATEST.
//!
//! Pipeline (memory stays bounded by `2 * concurrency` chunks):
//!
//! ```text
//! reader thread ──(chunk bytes, in order)──> hasher thread      (whole-file sha256;
//!      │                                      several readers, every n-th chunk each,
//!      │                                      when every whole-file digest is known)
//!      │
//!      └──(non-zero chunks)──> buffer_unordered(concurrency):
//!                                sha256 (unless known) ─> skip if present ─> zstd ─> PUT chunks/<sha256>
//!                                (hash / compress on the blocking pool, at most cpu_workers at once)
//! then: PUT index.json, PUT LATEST, DELETE chunks of a replaced index that are no longer used
//! ```

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest as _, Sha256};
use tokio::sync::Semaphore;

use crate::chunk::{ZeroDigests, compress, is_zero};
use crate::error::StoreError;
use crate::index::{
    ArtifactEntry, ChunkEntry, Compression, Digest, INDEX_FORMAT, INDEX_OBJECT, INDEX_VERSION, IndexError,
    LatestPointer, SnapshotIndex, check_artifact_names, chunk_key, max_compressed_len, parse_chunk_key,
};
use crate::store::{Inner, PushOptions, PushReport, Store, check_id, now_unix_ms};

/// One chunk read from an artifact.
struct Piece {
    artifact: usize,
    chunk: usize,
    offset: u64,
    len: u64,
    /// `None` for an all-zero chunk.
    data: Option<Bytes>,
}

/// Messages to the whole-file hasher, in file order.
enum HashMsg {
    Data(Bytes),
    Zeros(usize),
    EndArtifact,
}

/// What happened to one chunk.
enum Outcome {
    Zero,
    Uploaded {
        clen: u64,
    },
    SkippedExisting {
        clen: u64,
    },
    /// Same content as another chunk of this push; its length is filled in at the end.
    Duplicate,
}

struct Done {
    artifact: usize,
    chunk: usize,
    offset: u64,
    len: u64,
    digest: Digest,
    outcome: Outcome,
}

/// State shared by the chunk workers of one push.
struct Ctx {
    inner: Arc<Inner>,
    id: String,
    names: Vec<String>,
    existing: HashMap<Digest, u64>,
    claimed: Mutex<HashSet<Digest>>,
    cpu: Semaphore,
    zeros: ZeroDigests,
    /// Per artifact: chunk digests the caller vouches for (see `PushOptions`).
    known_chunks: Vec<Option<Vec<Digest>>>,
}

impl Store {
    /// Push the files `artifacts` (paths relative to `local_dir`) as snapshot `snapshot_id`,
    /// with `meta` stored verbatim in the index. See the crate docs for the commit protocol.
    pub async fn push_dir(
        &self,
        local_dir: &FsPath,
        artifacts: &[String],
        snapshot_id: &str,
        meta: serde_json::Value,
    ) -> Result<PushReport, StoreError> {
        self.push_dir_with(local_dir, artifacts, snapshot_id, meta, &PushOptions::default()).await
    }

    /// [`Store::push_dir`] with progress reporting and LATEST control.
    pub async fn push_dir_with(
        &self,
        local_dir: &FsPath,
        artifacts: &[String],
        snapshot_id: &str,
        meta: serde_json::Value,
        opts: &PushOptions,
    ) -> Result<PushReport, StoreError> {
        let start = Instant::now();
        let inner = self.inner.clone();
        let cfg = inner.config.clone();
        check_id(snapshot_id)?;
        check_artifact_names(artifacts.iter().map(String::as_str)).map_err(|e| match e {
            IndexError::ArtifactName { name, reason } => StoreError::InvalidArtifactName { name, reason },
            other => StoreError::InvalidArtifactName {
                name: match other {
                    IndexError::ArtifactConflict { name } => name,
                    _ => String::new(),
                },
                reason: "repeated, or a path inside another artifact",
            },
        })?;

        // Open every file first so that a missing artifact fails before anything is uploaded.
        let mut files = Vec::with_capacity(artifacts.len());
        for name in artifacts {
            let path = local_dir.join(name);
            let file = File::open(&path).map_err(|e| StoreError::io(&path, e))?;
            let md = file.metadata().map_err(|e| StoreError::io(&path, e))?;
            if !md.is_file() {
                return Err(StoreError::NotAFile { path });
            }
            files.push((path, file, md.len()));
        }
        let sizes: Vec<u64> = files.iter().map(|f| f.2).collect();
        let total: u64 = sizes.iter().sum();

        // What an earlier (interrupted or replaced) push of this id left behind.
        let dir = inner.snapshot_dir(snapshot_id);
        let mut existing = HashMap::new();
        let mut had_index = false;
        for o in inner.list_all(&dir).await? {
            let rel = relative(&dir, &o.location);
            if rel == INDEX_OBJECT {
                had_index = true;
            } else if let Some(d) = parse_chunk_key(&rel) {
                existing.insert(d, o.size);
            }
        }

        let known_chunks = artifacts
            .iter()
            .zip(&sizes)
            .map(|(name, size)| {
                opts.known_chunk_digests
                    .get(name)
                    .filter(|k| {
                        k.chunk_size == cfg.chunk_size
                            && k.digests.len() as u64 == size.div_ceil(cfg.chunk_size)
                    })
                    .map(|k| k.digests.clone())
            })
            .collect();
        let ctx = Arc::new(Ctx {
            inner: inner.clone(),
            id: snapshot_id.to_string(),
            names: artifacts.to_vec(),
            existing,
            claimed: Mutex::new(HashSet::new()),
            cpu: Semaphore::new(cfg.cpu_workers),
            zeros: ZeroDigests::default(),
            known_chunks,
        });

        let mut known: Vec<Option<Digest>> = Vec::with_capacity(artifacts.len());
        for name in artifacts {
            known.push(match opts.known_digests.get(name) {
                None => None,
                Some(hex) => Some(hex.parse::<Digest>().map_err(|_| {
                    StoreError::InvalidConfig(format!("known digest for {name:?} is not a sha256: {hex:?}"))
                })?),
            });
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(cfg.concurrency);
        let chunk_size = cfg.chunk_size;
        // With every whole-file digest known nothing needs the bytes in file order: several
        // readers take every n-th chunk (reading and zero-checking a file that is not sparse
        // is the bulk of the work then). Otherwise one reader feeds the whole-file hasher.
        let files = Arc::new(files);
        let (readers, hasher) = if known.iter().all(Option::is_some) {
            let n = cfg.cpu_workers.clamp(1, 4);
            let readers: Vec<_> = (0..n)
                .map(|r| {
                    let (files, tx) = (files.clone(), tx.clone());
                    tokio::task::spawn_blocking(move || read_all(&files, chunk_size, (r, n), &tx, None))
                })
                .collect();
            (readers, None)
        } else {
            let (htx, hrx) = std::sync::mpsc::sync_channel::<HashMsg>(cfg.concurrency);
            let tx = tx.clone();
            let reader =
                tokio::task::spawn_blocking(move || read_all(&files, chunk_size, (0, 1), &tx, Some(&htx)));
            let skip: Vec<bool> = known.iter().map(Option::is_some).collect();
            (vec![reader], Some(tokio::task::spawn_blocking(move || hash_all(hrx, skip))))
        };
        drop(tx);

        let mut tables: Vec<Vec<Option<Done>>> =
            sizes.iter().map(|s| (0..s.div_ceil(chunk_size)).map(|_| None).collect()).collect();
        let done_bytes = AtomicU64::new(0);
        if let Some(p) = &opts.progress {
            p.update(0, total);
        }
        let pieces = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut results = pieces
            .map(|piece| {
                let ctx = ctx.clone();
                async move { process(&ctx, piece).await }
            })
            .buffer_unordered(cfg.concurrency);
        while let Some(done) = results.try_next().await? {
            let d = done_bytes.fetch_add(done.len, Ordering::Relaxed) + done.len;
            if let Some(p) = &opts.progress {
                p.update(d, total);
            }
            if let Some(slot) = tables.get_mut(done.artifact).and_then(|t| t.get_mut(done.chunk)) {
                *slot = Some(done);
            }
        }
        drop(results);
        for reader in readers {
            reader.await.map_err(|source| StoreError::Task { what: "reader", source })??;
        }
        let digests = match hasher {
            Some(h) => h.await.map_err(|source| StoreError::Task { what: "hasher", source })?,
            None => Vec::new(),
        };

        // Assemble the index.
        let mut lengths: HashMap<Digest, u64> = HashMap::new();
        let mut report = PushReport { snapshot_id: snapshot_id.to_string(), ..PushReport::default() };
        for d in tables.iter().flatten().flatten() {
            report.chunks_total += 1;
            match d.outcome {
                Outcome::Zero => report.chunks_zero += 1,
                Outcome::Uploaded { clen } => {
                    report.chunks_uploaded += 1;
                    report.uploaded_bytes += clen;
                    lengths.insert(d.digest, clen);
                }
                Outcome::SkippedExisting { clen } => {
                    report.chunks_skipped_existing += 1;
                    lengths.insert(d.digest, clen);
                }
                Outcome::Duplicate => report.chunks_deduplicated += 1,
            }
        }
        report.stored_bytes = lengths.values().sum();
        let mut entries = Vec::with_capacity(artifacts.len());
        for (i, table) in tables.into_iter().enumerate() {
            let mut chunks = Vec::with_capacity(table.len());
            for (c, slot) in table.into_iter().enumerate() {
                // The reader finished without error, so every slot was filled; anything else
                // is a bug worth an error rather than a panic.
                let d = slot.ok_or_else(|| StoreError::ArtifactChanged {
                    path: local_dir.join(&artifacts[i]),
                    expected: sizes[i],
                    actual: c as u64 * chunk_size,
                })?;
                let zero = matches!(d.outcome, Outcome::Zero);
                let clen = if zero { None } else { lengths.get(&d.digest).copied() };
                chunks.push(ChunkEntry {
                    offset: d.offset,
                    length: d.len,
                    zero,
                    sha256: d.digest,
                    key: (!zero).then(|| chunk_key(&d.digest)),
                    compressed_length: clen,
                });
            }
            let sha256 =
                known[i].or_else(|| digests.get(i).copied()).ok_or_else(|| StoreError::ArtifactChanged {
                    path: local_dir.join(&artifacts[i]),
                    expected: sizes[i],
                    actual: 0,
                })?;
            entries.push(ArtifactEntry { name: artifacts[i].clone(), size: sizes[i], sha256, chunks });
        }
        let index = SnapshotIndex {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            snapshot_id: snapshot_id.to_string(),
            created_unix_ms: now_unix_ms(),
            chunk_size,
            compression: Compression { codec: crate::index::CODEC_ZSTD.into(), level: cfg.compression_level },
            artifacts: entries,
            meta,
            signature: None,
        };
        let index = match &cfg.signing {
            Some(keys) => {
                let sig = keys.sign(crate::sign::INDEX_DOMAIN, &inner.display, &index.encode()?);
                SnapshotIndex { signature: Some(sig), ..index }
            }
            None => index,
        };
        let encoded = index.encode()?;
        report.index_bytes = encoded.len() as u64;
        report.logical_bytes = total;

        // Commit point: the index is written last.
        inner.put("put index", &inner.index_key(snapshot_id), Bytes::from(encoded)).await?;
        if opts.update_latest {
            report.latest = Some(update_latest(&inner, snapshot_id, opts.force_latest).await?);
            report.latest_moved = report.latest.as_deref() == Some(snapshot_id);
        }

        // Chunks that a replaced index (or an abandoned push) left and the new index does not
        // use. Failures only leave garbage that `gc` reports, so they are logged, not raised.
        report.replaced_existing = had_index;
        let stale: Vec<Digest> = ctx.existing.keys().filter(|d| !lengths.contains_key(*d)).copied().collect();
        let removed = futures::stream::iter(stale)
            .map(|d| {
                let inner = inner.clone();
                let key = inner.key(&format!("{snapshot_id}/{}", chunk_key(&d)));
                async move {
                    match inner.delete(&key).await {
                        Ok(deleted) => u64::from(deleted),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not remove stale chunk; gc will report it");
                            0
                        }
                    }
                }
            })
            .buffer_unordered(cfg.concurrency)
            .fold(0u64, |acc, n| async move { acc + n })
            .await;
        report.stale_chunks_removed = removed;
        report.elapsed_ms = start.elapsed().as_millis() as u64;
        tracing::info!(
            store = %inner.display,
            snapshot = snapshot_id,
            logical_bytes = report.logical_bytes,
            stored_bytes = report.stored_bytes,
            uploaded_bytes = report.uploaded_bytes,
            chunks = report.chunks_total,
            zero = report.chunks_zero,
            uploaded = report.chunks_uploaded,
            skipped = report.chunks_skipped_existing,
            elapsed_ms = report.elapsed_ms,
            "snapshot pushed"
        );
        Ok(report)
    }
}

/// Point `LATEST` at `id` unless it names a newer snapshot (a larger id: see the crate docs)
/// and `force` is off. Returns the id `LATEST` names afterwards. A `LATEST` that is missing,
/// does not decode or is too large is (re)written; one that cannot be read at all (after
/// retries) fails the push, since nothing can be said about it.
///
/// Read-then-write: two pushes of different snapshots racing here can still both write, the
/// later write winning (object stores without conditional writes offer nothing better).
async fn update_latest(inner: &Inner, id: &str, force: bool) -> Result<String, StoreError> {
    if !force {
        match inner.read_latest().await {
            Ok(current) if current.as_str() > id => {
                tracing::warn!(
                    store = %inner.display,
                    snapshot = id,
                    latest = %current,
                    "LATEST names a newer snapshot; not moving it backwards (push with force_latest to do so)"
                );
                return Ok(current);
            }
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e @ (StoreError::CorruptLatest { .. } | StoreError::ObjectTooLarge { .. })) => {
                tracing::warn!(store = %inner.display, error = %e, "replacing an unreadable LATEST pointer");
            }
            Err(e) => return Err(e),
        }
    }
    let mut pointer = LatestPointer::new(id);
    if let Some(keys) = &inner.config.signing {
        pointer.signature = Some(keys.sign(crate::sign::LATEST_DOMAIN, &inner.display, id.as_bytes()));
    }
    let ptr = serde_json::to_vec(&pointer).map_err(StoreError::EncodeIndex)?;
    inner.put("put LATEST", &inner.latest_key(), Bytes::from(ptr)).await?;
    Ok(id.to_string())
}

/// The key of `location` relative to `dir` (`chunks/<hex>`, `index.json`, …).
pub(crate) fn relative(dir: &object_store::path::Path, location: &object_store::path::Path) -> String {
    match location.prefix_match(dir) {
        Some(parts) => parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"),
        None => location.to_string(),
    }
}

/// Read the chunks `stride.0`, `stride.0 + stride.1`, ... of every artifact (all of them, in
/// order, for `(0, 1)`) in chunk-size reads into one reused buffer; send non-zero chunks
/// (copied out) to the workers and, with a hasher, every chunk to it (zero chunks as a length,
/// so a mostly-zero memory image costs no allocation per chunk). Returns early (quietly) when
/// the push was dropped.
fn read_all(
    files: &[(PathBuf, File, u64)],
    chunk_size: u64,
    stride: (usize, usize),
    tx: &tokio::sync::mpsc::Sender<Piece>,
    htx: Option<&std::sync::mpsc::SyncSender<HashMsg>>,
) -> Result<(), StoreError> {
    let hash = |msg: HashMsg| htx.is_none_or(|h| h.send(msg).is_ok());
    let (first, step) = (stride.0, stride.1.max(1));
    let mut scratch = Vec::new();
    for (artifact, (path, file, size)) in files.iter().enumerate() {
        let size = *size;
        let want = size.min(chunk_size) as usize;
        if scratch.len() < want {
            scratch
                .try_reserve_exact(want - scratch.len())
                .map_err(|e| StoreError::io(path, std::io::Error::new(std::io::ErrorKind::OutOfMemory, e)))?;
            scratch.resize(want, 0);
        }
        let mut chunk = first;
        // Where the next data starts (holes before it need not be read: they are zeros).
        let mut next_data = next_data_offset(file, 0, size);
        loop {
            let offset = chunk as u64 * chunk_size;
            if offset >= size {
                break;
            }
            let len = (size - offset).min(chunk_size) as usize;
            if next_data < offset {
                next_data = next_data_offset(file, offset, size);
            }
            if next_data >= offset + len as u64 {
                // The whole chunk lies in a hole: an all-zero chunk, nothing to read.
                if !hash(HashMsg::Zeros(len)) {
                    return Ok(());
                }
                let piece = Piece { artifact, chunk, offset, len: len as u64, data: None };
                if tx.blocking_send(piece).is_err() {
                    return Ok(());
                }
                chunk += step;
                continue;
            }
            let buf = &mut scratch[..len];
            let mut filled = 0;
            while filled < len {
                match file.read_at(&mut buf[filled..], offset + filled as u64) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(StoreError::io(path, e)),
                }
            }
            if filled < len {
                return Err(StoreError::ArtifactChanged {
                    path: path.clone(),
                    expected: size,
                    actual: offset + filled as u64,
                });
            }
            let (hash_msg, data) = if is_zero(buf) {
                (HashMsg::Zeros(len), None)
            } else {
                let bytes = Bytes::copy_from_slice(buf);
                (HashMsg::Data(bytes.clone()), Some(bytes))
            };
            if !hash(hash_msg) {
                return Ok(());
            }
            let piece = Piece { artifact, chunk, offset, len: len as u64, data };
            if tx.blocking_send(piece).is_err() {
                return Ok(()); // push dropped or failed
            }
            chunk += step;
        }
        if !hash(HashMsg::EndArtifact) {
            return Ok(());
        }
    }
    Ok(())
}

/// The first offset at or after `from` where `file` has data (`SEEK_DATA`), or `size` when
/// only a hole follows. File systems without hole reporting say "data everywhere", which
/// just means every chunk is read.
fn next_data_offset(file: &File, from: u64, size: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let Ok(from_off) = libc::off_t::try_from(from) else { return from };
    // SAFETY: lseek on a file descriptor we own; it does not touch memory.
    let r = unsafe { libc::lseek(file.as_raw_fd(), from_off, libc::SEEK_DATA) };
    if r < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) { size } else { from }
    } else {
        r as u64
    }
}

/// Whole-file sha256 of each artifact, fed in file order; artifacts marked in `skip` get
/// a placeholder (their digest is known).
fn hash_all(rx: std::sync::mpsc::Receiver<HashMsg>, skip: Vec<bool>) -> Vec<Digest> {
    let zeros = [0u8; 64 << 10];
    let mut out = Vec::with_capacity(skip.len());
    let mut h = Sha256::new();
    let skipping = |out: &Vec<Digest>| skip.get(out.len()).copied().unwrap_or(false);
    while let Ok(msg) = rx.recv() {
        match msg {
            HashMsg::Data(_) | HashMsg::Zeros(_) if skipping(&out) => {}
            HashMsg::Data(b) => h.update(&b),
            HashMsg::Zeros(mut len) => {
                while len > 0 {
                    let n = len.min(zeros.len());
                    h.update(&zeros[..n]);
                    len -= n;
                }
            }
            HashMsg::EndArtifact => out.push(Digest(std::mem::take(&mut h).finalize().into())),
        }
    }
    out
}

async fn process(ctx: &Ctx, piece: Piece) -> Result<Done, StoreError> {
    let Piece { artifact, chunk, offset, len, data } = piece;
    let done = |digest, outcome| Done { artifact, chunk, offset, len, digest, outcome };
    let Some(data) = data else {
        return Ok(done(ctx.zeros.get(len), Outcome::Zero));
    };
    let known = ctx.known_chunks.get(artifact).and_then(Option::as_ref).and_then(|k| k.get(chunk));
    let digest = match known {
        Some(d) => *d,
        None => {
            let _permit = ctx.cpu.acquire().await.ok();
            let d = data.clone();
            tokio::task::spawn_blocking(move || Digest::of(&d))
                .await
                .map_err(|source| StoreError::Task { what: "hash", source })?
        }
    };
    if !ctx.claimed.lock().unwrap_or_else(|p| p.into_inner()).insert(digest) {
        return Ok(done(digest, Outcome::Duplicate));
    }
    if let Some(&size) = ctx.existing.get(&digest) {
        // A chunk object is written with one atomic PUT, so one that is present is complete;
        // its size is only sanity-checked here (every pull verifies the content anyway).
        if size > 0 && size <= max_compressed_len(len) {
            return Ok(done(digest, Outcome::SkippedExisting { clen: size }));
        }
    }
    let level = ctx.inner.config.compression_level;
    let compressed = {
        let _permit = ctx.cpu.acquire().await.ok();
        tokio::task::spawn_blocking(move || compress(&data, level))
            .await
            .map_err(|source| StoreError::Task { what: "compress", source })?
            .map_err(|source| StoreError::Compress {
                artifact: ctx.names.get(artifact).cloned().unwrap_or_default(),
                chunk,
                source,
            })?
    };
    let clen = compressed.len() as u64;
    let key = ctx.inner.key(&format!("{}/{}", ctx.id, chunk_key(&digest)));
    ctx.inner.put("put chunk", &key, Bytes::from(compressed)).await?;
    Ok(done(digest, Outcome::Uploaded { clen }))
}
