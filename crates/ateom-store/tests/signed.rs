//! Signed snapshots against a real `file://` store: a store configured with keys signs what it
//! pushes and refuses, before reading anything else, an index or `LATEST` that is unsigned,
//! forged, tampered with, or copied from another prefix.

mod common;

use ateom_store::{PullOptions, SigningKeys, Store, StoreConfig, StoreError};
use common::*;

fn keyed(uri: &str, key: u8) -> Store {
    let cfg = StoreConfig {
        signing: Some(SigningKeys::from_bytes(&[vec![key; 32]]).unwrap()),
        chunk_size: 64 << 10,
        ..StoreConfig::default()
    };
    Store::open(uri).unwrap().with_config(cfg).unwrap()
}

fn source(dir: &std::path::Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    write_runs(&dir.join("memory"), &[Run::Data(64 << 10, 1), Run::Zero(64 << 10), Run::Data(100, 2)]);
    vec!["memory".into()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_snapshots_verify_and_everything_else_is_refused_before_use() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let names = source(&src);
    let bucket = tmp.path().join("bucket");
    let a_uri = file_uri(&bucket.join("actors/a1"));
    let a = keyed(&a_uri, 7);
    a.push_dir(&src, &names, "s1", serde_json::json!({"actor": "a1"})).await.unwrap();

    // The same key verifies: index, LATEST, pull byte-exact.
    assert_eq!(a.latest().await.unwrap(), "s1");
    a.read_index("s1").await.unwrap();
    let dst = tmp.path().join("dst");
    a.pull_with(Some("s1"), &dst, &PullOptions::default()).await.unwrap();
    assert_eq!(std::fs::read(src.join("memory")).unwrap(), std::fs::read(dst.join("memory")).unwrap());

    // Another key: refused, naming the object.
    let other = keyed(&a_uri, 8);
    match other.read_index("s1").await {
        Err(StoreError::BadSignature { object, .. }) => assert_eq!(object, "s1/index.json"),
        r => panic!("expected a bad signature, got {r:?}"),
    }
    assert!(matches!(other.latest().await, Err(StoreError::BadSignature { .. })));
    let dst2 = tmp.path().join("dst2");
    assert!(matches!(
        other.pull_with(Some("s1"), &dst2, &PullOptions::default()).await,
        Err(StoreError::BadSignature { .. })
    ));
    assert!(!dst2.join("memory").exists(), "nothing was written");

    // A tampered index (meta changed: say, the actor or provenance), signature kept.
    let index_path = bucket.join("actors/a1/s1/index.json");
    let original = std::fs::read(&index_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    v["meta"]["actor"] = "a2".into();
    std::fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(a.read_index("s1").await, Err(StoreError::BadSignature { .. })));
    // Signature removed: unsigned.
    v["meta"]["actor"] = "a1".into();
    v.as_object_mut().unwrap().remove("signature");
    std::fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(matches!(a.read_index("s1").await, Err(StoreError::Unsigned { .. })));
    std::fs::write(&index_path, &original).unwrap();
    a.read_index("s1").await.unwrap();

    // A validly signed snapshot copied under another actor's prefix does not verify there.
    let b_dir = bucket.join("actors/a2/s1");
    std::fs::create_dir_all(&b_dir).unwrap();
    for entry in walkdir(&bucket.join("actors/a1/s1")) {
        let rel = entry.strip_prefix(bucket.join("actors/a1/s1")).unwrap();
        std::fs::create_dir_all(b_dir.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, b_dir.join(rel)).unwrap();
    }
    let b = keyed(&file_uri(&bucket.join("actors/a2")), 7);
    assert!(matches!(b.read_index("s1").await, Err(StoreError::BadSignature { .. })), "bound to its prefix");

    // A store without keys writes unsigned snapshots; a keyed store refuses them.
    let plain = Store::open(&file_uri(&bucket.join("plain"))).unwrap();
    plain.push_dir(&src, &names, "s2", serde_json::json!({})).await.unwrap();
    let keyed_plain = keyed(&file_uri(&bucket.join("plain")), 7);
    assert!(matches!(keyed_plain.read_index("s2").await, Err(StoreError::Unsigned { .. })));
    assert!(matches!(keyed_plain.latest().await, Err(StoreError::Unsigned { .. })));

    // A forged LATEST (pointing elsewhere, signature copied) is refused.
    let latest_path = bucket.join("actors/a1/LATEST");
    let mut p: serde_json::Value = serde_json::from_slice(&std::fs::read(&latest_path).unwrap()).unwrap();
    p["snapshot_id"] = "s9".into();
    std::fs::write(&latest_path, serde_json::to_vec(&p).unwrap()).unwrap();
    assert!(matches!(a.latest().await, Err(StoreError::BadSignature { .. })));
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walkdir(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}
