//! The commit protocol under faults, against a real `file://` store: interrupted pushes leave
//! no snapshot and reruns finish them; corrupt or missing chunks are refused by name; an
//! unreachable endpoint fails after bounded retries in bounded time, never as "not found".

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ateom_store::{
    ChunkFault, GarbageReason, GcOptions, IndexError, PushOptions, Store, StoreConfig, StoreError,
};
use common::faulty::FailAfter;
use common::*;
use object_store::local::LocalFileSystem;

const CS: u64 = 64 << 10;

/// A source dir with a 1 MiB sparse "memory" (8 data chunks, 8 zero chunks of 64 KiB) and a
/// small "checkpoint".
fn source(dir: &std::path::Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut runs = Vec::new();
    for i in 0..8 {
        runs.push(Run::Data(CS, 100 + i));
        runs.push(Run::Zero(CS));
    }
    write_runs(&dir.join("memory"), &runs);
    write_runs(&dir.join("checkpoint"), &[Run::Data(10_000, 9)]);
    vec!["memory".into(), "checkpoint".into()]
}

fn assert_same(a: &std::path::Path, b: &std::path::Path, names: &[String]) {
    for n in names {
        assert!(std::fs::read(a.join(n)).unwrap() == std::fs::read(b.join(n)).unwrap(), "{n} differs");
    }
}

fn chunk_objects(bucket: &std::path::Path, id: &str) -> Vec<String> {
    tree(&bucket.join(id).join("chunks"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_failing_midway_leaves_no_snapshot_gc_lists_it_and_rerun_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    let names = source(&src);
    std::fs::create_dir_all(&bucket).unwrap();

    // The same bucket directory, once through a connection that dies after 3 chunk PUTs.
    let local = Arc::new(LocalFileSystem::new_with_prefix(&bucket).unwrap());
    let failing = FailAfter::new(local, 3);
    let cfg = StoreConfig { chunk_size: CS, concurrency: 2, retry: fast_retry(), ..StoreConfig::default() };
    let broken =
        Store::from_object_store(failing.clone(), "", "failing").unwrap().with_config(cfg.clone()).unwrap();
    let err = broken.push_dir(&src, &names, "s1", serde_json::json!({})).await.unwrap_err();
    match &err {
        StoreError::Remote { op: "put chunk", attempts: 3, .. } => {}
        other => panic!("expected a put chunk failure after 3 attempts, got {other}"),
    }
    assert_eq!(chunk_objects(&bucket, "s1").len(), 3, "exactly the chunks that got through");
    assert!(failing.failed_puts.load(Ordering::SeqCst) >= 3, "the failing chunk was retried");
    assert!(!bucket.join("s1/index.json").exists());

    let store = Store::open(&file_uri(&bucket)).unwrap().with_config(cfg).unwrap();
    let e = store.pull(Some("s1"), &dst).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { ref id, .. } if id == "s1"), "{e}");
    assert_eq!(e.to_string(), format!("no such snapshot s1 under {}", file_uri(&bucket)));
    assert!(!dst.join("memory").exists() && !dst.join("memory.ateom-partial").exists());
    let e = store.pull(None, &dst).await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { ref id, .. } if id == "LATEST"), "{e}");
    assert!(store.list().await.unwrap().is_empty());

    // gc: within the grace period nothing; with grace 0 the three chunks, listed not deleted.
    assert!(store.gc(&GcOptions::default()).await.unwrap().garbage.is_empty());
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: false }).await.unwrap();
    assert_eq!(gc.garbage.len(), 3, "{gc:?}");
    assert!(gc.garbage.iter().all(|g| g.reason == GarbageReason::NoIndex && g.snapshot_id == "s1"));
    assert_eq!(gc.deleted_objects, 0);
    assert_eq!(chunk_objects(&bucket, "s1").len(), 3);

    // The rerun uploads only what is missing.
    let report = store.push_dir(&src, &names, "s1", serde_json::json!({"try": 2})).await.unwrap();
    assert_eq!(report.chunks_skipped_existing, 3, "{report:?}");
    assert_eq!(report.chunks_uploaded, 6, "{report:?}"); // 8 + 1 data chunks in all
    assert!(!report.replaced_existing);
    store.pull(Some("s1"), &dst).await.unwrap();
    assert_same(&src, &dst, &names);
    assert!(store.gc(&GcOptions { grace: Duration::ZERO, delete: true }).await.unwrap().garbage.is_empty());
}

/// A real interruption: the push future is dropped halfway (as when the daemon is killed or
/// the request is cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_push_future_leaves_no_snapshot_and_rerun_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let runs: Vec<Run> = (0..64).map(|i| Run::Data(CS, i)).collect();
    write_runs(&src.join("memory"), &runs);
    let names = vec!["memory".to_string()];
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);

    let half = Arc::new(tokio::sync::Notify::new());
    let h2 = half.clone();
    let opts = PushOptions {
        progress: Some(Arc::new(move |done: u64, total: u64| {
            if done >= total / 2 {
                h2.notify_one();
            }
        })),
        ..PushOptions::default()
    };
    tokio::select! {
        biased;
        _ = half.notified() => {} // the push future is dropped here
        r = store.push_dir_with(&src, &names, "cut", serde_json::json!({}), &opts) => {
            panic!("push finished before it was interrupted: {r:?}")
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // let in-flight blocking writes land
    let stored = chunk_objects(&bucket, "cut").len();
    assert!((16..64).contains(&stored), "{stored} chunk objects after the interruption");
    assert!(!bucket.join("cut/index.json").exists());
    assert!(store.pull(Some("cut"), &dst).await.unwrap_err().is_not_found());
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: false }).await.unwrap();
    assert_eq!(gc.garbage.len(), stored);

    let report = store.push_dir(&src, &names, "cut", serde_json::json!({})).await.unwrap();
    assert_eq!(report.chunks_skipped_existing as usize, stored, "{report:?}");
    assert_eq!(report.chunks_uploaded as usize, 64 - stored);
    store.pull(Some("cut"), &dst).await.unwrap();
    assert_same(&src, &dst, &names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_missing_chunks_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket) = (tmp.path().join("src"), tmp.path().join("bucket"));
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "c", serde_json::json!({})).await.unwrap();
    let index = store.read_index("c").await.unwrap();
    // Chunk 4 of "memory" is data (even chunks are data).
    let entry = &index.artifacts[0].chunks[4];
    let key = entry.key.clone().unwrap();
    let object = bucket.join("c").join(&key);
    let original = std::fs::read(&object).unwrap();

    let pull_err = |dst: &str| {
        let store = store.clone();
        let dst = tmp.path().join(dst);
        async move {
            let e = store.pull(Some("c"), &dst).await.unwrap_err();
            // Nothing that looks complete is left behind, and no partial files either.
            assert!(tree(&dst).is_empty(), "left behind: {:?}", tree(&dst));
            e
        }
    };

    // 1. One byte flipped in the payload of an incompressible (raw) frame: decodes, wrong sha256.
    let mut flipped = original.clone();
    *flipped.last_mut().unwrap() ^= 0x55;
    std::fs::write(&object, &flipped).unwrap();
    let e = pull_err("d1").await;
    match &e {
        StoreError::CorruptChunk { id, artifact, chunk: 4, key: k, fault }
            if matches!(**fault, ChunkFault::Digest { .. }) =>
        {
            assert_eq!((id.as_str(), artifact.as_str()), ("c", "memory"));
            assert!(k.ends_with(&key));
        }
        other => panic!("expected a digest mismatch on chunk 4, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("chunk 4") && msg.contains("\"memory\"") && msg.contains(&key), "{msg}");

    // 2. Truncated object.
    std::fs::write(&object, &original[..original.len() / 2]).unwrap();
    let e = pull_err("d2").await;
    assert!(
        matches!(&e, StoreError::CorruptChunk { chunk: 4, fault, .. } if matches!(**fault, ChunkFault::StoredLength { .. })),
        "{e}"
    );

    // 3. Same length, not zstd at all.
    std::fs::write(&object, vec![0xAB; original.len()]).unwrap();
    let e = pull_err("d3").await;
    assert!(
        matches!(&e, StoreError::CorruptChunk { chunk: 4, fault, .. } if matches!(**fault, ChunkFault::Decode(_))),
        "{e}"
    );

    // 4. Missing object.
    std::fs::remove_file(&object).unwrap();
    let e = pull_err("d4").await;
    assert!(
        matches!(e, StoreError::MissingChunk { chunk: 4, ref artifact, .. } if artifact == "memory"),
        "{e}"
    );

    // Restoring the object heals the snapshot.
    std::fs::write(&object, &original).unwrap();
    store.pull(Some("c"), &tmp.path().join("d5")).await.unwrap();
    assert_same(&src, &tmp.path().join("d5"), &names);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_or_future_index_is_reported_not_guessed() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "i", serde_json::json!({})).await.unwrap();
    let path = bucket.join("i/index.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["version"] = 7.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = store.pull(Some("i"), &dst).await.unwrap_err();
    assert!(
        matches!(e, StoreError::CorruptIndex { source: IndexError::UnsupportedVersion { found: 7 }, .. }),
        "{e}"
    );
    std::fs::write(&path, b"{\"format\":\"ateom-snapshot-index\",\"version\":1,").unwrap();
    let e = store.read_index("i").await.unwrap_err();
    assert!(matches!(e, StoreError::CorruptIndex { source: IndexError::Json(_), .. }), "{e}");
    // gc never deletes under an index it cannot read.
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: true }).await.unwrap();
    assert_eq!((gc.unreadable_indexes, gc.deleted_objects), (vec!["i".to_string()], 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_list_delete_and_unreferenced_gc() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, dst) = (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("dst"));
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "a", serde_json::json!({"gen": 1})).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.push_dir(&src, &names, "b", serde_json::json!({"gen": 2})).await.unwrap();
    let ids: Vec<String> = store.list().await.unwrap().into_iter().map(|s| s.snapshot_id).collect();
    assert_eq!(ids, ["b", "a"], "newest first");
    assert_eq!(store.latest().await.unwrap(), "b");

    // Replace "a" with different content: old chunks that are no longer used are removed.
    write_runs(&src.join("checkpoint"), &[Run::Data(20_000, 10)]);
    let r = store.push_dir(&src, &names, "a", serde_json::json!({"gen": 3})).await.unwrap();
    assert!(r.replaced_existing && r.chunks_skipped_existing == 8 && r.stale_chunks_removed == 1, "{r:?}");
    // "b" is the newer id: re-pushing "a" does not move LATEST backwards.
    assert_eq!((r.latest.as_deref(), r.latest_moved), (Some("b"), false), "{r:?}");
    assert_eq!(store.latest().await.unwrap(), "b");
    store.pull(Some("a"), &dst).await.unwrap();
    assert_same(&src, &dst, &names);
    assert_eq!(store.read_index("a").await.unwrap().meta, serde_json::json!({"gen": 3}));

    // A stray chunk under a committed snapshot is "unreferenced" garbage; foreign files are not.
    let stray = bucket.join("a/chunks").join("0".repeat(64));
    std::fs::write(&stray, b"junk").unwrap();
    std::fs::write(bucket.join("a/chunks/README"), b"not ours").unwrap();
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: true }).await.unwrap();
    assert_eq!(gc.garbage.len(), 1, "{gc:?}");
    assert_eq!((gc.garbage[0].reason, gc.deleted_objects), (GarbageReason::Unreferenced, 1));
    assert!(!stray.exists() && bucket.join("a/chunks/README").exists());
    std::fs::remove_file(bucket.join("a/chunks/README")).unwrap();

    // Delete: the index goes first, LATEST follows when it names the snapshot.
    // With force_latest the replacing push moves LATEST back to "a".
    let forced = PushOptions { force_latest: true, ..PushOptions::default() };
    let r = store.push_dir_with(&src, &names, "a", serde_json::json!({"gen": 3}), &forced).await.unwrap();
    assert_eq!((r.latest.as_deref(), r.latest_moved), (Some("a"), true), "{r:?}");
    let d = store.delete("b").await.unwrap();
    assert!(d.had_index && !d.latest_removed && d.objects_deleted == 10, "{d:?}");
    assert!(!bucket.join("b").exists());
    assert!(store.pull(Some("b"), &dst).await.unwrap_err().is_not_found());
    assert!(store.delete("b").await.unwrap_err().is_not_found());
    let ids: Vec<String> = store.list().await.unwrap().into_iter().map(|s| s.snapshot_id).collect();
    assert_eq!(ids, ["a"]);
    assert_eq!(store.latest().await.unwrap(), "a");
    let d = store.delete("a").await.unwrap();
    assert!(d.had_index && d.latest_removed, "{d:?}");
    assert!(store.latest().await.unwrap_err().is_not_found());
    assert!(store.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn invalid_ids_names_and_configs_are_rejected_before_any_io() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(&file_uri(tmp.path())).unwrap();
    for id in ["", "../x", "a/b", "LATEST", ".hidden", "x".repeat(129).as_str()] {
        let e = store.push_dir(tmp.path(), &[], id, serde_json::Value::Null).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidSnapshotId { .. }), "{id:?}: {e}");
    }
    for name in ["../etc/passwd", "/abs", "a//b", "x.ateom-partial"] {
        let e =
            store.push_dir(tmp.path(), &[name.to_string()], "ok", serde_json::Value::Null).await.unwrap_err();
        assert!(matches!(e, StoreError::InvalidArtifactName { .. }), "{name:?}: {e}");
    }
    let e = store.push_dir(tmp.path(), &["a".into(), "a".into()], "ok", serde_json::Value::Null).await;
    assert!(matches!(e, Err(StoreError::InvalidArtifactName { .. })));
    let e = store.push_dir(tmp.path(), &["missing".into()], "ok", serde_json::Value::Null).await.unwrap_err();
    assert!(matches!(e, StoreError::Io { .. }), "{e}");
    for cs in [0, 4095, 5000, 128 << 20] {
        let e = store.with_config(StoreConfig { chunk_size: cs, ..StoreConfig::default() }).unwrap_err();
        assert!(matches!(e, StoreError::InvalidConfig(_)));
    }
    assert!(matches!(Store::open("ftp://x/y"), Err(StoreError::UnsupportedScheme { .. })));
    assert!(matches!(Store::open("not a uri"), Err(StoreError::InvalidLocation { .. })));
    #[cfg(feature = "cloud")]
    assert!(matches!(
        Store::open_with_options("s3://b/p", [("aws_no_such_option", "1")]),
        Err(StoreError::InvalidOption { .. })
    ));
}

/// S3 pointed at a closed loopback port: every operation fails after the configured number of
/// attempts, within the configured time, as a `Remote` error (never `NotFound`), and the local
/// snapshot directory is untouched.
#[cfg(feature = "cloud")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_endpoint_gives_bounded_retries_then_a_clear_error() {
    use ateom_store::RetryPolicy;
    use std::time::Instant;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let names = source(&src);
    let before: Vec<_> = names.iter().map(|n| sha256_file(&src.join(n))).collect();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = Store::open_with_options(
        "s3://snapshots/actors",
        [
            ("aws_endpoint", format!("http://127.0.0.1:{port}")),
            ("aws_access_key_id", "k".into()),
            ("aws_secret_access_key", "s".into()),
            ("aws_region", "us-east-1".into()),
            ("aws_allow_http", "true".into()),
        ],
    )
    .unwrap();
    let policy = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(400),
        max_elapsed: Duration::from_secs(5),
        attempt_timeout: Duration::from_secs(5),
    };
    let store = store.with_config(StoreConfig { retry: policy, ..StoreConfig::default() }).unwrap();

    let t = Instant::now();
    let e = store.push_dir(&src, &names, "s", serde_json::Value::Null).await.unwrap_err();
    let took = t.elapsed();
    match &e {
        StoreError::Remote { attempts: 4, key, .. } => assert!(key.starts_with("actors/s"), "{key}"),
        other => panic!("expected a Remote error after 4 attempts, got {other}"),
    }
    // Backoffs: at least 50+100+200 ms (jitter halves them at most); bounded well below 5 s.
    assert!(took >= Duration::from_millis(350) && took < Duration::from_secs(5), "took {took:?}");
    let msg = e.to_string();
    assert!(msg.contains("failed after 4 attempt(s)"), "{msg}");
    eprintln!("unreachable endpoint error after {took:?}: {msg}");

    let e = store.pull(Some("s"), &tmp.path().join("dst")).await.unwrap_err();
    assert!(matches!(e, StoreError::Remote { .. }) && !e.is_not_found(), "{e}");
    let after: Vec<_> = names.iter().map(|n| sha256_file(&src.join(n))).collect();
    assert_eq!(before, after, "local snapshot kept intact");
}
