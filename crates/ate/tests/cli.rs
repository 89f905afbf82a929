//! `ate`'s client verbs as a user meets them: addresses written as URLs, and errors that read
//! like user errors (message and cause on one line, no backtrace unless `--debug`).

use std::process::{Command, Output};

fn ate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ate"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("ATE_TOKEN", "not-needed-to-connect")
        .output()
        .unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_unreachable_api_is_one_line_with_what_to_do_and_no_backtrace() {
    let api = format!("http://127.0.0.1:{}", closed_port());
    let out = ate(&["--api", &api, "get", "actors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: connecting to ate serve's API at 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("is `ate serve` running?") && stderr.contains("refused"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "RUST_BACKTRACE=1 must not add frames: {stderr}");

    let out = ate(&["--debug", "--api", &api, "get", "actors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Caused by") && stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn https_api_addresses_are_refused_with_the_reason() {
    let out = ate(&["--api", "https://127.0.0.1:7070", "get", "actors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TLS is not supported") && stderr.contains("http://127.0.0.1:7070"), "{stderr}");
}

#[test]
fn kubernetes_verbs_work_without_a_cluster() {
    // The CRDs and the operator's dry run need no cluster (none is reachable here).
    let out = ate(&["crds"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let crds = String::from_utf8(out.stdout).unwrap();
    assert!(crds.contains("name: workerpools.ate.dev") && crds.contains("name: actortemplates.ate.dev"));
    let pools = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/examples/pools.yaml");
    let out = ate(&["operator", "--dry-run", "-f", pools]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["kind: Deployment", "kind: DaemonSet", "name: ateom-qemu-kvm", "kind: PodDisruptionBudget"] {
        assert!(text.contains(want), "{want}");
    }
    // A bad file is a one-line error naming the field.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: WorkerPool\nmetadata: { name: p }\nspec: { kubernetes: { tlsSecret: t, replica: 2 } }\n",
    )
    .unwrap();
    let out = ate(&["operator", "--dry-run", "-f", bad.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("spec.kubernetes.replica") && stderr.lines().count() == 1, "{stderr}");
    // Without a cluster the operator says how it looked for one.
    let out = Command::new(env!("CARGO_BIN_EXE_ate"))
        .args(["operator"])
        .env_remove("KUBECONFIG")
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("connecting to the Kubernetes API"), "{stderr}");
}
