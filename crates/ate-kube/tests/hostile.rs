//! Hostile input to what reads cluster-controlled or user-written data: the operator's dry run
//! (a YAML file), the strict decoders (manifests), pod discovery (pod labels and addresses,
//! which anyone who can create pods in the namespace controls) and the Lease decision. Each
//! must answer with an error or a refusal, never a panic. (Part of scripts/security-suite.sh.)

use ate_kube::crd::WorkerPool;
use ate_kube::discovery::{DiscoveryConfig, workers_from_pods};
use ate_kube::shape::{OperatorConfig, render};
use ate_kube::strict;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

#[test]
fn hostile_files_for_the_dry_run_are_errors() {
    let cfg = OperatorConfig::default();
    let deep = format!("kind: WorkerPool\nmetadata: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let mut laughs = String::from("a0: &a0 [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
    for i in 1..10 {
        let p = i - 1;
        laughs.push_str(&format!("a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"));
    }
    for bad in [
        deep.as_str(),
        laughs.as_str(),
        "kind: WorkerPool\nmetadata: { name: p }\nspec: { kubernetes: { tlsSecret: \"a\\0b\" } }\n",
        "kind: WorkerPool\nmetadata: { name: \"../p\" }\nspec: { kubernetes: { tlsSecret: t } }\n",
        "kind: WorkerPool\nmetadata: { name: p }\nspec: { kubernetes: { tlsSecret: t, replicas: -1 } }\n",
        "kind: WorkerPool\nmetadata: { name: p }\nspec: { kubernetes: { tlsSecret: t, replicas: 99999999999 } }\n",
        "kind: WorkerPool\nmetadata: { name: p }\nspec: { kubernetes: { tlsSecret: t, nodeSelector: { \"a\\nb\": c } } }\n",
        "kind: WorkerPool\nmetadata: { name: p }\nspec: { kubernetes: { tlsSecret: t, image: \"x\\u0007\" } }\n",
        "\u{0}\u{1}garbage: [",
    ] {
        assert!(ate_kube::operator::dry_run(bad, &cfg).is_err(), "{:?}", &bad[..bad.len().min(80)]);
    }
    // Accepted by `ate apply` but beyond what the operator can name: refused, not a panic.
    let long = format!(
        "kind: WorkerPool\nmetadata: {{ name: {} }}\nspec: {{ backend: gvisor, kubernetes: {{ tlsSecret: t, replicas: 4294967295, maxUnavailable: 4294967295 }} }}\n",
        "p".repeat(63)
    );
    let out = ate_kube::operator::dry_run(&long, &cfg).unwrap();
    assert!(out.contains("refused (InvalidName)"), "{out}");
    // Huge numbers saturate instead of wrapping into negative replicas.
    let ok = long.replace(&"p".repeat(63), "p");
    let out = ate_kube::operator::dry_run(&ok, &cfg).unwrap();
    assert!(out.contains("replicas: 2147483647") && out.contains("maxUnavailable: 2147483647"), "{out}");
}

#[test]
fn hostile_objects_are_decode_errors() {
    for v in [
        json!(null),
        json!([1, 2]),
        json!({"apiVersion": "ate.dev/v1", "kind": "WorkerPool"}),
        json!({"apiVersion": "ate.dev/v2", "kind": "WorkerPool", "metadata": {"name": "p"}, "spec": {}}),
        json!({"apiVersion": "ate.dev/v1", "kind": "ActorTemplate", "metadata": {"name": "p"}, "spec": {}}),
        json!({"apiVersion": "ate.dev/v1", "kind": "WorkerPool", "metadata": {"name": "p"}, "spec": {"kubernetes": {"tlsSecret": 5}}}),
        json!({"apiVersion": "ate.dev/v1", "kind": "WorkerPool", "metadata": {"name": "p"}, "spec": {"workers": [], "x": 1}}),
    ] {
        assert!(strict::resource_from_value::<WorkerPool>(v.clone()).is_err(), "{v}");
    }
    assert!(
        strict::from_yaml::<k8s_openapi::api::apps::v1::Deployment>("spec: { replicas: \"many\" }").is_err()
    );
}

#[test]
fn hostile_pods_are_skipped_with_a_reason() {
    let cfg = DiscoveryConfig {
        namespace: "ate".into(),
        cluster_domain: "cluster.local".into(),
        tls: ate_core::resource::TlsSpec { ca: "/a".into(), cert: "/b".into(), key: "/c".into() },
    };
    let pod = |name: &str, pool: &str, ip: &str| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ate", "labels": {"app.kubernetes.io/name": "ateom", "ate.dev/pool": pool}},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    };
    let pods = vec![
        pod("a", "p", "10.0.0.1:99@evil"),
        pod("b", "p", "../../etc/passwd"),
        pod("c", "p\nq", "10.0.0.2"),
        pod("d", &"p".repeat(10_000), "10.0.0.3"),
        pod(&"n".repeat(300), "p", "10.0.0.4"),
        pod("e", "p", ""),
    ];
    let d = workers_from_pods(&pods, &cfg);
    assert!(d.pools.is_empty(), "{d:?}");
    assert_eq!(d.skipped.len(), pods.len(), "{d:?}");
}

#[test]
fn hostile_pools_render_or_refuse() {
    let base = json!({"apiVersion": "ate.dev/v1", "kind": "WorkerPool", "metadata": {"name": "p", "namespace": "ate"}});
    for k in [
        json!({"tlsSecret": "t", "hugepages": "99999999999999999999Gi"}),
        json!({"tlsSecret": "t", "resources": {"cpu": "1e309"}}),
        json!({"tlsSecret": "t", "resources": {"memory": "-1"}}),
        json!({"tlsSecret": "t", "accel": "kvm\n"}),
        json!({"tlsSecret": ""}),
    ] {
        for backend in ["gvisor", "firecracker", "qemu", ""] {
            let mut v = base.clone();
            v["spec"] = json!({"backend": backend, "kubernetes": k});
            let p: WorkerPool = serde_json::from_value(v).unwrap();
            assert!(render(&p, &OperatorConfig::default()).is_err(), "{backend} {k}");
        }
    }
}
