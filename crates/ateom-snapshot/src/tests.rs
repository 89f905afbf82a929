use super::*;
use ateom_core::{Capabilities, HostFingerprint, MANIFEST_FORMAT_VERSION, WorkloadSpec};
use std::collections::BTreeMap;

fn actor() -> ActorRef {
    ActorRef::parse("ns", "tpl", "a1").unwrap()
}

fn id(n: u32) -> SnapshotId {
    SnapshotId::generate(std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::from(n)), n)
}

fn manifest(id: &SnapshotId, artifacts: Vec<Artifact>) -> SnapshotManifest {
    SnapshotManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        snapshot_id: id.clone(),
        actor: actor(),
        created_at: "now".into(),
        backend: "test".into(),
        runtime_version: "1".into(),
        kernel_id: String::new(),
        cpu_template: String::new(),
        host: HostFingerprint::default(),
        capabilities: Capabilities::default(),
        image_digests: BTreeMap::new(),
        workload: WorkloadSpec { containers: vec![] },
        provenance: BTreeMap::new(),
        artifacts,
        scope: ateom_core::Scope::Full,
    }
}

fn write_snapshot(store: &LocalSnapshots, n: u32) -> LocalSnapshot {
    let p = store.begin_empty(&actor(), id(n)).unwrap();
    fs::write(p.dir().join("checkpoint.img"), b"state").unwrap();
    fs::create_dir(p.dir().join("disk")).unwrap();
    fs::write(p.dir().join("disk/rootfs.ext4"), vec![7u8; 3 << 20]).unwrap();
    let snap_id = p.id().clone();
    p.commit(|a| manifest(&snap_id, a)).unwrap()
}

#[test]
fn commit_writes_manifest_with_digests_and_renames() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    let snap = write_snapshot(&store, 1);
    let names: Vec<_> = snap.manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["checkpoint.img", "disk/rootfs.ext4"]);
    assert_eq!(snap.manifest.artifacts[0].size, 5);
    // sha256("state")
    assert_eq!(snap.manifest.artifacts[0].sha256, hex::encode(Sha256::digest(b"state")));
    assert!(snap.dir.join(MANIFEST_FILE).is_file());
    assert!(!snap.dir.to_string_lossy().contains(PARTIAL_PREFIX));
    snap.verify().unwrap();
    let reopened = store.open(&actor(), &snap.manifest.snapshot_id).unwrap();
    assert_eq!(reopened.manifest, snap.manifest);
    assert_eq!(reopened.files().last().unwrap().file_name().unwrap(), MANIFEST_FILE);
}

#[test]
fn uncommitted_snapshots_do_not_exist() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    let p = store.begin_empty(&actor(), id(1)).unwrap();
    fs::write(p.dir().join("checkpoint.img"), b"half").unwrap();
    std::mem::forget(p); // a crash: neither commit nor drop ran
    assert!(store.list(&actor()).unwrap().is_empty());
    assert!(matches!(store.latest(&actor()), Err(SnapshotError::NoneForActor { .. })));
    assert!(matches!(store.open(&actor(), &id(1)), Err(SnapshotError::NotFound { .. })));
    assert_eq!(store.remove_partials().unwrap().len(), 1);

    let p = store.begin_empty(&actor(), id(2)).unwrap();
    let dir = p.dir().to_owned();
    drop(p);
    assert!(!dir.exists(), "dropping a pending snapshot removes it");
}

#[test]
fn latest_is_newest_and_delete_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    write_snapshot(&store, 1);
    let newer = write_snapshot(&store, 2);
    assert_eq!(store.latest(&actor()).unwrap().manifest.snapshot_id, newer.manifest.snapshot_id);
    store.delete(&actor(), &newer.manifest.snapshot_id).unwrap();
    store.delete(&actor(), &newer.manifest.snapshot_id).unwrap();
    assert_eq!(store.list(&actor()).unwrap(), vec![id(1)]);
    assert!(matches!(store.begin_empty(&actor(), id(1)), Err(SnapshotError::Exists { .. })));
}

#[test]
fn verify_names_the_corrupt_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    let snap = write_snapshot(&store, 1);
    let disk = snap.dir.join("disk/rootfs.ext4");
    let mut bytes = fs::read(&disk).unwrap();
    bytes[1 << 20] ^= 1;
    fs::write(&disk, bytes).unwrap();
    match snap.verify() {
        Err(SnapshotError::Corrupt { artifact, detail, .. }) => {
            assert_eq!(artifact, "disk/rootfs.ext4");
            assert!(detail.contains("digest"), "{detail}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    fs::write(snap.dir.join("checkpoint.img"), b"stat").unwrap();
    match snap.verify() {
        Err(SnapshotError::Corrupt { artifact, detail, .. }) => {
            assert_eq!(artifact, "checkpoint.img");
            assert!(detail.contains("size"), "{detail}");
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    fs::remove_file(snap.dir.join("checkpoint.img")).unwrap();
    assert!(matches!(snap.verify(), Err(SnapshotError::Corrupt { .. })));
}

#[test]
fn a_damaged_manifest_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    let snap = write_snapshot(&store, 1);
    fs::write(snap.dir.join(MANIFEST_FILE), b"{\"format_version\":1,").unwrap();
    assert!(matches!(store.open(&actor(), &id(1)), Err(SnapshotError::BadManifest { .. })));
}

#[test]
fn delete_all_removes_every_snapshot_and_partial_of_one_actor_only() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    write_snapshot(&store, 1);
    write_snapshot(&store, 2);
    let partial = store.begin_empty(&actor(), id(3)).unwrap();
    std::mem::forget(partial); // as a crash would leave it
    let other = ActorRef::parse("ns", "tpl", "someone-else").unwrap();
    let p = store.begin_empty(&other, id(1)).unwrap();
    fs::write(p.dir().join("checkpoint.img"), b"other").unwrap();
    p.commit(|a| SnapshotManifest { actor: other.clone(), ..manifest(&id(1), a) }).unwrap();

    let deleted = store.delete_all(&actor()).unwrap();
    assert_eq!(deleted.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), vec![id(1), id(2)]);
    assert!(deleted.iter().all(|(_, bytes)| *bytes > 0), "{deleted:?}");
    assert!(!store.actor_dir(&actor()).exists(), "partials go too");
    assert_eq!(store.list(&other).unwrap(), vec![id(1)], "another actor's snapshot stays");
    assert!(store.delete_all(&actor()).unwrap().is_empty(), "deleting nothing is fine");
}

#[test]
fn a_capture_survives_until_committed_from_its_intent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    let sid = id(5);
    let p = store.begin(&actor(), sid.clone(), &manifest(&sid, vec![])).unwrap();
    assert!(p.dir().join(INTENT_FILE).is_file(), "the intent is written before any artifact");
    fs::write(p.dir().join("checkpoint.img"), b"frozen state").unwrap();
    let captured = p.captured().unwrap();
    assert!(captured.dir().file_name().unwrap().to_string_lossy().starts_with(CAPTURED_PREFIX));
    assert!(store.exists(&actor(), &sid), "a capture counts as existing");
    assert!(store.list(&actor()).unwrap().is_empty(), "but it is not a snapshot yet");

    // A crash (or a failed commit) later: the capture is still there, whole.
    drop(captured);
    let unfinished = store.unfinished().unwrap();
    assert_eq!(unfinished.len(), 1);
    assert!(unfinished[0].captured);
    let captured = unfinished.into_iter().next().unwrap().into_captured().unwrap();
    assert_eq!(store.remove_partials().unwrap().len(), 0, "captures are never removed as partials");

    let snap = captured.commit().unwrap();
    assert_eq!(snap.manifest.snapshot_id, sid);
    assert_eq!(snap.manifest.backend, "test", "the manifest comes from the intent");
    let names: Vec<_> = snap.manifest.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["checkpoint.img"], "dot-files are not artifacts");
    snap.verify().unwrap();
    assert_eq!(store.list(&actor()).unwrap(), vec![sid.clone()]);
    assert!(store.unfinished().unwrap().is_empty());
    assert!(matches!(store.begin_empty(&actor(), sid), Err(SnapshotError::Exists { .. })));
}

#[test]
fn a_capture_without_intent_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    let p = store.begin_empty(&actor(), id(1)).unwrap();
    fs::write(p.dir().join("checkpoint.img"), b"x").unwrap();
    let c = p.captured().unwrap();
    assert!(matches!(c.commit(), Err(SnapshotError::NoIntent { .. })));
    assert!(c.dir().is_dir(), "kept");
    c.discard().unwrap();
    assert!(store.unfinished().unwrap().is_empty());
}

#[test]
fn prune_keeps_the_newest_the_pinned_and_the_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = LocalSnapshots::new(tmp.path());
    for n in 1..=6 {
        write_snapshot(&store, n);
    }
    store.set_pins(&actor(), &[id(1), id(1)]).unwrap();
    assert_eq!(store.pins(&actor()), vec![id(1)]);
    let deleted = store.prune(&actor(), 2, &[id(3)]).unwrap();
    assert_eq!(deleted.iter().map(|(i, _)| i.clone()).collect::<Vec<_>>(), vec![id(2), id(4)]);
    assert!(deleted.iter().all(|(_, b)| *b > 0));
    assert_eq!(store.list(&actor()).unwrap(), vec![id(1), id(3), id(5), id(6)]);
    assert!(store.prune(&actor(), 2, &[id(3)]).unwrap().is_empty(), "idempotent");
    assert!(store.used_bytes() > 0);
    assert_eq!(store.actor_keys(), vec![actor().key()]);
}
