//! Every pull verifies every byte: each stored chunk against its sha256, each zero chunk's
//! table entry against the sha256 of its length in zeros, and each artifact's whole-file
//! sha256 — whatever the options say. Tampered indexes in a real `file://` store are refused
//! naming the chunk or the artifact, and nothing that looks complete is left behind.

mod common;

use ateom_store::{ChunkFault, Digest, PullOptions, Store, StoreError};
use common::*;

const CS: u64 = 64 << 10;

struct Fixture {
    _tmp: tempfile::TempDir,
    src: std::path::PathBuf,
    bucket: std::path::PathBuf,
    dst: std::path::PathBuf,
    store: Store,
    names: Vec<String>,
}

/// "memory": data, zero, data, zero (64 KiB chunks), then 10 000 bytes of data; pushed as "s".
async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    write_runs(
        &src.join("memory"),
        &[Run::Data(CS, 1), Run::Zero(CS), Run::Data(CS, 2), Run::Zero(CS), Run::Data(10_000, 3)],
    );
    let names = vec!["memory".to_string()];
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "s", serde_json::json!({})).await.unwrap();
    Fixture { _tmp: tmp, src, bucket, dst, store, names }
}

impl Fixture {
    fn edit_index(&self, f: impl FnOnce(&mut serde_json::Value)) {
        let path = self.bucket.join("s/index.json");
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    }

    async fn pull_err(&self) -> StoreError {
        let e = self.store.pull_with(Some("s"), &self.dst, &PullOptions::default()).await.unwrap_err();
        assert!(tree(&self.dst).is_empty(), "left behind: {:?}", tree(&self.dst));
        eprintln!("refused: {e}");
        e
    }
}

fn zeros_digest(len: usize) -> Digest {
    Digest::of(&vec![0u8; len])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untampered_pull_is_byte_identical() {
    let fx = fixture().await;
    fx.store.pull_with(Some("s"), &fx.dst, &PullOptions::default()).await.unwrap();
    assert_eq!(std::fs::read(fx.src.join("memory")).unwrap(), std::fs::read(fx.dst.join("memory")).unwrap());
    assert_eq!(fx.names.len(), 1);
}

/// A data chunk turned into a hole by the index (zero flag set, object dropped, digest kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_marked_zero_with_a_data_digest_is_refused_by_chunk() {
    let fx = fixture().await;
    let data_digest = fx.store.read_index("s").await.unwrap().artifacts[0].chunks[2].sha256;
    fx.edit_index(|v| {
        let c = &mut v["artifacts"][0]["chunks"][2];
        c["zero"] = true.into();
        c.as_object_mut().unwrap().remove("key");
        c.as_object_mut().unwrap().remove("compressed_length");
    });
    let e = fx.pull_err().await;
    match &e {
        StoreError::InconsistentChunk { id, artifact, chunk: 2, fault } => {
            assert_eq!((id.as_str(), artifact.as_str()), ("s", "memory"));
            assert_eq!(
                **fault,
                ChunkFault::ZeroDigest {
                    expected: data_digest.to_hex(),
                    zeros: zeros_digest(CS as usize).to_hex(),
                    length: CS
                }
            );
        }
        other => panic!("expected chunk 2 refused as a false zero chunk, got {other}"),
    }
    assert!(e.to_string().contains("chunk 2 of artifact \"memory\""), "{e}");
}

/// The same, but the tamperer also wrote the zeros' digest into the entry: every chunk is
/// consistent on its own, and the whole-file digest refuses the artifact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_false_zero_chunk_is_caught_by_the_whole_file_digest() {
    let fx = fixture().await;
    let expected = fx.store.read_index("s").await.unwrap().artifacts[0].sha256;
    fx.edit_index(|v| {
        let c = &mut v["artifacts"][0]["chunks"][2];
        c["zero"] = true.into();
        c["sha256"] = zeros_digest(CS as usize).to_hex().into();
        c.as_object_mut().unwrap().remove("key");
        c.as_object_mut().unwrap().remove("compressed_length");
    });
    match fx.pull_err().await {
        StoreError::ArtifactDigestMismatch { id, artifact, expected: e, actual } => {
            assert_eq!((id.as_str(), artifact.as_str(), e), ("s", "memory", expected.to_hex()));
            assert_ne!(actual, expected.to_hex());
        }
        other => panic!("expected the whole-file digest of memory to refuse it, got {other}"),
    }
}

/// The reverse: a zero chunk that the index says is stored, as zeros, in an object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_chunk_with_the_digest_of_zeros_is_refused_by_chunk() {
    let fx = fixture().await;
    let z = zeros_digest(CS as usize);
    let frame = zstd::bulk::compress(&vec![0u8; CS as usize], 1).unwrap();
    let key = format!("chunks/{}", z.to_hex());
    std::fs::write(fx.bucket.join("s").join(&key), &frame).unwrap();
    fx.edit_index(|v| {
        let c = &mut v["artifacts"][0]["chunks"][1];
        c["zero"] = false.into();
        c["key"] = key.clone().into();
        c["compressed_length"] = frame.len().into();
    });
    match fx.pull_err().await {
        StoreError::InconsistentChunk { artifact, chunk: 1, fault, .. } => {
            assert_eq!(artifact, "memory");
            assert_eq!(*fault, ChunkFault::StoredZeros { length: CS });
        }
        other => panic!("expected chunk 1 refused as stored zeros, got {other}"),
    }
}

/// The reverse, consistent per chunk: a hole replaced by another stored data chunk (its object
/// and digest are genuine, so the chunk check passes); the whole-file digest refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_replaced_by_a_genuine_data_chunk_is_caught_by_the_whole_file_digest() {
    let fx = fixture().await;
    fx.edit_index(|v| {
        let data = v["artifacts"][0]["chunks"][0].clone();
        let c = &mut v["artifacts"][0]["chunks"][1];
        c["zero"] = false.into();
        c["sha256"] = data["sha256"].clone();
        c["key"] = data["key"].clone();
        c["compressed_length"] = data["compressed_length"].clone();
    });
    let e = fx.pull_err().await;
    assert!(matches!(&e, StoreError::ArtifactDigestMismatch { artifact, .. } if artifact == "memory"), "{e}");
}

/// A stored chunk whose object holds zeros while its entry keeps the data digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_chunk_whose_object_holds_zeros_is_refused_by_chunk() {
    let fx = fixture().await;
    let index = fx.store.read_index("s").await.unwrap();
    let key = index.artifacts[0].chunks[2].key.clone().unwrap();
    let frame = zstd::bulk::compress(&vec![0u8; CS as usize], 1).unwrap();
    std::fs::write(fx.bucket.join("s").join(&key), &frame).unwrap();
    fx.edit_index(|v| v["artifacts"][0]["chunks"][2]["compressed_length"] = frame.len().into());
    match fx.pull_err().await {
        StoreError::CorruptChunk { artifact, chunk: 2, key: k, fault, .. } => {
            assert_eq!(artifact, "memory");
            assert!(k.ends_with(&key), "{k}");
            assert!(
                matches!(&*fault, ChunkFault::Digest { actual, .. } if *actual == zeros_digest(CS as usize).to_hex()),
                "{fault}"
            );
        }
        other => panic!("expected chunk 2 refused by its digest, got {other}"),
    }
}

/// The whole-file digest itself altered: refused naming the artifact, with the option that
/// used to skip it set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_whole_file_digest_is_refused_by_artifact() {
    let fx = fixture().await;
    let wrong = Digest::of(b"not the file").to_hex();
    fx.edit_index(|v| v["artifacts"][0]["sha256"] = wrong.clone().into());
    match fx.pull_err().await {
        StoreError::ArtifactDigestMismatch { artifact, expected, actual, .. } => {
            assert_eq!((artifact.as_str(), expected), ("memory", wrong));
            assert_eq!(actual, sha256_file(&fx.src.join("memory")).to_hex());
        }
        other => panic!("expected memory refused by its whole-file digest, got {other}"),
    }
}

/// Leftovers of a crashed pull at the temporary name (garbage, or a symlink pointing outside)
/// are replaced, never written through: holes come back as zeros and the target is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_partial_files_are_replaced_not_written_through() {
    let fx = fixture().await;
    std::fs::create_dir_all(&fx.dst).unwrap();
    let partial = fx.dst.join("memory.ateom-partial");
    std::fs::write(&partial, vec![0xEE; 5 * CS as usize]).unwrap();
    fx.store.pull(Some("s"), &fx.dst).await.unwrap();
    assert_eq!(std::fs::read(fx.src.join("memory")).unwrap(), std::fs::read(fx.dst.join("memory")).unwrap());

    let outside = fx._tmp.path().join("outside");
    std::fs::write(&outside, b"precious").unwrap();
    std::os::unix::fs::symlink(&outside, &partial).unwrap();
    let dst2 = fx.dst.clone();
    std::fs::remove_file(dst2.join("memory")).unwrap();
    fx.store.pull(Some("s"), &dst2).await.unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
    assert_eq!(std::fs::read(fx.src.join("memory")).unwrap(), std::fs::read(dst2.join("memory")).unwrap());
}
