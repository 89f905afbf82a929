//! Format round trips through a real `file://` store: whatever goes in comes back byte for
//! byte, digests match, zero chunks are not stored and come back as holes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ateom_store::{PullOptions, PushOptions, Store};
use common::*;
use proptest::prelude::*;

const CS: u64 = 8192;

/// Push `files` (name, runs) from a fresh dir, pull them into another, and check everything.
/// Returns (push report, pull report, number of chunk objects in the bucket).
fn round_trip(
    files: &[(&str, Vec<Run>)],
    chunk_size: u64,
) -> (ateom_store::PushReport, ateom_store::PullReport, usize) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let mut names = Vec::new();
    for (name, runs) in files {
        let p = src.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        write_runs(&p, runs);
        names.push(name.to_string());
    }
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), chunk_size);
    let meta = serde_json::json!({"backend": "test", "files": names.len()});
    let pushed = rt.block_on(store.push_dir(&src, &names, "snap", meta.clone())).unwrap();
    let pulled = rt.block_on(store.pull(Some("snap"), &dst)).unwrap();
    let index = rt.block_on(store.read_index("snap")).unwrap();
    assert_eq!(index.meta, meta);

    let mut nonzero_chunks = std::collections::HashSet::new();
    for (name, _) in files {
        let (a, b) = (src.join(name), dst.join(name));
        let orig = std::fs::read(&a).unwrap();
        let back = std::fs::read(&b).unwrap();
        assert!(orig == back, "{name}: content differs after round trip");
        let entry = index.artifacts.iter().find(|e| e.name == *name).unwrap();
        assert_eq!(entry.sha256, sha256_file(&a), "{name}: index digest");
        assert_eq!(entry.sha256, sha256_file(&b), "{name}: pulled digest");
        // Zero chunks and zero pages inside data chunks are never written: only pages with
        // data can have allocated blocks.
        let data_pages = orig.chunks(4096).filter(|p| p.iter().any(|&x| x != 0)).count() as u64;
        assert!(
            allocated(&b) <= data_pages * 4096 + 4096,
            "{name}: {} bytes allocated for {data_pages} data pages",
            allocated(&b)
        );
        for c in &entry.chunks {
            let bytes = &orig[c.offset as usize..(c.offset + c.length) as usize];
            assert_eq!(c.zero, bytes.iter().all(|&x| x == 0), "{name}@{}: zero flag", c.offset);
            assert_eq!(c.sha256, ateom_store::Digest::of(bytes));
            if !c.zero {
                nonzero_chunks.insert(c.sha256);
            }
        }
    }
    // The same files pushed with every whole-file digest known (the parallel readers'
    // path): the very same chunk table.
    let mut opts = PushOptions::default();
    for name in &names {
        opts.known_digests.insert(name.clone(), sha256_file(&src.join(name)).to_hex());
    }
    rt.block_on(store.push_dir_with(&src, &names, "snap-known", meta.clone(), &opts)).unwrap();
    let known = rt.block_on(store.read_index("snap-known")).unwrap();
    assert_eq!(known.artifacts, index.artifacts, "parallel readers build the same chunk table");
    let stored = tree(&bucket.join("snap/chunks")).len();
    // One object per distinct non-zero chunk: zero chunks are not stored, duplicates once.
    assert_eq!(stored, nonzero_chunks.len());
    assert_eq!(pushed.chunks_uploaded as usize, stored);
    assert_eq!(tree(&dst), {
        let mut n: Vec<String> = files.iter().map(|f| f.0.to_string()).collect();
        n.sort();
        n
    });
    (pushed, pulled, stored)
}

fn run_strategy() -> impl Strategy<Value = Run> {
    prop_oneof![
        (0..3 * CS).prop_map(Run::Zero),
        (1..3 * CS, any::<u64>()).prop_map(|(l, s)| Run::Data(l, s)),
        // short runs hit chunk boundaries at odd places
        (1..64u64).prop_map(Run::Zero),
        (1..64u64, any::<u64>()).prop_map(|(l, s)| Run::Data(l, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Random sparse files (random runs of zeros and data) survive push + pull unchanged.
    #[test]
    fn random_sparse_files_round_trip(
        a in prop::collection::vec(run_strategy(), 0..10),
        b in prop::collection::vec(run_strategy(), 0..6),
    ) {
        round_trip(&[("memory.img", a), ("dir/state.bin", b)], CS);
    }

    /// Sizes at, one below and one above chunk boundaries, for zero, data and mixed content.
    #[test]
    fn chunk_boundary_sizes(k in 0u64..4, delta in -1i64..=1, kind in 0u8..3, seed in any::<u64>()) {
        let size = (k * CS).saturating_add_signed(delta);
        let runs = match kind {
            0 => vec![Run::Zero(size)],
            1 => vec![Run::Data(size, seed)],
            _ => vec![Run::Zero(size / 2), Run::Data(size - size / 2, seed)],
        };
        let (push, pull, _) = round_trip(&[("f", runs)], CS);
        prop_assert_eq!(push.logical_bytes, size);
        prop_assert_eq!(pull.logical_bytes, size);
        prop_assert_eq!(push.chunks_total, size.div_ceil(CS));
    }
}

#[test]
fn empty_file() {
    let (push, pull, stored) = round_trip(&[("empty", vec![])], CS);
    assert_eq!((push.chunks_total, pull.chunks_total, stored), (0, 0, 0));
}

#[test]
fn no_zero_file_stores_every_chunk() {
    let (push, _, stored) = round_trip(&[("data", vec![Run::Data(5 * CS + 7, 42)])], CS);
    assert_eq!((push.chunks_total, push.chunks_zero, stored), (6, 0, 6));
}

#[test]
fn identical_chunks_are_stored_once() {
    // The same seed gives the same bytes: two artifacts with equal content share chunk objects.
    let runs = vec![Run::Data(2 * CS, 7)];
    let (push, _, stored) = round_trip(&[("a", runs.clone()), ("b", runs)], CS);
    assert_eq!((push.chunks_uploaded, push.chunks_deduplicated, stored), (2, 2, 2));
}

/// A 64 MiB all-zero file with the default 4 MiB chunks: no chunk object at all, and it comes
/// back as a hole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_64mib_stores_nothing_and_comes_back_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    write_runs(&src.join("memory"), &[Run::Zero(64 << 20)]);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), 4 << 20);
    let seen = Arc::new(AtomicU64::new(0));
    let s2 = seen.clone();
    let opts = PushOptions {
        progress: Some(Arc::new(move |done: u64, total: u64| {
            assert!(done <= total);
            s2.store(done, Ordering::Relaxed);
        })),
        ..PushOptions::default()
    };
    let push =
        store.push_dir_with(&src, &["memory".into()], "z", serde_json::json!({}), &opts).await.unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 64 << 20, "progress reaches the total");
    assert_eq!(
        (push.chunks_total, push.chunks_zero, push.chunks_uploaded, push.stored_bytes),
        (16, 16, 0, 0)
    );
    assert_eq!(tree(&bucket.join("z")), vec!["index.json".to_string()]);

    let pull = store.pull_with(None, &dst, &PullOptions::default()).await.unwrap();
    assert_eq!((pull.snapshot_id.as_str(), pull.chunks_fetched), ("z", 0));
    let meta = std::fs::metadata(dst.join("memory")).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(allocated(&dst.join("memory")) <= 64 << 10, "st_blocks*512 = {}", allocated(&dst.join("memory")));
    assert_eq!(sha256_file(&dst.join("memory")), sha256_file(&src.join("memory")));
}

/// A memory-image-like file with the default chunk size: mostly holes, a few MiB of data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_image_like_file_comes_back_sparse() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let runs = [
        Run::Data(1 << 20, 1),
        Run::Zero(20 << 20),
        Run::Data(3 << 20, 2),
        Run::Zero(39 << 20),
        Run::Data(100, 3),
    ];
    write_runs(&src.join("mem"), &runs);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), 4 << 20);
    let push = store.push_dir(&src, &["mem".into()], "m", serde_json::Value::Null).await.unwrap();
    assert_eq!(push.logical_bytes, (63 << 20) + 100);
    assert!(push.chunks_zero >= 12, "{push:?}");
    store.pull(Some("m"), &dst).await.unwrap();
    assert!(std::fs::read(src.join("mem")).unwrap() == std::fs::read(dst.join("mem")).unwrap());
    // 4 MiB + 100 bytes of data: only those pages are allocated, not the whole 4 MiB chunks
    // they sit in.
    assert!(
        allocated(&dst.join("mem")) <= (4 << 20) + (64 << 10),
        "allocated {}",
        allocated(&dst.join("mem"))
    );
}

/// One touched page per 4 MiB chunk (a lightly used guest): every chunk is stored, yet the
/// pulled file allocates one page per chunk, not 4 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scattered_pages_stay_sparse_inside_data_chunks() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let mut runs = Vec::new();
    for i in 0..16 {
        runs.push(Run::Zero((1 << 20) + 4096 * i));
        runs.push(Run::Data(4096, i));
        runs.push(Run::Zero((3 << 20) - 4096 * (i + 1)));
    }
    write_runs(&src.join("mem"), &runs);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), 4 << 20);
    let push = store.push_dir(&src, &["mem".into()], "p", serde_json::Value::Null).await.unwrap();
    assert_eq!((push.chunks_total, push.chunks_zero, push.chunks_uploaded), (16, 0, 16));
    store.pull(Some("p"), &dst).await.unwrap();
    assert!(std::fs::read(src.join("mem")).unwrap() == std::fs::read(dst.join("mem")).unwrap());
    assert!(allocated(&dst.join("mem")) <= 32 * 4096, "allocated {}", allocated(&dst.join("mem")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_digests_are_used_and_still_checked_on_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let runs = vec![Run::Zero(3 * CS), Run::Data(2 * CS + 17, 7), Run::Zero(CS)];
    write_runs(&src.join("memory"), &runs);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    let names = vec!["memory".to_string()];
    let right = sha256_file(&src.join("memory")).to_hex();

    let mut opts = PushOptions::default();
    opts.known_digests.insert("memory".into(), right.clone());
    store.push_dir_with(&src, &names, "good", serde_json::json!({}), &opts).await.unwrap();
    assert_eq!(store.read_index("good").await.unwrap().artifacts[0].sha256.to_hex(), right);
    store.pull(Some("good"), &dst.join("good")).await.unwrap();

    // A wrong "known" digest is recorded as given, and pull's whole-file check catches it.
    let mut opts = PushOptions::default();
    opts.known_digests.insert("memory".into(), "0".repeat(64));
    store.push_dir_with(&src, &names, "lying", serde_json::json!({}), &opts).await.unwrap();
    let err = store.pull(Some("lying"), &dst.join("lying")).await.unwrap_err();
    assert!(matches!(err, ateom_store::StoreError::ArtifactDigestMismatch { .. }), "{err}");

    let mut opts = PushOptions::default();
    opts.known_digests.insert("memory".into(), "not-hex".into());
    let err = store.push_dir_with(&src, &names, "bad", serde_json::json!({}), &opts).await.unwrap_err();
    assert!(matches!(err, ateom_store::StoreError::InvalidConfig(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_chunk_digests_are_used_and_still_checked_on_pull() {
    use ateom_store::{Digest, KnownChunks, StoreError};
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    write_runs(&src.join("memory"), &[Run::Data(CS, 3), Run::Zero(2 * CS), Run::Data(CS + 99, 4)]);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    let names = vec!["memory".to_string()];
    let bytes = std::fs::read(src.join("memory")).unwrap();
    let right: Vec<Digest> = bytes.chunks(CS as usize).map(Digest::of).collect();
    let known = |digests: Vec<Digest>, chunk_size| {
        let mut opts = PushOptions::default();
        opts.known_chunk_digests.insert("memory".into(), KnownChunks { chunk_size, digests });
        opts
    };

    // Right digests: the same index as a push that hashes everything.
    store.push_dir(&src, &names, "hashed", serde_json::json!({})).await.unwrap();
    store
        .push_dir_with(&src, &names, "known", serde_json::json!({}), &known(right.clone(), CS))
        .await
        .unwrap();
    let (a, b) = (store.read_index("hashed").await.unwrap(), store.read_index("known").await.unwrap());
    assert_eq!(a.artifacts, b.artifacts);
    store.pull(Some("known"), &dst.join("known")).await.unwrap();
    assert_eq!(std::fs::read(dst.join("known/memory")).unwrap(), bytes);

    // Digests for another chunk size (or count) are ignored: the chunks are hashed.
    let mut wrong = right.clone();
    wrong[0] = Digest([7; 32]);
    store
        .push_dir_with(&src, &names, "other-size", serde_json::json!({}), &known(wrong.clone(), 2 * CS))
        .await
        .unwrap();
    assert_eq!(store.read_index("other-size").await.unwrap().artifacts, a.artifacts);

    // A wrong digest that is used is caught by the pull, naming the chunk.
    store.push_dir_with(&src, &names, "lying", serde_json::json!({}), &known(wrong, CS)).await.unwrap();
    let err = store.pull(Some("lying"), &dst.join("lying")).await.unwrap_err();
    assert!(matches!(err, StoreError::CorruptChunk { chunk: 0, .. }), "{err}");
}
