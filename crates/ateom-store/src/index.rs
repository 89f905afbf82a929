//! The snapshot index (format version 1): types, encoder and the validating decoder.
//!
//! [`SnapshotIndex::decode`] is the only way bytes from the store become an index; it never
//! panics and rejects anything a v1 writer would not produce (see the crate docs for the
//! rules). It is the target of the `index_decode` fuzzer.

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Value of the index's `format` field.
pub const INDEX_FORMAT: &str = "ateom-snapshot-index";
/// The index version this build writes and reads.
pub const INDEX_VERSION: u32 = 1;
/// Name of the index object inside a snapshot prefix.
pub const INDEX_OBJECT: &str = "index.json";
/// Name of the pointer object directly under the store prefix.
pub const LATEST_OBJECT: &str = "LATEST";
/// Value of the `LATEST` pointer's `format` field.
pub const LATEST_FORMAT: &str = "ateom-snapshot-latest";
/// Folder of chunk objects inside a snapshot prefix.
pub const CHUNKS_DIR: &str = "chunks";
/// Largest index object the decoder accepts.
pub const MAX_INDEX_BYTES: usize = 64 << 20;
/// Largest `LATEST` pointer object a reader accepts.
pub const MAX_LATEST_BYTES: usize = 64 << 10;
/// Smallest chunk size (one page, so zero chunks map onto file-system holes).
pub const MIN_CHUNK_SIZE: u64 = 4096;
/// Largest chunk size (bounds the memory a reader needs per chunk in flight).
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// The only codec of format version 1.
pub const CODEC_ZSTD: &str = "zstd";

const MAX_ID_LEN: usize = 128;
const MAX_NAME_LEN: usize = 1024;
const MAX_KEY_LEN: usize = 512;
const MAX_KEY_SEGMENTS: usize = 8;
/// Suffix of the temporary files a pull writes before renaming them into place.
pub(crate) const PARTIAL_SUFFIX: &str = ".ateom-partial";

/// A sha256 digest, serialized as 64 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// sha256 of `data`.
    pub fn of(data: &[u8]) -> Digest {
        Digest(Sha256::digest(data).into())
    }

    /// Lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Error parsing a [`Digest`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sha256 digest is 64 lowercase hex characters, got {0:?}")]
pub struct DigestParseError(String);

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        let mut out = [0u8; 32];
        if !ok || hex::decode_to_slice(s, &mut out).is_err() {
            let shown: String = s.chars().take(80).collect();
            return Err(DigestParseError(shown));
        }
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// How non-zero chunks are encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    /// Always `"zstd"` in version 1: one independent zstd frame per chunk object.
    pub codec: String,
    /// The level the writer used (informational; any level decodes the same way).
    pub level: i32,
}

/// One entry of an artifact's chunk table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// Offset of the chunk in the artifact.
    pub offset: u64,
    /// Uncompressed length (the chunk size, except for a shorter last chunk).
    pub length: u64,
    /// All-zero chunk: nothing is stored, a reader leaves a hole.
    pub zero: bool,
    /// sha256 of the `length` uncompressed bytes (for a zero chunk: of `length` zero bytes).
    pub sha256: Digest,
    /// Object key relative to the snapshot prefix (`chunks/<sha256>`); absent for zero chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Size of the stored zstd frame; absent for zero chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_length: Option<u64>,
}

/// One file of the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactEntry {
    /// Relative path of the file inside the snapshot directory.
    pub name: String,
    /// Logical size in bytes.
    pub size: u64,
    /// sha256 of the whole file.
    pub sha256: Digest,
    /// Chunk table: `ceil(size / chunk_size)` entries, in offset order.
    pub chunks: Vec<ChunkEntry>,
}

impl ArtifactEntry {
    /// Bytes stored for this artifact (sum of compressed lengths, counting shared chunks once
    /// per reference).
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().filter_map(|c| c.compressed_length).sum()
    }
}

/// The index of one snapshot: the object whose presence makes the snapshot exist.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotIndex {
    /// Always [`INDEX_FORMAT`].
    pub format: String,
    /// Always [`INDEX_VERSION`] for indexes this build writes.
    pub version: u32,
    /// The snapshot id (the last segment of the snapshot prefix).
    pub snapshot_id: String,
    /// When the writer committed it (milliseconds since the Unix epoch).
    pub created_unix_ms: u64,
    /// Chunk size used for every artifact.
    pub chunk_size: u64,
    /// Codec of the chunk objects.
    pub compression: Compression,
    /// The files of the snapshot.
    pub artifacts: Vec<ArtifactEntry>,
    /// Opaque caller data (ateom stores its snapshot manifest here).
    #[serde(default)]
    pub meta: serde_json::Value,
    /// The writer's signature of this index without this field (see [`crate::sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::sign::Signature>,
}

/// Why bytes are not a valid version-1 index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("index is {len} bytes, more than the {max} bytes a reader accepts")]
    TooLarge { len: usize, max: usize },
    #[error("not valid index JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an ateom snapshot index (format {found:?}, expected {INDEX_FORMAT:?})")]
    WrongFormat { found: Option<String> },
    #[error("unsupported index version {found} (this build reads version {INDEX_VERSION})")]
    UnsupportedVersion { found: u64 },
    #[error("invalid snapshot id {id:?}: {reason}")]
    SnapshotId { id: String, reason: &'static str },
    #[error("chunk size {0} is not a multiple of 4096 between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")]
    ChunkSize(u64),
    #[error("unsupported codec {0:?} (version 1 knows only \"zstd\")")]
    Codec(String),
    #[error("invalid artifact name {name:?}: {reason}")]
    ArtifactName { name: String, reason: &'static str },
    #[error("artifact {name:?} appears twice, or inside another artifact's path")]
    ArtifactConflict { name: String },
    #[error("artifact {artifact:?} has {found} chunks, its size needs {expected}")]
    ChunkCount { artifact: String, expected: u64, found: u64 },
    #[error("artifact {artifact:?}, chunk {chunk}: {problem}")]
    Chunk { artifact: String, chunk: usize, problem: ChunkProblem },
}

/// What is wrong with one chunk-table entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkProblem {
    #[error("offset {found}, expected {expected}")]
    Offset { expected: u64, found: u64 },
    #[error("length {found}, expected {expected}")]
    Length { expected: u64, found: u64 },
    #[error("zero chunk must not name an object or a compressed length")]
    ZeroWithObject,
    #[error("non-zero chunk needs an object key and a compressed length")]
    MissingObject,
    #[error("object key {key:?} is not a safe relative key: {reason}")]
    Key { key: String, reason: &'static str },
    #[error("compressed length {found} is outside 1..={max}")]
    CompressedLength { found: u64, max: u64 },
}

impl SnapshotIndex {
    /// Decode and validate an index. Never panics, whatever the input.
    pub fn decode(bytes: &[u8]) -> Result<SnapshotIndex, IndexError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge { len: bytes.len(), max: MAX_INDEX_BYTES });
        }
        // Read the header first so that a future version gets "unsupported version", not a
        // confusing field error.
        #[derive(Deserialize)]
        struct Header {
            format: Option<serde_json::Value>,
            version: Option<serde_json::Value>,
        }
        let header: Header = serde_json::from_slice(bytes)?;
        let format = header.format.as_ref().and_then(|f| f.as_str());
        if format != Some(INDEX_FORMAT) {
            let found = header.format.map(|f| match f {
                serde_json::Value::String(s) => s.chars().take(80).collect(),
                other => other.to_string().chars().take(80).collect(),
            });
            return Err(IndexError::WrongFormat { found });
        }
        match header.version.as_ref().and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(INDEX_VERSION) => {}
            Some(v) => return Err(IndexError::UnsupportedVersion { found: v }),
            None => return Err(IndexError::UnsupportedVersion { found: 0 }),
        }
        let index: SnapshotIndex = serde_json::from_slice(bytes)?;
        index.validate()?;
        Ok(index)
    }

    /// Serialize (compact JSON). Validates first, so a writer cannot commit an index that
    /// readers would reject.
    pub fn encode(&self) -> Result<Vec<u8>, crate::StoreError> {
        self.validate().map_err(|source| crate::StoreError::CorruptIndex {
            id: self.snapshot_id.clone(),
            prefix: String::from("(encoder)"),
            source,
        })?;
        serde_json::to_vec(self).map_err(crate::StoreError::EncodeIndex)
    }

    /// Check every rule of format version 1 (see the crate docs).
    pub fn validate(&self) -> Result<(), IndexError> {
        if self.format != INDEX_FORMAT {
            return Err(IndexError::WrongFormat { found: Some(self.format.clone()) });
        }
        if self.version != INDEX_VERSION {
            return Err(IndexError::UnsupportedVersion { found: u64::from(self.version) });
        }
        check_snapshot_id(&self.snapshot_id)
            .map_err(|reason| IndexError::SnapshotId { id: self.snapshot_id.clone(), reason })?;
        let cs = self.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) || !cs.is_multiple_of(4096) {
            return Err(IndexError::ChunkSize(cs));
        }
        if self.compression.codec != CODEC_ZSTD {
            return Err(IndexError::Codec(self.compression.codec.chars().take(80).collect()));
        }
        check_artifact_names(self.artifacts.iter().map(|a| a.name.as_str()))?;
        for a in &self.artifacts {
            check_chunk_table(a, cs)?;
        }
        Ok(())
    }

    /// Total logical bytes of all artifacts.
    pub fn logical_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).fold(0u64, u64::saturating_add)
    }

    /// Total stored bytes of all chunk references.
    pub fn stored_bytes(&self) -> u64 {
        self.artifacts.iter().map(ArtifactEntry::stored_bytes).fold(0u64, u64::saturating_add)
    }
}

fn check_chunk_table(a: &ArtifactEntry, chunk_size: u64) -> Result<(), IndexError> {
    let expected = a.size.div_ceil(chunk_size);
    if a.chunks.len() as u64 != expected {
        return Err(IndexError::ChunkCount {
            artifact: a.name.clone(),
            expected,
            found: a.chunks.len() as u64,
        });
    }
    let bad =
        |chunk: usize, problem: ChunkProblem| IndexError::Chunk { artifact: a.name.clone(), chunk, problem };
    for (i, c) in a.chunks.iter().enumerate() {
        // i < expected = ceil(size / chunk_size), so i * chunk_size < size: no overflow.
        let offset = i as u64 * chunk_size;
        if c.offset != offset {
            return Err(bad(i, ChunkProblem::Offset { expected: offset, found: c.offset }));
        }
        let length = (a.size - offset).min(chunk_size);
        if c.length != length {
            return Err(bad(i, ChunkProblem::Length { expected: length, found: c.length }));
        }
        match (c.zero, &c.key, c.compressed_length) {
            (true, None, None) => {}
            (true, _, _) => return Err(bad(i, ChunkProblem::ZeroWithObject)),
            (false, Some(key), Some(clen)) => {
                check_object_key(key).map_err(|reason| {
                    bad(i, ChunkProblem::Key { key: key.chars().take(80).collect(), reason })
                })?;
                let max = max_compressed_len(length);
                if clen == 0 || clen > max {
                    return Err(bad(i, ChunkProblem::CompressedLength { found: clen, max }));
                }
            }
            (false, _, _) => return Err(bad(i, ChunkProblem::MissingObject)),
        }
    }
    Ok(())
}

/// Upper bound of a zstd frame holding `len` bytes (zstd's `ZSTD_compressBound`).
pub(crate) fn max_compressed_len(len: u64) -> u64 {
    // ZSTD_COMPRESSBOUND(s) = s + (s >> 8) + (s < 128KiB ? ((128KiB - s) >> 11) : 0)
    let small = if len < (128 << 10) { ((128 << 10) - len) >> 11 } else { 0 };
    len + (len >> 8) + small
}

/// The object key of a chunk with this digest, relative to the snapshot prefix.
pub fn chunk_key(digest: &Digest) -> String {
    format!("{CHUNKS_DIR}/{}", digest.to_hex())
}

/// If `rel` (relative to a snapshot prefix) is a chunk key of the form this build writes,
/// return its digest.
pub(crate) fn parse_chunk_key(rel: &str) -> Option<Digest> {
    rel.strip_prefix(CHUNKS_DIR)?.strip_prefix('/')?.parse().ok()
}

/// Rules for snapshot ids: 1..=128 characters of `[A-Za-z0-9._-]`, starting with a letter or
/// digit, and not `LATEST`.
pub fn check_snapshot_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err("must be 1 to 128 characters");
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return Err("only letters, digits, '.', '_' and '-' are allowed");
    }
    if !id.as_bytes()[0].is_ascii_alphanumeric() {
        return Err("must start with a letter or digit");
    }
    if id == LATEST_OBJECT {
        return Err("LATEST is the name of the pointer object");
    }
    Ok(())
}

/// Rules for artifact names: a relative path of non-empty segments other than `.` and `..`,
/// at most 1024 bytes, no control characters, not ending in the pull's temporary suffix.
pub fn check_artifact_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("must be 1 to 1024 bytes");
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("must not contain control characters");
    }
    if name.starts_with('/') {
        return Err("must be relative");
    }
    if name.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("must not have empty, '.' or '..' segments");
    }
    if name.contains('\\') {
        return Err("must not contain '\\'");
    }
    if name.ends_with(PARTIAL_SUFFIX) {
        return Err("must not end in the pull's temporary suffix .ateom-partial");
    }
    Ok(())
}

/// Check a set of artifact names: each valid, none repeated, none inside another's path
/// (`a` and `a/b` cannot both be files).
pub(crate) fn check_artifact_names<'a>(
    names: impl Iterator<Item = &'a str> + Clone,
) -> Result<(), IndexError> {
    let mut seen = HashSet::new();
    for name in names.clone() {
        check_artifact_name(name).map_err(|reason| IndexError::ArtifactName { name: name.into(), reason })?;
        if !seen.insert(name) {
            return Err(IndexError::ArtifactConflict { name: name.into() });
        }
    }
    for name in names {
        let mut end = name.len();
        while let Some(pos) = name[..end].rfind('/') {
            if seen.contains(&name[..pos]) {
                return Err(IndexError::ArtifactConflict { name: name.into() });
            }
            end = pos;
        }
    }
    Ok(())
}

/// Rules for chunk object keys: 1..=8 segments of `[A-Za-z0-9._-]`, none `.`/`..`, at most
/// 512 bytes.
fn check_object_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err("must be 1 to 512 bytes");
    }
    if !key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        return Err("only letters, digits, '.', '_', '-' and '/' are allowed");
    }
    let segments: Vec<&str> = key.split('/').collect();
    if segments.len() > MAX_KEY_SEGMENTS {
        return Err("at most 8 segments");
    }
    if segments.iter().any(|s| s.is_empty() || *s == "." || *s == "..") {
        return Err("must not have empty, '.' or '..' segments");
    }
    if key == INDEX_OBJECT {
        return Err("must not name the index");
    }
    Ok(())
}

/// The `LATEST` pointer object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LatestPointer {
    /// Always [`LATEST_FORMAT`].
    pub format: String,
    /// Always 1.
    pub version: u32,
    /// The snapshot the pointer names.
    pub snapshot_id: String,
    /// The writer's signature of `snapshot_id` (see [`crate::sign`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<crate::sign::Signature>,
}

impl LatestPointer {
    pub(crate) fn new(id: &str) -> Self {
        LatestPointer { format: LATEST_FORMAT.into(), version: 1, snapshot_id: id.into(), signature: None }
    }

    /// Decode and validate; the error is a human-readable reason.
    pub fn decode(bytes: &[u8]) -> Result<LatestPointer, String> {
        if bytes.len() > MAX_LATEST_BYTES {
            return Err(format!("{} bytes is too large for a pointer", bytes.len()));
        }
        let p: LatestPointer = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if p.format != LATEST_FORMAT || p.version != 1 {
            return Err(format!("format {:?} version {} is not {LATEST_FORMAT:?} 1", p.format, p.version));
        }
        check_snapshot_id(&p.snapshot_id).map_err(|r| format!("snapshot id {:?}: {r}", p.snapshot_id))?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotIndex {
        let data = vec![7u8; 5000];
        let d = Digest::of(&data[..4096]);
        SnapshotIndex {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
            snapshot_id: "snap-1".into(),
            created_unix_ms: 1,
            chunk_size: 4096,
            compression: Compression { codec: "zstd".into(), level: 1 },
            artifacts: vec![ArtifactEntry {
                name: "mem/pages.img".into(),
                size: 5000,
                sha256: Digest::of(&data),
                chunks: vec![
                    ChunkEntry {
                        offset: 0,
                        length: 4096,
                        zero: false,
                        sha256: d,
                        key: Some(chunk_key(&d)),
                        compressed_length: Some(20),
                    },
                    ChunkEntry {
                        offset: 4096,
                        length: 904,
                        zero: true,
                        sha256: Digest::of(&[0u8; 904]),
                        key: None,
                        compressed_length: None,
                    },
                ],
            }],
            meta: serde_json::json!({"backend": "gvisor"}),
            signature: None,
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let idx = sample();
        let bytes = idx.encode().unwrap();
        assert_eq!(SnapshotIndex::decode(&bytes).unwrap(), idx);
    }

    #[test]
    fn future_version_is_reported_as_unsupported() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().encode().unwrap()).unwrap();
        v["version"] = 2.into();
        v["artifacts"] = "a new layout".into();
        let err = SnapshotIndex::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, IndexError::UnsupportedVersion { found: 2 }), "{err}");
    }

    #[test]
    fn rejects_path_traversal_and_bad_tables() {
        let mut idx = sample();
        idx.artifacts[0].name = "../etc/passwd".into();
        assert!(matches!(idx.validate(), Err(IndexError::ArtifactName { .. })));

        let mut idx = sample();
        idx.artifacts[0].chunks[0].key = Some("chunks/../../x".into());
        assert!(matches!(idx.validate(), Err(IndexError::Chunk { problem: ChunkProblem::Key { .. }, .. })));

        let mut idx = sample();
        idx.artifacts[0].chunks[1].offset = 4095;
        assert!(matches!(idx.validate(), Err(IndexError::Chunk { chunk: 1, .. })));

        let mut idx = sample();
        idx.artifacts[0].size = 1 << 40;
        assert!(matches!(idx.validate(), Err(IndexError::ChunkCount { .. })));

        let mut idx = sample();
        idx.artifacts[0].chunks[0].compressed_length = Some(1 << 30);
        assert!(matches!(
            idx.validate(),
            Err(IndexError::Chunk { problem: ChunkProblem::CompressedLength { .. }, .. })
        ));

        let mut idx = sample();
        let mut second = idx.artifacts[0].clone();
        second.name = "mem".into();
        idx.artifacts.push(second);
        assert!(matches!(idx.validate(), Err(IndexError::ArtifactConflict { .. })));
    }

    #[test]
    fn digest_text_form_is_strict() {
        assert!("ab".parse::<Digest>().is_err());
        assert!("A".repeat(64).parse::<Digest>().is_err());
        assert!("ä".repeat(32).parse::<Digest>().is_err());
        let d = Digest::of(b"x");
        assert_eq!(d.to_hex().parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn compress_bound_matches_zstd() {
        for len in [0u64, 1, 100, 4096, 131071, 131072, 4 << 20, 64 << 20] {
            assert_eq!(max_compressed_len(len), zstd::zstd_safe::compress_bound(len as usize) as u64);
        }
    }
}
