//! Substrate's node agent, played as it plays it: bundles prepared under the actor
//! directory, requests with substrate's fields only, checkpoint files taken from
//! `checkpoint-state/` by their relative names and shipped elsewhere, the actor directory
//! wiped, the files put back into `restore-state/` on another worker that never saw the
//! actor, restore. Also DATA scope with a durable directory.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Only substrate's fields (1-8).
fn substrate_run(id: &str, volumes: &[&str]) -> ateom_proto::RunWorkloadRequest {
    let (a, b, c) = actor(id);
    ateom_proto::RunWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(spec(volumes)),
        ..Default::default()
    }
}

fn spec(volumes: &[&str]) -> ateom_proto::WorkloadSpec {
    ateom_proto::WorkloadSpec {
        containers: vec![ateom_proto::Container {
            name: "counter".into(),
            readyz: Some(ateom_proto::Readyz {
                http_get: Some(ateom_proto::HttpGetAction { path: "/readyz".into(), port: 8080 }),
                timeout_seconds: 0,
            }),
            durable_dir_volumes: volumes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }],
    }
}

fn substrate_checkpoint(
    id: &str,
    scope: ateom_proto::SnapshotScope,
    volumes: &[&str],
) -> ateom_proto::CheckpointWorkloadRequest {
    let (a, b, c) = actor(id);
    ateom_proto::CheckpointWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(spec(volumes)),
        // Where the node agent will ship the files; ateom does not push in this convention.
        snapshot_uri_prefix: "s3://substrate-bucket/actors/x".into(),
        scope: scope as i32,
        ..Default::default()
    }
}

fn substrate_restore(
    id: &str,
    scope: ateom_proto::SnapshotScope,
    volumes: &[&str],
) -> ateom_proto::RestoreWorkloadRequest {
    let (a, b, c) = actor(id);
    ateom_proto::RestoreWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(spec(volumes)),
        snapshot_uri_prefix: "s3://substrate-bucket/actors/x".into(),
        scope: scope as i32,
        ..Default::default()
    }
}

fn actor_dir(state: &Path, id: &str) -> PathBuf {
    state.join(format!("actors/test:counter:{id}"))
}

/// "Ship" the files the response names from checkpoint-state to a bucket stand-in, then wipe
/// the actor directory as the node agent does.
fn ship_and_wipe(state: &Path, id: &str, files: &[String], bucket: &Path) {
    let from = actor_dir(state, id).join("checkpoint-state");
    for f in files {
        assert!(!f.starts_with('/'), "snapshot_files are relative names: {f}");
        let to = bucket.join(f);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(from.join(f), &to).unwrap_or_else(|e| panic!("{f}: {e}"));
    }
    std::fs::remove_dir_all(actor_dir(state, id)).unwrap();
}

/// Put the shipped files into `restore-state/` (optionally without the manifest).
fn bring_back(state: &Path, id: &str, bucket: &Path, with_manifest: bool) {
    let to = actor_dir(state, id).join("restore-state");
    let st = std::process::Command::new("cp").arg("-a").arg(bucket).arg(&to).status().unwrap();
    assert!(st.success());
    if !with_manifest {
        std::fs::remove_file(to.join("manifest.json")).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoint_state_shipped_and_restored_from_restore_state_on_another_worker() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    for (n, with_manifest) in [(1, true), (2, false)] {
        let id = format!("n{n}");
        agent_bundle(tmp.path(), &state_a, &id, "counter", &image, &[]);
        let a = Worker::start(&state_a, &[]);
        let mut ca = a.client().await;
        let run = ca.run_workload(substrate_run(&id, &[])).await.expect("run").into_inner();
        for i in 1..=3 {
            assert_eq!(hit(&run.host_endpoint).await.memory, i);
        }
        let ck = ca
            .checkpoint_workload(substrate_checkpoint(&id, ateom_proto::SnapshotScope::Full, &[]))
            .await
            .expect("checkpoint")
            .into_inner();
        assert_eq!(
            ck.snapshot_files.last().map(String::as_str),
            Some("manifest.json"),
            "{:?}",
            ck.snapshot_files
        );
        assert!(ck.snapshot_files.iter().any(|f| f == "checkpoint.img"));
        assert_eq!(ck.stored_bytes, 0, "the node agent ships, not ateom");
        let bucket = tmp.path().join(format!("bucket-{n}"));
        ship_and_wipe(&state_a, &id, &ck.snapshot_files, &bucket);
        drop(a);

        // Another worker that never saw the actor: the node agent prepares the bundle again
        // and puts the files back.
        agent_bundle(tmp.path(), &state_b, &id, "counter", &image, &[]);
        bring_back(&state_b, &id, &bucket, with_manifest);
        let b = Worker::start(&state_b, &[]);
        let mut cb = b.client().await;
        let r = cb
            .restore_workload(substrate_restore(&id, ateom_proto::SnapshotScope::Full, &[]))
            .await
            .unwrap_or_else(|e| panic!("restore from restore-state (manifest: {with_manifest}): {e}"))
            .into_inner();
        let n = hit(&r.host_endpoint).await;
        assert_eq!((n.memory, n.file), (4, 4), "memory and files continued (manifest: {with_manifest})");
        assert!(!actor_dir(&state_b, &id).join("restore-state").exists(), "restore-state is consumed");
        if with_manifest {
            assert_eq!(r.snapshot_id, ck.manifest.unwrap().snapshot_id, "the manifest's snapshot");
        }
        cb.checkpoint_workload(substrate_checkpoint(&id, ateom_proto::SnapshotScope::Full, &[]))
            .await
            .unwrap();
        assert!(b.namespaces().is_empty() && b.runsc_processes().is_empty());
    }
}

/// DATA scope: only the durable directory is captured; a DATA restore on another worker
/// starts the workload fresh with the directory put back. FULL captures it along with
/// everything else.
#[tokio::test(flavor = "multi_thread")]
async fn data_scope_keeps_the_durable_directory_and_starts_fresh() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let volumes = ["/data"];
    // The counter keeps its file counter in COUNTER_DIR: the durable directory.
    let env = [("COUNTER_DIR", "/data")];
    agent_bundle(tmp.path(), &state_a, "d1", "counter", &image, &env);
    let a = Worker::start(&state_a, &[]);
    let mut ca = a.client().await;
    let run = ca.run_workload(substrate_run("d1", &volumes)).await.expect("run").into_inner();
    for i in 1..=3 {
        let n = hit(&run.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
    }
    assert!(
        actor_dir(&state_a, "d1").join("durable-dir/data/count").is_file(),
        "the workload's writes land in the host's durable directory"
    );
    let ck = ca
        .checkpoint_workload(substrate_checkpoint("d1", ateom_proto::SnapshotScope::Data, &volumes))
        .await
        .expect("DATA checkpoint")
        .into_inner();
    assert!(
        ck.snapshot_files.iter().all(|f| f.starts_with("durable/data/") || f == "manifest.json"),
        "{:?}",
        ck.snapshot_files
    );
    assert!(ck.snapshot_files.iter().any(|f| f == "durable/data/count"));
    let bucket = tmp.path().join("bucket");
    ship_and_wipe(&state_a, "d1", &ck.snapshot_files, &bucket);
    drop(a);

    agent_bundle(tmp.path(), &state_b, "d1", "counter", &image, &env);
    bring_back(&state_b, "d1", &bucket, true);
    let b = Worker::start(&state_b, &[]);
    let mut cb = b.client().await;
    let r = cb
        .restore_workload(substrate_restore("d1", ateom_proto::SnapshotScope::Data, &volumes))
        .await
        .expect("DATA restore")
        .into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!(n.memory, 1, "a fresh start: memory does not continue");
    assert_eq!(n.file, 4, "the durable directory does");

    // FULL with a durable directory: memory and the directory both continue.
    let ck = cb
        .checkpoint_workload(substrate_checkpoint("d1", ateom_proto::SnapshotScope::Full, &volumes))
        .await
        .expect("FULL checkpoint with a durable directory")
        .into_inner();
    assert!(ck.snapshot_files.iter().any(|f| f == "checkpoint.img"));
    assert!(ck.snapshot_files.iter().any(|f| f == "durable/data/count"));
    // The directory changes behind the worker's back: the restore puts the snapshot's back.
    std::fs::write(actor_dir(&state_b, "d1").join("durable-dir/data/count"), "100").unwrap();
    // No restore-state this time: the snapshot on this worker (a node agent that finds its
    // files here passes no store to pull from).
    let local = |scope| ateom_proto::RestoreWorkloadRequest {
        snapshot_uri_prefix: String::new(),
        ..substrate_restore("d1", scope, &volumes)
    };
    let r = cb
        .restore_workload(local(ateom_proto::SnapshotScope::Full))
        .await
        .expect("FULL restore")
        .into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!((n.memory, n.file), (2, 5), "memory and the durable directory continued together");
    // A FULL restore of a DATA snapshot is refused, clearly.
    cb.checkpoint_workload(substrate_checkpoint("d1", ateom_proto::SnapshotScope::Data, &volumes))
        .await
        .unwrap();
    let e = cb.restore_workload(local(ateom_proto::SnapshotScope::Full)).await.expect_err("FULL of DATA");
    assert!(e.message().contains("scope DATA"), "{}", e.message());
    assert!(b.namespaces().is_empty() && b.runsc_processes().is_empty());
}
