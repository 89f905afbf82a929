//! The CRDs and every object the operator renders, for every backend and every refused
//! combination, decoded strictly (unknown fields refused) into the k8s-openapi types and
//! written back identically. No API server is reachable on the development machines (none is
//! in a package registry they reach): these prove the objects are well-formed Kubernetes
//! objects of the shape intended, not that a cluster runs them.

use std::collections::BTreeMap;

use ate_core::resource::{KubernetesPool, PoolSpec};
use ate_kube::crd::{ActorTemplate, WorkerPool, WorkerPoolSpec, crds, crds_yaml};
use ate_kube::shape::{Object, OperatorConfig, render};
use ate_kube::strict;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../../../deploy/examples/pools.yaml");

fn pool(name: &str, backend: &str, k: serde_json::Value) -> WorkerPool {
    let spec: KubernetesPool = serde_json::from_value(k).expect("kubernetes block");
    let mut p = WorkerPool::new(
        name,
        WorkerPoolSpec {
            pool: PoolSpec { backend: backend.into(), tls: None, workers: vec![], kubernetes: Some(spec) },
        },
    );
    p.metadata.namespace = Some("ate".into());
    p
}

/// Strictly round-trips an object through its own k8s-openapi type; returns its JSON.
fn round_trip(o: &Object) -> Value {
    let v = match o {
        Object::Deployment(d) => strict::round_trip(d.as_ref()),
        Object::DaemonSet(d) => strict::round_trip(d.as_ref()),
        Object::Service(s) => strict::round_trip(s.as_ref()),
        Object::PodDisruptionBudget(p) => strict::round_trip(p.as_ref()),
    }
    .unwrap_or_else(|e| panic!("{} {}: {e}", o.kind(), o.name()));
    // And the untagged enum writes exactly the typed object (what apply and dry-run send).
    assert_eq!(serde_json::to_value(o).unwrap(), v);
    assert_eq!(v["kind"], o.kind());
    v
}

fn pod_of(o: &Object) -> PodTemplateSpec {
    match o {
        Object::Deployment(d) => d.spec.clone().unwrap().template,
        Object::DaemonSet(d) => d.spec.clone().unwrap().template,
        _ => panic!("{} has no pods", o.kind()),
    }
}

fn render_ok(p: &WorkerPool) -> Vec<Object> {
    let objects = render(p, &OperatorConfig::default()).unwrap_or_else(|r| panic!("refused: {r}"));
    for o in &objects {
        round_trip(o);
    }
    objects
}

#[test]
fn crds_round_trip_strictly_and_have_status_subresources() {
    let all = crds();
    assert_eq!(all.len(), 2);
    for crd in &all {
        let v = strict::round_trip(crd).unwrap();
        assert_eq!(v["spec"]["group"], "ate.dev");
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["name"], "v1");
        assert_eq!(version["subresources"]["status"], json!({}), "{}", v["metadata"]["name"]);
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status["conditions"]["items"]["properties"]["reason"].is_object(), "conditions: {status}");
    }
    // `ate crds` prints exactly these, and the text decodes strictly.
    let text = crds_yaml().unwrap();
    let docs: Vec<&str> = text.split("---\n").filter(|d| !d.trim().is_empty()).collect();
    assert_eq!(docs.len(), 2);
    for (doc, crd) in docs.iter().zip(&all) {
        let back: CustomResourceDefinition = strict::from_yaml(doc).unwrap();
        assert_eq!(&back, crd);
    }
    // A misspelt field is refused, naming it (k8s-openapi alone would skip it).
    let mut v = serde_json::to_value(&all[0]).unwrap();
    v["spec"]["scop"] = json!("Namespaced");
    let err = strict::from_value::<CustomResourceDefinition>(v).unwrap_err();
    assert!(err.to_string().contains("spec.scop"), "{err}");
}

/// Every key in `doc` is allowed by `schema` (an openAPIV3Schema): what the API server would
/// otherwise prune silently.
fn check_against_schema(doc: &Value, schema: &Value, at: &str) {
    if schema.get("x-kubernetes-int-or-string") == Some(&json!(true)) {
        assert!(doc.is_string() || doc.is_number(), "{at}: {doc} is not an int or string");
        return;
    }
    match doc {
        Value::Object(m) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            for (k, v) in m {
                let sub = props.and_then(|p| p.get(k)).or(additional);
                let sub = sub.unwrap_or_else(|| panic!("{at}.{k} is not in the CRD's schema"));
                check_against_schema(v, sub, &format!("{at}.{k}"));
            }
            for r in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                assert!(m.contains_key(r.as_str().unwrap()), "{at}: required {r} missing");
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                check_against_schema(v, &schema["items"], &format!("{at}[{i}]"));
            }
        }
        Value::String(_) => assert!(
            schema["type"] == "string" || schema.get("enum").is_some(),
            "{at}: a string where the schema says {schema}"
        ),
        Value::Number(_) => {
            assert!(schema["type"] == "integer" || schema["type"] == "number", "{at}: schema {schema}")
        }
        Value::Bool(_) => assert_eq!(schema["type"], "boolean", "{at}"),
        Value::Null => assert_eq!(schema["nullable"], true, "{at}"),
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        assert!(e.contains(doc), "{at}: {doc} not in {e:?}");
    }
}

#[test]
fn one_yaml_works_for_ate_apply_and_for_kubectl() {
    // `ate apply` reads it ...
    let resources = ate_core::parse_resources(EXAMPLE).expect("ate apply parses the example");
    assert_eq!(resources.len(), 4);
    let crds = crds();
    let schema_of = |kind: &str| {
        let c = crds.iter().find(|c| c.spec.names.kind == kind).unwrap();
        serde_json::to_value(&c.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap()
    };
    // ... and so does kube, strictly, into the same specs, and every field is in the CRD's
    // schema (nothing the API server would prune).
    for (doc, r) in EXAMPLE.split("\n---\n").zip(&resources) {
        let raw: Value = serde_yaml::from_str(doc).unwrap();
        assert_eq!(raw["apiVersion"], "ate.dev/v1");
        check_against_schema(&raw["spec"], &schema_of(r.kind())["properties"]["spec"], "spec");
        match r {
            ate_core::Resource::WorkerPool { spec, metadata, .. } => {
                let wp: WorkerPool = strict::resource_from_yaml(doc).unwrap();
                assert_eq!(&wp.spec.pool, spec);
                assert_eq!(wp.metadata.name.as_deref(), Some(metadata.name.as_str()));
            }
            ate_core::Resource::ActorTemplate { spec, .. } => {
                let at: ActorTemplate = strict::resource_from_yaml(doc).unwrap();
                assert_eq!(&at.spec.template, spec);
            }
            ate_core::Resource::Actor { .. } => unreachable!(),
        }
    }
    // A misspelt field is refused by both readers.
    let bad =
        EXAMPLE.replacen("tlsSecret: ateom-worker-tls", "tlsSecret: ateom-worker-tls\n    replica: 2", 1);
    assert!(ate_core::parse_resources(&bad).unwrap_err().to_string().contains("spec.kubernetes.replica"));
    let doc = bad.split("\n---\n").next().unwrap();
    assert!(strict::resource_from_yaml::<WorkerPool>(doc).unwrap_err().to_string().contains("replica"));
}

#[test]
fn gvisor_pods_are_privileged_with_runsc_and_state_on_the_node() {
    let p = pool(
        "gv",
        "gvisor",
        json!({"replicas": 3, "tlsSecret": "w-tls", "resources": {"cpu": "1500m", "memory": "3Gi"}, "runsc": "/opt/runsc"}),
    );
    let objects = render_ok(&p);
    let kinds: Vec<&str> = objects.iter().map(Object::kind).collect();
    assert_eq!(kinds, ["Deployment", "Service", "PodDisruptionBudget"]);
    let Object::Deployment(d) = &objects[0] else { panic!() };
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(3));
    let pod = pod_of(&objects[0]).spec.unwrap();
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap().join(" ");
    assert!(args.contains("--backend gvisor") && args.contains("--runsc /opt/runsc"), "{args}");
    assert!(
        args.contains("--listen-tcp 0.0.0.0:7443") && args.contains("--tls-ca /etc/ateom/tls/ca.crt"),
        "{args}"
    );
    assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
    let limits = c.resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits["cpu"].0, "1500m");
    assert_eq!(limits["memory"].0, "3Gi");
    assert_eq!(c.resources.as_ref().unwrap().requests.as_ref(), Some(&limits));
    let vols: BTreeMap<String, Value> = pod
        .volumes
        .unwrap()
        .into_iter()
        .map(|v| (v.name.clone(), serde_json::to_value(v).unwrap()))
        .collect();
    assert_eq!(vols["state"]["hostPath"]["path"], "/var/lib/ateom/ate/gv");
    assert_eq!(vols["tls"]["secret"]["secretName"], "w-tls");
    // The health check is ateom answering GetCapabilities on its socket.
    let probe = c.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.clone().unwrap();
    assert_eq!(probe, ["ateom", "caps", "--socket", "/run/ateom/ateom.sock"]);
    assert!(c.liveness_probe.is_some() && c.startup_probe.is_some());
    // No devices for gVisor, no microVM node label.
    assert!(!limits.keys().any(|k| k.contains("kvm") || k.contains("tun")));
    assert_eq!(pod.node_selector.unwrap(), BTreeMap::from([("kubernetes.io/os".into(), "linux".into())]));
    let Object::Service(s) = &objects[1] else { panic!() };
    assert_eq!(s.spec.as_ref().unwrap().cluster_ip.as_deref(), Some("None"), "headless: per-pod DNS names");
    let Object::PodDisruptionBudget(pdb) = &objects[2] else { panic!() };
    assert_eq!(serde_json::to_value(&pdb.spec.as_ref().unwrap().max_unavailable).unwrap(), json!(1));
}

#[test]
fn firecracker_pods_get_kvm_tun_jailer_capabilities_hugepages_and_the_probe_label() {
    let p = pool(
        "fc",
        "firecracker",
        json!({"workload": "DaemonSet", "tlsSecret": "w-tls", "resources": {"cpu": 4, "memory": "8Gi"}, "hugepages": "1Gi", "maxUnavailable": 2}),
    );
    let objects = render_ok(&p);
    assert_eq!(
        objects.iter().map(Object::kind).collect::<Vec<_>>(),
        ["DaemonSet", "Service", "PodDisruptionBudget"]
    );
    let pod = pod_of(&objects[0]).spec.unwrap();
    let c = &pod.containers[0];
    let limits = c.resources.as_ref().unwrap().limits.clone().unwrap();
    assert_eq!(limits["devices.kubevirt.io/kvm"].0, "1");
    assert_eq!(limits["devices.kubevirt.io/tun"].0, "1");
    assert_eq!(limits["hugepages-2Mi"].0, "1Gi");
    assert_eq!(limits["cpu"].0, "4");
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false), "device plugin: no privileged container");
    let caps = sc.capabilities.as_ref().unwrap();
    for cap in ["SYS_ADMIN", "SYS_CHROOT", "SETUID", "SETGID", "MKNOD", "NET_ADMIN"] {
        assert!(caps.add.as_ref().unwrap().iter().any(|c| c == cap), "{cap}");
    }
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));
    assert_eq!(pod.node_selector.as_ref().unwrap()["ate.dev/firecracker"], "true");
    let hp = pod.volumes.as_ref().unwrap().iter().find(|v| v.name == "hugepages").unwrap();
    assert_eq!(hp.empty_dir.as_ref().unwrap().medium.as_deref(), Some("HugePages-2Mi"));
    let Object::PodDisruptionBudget(pdb) = &objects[2] else { panic!() };
    assert_eq!(serde_json::to_value(&pdb.spec.as_ref().unwrap().max_unavailable).unwrap(), json!(2));

    // Without a device plugin: the host's device nodes in a privileged container.
    let p = pool("fc", "firecracker", json!({"tlsSecret": "w-tls", "deviceAccess": "privileged"}));
    let objects = render_ok(&p);
    let pod = pod_of(&objects[0]).spec.unwrap();
    assert_eq!(pod.containers[0].security_context.as_ref().unwrap().privileged, Some(true));
    let paths: Vec<String> = pod
        .volumes
        .unwrap()
        .iter()
        .filter_map(|v| {
            v.host_path.as_ref().map(|h| format!("{}:{}", h.path, h.type_.clone().unwrap_or_default()))
        })
        .collect();
    assert!(
        paths.contains(&"/dev/kvm:CharDevice".into()) && paths.contains(&"/dev/net/tun:CharDevice".into()),
        "{paths:?}"
    );
    assert!(pod.containers[0].resources.is_none(), "no device plugin resources, no limits given");
}

#[test]
fn qemu_uses_kvm_where_present_and_tcg_elsewhere() {
    // auto + DaemonSet: two halves, split by the probe's node label.
    let objects = render_ok(&pool("q", "qemu", json!({"workload": "DaemonSet", "tlsSecret": "t"})));
    assert_eq!(
        objects.iter().map(|o| format!("{}/{}", o.kind(), o.name())).collect::<Vec<_>>(),
        ["DaemonSet/ateom-q-kvm", "DaemonSet/ateom-q-tcg", "Service/ateom-q", "PodDisruptionBudget/ateom-q"]
    );
    let kvm = pod_of(&objects[0]).spec.unwrap();
    let tcg = pod_of(&objects[1]).spec.unwrap();
    assert_eq!(kvm.node_selector.as_ref().unwrap()["ate.dev/kvm"], "true");
    let args = |p: &k8s_openapi::api::core::v1::PodSpec| p.containers[0].args.clone().unwrap().join(" ");
    assert!(args(&kvm).contains("--accel auto"), "ateom itself falls back to TCG on kvm-pvm");
    assert!(args(&tcg).contains("--accel tcg"));
    let kvm_limits = kvm.containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
    assert!(kvm_limits.contains_key("devices.kubevirt.io/kvm"));
    let tcg_limits = tcg.containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
    assert!(
        !tcg_limits.contains_key("devices.kubevirt.io/kvm")
            && tcg_limits.contains_key("devices.kubevirt.io/tun")
    );
    let na = serde_json::to_value(tcg.affinity.unwrap().node_affinity).unwrap();
    assert_eq!(
        na["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]["matchExpressions"][0],
        json!({"key": "ate.dev/kvm", "operator": "NotIn", "values": ["true"]})
    );
    // The halves' selectors do not overlap; the Service and PDB cover both.
    let sel = |o: &Object| match o {
        Object::DaemonSet(d) => d.spec.clone().unwrap().selector.match_labels.unwrap(),
        _ => unreachable!(),
    };
    assert_ne!(sel(&objects[0]), sel(&objects[1]));
    assert_eq!(sel(&objects[0])["ate.dev/accel"], "kvm");
    // Explicit accelerators: one workload of that shape.
    for (accel, kvm_dev) in [("kvm", true), ("tcg", false)] {
        let objects = render_ok(&pool("q", "qemu", json!({"accel": accel, "replicas": 2, "tlsSecret": "t"})));
        let pod = pod_of(&objects[0]).spec.unwrap();
        assert!(args(&pod).contains(&format!("--accel {accel}")));
        let limits = pod.containers[0].resources.as_ref().unwrap().limits.clone().unwrap();
        assert_eq!(limits.contains_key("devices.kubevirt.io/kvm"), kvm_dev, "{accel}");
    }
}

#[test]
fn unsupported_combinations_are_refused_with_a_reason() {
    let cases: &[(&str, &str, Value, &str)] = &[
        ("p", "docker", json!({"tlsSecret": "t"}), "UnsupportedBackend"),
        ("p", "gvisor", json!({"tlsSecret": "t", "hugepages": "1Gi"}), "HugepagesUnsupported"),
        ("p", "qemu", json!({"tlsSecret": "t", "accel": "tcg", "hugepages": "1Gi"}), "HugepagesUnsupported"),
        ("p", "firecracker", json!({"tlsSecret": "t", "hugepages": "1Gi"}), "HugepagesWithoutResources"),
        (
            "p",
            "firecracker",
            json!({"tlsSecret": "t", "hugepages": "3Mi", "resources": {"cpu": 1}}),
            "InvalidHugepages",
        ),
        ("p", "qemu", json!({"tlsSecret": "t"}), "AutoAccelNeedsDaemonSet"),
        ("p", "qemu", json!({"tlsSecret": "t", "accel": "hvf"}), "InvalidAccel"),
        ("p", "gvisor", json!({"tlsSecret": "t", "accel": "kvm"}), "AccelUnsupported"),
        ("p", "firecracker", json!({"tlsSecret": "t", "runsc": "/usr/bin/runsc"}), "RunscUnsupported"),
        ("p", "gvisor", json!({"tlsSecret": "t", "deviceAccess": "privileged"}), "DeviceAccessUnsupported"),
        (
            "p",
            "gvisor",
            json!({"tlsSecret": "t", "workload": "DaemonSet", "replicas": 2}),
            "ReplicasWithDaemonSet",
        ),
        ("p", "gvisor", json!({"tlsSecret": "t", "replicas": 0}), "NoReplicas"),
        ("p", "gvisor", json!({"tlsSecret": "t", "resources": {"pids": 100}}), "UnsupportedResource"),
        ("p", "gvisor", json!({"tlsSecret": "t", "resources": {"memory": "lots"}}), "InvalidResources"),
        ("p", "gvisor", json!({"tlsSecret": "../x"}), "InvalidTlsSecret"),
        ("Pool_1", "gvisor", json!({"tlsSecret": "t"}), "InvalidName"),
        (
            "a-very-long-pool-name-that-leaves-no-room-for-suffixes",
            "gvisor",
            json!({"tlsSecret": "t"}),
            "InvalidName",
        ),
    ];
    for (name, backend, k, reason) in cases {
        let p = pool(name, backend, k.clone());
        let r = render(&p, &OperatorConfig::default()).expect_err(reason);
        assert_eq!(r.reason, *reason, "{backend} {k}: {r}");
        assert!(!r.message.is_empty());
        // The refused pool, with the status the operator writes, is a valid object too.
        let mut p = p;
        p.status = Some(ate_kube::crd::WorkerPoolStatus {
            conditions: vec![ate_kube::crd::condition(
                &[],
                "Supported",
                false,
                r.reason,
                r.message.clone(),
                Some(1),
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
            )],
            observed_generation: Some(1),
            ready_workers: None,
            objects: vec![],
        });
        strict::resource_round_trip(&p).unwrap();
    }
    // Static workers and no kubernetes block: not the operator's.
    let mut p = pool("p", "gvisor", json!({"tlsSecret": "t"}));
    p.spec.pool.kubernetes = None;
    assert_eq!(render(&p, &OperatorConfig::default()).unwrap_err().reason, "NoKubernetesSpec");
    let mut p = pool("p", "gvisor", json!({"tlsSecret": "t"}));
    p.spec.pool.workers.push(ate_core::resource::WorkerSpec {
        name: "w1".into(),
        socket: Some("/run/w1.sock".into()),
        address: None,
        forward: None,
        tls: None,
    });
    assert_eq!(render(&p, &OperatorConfig::default()).unwrap_err().reason, "StaticWorkers");
}

#[test]
fn the_dry_run_prints_the_example_pools_objects() {
    let out = ate_kube::operator::dry_run(EXAMPLE, &OperatorConfig::default()).unwrap();
    let docs: Vec<Value> = out
        .split("---\n")
        .filter(|d| d.lines().any(|l| !l.starts_with('#') && !l.trim().is_empty()))
        .map(|d| serde_yaml::from_str(d).unwrap())
        .collect();
    let names: Vec<String> = docs
        .iter()
        .map(|d| format!("{}/{}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect();
    assert_eq!(
        names,
        [
            "Deployment/ateom-gvisor",
            "Service/ateom-gvisor",
            "PodDisruptionBudget/ateom-gvisor",
            "DaemonSet/ateom-firecracker",
            "Service/ateom-firecracker",
            "PodDisruptionBudget/ateom-firecracker",
            "DaemonSet/ateom-qemu-kvm",
            "DaemonSet/ateom-qemu-tcg",
            "Service/ateom-qemu",
            "PodDisruptionBudget/ateom-qemu",
        ]
    );
    // Each printed document decodes strictly as its kind.
    for d in docs {
        match d["kind"].as_str().unwrap() {
            "Deployment" => drop(strict::from_value::<Deployment>(d).unwrap()),
            "DaemonSet" => drop(strict::from_value::<DaemonSet>(d).unwrap()),
            "Service" => drop(strict::from_value::<Service>(d).unwrap()),
            "PodDisruptionBudget" => drop(strict::from_value::<PodDisruptionBudget>(d).unwrap()),
            k => panic!("{k}"),
        }
    }
    assert!(out.contains("# ActorTemplate counter: nothing to create"));
    let refused = EXAMPLE.replace("accel: auto", "accel: auto\n    hugepages: 1Gi");
    let out = ate_kube::operator::dry_run(&refused, &OperatorConfig::default()).unwrap();
    assert!(out.contains("# WorkerPool ate/qemu: refused (HugepagesUnsupported)"), "{out}");
}
