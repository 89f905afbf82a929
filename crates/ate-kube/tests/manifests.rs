//! deploy/: every manifest decodes strictly (unknown fields refused) into its k8s-openapi type
//! (or, for WorkerPools, into ours, and the operator accepts it); each overlay builds with
//! `kubectl kustomize` (client-side: no cluster needed) where kubectl is installed; RBAC
//! grants no wildcards; the CRDs in the base are what `ate crds` prints.

use std::path::{Path, PathBuf};
use std::process::Command;

use ate_kube::crd::WorkerPool;
use ate_kube::shape::{OperatorConfig, render};
use ate_kube::strict;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn docs(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// Decodes one object strictly as its kind; returns the kind.
fn check(doc: &Value, at: &str) -> String {
    let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{at}: no kind")).to_owned();
    let v = doc.clone();
    let r = match kind.as_str() {
        "Namespace" => strict::from_value::<Namespace>(v).map(drop),
        "ServiceAccount" => strict::from_value::<ServiceAccount>(v).map(drop),
        "Role" => strict::from_value::<Role>(v).map(|r| check_rules(&r.rules.unwrap_or_default(), at)),
        "ClusterRole" => strict::from_value::<ClusterRole>(v).map(|r| {
            let rules = r.rules.unwrap_or_default();
            check_rules(&rules, at);
            // The only cluster-wide right: reading and labelling nodes (the probe).
            for rule in &rules {
                assert_eq!(rule.resources.as_deref(), Some(&["nodes".to_owned()][..]), "{at}");
                assert_eq!(rule.verbs, ["get", "patch"], "{at}");
            }
        }),
        "RoleBinding" => strict::from_value::<RoleBinding>(v).map(drop),
        "ClusterRoleBinding" => strict::from_value::<ClusterRoleBinding>(v).map(drop),
        "CustomResourceDefinition" => strict::from_value::<CustomResourceDefinition>(v).map(drop),
        "Deployment" => strict::from_value::<Deployment>(v).map(drop),
        "DaemonSet" => strict::from_value::<DaemonSet>(v).map(drop),
        "Service" => strict::from_value::<Service>(v).map(drop),
        "Secret" => strict::from_value::<Secret>(v).map(drop),
        "WorkerPool" => strict::resource_from_value::<WorkerPool>(v).map(|p| {
            let objects =
                render(&p, &OperatorConfig::default()).unwrap_or_else(|r| panic!("{at}: refused: {r}"));
            assert!(!objects.is_empty());
        }),
        "ActorTemplate" => strict::resource_from_value::<ate_kube::ActorTemplate>(v).map(drop),
        "Kustomization" => Ok(()),
        other => panic!("{at}: no check for kind {other}"),
    };
    r.unwrap_or_else(|e| panic!("{at}: {e}"));
    kind
}

fn check_rules(rules: &[PolicyRule], at: &str) {
    for r in rules {
        for list in [&r.verbs, r.resources.as_ref().unwrap(), r.api_groups.as_ref().unwrap()] {
            assert!(!list.iter().any(|x| x == "*"), "{at}: wildcard in {r:?}");
        }
        assert!(!r.verbs.iter().any(|v| v == "delete" || v == "deletecollection"), "{at}: deletes in {r:?}");
    }
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

#[test]
fn every_manifest_file_decodes_strictly() {
    let mut files = Vec::new();
    yaml_files(&deploy(), &mut files);
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, d) in docs(&text).iter().enumerate() {
            check(d, &format!("{}[{i}]", f.display()));
        }
    }
}

#[test]
fn the_base_has_the_crds_ate_crds_prints() {
    let text = std::fs::read_to_string(deploy().join("base/crds.yaml")).unwrap();
    assert_eq!(
        text,
        ate_kube::crd::crds_yaml().unwrap(),
        "deploy/base/crds.yaml is stale: regenerate with `ate crds > deploy/base/crds.yaml`"
    );
}

#[test]
fn each_overlay_builds_with_kubectl_kustomize() {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    if Command::new(&kubectl)
        .args(["version", "--client"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!(
            "SKIPPED each_overlay_builds_with_kubectl_kustomize: no kubectl (Debian: apt-get install kubernetes-client); every file is still decoded by every_manifest_file_decodes_strictly"
        );
        return;
    }
    for overlay in ["gvisor", "firecracker", "qemu"] {
        let out = Command::new(&kubectl)
            .args(["kustomize"])
            .arg(deploy().join("overlays").join(overlay))
            .output()
            .unwrap();
        assert!(out.status.success(), "{overlay}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        let mut kinds: Vec<String> = Vec::new();
        for (i, d) in docs(&text).iter().enumerate() {
            let at = format!("overlay {overlay}[{i}] {}", d["metadata"]["name"]);
            kinds.push(check(d, &at));
            // Everything namespaced lands in `ate`.
            if !matches!(
                d["kind"].as_str(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding" | "CustomResourceDefinition")
            ) {
                assert_eq!(d["metadata"]["namespace"], "ate", "{at}");
            }
        }
        for want in [
            "CustomResourceDefinition",
            "Role",
            "Deployment",
            "DaemonSet",
            "Service",
            "WorkerPool",
            "Namespace",
        ] {
            assert!(kinds.iter().any(|k| k == want), "{overlay}: no {want} in {kinds:?}");
        }
        let pool = docs(&text).into_iter().find(|d| d["kind"] == "WorkerPool").unwrap();
        assert_eq!(pool["spec"]["backend"], overlay);
        // The images were set by the base's kustomization.
        assert!(text.contains("image: ghcr.io/ateom/ate:latest"), "{overlay}");
    }
}
