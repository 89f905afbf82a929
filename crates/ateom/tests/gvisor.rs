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

    let secret = "s3cr3t-value-that-must-not-leak";
    let mut req = run_req("a1", &image);
    req.spec.as_mut().unwrap().containers[0].env.insert("COUNTER_SECRET".into(), secret.into());
    let run = c.run_workload(req).await.expect("run").into_inner();
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
    // Environment values never leave the snapshot's own state: not in the manifest on disk,
    // not in the answer; the key stays.
    let manifest_json = std::fs::read_to_string(ck.snapshot_files.last().unwrap()).unwrap();
    assert!(manifest_json.contains("COUNTER_SECRET") && !manifest_json.contains(secret), "{manifest_json}");
    assert!(!format!("{m:?}").contains(secret));
    // Snapshot files are private to root.
    use std::os::unix::fs::PermissionsExt;
    let snap_dir = std::path::Path::new(ck.snapshot_files.last().unwrap()).parent().unwrap();
    assert_eq!(std::fs::metadata(w.state_dir.join("actors")).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(&w.state_dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(snap_dir.starts_with(w.state_dir.join("actors")));

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
    assert_eq!(get_text(&restored.host_endpoint, "/secret").await, secret, "the env lives on in memory");

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

    // A sandbox that cannot start at all: its runtime's logs are kept under failures/ and
    // the error says where, with the telling line.
    let mut r = run_req("broken", &image);
    r.spec.as_mut().unwrap().containers[0].command = vec!["/no/such/binary".into()];
    let err = c.run_workload(r).await.expect_err("nothing to execute");
    assert!(err.message().contains("logs are kept in"), "{}", err.message());
    eprintln!("a sandbox that cannot start: {}", err.message());
    // Both failures (never ready, cannot start) kept their logs.
    let kept: Vec<_> = std::fs::read_dir(w.state_dir.join("failures")).unwrap().flatten().collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(
        kept.iter().all(|k| std::fs::read_dir(k.path()).unwrap().count() > 0),
        "the logs themselves are there"
    );
    assert!(w.namespaces().is_empty() && w.runsc_processes().is_empty());
}

async fn caps(c: &mut Client) -> ateom_proto::GetCapabilitiesResponse {
    c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner()
}

/// A worker process that dies (SIGKILL) or stops (SIGTERM) never takes its workload with it:
/// the next `ateom serve` on the same state directory adopts the sandbox and serves it on the
/// same loopback endpoint, with its state intact. A sandbox that died meanwhile is cleaned up
/// and its actor reported lost, with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_adopts_its_workload_and_reports_the_dead() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let state = tmp.path().join("state");
    let mut w = Worker::start(&state, &[]);
    let mut c = w.client().await;
    let run = run_counter(&mut c, "a1", &image).await;
    for i in 1..=3 {
        assert_eq!(hit(&run.host_endpoint).await.memory, i);
    }
    let before = hit(&run.host_endpoint).await;
    w.crash();
    assert!(!w.runsc_processes().is_empty(), "the sandbox outlives a crashed worker");

    // 1. Adopted after a crash: same endpoint, state continues, nothing lost.
    let mut w2 = Worker::start(&state, &[]);
    let mut c2 = w2.client().await;
    let k = caps(&mut c2).await;
    assert_eq!(
        (k.state.as_str(), k.running_actor.as_str()),
        ("running", "test/counter/a1"),
        "{}",
        w2.log_text()
    );
    assert_eq!(k.host_endpoint, run.host_endpoint, "served on the same endpoint");
    assert!(k.lost_actors.is_empty(), "{:?}", k.lost_actors);
    let after = hit(&k.host_endpoint).await;
    assert_eq!(
        (after.memory, after.file, after.sha.clone()),
        (before.memory + 1, before.file + 1, before.sha.clone())
    );
    assert!(w2.log_text().contains("adopted"), "{}", w2.log_text());
    // The adopted sandbox checkpoints and restores like any other.
    let ck = c2.checkpoint_workload(checkpoint_req("a1")).await.expect("checkpoint the adopted").into_inner();
    assert!(w2.runsc_processes().is_empty() && w2.namespaces().is_empty());
    let r = c2.restore_workload(restore_req("a1")).await.expect("restore").into_inner();
    assert_eq!(r.snapshot_id, ck.manifest.unwrap().snapshot_id);
    assert_eq!(hit(&r.host_endpoint).await.memory, before.memory + 2);

    // 2. A clean stop (SIGTERM) keeps it running too.
    w2.stop();
    assert!(!w2.runsc_processes().is_empty(), "SIGTERM leaves the workload running");
    let mut w3 = Worker::start(&state, &[]);
    let mut c3 = w3.client().await;
    let k = caps(&mut c3).await;
    assert_eq!(k.running_actor, "test/counter/a1", "{}", w3.log_text());
    assert_eq!(hit(&k.host_endpoint).await.memory, before.memory + 3);

    // 3. The sandbox dies while no worker watches: cleaned up, reported lost.
    w3.crash();
    for pid in w3.runsc_processes() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let w4 = Worker::start(&state, &[]);
    let mut c4 = w4.client().await;
    assert!(w4.runsc_processes().is_empty(), "dead sandboxes cleaned: {:?}", w4.runsc_processes());
    assert!(w4.namespaces().is_empty(), "namespaces removed: {:?}", w4.namespaces());
    let k = caps(&mut c4).await;
    assert_eq!((k.state.as_str(), k.running_actor.as_str()), ("idle", ""));
    let lost = k.lost_actors.last().expect("the dead actor is reported");
    assert_eq!(lost.actor, "test/counter/a1");
    assert!(!lost.reason.is_empty() && !lost.at.is_empty(), "{lost:?}");
    // Its snapshot is still there, and the worker takes new work.
    let r = c4.restore_workload(restore_req("a1")).await.expect("restore after the loss").into_inner();
    assert_eq!(
        hit(&r.host_endpoint).await.memory,
        before.memory + 2,
        "back to the last snapshot, by request"
    );
    c4.checkpoint_workload(checkpoint_req("a1")).await.unwrap();
    drop((w, w2, w3));
}

/// One worker per state directory: a second `ateom serve` on it refuses to start and says why.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_worker_on_the_same_state_dir_is_refused() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let _w = Worker::start(&state, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ateom"))
        .args(["serve", "--socket"])
        .arg(tmp.path().join("other.sock"))
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one worker per state directory"), "{err}");
}

/// Relative state directories work (they are made absolute at the edge: runsc's gofer cannot
/// mount a relative root).
#[tokio::test(flavor = "multi_thread")]
async fn a_relative_state_dir_works() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let socket = tmp.path().join("rel.sock");
    let log = tmp.path().join("rel.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ateom"))
        .current_dir(tmp.path())
        .args(["serve", "--on-exit", "stop", "--state-dir", "w1", "--socket"])
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !socket.exists() {
        assert!(std::time::Instant::now() < deadline, "{}", std::fs::read_to_string(&log).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut c = ateom_grpc::connect_unix(&socket).await.unwrap();
    let run = c.run_workload(run_req("rel", &image)).await;
    let outcome = run.as_ref().map(|r| r.get_ref().host_endpoint.clone());
    if let Ok(endpoint) = &outcome {
        assert_eq!(hit(endpoint).await.memory, 1);
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    outcome.unwrap_or_else(|e| {
        panic!("run with a relative state dir: {e}\n{}", std::fs::read_to_string(&log).unwrap())
    });
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
    let bundle = agent_bundle(tmp.path(), &state, "b1", "counter", &image, &[]);

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

/// A workload's limits hold: its memory limit is the sandbox's cgroup limit, a workload that
/// allocates past it is killed (the worker and the host are not affected, the actor is
/// reported lost when its checkpoint finds it dead), and nothing of it is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_workload_past_its_memory_limit_is_contained() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;
    let mut req = run_req("hog", &image);
    req.resources = Some(ateom_proto::Resources { memory_bytes: 256 << 20, cpu_milli: 500, pids: 64 });
    let run = c.run_workload(req).await.expect("run with limits").into_inner();
    // The cgroup runsc made for the sandbox carries the limits.
    let prefix = format!("ateom-{}-", instance_id(&w.state_dir));
    let cgroups = ateom_gvisor::sandbox_cgroups(&prefix);
    assert!(!cgroups.is_empty(), "the sandbox has a cgroup");
    let read = |name: &str| {
        cgroups.iter().find_map(|d| std::fs::read_to_string(d.join(name)).ok()).map(|s| s.trim().to_owned())
    };
    let limit = read("memory.limit_in_bytes").or_else(|| read("memory.max")).expect("a memory limit file");
    assert_eq!(limit, (256u64 << 20).to_string());
    let pids = read("pids.max").expect("a pids limit file");
    assert_eq!(pids, "64");
    assert_eq!(get_text(&run.host_endpoint, "/alloc?mib=32").await.trim(), "32", "within the limit");
    // Past it: the sandbox dies, the request fails; the worker stays healthy.
    let mut s = tokio::net::TcpStream::connect(&run.host_endpoint).await.unwrap();
    let past = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        ateom_runtime::probe::http_get(&mut s, &run.host_endpoint, "/alloc?mib=1024"),
    )
    .await
    .expect("the hog is stopped, and its request cut, in bounded time");
    assert!(!matches!(past, Ok((200, _))), "1 GiB past a 256 MiB limit must not succeed: {past:?}");
    // The worker is fine, noticed on its own, and says what happened.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let caps = loop {
        let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
        if caps.state == "idle" || std::time::Instant::now() > deadline {
            break caps;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(caps.state, "idle", "{caps:?}");
    let lost = caps.lost_actors.last().expect("reported lost");
    assert_eq!(lost.actor, "test/counter/hog");
    eprintln!("the hog past its limit: {}", lost.reason);
    let err = c.checkpoint_workload(checkpoint_req("hog")).await.expect_err("its state died with it");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(w.namespaces().is_empty() && w.runsc_processes().is_empty());
    assert!(ateom_gvisor::sandbox_cgroups(&prefix).is_empty(), "no cgroup left");
    // The next workload runs.
    let run = c.run_workload(run_req("next", &image)).await.expect("next run").into_inner();
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    c.checkpoint_workload(checkpoint_req("next")).await.unwrap();
}

/// SIGTERM while a Run is still starting and its client has gone away (so no RPC holds the
/// server open), under `--on-exit stop`: the worker lets the start end and then stops the
/// workload, so nothing of it is left running (before, shutdown saw no running workload yet
/// and the sandbox outlived the worker).
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_starting_with_on_exit_stop_leaves_nothing_running() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let mut w = Worker::start(&tmp.path().join("state"), &["--on-exit", "stop"]);
    let mut c = w.client().await;
    let run = tokio::spawn({
        let mut c = c.clone();
        async move { c.run_workload(run_req("st", &image)).await }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
        if caps.state == "starting" {
            break;
        }
        assert!(caps.state == "idle", "the run ended before it was seen starting: {}", caps.state);
        assert!(std::time::Instant::now() < deadline, "never seen starting\n{}", w.log_text());
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    run.abort();
    let _ = run.await;
    tokio::task::block_in_place(|| w.stop());
    let status = w.child.try_wait().unwrap().expect("stopped");
    assert!(status.code().is_some(), "the worker had to be killed: {status:?}\n{}", w.log_text());
    assert_eq!(w.runsc_processes(), Vec::<i32>::new(), "sandbox left running\n{}", w.log_text());
    assert_eq!(w.namespaces(), Vec::<String>::new(), "namespace left behind");
    assert!(w.log_text().contains("deleting the running workload"), "{}", w.log_text());
}
