//! Hostile input against a real worker (gVisor): a sandbox that tries to reach the host's
//! loopback services, crafted gRPC requests, crafted local and durable snapshots. Each case
//! prints one line for `scripts/security-suite.sh`:
//!
//! ```text
//! CASE <name> <passed|failed> escapes=<n> unauthenticated_accepted=<n> crashes=<n> <detail>
//! ```
//!
//! and the test fails if any case did.

mod common;

use common::*;
use tonic::Code;

struct Report {
    failed: Vec<String>,
}

impl Report {
    fn new() -> Self {
        Report { failed: Vec::new() }
    }

    fn case(&mut self, name: &str, ok: bool, escape: bool, detail: &str) {
        let detail: String = detail.chars().filter(|c| !c.is_control()).take(300).collect();
        println!(
            "CASE {name} {} escapes={} unauthenticated_accepted=0 crashes=0 {detail}",
            if ok { "passed" } else { "failed" },
            u8::from(!ok && escape)
        );
        if !ok {
            self.failed.push(format!("{name}: {detail}"));
        }
    }

    fn crash(&mut self, name: &str, w: &Worker) {
        let alive = std::fs::metadata(format!("/proc/{}", w.child.id())).is_ok();
        let panicked = w.log_text().contains("panicked");
        let ok = alive && !panicked;
        println!(
            "CASE {name} {} escapes=0 unauthenticated_accepted=0 crashes={} worker alive={alive} panicked={panicked}",
            if ok { "passed" } else { "failed" },
            u8::from(!ok)
        );
        if !ok {
            self.failed.push(format!("{name}: the worker crashed"));
        }
    }

    fn finish(self) {
        assert!(self.failed.is_empty(), "hostile cases failed:\n{}", self.failed.join("\n"));
    }
}

/// A sandbox cannot reach services on the host's loopback (the `ate` admin API, Redis) nor
/// anything on ateom's side of its network.
#[tokio::test(flavor = "multi_thread")]
async fn a_sandbox_cannot_reach_the_hosts_loopback_services() {
    require_gvisor!();
    let mut report = Report::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;
    // Stand-ins for the admin API and Redis: loopback listeners that count connections.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let redis = start_redis(tmp.path());
    let run = c.run_workload(run_req("probe", &image)).await.expect("run").into_inner();
    let mut targets = vec![
        ("sandbox_to_host_loopback_listener", format!("127.0.0.1:{port}")),
        ("sandbox_to_gateway_side", format!("169.254.0.1:{port}")),
        (
            "sandbox_to_gateway_forwarder_port",
            format!("169.254.0.1:{}", run.host_endpoint.rsplit(':').next().unwrap()),
        ),
    ];
    if let Some((_, redis_port)) = &redis {
        targets.push(("sandbox_to_host_redis", format!("127.0.0.1:{redis_port}")));
    }
    for (name, addr) in targets {
        let answer = get_text(&run.host_endpoint, &format!("/connect?addr={addr}")).await;
        report.case(name, answer.starts_with("failed"), true, &format!("connect {addr}: {answer}"));
    }
    let accepted = listener.accept().is_ok();
    report.case("host_listener_saw_nothing", !accepted, true, &format!("a connection arrived: {accepted}"));
    report.crash("worker_alive_after_isolation_probes", &w);
    drop(redis);
    let _ = c.delete_workload(delete_req("probe")).await;
    report.finish();
}

fn start_redis(dir: &std::path::Path) -> Option<(Child, u16)> {
    let bin = std::path::Path::new("/usr/bin/redis-server");
    if !bin.exists() {
        println!("SKIPPED redis part: redis-server is not installed");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some((Child(child), port))
}

/// Kills the process it holds when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn delete_req(id: &str) -> ateom_proto::DeleteWorkloadRequest {
    let (a, b, c) = actor(id);
    ateom_proto::DeleteWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        keep_snapshots: false,
    }
}

/// Crafted requests are refused field by field, change nothing, and never crash the worker.
#[tokio::test(flavor = "multi_thread")]
async fn crafted_grpc_requests_are_refused_and_the_worker_survives() {
    require_gvisor!();
    let mut report = Report::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;
    let huge = "x".repeat(1 << 20);
    let mut cases: Vec<(&str, ateom_proto::RunWorkloadRequest)> = Vec::new();
    let base = || run_req("h1", &image);
    let mut r = base();
    r.actor_id = "../../etc".into();
    cases.push(("actor_id_path_traversal", r));
    let mut r = base();
    r.actor_template_namespace = "ns\0x".into();
    cases.push(("namespace_with_nul", r));
    let mut r = base();
    r.actor_id = huge.clone();
    cases.push(("megabyte_actor_id", r));
    let mut r = base();
    let one = r.spec.as_ref().unwrap().containers[0].clone();
    r.spec.as_mut().unwrap().containers =
        (0..10_000).map(|i| ateom_proto::Container { name: format!("c{i}"), ..one.clone() }).collect();
    cases.push(("ten_thousand_containers", r));
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].name = "a/b".into();
    cases.push(("container_name_with_slash", r));
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].env.insert("A=B".into(), "x".into());
    cases.push(("env_key_with_equals", r));
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].image = "oci-layout:/etc/passwd".into();
    cases.push(("image_that_is_not_a_layout", r));
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].image = "oci-layout:relative/dir".into();
    cases.push(("relative_image_layout", r));
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].durable_dir_volumes = vec!["/data/../../etc".into()];
    cases.push(("durable_dir_with_dotdot", r));
    let mut r = base();
    r.runsc_path = "runsc".into();
    cases.push(("relative_runsc_path", r));
    let mut r = base();
    r.runsc_path = "/bin/sh".into();
    cases.push(("runsc_path_not_runsc", r));
    let mut r = base();
    r.resources = Some(ateom_proto::Resources { cpu_milli: u64::MAX, memory_bytes: 1, pids: u32::MAX });
    cases.push(("absurd_resources", r));
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].readyz = Some(ateom_proto::Readyz {
        http_get: Some(ateom_proto::HttpGetAction { path: huge.clone(), port: 70000 }),
        timeout_seconds: 0,
    });
    cases.push(("bad_probe", r));
    for (name, req) in cases {
        let out = c.run_workload(req).await;
        let ok = match &out {
            Err(s) => matches!(
                s.code(),
                Code::InvalidArgument | Code::FailedPrecondition | Code::Unavailable | Code::OutOfRange
            ),
            Ok(_) => false,
        };
        let detail = match &out {
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
            Ok(_) => "accepted".into(),
        };
        report.case(name, ok, name.contains("traversal") || name.contains("dotdot"), &detail);
        if out.is_ok() {
            let _ = c.delete_workload(delete_req("h1")).await;
        }
    }
    // Checkpoint and restore fields.
    let mut ck = checkpoint_req("h1");
    ck.snapshot_uri_prefix = "http://169.254.169.254/latest".into();
    let e = c.checkpoint_workload(ck).await.unwrap_err();
    report.case("checkpoint_to_a_foreign_scheme", e.code() == Code::InvalidArgument, false, e.message());
    let mut ck = checkpoint_req("h1");
    ck.snapshot_id = "../../x".into();
    let e = c.checkpoint_workload(ck).await.unwrap_err();
    report.case("checkpoint_snapshot_id_traversal", e.code() == Code::InvalidArgument, true, e.message());
    let mut ck = checkpoint_req("h1");
    ck.keep_snapshot_ids = (0..100_000).map(|i| format!("s{i}")).collect();
    let e = c.checkpoint_workload(ck).await.unwrap_err();
    report.case(
        "checkpoint_hundred_thousand_pins",
        matches!(e.code(), Code::InvalidArgument | Code::OutOfRange | Code::ResourceExhausted),
        false,
        e.message(),
    );
    let mut rs = restore_req("h1");
    rs.snapshot_id = "..".into();
    let e = c.restore_workload(rs).await.unwrap_err();
    report.case("restore_snapshot_id_dotdot", e.code() == Code::InvalidArgument, true, e.message());
    let mut rs = restore_req("h1");
    rs.snapshot_uri_prefix = format!("file://{}", "/..".repeat(10));
    let e = c.restore_workload(rs).await.unwrap_err();
    report.case("restore_store_prefix_traversal", e.code() != Code::Ok, true, e.message());
    // PushSnapshot: ids, prefixes and actors it must refuse before touching anything.
    let push = |id: &str, prefix: &str| {
        let (a, b, c) = actor("h1");
        ateom_proto::PushSnapshotRequest {
            actor_template_namespace: a,
            actor_template_name: b,
            actor_id: c,
            snapshot_id: id.into(),
            snapshot_uri_prefix: prefix.into(),
        }
    };
    let store = format!("file://{}/bucket", tmp.path().display());
    for (name, req, want, traversal) in [
        ("push_snapshot_id_traversal", push("../../etc", &store), Code::InvalidArgument, true),
        ("push_without_a_prefix", push("s1", ""), Code::InvalidArgument, false),
        ("push_to_a_foreign_scheme", push("s1", "http://169.254.169.254/x"), Code::InvalidArgument, false),
        ("push_of_a_snapshot_that_is_not_here", push("s1", &store), Code::NotFound, false),
    ] {
        let e = c.push_snapshot(req).await.unwrap_err();
        report.case(name, e.code() == want, traversal, &format!("{:?}: {}", e.code(), e.message()));
    }
    let mut other = push("s1", &store);
    other.actor_id = "../h1".into();
    let e = c.push_snapshot(other).await.unwrap_err();
    report.case("push_actor_id_traversal", e.code() == Code::InvalidArgument, true, e.message());
    // An oversized message is refused by the transport, not decoded.
    let mut r = base();
    r.spec.as_mut().unwrap().containers[0].env.insert("BIG".into(), "y".repeat(64 << 20));
    let e = c.run_workload(r).await.unwrap_err();
    report.case("sixty_four_megabyte_request", e.code() != Code::Ok, false, &format!("{:?}", e.code()));
    // Nothing of all that exists, and the worker still works.
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    report.case("nothing_was_started", caps.state == "idle", false, &caps.state);
    let escaped = std::path::Path::new("/etc/actors").exists() || tmp.path().join("x").exists();
    report.case("nothing_written_outside_the_state_dir", !escaped, true, "");
    report.crash("worker_alive_after_crafted_requests", &w);
    let run = c.run_workload(run_req("h2", &image)).await.expect("a valid run still works").into_inner();
    report.case("a_valid_run_still_works", hit(&run.host_endpoint).await.memory == 1, false, "");
    let _ = c.delete_workload(delete_req("h2")).await;
    report.finish();
}

/// Crafted snapshots — local files a node agent or an attacker placed, durable indexes with
/// forged provenance — are refused before a sandbox exists.
#[tokio::test(flavor = "multi_thread")]
async fn crafted_snapshots_are_refused_before_any_sandbox_exists() {
    require_gvisor!();
    let mut report = Report::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = Worker::start(&tmp.path().join("state"), &[]);
    let mut c = w.client().await;
    let run = c.run_workload(run_req("s1", &image)).await.expect("run").into_inner();
    hit(&run.host_endpoint).await;
    let ck = c.checkpoint_workload(checkpoint_req("s1")).await.expect("checkpoint").into_inner();
    let manifest_path = std::path::PathBuf::from(ck.snapshot_files.last().unwrap());
    let id = ck.manifest.as_ref().unwrap().snapshot_id.clone();
    let original = std::fs::read(&manifest_path).unwrap();
    let variants: [(&str, bool); 6] = [
        ("manifest_artifact_path_traversal", true),
        ("manifest_absolute_artifact", true),
        ("manifest_forged_backend", false),
        ("manifest_forged_runtime_version", false),
        ("manifest_forged_chunk_digest", false),
        ("manifest_huge_size", false),
    ];
    for (name, escape) in variants {
        let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
        match name {
            "manifest_artifact_path_traversal" => v["artifacts"][0]["name"] = "../../../../etc/shadow".into(),
            "manifest_absolute_artifact" => v["artifacts"][0]["name"] = "/etc/shadow".into(),
            "manifest_forged_backend" => v["backend"] = "firecracker".into(),
            "manifest_forged_runtime_version" => v["runtime_version"] = "9.9.9".into(),
            "manifest_forged_chunk_digest" => {
                v["artifacts"][0]["chunk_digest"]["root"] = "0".repeat(64).into()
            }
            _ => v["artifacts"][0]["size"] = u64::MAX.into(),
        }
        std::fs::write(&manifest_path, serde_json::to_vec(&v).unwrap()).unwrap();
        let mut rq = restore_req("s1");
        rq.snapshot_id = id.clone();
        let e = c.restore_workload(rq).await;
        let ok = e
            .as_ref()
            .is_err_and(|s| matches!(s.code(), Code::DataLoss | Code::FailedPrecondition | Code::NotFound))
            && w.namespaces().is_empty()
            && w.runsc_processes().is_empty();
        let detail = match &e {
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
            Ok(_) => "restored".into(),
        };
        report.case(name, ok, escape, &detail);
        if e.is_ok() {
            let _ = c.checkpoint_workload(checkpoint_req("s1")).await;
        }
    }
    // The bytes themselves changed under an intact manifest.
    std::fs::write(&manifest_path, &original).unwrap();
    let artifact = manifest_path.with_file_name("checkpoint.img");
    let good = std::fs::read(&artifact).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    std::fs::write(&artifact, &bad).unwrap();
    let mut rq = restore_req("s1");
    rq.snapshot_id = id.clone();
    let e = c.restore_workload(rq).await;
    report.case(
        "snapshot_bytes_changed",
        e.as_ref().is_err_and(|s| s.code() == Code::DataLoss) && w.runsc_processes().is_empty(),
        false,
        &format!("{:?}", e.as_ref().map(|_| "restored").map_err(|s| s.message().to_owned())),
    );
    std::fs::write(&artifact, &good).unwrap();
    let mut rq = restore_req("s1");
    rq.snapshot_id = id.clone();
    let r = c.restore_workload(rq).await;
    report.case("the_untampered_snapshot_still_restores", r.is_ok(), false, "");
    if let Ok(r) = r {
        report.case("and_continues", hit(&r.into_inner().host_endpoint).await.memory == 2, false, "");
    }
    report.crash("worker_alive_after_crafted_snapshots", &w);
    let _ = c.delete_workload(delete_req("s1")).await;
    report.finish();
}

/// Substrate's renumbered layout: crafted durable-dir volume names and golden-snapshot URIs,
/// and a golden snapshot of another template, are refused before any sandbox exists.
#[tokio::test(flavor = "multi_thread")]
async fn crafted_v2_volumes_and_golden_snapshots_are_refused() {
    use ateom_proto::substrate::v2;
    require_gvisor!();
    let mut report = Report::new();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let state = tmp.path().join("state");
    let env = [("COUNTER_DIR", "/data")];
    agent_bundle_for(tmp.path(), &state, "team-a:counter:a1", "counter", &image, &env);
    agent_bundle_for(tmp.path(), &state, "team-a:other:g1", "counter", &image, &env);
    let w = Worker::start(&state, &["--wire", "substrate-v2"]);
    let mut c = v2::AteomClient::new(ateom_grpc::channel_unix(&w.socket).await.unwrap());
    let spec = |volume: &str, path: &str| v2::WorkloadSpec {
        containers: vec![v2::Container {
            name: "counter".into(),
            readyz: Some(v2::Readyz {
                http_get: Some(v2::HttpGetAction { path: "/readyz".into(), port: 8080 }),
                timeout_seconds: 30,
            }),
            durable_dir_volume_mounts: vec![v2::DurableDirVolumeMount {
                volume_name: volume.into(),
                mount_path: path.into(),
            }],
            ..Default::default()
        }],
    };
    let run = |template: &str, id: &str, s: v2::WorkloadSpec| v2::RunWorkloadRequest {
        atespace: "team-a".into(),
        actor_uid: id.into(),
        actor_template_name: template.into(),
        spec: Some(s),
        ..Default::default()
    };
    for (name, volume, path) in [
        ("v2_volume_name_dotdot", "..", "/data"),
        ("v2_volume_name_traversal", "../../../etc", "/data"),
        ("v2_volume_name_with_slash", "a/b", "/data"),
        ("v2_volume_name_absolute", "/etc", "/data"),
        ("v2_volume_name_empty", "", "/data"),
        ("v2_volume_name_with_nul", "a\0b", "/data"),
        ("v2_volume_mount_path_traversal", "data", "/data/../../etc"),
        ("v2_volume_mount_path_relative", "data", "data"),
    ] {
        let e = c.run_workload(run("counter", "a1", spec(volume, path))).await;
        let ok = e.as_ref().is_err_and(|s| s.code() == Code::InvalidArgument);
        let detail = match &e {
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
            Ok(_) => "accepted".into(),
        };
        report.case(name, ok, true, &detail);
        if e.is_ok() {
            let _ = c
                .terminate_workload(v2::TerminateWorkloadRequest {
                    atespace: "team-a".into(),
                    actor_uid: "a1".into(),
                    ..Default::default()
                })
                .await;
        }
    }
    // No refused request created any directory: not under the actor's durable-dir/, not
    // next to it, not where '..' would have led.
    let durable = state.join("actors/team-a:counter:a1/durable-dir");
    let created: Vec<String> = std::fs::read_dir(&durable)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    let escaped = !created.is_empty()
        || ["actors/etc", "etc", "actors/team-a:counter:a1/etc"].iter().any(|p| state.join(p).exists())
        || tmp.path().join("etc").exists();
    report.case("nothing_created_outside_the_actor_directory", !escaped, true, &format!("{created:?}"));

    // A golden snapshot of another template, and an actor's DATA snapshot to put on it.
    let bucket = tmp.path().join("bucket");
    let other_golden = format!("file://{}/templates/other/golden", bucket.display());
    c.run_workload(run("other", "g1", spec("workspace", "/data"))).await.expect("golden of 'other'");
    let ck = |template: &str, id: &str, uri: &str, scope: v2::SnapshotScope| v2::CheckpointWorkloadRequest {
        atespace: "team-a".into(),
        actor_uid: id.into(),
        actor_template_name: template.into(),
        snapshot_uri: uri.into(),
        scope: scope as i32,
        ..Default::default()
    };
    c.checkpoint_workload(ck("other", "g1", &other_golden, v2::SnapshotScope::Full)).await.expect("golden");
    c.run_workload(run("counter", "a1", spec("workspace", "/data"))).await.expect("actor");
    c.checkpoint_workload(ck("counter", "a1", "", v2::SnapshotScope::Data)).await.expect("DATA, local");
    let restore = |golden: &str| v2::RestoreWorkloadRequest {
        atespace: "team-a".into(),
        actor_uid: "a1".into(),
        actor_template_name: "counter".into(),
        actor_template_atespace: "team-a".into(),
        spec: Some(spec("workspace", "/data")),
        scope: v2::SnapshotScope::DataOnGolden as i32,
        golden_snapshot_uri: golden.into(),
        ..Default::default()
    };
    for (name, golden, codes, escape) in [
        ("golden_of_another_template", other_golden.as_str(), &[Code::FailedPrecondition][..], true),
        ("golden_uri_foreign_scheme", "http://169.254.169.254/latest", &[Code::InvalidArgument][..], false),
        ("golden_uri_traversal", "file:///var/lib/../../etc", &[Code::InvalidArgument][..], true),
        ("golden_uri_relative", "file://etc/passwd", &[Code::InvalidArgument][..], true),
        ("golden_uri_at_a_host_directory", "file:///etc", &[Code::NotFound, Code::DataLoss][..], true),
    ] {
        let e = c.restore_workload(restore(golden)).await;
        let ok = e.as_ref().is_err_and(|s| codes.contains(&s.code()))
            && w.runsc_processes().is_empty()
            && w.namespaces().is_empty();
        let detail = match &e {
            Err(s) => format!("{:?}: {}", s.code(), s.message()),
            Ok(_) => "restored".into(),
        };
        report.case(name, ok, escape, &detail);
        if e.is_ok() {
            let _ = c.checkpoint_workload(ck("counter", "a1", "", v2::SnapshotScope::Data)).await;
        }
    }
    report.crash("worker_alive_after_crafted_v2_requests", &w);
    report.finish();
}
