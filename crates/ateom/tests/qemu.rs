//! The QEMU backend end to end through `ateom serve` and its gRPC socket, with real QEMU
//! (`-M microvm`, TCG where KVM cannot boot Linux) and the project's guest kernel
//! (scripts/build-guest-kernel.sh, cached under ~/.cache/ateom/kernel).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::*;

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
            "init=/init loglevel=1",
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
    ck.destination = ateom_proto::SnapshotDestination::Durable as i32;
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

/// A worker process that dies never takes its microVM with it: the next one adopts the
/// running QEMU (QMP and the serial console reconnected) and the guest's RAM state continues.
#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_worker_adopts_its_running_microvm() {
    let kernel = require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let disk = console_counter_disk(tmp.path());
    let kernel = kernel.display().to_string();
    let disk_arg = disk.display().to_string();
    // The kernel and root disk come from the request's runtime_asset_paths (substrate's way),
    // not from the worker's defaults.
    let args = [
        "--backend",
        "qemu",
        "--kernel-cmdline",
        "init=/init loglevel=1",
        "--ready-console-line",
        "READY",
        "--memory-mib",
        "128",
    ];
    let state = tmp.path().join("node");
    let mut w = Worker::start(&state, &args);
    let mut c = w.client().await;
    let mut bad = run_req("q0", "");
    bad.spec = Some(guest_spec());
    bad.runtime_asset_paths.insert("firecracker".into(), "/usr/bin/true".into());
    let err = c.run_workload(bad).await.expect_err("an unknown asset key");
    assert!(err.message().contains("qemu, kernel, rootfs"), "{}", err.message());
    let mut req = run_req("q1", "");
    req.spec = Some(guest_spec());
    req.runtime_asset_paths.insert("kernel".into(), kernel.clone());
    req.runtime_asset_paths.insert("rootfs".into(), disk_arg.clone());
    let run = c.run_workload(req).await.expect("boot").into_inner();
    assert_eq!(drive(&run.console, 3).await, vec![1, 2, 3]);
    // Confined: not root, seccomp on, chrooted into its work directory.
    let pid = w.vmm_processes()[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status.lines().find(|l| l.starts_with(k)).unwrap().split_whitespace().nth(1).unwrap().to_owned()
    };
    assert_ne!(field("Uid:"), "0", "QEMU dropped root");
    assert_ne!(field("Gid:"), "0");
    assert_eq!(field("Seccomp:"), "2", "QEMU runs under its seccomp filter");
    let root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    assert!(root.ends_with("work"), "chrooted into its work dir: {}", root.display());
    w.crash();
    assert_eq!(w.vmm_processes().len(), 1, "the VM outlives the worker");

    let w2 = Worker::start(&state, &args);
    let mut c2 = w2.client().await;
    let caps = c2.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (caps.state.as_str(), caps.running_actor.as_str()),
        ("running", "test/counter/q1"),
        "{}",
        w2.log_text()
    );
    assert!(caps.console.starts_with("unix:///"), "{caps:?}");
    assert_eq!(drive(&caps.console, 1).await, vec![4], "the adopted guest's RAM state continues");
    let ck =
        c2.checkpoint_workload(checkpoint_req("q1")).await.expect("checkpoint the adopted VM").into_inner();
    assert_eq!(
        ck.manifest.as_ref().unwrap().provenance["asset.kernel"],
        kernel,
        "assets are recorded in provenance"
    );
    assert_eq!(qemu_processes(&w2), 0);
    let r = c2.restore_workload(restore_req("q1")).await.expect("restore").into_inner();
    assert_eq!(r.snapshot_id, ck.manifest.unwrap().snapshot_id);
    assert_eq!(drive(&r.console, 1).await, vec![5]);
    c2.checkpoint_workload(checkpoint_req("q1")).await.unwrap();
    assert_eq!(qemu_processes(&w2), 0);
    assert!(w2.namespaces().is_empty());
}

fn http_worker(dir: &Path, name: &str, kernel: &Path) -> Worker {
    let init = Command::new("bash").arg(repo_root().join("scripts/build-init.sh")).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let init = String::from_utf8(init.stdout).unwrap().lines().last().unwrap().trim().to_owned();
    let kernel = kernel.display().to_string();
    Worker::start(
        &dir.join(name),
        &[
            "--backend",
            "qemu",
            "--kernel",
            &kernel,
            "--guest-init",
            &init,
            "--memory-mib",
            "256",
            "--ready-timeout",
            "60s",
            "--host-id",
            name,
        ],
    )
}

/// Moves the guest's clock by talking to ateom-init's control port from inside the worker's
/// VM namespace, as if the snapshot taken next were `skew` old when restored.
async fn skew_guest_clock(w: &Worker, skew: std::time::Duration) {
    use ateom_core::Dialer;
    use ateom_init::protocol::{Entropy, Request, Response, decode_response, encode_request};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ns = ateom_net::Netns::open(&format!("ateom-{}-vm", instance_id(&w.state_dir))).unwrap();
    let dialer = ateom_net::NetnsDialer::new(&ns, "169.254.0.2".parse().unwrap()).unwrap();
    let mut s = dialer.dial(ateom_init::cmdline::DEFAULT_CTL_PORT).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap() - skew;
    let req = Request::Sync { unix_time_ns: now.as_nanos() as i64, entropy: Entropy([7u8; 64]) };
    s.write_all(&encode_request(&req).unwrap()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    assert!(matches!(decode_response(&buf).unwrap(), Response::Synced { .. }));
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn counter_image_on_a_linux_microvm_keeps_memory_disk_clock_and_fresh_randomness() {
    let kernel = require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = http_worker(tmp.path(), "node-a", &kernel);
    let mut c = w.client().await;

    let t = Instant::now();
    let run = c.run_workload(run_req("h1", &image)).await.expect("boot the counter image").into_inner();
    eprintln!("qemu: image -> ext4 -> boot -> ready in {:?}", t.elapsed());
    assert_eq!(run.workload_address, "169.254.0.2:8080");
    let mut before = None;
    for i in 1..=3 {
        let n = hit(&run.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        before = Some(n);
    }
    let before = before.unwrap();
    let guest_now: i64 = get_text(&run.host_endpoint, "/time").await.trim().parse().unwrap();
    assert!(
        (guest_now - unix_ms()).abs() < 1000,
        "a fresh boot's clock is synced: off by {} ms",
        guest_now - unix_ms()
    );

    // Make the snapshot "ten minutes old" as far as the guest clock goes.
    skew_guest_clock(&w, std::time::Duration::from_secs(600)).await;
    let skewed: i64 = get_text(&run.host_endpoint, "/time").await.trim().parse().unwrap();
    assert!(unix_ms() - skewed > 590_000, "the skew took: {}", unix_ms() - skewed);

    let ck = c.checkpoint_workload(checkpoint_req("h1")).await.expect("checkpoint").into_inner();
    let m = ck.manifest.unwrap();
    assert!(m.image_digests["counter"].starts_with("sha256:"));
    assert_eq!(m.provenance["qemu.guest_init"], "ateom-init");
    assert!(w.namespaces().is_empty());
    assert_eq!(qemu_processes(&w), 0);

    let r = c.restore_workload(restore_req("h1")).await.expect("restore").into_inner();
    let first_random = get_text(&r.host_endpoint, "/random").await;
    let guest_now: i64 = get_text(&r.host_endpoint, "/time").await.trim().parse().unwrap();
    assert!(
        (guest_now - unix_ms()).abs() < 1000,
        "restored clock within 1 s of the host: off by {} ms",
        guest_now - unix_ms()
    );
    let after = hit(&r.host_endpoint).await;
    assert_eq!((after.memory, after.file), (4, 4), "memory and disk state continued");
    assert_eq!(after.sha, before.sha, "same file");
    c.checkpoint_workload(checkpoint_req("h1")).await.unwrap();

    // A second restore of the same snapshot: the same state, but not the same randomness.
    let mut again = restore_req("h1");
    again.snapshot_id = m.snapshot_id.clone();
    let r2 = c.restore_workload(again).await.expect("second restore").into_inner();
    let second_random = get_text(&r2.host_endpoint, "/random").await;
    assert_ne!(first_random, second_random, "two restores of one snapshot must not share randomness");
    let n = hit(&r2.host_endpoint).await;
    assert_eq!((n.memory, n.file), (4, 4));
    c.checkpoint_workload(checkpoint_req("h1")).await.unwrap();

    // The same image again: the root disk comes from the cache.
    let disks = || std::fs::read_dir(w.state_dir.join("cache/guest/ext4")).unwrap().flatten().count();
    assert_eq!(disks(), 1);
    let run = c.run_workload(run_req("h2", &image)).await.expect("second actor, same image").into_inner();
    assert_eq!(hit(&run.host_endpoint).await.memory, 1);
    assert_eq!(disks(), 1, "rootfs cache hit on the same image digest");
    assert!(w.log_text().contains("cache_hit=true"), "the worker logs the cache hit");
    c.checkpoint_workload(checkpoint_req("h2")).await.unwrap();
}

#[test]
fn the_guest_kernel_build_is_cached() {
    if guest_kernel().is_none() {
        eprintln!("SKIPPED the_guest_kernel_build_is_cached: no kernel");
        return;
    }
    let t = Instant::now();
    let k = guest_kernel().unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "a second build is a cache hit: {:?}",
        t.elapsed()
    );
    assert!(
        k.starts_with(std::env::var("HOME").unwrap_or_default())
            || k.to_string_lossy().contains("/ateom/kernel/")
    );
}

/// A durable directory on a QEMU microVM: its own ext4 disk, mounted by ateom-init at its
/// path; read back into the host's `durable-dir/<volume>/` and captured by FULL (with the disk
/// itself, next to the guest's RAM) and DATA checkpoints; put back by restores.
#[tokio::test(flavor = "multi_thread")]
async fn a_durable_directory_on_a_qemu_microvm_is_captured_and_restored() {
    let kernel = require_qemu!();
    let tmp = tempfile::tempdir().unwrap();
    let image = counter_image(tmp.path());
    let w = http_worker(tmp.path(), "node-a", &kernel);
    let mut c = w.client().await;
    let mut req = run_req("v1", &image);
    let container = &mut req.spec.as_mut().unwrap().containers[0];
    container.env.insert("COUNTER_DIR".into(), "/data".into());
    container.durable_dir_volumes = vec!["/data".into()];
    let spec = req.spec.clone();
    let run = c.run_workload(req).await.expect("boot with a volume").into_inner();
    let mut sha = String::new();
    for i in 1..=3 {
        let n = hit(&run.host_endpoint).await;
        assert_eq!((n.memory, n.file), (i, i));
        sha = n.sha;
    }
    let host_dir = w.state_dir.join("actors/test:counter:v1/durable-dir/data");

    // FULL: RAM + root disk + the volume's disk, and its files.
    let ck = c.checkpoint_workload(checkpoint_req("v1")).await.expect("FULL checkpoint").into_inner();
    let names: Vec<&str> = ck.manifest.as_ref().unwrap().artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.contains(&"volume-0.ext4") && names.contains(&"durable/data/count"), "{names:?}");
    assert_eq!(std::fs::read_to_string(host_dir.join("count")).unwrap(), "3", "read back into the host");
    // The host directory changes behind the worker's back: the snapshot's volume wins.
    std::fs::write(host_dir.join("count"), "100").unwrap();
    let r = c.restore_workload(restore_req("v1")).await.expect("FULL restore").into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!((n.memory, n.file, n.sha.as_str()), (4, 4, sha.as_str()), "memory and the volume continued");

    // DATA: only the volume; a DATA restore boots fresh with it.
    let mut ck = checkpoint_req("v1");
    ck.scope = ateom_proto::SnapshotScope::Data as i32;
    let ck = c.checkpoint_workload(ck).await.expect("DATA checkpoint").into_inner();
    let names: Vec<&str> = ck.manifest.as_ref().unwrap().artifacts.iter().map(|a| a.name.as_str()).collect();
    assert!(names.iter().all(|n| n.starts_with("durable/data/")), "{names:?}");
    assert_eq!(std::fs::read_to_string(host_dir.join("count")).unwrap(), "4");
    assert_eq!(qemu_processes(&w), 0);
    std::fs::remove_dir_all(&host_dir).unwrap();
    let mut rq = restore_req("v1");
    rq.scope = ateom_proto::SnapshotScope::Data as i32;
    rq.spec = spec;
    let r = c.restore_workload(rq).await.expect("DATA restore").into_inner();
    let n = hit(&r.host_endpoint).await;
    assert_eq!((n.memory, n.file, n.sha.as_str()), (1, 5, sha.as_str()), "a fresh boot with the volume");
    let del = ateom_proto::DeleteWorkloadRequest {
        actor_template_namespace: "test".into(),
        actor_template_name: "counter".into(),
        actor_id: "v1".into(),
        keep_snapshots: false,
    };
    c.delete_workload(del).await.unwrap();
    assert_eq!(qemu_processes(&w), 0);
}
