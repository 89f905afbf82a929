//! Substrate's two wire layouts against real gVisor workers, each driven by a client
//! generated from substrate's own proto file (`proto/substrate/v1/ateom.proto`,
//! `proto/substrate/v2/ateom.proto`), never from `proto/ateom.proto`:
//!
//! * an unmodified substrate client of the original layout on a default worker;
//! * a client of the renumbered layout on a `--wire substrate-v2` worker;
//! * each client on the other kind of worker: refused, with nothing started or stopped.
//!
//! Substrate clients send no image: like substrate's node agent, the tests prepare the OCI
//! bundle under `<state>/actors/<key>/bundles/<container>/`.

mod common;

use std::path::Path;

use ateom_proto::substrate::{v1, v2};
use common::*;
use tonic::Code;
use tonic::transport::Channel;

const UID: &str = "0a1b2c3d-0000-4000-8000-00000000c0de";

/// Plays the node agent: the counter image unpacked into a bundle for actor `key`
/// (`namespace:template:id`), root path relative as node agents write it.
fn agent_bundle(tmp: &Path, state: &Path, key: &str) {
    let image = counter_image(tmp);
    let bundle = state.join("actors").join(key).join("bundles/counter");
    std::fs::create_dir_all(&bundle).unwrap();
    let store = ateom_image::ImageStore::new(tmp.join("agent-cache"));
    let prepared = store.prepare(&ateom_core::ImageRef::parse("image", &image).unwrap()).unwrap();
    let st =
        std::process::Command::new("cp").arg("-a").arg(&prepared.rootfs).arg(bundle.join("rootfs")).status();
    assert!(st.unwrap().success());
    let opts = ateom_image::BundleOptions {
        rootfs: bundle.join("rootfs"),
        hostname: "agent".into(),
        netns_path: None,
        readonly_rootfs: false,
    };
    let mut spec =
        ateom_image::runtime_spec(&prepared.config, &ateom_image::ProcessOverrides::default(), &opts)
            .unwrap();
    let mut root = spec.root().clone().unwrap();
    root.set_path("rootfs".into());
    spec.set_root(Some(root));
    ateom_image::write_bundle(&bundle, &spec).unwrap();
}

async fn channel(w: &Worker) -> Channel {
    ateom_grpc::channel_unix(&w.socket).await.expect("connect")
}

/// What ateom's own GetCapabilities says (a test's view; substrate clients cannot ask).
async fn caps(w: &Worker) -> ateom_proto::GetCapabilitiesResponse {
    let mut c = w.client().await;
    c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.expect("GetCapabilities").into_inner()
}

// --- substrate's original layout -------------------------------------------------------------

fn v1_spec() -> v1::WorkloadSpec {
    v1::WorkloadSpec {
        containers: vec![v1::Container {
            name: "counter".into(),
            readyz: Some(v1::Readyz {
                http_get: Some(v1::HttpGetAction { path: "/readyz".into(), port: 8080 }),
            }),
            durable_dir_volumes: vec![],
        }],
    }
}

fn v1_run(id: &str) -> v1::RunWorkloadRequest {
    v1::RunWorkloadRequest {
        actor_template_namespace: "test".into(),
        actor_template_name: "counter".into(),
        actor_id: id.into(),
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(v1_spec()),
        runtime_asset_paths: Default::default(),
    }
}

fn v1_checkpoint(id: &str) -> v1::CheckpointWorkloadRequest {
    v1::CheckpointWorkloadRequest {
        actor_template_namespace: "test".into(),
        actor_template_name: "counter".into(),
        actor_id: id.into(),
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(v1_spec()),
        scope: v1::SnapshotScope::Full as i32,
        ..Default::default()
    }
}

fn v1_restore(id: &str) -> v1::RestoreWorkloadRequest {
    v1::RestoreWorkloadRequest {
        actor_template_namespace: "test".into(),
        actor_template_name: "counter".into(),
        actor_id: id.into(),
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(v1_spec()),
        scope: v1::SnapshotScope::Full as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unmodified_substrate_v1_client_runs_checkpoints_and_restores_on_a_default_worker() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    agent_bundle(tmp.path(), &state, "test:counter:s1");
    let w = Worker::start(&state, &[]);
    let mut c = v1::AteomClient::new(channel(&w).await);

    c.run_workload(v1_run("s1")).await.expect("run from the node agent's bundle");
    // Substrate's RunWorkloadResponse is empty; the endpoint is ateom's to tell.
    let endpoint = caps(&w).await.host_endpoint;
    assert_eq!(hit(&endpoint).await.memory, 1);
    assert_eq!(hit(&endpoint).await.memory, 2);

    let ck = c.checkpoint_workload(v1_checkpoint("s1")).await.expect("checkpoint").into_inner();
    assert!(!ck.snapshot_files.is_empty(), "snapshot_files lists the snapshot");
    assert_eq!(caps(&w).await.state, "idle");
    assert!(w.runsc_processes().is_empty());

    c.restore_workload(v1_restore("s1")).await.expect("restore");
    let n = hit(&caps(&w).await.host_endpoint).await;
    assert_eq!((n.memory, n.file), (3, 3), "memory and files continued");
    c.checkpoint_workload(v1_checkpoint("s1")).await.expect("second checkpoint");
}

// --- substrate's renumbered layout ------------------------------------------------------------

fn v2_spec() -> v2::WorkloadSpec {
    v2::WorkloadSpec {
        containers: vec![v2::Container {
            name: "counter".into(),
            readyz: Some(v2::Readyz {
                http_get: Some(v2::HttpGetAction { path: "/readyz".into(), port: 8080 }),
                timeout_seconds: 30,
            }),
            ..Default::default()
        }],
    }
}

fn v2_run() -> v2::RunWorkloadRequest {
    v2::RunWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "counter-1".into(),
        actor_uid: UID.into(),
        actor_template_atespace: "team-a".into(),
        actor_template_name: "counter".into(),
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(v2_spec()),
        cpu_milli: 1000,
        memory_bytes: 384 << 20,
        ..Default::default()
    }
}

fn v2_checkpoint(snapshot_uri: &str) -> v2::CheckpointWorkloadRequest {
    v2::CheckpointWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "counter-1".into(),
        actor_uid: UID.into(),
        actor_template_atespace: "team-a".into(),
        actor_template_name: "counter".into(),
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(v2_spec()),
        snapshot_uri: snapshot_uri.into(),
        scope: v2::SnapshotScope::Full as i32,
        ..Default::default()
    }
}

fn v2_restore(snapshot_uri: &str) -> v2::RestoreWorkloadRequest {
    v2::RestoreWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "counter-1".into(),
        actor_uid: UID.into(),
        actor_template_atespace: "team-a".into(),
        actor_template_name: "counter".into(),
        runsc_path: "/usr/bin/runsc".into(),
        spec: Some(v2_spec()),
        snapshot_uri: snapshot_uri.into(),
        scope: v2::SnapshotScope::Full as i32,
        cpu_milli: 1000,
        memory_bytes: 384 << 20,
        ..Default::default()
    }
}

fn v2_terminate(with_template: bool) -> v2::TerminateWorkloadRequest {
    v2::TerminateWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "counter-1".into(),
        actor_uid: UID.into(),
        actor_template_atespace: if with_template { "team-a".into() } else { String::new() },
        actor_template_name: if with_template { "counter".into() } else { String::new() },
        ..Default::default()
    }
}

fn stats_of(uid: &str) -> v2::GetWorkloadStatsRequest {
    v2::GetWorkloadStatsRequest { actor_uid: uid.into() }
}

async fn active(c: &mut v2::AteomClient<Channel>) -> v2::get_active_workload_stats_response::Result {
    let r = c.get_active_workload_stats(v2::GetActiveWorkloadStatsRequest {}).await.expect("active stats");
    r.into_inner().result.expect("a sample or a reason")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_substrate_v2_client_drives_a_v2_worker() {
    use v2::get_active_workload_stats_response::Result as Active;
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    agent_bundle(tmp.path(), &state, &format!("team-a:counter:{UID}"));
    let w = Worker::start(&state, &["--wire", "substrate-v2"]);
    let mut c = v2::AteomClient::new(channel(&w).await);

    // What ateom does not implement says so, naming it.
    let err = c.prepare_sandbox(v2::PrepareSandboxRequest::default()).await.expect_err("not implemented");
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("PrepareSandbox"), "{err:?}");
    let err = c.discard_prepared_sandbox(v2::DiscardPreparedSandboxRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("DiscardPreparedSandbox"), "{err:?}");

    // Idle: no sample, for a known reason; the actor is not here.
    assert_eq!(active(&mut c).await, Active::NoSampleReason(v2::NoSampleReason::NoWorkload as i32));
    assert_eq!(c.get_workload_stats(stats_of(UID)).await.unwrap_err().code(), Code::NotFound);

    let run = c.run_workload(v2_run()).await.expect("run from the node agent's bundle").into_inner();
    assert!(run.ready);
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    assert_eq!(hit(&run.host_endpoint).await.memory, 2);
    // memory_bytes sized the sandbox's cgroup.
    let prefix = format!("ateom-{}-", instance_id(&w.state_dir));
    let limit = ateom_gvisor::sandbox_cgroups(&prefix).iter().find_map(|d| {
        ["memory.max", "memory.limit_in_bytes"].iter().find_map(|f| std::fs::read_to_string(d.join(f)).ok())
    });
    assert_eq!(limit.expect("a memory limit").trim(), (384u64 << 20).to_string());
    // ateom's own RPCs answer on a v2 socket (ateom's client, proto/ateom.proto).
    let info = caps(&w).await;
    assert_eq!(
        (info.state.as_str(), info.running_actor.as_str()),
        ("running", format!("team-a/counter/{UID}").as_str())
    );

    // Stats of the running actor, echoing how the run named it.
    let sample = c.get_workload_stats(stats_of(UID)).await.expect("stats").into_inner().sample.unwrap();
    eprintln!("GetWorkloadStats: {sample:?}");
    assert!(sample.memory_current_bytes > 0, "{sample:?}");
    assert!(sample.cpu_usage_usec > 0 && sample.pids > 0, "{sample:?}");
    assert_eq!(sample.source, v2::StatsSource::Cgroup as i32);
    assert_eq!(sample.sandbox_class, v2::SandboxClass::Gvisor as i32);
    let named = (sample.atespace.as_str(), sample.actor_name.as_str(), sample.actor_uid.as_str());
    assert_eq!(named, ("team-a", "counter-1", UID));
    assert_eq!(
        (sample.actor_template_atespace.as_str(), sample.actor_template_name.as_str()),
        ("team-a", "counter")
    );
    let err = c.get_workload_stats(stats_of("another-uid")).await.expect_err("not the running actor");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    match active(&mut c).await {
        Active::Sample(s) => assert_eq!((s.actor_uid.as_str(), s.memory_current_bytes > 0), (UID, true)),
        other => panic!("expected a sample: {other:?}"),
    }

    // A checkpoint with snapshot_uri ships the snapshot there (DURABLE); restore reads it back.
    let uri = format!("file://{}/bucket/atespaces/team-a/actors/{UID}/snapshots/1", tmp.path().display());
    let ck = c.checkpoint_workload(v2_checkpoint(&uri)).await.expect("checkpoint").into_inner();
    assert!(!ck.snapshot_files.is_empty());
    assert_eq!(ck.destination, v2::SnapshotDestination::Durable as i32);
    assert!(ck.location.starts_with(&uri) && ck.stored_bytes > 0, "{ck:?}");
    assert_eq!(active(&mut c).await, Active::NoSampleReason(v2::NoSampleReason::NoWorkload as i32));
    let r = c.restore_workload(v2_restore(&uri)).await.expect("restore").into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!((n.memory, n.file), (3, 3), "memory and files continued");

    // Terminate: stopped, nothing checkpointed, the snapshot kept; twice is fine.
    c.terminate_workload(v2_terminate(true)).await.expect("terminate");
    assert_eq!(caps(&w).await.state, "idle");
    assert!(w.runsc_processes().is_empty() && w.namespaces().is_empty());
    assert_eq!(active(&mut c).await, Active::NoSampleReason(v2::NoSampleReason::NoWorkload as i32));
    c.terminate_workload(v2_terminate(true)).await.expect("terminating what is not running");
    let r = c.restore_workload(v2_restore(&uri)).await.expect("the kept snapshot restores").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 3, "the terminated run's state was discarded");
    // Substrate may leave the template out of a terminate.
    c.terminate_workload(v2_terminate(false)).await.expect("terminate without the template");
    assert_eq!(caps(&w).await.state, "idle");

    // A golden URI without DATA_ON_GOLDEN, and DATA_ON_GOLDEN without one: refused, naming it.
    let mut golden = v2_restore(&uri);
    golden.scope = v2::SnapshotScope::DataOnGolden as i32;
    let err = c.restore_workload(golden.clone()).await.expect_err("DATA_ON_GOLDEN without a golden URI");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("golden_snapshot_uri"), "{err:?}");
    let mut full = v2_restore(&uri);
    full.golden_snapshot_uri = format!("file://{}/bucket/golden", tmp.path().display());
    let err = c.restore_workload(full).await.expect_err("golden_snapshot_uri with FULL");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("golden_snapshot_uri"), "{err:?}");
    assert_eq!(caps(&w).await.state, "idle");
}

// --- the wrong layout -------------------------------------------------------------------------

/// Both layouts share the service and method names, so a client of one reaching a worker of
/// the other gets its bytes read with the other's field numbers. Every such call must fail
/// without touching the worker: nothing started, nothing stopped, nothing checkpointed.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_of_the_other_layout_is_refused_and_changes_nothing() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();

    // A v2 client on a default worker that runs a v1 actor.
    let state = tmp.path().join("v1-worker");
    agent_bundle(tmp.path(), &state, "test:counter:s1");
    agent_bundle(tmp.path(), &state, &format!("team-a:counter:{UID}"));
    let w = Worker::start(&state, &[]);
    let mut v1c = v1::AteomClient::new(channel(&w).await);
    v1c.run_workload(v1_run("s1")).await.expect("v1 run");
    let endpoint = caps(&w).await.host_endpoint;
    assert_eq!(hit(&endpoint).await.memory, 1);
    let mut v2c = v2::AteomClient::new(channel(&w).await);
    let mut refusals = vec![];
    let err = v2c.run_workload(v2_run()).await.expect_err("a v2 run on a v1 worker");
    refusals.push(("v2 RunWorkload -> v1 worker", err));
    let err = v2c.checkpoint_workload(v2_checkpoint("")).await.expect_err("a v2 checkpoint on a v1 worker");
    refusals.push(("v2 CheckpointWorkload -> v1 worker", err));
    let err = v2c.restore_workload(v2_restore("")).await.expect_err("a v2 restore on a v1 worker");
    refusals.push(("v2 RestoreWorkload -> v1 worker", err));
    // Fields 1-3 alone are the same strings in both layouts: a v1 worker reads them as
    // (namespace, template, id), a different actor from the running one, and refuses.
    let bare = v2::CheckpointWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "counter-1".into(),
        actor_uid: UID.into(),
        ..Default::default()
    };
    let err = v2c.checkpoint_workload(bare).await.expect_err("not the running actor");
    refusals.push(("v2 CheckpointWorkload(fields 1-3 only) -> v1 worker", err));
    let err = v2c.terminate_workload(v2_terminate(true)).await.expect_err("no such RPC on v1");
    refusals.push(("v2 TerminateWorkload -> v1 worker", err));
    let err = v2c.get_workload_stats(stats_of(UID)).await.expect_err("no such RPC on v1");
    refusals.push(("v2 GetWorkloadStats -> v1 worker", err));
    for (what, err) in &refusals {
        eprintln!("{what}: {:?} {}", err.code(), err.message());
    }
    // Requests that do not decode, and methods the default layout lacks, are answered naming
    // the layout; fields 1-3 alone name an actor that is not running.
    for (what, err) in refusals.iter().filter(|(what, _)| !what.contains("fields 1-3")) {
        assert!(
            err.message().contains("--wire substrate-v2"),
            "{what}: the worker names the layout: {err:?}"
        );
    }
    assert_eq!(refusals[3].1.code(), Code::FailedPrecondition);
    assert_eq!((refusals[4].1.code(), refusals[5].1.code()), (Code::Unimplemented, Code::Unimplemented));
    assert!(refusals[4].1.message().contains("TerminateWorkload"), "{:?}", refusals[4].1);
    // The v1 actor kept running, untouched.
    let info = caps(&w).await;
    assert_eq!((info.state.as_str(), info.running_actor.as_str()), ("running", "test/counter/s1"));
    assert_eq!(hit(&endpoint).await.memory, 2, "the running actor was not checkpointed or restarted");
    v1c.checkpoint_workload(v1_checkpoint("s1")).await.expect("the v1 client still works");
    drop(w);

    // A v1 client on a v2 worker that runs a v2 actor.
    let state = tmp.path().join("v2-worker");
    agent_bundle(tmp.path(), &state, &format!("team-a:counter:{UID}"));
    agent_bundle(tmp.path(), &state, "test:counter:s1");
    let w = Worker::start(&state, &["--wire", "substrate-v2"]);
    let mut v2c = v2::AteomClient::new(channel(&w).await);
    let run = v2c.run_workload(v2_run()).await.expect("v2 run").into_inner();
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    let mut v1c = v1::AteomClient::new(channel(&w).await);
    let mut refusals = vec![];
    let err = v1c.run_workload(v1_run("s1")).await.expect_err("a v1 run on a v2 worker");
    refusals.push(("v1 RunWorkload -> v2 worker", err));
    let err = v1c.checkpoint_workload(v1_checkpoint("s1")).await.expect_err("a v1 checkpoint on a v2 worker");
    refusals.push(("v1 CheckpointWorkload -> v2 worker", err));
    let err = v1c.restore_workload(v1_restore("s1")).await.expect_err("a v1 restore on a v2 worker");
    refusals.push(("v1 RestoreWorkload -> v2 worker", err));
    // The v2 actor's own names in the v1 fields: still refused (no template at field 5).
    let bare = v1::CheckpointWorkloadRequest {
        actor_template_namespace: "team-a".into(),
        actor_template_name: "counter-1".into(),
        actor_id: UID.into(),
        ..Default::default()
    };
    refusals.push((
        "v1 CheckpointWorkload(fields 1-3 only) -> v2 worker",
        v1c.checkpoint_workload(bare).await.unwrap_err(),
    ));
    for (what, err) in &refusals {
        eprintln!("{what}: {:?} {}", err.code(), err.message());
    }
    for (what, err) in &refusals {
        assert!(
            err.message().contains("--wire substrate-v1"),
            "{what}: the worker names the layout: {err:?}"
        );
    }
    assert_eq!(refusals[3].1.code(), Code::InvalidArgument);
    assert!(refusals[3].1.message().contains("actor_template_name"), "{:?}", refusals[3].1);
    let info = caps(&w).await;
    assert_eq!(
        (info.state.as_str(), info.running_actor.as_str()),
        ("running", format!("team-a/counter/{UID}").as_str())
    );
    assert_eq!(
        hit(&run.host_endpoint).await.memory,
        2,
        "the running actor was not checkpointed or restarted"
    );
    v2c.terminate_workload(v2_terminate(true)).await.expect("the v2 client still works");
}

// --- v2: each probe's own timeout, named durable-dir volumes ----------------------------------

/// The counter keeps its file counter (and `random.bin`) in COUNTER_DIR: the durable directory.
const COUNTER_ENV: [(&str, &str); 1] = [("COUNTER_DIR", "/data")];

fn v2_spec_with(volume: &str, port: i32, timeout_seconds: i32) -> v2::WorkloadSpec {
    v2::WorkloadSpec {
        containers: vec![v2::Container {
            name: "counter".into(),
            readyz: Some(v2::Readyz {
                http_get: Some(v2::HttpGetAction { path: "/readyz".into(), port }),
                timeout_seconds,
            }),
            durable_dir_volume_mounts: vec![v2::DurableDirVolumeMount {
                volume_name: volume.into(),
                mount_path: "/data".into(),
            }],
            ..Default::default()
        }],
    }
}

/// A readiness probe that never passes fails after *its* `timeout_seconds`, not after the
/// worker's (much longer) --ready-timeout, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread")]
async fn a_v2_probe_fails_after_its_own_timeout_not_the_workers() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    agent_bundle(tmp.path(), &state, &format!("team-a:counter:{UID}"));
    let w = Worker::start(&state, &["--wire", "substrate-v2", "--ready-timeout", "600s"]);
    let mut c = v2::AteomClient::new(channel(&w).await);
    // Nothing listens on 9999 inside the sandbox.
    let run = v2::RunWorkloadRequest { spec: Some(v2_spec_with("workspace", 9999, 2)), ..v2_run() };
    let err = c.run_workload(run).await.expect_err("the probe never passes");
    eprintln!("{:?}: {}", err.code(), err.message());
    let waited_ms: u64 = err
        .message()
        .split("within ")
        .nth(1)
        .and_then(|s| s.split(" ms").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("the error names how long it waited: {}", err.message()));
    assert!(err.message().contains("port 9999"), "{}", err.message());
    assert!(
        (2000..60_000).contains(&waited_ms),
        "waited {waited_ms} ms: the probe's 2 s, not the worker's 600 s"
    );
    assert_eq!(caps(&w).await.state, "idle");
    assert!(w.runsc_processes().is_empty() && w.namespaces().is_empty());
    // timeout_seconds 0 is the worker's default: the same workload on its real port runs.
    let run = v2::RunWorkloadRequest { spec: Some(v2_spec_with("workspace", 8080, 0)), ..v2_run() };
    let r = c.run_workload(run).await.expect("run with the worker's timeout").into_inner();
    assert_eq!(hit(&r.host_endpoint).await.memory, 1);
    c.terminate_workload(v2_terminate(true)).await.unwrap();
}

/// v2's durable-dir volume is `<actorDir>/durable-dir/<volume_name>/`, named by the request
/// (not derived from the mount path), captured under that name and put back under it.
#[tokio::test(flavor = "multi_thread")]
async fn v2_durable_dirs_live_under_their_volume_names() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let key = format!("team-a:counter:{UID}");
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    agent_bundle_for(tmp.path(), &state_a, &key, "counter", &image, &COUNTER_ENV);
    let a = Worker::start(&state_a, &["--wire", "substrate-v2"]);
    let mut ca = v2::AteomClient::new(channel(&a).await);
    let spec = v2_spec_with("workspace", 8080, 30);
    let run = ca
        .run_workload(v2::RunWorkloadRequest { spec: Some(spec.clone()), ..v2_run() })
        .await
        .expect("run")
        .into_inner();
    let mut last = None;
    for i in 1..=3 {
        let n = hit(&run.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        last = Some(n);
    }
    let actor_dir = state_a.join("actors").join(&key);
    assert_eq!(std::fs::read_to_string(actor_dir.join("durable-dir/workspace/count")).unwrap(), "3");
    assert!(!actor_dir.join("durable-dir/data").exists(), "not named after the mount path");

    let uri = format!("file://{}/bucket/actors/{UID}", tmp.path().display());
    let ck = ca
        .checkpoint_workload(v2::CheckpointWorkloadRequest {
            spec: Some(spec.clone()),
            scope: v2::SnapshotScope::Data as i32,
            ..v2_checkpoint(&uri)
        })
        .await
        .expect("DATA checkpoint")
        .into_inner();
    assert!(
        ck.snapshot_files.iter().any(|f| f.ends_with("durable/workspace/count")),
        "{:?}",
        ck.snapshot_files
    );
    drop(a);

    // A fresh worker: the node agent prepared the bundle; the volume comes from the store.
    agent_bundle_for(tmp.path(), &state_b, &key, "counter", &image, &COUNTER_ENV);
    let b = Worker::start(&state_b, &["--wire", "substrate-v2"]);
    let mut cb = v2::AteomClient::new(channel(&b).await);
    let r = cb
        .restore_workload(v2::RestoreWorkloadRequest {
            spec: Some(spec),
            scope: v2::SnapshotScope::Data as i32,
            ..v2_restore(&uri)
        })
        .await
        .expect("DATA restore")
        .into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!((n.memory, n.file), (1, 4), "a fresh start with the volume put back");
    assert_eq!(n.sha, last.unwrap().sha, "the volume's random.bin came back");
    assert!(state_b.join("actors").join(&key).join("durable-dir/workspace/count").is_file());
    cb.terminate_workload(v2_terminate(true)).await.unwrap();
}

// --- v2: DATA on golden ----------------------------------------------------------------------

const GOLDEN_UID: &str = "golden-1";

fn with_uid<T>(uid: &str, mut r: T, set: impl FnOnce(&mut T, String)) -> T {
    set(&mut r, uid.to_owned());
    r
}

/// Plays substrate's golden flow: a template's golden actor runs and is checkpointed FULL to
/// the golden URI; an actor of that template runs, writes to its durable directory and is
/// checkpointed DATA; on a fresh worker a DATA_ON_GOLDEN restore resumes the golden memory
/// state with the actor's durable files.
#[tokio::test(flavor = "multi_thread")]
async fn data_on_golden_resumes_the_golden_memory_with_the_actors_durable_files() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let (state_a, state_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let golden_key = format!("team-a:counter:{GOLDEN_UID}");
    let key = format!("team-a:counter:{UID}");
    agent_bundle_for(tmp.path(), &state_a, &golden_key, "counter", &image, &COUNTER_ENV);
    agent_bundle_for(tmp.path(), &state_a, &key, "counter", &image, &COUNTER_ENV);
    let a = Worker::start(&state_a, &["--wire", "substrate-v2"]);
    let mut ca = v2::AteomClient::new(channel(&a).await);
    let spec = v2_spec_with("workspace", 8080, 30);
    let bucket = tmp.path().join("bucket");
    let golden_uri = format!("file://{}/templates/counter/golden", bucket.display());
    let actor_uri = format!("file://{}/atespaces/team-a/actors/{UID}/snapshots", bucket.display());

    // The golden actor: memory 3, its own durable directory at 3.
    let run = v2::RunWorkloadRequest { spec: Some(spec.clone()), ..v2_run() };
    let run = with_uid(GOLDEN_UID, run, |r, u| r.actor_uid = u);
    let g = ca.run_workload(run).await.expect("golden run").into_inner();
    let mut golden_sha = String::new();
    for i in 1..=3 {
        let n = hit(&g.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        golden_sha = n.sha;
    }
    let ck = v2::CheckpointWorkloadRequest {
        spec: Some(spec.clone()),
        scope: v2::SnapshotScope::Full as i32,
        ..v2_checkpoint(&golden_uri)
    };
    let ck = with_uid(GOLDEN_UID, ck, |r, u| r.actor_uid = u);
    ca.checkpoint_workload(ck).await.expect("golden FULL checkpoint");

    // The actor: memory 5, its durable directory at 5 with its own random.bin.
    let r = ca
        .run_workload(v2::RunWorkloadRequest { spec: Some(spec.clone()), ..v2_run() })
        .await
        .expect("actor run")
        .into_inner();
    let mut actor_sha = String::new();
    for i in 1..=5 {
        let n = hit(&r.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        actor_sha = n.sha;
    }
    assert_ne!(actor_sha, golden_sha, "each durable directory has its own random.bin");
    ca.checkpoint_workload(v2::CheckpointWorkloadRequest {
        spec: Some(spec.clone()),
        scope: v2::SnapshotScope::Data as i32,
        ..v2_checkpoint(&actor_uri)
    })
    .await
    .expect("actor DATA checkpoint");
    drop(a);

    // A fresh worker that never saw either.
    agent_bundle_for(tmp.path(), &state_b, &key, "counter", &image, &COUNTER_ENV);
    let b = Worker::start(&state_b, &["--wire", "substrate-v2"]);
    let mut cb = v2::AteomClient::new(channel(&b).await);
    let on_golden = |golden: &str| v2::RestoreWorkloadRequest {
        spec: Some(spec.clone()),
        scope: v2::SnapshotScope::DataOnGolden as i32,
        golden_snapshot_uri: golden.to_owned(),
        ..v2_restore(&actor_uri)
    };
    // The actor's own DATA snapshot is no golden snapshot: refused before any sandbox.
    let err = cb.restore_workload(on_golden(&actor_uri)).await.expect_err("a DATA snapshot as golden");
    assert!(err.message().contains("must be FULL"), "{err:?}");
    assert!(b.runsc_processes().is_empty() && b.namespaces().is_empty());

    let r = cb.restore_workload(on_golden(&golden_uri)).await.expect("DATA_ON_GOLDEN restore").into_inner();
    assert!(r.pulled_bytes > 0, "both snapshots came from the store: {r:?}");
    let n = hit(&r.host_endpoint).await;
    assert_eq!(n.memory, 4, "the golden memory state continued");
    assert_eq!(n.file, 6, "the actor's durable files, not the golden actor's");
    assert_eq!(n.sha, actor_sha, "the actor's random.bin");
    let info = caps(&b).await;
    assert_eq!(info.running_actor, format!("team-a/counter/{UID}"));
    // The golden snapshot sits in the shared cache, not in the actor's snapshots.
    assert!(state_b.join(format!("cache/pulled/team-a:counter:{GOLDEN_UID}")).is_dir());
    cb.terminate_workload(v2_terminate(true)).await.unwrap();
    assert!(b.runsc_processes().is_empty() && b.namespaces().is_empty());
}
