//! `az://` against a real Azure Blob Storage emulator: Azurite (npm, Microsoft's emulator),
//! installed and started by `scripts/azurite.sh` on a free loopback port, with a container
//! created through the blob API. Skips LOUDLY only when Azurite cannot be installed.
//!
//! object_store takes the emulator's URL from the environment only
//! (`AZURITE_BLOB_STORAGE_URL`), so this binary holds exactly one test and sets it before
//! any thread that reads the environment exists.

#![cfg(feature = "cloud")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ateom_store::{GcOptions, Store, StoreError};
use common::*;
use object_store::ObjectStoreExt;

const CONTAINER: &str = "snapshots";

struct Azurite {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/azurite.sh")
}

impl Azurite {
    fn start() -> Result<Azurite, String> {
        let installed = Command::new("bash")
            .arg(script())
            .arg("install")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        if !installed.success() {
            return Err(format!("{} install exited with {installed}", script().display()));
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("bash")
            .arg(script())
            .args(["run", "--port", &port.to_string(), "--data"])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn azurite.sh run");
        let server = Azurite { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        wait_listening(port, 30, "Azurite");
        let created = Command::new("bash")
            .arg(script())
            .args(["create-container", "--endpoint", &server.url, "--container", CONTAINER])
            .status()
            .unwrap();
        assert!(created.success(), "Create Container failed");
        Ok(server)
    }
}

#[test]
fn az_push_pull_list_corrupt_gc_delete() {
    let server = match Azurite::start() {
        Ok(s) => s,
        Err(why) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "\nSKIPPED az_push_pull_list_corrupt_gc_delete: {why}\n");
            return;
        }
    };
    // SAFETY: the only test of this binary, before the runtime (or any other thread that
    // could read the environment) starts.
    unsafe {
        std::env::set_var("AZURE_STORAGE_USE_EMULATOR", "true");
        std::env::set_var("AZURITE_BLOB_STORAGE_URL", &server.url);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(scenario());
    drop(server);
}

async fn scenario() {
    let tmp = tempfile::tempdir().unwrap();
    let store = small_chunks(&Store::open(&format!("az://{CONTAINER}/fleet/actors")).unwrap(), 256 << 10);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    write_runs(&src.join("memory.img"), &[Run::Data(1 << 20, 7), Run::Zero(2 << 20), Run::Data(300_000, 8)]);
    let names = vec!["memory.img".to_string()];

    let pushed = store.push_dir(&src, &names, "a1.gen-1", serde_json::json!({"gen": 1})).await.unwrap();
    assert_eq!((pushed.chunks_total, pushed.chunks_zero), (14, 8), "{pushed:?}");
    assert!(pushed.stored_bytes > 0);
    let list: Vec<String> = store.list().await.unwrap().into_iter().map(|s| s.snapshot_id).collect();
    assert_eq!(list, ["a1.gen-1"]);

    // pull(None) follows LATEST: byte-identical and sparse.
    let dst = tmp.path().join("dst");
    let pulled = store.pull(None, &dst).await.unwrap();
    assert_eq!(pulled.snapshot_id, "a1.gen-1");
    assert_eq!(
        std::fs::read(src.join("memory.img")).unwrap(),
        std::fs::read(dst.join("memory.img")).unwrap()
    );
    assert!(allocated(&dst.join("memory.img")) < (2 << 20), "holes stay holes");

    // The blobs really are in the emulator: read one through a client of our own, then
    // overwrite it with garbage; the pull is refused naming the chunk.
    let raw = object_store::azure::MicrosoftAzureBuilder::from_env()
        .with_container_name(CONTAINER)
        .build()
        .unwrap();
    let index = store.read_index("a1.gen-1").await.unwrap();
    let key = index.artifacts[0].chunks[0].key.clone().unwrap();
    let path = object_store::path::Path::from(format!("fleet/actors/a1.gen-1/{key}"));
    assert!(raw.head(&path).await.is_ok(), "the chunk is in the container");
    raw.put(&path, b"not a zstd frame".to_vec().into()).await.unwrap();
    let err = store.pull(None, &tmp.path().join("dst2")).await.unwrap_err();
    assert!(matches!(err, StoreError::CorruptChunk { chunk: 0, .. }), "{err}");

    // An abandoned upload (chunks, no index) is garbage for gc, and only after its grace.
    let stray = object_store::path::Path::from(format!("fleet/actors/a2.gen-1/{key}"));
    raw.put(&stray, b"x".to_vec().into()).await.unwrap();
    let listed = store.gc(&GcOptions { grace: Duration::from_secs(3600), delete: false }).await.unwrap();
    assert!(listed.garbage.is_empty(), "within its grace: {listed:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let found = store.gc(&GcOptions { grace: Duration::from_secs(1), delete: true }).await.unwrap();
    assert_eq!(found.garbage.len(), 1, "{found:?}");
    assert_eq!(found.deleted_objects, 1);

    let deleted = store.delete("a1.gen-1").await.unwrap();
    assert!(deleted.had_index && deleted.latest_removed, "{deleted:?}");
    assert!(store.list().await.unwrap().is_empty());
    let err = store.pull(Some("a1.gen-1"), &tmp.path().join("dst3")).await.unwrap_err();
    assert!(err.to_string().contains("no such snapshot a1.gen-1"), "{err}");
}
