//! `ate node-probe`: the capability probe that labels a node with what `ateom doctor` found
//! there, so pools select nodes by label (firecracker: `ate.dev/firecracker=true`; QEMU's
//! KVM-shaped workers: `ate.dev/kvm=true`). It runs as a DaemonSet (deploy/base) and
//! re-probes periodically.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::shape::{NODE_FIRECRACKER, NODE_KVM};

/// Why a probe round failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("running {bin}: {source}")]
    Spawn { bin: String, source: std::io::Error },
    #[error("`ateom doctor --json` printed no JSON object ({detail}); stderr: {stderr}")]
    Output { detail: String, stderr: String },
    #[error("labelling node {node}: {source}")]
    Label { node: String, source: kube::Error },
}

/// Pure: the node labels for `ateom doctor --json`'s report. `ate.dev/kvm` is true only for
/// hardware virtualisation (not kvm-pvm, where stock guests cannot boot); each backend's
/// label says whether it runs.
pub fn labels_from_doctor(report: &Value) -> BTreeMap<String, String> {
    let flag = |b: bool| if b { "true" } else { "false" }.to_owned();
    let kvm_ok =
        report["checks"].as_array().into_iter().flatten().any(|c| c["name"] == "kvm" && c["status"] == "ok");
    let mut labels = BTreeMap::from([(NODE_KVM.to_owned(), flag(kvm_ok))]);
    for backend in ["gvisor", "firecracker", "qemu"] {
        let runs = report["backends"][backend]["runs"].as_bool().unwrap_or(false);
        labels.insert(format!("ate.dev/{backend}"), flag(runs));
    }
    debug_assert!(labels.contains_key(NODE_FIRECRACKER));
    labels
}

/// Runs `ateom doctor --json` (its exit status only says whether the default backend runs;
/// the report has every backend).
pub async fn doctor(ateom: &Path) -> Result<Value, ProbeError> {
    let out = tokio::process::Command::new(ateom)
        .args(["doctor", "--json"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| ProbeError::Spawn { bin: ateom.display().to_string(), source })?;
    let stderr = String::from_utf8_lossy(&out.stderr).chars().take(2000).collect::<String>();
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| ProbeError::Output { detail: e.to_string(), stderr: stderr.clone() })?;
    if !v.is_object() {
        return Err(ProbeError::Output { detail: "not an object".into(), stderr });
    }
    Ok(v)
}

/// Sets `labels` on `node` (a merge patch of metadata.labels only).
pub async fn label_node(
    client: Client,
    node: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(), ProbeError> {
    let api: Api<Node> = Api::all(client);
    api.patch(node, &PatchParams::default(), &Patch::Merge(json!({ "metadata": { "labels": labels } })))
        .await
        .map_err(|source| ProbeError::Label { node: node.to_owned(), source })?;
    Ok(())
}

/// Probes and labels every `interval`, forever (errors are logged and retried).
pub async fn run(client: Client, node: String, ateom: std::path::PathBuf, interval: Duration) {
    let mut last = None;
    loop {
        match doctor(&ateom).await {
            Ok(report) => {
                let labels = labels_from_doctor(&report);
                if last.as_ref() != Some(&labels) {
                    match label_node(client.clone(), &node, &labels).await {
                        Ok(()) => {
                            info!(%node, ?labels, "node labelled");
                            last = Some(labels);
                        }
                        Err(e) => warn!(error = %e, "node probe"),
                    }
                }
            }
            Err(e) => warn!(error = %e, "node probe"),
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_doctor_report() {
        // As `ateom doctor --json` prints on a kvm-pvm host: KVM degraded.
        let report = json!({
            "checks": [{"name": "kvm", "status": "degraded", "detail": "/dev/kvm is kvm-pvm", "blocks": []}],
            "backends": {"gvisor": {"runs": true, "reason": null}, "firecracker": {"runs": false, "reason": "x"},
                         "qemu": {"runs": true, "reason": null}},
            "backend": "gvisor", "ok": true
        });
        let l = labels_from_doctor(&report);
        assert_eq!(l[NODE_KVM], "false", "kvm-pvm is not hardware virtualisation");
        assert_eq!(l[NODE_FIRECRACKER], "false");
        assert_eq!(l["ate.dev/gvisor"], "true");
        assert_eq!(l["ate.dev/qemu"], "true");
        let mut hw = report.clone();
        hw["checks"][0]["status"] = json!("ok");
        hw["backends"]["firecracker"]["runs"] = json!(true);
        let l = labels_from_doctor(&hw);
        assert_eq!((l[NODE_KVM].as_str(), l[NODE_FIRECRACKER].as_str()), ("true", "true"));
        // A report without the fields says nothing runs.
        let l = labels_from_doctor(&json!({}));
        assert!(l.values().all(|v| v == "false"), "{l:?}");
    }

    /// The real `ateom doctor --json` of this machine feeds the labeller (skipped when the
    /// workspace's ateom is not built).
    #[tokio::test]
    async fn the_real_doctor_report_gives_labels() {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ateom");
        if !bin.exists() {
            eprintln!(
                "SKIPPED the_real_doctor_report_gives_labels: {} not built (cargo build -p ateom)",
                bin.display()
            );
            return;
        }
        let report = doctor(&bin).await.unwrap();
        let l = labels_from_doctor(&report);
        assert_eq!(l.len(), 4, "{l:?}");
        let kvm_check = report["checks"].as_array().unwrap().iter().find(|c| c["name"] == "kvm").cloned();
        assert_eq!(l[NODE_KVM] == "true", kvm_check.is_some_and(|c| c["status"] == "ok"));
    }
}
