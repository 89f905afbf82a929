//! The QEMU backend end to end through `ateom serve` and its gRPC socket, with real QEMU
//! (`-M microvm`, TCG where KVM cannot boot Linux) and the project's guest kernel
//! (scripts/build-guest-kernel.sh, cached under ~/.cache/ateom/kernel).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The guest kernel, built (or taken from the cache) by the project's script.
fn guest_kernel() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: qemu tests need root");
        return None;
    }
    if Command::new("qemu-system-x86_64").arg("--version").output().is_err() {
        eprintln!("SKIPPED: qemu-system-x86_64 is not installed (apt install qemu-system-x86)");
        return None;
    }
    let out = Command::new("bash").arg(repo_root().join("scripts/build-guest-kernel.sh")).output().unwrap();
    if !out.status.success() {
        eprintln!("SKIPPED: the guest kernel could not be built: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim()))
}

macro_rules! require_qemu {
    () => {
        match guest_kernel() {
            Some(k) => k,
            None => {
                eprintln!("SKIPPED {}: no QEMU or guest kernel here", module_path!());
                return;
            }
        }
    };
}

/// A Linux root disk whose /init is a counter on the serial console (busybox).
fn console_counter_disk(dir: &Path) -> PathBuf {
    let root = dir.join("console-root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/usr/bin/busybox", root.join("bin/busybox")).expect("busybox-static installed");
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    std::fs::write(
        root.join("init"),
        "#!/bin/sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox stty raw -echo\necho READY\nn=0\nwhile /bin/busybox true; do\n  read -n 1 x\n  n=$((n+1))\n  echo $n\ndone\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let disk = dir.join("console-root.ext4");
    std::fs::File::create(&disk).unwrap().set_len(64 << 20).unwrap();
    let st = Command::new("mkfs.ext4").args(["-q", "-F", "-d"]).arg(&root).arg(&disk).status().unwrap();
    assert!(st.success());
    disk
}

async fn drive(console: &str, n: usize) -> Vec<u64> {
    let stream = tokio::net::TcpStream::connect(console.strip_prefix("tcp://").unwrap()).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut out = vec![];
    for _ in 0..n {
        w.write_all(b"x").await.unwrap();
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .expect("the guest answers")
            .unwrap()
            .unwrap();
        out.push(line.trim().parse().unwrap());
    }
    out
}

fn qemu_processes(w: &Worker) -> usize {
    let actors = w.state_dir.join("actors").canonicalize().unwrap_or_else(|_| w.state_dir.join("actors"));
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.starts_with("qemu-system"))
                && std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&actors))
        })
        .count()
}

fn guest_spec() -> ateom_proto::WorkloadSpec {
    ateom_proto::WorkloadSpec {
        containers: vec![ateom_proto::Container { name: "guest".into(), ..Default::default() }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn linux_guest_state_survives_checkpoint_and_restore_and_moves_nodes() {
    let kernel = require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let disk = console_counter_disk(tmp.path());
    let args = |s: &str| -> Vec<String> {
        vec![
            "--backend",
            "qemu",
            "--kernel",
            &kernel.display().to_string(),
            "--rootfs",
            &disk.display().to_string(),
            "--kernel-cmdline",
            "init=/init",
            "--ready-console-line",
            "READY",
            "--memory-mib",
            "128",
            "--host-id",
            s,
        ]
        .into_iter()
        .map(String::from)
        .collect()
    };
    let a_args = args("node-a");
    let a = Worker::start(&tmp.path().join("node-a"), &a_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut c = a.client().await;
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.backend, "qemu");
    let k = caps.capabilities.unwrap();
    assert!(k.supports_memory_snapshot && k.supports_local_pause);
    assert!(["kvm", "tcg"].contains(&k.accelerator.as_str()));
    eprintln!("qemu accelerator here: {}", k.accelerator);

    let mut req = run_req("q1", "");
    req.spec = Some(guest_spec());
    let t = Instant::now();
    let run = c.run_workload(req).await.expect("boot").into_inner();
    eprintln!("boot to READY: {:?}", t.elapsed());
    assert_eq!(drive(&run.console, 3).await, vec![1, 2, 3]);

    let ck = c.checkpoint_workload(checkpoint_req("q1")).await.expect("checkpoint").into_inner();
    let m = ck.manifest.unwrap();
    assert_eq!(m.backend, "qemu");
    let names: Vec<_> = m.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["memory", "rootfs.ext4", "vmstate"]);
    assert_eq!(m.provenance["qemu.accelerator"], k.accelerator);
    assert!(!m.kernel_id.is_empty() && !m.provenance["qemu.machine"].is_empty());
    assert_eq!(qemu_processes(&a), 0, "QEMU is gone");
    assert!(a.namespaces().is_empty());

    let r = c.restore_workload(restore_req("q1")).await.expect("restore").into_inner();
    assert_eq!(drive(&r.console, 1).await, vec![4], "guest RAM state continued in a new QEMU");
    c.checkpoint_workload(checkpoint_req("q1")).await.unwrap();
    // The same snapshot a second time: the same continuation.
    let mut again = restore_req("q1");
    again.snapshot_id = m.snapshot_id.clone();
    let r = c.restore_workload(again).await.expect("second restore").into_inner();
    assert_eq!(drive(&r.console, 2).await, vec![4, 5]);

    // DURABLE, then a fresh worker (own empty state dir) restores from the store alone.
    let prefix = format!("file://{}/bucket", tmp.path().display());
    let mut ck = checkpoint_req("q1");
    ck.snapshot_uri_prefix = prefix.clone();
    let ck = c.checkpoint_workload(ck).await.expect("durable checkpoint").into_inner();
    assert!(ck.stored_bytes > 0);
    let b_args = args("node-b");
    let b = Worker::start(&tmp.path().join("node-b"), &b_args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut cb = b.client().await;
    let mut rq = restore_req("q1");
    rq.snapshot_uri_prefix = prefix;
    let r = cb.restore_workload(rq).await.expect("fresh-node restore").into_inner();
    assert!(r.pulled_bytes > 0);
    assert_eq!(drive(&r.console, 1).await, vec![6]);
    cb.checkpoint_workload(checkpoint_req("q1")).await.unwrap();
    assert_eq!(qemu_processes(&b), 0);
}
