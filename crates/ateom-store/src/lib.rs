//! # ateom-store: the snapshot store
//!
//! Ships a snapshot directory (a handful of files: a gVisor checkpoint image, a VM's memory
//! file and disk image, …) to object storage and brings it back on another node. Every
//! backend uses it; it knows nothing about backends. The caller's manifest travels as an
//! opaque JSON value (`meta`) inside the index.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ateom_store::StoreError> {
//! use ateom_store::Store;
//! let store = Store::open("file:///var/lib/ateom/store")?; // or s3://bucket/prefix, gs://, az://
//! let pushed = store
//!     .push_dir("/var/lib/ateom/snap/42".as_ref(), &["memory.img".into(), "vmstate".into()],
//!               "actor-7-gen-3", serde_json::json!({"backend": "firecracker"}))
//!     .await?;
//! println!("{} logical bytes stored as {}", pushed.logical_bytes, pushed.stored_bytes);
//! let pulled = store.pull(Some("actor-7-gen-3"), "/tmp/restore".as_ref()).await?;
//! assert_eq!(pulled.logical_bytes, pushed.logical_bytes);
//! # Ok(()) }
//! ```
//!
//! ## Locations
//!
//! [`Store::open`] takes a URI prefix through the `object_store` crate:
//! `file:///abs/dir` (a local directory standing in for a bucket; the embedded default),
//! `s3://bucket/prefix` (endpoint, region and credentials from `AWS_ENDPOINT_URL` /
//! `AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_ALLOW_HTTP=true` for a plain-http server), `gs://bucket/prefix` (`GOOGLE_*`;
//! an emulator such as fake-gcs-server is reached with the service-account key
//! `{"gcs_base_url":"http://127.0.0.1:P","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}`
//! in `GOOGLE_SERVICE_ACCOUNT_KEY` or the option `google_service_account_key`, see
//! `scripts/fake-gcs.sh`; fake-gcs-server does not implement the XML API's object PUT that
//! object_store uses for writes, so against it only reads, lists and deletes work),
//! `az://container/prefix` (`AZURE_*`). [`Store::open_with_options`] passes builder options
//! explicitly instead. The cloud schemes need the default `cloud` feature.
//!
//! ## Format, version 1
//!
//! ```text
//! <uri_prefix>/LATEST                          {"format":"ateom-snapshot-latest","version":1,"snapshot_id":"…"}
//! <uri_prefix>/<snapshot_id>/index.json        the index: written last; the snapshot exists iff it does
//! <uri_prefix>/<snapshot_id>/chunks/<sha256>   one zstd frame per distinct non-zero chunk
//! ```
//!
//! * Each artifact is cut into fixed-size chunks (default 1 MiB, a multiple of 4 KiB between
//!   4 KiB and 64 MiB, recorded in the index). The last chunk may be shorter.
//! * An all-zero chunk is **not stored**: its table entry says `"zero": true` and a reader
//!   leaves a hole there, so sparse files (VM memory) come back sparse.
//! * Every other chunk is compressed as **one independent zstd frame** (level 1 by default;
//!   the frame header records the content size) and stored as the object
//!   `chunks/<sha256 of the uncompressed chunk>`. Any chunk can be fetched and decoded alone,
//!   which is what a lazy, on-demand restore needs; `zstd -d` decodes any chunk object.
//! * The index (`index.json`, compact JSON) holds:
//!   `format` = `"ateom-snapshot-index"`, `version` = 1, `snapshot_id`, `created_unix_ms`,
//!   `chunk_size`, `compression` {`codec`: `"zstd"`, `level`}, `meta` (the caller's opaque
//!   JSON), and `artifacts`: for each, `name` (relative path), `size`, `sha256` (whole file),
//!   and `chunks`: `offset`, `length`, `zero`, `sha256` (of the uncompressed bytes; for a zero
//!   chunk that of `length` zero bytes), `key` (object key relative to the snapshot prefix)
//!   and `compressed_length` (both absent for zero chunks).
//! * Readers check (see [`SnapshotIndex::decode`]): the format name; the version (a newer
//!   one is reported as [`IndexError::UnsupportedVersion`], not as a parse error); the
//!   snapshot id; chunk size range; codec; artifact names are safe relative paths, distinct,
//!   and not nested in one another; each chunk table has exactly `ceil(size / chunk_size)`
//!   entries at offsets `i * chunk_size` with the right lengths; zero chunks name no object;
//!   non-zero chunks name a safe relative key and a compressed length in
//!   `1..=ZSTD_compressBound(length)`. Unknown fields are ignored (additive changes keep
//!   version 1; anything else bumps it). Digests are 64 lowercase hex characters.
//!
//! ### Why not zstd's seekable format
//!
//! The zstd "seekable format" (contrib/seekable_format) is also a sequence of independent
//! frames, followed by a seek table in a skippable frame. It was considered and not used:
//! it describes **one object per file**, so parallel upload needs multipart uploads, a
//! resumed upload cannot tell which parts are already stored, and random access needs a
//! range read of the trailing seek table before any data; it has **no notion of a hole**, so
//! zero regions still cost frames and a reader cannot leave holes without decoding them;
//! its per-frame checksum is an optional 32-bit XXH64 truncation, where restores here must
//! verify sha256 per chunk; and the `zstd` crate does not expose it. Our chunks keep its
//! essential property (independent standard frames), and the index plays the seek table's
//! role with holes and sha256 added.
//!
//! ### Why one object per chunk, named by content, per snapshot
//!
//! With 1 MiB chunks a 256 MiB memory image has at most 256 chunk objects (only its non-zero
//! ones are stored), so per-request overhead stays small next to the data. The size is a
//! trade-off measured with `ateom bench snapshot-store`: memory images have data scattered
//! between holes, and every byte of a data chunk is read, hashed and compressed, so 4 MiB
//! chunks read ~2.5x more of a sparse image than 1 MiB ones; much smaller chunks multiply
//! requests. In exchange for one object per chunk: chunks upload and download in
//! parallel with plain PUT/GET (no multipart, no range reads); a lazy restore fetches exactly
//! the object it needs; identical chunks inside a snapshot are stored once; and a rerun of an
//! interrupted push skips every chunk already present just by listing names. Packs would only
//! pay off for much smaller chunks. Chunks are scoped to their snapshot's prefix rather than a
//! store-wide pool: deleting or collecting a snapshot then touches only its own prefix, and
//! concurrent pushes of different snapshots never race on shared objects (a shared pool would
//! need store-wide reference counting that races with pushes on stores without conditional
//! writes). The index records each chunk's key, so a later version can point into a pool.
//!
//! ## Commit protocol
//!
//! * **push** ([`Store::push_dir`]): validate names; list what the snapshot prefix already
//!   holds; read each artifact sequentially in chunk-size reads; hash every chunk into the
//!   whole-file sha256 (own thread); for each non-zero chunk, sha256 it, skip it if
//!   `chunks/<sha256>` exists already or another chunk of this push has the same content, else
//!   compress it on the blocking pool and PUT it — at most `concurrency` chunks in flight, each
//!   remote operation retried per [`RetryPolicy`] (exponential backoff with jitter, bounded
//!   attempts, bounded total time, a timeout per attempt). Then PUT `index.json` — the commit
//!   point — then `LATEST`, then delete chunks of a replaced index that the new one does not
//!   use. PUTs are atomic, so a chunk object that exists is complete.
//! * An **interrupted push** leaves chunk objects and no index, so the snapshot does not
//!   exist: pulls say [`StoreError::NotFound`]. Rerunning the push with the same id finishes it,
//!   uploading only missing chunks. Pushing an id that already has an index **replaces** it:
//!   the old index stays valid until the new one is written.
//! * **pull** ([`Store::pull`]): read the index (missing: `NotFound`, "no such snapshot
//!   \<id\> under \<prefix\>"); check every table entry (see *What each digest covers*);
//!   create each file fresh as `<name>.ateom-partial` (a leftover there is removed, never
//!   written through) pre-sized with `set_len` (a hole); fetch non-zero chunks in parallel
//!   (bounded, retried), check the stored length, decode, check the decoded length and sha256
//!   (a mismatch is [`StoreError::CorruptChunk`] naming snapshot, artifact, chunk index and
//!   object key); write each chunk at its offset with `pwrite`, skipping its all-zero 4 KiB
//!   pages (so a file comes back as sparse as a page-granular source, not just
//!   chunk-granular); hash the artifact in file order and compare with its whole-file sha256;
//!   fsync; rename into place; fsync the directories.
//! * **`LATEST` never moves backwards.** After its index, a push writes `LATEST` only if
//!   `LATEST` does not already name a *newer* snapshot, newer meaning a larger snapshot id in
//!   byte order (ateom's ids, `<UTC yyyymmddThhmmss.mmm>-<hex>`, sort by age). So a slow push
//!   of an older snapshot that finishes late commits its snapshot and leaves `LATEST` alone
//!   ([`PushReport::latest`] / [`PushReport::latest_moved`] say what happened).
//!   [`PushOptions::force_latest`] moves it anyway. A `LATEST` that does not decode (or is too
//!   large) is replaced; one that cannot be read at all fails the push. This is
//!   read-then-write: two pushes racing on `LATEST` at the same moment can still end with the
//!   older one (object stores without conditional writes offer nothing better).
//! * **delete** ([`Store::delete`]): the index first (the snapshot stops existing), then
//!   `LATEST` if it names the snapshot, then the chunks.
//! * **gc** ([`Store::gc`]): lists, and optionally deletes, chunk objects under a prefix without
//!   an index whose newest object is older than the grace period, and chunk objects not
//!   referenced by their snapshot's index older than the grace period. The grace period must
//!   exceed the longest push: a running push looks like an abandoned one.
//!
//! ## What each digest covers
//!
//! Every pull verifies every byte it writes, whatever [`PullOptions`] say; nothing is
//! trusted because it was hashed before the push.
//!
//! | digest (in the index) | covers | checked on pull |
//! |---|---|---|
//! | chunk `sha256`, stored chunk | the chunk's `length` uncompressed bytes | after the object is fetched (its size checked against `compressed_length` first) and decoded: [`ChunkFault::StoredLength`], [`ChunkFault::Decode`], [`ChunkFault::DecodedLength`], [`ChunkFault::Digest`] as [`StoreError::CorruptChunk`] |
//! | chunk `sha256`, zero chunk | `length` zero bytes (what the hole reads as) | before any chunk moves: it must equal sha256 of `length` zeros, computed without I/O once per distinct length ([`ChunkFault::ZeroDigest`]); a stored chunk whose sha256 *is* that of zeros is refused too, since no writer stores zeros ([`ChunkFault::StoredZeros`]); both as [`StoreError::InconsistentChunk`] |
//! | artifact `sha256` | the whole file, holes included, in file order | while writing: fed from the decoded chunks and, for zero chunks, from a zero buffer in memory (holes are never read back from disk); a mismatch is [`StoreError::ArtifactDigestMismatch`] naming the artifact |
//!
//! The per-chunk checks guarantee each chunk is what its entry says; the whole-file digest
//! guarantees the entries themselves add up to the file that was pushed (a table altered
//! consistently — a data chunk turned into a hole with the zeros' digest, or a hole pointed at
//! another genuine chunk — passes every chunk check and fails this one). The whole-file pass
//! costs one in-memory sha256 over the logical size (zeros included: sha256 has no shortcut
//! for a run of zeros, but no I/O is needed for them). A caller that also holds the digests
//! (ateom: the snapshot manifest, whose whole-file and chunked sha256 it compares with the
//! index before pulling) thereby gets its manifest's bytes, or an error naming what differs.
//!
//! ## Bounded inputs
//!
//! Nothing read from the store can make a reader allocate more than a fixed bound: `LATEST`
//! at most [`index::MAX_LATEST_BYTES`], `index.json` at most [`index::MAX_INDEX_BYTES`], a
//! chunk object exactly its entry's `compressed_length` (itself at most zstd's bound for the
//! chunk length, at most 64 MiB). The object's size from the response (or the file's
//! metadata) is checked before its body is read, and a body that runs past the bound anyway
//! stops being read: [`StoreError::ObjectTooLarge`] naming the object and the limit (for a
//! chunk, [`ChunkFault::StoredLength`]).
//!
//! `file://` stores list and delete without following symbolic links: a symlink is not an
//! object (listings skip it), and a delete opens each directory from the store root with
//! `O_NOFOLLOW` and unlinks the last component (a link itself, never its target), refusing a
//! symlinked directory with [`StoreError::SymlinkInStore`]. So neither [`Store::delete`] nor
//! [`Store::gc`] can remove a file outside the store directory. (Reads and writes of objects
//! use object_store's `LocalFileSystem` as they are.)
//!
//! Concurrent pushes of the *same* id are not supported (the last index written wins, and its
//! stale-chunk cleanup may remove the other's chunks; a later pull then fails loudly).

mod admin;
mod chunk;
mod error;
pub mod index;
mod local;
mod location;
mod pull;
mod push;
mod retry;
pub mod sign;
mod store;

pub use admin::{DeleteReport, Garbage, GarbageReason, GcOptions, GcReport, SnapshotInfo};
pub use error::{ChunkFault, RemoteError, StoreError};
pub use index::{ArtifactEntry, ChunkEntry, Digest, IndexError, SnapshotIndex};
pub use retry::RetryPolicy;
pub use sign::SigningKeys;
pub use store::{
    DEFAULT_CHUNK_SIZE, DEFAULT_CONCURRENCY, DEFAULT_LEVEL, KnownChunks, Progress, PullOptions, PullReport,
    PushOptions, PushReport, Store, StoreConfig,
};
