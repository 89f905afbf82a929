//! Bounded inputs: objects are size-checked before their bodies are read (a huge `LATEST`,
//! `index.json` or chunk object is refused naming the object and the limit, without filling
//! memory); `file://` deletes and gc never follow a symlink; `LATEST` never moves backwards
//! unless the push says `force_latest`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use ateom_store::index::{MAX_INDEX_BYTES, MAX_LATEST_BYTES};
use ateom_store::{ChunkFault, GcOptions, PushOptions, Store, StoreError};
use common::*;

const CS: u64 = 64 << 10;

fn source(dir: &std::path::Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    write_runs(&dir.join("memory"), &[Run::Data(CS, 1), Run::Zero(CS), Run::Data(1000, 2)]);
    vec!["memory".into()]
}

/// A sparse file of `len` bytes: huge on paper, nothing on disk.
fn huge(path: &std::path::Path, len: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_latest_and_index_are_refused_by_size_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);

    huge(&bucket.join("LATEST"), 1 << 40);
    let e = store.latest().await.unwrap_err();
    match &e {
        StoreError::ObjectTooLarge { key, size, at_least: false, limit } => {
            assert_eq!((key.as_str(), *size, *limit), ("LATEST", 1 << 40, MAX_LATEST_BYTES as u64));
        }
        other => panic!("expected LATEST refused by size, got {other}"),
    }
    eprintln!("{e}");
    let e = store.pull(None, &tmp.path().join("d")).await.unwrap_err();
    assert!(matches!(e, StoreError::ObjectTooLarge { .. }), "{e}");

    huge(&bucket.join("big/index.json"), 1 << 40);
    let e = store.read_index("big").await.unwrap_err();
    match &e {
        StoreError::ObjectTooLarge { key, size, limit, .. } => {
            assert_eq!((key.as_str(), *size, *limit), ("big/index.json", 1 << 40, MAX_INDEX_BYTES as u64));
        }
        other => panic!("expected index.json refused by size, got {other}"),
    }
    eprintln!("{e}");
    let e = store.pull(Some("big"), &tmp.path().join("d")).await.unwrap_err();
    assert!(matches!(e, StoreError::ObjectTooLarge { .. }), "{e}");
    assert!(tree(&tmp.path().join("d")).is_empty());

    // A push is not blocked by an unreadable LATEST: it replaces it.
    let src = tmp.path().join("src");
    let names = source(&src);
    let r = store.push_dir(&src, &names, "s1", serde_json::json!({})).await.unwrap();
    assert!(r.latest_moved, "{r:?}");
    assert_eq!(store.latest().await.unwrap(), "s1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_object_larger_than_its_entry_is_refused_without_reading_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket) = (tmp.path().join("src"), tmp.path().join("bucket"));
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "s", serde_json::json!({})).await.unwrap();
    let index = store.read_index("s").await.unwrap();
    let key = index.artifacts[0].chunks[0].key.clone().unwrap();
    let clen = index.artifacts[0].chunks[0].compressed_length.unwrap();
    huge(&bucket.join("s").join(&key), 1 << 40);
    let e = store.pull(Some("s"), &tmp.path().join("d")).await.unwrap_err();
    match &e {
        StoreError::CorruptChunk { chunk: 0, fault, .. } => {
            assert_eq!(**fault, ChunkFault::StoredLength { expected: clen, actual: 1 << 40 })
        }
        other => panic!("expected chunk 0 refused by size, got {other}"),
    }
}

/// A store whose responses understate the object's size and then stream far more: reading
/// stops at the limit.
mod lying {
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt;
    use futures::stream::BoxStream;
    use object_store::path::Path;
    use object_store::{
        CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
        ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
    };

    #[derive(Debug)]
    pub struct Lying(pub Arc<dyn ObjectStore>);

    impl std::fmt::Display for Lying {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Lying({})", self.0)
        }
    }

    #[async_trait::async_trait]
    impl ObjectStore for Lying {
        async fn put_opts(&self, l: &Path, p: PutPayload, o: PutOptions) -> Result<PutResult> {
            self.0.put_opts(l, p, o).await
        }
        async fn put_multipart_opts(
            &self,
            l: &Path,
            o: PutMultipartOptions,
        ) -> Result<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(l, o).await
        }
        async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
            let mut r = self.0.get_opts(location, options).await?;
            // Claims 10 bytes, then sends 1 MiB parts for ever.
            r.meta.size = 10;
            r.range = 0..10;
            let endless = futures::stream::repeat_with(|| Ok(Bytes::from(vec![b'{'; 1 << 20])));
            r.payload = GetResultPayload::Stream(endless.boxed());
            Ok(r)
        }
        fn delete_stream(&self, l: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
            self.0.delete_stream(l)
        }
        fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
            self.0.list(prefix)
        }
        async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
            self.0.list_with_delimiter(prefix).await
        }
        async fn copy_opts(&self, from: &Path, to: &Path, o: CopyOptions) -> Result<()> {
            self.0.copy_opts(from, to, o).await
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_longer_than_its_announced_size_stops_at_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let bucket = tmp.path().join("bucket");
    let src = tmp.path().join("src");
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "s", serde_json::json!({})).await.unwrap();
    let local = Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&bucket).unwrap());
    let liar = Store::from_object_store(Arc::new(lying::Lying(local)), "", "lying").unwrap();
    for (e, key, limit) in [
        (liar.latest().await.unwrap_err(), "LATEST", MAX_LATEST_BYTES),
        (liar.read_index("s").await.unwrap_err(), "s/index.json", MAX_INDEX_BYTES),
    ] {
        match &e {
            StoreError::ObjectTooLarge { key: k, size, at_least: true, limit: l } => {
                assert_eq!((k.as_str(), *l), (key, limit as u64));
                assert!(*size > limit as u64 && *size <= limit as u64 + (1 << 20), "{size}");
            }
            other => panic!("expected {key} cut off at its limit, got {other}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_delete_and_gc_never_follow_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket, outside) =
        (tmp.path().join("src"), tmp.path().join("bucket"), tmp.path().join("outside"));
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    store.push_dir(&src, &names, "real", serde_json::json!({})).await.unwrap();

    // Outside the store: what a snapshot prefix looks like, with an abandoned-looking chunk.
    let victim_chunk = outside.join("chunks").join("a".repeat(64));
    std::fs::create_dir_all(victim_chunk.parent().unwrap()).unwrap();
    std::fs::write(&victim_chunk, b"precious").unwrap();
    std::fs::write(outside.join("index.json"), b"precious").unwrap();
    // A snapshot prefix that is a symlink, and a chunks directory that is one.
    std::os::unix::fs::symlink(&outside, bucket.join("evil")).unwrap();
    std::os::unix::fs::symlink(outside.join("chunks"), bucket.join("real/chunks-link")).unwrap();
    std::fs::create_dir_all(bucket.join("half")).unwrap();
    std::os::unix::fs::symlink(outside.join("chunks"), bucket.join("half/chunks")).unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let e = store.delete("evil").await.unwrap_err();
    match &e {
        StoreError::SymlinkInStore { path, component } => {
            assert_eq!(component, &bucket.join("evil"));
            assert_eq!(path, &bucket.join("evil/index.json"));
        }
        other => panic!("expected the delete refused at the symlink, got {other}"),
    }
    eprintln!("{e}");
    let gc = store.gc(&GcOptions { grace: Duration::ZERO, delete: true }).await.unwrap();
    assert!(gc.garbage.is_empty(), "nothing behind a symlink is garbage: {gc:?}");
    // "half" has no index and only a symlinked chunks dir: deleting it finds no object.
    assert!(store.delete("half").await.unwrap_err().is_not_found());
    assert_eq!(std::fs::read(&victim_chunk).unwrap(), b"precious");
    assert_eq!(std::fs::read(outside.join("index.json")).unwrap(), b"precious");

    // The real snapshot deletes normally; the links in it are left, their targets untouched.
    let d = store.delete("real").await.unwrap();
    assert!(d.had_index && d.latest_removed, "{d:?}");
    assert!(!bucket.join("real/index.json").exists());
    assert_eq!(std::fs::read(&victim_chunk).unwrap(), b"precious");
    let ids: Vec<String> = store.list().await.unwrap().into_iter().map(|s| s.snapshot_id).collect();
    assert!(ids.is_empty(), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_never_moves_backwards_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, bucket) = (tmp.path().join("src"), tmp.path().join("bucket"));
    let names = source(&src);
    let store = small_chunks(&Store::open(&file_uri(&bucket)).unwrap(), CS);
    // ateom's ids: "<UTC yyyymmddThhmmss.mmm>-<hex>" sort by age.
    let (old, new, newer) =
        ("20261128T100000.000-0000aaaa", "20261128T100001.000-0000bbbb", "20261128T100002.000-00000001");

    let r = store.push_dir(&src, &names, new, serde_json::json!({})).await.unwrap();
    assert_eq!((r.latest.as_deref(), r.latest_moved), (Some(new), true));
    // A slow push of an older snapshot finishing later: committed, LATEST stays.
    let r = store.push_dir(&src, &names, old, serde_json::json!({})).await.unwrap();
    assert_eq!((r.latest.as_deref(), r.latest_moved), (Some(new), false), "{r:?}");
    assert_eq!(store.latest().await.unwrap(), new);
    store.pull(Some(old), &tmp.path().join("d-old")).await.unwrap();
    // Re-pushing the current one keeps it; a newer one moves it.
    let r = store.push_dir(&src, &names, new, serde_json::json!({})).await.unwrap();
    assert!(r.latest_moved);
    let r = store.push_dir(&src, &names, newer, serde_json::json!({})).await.unwrap();
    assert_eq!((r.latest.as_deref(), r.latest_moved), (Some(newer), true));
    // Explicitly forced: back to the old one.
    let forced = PushOptions { force_latest: true, ..PushOptions::default() };
    let r = store.push_dir_with(&src, &names, old, serde_json::json!({}), &forced).await.unwrap();
    assert_eq!((r.latest.as_deref(), r.latest_moved), (Some(old), true));
    assert_eq!(store.pull(None, &tmp.path().join("d")).await.unwrap().snapshot_id, old);
    // update_latest off: LATEST untouched, and the report says so.
    let off = PushOptions { update_latest: false, ..PushOptions::default() };
    let r = store.push_dir_with(&src, &names, newer, serde_json::json!({}), &off).await.unwrap();
    assert_eq!((r.latest, r.latest_moved), (None, false));
    assert_eq!(store.latest().await.unwrap(), old);
    // A corrupt pointer is replaced by the next push.
    std::fs::write(bucket.join("LATEST"), b"garbage").unwrap();
    assert!(matches!(store.latest().await, Err(StoreError::CorruptLatest { .. })));
    let r = store.push_dir(&src, &names, old, serde_json::json!({})).await.unwrap();
    assert!(r.latest_moved);
    assert_eq!(store.latest().await.unwrap(), old);
}
