//! `ateom demo|bench --backend firecracker`: the microVM path with the real VMM.
//!
//! Where a stock Linux guest cannot boot (no hardware virtualisation, e.g. a kvm-pvm host)
//! the demo uses the project's freestanding counter guest (guest/freestanding/counter.S),
//! driven over the serial console; the JSON says which guest ran.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ateom_proto as pb;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::WorkerArgs;
use crate::demo::{Harness, ImageSource};

/// The freestanding counter guest: --kernel, or the one scripts/build-test-guest.sh built
/// (built now if this binary runs from a checkout that has none yet).
fn test_guest(worker: &WorkerArgs) -> Result<PathBuf> {
    crate::images::ensure_guest_asset(crate::images::GuestAsset::TestGuest, worker.kernel.as_deref())
}

/// A connection to a VM's serial console that sends one byte and reads the counter line.
struct ConsoleCounter {
    lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl ConsoleCounter {
    async fn connect(console: &str) -> Result<Self> {
        if console.is_empty() {
            return Err(anyhow!("no serial console reported"));
        }
        let stream =
            ateom_microvm::console::connect(console).await.with_context(|| format!("console {console}"))?;
        let (r, w) = stream.into_split();
        // No wait needed: the hub registers a client before it reads anything from it, so
        // the guest's answer to our first byte always reaches us.
        Ok(Self { lines: BufReader::new(r).lines(), w })
    }

    async fn next(&mut self) -> Result<u64> {
        self.w.write_all(b"x").await?;
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("the guest did not answer on its console"))??
            .ok_or_else(|| anyhow!("the console closed"))?;
        line.trim().parse().with_context(|| format!("console line {line:?}"))
    }
}

fn guest_spec() -> pb::WorkloadSpec {
    pb::WorkloadSpec { containers: vec![pb::Container { name: "guest".into(), ..Default::default() }] }
}

async fn run(h: &mut Harness, id: &str) -> Result<(pb::RunWorkloadResponse, Duration)> {
    h.run(id, guest_spec()).await
}

async fn checkpoint(
    h: &mut Harness,
    id: &str,
    store: Option<&str>,
) -> Result<(pb::CheckpointWorkloadResponse, Duration)> {
    h.checkpoint(id, store).await
}

/// Restore, then one console round trip: the time to the first answer.
async fn restore(h: &mut Harness, id: &str) -> Result<(u64, Duration)> {
    let (r, t) = h.restore(id, None).await?;
    let mut console = ConsoleCounter::connect(&r.console).await?;
    let n = console.next().await?;
    Ok((n, t.elapsed()))
}

fn worker_for_guest(worker: &WorkerArgs) -> Result<WorkerArgs> {
    let mut w = worker.clone();
    w.kernel = Some(test_guest(worker)?);
    w.ready_console_line = Some(worker.ready_console_line.clone().unwrap_or_else(|| "READY".into()));
    Ok(w)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}

pub async fn demo(
    worker: &WorkerArgs,
    state_dir: Option<PathBuf>,
    requests: u32,
    json_out: bool,
) -> Result<()> {
    let say = |s: String| {
        if !json_out {
            eprintln!("{s}");
        }
    };
    let kvm = ateom_microvm::kvm();
    if !kvm.boots_linux() {
        say(format!(
            "note: /dev/kvm is {}: stock Linux guests cannot boot here, so the demo runs the freestanding counter guest",
            kvm.name()
        ));
    }
    let w = worker_for_guest(worker)?;
    let mut h = Harness::start(&w, state_dir, ImageSource::None).await?;
    let result = async {
        say(format!("worker: firecracker backend, state in {}", h.state_dir.display()));
        let (r, run_ms) = run(&mut h, "vm-1").await?;
        say(format!("run:    booted and READY in {:.1} ms; console at {}", ms(run_ms), r.console));
        let mut console = ConsoleCounter::connect(&r.console).await?;
        let mut before = 0;
        for _ in 0..requests.max(1) {
            before = console.next().await?;
            say(format!("        console byte -> counter {before}"));
        }
        drop(console);
        let (ck, ck_ms) = checkpoint(&mut h, "vm-1", None).await?;
        let m = ck.manifest.clone().unwrap_or_default();
        let bytes: u64 = m.artifacts.iter().map(|a| a.size).sum();
        say(format!(
            "checkpoint: {} ({bytes} bytes: vmstate + guest RAM) in {:.1} ms; the VMM is gone",
            m.snapshot_id,
            ms(ck_ms)
        ));
        let (after, restore_ms) = restore(&mut h, "vm-1").await?;
        say(format!("restore: a new firecracker process answered {after} after {:.1} ms", ms(restore_ms)));
        let continuity = after == before + 1;
        say(format!(
            "continuity: {}",
            if continuity { "ok (the counter in guest RAM continued)" } else { "BROKEN" }
        ));
        let out = json!({
            "backend": "firecracker",
            "guest": "freestanding",
            "accelerator": kvm.name(),
            "memory_count_before_checkpoint": before,
            "memory_count_after_restore": after,
            "file_count_before_checkpoint": Value::Null,
            "file_count_after_restore": Value::Null,
            "file_hash_before": Value::Null,
            "file_hash_after": Value::Null,
            "continuity_ok": continuity,
            "run_to_ready_ms": ms(run_ms),
            "checkpoint_ms": ms(ck_ms),
            "restore_to_first_answer_ms": ms(restore_ms),
            "snapshot_bytes": bytes,
            "snapshot_id": m.snapshot_id,
            "runtime_version": m.runtime_version,
        });
        if !continuity {
            bail!("state did not continue: {out}");
        }
        Ok(out)
    }
    .await;
    h.stop().await;
    let out = result?;
    if json_out {
        println!("{out}");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn figure(out: &mut serde_json::Map<String, Value>, name: &str, ours: f64, baseline: f64) {
    out.insert(name.into(), json!((ours * 100.0).round() / 100.0));
    out.insert(format!("baseline_{name}"), json!((baseline * 100.0).round() / 100.0));
    let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
    out.insert(format!("{name}_ratio"), json!((ratio * 1000.0).round() / 1000.0));
}

/// The baseline: firecracker driven directly through its API (no namespace, no manifest,
/// no verification), the serial console read straight from its stdout.
struct Direct {
    child: tokio::process::Child,
    api: ateom_firecracker::api::Client,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Direct {
    async fn spawn(bin: &std::path::Path, dir: &std::path::Path) -> Result<Self> {
        let sock = dir.join("fc.sock");
        let _ = std::fs::remove_file(&sock);
        let mut child = tokio::process::Command::new(bin)
            .arg("--api-sock")
            .arg(&sock)
            .args(["--level", "Error"])
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().expect("stdin");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let api = ateom_firecracker::api::Client::new(&sock);
        let deadline = Instant::now() + Duration::from_secs(5);
        while api.instance_info().await.is_err() {
            if Instant::now() > deadline {
                bail!("baseline firecracker API never answered");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(Self { child, api, stdin, lines })
    }

    async fn line(&mut self) -> Result<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .map_err(|_| anyhow!("baseline guest silent"))??
            .ok_or_else(|| anyhow!("baseline console closed"))
    }

    async fn next(&mut self) -> Result<u64> {
        self.stdin.write_all(b"x").await?;
        self.stdin.flush().await?;
        Ok(self.line().await?.trim().parse()?)
    }
}

/// One direct cycle: boot -> READY, 1 byte, pause + Full snapshot, kill, new VMM, load +
/// resume -> first answer. Returns (boot, checkpoint, create, restore, load) ms and bytes.
async fn direct_cycle(
    bin: &std::path::Path,
    guest: &std::path::Path,
    mem: u32,
    dir: &std::path::Path,
) -> Result<[f64; 6]> {
    use ateom_firecracker::api::*;
    std::fs::create_dir_all(dir)?;
    let t = Instant::now();
    let mut vm = Direct::spawn(bin, dir).await?;
    vm.api
        .boot_source(&BootSource { kernel_image_path: guest.display().to_string(), boot_args: None })
        .await?;
    vm.api.machine_config(&MachineConfig { vcpu_count: 1, mem_size_mib: mem, cpu_template: None }).await?;
    vm.api.start().await?;
    while !vm.line().await?.contains("READY") {}
    let boot = ms(t.elapsed());
    vm.next().await?;
    let t = Instant::now();
    vm.api.pause().await?;
    let tc = Instant::now();
    vm.api
        .create_snapshot(
            &SnapshotCreate {
                snapshot_type: "Full",
                snapshot_path: dir.join("vmstate").display().to_string(),
                mem_file_path: dir.join("memory").display().to_string(),
            },
            mem,
        )
        .await?;
    let create = ms(tc.elapsed());
    vm.child.kill().await?;
    let ck = ms(t.elapsed());
    let bytes =
        (std::fs::metadata(dir.join("vmstate"))?.len() + std::fs::metadata(dir.join("memory"))?.len()) as f64;
    let t = Instant::now();
    let mut vm = Direct::spawn(bin, dir).await?;
    let tl = Instant::now();
    vm.api
        .load_snapshot(&SnapshotLoad {
            snapshot_path: dir.join("vmstate").display().to_string(),
            mem_backend: MemBackend {
                backend_type: "File",
                backend_path: dir.join("memory").display().to_string(),
            },
            resume_vm: true,
        })
        .await?;
    let load = ms(tl.elapsed());
    vm.next().await?;
    let rs = ms(t.elapsed());
    vm.child.kill().await?;
    Ok([boot, ck, create, rs, load, bytes])
}

pub async fn bench(worker: &WorkerArgs, iterations: u32) -> Result<Value> {
    let w = worker_for_guest(worker)?;
    let guest = w.kernel.clone().expect("set");
    let bin = match &w.firecracker {
        Some(b) => b.clone(),
        None => {
            crate::backends::find_on_path("firecracker").ok_or_else(|| anyhow!("no firecracker binary"))?
        }
    };
    let iterations = iterations.max(1);
    let mut h = Harness::start(&w, None, ImageSource::None).await?;
    let bucket = tempfile::Builder::new().prefix("ateom-bench-fc-bucket-").tempdir()?;
    let store = format!("file://{}", bucket.path().display());
    let result = async {
        // Warm-up of both, then the measured iterations: each one an ateom cycle followed by
        // a direct cycle, so that drift of this shared machine (page cache, other load)
        // affects both sides alike.
        let work = tempfile::Builder::new().prefix("ateom-bench-fc-direct-").tempdir()?;
        let mem = w.memory_mib;
        run(&mut h, "bench-warmup").await?;
        checkpoint(&mut h, "bench-warmup", None).await?;
        direct_cycle(&bin, &guest, mem, &work.path().join("warmup")).await?;
        let (mut runs, mut cks, mut rss, mut bytes) = (vec![], vec![], vec![], 0u64);
        let mut base: Vec<[f64; 6]> = vec![];
        for i in 0..iterations {
            let id = format!("bench-{i}");
            let (r, t) = run(&mut h, &id).await?;
            runs.push(ms(t));
            ConsoleCounter::connect(&r.console).await?.next().await?;
            let (ck, t) = checkpoint(&mut h, &id, None).await?;
            cks.push(ms(t));
            bytes = ck.manifest.map(|m| m.artifacts.iter().map(|a| a.size).sum()).unwrap_or(0);
            let (_, t) = restore(&mut h, &id).await?;
            rss.push(ms(t));
            checkpoint(&mut h, &id, None).await?;
            base.push(direct_cycle(&bin, &guest, mem, &work.path().join(format!("c{i}"))).await?);
        }
        // One DURABLE checkpoint: what the mostly-zero memory file costs in the store.
        run(&mut h, "bench-durable").await?;
        let (durable, _) = checkpoint(&mut h, "bench-durable", Some(&store)).await?;
        let col = |k: usize| median(base.iter().map(|c| c[k]).collect());
        let mut out = serde_json::Map::new();
        out.insert("benchmark".into(), json!("run-checkpoint-restore"));
        out.insert("backend".into(), json!("firecracker"));
        out.insert("guest".into(), json!("freestanding"));
        out.insert("accelerator".into(), json!(ateom_microvm::kvm().name()));
        out.insert("runtime_version".into(), json!(h.runtime.info().runtime_version));
        out.insert("guest_memory_mib".into(), json!(mem));
        out.insert("iterations".into(), json!(iterations));
        out.insert("statistic".into(), json!("median"));
        figure(&mut out, "run_to_ready_ms", median(runs.clone()), col(0));
        figure(&mut out, "checkpoint_ms", median(cks.clone()), col(1));
        figure(&mut out, "restore_to_first_answer_ms", median(rss.clone()), col(3));
        figure(&mut out, "snapshot_bytes", bytes as f64, col(5));
        out.insert("baseline_snapshot_create_ms".into(), json!(col(2)));
        out.insert("baseline_snapshot_load_ms".into(), json!(col(4)));
        out.insert("local_memory_file_bytes".into(), json!(u64::from(mem) << 20));
        out.insert("durable_stored_bytes".into(), json!(durable.stored_bytes));
        out.insert("durable_push_ms".into(), json!(durable.push_ms));
        out.insert(
            "samples_ms".into(),
            json!({"run_to_ready": runs, "checkpoint": cks, "restore_to_first_answer": rss,
                   "baseline": base.iter().map(|c| json!({"boot": c[0], "checkpoint": c[1], "create": c[2], "restore": c[3], "load": c[4]})).collect::<Vec<_>>()}),
        );
        Ok(Value::Object(out))
    }
    .await;
    h.stop().await;
    result
}

/// A real Firecracker snapshot of the freestanding guest in `dir` (for the snapshot-store
/// benchmark): boot, one console byte, pause, Full snapshot. Returns its artifact names, or
/// why there is none here.
pub async fn firecracker_snapshot(worker: &WorkerArgs, dir: &std::path::Path) -> Result<Vec<String>, String> {
    use ateom_firecracker::api::*;
    let bin = worker
        .firecracker
        .clone()
        .or_else(|| crate::backends::find_on_path("firecracker"))
        .ok_or("no firecracker binary (ATEOM_FIRECRACKER_BIN or PATH)")?;
    let guest = test_guest(worker).map_err(|e| e.to_string())?;
    let run = async {
        std::fs::create_dir_all(dir)?;
        let mut vm = Direct::spawn(&bin, dir).await?;
        vm.api
            .boot_source(&BootSource { kernel_image_path: guest.display().to_string(), boot_args: None })
            .await?;
        vm.api
            .machine_config(&MachineConfig {
                vcpu_count: 1,
                mem_size_mib: worker.memory_mib,
                cpu_template: None,
            })
            .await?;
        vm.api.start().await?;
        while !vm.line().await?.contains("READY") {}
        vm.next().await?;
        vm.api.pause().await?;
        let create = SnapshotCreate {
            snapshot_type: "Full",
            snapshot_path: dir.join("vmstate").display().to_string(),
            mem_file_path: dir.join("memory").display().to_string(),
        };
        vm.api.create_snapshot(&create, worker.memory_mib).await?;
        vm.child.kill().await?;
        Ok::<_, anyhow::Error>(())
    };
    run.await.map_err(|e| e.to_string())?;
    Ok(vec!["memory".into(), "vmstate".into()])
}
