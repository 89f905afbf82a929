//! `ateom bench`: run -> ready, checkpoint, restore -> first answer and snapshot bytes through
//! ateom, beside the same operations driven directly with runsc on the same bundle in the
//! same run (the baseline). Results are medians; ratios are ateom / baseline.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ateom_core::{Dialer, HttpProbe};
use ateom_net::{Netns, NetnsDialer, VethPlan};
use serde_json::{Value, json};

use crate::WorkerArgs;
use crate::demo::{Harness, checkpoint_counter, hit, restore_counter, run_counter};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn ms(d: Duration) -> f64 {
    round2(d.as_secs_f64() * 1000.0)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Adds `name`, `baseline_name` and `name_ratio` to `out`.
fn figure(out: &mut serde_json::Map<String, Value>, name: &str, ours: f64, baseline: f64) {
    out.insert(name.into(), json!(round2(ours)));
    out.insert(format!("baseline_{name}"), json!(round2(baseline)));
    let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
    out.insert(format!("{name}_ratio"), json!((ratio * 1000.0).round() / 1000.0));
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:").map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
            })
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// run -> ready, one request, checkpoint, restore -> first answer, checkpoint: through
/// ateom's gRPC service, `iterations` times. Returns the samples and the snapshot bytes.
async fn ateom_cycles(h: &mut Harness, iterations: u32) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>, u64)> {
    let (mut run_s, mut ck_s, mut rs_s, mut bytes) = (vec![], vec![], vec![], 0u64);
    for i in 0..iterations {
        let actor = format!("bench-{i}");
        let (_, t) = run_counter(h, &actor).await?;
        run_s.push(ms(t));
        let endpoint = h.runtime.host_endpoint();
        hit(endpoint).await?;
        let (ck, t) = checkpoint_counter(h, &actor, None).await?;
        ck_s.push(ms(t));
        bytes = ck.manifest.map(|m| m.artifacts.iter().map(|a| a.size).sum()).unwrap_or(0);
        let (_, _, t) = restore_counter(h, &actor, None).await?;
        rs_s.push(ms(t));
        checkpoint_counter(h, &actor, None).await?;
    }

    Ok((run_s, ck_s, rs_s, bytes))
}

pub async fn gvisor(h: &mut Harness, worker: &WorkerArgs, iterations: u32) -> Result<Value> {
    let iterations = iterations.max(1);
    // Warm-up (fills the image cache, faults in binaries) and the bundle for the baseline.
    run_counter(h, "bench-warmup").await?;
    checkpoint_counter(h, "bench-warmup", None).await?;

    let (run_s, ck_s, rs_s, bytes) = ateom_cycles(h, iterations).await?;

    let base = Baseline::prepare(h, worker).await?;
    let (mut brun, mut bck, mut brs, mut bbytes) = (vec![], vec![], vec![], 0u64);
    let result = async {
        for i in 0..=iterations {
            let (run, ck, rs, b) = base.cycle(i).await?;
            if i > 0 {
                // i == 0 is the baseline's warm-up.
                brun.push(run);
                bck.push(ck);
                brs.push(rs);
                bbytes = b;
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    base.cleanup().await;
    result?;

    let mut out = serde_json::Map::new();
    out.insert("benchmark".into(), json!("run-checkpoint-restore"));
    out.insert("backend".into(), json!("gvisor"));
    out.insert("runtime_version".into(), json!(h.runtime.info().runtime_version));
    out.insert("iterations".into(), json!(iterations));
    out.insert("statistic".into(), json!("median"));
    figure(&mut out, "run_to_ready_ms", median(run_s.clone()), median(brun.clone()));
    figure(&mut out, "checkpoint_ms", median(ck_s.clone()), median(bck.clone()));
    figure(&mut out, "restore_to_first_answer_ms", median(rs_s.clone()), median(brs.clone()));
    figure(&mut out, "snapshot_bytes", bytes as f64, bbytes as f64);
    out.insert("daemon_rss_kib".into(), json!(rss_kib()));
    out.insert(
        "samples_ms".into(),
        json!({
            "run_to_ready": run_s, "baseline_run_to_ready": brun,
            "checkpoint": ck_s, "baseline_checkpoint": bck,
            "restore_to_first_answer": rs_s, "baseline_restore_to_first_answer": brs,
        }),
    );
    Ok(Value::Object(out))
}

/// The baseline: runsc driven by hand on the bundle ateom prepared, in namespaces of its own.
struct Baseline {
    runsc: PathBuf,
    platform: String,
    root: PathBuf,
    bundle: PathBuf,
    work: tempfile::TempDir,
    prefix: String,
    mask: bool,
}

const SB_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);

impl Baseline {
    async fn prepare(h: &Harness, worker: &WorkerArgs) -> Result<Self> {
        let work = tempfile::Builder::new().prefix("ateom-bench-base-").tempdir()?;
        let bundle = work.path().join("bundle");
        std::fs::create_dir_all(&bundle)?;
        let image = ateom_core::ImageRef::parse("image", &h.image)?;
        let store = ateom_image::ImageStore::new(h.state_dir.join("cache/images"));
        let prepared = store.prepare(&image)?;
        let prefix = format!("ateom-bench{}-", std::process::id());
        let opts = ateom_image::BundleOptions {
            rootfs: prepared.rootfs.clone(),
            hostname: "baseline".into(),
            netns_path: Some(PathBuf::from(format!("/run/netns/{prefix}sb"))),
            readonly_rootfs: false,
        };
        let spec =
            ateom_image::runtime_spec(&prepared.config, &ateom_image::ProcessOverrides::default(), &opts)?;
        ateom_image::write_bundle(&bundle, &spec)?;
        Ok(Self {
            runsc: worker.runsc.clone(),
            platform: worker.platform.clone(),
            root: work.path().join("root"),
            bundle,
            work,
            prefix,
            mask: ateom_net::kernel_shows_core_sysctls_in_netns()?,
        })
    }

    async fn net_up(&self) -> Result<(Netns, Netns)> {
        let sb = Netns::create(&format!("{}sb", self.prefix))?;
        let gw = Netns::create(&format!("{}gw", self.prefix))?;
        let plan = VethPlan {
            sandbox_ip: SB_IP,
            gateway_ip: Ipv4Addr::new(169, 254, 0, 1),
            prefix_len: 30,
            sandbox_if: "eth0".into(),
            gateway_if: "gw0".into(),
            sandbox_mac: Some([0x02, 0xa7, 0xe0, 0x00, 0x00, 0x02]),
        };
        ateom_net::setup_veth(&sb, &gw, &plan).await?;
        Ok((sb, gw))
    }

    fn command(&self, ns: &Netns, mask: bool, args: &[&str]) -> Result<tokio::process::Command> {
        let mut cmd = tokio::process::Command::new(&self.runsc);
        cmd.arg(format!("--root={}", self.root.display()))
            .arg(format!("--platform={}", self.platform))
            .arg("--network=sandbox")
            .arg("--overlay2=root:memory")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        ateom_net::join_netns_before_exec(&mut cmd, ns, mask && self.mask)?;
        Ok(cmd)
    }

    async fn runsc(&self, ns: &Netns, args: &[&str]) -> Result<()> {
        let out = self.command(ns, false, args)?.output().await?;
        if !out.status.success() {
            bail!("baseline runsc {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `runsc run|restore` in the foreground (it reaps the sandbox; see ateom-gvisor).
    fn start(&self, ns: &Netns, args: &[&str]) -> Result<tokio::process::Child> {
        Ok(self.command(ns, true, args)?.stderr(Stdio::null()).spawn()?)
    }

    async fn first_answer(gw: &Netns) -> Result<()> {
        let dialer: Arc<dyn Dialer> = Arc::new(NetnsDialer::new(gw, IpAddr::V4(SB_IP))?);
        let probe = HttpProbe { path: "/readyz".into(), port: 8080, timeout_seconds: None };
        ateom_runtime::probe::wait_ready(dialer.as_ref(), &probe, Duration::from_secs(30), &|| None).await?;
        Ok(())
    }

    fn net_down(sb: Netns, gw: Netns) {
        let _ = sb.delete();
        let _ = gw.delete();
    }

    /// run -> ready, checkpoint (+ delete + namespaces gone), restore -> first answer, delete.
    async fn cycle(&self, i: u32) -> Result<(f64, f64, f64, u64)> {
        let cid = format!("bench-base-{i}");
        let image = self.work.path().join(format!("image-{i}"));
        std::fs::create_dir_all(&image)?;
        let bundle = format!("--bundle={}", self.bundle.display());

        let t = Instant::now();
        let (sb, gw) = self.net_up().await?;
        let mut child = self.start(&sb, &["run", &bundle, &cid])?;
        Self::first_answer(&gw).await?;
        let run = ms(t.elapsed());

        let t = Instant::now();
        self.runsc(&sb, &["checkpoint", &format!("--image-path={}", image.display()), &cid]).await?;
        child.wait().await?;
        self.runsc(&sb, &["delete", "--force", &cid]).await?;
        Self::net_down(sb, gw);
        let ck = ms(t.elapsed());
        let bytes = dir_bytes(&image)?;

        let t = Instant::now();
        let (sb, gw) = self.net_up().await?;
        let rcid = format!("{cid}-r");
        let image_path = format!("--image-path={}", image.display());
        let mut child = self.start(&sb, &["restore", &image_path, &bundle, &rcid])?;
        Self::first_answer(&gw).await?;
        let rs = ms(t.elapsed());
        self.runsc(&sb, &["kill", &rcid, "KILL"]).await?;
        child.wait().await?;
        self.runsc(&sb, &["delete", "--force", &rcid]).await?;
        Self::net_down(sb, gw);
        Ok((run, ck, rs, bytes))
    }

    async fn cleanup(&self) {
        for n in Netns::list_with_prefix(&self.prefix).unwrap_or_default() {
            let _ = Netns::delete_by_name(&n);
        }
    }
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}

/// Writes a memory-image-like file: `size` bytes, mostly holes, with `data` bytes of random
/// content in 256 KiB runs at pseudo-random page-aligned offsets.
fn write_memory_like(path: &Path, size: u64, data: u64) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::File::create(path)?;
    f.set_len(size)?;
    let run = 256u64 << 10;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut buf = vec![0u8; run as usize];
    for _ in 0..data / run {
        for w in buf.chunks_mut(8) {
            w.copy_from_slice(&next().to_le_bytes()[..w.len()]);
        }
        let slot = next() % (size / run);
        f.seek(SeekFrom::Start(slot * run))?;
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(())
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<(T, f64)> {
    let t = Instant::now();
    let v = f.await?;
    Ok((v, ms(t.elapsed())))
}

fn sh(cmd: &str) -> Result<f64> {
    let t = Instant::now();
    let st = std::process::Command::new("sh").arg("-c").arg(cmd).status()?;
    if !st.success() {
        bail!("baseline command failed: {cmd}");
    }
    Ok(ms(t.elapsed()))
}

/// Pushes and pulls one directory of artifacts through ateom-store, and the same bytes
/// through the baseline (`zstd -1` of each whole file + one single-stream copy each way).
async fn store_round(
    dir: &Path,
    names: &[String],
    work: &Path,
    label: &str,
) -> Result<serde_json::Map<String, Value>> {
    use ateom_store::{PullOptions, PushOptions, Store};
    let bucket = work.join(format!("bucket-{label}"));
    std::fs::create_dir_all(&bucket)?;
    let store = Store::open(&format!("file://{}", bucket.display()))?;
    let logical: u64 =
        names.iter().map(|n| std::fs::metadata(dir.join(n)).map(|m| m.len()).unwrap_or(0)).sum();

    // As ateom ships a snapshot it has just committed: the whole-file digests are in the
    // manifest and the chunk digests were computed by the commit (outside this timing, as
    // they are outside a checkpoint's push time).
    let mut opts = PushOptions::default();
    for n in names {
        let path = dir.join(n);
        opts.known_digests.insert(n.clone(), ateom_snapshot::sha256_file(&path)?.1);
        let cs = ateom_core::DIGEST_CHUNK_SIZE;
        let digests = ateom_snapshot::digest::chunk_digests(&path, cs)?;
        let digests = digests.into_iter().map(ateom_store::Digest).collect();
        opts.known_chunk_digests.insert(n.clone(), ateom_store::KnownChunks { chunk_size: cs, digests });
    }
    let (pushed, push_ms) =
        timed(async { Ok(store.push_dir_with(dir, names, "bench", json!({}), &opts).await?) }).await?;
    // The same push hashing every byte itself (a local snapshot pushed later, or files not
    // committed by ateom).
    let (_, push_hashing_ms) =
        timed(async { Ok(store.push_dir(dir, names, "bench-hashing", json!({})).await?) }).await?;
    // As a restore pulls: every fetched chunk checked against its sha256, every whole file
    // against its sha256 (zeros hashed in memory).
    let (_, pull_ms) = timed(async {
        Ok(store
            .pull_with(Some("bench"), &work.join(format!("pulled-{label}")), &PullOptions::default())
            .await?)
    })
    .await?;

    // Baseline: zstd -1 over each whole file, then one sequential copy to the "bucket"; pull
    // is the copy back plus decompression.
    let base = work.join(format!("baseline-{label}"));
    std::fs::create_dir_all(&base)?;
    let (mut bpush, mut bpull, mut bstored) = (0.0, 0.0, 0u64);
    for n in names {
        let src = dir.join(n);
        let z = base.join(format!("{n}.zst"));
        let remote = base.join(format!("{n}.zst.remote"));
        let back = base.join(format!("{n}.back.zst"));
        let restored = base.join(format!("{n}.restored"));
        bpush += sh(&format!("zstd -1 -q -f -T1 '{}' -o '{}'", src.display(), z.display()))?;
        bpush += sh(&format!("cp '{}' '{}'", z.display(), remote.display()))?;
        bstored += std::fs::metadata(&remote)?.len();
        bpull += sh(&format!("cp '{}' '{}'", remote.display(), back.display()))?;
        bpull += sh(&format!("zstd -d -q -f '{}' -o '{}'", back.display(), restored.display()))?;
    }
    let mut out = serde_json::Map::new();
    out.insert("logical_bytes".into(), json!(logical));
    out.insert("chunks".into(), json!(pushed.chunks_total));
    out.insert("zero_chunks".into(), json!(pushed.chunks_zero));
    figure(&mut out, "stored_bytes", pushed.stored_bytes as f64, bstored as f64);
    figure(&mut out, "push_ms", push_ms, bpush);
    figure(&mut out, "pull_ms", pull_ms, bpull);
    out.insert("push_hashing_ms".into(), json!(round2(push_hashing_ms)));
    let mib = logical as f64 / 1048576.0;
    out.insert("push_mib_per_s".into(), json!(round2(mib / (push_ms / 1000.0).max(1e-6))));
    out.insert("baseline_push_mib_per_s".into(), json!(round2(mib / (bpush / 1000.0).max(1e-6))));
    out.insert("pull_mib_per_s".into(), json!(round2(mib / (pull_ms / 1000.0).max(1e-6))));
    out.insert("baseline_pull_mib_per_s".into(), json!(round2(mib / (bpull / 1000.0).max(1e-6))));
    Ok(out)
}

pub async fn snapshot_store(h: &mut Harness, worker: &WorkerArgs, iterations: u32) -> Result<Value> {
    let work = tempfile::Builder::new().prefix("ateom-bench-store-").tempdir()?;
    let mut out = serde_json::Map::new();
    out.insert("benchmark".into(), json!("snapshot-store"));
    out.insert(
        "baseline".into(),
        json!("zstd -1 -T1 over each whole file + one single-stream cp (pull: cp back + zstd -d)"),
    );

    // 1. A 256 MiB memory-image-like file with 16 MiB of data.
    let mem_dir = work.path().join("memory-image");
    std::fs::create_dir_all(&mem_dir)?;
    write_memory_like(&mem_dir.join("memory"), 256 << 20, 16 << 20)?;
    out.insert(
        "memory_image_256mib".into(),
        Value::Object(store_round(&mem_dir, &["memory".to_string()], work.path(), "memory").await?),
    );

    // 2. A real gVisor snapshot of the counter.
    run_counter(h, "store-bench").await?;
    hit(h.runtime.host_endpoint()).await?;
    let (ck, _) = checkpoint_counter(h, "store-bench", None).await?;
    let snap_dir = PathBuf::from(&ck.location);
    let names: Vec<String> = ck
        .manifest
        .as_ref()
        .map(|m| m.artifacts.iter().map(|a| a.name.clone()).collect())
        .unwrap_or_default();
    out.insert(
        "gvisor_counter_snapshot".into(),
        Value::Object(store_round(&snap_dir, &names, work.path(), "gvisor").await?),
    );
    let fc_dir = work.path().join("firecracker-snapshot");
    let fc = match crate::microvm_demo::firecracker_snapshot(worker, &fc_dir).await {
        Ok(names) => Value::Object(store_round(&fc_dir, &names, work.path(), "firecracker").await?),
        Err(why) => json!({ "skipped": why }),
    };
    out.insert("firecracker_snapshot".into(), fc);

    // 3. Restore -> first answer: LOCAL on this worker vs DURABLE from file:// on a fresh node.
    let bucket = format!("file://{}", work.path().join("bucket-restore").display());
    let (mut local, mut durable) = (vec![], vec![]);
    let mut fresh_worker = worker.clone();
    fresh_worker.host_id = Some("bench-fresh-node".into());
    for i in 0..iterations.max(1) {
        let actor = format!("store-restore-{i}");
        run_counter(h, &actor).await?;
        hit(h.runtime.host_endpoint()).await?;
        checkpoint_counter(h, &actor, Some(&bucket)).await?;
        let (_, _, t) = restore_counter(h, &actor, None).await?;
        local.push(ms(t));
        checkpoint_counter(h, &actor, None).await?;
        // A brand-new worker each time: nothing cached, the snapshot is pulled.
        let mut node =
            Harness::start(&fresh_worker, None, crate::demo::ImageSource::Given(h.image.clone())).await?;
        let r = restore_counter(&mut node, &actor, Some(&bucket)).await;
        node.stop().await;
        let (resp, _, t) = r?;
        if resp.pulled_bytes == 0 {
            bail!("the fresh node did not pull the snapshot");
        }
        durable.push(ms(t));
    }
    let mut r = serde_json::Map::new();
    r.insert("iterations".into(), json!(iterations.max(1)));
    r.insert("statistic".into(), json!("median"));
    r.insert("durable_fresh_node_restore_to_first_answer_ms".into(), json!(round2(median(durable.clone()))));
    r.insert("local_restore_to_first_answer_ms".into(), json!(round2(median(local.clone()))));
    r.insert(
        "durable_over_local_ratio".into(),
        json!(((median(durable.clone()) / median(local.clone()).max(1e-6)) * 1000.0).round() / 1000.0),
    );
    r.insert("samples_ms".into(), json!({"durable_fresh_node": durable, "local": local}));
    out.insert("restore".into(), Value::Object(r));
    Ok(Value::Object(out))
}

/// `ateom bench --backend qemu`: ateom's Run/Checkpoint/Restore against the same QEMU
/// operations driven directly over QMP (same machine, kernel, disk and command line), and
/// per-workload disk preparation (sparse copy) against a full copy of the base image.
pub async fn qemu(h: &mut Harness, worker: &WorkerArgs, iterations: u32) -> Result<Value> {
    let iterations = iterations.max(1);
    run_counter(h, "bench-warmup").await?;
    let (warm, _) = checkpoint_counter(h, "bench-warmup", None).await?;
    let manifest = warm.manifest.ok_or_else(|| anyhow::anyhow!("no manifest"))?;
    let (run_s, ck_s, rs_s, bytes) = ateom_cycles(h, iterations).await?;
    // One DURABLE checkpoint: what the snapshot costs in the store.
    let bucket = tempfile::Builder::new().prefix("ateom-bench-qemu-bucket-").tempdir()?;
    run_counter(h, "bench-durable").await?;
    let (durable, _) =
        checkpoint_counter(h, "bench-durable", Some(&format!("file://{}", bucket.path().display()))).await?;

    // The baseline runs exactly ateom's machine: same disk from the cache, same kernel and
    // command line (from the snapshot's provenance).
    let base_disk = std::fs::read_dir(h.state_dir.join("cache/guest/ext4"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "ext4"))
        .ok_or_else(|| anyhow::anyhow!("no cached root disk"))?;
    let kernel = worker
        .kernel
        .clone()
        .or_else(crate::images::default_guest_kernel)
        .ok_or_else(|| anyhow::anyhow!("no kernel"))?;
    let p = &manifest.provenance;
    let accel = p["qemu.accelerator"].clone();
    let cpu = p["qemu.cpu"].clone();
    let cmdline = p["qemu.cmdline"].clone();
    let cfg = ateom_core::MicroVmConfig {
        memory_mib: p["qemu.memory_mib"].parse().ok(),
        vcpus: p["qemu.vcpus"].parse().ok(),
        network: Some(ateom_microvm::default_network()),
        ..Default::default()
    };
    let args = ateom_qemu::qemu_args(&accel, &cpu, &cfg, &kernel, &cmdline, true, 0);
    let binary =
        crate::backends::find_on_path("qemu-system-x86_64").ok_or_else(|| anyhow::anyhow!("no qemu"))?;
    let direct = DirectQemu { binary, args, prefix: format!("ateom-bq{}-", std::process::id()) };
    let work = tempfile::Builder::new().prefix("ateom-bench-qemu-direct-").tempdir()?;
    let mut base = vec![];
    let result = async {
        for i in 0..=iterations {
            let r = direct.cycle(&base_disk, &work.path().join(format!("c{i}"))).await?;
            if i > 0 {
                base.push(r);
            }
        }
        Ok::<_, anyhow::Error>(())
    }
    .await;
    for n in Netns::list_with_prefix(&direct.prefix).unwrap_or_default() {
        let _ = Netns::delete_by_name(&n);
    }
    result?;

    // Per-workload disk preparation: ateom's sparse copy vs a full copy.
    let (mut sparse, mut full) = (vec![], vec![]);
    for i in 0..iterations {
        let a = work.path().join(format!("sparse-{i}.ext4"));
        let t = Instant::now();
        ateom_microvm::copy_sparse(&base_disk, &a)?;
        sparse.push(ms(t.elapsed()));
        let b = work.path().join(format!("full-{i}.ext4"));
        full.push(sh(&format!("cp --sparse=never '{}' '{}'", base_disk.display(), b.display()))?);
    }

    let col = |k: usize| median(base.iter().map(|c: &[f64; 4]| c[k]).collect());
    let mut out = serde_json::Map::new();
    out.insert("benchmark".into(), json!("run-checkpoint-restore"));
    out.insert("backend".into(), json!("qemu"));
    out.insert("accelerator".into(), json!(accel));
    out.insert("runtime_version".into(), json!(manifest.runtime_version));
    out.insert("iterations".into(), json!(iterations));
    out.insert("statistic".into(), json!("median"));
    figure(&mut out, "run_to_ready_ms", median(run_s.clone()), col(0));
    figure(&mut out, "checkpoint_ms", median(ck_s.clone()), col(1));
    figure(&mut out, "restore_to_first_answer_ms", median(rs_s.clone()), col(2));
    figure(&mut out, "snapshot_bytes", bytes as f64, col(3));
    out.insert("durable_stored_bytes".into(), json!(durable.stored_bytes));
    figure(&mut out, "disk_prepare_ms", median(sparse.clone()), median(full.clone()));
    out.insert("base_disk_bytes".into(), json!(std::fs::metadata(&base_disk)?.len()));
    out.insert(
        "samples_ms".into(),
        json!({"run_to_ready": run_s, "checkpoint": ck_s, "restore_to_first_answer": rs_s,
               "baseline": base.iter().map(|c| json!({"boot": c[0], "checkpoint": c[1], "restore": c[2]})).collect::<Vec<_>>(),
               "disk_prepare": sparse, "baseline_disk_full_copy": full}),
    );
    Ok(Value::Object(out))
}

/// QEMU driven directly: spawn in a namespace with the tap, readiness by HTTP, QMP for the
/// snapshot. No manifest, no digests, no clock sync: the floor ateom's orchestration adds to.
struct DirectQemu {
    binary: PathBuf,
    args: Vec<String>,
    prefix: String,
}

impl DirectQemu {
    async fn spawn(&self, dir: &Path, ns: &Netns, incoming: bool) -> Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.args(&self.args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        if incoming {
            cmd.args(["-incoming", "defer", "-S"]);
        }
        ateom_net::join_netns_before_exec(&mut cmd, ns, false)?;
        let child = cmd.spawn()?;
        let sock = dir.join("qmp.sock");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !sock.exists() {
            if Instant::now() > deadline {
                bail!("baseline qemu did not start");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(child)
    }

    async fn net(&self) -> Result<(Netns, Arc<dyn Dialer>)> {
        let net = ateom_microvm::default_network();
        let ns = Netns::create(&format!("{}vm", self.prefix))?;
        ateom_net::setup_tap(
            &ns,
            &ateom_net::TapPlan {
                name: net.tap_name,
                host_ip: net.host_ip,
                prefix_len: net.prefix_len,
                vnet_hdr: true,
                owner: None,
            },
        )
        .await?;
        let d: Arc<dyn Dialer> = Arc::new(NetnsDialer::new(&ns, IpAddr::V4(net.guest_ip))?);
        Ok((ns, d))
    }

    /// boot -> ready, checkpoint, restore -> first answer; (ms, ms, ms, snapshot bytes).
    async fn cycle(&self, base_disk: &Path, dir: &Path) -> Result<[f64; 4]> {
        use ateom_qemu::qmp::Qmp;
        let probe = HttpProbe { path: "/readyz".into(), port: 8080, timeout_seconds: None };
        let caps = json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]});
        let snap = dir.join("snap");
        std::fs::create_dir_all(&snap)?;
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&run_dir)?;

        let t = Instant::now();
        ateom_microvm::copy_sparse(base_disk, &run_dir.join("rootfs.ext4"))?;
        let (ns, dialer) = self.net().await?;
        let mut child = self.spawn(&run_dir, &ns, false).await?;
        ateom_runtime::probe::wait_ready(dialer.as_ref(), &probe, Duration::from_secs(60), &|| None).await?;
        let boot = ms(t.elapsed());

        let t = Instant::now();
        let mut qmp = Qmp::connect(&run_dir.join("qmp.sock")).await?;
        qmp.execute("stop", None).await?;
        qmp.execute("migrate-set-capabilities", Some(caps.clone())).await?;
        let uri = format!("exec:cat > {}", ateom_qemu::shell_quote(&snap.join("vmstate")));
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
        qmp.wait_migration(Duration::from_secs(120)).await?;
        let _ = qmp.execute("quit", None).await;
        child.wait().await?;
        std::fs::rename(run_dir.join("memory"), snap.join("memory"))?;
        std::fs::rename(run_dir.join("rootfs.ext4"), snap.join("rootfs.ext4"))?;
        drop(dialer);
        let _ = ns.delete();
        let ck = ms(t.elapsed());
        let bytes = dir_bytes(&snap)?;

        let t = Instant::now();
        let rs_dir = dir.join("restore");
        std::fs::create_dir_all(&rs_dir)?;
        ateom_microvm::copy_sparse(&snap.join("memory"), &rs_dir.join("memory"))?;
        ateom_microvm::copy_sparse(&snap.join("rootfs.ext4"), &rs_dir.join("rootfs.ext4"))?;
        let (ns, dialer) = self.net().await?;
        let mut child = self.spawn(&rs_dir, &ns, true).await?;
        let mut qmp = Qmp::connect(&rs_dir.join("qmp.sock")).await?;
        qmp.execute("migrate-set-capabilities", Some(caps)).await?;
        let uri = format!("exec:cat {}", ateom_qemu::shell_quote(&snap.join("vmstate")));
        qmp.execute("migrate-incoming", Some(json!({ "uri": uri }))).await?;
        qmp.wait_migration(Duration::from_secs(60)).await?;
        qmp.execute("cont", None).await?;
        ateom_runtime::probe::wait_ready(dialer.as_ref(), &probe, Duration::from_secs(60), &|| None).await?;
        let rs = ms(t.elapsed());
        let _ = qmp.execute("quit", None).await;
        let _ = child.wait().await;
        drop(dialer);
        let _ = ns.delete();
        Ok([boot, ck, rs, bytes as f64])
    }
}
