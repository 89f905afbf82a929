//! DURABLE snapshots end to end: real gVisor workers, a `file://` bucket and a real S3
//! server (s3s-fs), fresh-node restores, and the failure cases.

mod common;

#[path = "../../ateom-store/tests/common/s3server.rs"]
#[allow(dead_code)]
mod s3server;

use common::*;
use tonic::Code;

fn durable_checkpoint(id: &str, prefix: &str) -> ateom_proto::CheckpointWorkloadRequest {
    let mut r = checkpoint_req(id);
    r.snapshot_uri_prefix = prefix.into();
    r.destination = ateom_proto::SnapshotDestination::Durable as i32;
    r
}

fn durable_restore(id: &str, prefix: &str) -> ateom_proto::RestoreWorkloadRequest {
    let mut r = restore_req(id);
    r.snapshot_uri_prefix = prefix.into();
    r
}

/// run -> 3 requests -> DURABLE checkpoint on node A -> restore on node B (fresh state dir).
async fn run_and_suspend(
    node_a: &Worker,
    image: &str,
    actor: &str,
    prefix: &str,
) -> (Count, ateom_proto::CheckpointWorkloadResponse) {
    let mut a = node_a.client().await;
    let run = a.run_workload(run_req(actor, image)).await.expect("run").into_inner();
    let mut last = None;
    for _ in 0..3 {
        last = Some(hit(&run.host_endpoint).await);
    }
    let ck = a
        .checkpoint_workload(durable_checkpoint(actor, prefix))
        .await
        .expect("durable checkpoint")
        .into_inner();
    assert_eq!(ck.destination, ateom_proto::SnapshotDestination::Durable as i32);
    let id = ck.manifest.as_ref().unwrap().snapshot_id.clone();
    assert_eq!(ck.location, format!("{prefix}/{id}"));
    assert!(ck.stored_bytes > 0);
    (last.unwrap(), ck)
}

#[tokio::test(flavor = "multi_thread")]
async fn file_store_restore_on_a_fresh_node_continues() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let prefix = format!("file://{}/bucket/actors", tmp.path().display());
    let node_a = Worker::start(&tmp.path().join("node-a"), &["--host-id", "node-a"]);
    let (before, ck) = run_and_suspend(&node_a, &image, "d1", &prefix).await;

    let node_b = Worker::start(&tmp.path().join("node-b"), &["--host-id", "node-b"]);
    let mut b = node_b.client().await;
    let r = b.restore_workload(durable_restore("d1", &prefix)).await.expect("restore on node B").into_inner();
    assert_eq!(r.snapshot_id, ck.manifest.unwrap().snapshot_id, "LATEST is the snapshot just pushed");
    assert!(r.pulled_bytes > 0, "node B had to pull the snapshot");
    let after = hit(&r.host_endpoint).await;
    assert_eq!((after.memory, after.file, after.sha), (4, 4, before.sha));

    // Node B now has it locally; a second durable restore there moves no data.
    b.checkpoint_workload(checkpoint_req("d1")).await.unwrap();
    let mut again = durable_restore("d1", &prefix);
    again.snapshot_id = r.snapshot_id.clone();
    let r2 = b.restore_workload(again).await.unwrap().into_inner();
    assert_eq!(r2.pulled_bytes, 0);
    assert_eq!(hit(&r2.host_endpoint).await.memory, 4);
    b.checkpoint_workload(checkpoint_req("d1")).await.unwrap();
}

/// A LOCAL snapshot copied to the store afterwards (`PushSnapshot`) while the worker already
/// runs another actor; a second copy is a no-op; another node restores the copy and continues.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_snapshot_is_copied_to_the_store_while_the_worker_runs_another_actor() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let prefix = format!("file://{}/bucket/actors", tmp.path().display());
    let node_a = Worker::start(&tmp.path().join("node-a"), &["--host-id", "node-a"]);
    let mut a = node_a.client().await;
    let run = a.run_workload(run_req("p1", &image)).await.expect("run").into_inner();
    hit(&run.host_endpoint).await;
    let before = hit(&run.host_endpoint).await;
    let ck = a.checkpoint_workload(checkpoint_req("p1")).await.expect("local checkpoint").into_inner();
    let id = ck.manifest.unwrap().snapshot_id;
    // The worker is busy with another actor while the copy runs.
    let other = a.run_workload(run_req("p2", &image)).await.expect("run p2").into_inner();
    let (ns, tpl, actor_id) = actor("p1");
    let push = ateom_proto::PushSnapshotRequest {
        actor_template_namespace: ns,
        actor_template_name: tpl,
        actor_id,
        snapshot_id: id.clone(),
        snapshot_uri_prefix: prefix.clone(),
    };
    let first = a.push_snapshot(push.clone()).await.expect("copy").into_inner();
    assert_eq!(first.location, format!("{prefix}/{id}"));
    assert!(first.stored_bytes > 0 && !first.already_stored, "{first:?}");
    assert_eq!(hit(&other.host_endpoint).await.memory, 1, "p2 kept running through the copy");
    let again = a.push_snapshot(push).await.expect("copy again").into_inner();
    assert!(again.already_stored && again.stored_bytes == 0, "{again:?}");

    let node_b = Worker::start(&tmp.path().join("node-b"), &["--host-id", "node-b"]);
    let mut b = node_b.client().await;
    let mut req = durable_restore("p1", &prefix);
    req.snapshot_id = id.clone();
    let r = b.restore_workload(req).await.expect("restore the copy on node B").into_inner();
    assert!(r.pulled_bytes > 0);
    let after = hit(&r.host_endpoint).await;
    assert_eq!((after.memory, after.sha), (before.memory + 1, before.sha));
    let _ = b.delete_workload(delete_req_for("p1")).await;
    let _ = a.delete_workload(delete_req_for("p2")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn s3_store_restore_on_a_fresh_node_continues() {
    require_gvisor!();
    let Some(s3) = s3server::S3Server::start("s3_store_restore_on_a_fresh_node_continues") else { return };
    let env = vec![
        ("AWS_ENDPOINT_URL", s3.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let prefix = format!("s3://{}/ateom/d2", s3server::BUCKET);
    let node_a = Worker::start_env(&tmp.path().join("node-a"), &[], &env);
    let (before, ck) = run_and_suspend(&node_a, &image, "d2", &prefix).await;
    let id = ck.manifest.unwrap().snapshot_id;
    assert!(s3.object_file(&format!("ateom/d2/{id}/index.json")).is_file(), "the index is in the bucket");

    let node_b = Worker::start_env(&tmp.path().join("node-b"), &[], &env);
    let mut b = node_b.client().await;
    let r = b.restore_workload(durable_restore("d2", &prefix)).await.expect("restore from S3").into_inner();
    let after = hit(&r.host_endpoint).await;
    assert_eq!((after.memory, after.file, after.sha), (4, 4, before.sha));
    b.checkpoint_workload(checkpoint_req("d2")).await.unwrap();

    // Wrong credentials: refused, clearly, without a sandbox.
    let bad_env: Vec<_> = env
        .iter()
        .map(|(k, v)| if *k == "AWS_SECRET_ACCESS_KEY" { (*k, "wrong".to_owned()) } else { (*k, v.clone()) })
        .collect();
    let node_c = Worker::start_env(&tmp.path().join("node-c"), &[], &bad_env);
    let mut c = node_c.client().await;
    let err = c.restore_workload(durable_restore("d2", &prefix)).await.expect_err("bad credentials");
    assert_ne!(err.code(), Code::Ok);
    assert!(node_c.namespaces().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupted_corrupt_and_forged_durable_snapshots_are_refused() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let bucket = tmp.path().join("bucket");
    let prefix = format!("file://{}", bucket.display());
    let node_a = Worker::start(&tmp.path().join("node-a"), &[]);
    let (_, ck) = run_and_suspend(&node_a, &image, "d3", &prefix).await;
    let id = ck.manifest.unwrap().snapshot_id;
    let snap_dir = bucket.join(&id);
    let index_path = snap_dir.join("index.json");
    let index = std::fs::read(&index_path).unwrap();

    // An upload that never wrote its index (what an interrupted push leaves): no such snapshot.
    std::fs::rename(&index_path, tmp.path().join("index.json.aside")).unwrap();
    let node_b = Worker::start(&tmp.path().join("node-b"), &[]);
    let mut b = node_b.client().await;
    let mut req = durable_restore("d3", &prefix);
    req.snapshot_id = id.clone();
    let err = b.restore_workload(req.clone()).await.expect_err("no index, no snapshot");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(err.message().contains("no such snapshot"), "{}", err.message());
    assert!(node_b.namespaces().is_empty());
    // ... which `ateom snapshots gc` lists as garbage.
    let gc = std::process::Command::new(env!("CARGO_BIN_EXE_ateom"))
        .args(["snapshots", "gc", "--grace", "0s", "--json", "--store", &prefix])
        .output()
        .unwrap();
    assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
    let gc: serde_json::Value = serde_json::from_slice(&gc.stdout).unwrap();
    assert!(!gc["garbage"].as_array().unwrap().is_empty(), "{gc}");
    // A rerun of the push from node A's local snapshot completes it.
    let push = std::process::Command::new(env!("CARGO_BIN_EXE_ateom"))
        .args([
            "snapshots",
            "push",
            "--json",
            "--actor",
            "test:counter:d3",
            "--snapshot-id",
            &id,
            "--store",
            &prefix,
        ])
        .arg("--state-dir")
        .arg(&node_a.state_dir)
        .output()
        .unwrap();
    assert!(push.status.success(), "{}", String::from_utf8_lossy(&push.stderr));
    std::fs::write(&index_path, &index).unwrap();

    // A corrupted chunk: refused naming the chunk, nothing started.
    let chunk = std::fs::read_dir(snap_dir.join("chunks")).unwrap().flatten().next().unwrap().path();
    let original = std::fs::read(&chunk).unwrap();
    let mut bad = original.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    std::fs::write(&chunk, &bad).unwrap();
    let err = b.restore_workload(req.clone()).await.expect_err("corrupt chunk");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    let key = chunk.file_name().unwrap().to_string_lossy().into_owned();
    assert!(err.message().contains(&key), "names the chunk: {}", err.message());
    assert!(node_b.namespaces().is_empty());
    std::fs::write(&chunk, &original).unwrap();

    // A forged provenance field in the manifest: FAILED_PRECONDITION listing it, before any
    // data moves.
    let mut v: serde_json::Value = serde_json::from_slice(&index).unwrap();
    v["meta"]["runtime_version"] = "9.9.9-forged".into();
    v["meta"]["backend"] = "firecracker".into();
    std::fs::write(&index_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = b.restore_workload(req.clone()).await.expect_err("forged provenance");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("runtime_version") && err.message().contains("backend"),
        "{}",
        err.message()
    );
    assert!(
        !node_b.state_dir.join("actors/test:counter:d3/snapshots").join(&id).exists(),
        "nothing was pulled"
    );

    // Intact again: restores fine on the fresh node.
    std::fs::write(&index_path, &index).unwrap();
    let r = b.restore_workload(req).await.expect("intact snapshot restores").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 4);
    b.checkpoint_workload(checkpoint_req("d3")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_store_fails_in_bounded_time_and_keeps_the_local_snapshot() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    // A loopback port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let env = vec![
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ACCESS_KEY_ID", "x".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "y".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    let w = Worker::start_env(&tmp.path().join("state"), &[], &env);
    let mut c = w.client().await;
    let run = c.run_workload(run_req("d4", &image)).await.unwrap().into_inner();
    hit(&run.host_endpoint).await;
    let start = std::time::Instant::now();
    let err = c
        .checkpoint_workload(durable_checkpoint("d4", "s3://nowhere/prefix"))
        .await
        .expect_err("the store is unreachable");
    let took = start.elapsed();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(took < std::time::Duration::from_secs(90), "bounded retries, took {took:?}");
    assert!(err.message().contains("kept on this node"), "{}", err.message());
    // The snapshot is safe locally and restores.
    let r = c.restore_workload(restore_req("d4")).await.expect("local snapshot kept").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 2);
    c.checkpoint_workload(checkpoint_req("d4")).await.unwrap();
}

/// Signed snapshots: workers sharing a key restore each other's snapshots; a worker with
/// another key, or a snapshot pushed without a key, is refused before anything starts; and a
/// signed snapshot copied into another actor's prefix does not verify there.
#[tokio::test(flavor = "multi_thread")]
async fn only_snapshots_signed_with_the_workers_key_are_restored() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let keygen = |name: &str| {
        let path = tmp.path().join(name);
        let st = std::process::Command::new(env!("CARGO_BIN_EXE_ateom"))
            .args(["snapshots", "keygen", "--out"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        path.display().to_string()
    };
    let (key, other_key) = (keygen("key"), keygen("other-key"));
    let bucket = tmp.path().join("bucket");
    let prefix = format!("file://{}/actors/s1", bucket.display());
    let node_a = Worker::start(&tmp.path().join("node-a"), &["--snapshot-key-file", &key]);
    let (before, _) = run_and_suspend(&node_a, &image, "s1", &prefix).await;

    // Same key: restores and continues.
    let node_b = Worker::start(&tmp.path().join("node-b"), &["--snapshot-key-file", &key]);
    let mut b = node_b.client().await;
    let r = b.restore_workload(durable_restore("s1", &prefix)).await.expect("same key").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.sha, before.sha);
    b.checkpoint_workload(checkpoint_req("s1")).await.unwrap();

    // Another key: refused, nothing pulled, nothing started.
    let node_c = Worker::start(&tmp.path().join("node-c"), &["--snapshot-key-file", &other_key]);
    let mut c = node_c.client().await;
    let err = c.restore_workload(durable_restore("s1", &prefix)).await.expect_err("another key");
    assert!(matches!(err.code(), Code::DataLoss | Code::FailedPrecondition), "{err:?}");
    assert!(err.message().contains("signature"), "{}", err.message());
    assert!(node_c.namespaces().is_empty() && node_c.runsc_processes().is_empty());
    assert!(
        !node_c.state_dir.join("actors/test:counter:s1/snapshots").exists()
            || std::fs::read_dir(node_c.state_dir.join("actors/test:counter:s1/snapshots")).unwrap().count()
                == 0,
        "nothing was pulled"
    );

    // Unsigned (pushed by a worker without a key): refused by a keyed worker.
    let unsigned_prefix = format!("file://{}/actors/u1", bucket.display());
    let node_d = Worker::start(&tmp.path().join("node-d"), &[]);
    run_and_suspend(&node_d, &image, "u1", &unsigned_prefix).await;
    let err = b.restore_workload(durable_restore("u1", &unsigned_prefix)).await.expect_err("unsigned");
    assert!(err.message().contains("not signed"), "{}", err.message());

    // A signed snapshot copied under another actor's prefix does not verify there.
    let copied = bucket.join("actors/other");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(bucket.join("actors/s1"))
        .arg(&copied)
        .status()
        .unwrap();
    assert!(st.success());
    let err = b
        .restore_workload(durable_restore("s1", &format!("file://{}", copied.display())))
        .await
        .expect_err("copied to another prefix");
    assert!(err.message().contains("signature"), "{}", err.message());
}

/// A delete of an actor whose DURABLE checkpoint is still pushing stops the push: the
/// checkpoint answers ABORTED, no snapshot appears in the store, the local snapshot is gone,
/// and while the push ran the worker said `pushing` and took no other actor.
#[tokio::test(flavor = "multi_thread")]
async fn a_delete_stops_a_push_and_leaves_no_snapshot() {
    require_gvisor!();
    let Some(s3) = s3server::S3Server::start("a_delete_stops_a_push_and_leaves_no_snapshot") else { return };
    // Chunk uploads stalled in a fault proxy in front of the real S3 server.
    let upstream: std::net::SocketAddr = s3.endpoint.trim_start_matches("http://").parse().unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let proxy = faultproxy::start(faultproxy::Config { listen: any, control: any, upstream }).await.unwrap();
    let rules =
        br#"[{"method": "PUT", "path_contains": "/chunks/", "action": {"type": "stall", "ms": 4000}}]"#;
    proxy.state.set_rules(faultproxy::rules::parse(rules).unwrap());
    let env = vec![
        ("AWS_ENDPOINT_URL", format!("http://{}", proxy.listen)),
        ("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let prefix = format!("s3://{}/ateom/p1", s3server::BUCKET);
    let w = Worker::start_env(&tmp.path().join("node"), &[], &env);
    let mut c = w.client().await;
    let run = c.run_workload(run_req("p1", &image)).await.expect("run").into_inner();
    hit(&run.host_endpoint).await;
    let mut ck_client = w.client().await;
    let pfx = prefix.clone();
    let checkpoint =
        tokio::spawn(async move { ck_client.checkpoint_workload(durable_checkpoint("p1", &pfx)).await });
    // Wait until the worker says it is pushing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let snapshot_id = loop {
        let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
        if caps.state == "pushing" {
            assert_eq!(caps.running_actor, "test/counter/p1");
            break caps.checkpoint_snapshot_id;
        }
        assert!(std::time::Instant::now() < deadline, "never saw the push: {caps:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!snapshot_id.is_empty());
    // Busy: another actor is not taken while the push runs.
    let err = c.run_workload(run_req("other", &image)).await.expect_err("busy while pushing");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("pushing"), "{}", err.message());

    let mut del = delete_req_for("p1");
    del.keep_snapshots = false;
    let deleted = c.delete_workload(del).await.expect("delete during the push").into_inner();
    assert!(deleted.deleted_snapshot_ids.contains(&snapshot_id), "{deleted:?}");
    let answer = checkpoint.await.unwrap();
    let err = answer.expect_err("the checkpoint's push was stopped");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.state, "idle");
    // Nothing of it in the store, even after the stalled uploads would have landed.
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(
        !s3.object_file(&format!("ateom/p1/{snapshot_id}/index.json")).exists(),
        "no snapshot in the store"
    );
    let store = s3.store("ateom/p1");
    let leftovers =
        store.gc(&ateom_store::GcOptions { grace: std::time::Duration::ZERO, delete: false }).await.unwrap();
    assert!(
        leftovers.garbage.iter().all(|g| !g.key.contains(&snapshot_id)),
        "the stopped push left objects: {:?}",
        leftovers.garbage
    );
    assert!(w.namespaces().is_empty() && w.runsc_processes().is_empty());
}

fn delete_req_for(id: &str) -> ateom_proto::DeleteWorkloadRequest {
    let (a, b, c) = actor(id);
    ateom_proto::DeleteWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        keep_snapshots: false,
    }
}

/// Retention: after each commit a worker keeps the newest two snapshots of the actor plus
/// those its caller pins (keep_snapshot_ids), and prunes the rest. A snapshot of another actor
/// (a template's golden snapshot) is pulled once into the worker's shared cache and restored
/// from there by every actor, not copied into each actor's directory.
#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_pins_and_the_newest_and_golden_snapshots_are_shared() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("node"), &[]);
    let mut c = w.client().await;
    let run = c.run_workload(run_req("r1", &image)).await.expect("run").into_inner();
    hit(&run.host_endpoint).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut ck = checkpoint_req("r1");
        if let Some(first) = ids.first() {
            ck.keep_snapshot_ids = vec![Clone::clone(first)];
        }
        let done = c.checkpoint_workload(ck).await.expect("checkpoint").into_inner();
        ids.push(done.manifest.unwrap().snapshot_id);
        if i < 4 {
            let r = c.restore_workload(restore_req("r1")).await.expect("restore").into_inner();
            hit(&r.host_endpoint).await;
        }
    }
    let (a, b, id) = actor("r1");
    let list = c
        .list_snapshots(ateom_proto::ListSnapshotsRequest {
            actor_template_namespace: a,
            actor_template_name: b,
            actor_id: id,
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots;
    let kept: Vec<_> = list.iter().map(|s| s.snapshot_id.clone()).collect();
    assert_eq!(
        kept,
        vec![ids[0].clone(), ids[3].clone(), ids[4].clone()],
        "the pinned one and the newest two"
    );
    assert!(list[0].pinned && !list[2].pinned);
    assert!(list.iter().all(|s| s.state == "complete" && s.bytes > 0 && !s.created_at.is_empty()));
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(caps.snapshot_bytes_used > 0 && caps.snapshot_bytes_free > 0, "{caps:?}");

    // A golden snapshot of the template, restored by two actors: pulled once, shared.
    let prefix = format!("file://{}/bucket/golden", tmp.path().display());
    let g = c.run_workload(run_req("golden.1", &image)).await.expect("golden run").into_inner();
    hit(&g.host_endpoint).await;
    let golden =
        c.checkpoint_workload(durable_checkpoint("golden.1", &prefix)).await.expect("golden").into_inner();
    let golden_id = golden.manifest.unwrap().snapshot_id;
    // Only the durable copy matters for others: drop the golden actor's local one.
    c.delete_workload(delete_req_for("golden.1")).await.unwrap();
    for (n, actor_id) in ["x1", "x2"].iter().enumerate() {
        let mut r = durable_restore(actor_id, &prefix);
        r.snapshot_id = golden_id.clone();
        let restored = c.restore_workload(r).await.expect("restore from the golden snapshot").into_inner();
        assert_eq!(restored.snapshot_id, golden_id);
        if n == 0 {
            assert!(restored.pulled_bytes > 0, "the first restore pulls");
        } else {
            assert_eq!(restored.pulled_bytes, 0, "the second uses the shared copy");
        }
        assert_eq!(hit(&restored.host_endpoint).await.memory, 2, "both start from the golden state");
        c.checkpoint_workload(checkpoint_req(actor_id)).await.unwrap();
        assert!(
            !w.state_dir.join(format!("actors/test:counter:{actor_id}/snapshots/{golden_id}")).exists(),
            "not copied into the actor's directory"
        );
    }
    assert!(w.state_dir.join(format!("cache/pulled/test:counter:golden.1/snapshots/{golden_id}")).is_dir());
}
