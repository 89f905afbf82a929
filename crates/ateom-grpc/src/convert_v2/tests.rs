use super::*;
use prost::Message;

const UID: &str = "01234567-89ab-cdef-0123-456789abcdef";

fn spec() -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        containers: vec![pb::Container {
            name: "main".into(),
            readyz: Some(pb::Readyz {
                http_get: Some(pb::HttpGetAction { path: String::new(), port: 8080 }),
                timeout_seconds: 30,
            }),
            ..Default::default()
        }],
    }
}

fn run() -> pb::RunWorkloadRequest {
    pb::RunWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "actor-1".into(),
        actor_uid: UID.into(),
        actor_template_atespace: "team-a".into(),
        actor_template_name: "template-1".into(),
        runsc_path: "/opt/runsc".into(),
        spec: Some(spec()),
        cpu_milli: 1500,
        memory_bytes: 1 << 30,
        ..Default::default()
    }
}

fn restore() -> pb::RestoreWorkloadRequest {
    pb::RestoreWorkloadRequest {
        atespace: "team-a".into(),
        actor_name: "actor-1".into(),
        actor_uid: UID.into(),
        actor_template_name: "template-1".into(),
        snapshot_uri: "gs://bucket/root/atespaces/team-a/actors/uid/snapshots/1".into(),
        scope: pb::SnapshotScope::Full as i32,
        ..Default::default()
    }
}

fn invalid_field<T: std::fmt::Debug>(r: Result<T, Refused>) -> String {
    match r.unwrap_err() {
        Refused::Invalid(e) => e.field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

fn unimplemented_field<T: std::fmt::Debug>(r: Result<T, Refused>) -> String {
    match r.unwrap_err() {
        Refused::Unimplemented { field, .. } => field,
        other => panic!("expected UNIMPLEMENTED, got {other:?}"),
    }
}

#[test]
fn a_run_maps_onto_the_same_domain_request_as_the_default_layout() {
    let (r, identity) = run_request(&run()).unwrap();
    assert_eq!(r.actor.key(), format!("team-a:template-1:{UID}"));
    assert_eq!(identity.actor_name, "actor-1");
    assert_eq!(
        r.resources,
        core::Resources { cpu_milli: Some(1500), memory_bytes: Some(1 << 30), pids: None }
    );
    assert!(matches!(&r.runtime, Some(core::RuntimeConfig::Gvisor(g))
        if g.runsc_path.as_deref() == Some(std::path::Path::new("/opt/runsc"))));
    let (c, probe) = r.spec.service().unwrap();
    assert_eq!((c.name.as_str(), probe.path.as_str(), probe.port), ("main", "/readyz", 8080));

    // The same request in the default layout converts to the same thing.
    let v1 = crate::convert::run_request(&ateom_proto::RunWorkloadRequest {
        actor_template_namespace: "team-a".into(),
        actor_template_name: "template-1".into(),
        actor_id: UID.into(),
        runsc_path: "/opt/runsc".into(),
        spec: Some(ateom_proto::WorkloadSpec {
            containers: vec![ateom_proto::Container {
                name: "main".into(),
                readyz: Some(ateom_proto::Readyz {
                    http_get: Some(ateom_proto::HttpGetAction { path: String::new(), port: 8080 }),
                    timeout_seconds: 30,
                }),
                ..Default::default()
            }],
        }),
        resources: Some(ateom_proto::Resources { cpu_milli: 1500, memory_bytes: 1 << 30, pids: 0 }),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(format!("{v1:?}"), format!("{r:?}"));

    // Without a uid, the name is the actor's id; zero sizes are the worker's defaults.
    let mut nameonly = run();
    nameonly.actor_uid.clear();
    nameonly.cpu_milli = 0;
    nameonly.memory_bytes = 0;
    let (r, _) = run_request(&nameonly).unwrap();
    assert_eq!(r.actor.actor_id.as_str(), "actor-1");
    assert_eq!(r.resources, core::Resources::default());
}

#[test]
fn malformed_fields_are_named_as_this_layout_names_them() {
    type Mutation = Box<dyn Fn(&mut pb::RunWorkloadRequest)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("atespace", Box::new(|r| r.atespace.clear())),
        ("atespace", Box::new(|r| r.atespace = "../x".into())),
        ("actor_uid", Box::new(|r| r.actor_uid = "a/b".into())),
        (
            "actor_uid",
            Box::new(|r| {
                r.actor_uid.clear();
                r.actor_name.clear();
            }),
        ),
        ("actor_name", Box::new(|r| r.actor_name = "-x".into())),
        ("actor_template_atespace", Box::new(|r| r.actor_template_atespace = "/usr/bin/runsc".into())),
        ("actor_template_name", Box::new(|r| r.actor_template_name.clear())),
        ("runsc_path", Box::new(|r| r.runsc_path = "runsc".into())),
        ("spec.containers", Box::new(|r| r.spec = None)),
        ("cpu_milli", Box::new(|r| r.cpu_milli = -1)),
        ("cpu_milli", Box::new(|r| r.cpu_milli = 5)),
        ("memory_bytes", Box::new(|r| r.memory_bytes = -1)),
        ("memory_bytes", Box::new(|r| r.memory_bytes = 1024)),
        (
            "runtime_asset_paths[\"\"]",
            Box::new(|r| _ = r.runtime_asset_paths.insert(String::new(), "/x".into())),
        ),
        (
            "spec.containers[0].readyz.http_get.port",
            Box::new(|r| {
                r.spec.as_mut().unwrap().containers[0]
                    .readyz
                    .as_mut()
                    .unwrap()
                    .http_get
                    .as_mut()
                    .unwrap()
                    .port = 0
            }),
        ),
        (
            "spec.containers[0].readyz.timeout_seconds",
            Box::new(|r| {
                r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().timeout_seconds = -1
            }),
        ),
        (
            "spec.containers[0].durable_dir_volume_mounts[0].mount_path",
            Box::new(|r| {
                r.spec.as_mut().unwrap().containers[0].durable_dir_volume_mounts =
                    vec![pb::DurableDirVolumeMount { volume_name: "data".into(), mount_path: "data".into() }]
            }),
        ),
        (
            "spec.containers[0].durable_dir_volume_mounts[0].volume_name",
            Box::new(|r| {
                r.spec.as_mut().unwrap().containers[0].durable_dir_volume_mounts =
                    vec![pb::DurableDirVolumeMount { volume_name: "../d".into(), mount_path: "/data".into() }]
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut r = run();
        mutate(&mut r);
        assert_eq!(invalid_field(run_request(&r)), field);
    }
}

#[test]
fn durable_dir_mounts_keep_their_volume_names() {
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].durable_dir_volume_mounts = vec![
        pb::DurableDirVolumeMount { volume_name: "workspace".into(), mount_path: "/data".into() },
        pb::DurableDirVolumeMount { volume_name: "cache".into(), mount_path: "/var/cache/app".into() },
    ];
    let (req, _) = run_request(&r).unwrap();
    let dirs: Vec<(&str, &str)> = req.spec.containers[0]
        .durable_dirs
        .iter()
        .map(|d| (d.volume.as_str(), d.mount_path.as_str()))
        .collect();
    assert_eq!(dirs, [("workspace", "/data"), ("cache", "/var/cache/app")]);
}

#[test]
fn hostile_volume_names_and_timeouts_are_refused_naming_the_field() {
    let at = "spec.containers[0].durable_dir_volume_mounts[0].volume_name";
    for bad in ["", ".", "..", "a/b", "../etc", "/abs", "x\0y", "line\nbreak"] {
        let mut r = run();
        r.spec.as_mut().unwrap().containers[0].durable_dir_volume_mounts =
            vec![pb::DurableDirVolumeMount { volume_name: bad.into(), mount_path: "/data".into() }];
        assert_eq!(invalid_field(run_request(&r)), at, "{bad:?}");
    }
    let long = "v".repeat(129);
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].durable_dir_volume_mounts =
        vec![pb::DurableDirVolumeMount { volume_name: long, mount_path: "/data".into() }];
    assert_eq!(invalid_field(run_request(&r)), at);
    // The same path twice in one container.
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].durable_dir_volume_mounts = vec![
        pb::DurableDirVolumeMount { volume_name: "a".into(), mount_path: "/data".into() },
        pb::DurableDirVolumeMount { volume_name: "b".into(), mount_path: "/data".into() },
    ];
    assert_eq!(invalid_field(run_request(&r)), "spec.containers[0].durable_dir_volume_mounts[1].mount_path");
    for bad in [-1, i32::MIN, 86_401, i32::MAX] {
        let mut r = run();
        r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().timeout_seconds = bad;
        assert_eq!(invalid_field(run_request(&r)), "spec.containers[0].readyz.timeout_seconds", "{bad}");
    }
    let (req, _) = run_request(&run()).unwrap();
    assert_eq!(req.spec.containers[0].readyz.as_ref().unwrap().timeout_seconds, Some(30));
}

#[test]
fn what_ateom_cannot_honour_is_unimplemented_and_named() {
    let mut r = run();
    r.egress_gateway = Some(pb::EgressGateway { address: "gateway:443".into() });
    assert_eq!(unimplemented_field(run_request(&r)), "egress_gateway");
    let mount = || pb::VolumeMount { volume_name: "v".into(), mount_path: "/v".into() };
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].csi_volume_mounts = vec![mount()];
    assert_eq!(unimplemented_field(run_request(&r)), "spec.containers[0].csi_volume_mounts");
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].image_volume_mounts =
        vec![pb::ImageVolumeMount { volume_name: "v".into(), mount_path: "/v".into() }];
    assert_eq!(unimplemented_field(run_request(&r)), "spec.containers[0].image_volume_mounts");

    let mut r = restore();
    r.scope = pb::SnapshotScope::DataOnGolden as i32;
    assert_eq!(invalid_field(restore_request(&r)), "golden_snapshot_uri", "required with DATA_ON_GOLDEN");
    r.golden_snapshot_uri = "gs://bucket/golden".into();
    let (req, _) = restore_request(&r).unwrap();
    let golden = req.golden.expect("a golden source");
    assert_eq!((golden.uri_prefix.as_str(), req.scope), ("gs://bucket/golden", ateom_core::Scope::Data));
    let namespaces: Vec<&str> = golden.namespaces.iter().map(|n| n.as_str()).collect();
    assert_eq!(namespaces, ["team-a"]);
    r.scope = pb::SnapshotScope::Full as i32;
    assert_eq!(invalid_field(restore_request(&r)), "golden_snapshot_uri", "only with DATA_ON_GOLDEN");
    for bad in [
        "http://169.254.169.254/golden",
        "file://relative/golden",
        "file:///var/golden/../../etc",
        "s3://",
        "s3://bucket/a\nb",
    ] {
        let mut r = restore();
        r.scope = pb::SnapshotScope::DataOnGolden as i32;
        r.golden_snapshot_uri = bad.into();
        assert_eq!(invalid_field(restore_request(&r)), "golden_snapshot_uri", "{bad:?}");
    }
    // DATA (the durable directories only, into a fresh start) maps onto ateom's DATA scope.
    let mut r = restore();
    r.scope = pb::SnapshotScope::Data as i32;
    assert_eq!(restore_request(&r).unwrap().0.scope, core::Scope::Data);
    let mut r = restore();
    r.egress_gateway = Some(pb::EgressGateway::default());
    assert_eq!(unimplemented_field(restore_request(&r)), "egress_gateway");
    let mut r = restore();
    r.scope = 7;
    assert_eq!(invalid_field(restore_request(&r)), "scope");
}

#[test]
fn snapshot_uri_is_the_object_store_prefix() {
    let (r, _) = restore_request(&restore()).unwrap();
    assert_eq!(r.uri_prefix.as_deref(), Some("gs://bucket/root/atespaces/team-a/actors/uid/snapshots/1"));
    assert_eq!(r.actor.key(), format!("team-a:template-1:{UID}"));
    let mut bad = restore();
    bad.snapshot_uri = "snapshots/1".into();
    assert_eq!(invalid_field(restore_request(&bad)), "snapshot_uri");
    let mut sized = restore();
    sized.cpu_milli = 500;
    assert_eq!(restore_request(&sized).unwrap().0.resources.cpu_milli, Some(500));

    let ck = |uri: &str, scope: pb::SnapshotScope| pb::CheckpointWorkloadRequest {
        atespace: "team-a".into(),
        actor_uid: UID.into(),
        actor_template_name: "template-1".into(),
        snapshot_uri: uri.into(),
        scope: scope as i32,
        ..Default::default()
    };
    let durable = checkpoint_request(&ck("file:///var/snapshots/1", pb::SnapshotScope::Full)).unwrap();
    assert_eq!(durable.destination, core::Destination::Durable);
    assert_eq!(durable.uri_prefix.as_deref(), Some("file:///var/snapshots/1"));
    let local = checkpoint_request(&ck("", pb::SnapshotScope::Unspecified)).unwrap();
    assert_eq!((local.destination, local.uri_prefix), (core::Destination::Local, None));
    assert_eq!(invalid_field(checkpoint_request(&ck("ftp://x/y", pb::SnapshotScope::Full))), "snapshot_uri");
    // DATA_ON_GOLDEN is a restore-only scope; DATA captures the durable directories.
    assert_eq!(invalid_field(checkpoint_request(&ck("", pb::SnapshotScope::DataOnGolden))), "scope");
    assert_eq!(checkpoint_request(&ck("", pb::SnapshotScope::Data)).unwrap().scope, core::Scope::Data);
}

#[test]
fn terminate_may_leave_the_template_out() {
    let t = terminate_request(&pb::TerminateWorkloadRequest {
        atespace: "team-a".into(),
        actor_uid: UID.into(),
        ..Default::default()
    })
    .unwrap();
    let actor = |ns: &str, tpl: &str, id: &str| ActorRef::parse(ns, tpl, id).unwrap();
    assert!(t.matches(&actor("team-a", "any", UID)));
    assert!(!t.matches(&actor("team-b", "any", UID)));
    assert!(!t.matches(&actor("team-a", "any", "other")));
    let named = terminate_request(&pb::TerminateWorkloadRequest {
        atespace: "team-a".into(),
        actor_uid: UID.into(),
        actor_template_name: "tpl".into(),
        ..Default::default()
    })
    .unwrap();
    assert!(named.matches(&actor("team-a", "tpl", UID)) && !named.matches(&actor("team-a", "other", UID)));
    let empty = terminate_request(&pb::TerminateWorkloadRequest::default());
    assert_eq!(invalid_field(empty), "atespace");
}

#[test]
fn a_sample_echoes_the_actor_and_says_whether_anything_was_measured() {
    let (_, identity) = run_request(&run()).unwrap();
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2);
    let stats = SandboxStats { memory_bytes: Some(64 << 20), cpu_ns: Some(3_000_000), pids: Some(4) };
    let s = sample(&identity, sandbox_class("gvisor"), &stats, at);
    assert_eq!(
        (s.atespace.as_str(), s.actor_name.as_str(), s.actor_uid.as_str()),
        ("team-a", "actor-1", UID)
    );
    assert_eq!(s.actor_template_atespace, "team-a");
    assert_eq!(s.source, pb::StatsSource::Cgroup as i32);
    assert_eq!(s.sandbox_class, pb::SandboxClass::Gvisor as i32);
    assert_eq!((s.memory_current_bytes, s.cpu_usage_usec, s.pids), (64 << 20, 3000, 4));
    assert_eq!(s.observed_at_unix_nano, 2_000_000_000);
    let none = sample(&identity, sandbox_class("qemu"), &SandboxStats::default(), at);
    assert_eq!(none.source, pb::StatsSource::Unspecified as i32);
    assert_eq!(none.sandbox_class, pb::SandboxClass::Microvm as i32);
    let fallback = Identity::fallback(&ActorRef::parse("team-a", "template-1", UID).unwrap());
    assert_eq!((fallback.atespace.as_str(), fallback.actor_uid.as_str()), ("team-a", UID));
}

/// The v2 response messages are the default layout's, field for field: a fully populated
/// answer survives the re-read unchanged (prost encodes fields in number order, so equal
/// bytes mean nothing was dropped or reinterpreted).
#[test]
fn v2_responses_carry_every_field_of_the_default_layouts() {
    use ateom_proto as v1;
    fn same<A: Message + std::fmt::Debug, B: Message + Default>(a: &A) {
        let b: B = crate::v2::transcode(a).unwrap();
        assert_eq!(a.encode_to_vec(), b.encode_to_vec(), "{a:?}");
    }
    let host = v1::HostFingerprint {
        cpu_vendor: "v".into(),
        cpu_model: "m".into(),
        cpu_flags_digest: "d".into(),
        host_kernel: "k".into(),
        host_id: "h".into(),
    };
    let manifest = v1::SnapshotManifest {
        snapshot_id: "s".into(),
        artifacts: vec![v1::SnapshotArtifact { name: "a".into(), size: 1, sha256: "x".into() }],
        backend: "gvisor".into(),
        runtime_version: "r".into(),
        kernel_id: "k".into(),
        cpu_template: "t".into(),
        cpu_model: "m".into(),
        image_digests: [("c".to_owned(), "sha256:1".to_owned())].into(),
        provenance: [("p".to_owned(), "q".to_owned())].into(),
        format_version: 3,
        host: Some(host),
        actor: "a/b/c".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
    };
    same::<_, pb::CheckpointWorkloadResponse>(&v1::CheckpointWorkloadResponse {
        snapshot_files: vec!["/f".into()],
        manifest: Some(manifest),
        location: "l".into(),
        destination: v1::SnapshotDestination::Durable as i32,
        checkpoint_ms: 1,
        stored_bytes: 2,
        push_ms: 3,
    });
    same::<_, pb::RunWorkloadResponse>(&v1::RunWorkloadResponse {
        ready: true,
        workload_address: "169.254.0.2:8080".into(),
        host_endpoint: "127.0.0.1:1".into(),
        console: "unix:///c".into(),
        ready_ms: 5,
    });
    same::<_, pb::RestoreWorkloadResponse>(&v1::RestoreWorkloadResponse {
        ready: true,
        workload_address: "w".into(),
        host_endpoint: "h".into(),
        console: "c".into(),
        ready_ms: 1,
        snapshot_id: "s".into(),
        pulled_bytes: 2,
        pull_ms: 3,
    });
}
