//! The gVisor backend end to end, through `ateom serve` and its gRPC socket, with real runsc.

mod common;

use common::*;
use tonic::Code;

async fn run_counter(c: &mut Client, id: &str, image: &str) -> ateom_proto::RunWorkloadResponse {
    c.run_workload(run_req(id, image)).await.expect("run").into_inner()
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_continues_after_checkpoint_and_restore() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;

    let run = run_counter(&mut c, "a1", &image).await;
    assert!(run.ready);
    assert_eq!(run.workload_address, "169.254.0.2:8080");
    let mut last = None;
    for i in 1..=3 {
        let n = hit(&run.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        last = Some(n);
    }
    let before = last.unwrap();
    // The workload's writes live in the sandbox's memory overlay, never in the shared,
    // cached image root file system.
    let cached = w.state_dir.join("cache/images/rootfs");
    for rootfs in std::fs::read_dir(&cached).unwrap().flatten() {
        assert!(!rootfs.path().join("var/lib/counter/count").exists(), "cache was written to");
    }

    let ck = c.checkpoint_workload(checkpoint_req("a1")).await.expect("checkpoint").into_inner();
    let m = ck.manifest.unwrap();
    assert_eq!(m.backend, "gvisor");
    assert!(m.artifacts.iter().any(|a| a.name == "checkpoint.img" && a.size > 0 && a.sha256.len() == 64));
    assert!(m.image_digests["counter"].starts_with("sha256:"));
    assert!(ck.snapshot_files.last().unwrap().ends_with("manifest.json"), "manifest is listed last");
    for f in &ck.snapshot_files {
        assert!(std::path::Path::new(f).is_file(), "{f}");
    }

    // The sandbox, its processes and its namespaces are gone; the worker is free.
    assert!(w.namespaces().is_empty(), "namespaces left: {:?}", w.namespaces());
    assert!(w.runsc_processes().is_empty(), "runsc processes left: {:?}", w.runsc_processes());
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.running_actor, "");
    assert_eq!(caps.state, "idle");

    let restored = c.restore_workload(restore_req("a1")).await.expect("restore").into_inner();
    assert_eq!(restored.snapshot_id, m.snapshot_id);
    let after = hit(&restored.host_endpoint).await;
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!((caps.state.as_str(), caps.running_actor.as_str()), ("running", "test/counter/a1"));
    assert_eq!(after.memory, 4, "in-memory state continued");
    assert_eq!(after.file, 4, "file system state continued");
    assert_eq!(after.sha, before.sha, "the random file is the same file");

    // Restore the same snapshot a second time (after checkpointing the first restore away):
    // the same continuation.
    c.checkpoint_workload(checkpoint_req("a1")).await.expect("checkpoint 2");
    let mut again = restore_req("a1");
    again.snapshot_id = m.snapshot_id.clone();
    let r2 = c.restore_workload(again).await.expect("second restore of the same snapshot").into_inner();
    let second = hit(&r2.host_endpoint).await;
    assert_eq!((second.memory, second.file, second.sha.clone()), (4, 4, before.sha.clone()));
    c.checkpoint_workload(checkpoint_req("a1")).await.expect("checkpoint 3");
    assert!(w.namespaces().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn damaged_snapshots_are_refused_and_nothing_starts() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;
    let run = run_counter(&mut c, "a2", &image).await;
    hit(&run.host_endpoint).await;
    let ck = c.checkpoint_workload(checkpoint_req("a2")).await.unwrap().into_inner();
    let m = ck.manifest.unwrap();
    let snap_dir = std::path::PathBuf::from(&ck.location);

    for artifact in &m.artifacts {
        let path = snap_dir.join(&artifact.name);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        let at = bytes.len() / 2;
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();

        let err = c.restore_workload(restore_req("a2")).await.expect_err("a flipped byte must be refused");
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        assert!(err.message().contains(&artifact.name), "error names the artifact: {}", err.message());
        assert!(w.namespaces().is_empty(), "no sandbox network was created");
        assert!(w.runsc_processes().is_empty(), "no sandbox was started");
        std::fs::write(&path, &original).unwrap();
    }

    // A forged provenance field: refused with FAILED_PRECONDITION naming the field.
    let manifest_path = snap_dir.join("manifest.json");
    let original = std::fs::read(&manifest_path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    v["runtime_version"] = "runsc 0.0~19990101.0".into();
    std::fs::write(&manifest_path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = c.restore_workload(restore_req("a2")).await.expect_err("forged provenance");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("runtime_version"), "{}", err.message());

    // A manifest that is not a manifest.
    std::fs::write(&manifest_path, b"{\"format_version\": 1, \"snapshot").unwrap();
    let err = c.restore_workload(restore_req("a2")).await.expect_err("broken manifest");
    assert!(matches!(err.code(), Code::DataLoss | Code::NotFound), "{err:?}");

    std::fs::write(&manifest_path, &original).unwrap();
    let r =
        c.restore_workload(restore_req("a2")).await.expect("the intact snapshot still restores").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 2);
    c.checkpoint_workload(checkpoint_req("a2")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn one_workload_at_a_time_and_preconditions() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;

    let err = c.checkpoint_workload(checkpoint_req("nobody")).await.expect_err("nothing runs");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c.restore_workload(restore_req("never-seen")).await.expect_err("no snapshot");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(w.namespaces().is_empty());

    // Two concurrent runs: exactly one wins; the other is told who holds the worker.
    let (mut c1, mut c2) = (w.client().await, w.client().await);
    let (i1, i2) = (image.clone(), image.clone());
    let (r1, r2) = tokio::join!(async move { c1.run_workload(run_req("racer-1", &i1)).await }, async move {
        c2.run_workload(run_req("racer-2", &i2)).await
    },);
    let (winner, loser) = match (r1, r2) {
        (Ok(_), Err(e)) => ("racer-1", e),
        (Err(e), Ok(_)) => ("racer-2", e),
        other => panic!("exactly one run must win: {other:?}"),
    };
    assert_eq!(loser.code(), Code::FailedPrecondition);
    assert!(loser.message().contains(winner), "names the running actor: {}", loser.message());

    let err = c.run_workload(run_req("third", &image)).await.expect_err("busy");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(winner));
    let err = c.restore_workload(restore_req("third")).await.expect_err("busy");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = c.checkpoint_workload(checkpoint_req("third")).await.expect_err("not the running actor");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(winner));

    c.checkpoint_workload(checkpoint_req(winner)).await.expect("the winner checkpoints");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_requests_name_the_field_and_change_nothing() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;

    let mut cases: Vec<(ateom_proto::RunWorkloadRequest, &str)> = vec![];
    let mut r = run_req("x", &image);
    r.actor_id = "../../etc".into();
    cases.push((r, "actor_id"));
    let mut r = run_req("x", &image);
    r.actor_template_name = "a/b".into();
    cases.push((r, "actor_template_name"));
    let mut r = run_req("x", &image);
    r.actor_template_namespace = String::new();
    cases.push((r, "actor_template_namespace"));
    let mut r = run_req("x", &image);
    r.spec = None;
    cases.push((r, "spec.containers"));
    let mut r = run_req("x", &image);
    r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().http_get.as_mut().unwrap().port = 99999;
    cases.push((r, "spec.containers[0].readyz.http_get.port"));
    let mut r = run_req("x", &image);
    r.spec.as_mut().unwrap().containers[0].image = "docker.io/library/nginx".into();
    cases.push((r, "spec.containers[0].image"));
    let mut r = run_req("x", &image);
    r.spec.as_mut().unwrap().containers[0].name = "..".into();
    cases.push((r, "spec.containers[0].name"));
    let mut r = run_req("x", &image);
    r.runsc_path = "relative/runsc".into();
    cases.push((r, "runsc_path"));
    // No image and no node-agent bundle.
    let mut r = run_req("x", &image);
    r.spec.as_mut().unwrap().containers[0].image = String::new();
    cases.push((r, "spec.containers[0].image"));
    // An image layout that does not exist: refused before anything starts.
    let mut r = run_req("x", &image);
    r.spec.as_mut().unwrap().containers[0].image = "oci-layout:/nonexistent/layout:latest".into();
    cases.push((r, "counter"));

    for (req, field) in cases {
        let err = c.run_workload(req).await.expect_err(field);
        assert!(matches!(err.code(), Code::InvalidArgument | Code::FailedPrecondition), "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
        assert!(w.namespaces().is_empty(), "{field}: nothing was left behind");
    }

    let mut ck = checkpoint_req("x");
    ck.snapshot_uri_prefix = "ftp://nope".into();
    let err = c.checkpoint_workload(ck).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("snapshot_uri_prefix"));
    let mut rs = restore_req("x");
    rs.snapshot_id = "../../../etc/passwd".into();
    let err = c.restore_workload(rs).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("snapshot_id"));

    // Still healthy: a valid run works afterwards.
    let run = run_counter(&mut c, "x", &image).await;
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    c.checkpoint_workload(checkpoint_req("x")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workload_that_never_gets_ready_is_reported_and_removed() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &["--ready-timeout", "3s"]);
    let mut c = w.client().await;
    let mut r = run_req("slow", &image);
    r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().http_get.as_mut().unwrap().port = 9999;
    let err = c.run_workload(r).await.expect_err("nothing listens on 9999");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert!(err.message().contains("9999"), "{}", err.message());
    assert!(w.namespaces().is_empty());
    assert!(w.runsc_processes().is_empty());
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.running_actor, "", "the worker is free again");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_cleans_up_after_a_crash() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let state = tmp.path().join("state");
    let mut w = Worker::start(&state, &[]);
    let mut c = w.client().await;
    run_counter(&mut c, "crashy", &image).await;
    assert!(!w.namespaces().is_empty());
    assert!(!w.runsc_processes().is_empty());
    w.crash();
    assert!(!w.runsc_processes().is_empty(), "the sandbox outlives a crashed worker");

    let w2 = Worker::start(&state, &[]);
    let mut c2 = w2.client().await;
    // Startup cleanup ran before the socket appeared.
    assert!(w2.runsc_processes().is_empty(), "stale sandboxes killed: {:?}", w2.runsc_processes());
    assert!(w2.namespaces().is_empty(), "stale namespaces removed: {:?}", w2.namespaces());
    assert!(w2.log_text().contains("cleaned up after a previous run"), "{}", w2.log_text());
    let run = run_counter(&mut c2, "after-crash", &image).await;
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    c2.checkpoint_workload(checkpoint_req("after-crash")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn capabilities_and_socket_permissions() {
    require_gvisor!();
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let w = Worker::start(&tmp.path().join("state"), &["--host-id", "node-test"]);
    let mode = std::fs::metadata(&w.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut c = w.client().await;
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.backend, "gvisor");
    assert!(!caps.runtime_version.is_empty());
    let k = caps.capabilities.unwrap();
    assert!(k.supports_local_pause && k.supports_memory_snapshot);
    assert!(!k.restore_requires_same_host && !k.supports_incremental);
    assert!(k.snapshot_portability_class.starts_with("gvisor/"));
    let h = caps.host.unwrap();
    assert_eq!(h.host_id, "node-test");
    assert!(!h.cpu_vendor.is_empty() && !h.host_kernel.is_empty() && h.cpu_flags_digest.len() == 16);
    assert!(caps.host_endpoint.starts_with("127.0.0.1:"));
}

/// An unmodified substrate client sends no image: the container comes from the OCI bundle
/// the node agent prepared under the state dir.
#[tokio::test(flavor = "multi_thread")]
async fn node_agent_bundles_run_checkpoint_and_restore() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let state = tmp.path().join("state");
    // Play the node agent: unpack the image into <state>/actors/<ns>:<tpl>:<id>/bundles/counter.
    let bundle = state.join("actors/test:counter:b1/bundles/counter");
    std::fs::create_dir_all(&bundle).unwrap();
    let store = ateom_image::ImageStore::new(tmp.path().join("agent-cache"));
    let prepared = store.prepare(&ateom_core::ImageRef::parse("image", &image).unwrap()).unwrap();
    let st =
        std::process::Command::new("cp").arg("-a").arg(&prepared.rootfs).arg(bundle.join("rootfs")).status();
    assert!(st.unwrap().success());
    let opts = ateom_image::BundleOptions {
        rootfs: bundle.join("rootfs"),
        hostname: "b1".into(),
        netns_path: None,
        readonly_rootfs: false,
    };
    let mut spec =
        ateom_image::runtime_spec(&prepared.config, &ateom_image::ProcessOverrides::default(), &opts)
            .unwrap();
    let mut root = spec.root().clone().unwrap();
    root.set_path("rootfs".into()); // relative, as node agents write it
    spec.set_root(Some(root));
    ateom_image::write_bundle(&bundle, &spec).unwrap();

    let w = Worker::start(&state, &[]);
    let mut c = w.client().await;
    let mut req = run_req("b1", "");
    req.runsc_path = "/usr/bin/runsc".into(); // substrate names runsc in every request
    let run = c.run_workload(req).await.expect("run from the node agent's bundle").into_inner();
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    assert_eq!(hit(&run.host_endpoint).await.memory, 2);
    let ck = c.checkpoint_workload(checkpoint_req("b1")).await.unwrap().into_inner();
    assert!(ck.manifest.unwrap().image_digests["counter"].starts_with("bundle-sha256:"));
    let r = c.restore_workload(restore_req("b1")).await.expect("restore").into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!((n.memory, n.file), (3, 3));
    c.checkpoint_workload(checkpoint_req("b1")).await.unwrap();
    assert!(!bundle.join("rootfs/var/lib/counter/count").exists(), "the agent's rootfs was not written to");
}

fn delete_req(id: &str, keep_snapshots: bool) -> ateom_proto::DeleteWorkloadRequest {
    let (ns, tpl, actor) = actor(id);
    ateom_proto::DeleteWorkloadRequest {
        actor_template_namespace: ns,
        actor_template_name: tpl,
        actor_id: actor,
        keep_snapshots,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_stops_the_actor_and_removes_its_local_snapshots_only() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;
    let snapshots_of = |id: &str| w.state_dir.join(format!("actors/test:counter:{id}/snapshots"));
    let caps = |mut c: Client| async move {
        c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner()
    };

    let err = c.delete_workload(delete_req("../x", false)).await.expect_err("invalid id");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("actor_id"), "{err:?}");
    let nothing =
        c.delete_workload(delete_req("never-seen", false)).await.expect("nothing to delete").into_inner();
    assert!(!nothing.stopped && nothing.deleted_snapshot_ids.is_empty());

    // d1: two local snapshots, then running again from the second.
    run_counter(&mut c, "d1", &image).await;
    let first = c.checkpoint_workload(checkpoint_req("d1")).await.unwrap().into_inner();
    let r = c.restore_workload(restore_req("d1")).await.unwrap().into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 1);
    let second = c.checkpoint_workload(checkpoint_req("d1")).await.unwrap().into_inner();
    let r = c.restore_workload(restore_req("d1")).await.unwrap().into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 2);

    // Keeping the snapshots only stops the workload: its newest snapshot still restores.
    let kept = c.delete_workload(delete_req("d1", true)).await.unwrap().into_inner();
    assert!(kept.stopped && kept.deleted_snapshot_ids.is_empty());
    assert!(w.namespaces().is_empty() && w.runsc_processes().is_empty());
    assert_eq!(caps(c.clone()).await.state, "idle");
    let r = c.restore_workload(restore_req("d1")).await.expect("kept snapshot restores").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 2, "the stopped run's state was discarded");

    // A full delete of the running actor: stopped, both snapshots gone, nothing left.
    let gone = c.delete_workload(delete_req("d1", false)).await.unwrap().into_inner();
    assert!(gone.stopped);
    let ids = [first.manifest.unwrap().snapshot_id, second.manifest.unwrap().snapshot_id];
    assert_eq!(gone.deleted_snapshot_ids, ids);
    assert!(gone.freed_bytes > 0);
    assert!(!snapshots_of("d1").exists());
    assert!(w.namespaces().is_empty() && w.runsc_processes().is_empty());
    let err = c.restore_workload(restore_req("d1")).await.expect_err("no snapshot left");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let again =
        c.delete_workload(delete_req("d1", false)).await.expect("deleting twice is fine").into_inner();
    assert!(!again.stopped && again.deleted_snapshot_ids.is_empty());

    // Deleting an actor that is not the running one leaves the running one alone.
    run_counter(&mut c, "d2", &image).await;
    c.checkpoint_workload(checkpoint_req("d2")).await.unwrap();
    let r = run_counter(&mut c, "d3", &image).await;
    hit(&r.host_endpoint).await;
    let other = c.delete_workload(delete_req("d2", false)).await.unwrap().into_inner();
    assert!(!other.stopped && other.deleted_snapshot_ids.len() == 1);
    assert!(!snapshots_of("d2").exists());
    assert_eq!(caps(c.clone()).await.running_actor, "test/counter/d3");
    assert_eq!(hit(&r.host_endpoint).await.memory, 2, "d3 kept serving");
    c.delete_workload(delete_req("d3", false)).await.unwrap();
    assert!(w.namespaces().is_empty() && w.runsc_processes().is_empty());
}
