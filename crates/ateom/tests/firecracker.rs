//! The Firecracker backend end to end through `ateom serve` and its gRPC socket, with the
//! real `firecracker` binary and the project's freestanding counter guest
//! (guest/freestanding/counter.S): it answers every byte on its serial console with a
//! counter kept in guest RAM.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use tonic::Code;

/// `$ATEOM_FIRECRACKER_BIN`, or `firecracker` on PATH; None (and a loud skip) otherwise.
fn firecracker() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: firecracker tests need root");
        return None;
    }
    if !std::path::Path::new("/dev/kvm").exists() {
        eprintln!("SKIPPED: firecracker tests need /dev/kvm");
        return None;
    }
    let bin = std::env::var_os("ATEOM_FIRECRACKER_BIN").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| PathBuf::from(d).join("firecracker"))
            .find(|p| p.is_file())
    });
    if bin.is_none() {
        eprintln!("SKIPPED: no firecracker binary (set ATEOM_FIRECRACKER_BIN or put firecracker on PATH)");
    }
    bin
}

macro_rules! require_firecracker {
    () => {
        match firecracker() {
            Some(b) => b,
            None => {
                eprintln!("SKIPPED {}: no firecracker here", module_path!());
                return;
            }
        }
    };
}

fn test_guest() -> PathBuf {
    let out = Command::new("bash").arg(repo_root().join("scripts/build-test-guest.sh")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
}

fn fc_worker(
    state: &std::path::Path,
    bin: &std::path::Path,
    guest: &std::path::Path,
    extra: &[&str],
) -> Worker {
    let mut args = vec![
        "--backend".to_string(),
        "firecracker".into(),
        "--firecracker".into(),
        bin.display().to_string(),
        "--kernel".into(),
        guest.display().to_string(),
        "--ready-console-line".into(),
        "READY".into(),
        "--memory-mib".into(),
        "64".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Worker::start(state, &refs)
}

fn guest_spec() -> ateom_proto::WorkloadSpec {
    ateom_proto::WorkloadSpec {
        containers: vec![ateom_proto::Container { name: "guest".into(), ..Default::default() }],
    }
}

fn run_guest(id: &str) -> ateom_proto::RunWorkloadRequest {
    let mut r = run_req(id, "");
    r.spec = Some(guest_spec());
    r
}

fn firecracker_processes(w: &Worker) -> usize {
    let prefix = format!("ateom-{}-", instance_id(&w.state_dir));
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .map(|c| {
                    let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                    args.windows(2).any(|p| p[0] == b"--id" && p[1].starts_with(prefix.as_bytes()))
                })
                .unwrap_or(false)
        })
        .count()
}

/// A worker process that dies never takes its microVM with it: the next one adopts the
/// running firecracker (API, console FIFOs, logs reopened) and the guest's RAM state
/// continues; checkpoint and restore of the adopted VM work. With the static firecracker the
/// VMM runs under its jailer by default, as an unprivileged uid.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_adopts_its_running_microvm() {
    let bin = require_firecracker!();
    let guest = test_guest();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mut w = fc_worker(&state, &bin, &guest, &[]);
    let mut c = w.client().await;
    let run = c.run_workload(run_guest("fa1")).await.expect("run").into_inner();
    assert_eq!(drive(&run.console, 3).await, vec![1, 2, 3]);
    let jailed = w.log_text().contains("run under the jailer");
    eprintln!("firecracker under the jailer: {jailed}");
    w.crash();
    assert_eq!(firecracker_processes(&w), 1, "the VMM outlives the worker");

    let w2 = fc_worker(&state, &bin, &guest, &[]);
    let mut c2 = w2.client().await;
    let caps = c2.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (caps.state.as_str(), caps.running_actor.as_str()),
        ("running", "test/counter/fa1"),
        "{}",
        w2.log_text()
    );
    assert_eq!(drive(&caps.console, 1).await, vec![4], "the adopted guest's RAM state continues");
    let ck =
        c2.checkpoint_workload(checkpoint_req("fa1")).await.expect("checkpoint the adopted VM").into_inner();
    assert_eq!(firecracker_processes(&w2), 0);
    let r = c2.restore_workload(restore_req("fa1")).await.expect("restore").into_inner();
    assert_eq!(r.snapshot_id, ck.manifest.unwrap().snapshot_id);
    assert_eq!(drive(&r.console, 1).await, vec![5]);
    c2.checkpoint_workload(checkpoint_req("fa1")).await.unwrap();
    assert_eq!(firecracker_processes(&w2), 0);
    assert!(w2.namespaces().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn freestanding_guest_counter_survives_checkpoint_and_restore() {
    let bin = require_firecracker!();
    let guest = test_guest();
    let tmp = tempfile::tempdir().unwrap();
    let w = fc_worker(&tmp.path().join("state"), &bin, &guest, &[]);
    let mut c = w.client().await;

    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.backend, "firecracker");
    let k = caps.capabilities.unwrap();
    assert!(k.supports_local_pause && k.supports_memory_snapshot && k.restore_requires_same_host);
    assert!(!k.supports_incremental);
    assert!(k.snapshot_portability_class.starts_with(&format!("firecracker/{}/", caps.runtime_version)));

    let run = c.run_workload(run_guest("fc1")).await.expect("run").into_inner();
    assert!(run.console.starts_with("unix:///"), "{run:?}");
    assert_eq!(drive(&run.console, 3).await, vec![1, 2, 3]);

    let ck = c.checkpoint_workload(checkpoint_req("fc1")).await.expect("checkpoint").into_inner();
    let m = ck.manifest.unwrap();
    assert_eq!(m.backend, "firecracker");
    let names: Vec<_> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["memory", "vmstate"]);
    assert_eq!(m.artifacts[0].size, 64 << 20, "the memory file is the guest's RAM");
    let guest_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&guest).unwrap()));
    assert_eq!(m.kernel_id, guest_sha, "the kernel id is the kernel's sha256");
    assert!(!m.provenance["firecracker.snapshot_version"].is_empty());
    assert_eq!(firecracker_processes(&w), 0, "the VMM is gone");
    assert!(w.namespaces().is_empty(), "its namespace is gone");

    let r = c.restore_workload(restore_req("fc1")).await.expect("restore").into_inner();
    assert_eq!(drive(&r.console, 1).await, vec![4], "the counter kept in guest RAM continued");
    assert_eq!(firecracker_processes(&w), 1, "a new firecracker process");

    // `ateom console` reaches the same console through the worker's socket.
    let mut console = std::process::Command::new(env!("CARGO_BIN_EXE_ateom"))
        .arg("console")
        .arg("--socket")
        .arg(&w.socket)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::{BufRead, Write};
        let mut stdin = console.stdin.take().unwrap();
        let mut out = std::io::BufReader::new(console.stdout.take().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(300));
        stdin.write_all(b"x").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "5", "ateom console drives the guest");
    }
    let _ = console.kill();
    let _ = console.wait();

    // The same snapshot again: the same continuation (the memory file was mapped, not changed).
    c.checkpoint_workload(checkpoint_req("fc1")).await.unwrap();
    let mut again = restore_req("fc1");
    again.snapshot_id = m.snapshot_id.clone();
    let r2 = c.restore_workload(again).await.expect("second restore").into_inner();
    assert_eq!(drive(&r2.console, 2).await, vec![4, 5], "the same continuation from the same snapshot");
    c.checkpoint_workload(checkpoint_req("fc1")).await.unwrap();
    assert_eq!(firecracker_processes(&w), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn durable_restore_on_a_fresh_worker_and_damaged_snapshots() {
    let bin = require_firecracker!();
    let guest = test_guest();
    let tmp = tempfile::tempdir().unwrap();
    let prefix = format!("file://{}/bucket", tmp.path().display());
    let a = fc_worker(&tmp.path().join("node-a"), &bin, &guest, &[]);
    let mut ca = a.client().await;
    let run = ca.run_workload(run_guest("fc2")).await.unwrap().into_inner();
    assert_eq!(drive(&run.console, 3).await, vec![1, 2, 3]);
    let mut ck = checkpoint_req("fc2");
    ck.snapshot_uri_prefix = prefix.clone();
    ck.destination = ateom_proto::SnapshotDestination::Durable as i32;
    let ck = ca.checkpoint_workload(ck).await.expect("durable checkpoint").into_inner();
    assert!(
        ck.stored_bytes > 0 && ck.stored_bytes < 8 << 20,
        "a mostly-zero memory file stores small: {}",
        ck.stored_bytes
    );
    let id = ck.manifest.unwrap().snapshot_id;

    // A fresh worker (its own empty state dir) on this same host restores it from the store.
    let b = fc_worker(&tmp.path().join("node-b"), &bin, &guest, &[]);
    let mut cb = b.client().await;
    let mut rq = restore_req("fc2");
    rq.snapshot_uri_prefix = prefix.clone();
    let r = cb.restore_workload(rq).await.expect("fresh-node restore").into_inner();
    assert!(r.pulled_bytes > 0);
    assert_eq!(drive(&r.console, 1).await, vec![4]);
    cb.checkpoint_workload(checkpoint_req("fc2")).await.unwrap();

    // One flipped byte in the memory file or the vmstate: refused, naming it; no VMM starts.
    let snap_dir = a.state_dir.join("actors/test:counter:fc2/snapshots").join(&id);
    for artifact in ["memory", "vmstate"] {
        let path = snap_dir.join(artifact);
        let original = std::fs::read(&path).unwrap();
        let mut bytes = original.clone();
        bytes[original.len() / 3] ^= 0x80;
        std::fs::write(&path, &bytes).unwrap();
        let mut rq = restore_req("fc2");
        rq.snapshot_id = id.clone();
        let err = ca.restore_workload(rq).await.expect_err("corrupt snapshot");
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        assert!(err.message().contains(artifact), "{}", err.message());
        assert_eq!(firecracker_processes(&a), 0);
        std::fs::write(&path, &original).unwrap();
    }

    // A forged provenance field: Firecracker snapshots need the same host, so a different
    // CPU model is refused before anything starts.
    let manifest = snap_dir.join("manifest.json");
    let original = std::fs::read(&manifest).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&original).unwrap();
    v["host"]["cpu_model"] = "Some Other CPU (family 6 model 85)".into();
    v["host"]["host_kernel"] = "5.10.0-forged".into();
    std::fs::write(&manifest, serde_json::to_vec(&v).unwrap()).unwrap();
    let mut rq = restore_req("fc2");
    rq.snapshot_id = id.clone();
    let err = ca.restore_workload(rq.clone()).await.expect_err("forged provenance");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("host.cpu_model") && err.message().contains("host.host_kernel"),
        "{}",
        err.message()
    );
    assert_eq!(firecracker_processes(&a), 0);
    std::fs::write(&manifest, &original).unwrap();
    let r = ca.restore_workload(rq).await.expect("intact again").into_inner();
    assert_eq!(drive(&r.console, 1).await, vec![4]);
    ca.checkpoint_workload(checkpoint_req("fc2")).await.unwrap();
}

fn script_output(script: &str) -> Option<PathBuf> {
    let out = Command::new("bash").arg(repo_root().join(script)).output().ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim()))
}

/// The counter image as a Linux microVM (the guest kernel, the ext4 image pipeline and
/// ateom-init shared with the qemu backend), over the network.
#[tokio::test(flavor = "multi_thread")]
async fn linux_guest_over_the_network() {
    let bin = require_firecracker!();
    let (Some(kernel), Some(init)) =
        (script_output("scripts/build-guest-kernel.sh"), script_output("scripts/build-init.sh"))
    else {
        eprintln!("SKIPPED linux_guest_over_the_network: the guest kernel or init could not be built");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let (k, i) = (kernel.display().to_string(), init.display().to_string());
    let w = Worker::start(
        &tmp.path().join("state"),
        &[
            "--backend",
            "firecracker",
            "--firecracker",
            &bin.display().to_string(),
            "--kernel",
            &k,
            "--guest-init",
            &i,
            "--ready-timeout",
            "30s",
        ],
    );
    let mut c = w.client().await;
    let kvm = ateom_microvm::kvm();
    if !kvm.boots_linux() {
        // What this host can prove: the attempt fails fast and says why, instead of hanging.
        let t = std::time::Instant::now();
        let err =
            c.run_workload(run_req("lx", &image)).await.expect_err("a stock Linux guest cannot boot here");
        assert!(t.elapsed() < std::time::Duration::from_secs(25), "failed fast: {:?}", t.elapsed());
        assert!(err.message().contains("kvm-pvm"), "the error says why: {}", err.message());
        assert!(w.namespaces().is_empty() && firecracker_processes(&w) == 0, "nothing left behind");
        eprintln!(
            "SKIPPED linux_guest_over_the_network (the counter part): /dev/kvm here is {} (no hardware virtualisation); checked only that the boot fails fast with a clear reason",
            kvm.name()
        );
        return;
    }
    let run = c.run_workload(run_req("lx", &image)).await.expect("boot the counter image").into_inner();
    let mut before = None;
    for i in 1..=3 {
        let n = hit(&run.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        before = Some(n);
    }
    c.checkpoint_workload(checkpoint_req("lx")).await.expect("checkpoint");
    let r = c.restore_workload(restore_req("lx")).await.expect("restore").into_inner();
    let after = hit(&r.host_endpoint).await;
    assert_eq!((after.memory, after.file, after.sha), (4, 4, before.unwrap().sha));
    c.checkpoint_workload(checkpoint_req("lx")).await.unwrap();
}

/// The production shape: firecracker under its jailer (chroot, unprivileged uid, the
/// workload's namespace, a cgroup setting). Needs a jailer next to a statically linked
/// firecracker (`$ATEOM_JAILER_BIN`, or `jailer` beside the firecracker binary).
#[tokio::test(flavor = "multi_thread")]
async fn jailed_vmm_runs_unprivileged_and_survives_checkpoint_and_restore() {
    let bin = require_firecracker!();
    let jailer = std::env::var_os("ATEOM_JAILER_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(bin.parent()?.join("jailer")).filter(|p| p.is_file()));
    let Some(jailer) = jailer else {
        eprintln!(
            "SKIPPED jailed_vmm_runs_unprivileged_and_survives_checkpoint_and_restore: no jailer binary (ATEOM_JAILER_BIN)"
        );
        return;
    };
    let readelf = Command::new("readelf").arg("-l").arg(&bin).output().unwrap();
    if String::from_utf8_lossy(&readelf.stdout).contains("INTERP") {
        eprintln!(
            "SKIPPED jailed_vmm_runs_unprivileged_and_survives_checkpoint_and_restore: {} is dynamically linked; the jailer chroot has no libraries",
            bin.display()
        );
        return;
    }
    let guest = test_guest();
    let tmp = tempfile::tempdir().unwrap();
    let j = jailer.display().to_string();
    let w = fc_worker(
        &tmp.path().join("state"),
        &bin,
        &guest,
        &[
            "--jailer",
            &j,
            "--jailer-uid",
            "64901",
            "--jailer-gid",
            "64901",
            "--jailer-cgroup",
            "cpu.shares=512",
        ],
    );
    let mut c = w.client().await;
    let run = c.run_workload(run_guest("jail1")).await.expect("run under the jailer").into_inner();
    assert_eq!(drive(&run.console, 2).await, vec![1, 2]);
    // The VMM is ours, unprivileged and chrooted.
    let prefix = format!("ateom-{}-", instance_id(&w.state_dir));
    let vmm = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .find(|e| {
            std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.windows(2).any(|p| p[0] == b"--id" && p[1].starts_with(prefix.as_bytes()))
            })
        })
        .expect("the jailed firecracker");
    let status = std::fs::read_to_string(vmm.path().join("status")).unwrap();
    assert!(status.lines().any(|l| l.starts_with("Uid:") && l.contains("64901")), "{status}");
    // pivot_root in its own mount namespace: its "/" holds only what the jail put there.
    assert_ne!(
        std::fs::read_link(vmm.path().join("ns/mnt")).unwrap(),
        std::fs::read_link("/proc/self/ns/mnt").unwrap(),
        "a mount namespace of its own"
    );
    let mut seen: Vec<String> = std::fs::read_dir(vmm.path().join("root"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert!(
        seen.contains(&"firecracker.sock".to_string()) && seen.contains(&"vmlinux".to_string()),
        "{seen:?}"
    );
    assert!(!seen.contains(&"etc".to_string()) && !seen.contains(&"usr".to_string()), "chrooted: {seen:?}");

    c.checkpoint_workload(checkpoint_req("jail1")).await.expect("checkpoint");
    assert_eq!(firecracker_processes(&w), 0);
    let r = c.restore_workload(restore_req("jail1")).await.expect("restore under the jailer").into_inner();
    assert_eq!(drive(&r.console, 1).await, vec![3]);
    c.checkpoint_workload(checkpoint_req("jail1")).await.unwrap();
}
