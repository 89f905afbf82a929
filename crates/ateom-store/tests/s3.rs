//! Against a real S3-compatible server (s3s-fs from crates.io, started per test on a free
//! loopback port with SigV4 credentials and a bucket created through the API). Skips LOUDLY
//! only when the server cannot be installed.

#![cfg(feature = "cloud")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use ateom_store::{ChunkFault, GarbageReason, GcOptions, Store, StoreConfig, StoreError};
use common::faulty::FailAfter;
use common::s3server::{BUCKET, S3Server};
use common::*;
use object_store::aws::AmazonS3Builder;

const CS: u64 = 256 << 10;

fn source(dir: &std::path::Path, seed: u64) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    // 4 MiB memory image: 1 MiB data, 2 MiB hole, 512 KiB data, 512 KiB hole.
    write_runs(
        &dir.join("memory.img"),
        &[Run::Data(1 << 20, seed), Run::Zero(2 << 20), Run::Data(512 << 10, seed + 1), Run::Zero(512 << 10)],
    );
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    write_runs(&dir.join("rootfs/delta.tar"), &[Run::Data(100_000, seed + 2)]);
    vec!["memory.img".into(), "rootfs/delta.tar".into()]
}

fn same(a: &std::path::Path, b: &std::path::Path, names: &[String]) -> bool {
    names.iter().all(|n| std::fs::read(a.join(n)).unwrap() == std::fs::read(b.join(n)).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_push_pull_list_latest_delete() {
    let Some(server) = S3Server::start("s3_push_pull_list_latest_delete") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let store = small_chunks(&server.store("fleet/actors"), CS);
    let (src1, src2) = (tmp.path().join("src1"), tmp.path().join("src2"));
    let names = source(&src1, 1);
    source(&src2, 50);

    let p1 = store.push_dir(&src1, &names, "actor-1.gen-1", serde_json::json!({"gen": 1})).await.unwrap();
    assert_eq!(p1.logical_bytes, (4 << 20) + 100_000);
    assert_eq!((p1.chunks_total, p1.chunks_zero), (16 + 1, 10), "{p1:?}");
    assert!(p1.stored_bytes > 0 && p1.uploaded_bytes == p1.stored_bytes);
    // S3 timestamps have one-second resolution: make the second snapshot clearly newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    store.push_dir(&src2, &names, "actor-1.gen-2", serde_json::json!({"gen": 2})).await.unwrap();

    let list: Vec<String> = store.list().await.unwrap().into_iter().map(|s| s.snapshot_id).collect();
    assert_eq!(list, ["actor-1.gen-2", "actor-1.gen-1"]);

    // pull(None) follows LATEST; the result is byte-identical and sparse.
    let dst = tmp.path().join("dst");
    let pulled = store.pull(None, &dst).await.unwrap();
    assert_eq!(pulled.snapshot_id, "actor-1.gen-2");
    assert!(same(&src2, &dst, &names));
    assert!(
        allocated(&dst.join("memory.img")) <= (3 << 19) + (64 << 10),
        "{}",
        allocated(&dst.join("memory.img"))
    );
    let index = store.read_index("actor-1.gen-1").await.unwrap();
    assert_eq!(index.meta, serde_json::json!({"gen": 1}));
    assert_eq!(index.artifacts[1].name, "rootfs/delta.tar");
    store.pull(Some("actor-1.gen-1"), &tmp.path().join("dst1")).await.unwrap();
    assert!(same(&src1, &tmp.path().join("dst1"), &names));

    // The objects really are in the bucket, under the prefix.
    let chunk = index.artifacts[0].chunks[0].key.clone().unwrap();
    assert!(server.object_file(&format!("fleet/actors/actor-1.gen-1/{chunk}")).exists());

    let d = store.delete("actor-1.gen-2").await.unwrap();
    assert!(d.had_index && d.latest_removed, "{d:?}");
    let e = store.pull(Some("actor-1.gen-2"), &dst).await.unwrap_err();
    assert_eq!(e.to_string(), format!("no such snapshot actor-1.gen-2 under s3://{BUCKET}/fleet/actors"));
    let list: Vec<String> = store.list().await.unwrap().into_iter().map(|s| s.snapshot_id).collect();
    assert_eq!(list, ["actor-1.gen-1"]);
    assert!(store.pull(None, &dst).await.unwrap_err().is_not_found(), "LATEST went with its snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_interrupted_push_is_garbage_until_rerun() {
    let Some(server) = S3Server::start("s3_interrupted_push_is_garbage_until_rerun") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let names = source(&src, 7);
    let cfg = StoreConfig { chunk_size: CS, concurrency: 2, retry: fast_retry(), ..StoreConfig::default() };

    // The S3 connection "dies" after 2 chunk PUTs.
    let mut s3 = AmazonS3Builder::new().with_bucket_name(BUCKET);
    for (k, v) in server.options() {
        s3 = s3.with_config(k.parse().unwrap(), v);
    }
    let failing = FailAfter::new(Arc::new(s3.build().unwrap()), 2);
    let broken =
        Store::from_object_store(failing, "p", "s3 (failing)").unwrap().with_config(cfg.clone()).unwrap();
    let e = broken.push_dir(&src, &names, "snap", serde_json::Value::Null).await.unwrap_err();
    assert!(matches!(e, StoreError::Remote { op: "put chunk", .. }), "{e}");

    let store = server.store("p").with_config(cfg).unwrap();
    assert!(store.pull(Some("snap"), &tmp.path().join("d")).await.unwrap_err().is_not_found());
    assert!(store.list().await.unwrap().is_empty());
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: false }).await.unwrap();
    assert_eq!(gc.garbage.len(), 2, "{gc:?}");
    assert!(
        gc.garbage.iter().all(|g| g.reason == GarbageReason::NoIndex && g.key.starts_with("p/snap/chunks/"))
    );

    // Rerun: finishes the push, skipping the two chunks already there.
    let r = store.push_dir(&src, &names, "snap", serde_json::Value::Null).await.unwrap();
    assert_eq!(r.chunks_skipped_existing, 2, "{r:?}");
    store.pull(Some("snap"), &tmp.path().join("d")).await.unwrap();
    assert!(same(&src, &tmp.path().join("d"), &names));

    // Another abandoned push, then gc deletes it.
    source(&src, 99);
    let mut s3 = AmazonS3Builder::new().with_bucket_name(BUCKET);
    for (k, v) in server.options() {
        s3 = s3.with_config(k.parse().unwrap(), v);
    }
    let failing = FailAfter::new(Arc::new(s3.build().unwrap()), 3);
    let broken =
        Store::from_object_store(failing, "p", "s3 (failing)").unwrap().with_config(store.config().clone());
    broken.unwrap().push_dir(&src, &names, "other", serde_json::Value::Null).await.unwrap_err();
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: true }).await.unwrap();
    assert_eq!((gc.garbage.len(), gc.deleted_objects), (3, 3), "{gc:?}");
    assert!(store.gc(&GcOptions { grace: Duration::ZERO, delete: false }).await.unwrap().garbage.is_empty());
    // The committed snapshot was not touched.
    store.pull(Some("snap"), &tmp.path().join("d2")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_corrupted_chunk_is_refused_by_name() {
    let Some(server) = S3Server::start("s3_corrupted_chunk_is_refused_by_name") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let names = source(&src, 3);
    let store = small_chunks(&server.store("c"), CS);
    store.push_dir(&src, &names, "snap", serde_json::Value::Null).await.unwrap();
    let index = store.read_index("snap").await.unwrap();
    let key = index.artifacts[0].chunks[2].key.clone().unwrap();
    let file = server.object_file(&format!("c/snap/{key}"));
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() - 100;
    bytes[mid] ^= 0xFF; // inside the raw payload of an incompressible chunk
    std::fs::write(&file, &bytes).unwrap();

    let e = store.pull(Some("snap"), &tmp.path().join("d")).await.unwrap_err();
    match &e {
        StoreError::CorruptChunk { artifact, chunk: 2, key: k, fault, .. }
            if matches!(**fault, ChunkFault::Digest { .. }) =>
        {
            assert_eq!(artifact, "memory.img");
            assert_eq!(k, &format!("c/snap/{key}"));
        }
        other => panic!("expected chunk 2 of memory.img to be refused, got {other}"),
    }
    eprintln!("corrupt chunk refused: {e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_wrong_credentials_fail_fast_without_retries() {
    let Some(server) = S3Server::start("s3_wrong_credentials_fail_fast_without_retries") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let names = source(&src, 5);
    let mut opts = server.options();
    opts.retain(|(k, _)| *k != "aws_secret_access_key");
    opts.push(("aws_secret_access_key", "wrong".into()));
    let store = Store::open_with_options(&format!("s3://{BUCKET}/x"), opts).unwrap();
    let e = store.push_dir(&src, &names, "snap", serde_json::Value::Null).await.unwrap_err();
    assert!(matches!(e, StoreError::Remote { attempts: 1, .. }), "{e}");
    eprintln!("wrong credentials: {e}");
}
