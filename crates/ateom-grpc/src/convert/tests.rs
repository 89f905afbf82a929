use super::*;

fn container(name: &str) -> pb::Container {
    pb::Container {
        name: name.into(),
        readyz: Some(pb::Readyz {
            http_get: Some(pb::HttpGetAction { path: String::new(), port: 8080 }),
            timeout_seconds: 0,
        }),
        image: "oci-layout:/images/counter:latest".into(),
        ..Default::default()
    }
}

fn run() -> pb::RunWorkloadRequest {
    pb::RunWorkloadRequest {
        actor_template_namespace: "ns".into(),
        actor_template_name: "tpl".into(),
        actor_id: "a1".into(),
        spec: Some(pb::WorkloadSpec { containers: vec![container("main")] }),
        ..Default::default()
    }
}

fn field_of(r: pb::RunWorkloadRequest) -> String {
    run_request(&r).unwrap_err().field
}

#[test]
fn a_good_run_request_converts() {
    let r = run_request(&run()).unwrap();
    assert_eq!(r.actor.key(), "ns:tpl:a1");
    let (c, probe) = r.spec.service().unwrap();
    assert_eq!(c.name.as_str(), "main");
    assert_eq!(probe.path, "/readyz");
    assert!(r.runtime.is_none());
}

#[test]
fn every_malformed_field_is_named() {
    let mut r = run();
    r.actor_id = "../../etc".into();
    assert_eq!(field_of(r), "actor_id");

    let mut r = run();
    r.actor_template_namespace = String::new();
    assert_eq!(field_of(r), "actor_template_namespace");

    let mut r = run();
    r.spec = None;
    assert_eq!(field_of(r), "spec.containers");

    let mut r = run();
    r.spec.as_mut().unwrap().containers.push(container("main"));
    assert_eq!(field_of(r), "spec.containers[1].name");

    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().http_get.as_mut().unwrap().port = 0;
    assert_eq!(field_of(r), "spec.containers[0].readyz.http_get.port");

    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].readyz = Some(pb::Readyz { http_get: None, timeout_seconds: 0 });
    assert_eq!(field_of(r), "spec.containers[0].readyz.http_get");

    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].image = "ubuntu:latest".into();
    assert_eq!(field_of(r), "spec.containers[0].image");

    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].durable_dir_volumes = vec!["data/../../x".into()];
    assert_eq!(field_of(r), "spec.containers[0].durable_dir_volumes[0]");

    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].env.insert("A=B".into(), "x".into());
    assert_eq!(field_of(r), "spec.containers[0].env[\"A=B\"]");

    let mut r = run();
    r.runsc_path = "runsc".into();
    assert_eq!(field_of(r), "runsc_path");

    let mut r = run();
    r.runtime = Some(pb::run_workload_request::Runtime::Gvisor(pb::GvisorConfig {
        runsc_path: String::new(),
        platform: "bogus".into(),
    }));
    assert_eq!(field_of(r), "gvisor.platform");

    let mut r = run();
    r.runtime = Some(pb::run_workload_request::Runtime::Microvm(pb::MicroVmConfig {
        vcpus: 99,
        ..Default::default()
    }));
    assert_eq!(field_of(r), "microvm.vcpus");

    let mut r = run();
    r.runtime = Some(pb::run_workload_request::Runtime::Microvm(pb::MicroVmConfig {
        network: Some(pb::TapNetwork {
            tap_name: "tap0".into(),
            guest_mac: "02:00:00:00:00:01".into(),
            guest_ip: "10.0.0.2".into(),
            host_ip: "169.254.0.1".into(),
            prefix_len: 30,
        }),
        ..Default::default()
    }));
    assert_eq!(field_of(r), "microvm.network.guest_ip");
}

#[test]
fn legacy_runsc_path_becomes_gvisor_config() {
    let mut r = run();
    r.runsc_path = "/usr/bin/runsc".into();
    match run_request(&r).unwrap().runtime {
        Some(RuntimeConfig::Gvisor(g)) => assert_eq!(g.runsc_path.unwrap(), PathBuf::from("/usr/bin/runsc")),
        other => panic!("{other:?}"),
    }
}

fn checkpoint() -> pb::CheckpointWorkloadRequest {
    pb::CheckpointWorkloadRequest {
        actor_template_namespace: "ns".into(),
        actor_template_name: "tpl".into(),
        actor_id: "a1".into(),
        ..Default::default()
    }
}

#[test]
fn checkpoint_destination_defaults_follow_the_prefix() {
    let r = checkpoint_request(&checkpoint()).unwrap();
    assert_eq!(r.destination, Destination::Local);
    assert!(r.uri_prefix.is_none());

    // Substrate's fields alone (a prefix, nothing of ateom's): the node agent's convention,
    // the snapshot stays local for the node agent to ship.
    let mut c = checkpoint();
    c.snapshot_uri_prefix = "file:///tmp/bucket/".into();
    let r = checkpoint_request(&c).unwrap();
    assert!(r.node_agent);
    assert_eq!((r.destination, r.uri_prefix), (Destination::Local, None));

    // Any of ateom's fields (here an explicit id): the prefix makes it DURABLE.
    c.snapshot_id = "s-1".into();
    let r = checkpoint_request(&c).unwrap();
    assert!(!r.node_agent);
    assert_eq!(r.destination, Destination::Durable);
    assert_eq!(r.uri_prefix.as_deref(), Some("file:///tmp/bucket"));

    c.destination = pb::SnapshotDestination::Local as i32;
    let r = checkpoint_request(&c).unwrap();
    assert_eq!(r.destination, Destination::Local);

    let mut c = checkpoint();
    c.destination = pb::SnapshotDestination::Durable as i32;
    assert_eq!(checkpoint_request(&c).unwrap_err().field, "snapshot_uri_prefix");
    c.destination = 7;
    assert_eq!(checkpoint_request(&c).unwrap_err().field, "destination");
    let mut c = checkpoint();
    c.scope = 9;
    assert_eq!(checkpoint_request(&c).unwrap_err().field, "scope");
    c.snapshot_uri_prefix = "http://example".into();
    c.scope = 0;
    assert_eq!(checkpoint_request(&c).unwrap_err().field, "snapshot_uri_prefix");
}

#[test]
fn restore_accepts_an_empty_spec_and_checks_the_snapshot_id() {
    let r = pb::RestoreWorkloadRequest {
        actor_template_namespace: "ns".into(),
        actor_template_name: "tpl".into(),
        actor_id: "a1".into(),
        ..Default::default()
    };
    let ok = restore_request(&r).unwrap();
    assert!(ok.spec.containers.is_empty());
    assert!(ok.snapshot_id.is_none());
    let mut bad = r.clone();
    bad.snapshot_id = "../x".into();
    assert_eq!(restore_request(&bad).unwrap_err().field, "snapshot_id");
}

#[test]
fn durable_dirs_are_named_after_their_paths_and_never_collide() {
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].durable_dir_volumes = vec!["/data".into(), "/var/lib/app".into()];
    let req = run_request(&r).unwrap();
    let dirs: Vec<(&str, &str)> = req.spec.containers[0]
        .durable_dirs
        .iter()
        .map(|d| (d.volume.as_str(), d.mount_path.as_str()))
        .collect();
    assert_eq!(dirs, [("data", "/data"), ("var-lib-app", "/var/lib/app")]);
    // Two paths that would share one host directory.
    r.spec.as_mut().unwrap().containers[0].durable_dir_volumes = vec!["/a-b".into(), "/a/b".into()];
    assert_eq!(field_of(r.clone()), "spec.containers[0].durable_dir_volumes");
    for bad in ["/", "/.", "relative", "/x/../y", "/a\nb"] {
        r.spec.as_mut().unwrap().containers[0].durable_dir_volumes = vec![bad.into()];
        assert_eq!(field_of(r.clone()), "spec.containers[0].durable_dir_volumes[0]", "{bad:?}");
    }
    // Readiness timeouts.
    let mut r = run();
    r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().timeout_seconds = 5;
    assert_eq!(run_request(&r).unwrap().spec.containers[0].readyz.as_ref().unwrap().timeout_seconds, Some(5));
    r.spec.as_mut().unwrap().containers[0].readyz.as_mut().unwrap().timeout_seconds = -5;
    assert_eq!(field_of(r), "spec.containers[0].readyz.timeout_seconds");
}
