//! `ateom demo` and `ateom bench`: an in-process worker driven over its real unix socket.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ateom_proto as pb;
use clap::Args;
use serde_json::{Value, json};

use crate::{WorkerArgs, backends, images};

#[derive(Args)]
pub struct DemoArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// The static counter binary to pack (default: $ATEOM_COUNTER_BIN, or the one
    /// scripts/build-counter.sh builds next to this ateom).
    #[arg(long, env = "ATEOM_COUNTER_BIN")]
    counter_bin: Option<PathBuf>,
    /// Use this image instead of packing the counter (`oci-layout:<dir>[:<tag>]`); it must
    /// behave like the counter.
    #[arg(long)]
    image: Option<String>,
    /// State directory of the demo worker (default: a fresh temporary one, removed after).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Requests before the checkpoint.
    #[arg(long, default_value_t = 3)]
    requests: u32,
    /// LOCAL restores on the same worker; DURABLE ships the snapshot to --store and restores
    /// it on a fresh worker (its own empty state dir) from the store alone.
    #[arg(long, value_enum, default_value_t = crate::client::DestinationArg::Local)]
    destination: crate::client::DestinationArg,
    /// Object-store URI prefix for DURABLE (default: a temporary file:// directory).
    #[arg(long)]
    store: Option<String>,
    /// Print one JSON object instead of a narrative.
    #[arg(long)]
    json: bool,
}

/// Which benchmark.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum BenchKind {
    /// run -> ready, checkpoint, restore -> first answer, snapshot bytes (vs direct runsc).
    Runtime,
    /// Durable snapshot store: stored bytes, push/pull throughput (vs zstd -1 + copy), and
    /// fresh-node restore vs LOCAL restore.
    SnapshotStore,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Which benchmark to run.
    #[arg(value_enum, default_value_t = BenchKind::Runtime)]
    kind: BenchKind,
    #[command(flatten)]
    worker: WorkerArgs,
    #[arg(long, env = "ATEOM_COUNTER_BIN")]
    counter_bin: Option<PathBuf>,
    /// Measured iterations of each operation (after one warm-up).
    #[arg(long, default_value_t = 5)]
    iterations: u32,
    /// Print JSON (the default output is JSON too, pretty-printed).
    #[arg(long)]
    json: bool,
}

/// Where a harness's workload image comes from.
pub enum ImageSource {
    /// Pack the static counter (this binary, or the one scripts/build-counter.sh built).
    PackCounter(Option<PathBuf>),
    /// An image reference to use as is.
    Given(String),
    /// No image: the backend boots a given guest (microVMs).
    None,
}

/// An in-process worker serving on a unix socket in a temporary directory, and a client
/// connected to it over that socket.
pub struct Harness {
    pub client: pb::AteomClient<tonic::transport::Channel>,
    pub runtime: Arc<ateom_runtime::Runtime>,
    pub state_dir: PathBuf,
    pub image: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl Harness {
    pub async fn start(worker: &WorkerArgs, state_dir: Option<PathBuf>, image: ImageSource) -> Result<Self> {
        let (tmp, state_dir) = match state_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::Builder::new().prefix("ateom-demo-").tempdir()?;
                let p = t.path().to_owned();
                (Some(t), p)
            }
        };
        let image = match image {
            ImageSource::Given(i) => i,
            ImageSource::PackCounter(bin) => images::counter_image(&state_dir.join("images"), bin)?,
            ImageSource::None => String::new(),
        };
        let runtime = Arc::new(
            backends::start_runtime(worker, &state_dir, "127.0.0.1:0".parse().expect("addr"), false).await?,
        );
        let socket = state_dir.join("ateom.sock");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = runtime.clone();
        let sock = socket.clone();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = ateom_grpc::serve_unix(&sock, rt, shutdown).await {
                tracing::error!(error = %e, "demo server");
            }
        });
        let mut client = None;
        for _ in 0..200 {
            if socket.exists()
                && let Ok(c) = ateom_grpc::connect_unix(&socket).await
            {
                client = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client =
            client.ok_or_else(|| anyhow!("the demo worker did not come up on {}", socket.display()))?;
        Ok(Self { client, runtime, state_dir, image, stop: Some(stop), server: Some(server), _tmp: tmp })
    }

    pub async fn stop(mut self) {
        self.runtime.shutdown(ateom_runtime::OnExit::Stop).await;
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(h) = self.server.take() {
            let _ = h.await;
        }
    }

    pub fn spec(&self) -> pb::WorkloadSpec {
        counter_spec(&self.image)
    }
}

pub fn counter_spec(image: &str) -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        containers: vec![pb::Container {
            name: "counter".into(),
            readyz: Some(pb::Readyz {
                http_get: Some(pb::HttpGetAction { path: "/readyz".into(), port: 8080 }),
                timeout_seconds: 0,
            }),
            image: image.to_owned(),
            ..Default::default()
        }],
    }
}

/// One answer of the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub memory: u64,
    pub file: u64,
    pub file_sha256: String,
}

/// `GET /` through ateom's host endpoint.
pub async fn hit(endpoint: SocketAddr) -> Result<Count> {
    let mut s =
        tokio::net::TcpStream::connect(endpoint).await.with_context(|| format!("connecting {endpoint}"))?;
    let (status, body) = ateom_runtime::probe::http_get(&mut s, &endpoint.to_string(), "/").await?;
    if status != 200 {
        bail!("counter answered HTTP {status}: {}", String::from_utf8_lossy(&body));
    }
    let v: Value = serde_json::from_slice(&body)
        .with_context(|| format!("counter body {:?}", String::from_utf8_lossy(&body)))?;
    let num = |k: &str| v[k].as_u64().ok_or_else(|| anyhow!("counter body lacks {k}: {v}"));
    Ok(Count {
        memory: num("memory_count")?,
        file: num("file_count")?,
        file_sha256: v["file_sha256"].as_str().unwrap_or_default().to_owned(),
    })
}

fn actor_req(actor: &str) -> (String, String, String) {
    ("demo".into(), "counter".into(), actor.into())
}

fn status(what: &'static str) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |s| anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

impl Harness {
    /// RunWorkload for `actor` (namespace `demo`, template `counter`), timed.
    pub async fn run(
        &mut self,
        actor: &str,
        spec: pb::WorkloadSpec,
    ) -> Result<(pb::RunWorkloadResponse, Duration)> {
        let (ns, tpl, id) = actor_req(actor);
        let t = Instant::now();
        let req = pb::RunWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            spec: Some(spec),
            ..Default::default()
        };
        let r = self.client.run_workload(req).await.map_err(status("RunWorkload"))?.into_inner();
        Ok((r, t.elapsed()))
    }

    /// CheckpointWorkload (DURABLE to `store` when given), timed.
    pub async fn checkpoint(
        &mut self,
        actor: &str,
        store: Option<&str>,
    ) -> Result<(pb::CheckpointWorkloadResponse, Duration)> {
        let (ns, tpl, id) = actor_req(actor);
        let t = Instant::now();
        let req = pb::CheckpointWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            snapshot_uri_prefix: store.unwrap_or_default().to_owned(),
            destination: if store.is_some() {
                pb::SnapshotDestination::Durable
            } else {
                pb::SnapshotDestination::Local
            } as i32,
            ..Default::default()
        };
        let r =
            self.client.checkpoint_workload(req).await.map_err(status("CheckpointWorkload"))?.into_inner();
        Ok((r, t.elapsed()))
    }

    /// RestoreWorkload of the newest snapshot (under `store` when given); the start instant
    /// is returned so callers can time up to their first answer.
    pub async fn restore(
        &mut self,
        actor: &str,
        store: Option<&str>,
    ) -> Result<(pb::RestoreWorkloadResponse, Instant)> {
        let (ns, tpl, id) = actor_req(actor);
        let t = Instant::now();
        let req = pb::RestoreWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            snapshot_uri_prefix: store.unwrap_or_default().to_owned(),
            ..Default::default()
        };
        let r = self.client.restore_workload(req).await.map_err(status("RestoreWorkload"))?.into_inner();
        Ok((r, t))
    }
}

pub async fn run_counter(h: &mut Harness, actor: &str) -> Result<(pb::RunWorkloadResponse, Duration)> {
    let spec = h.spec();
    h.run(actor, spec).await
}

pub async fn checkpoint_counter(
    h: &mut Harness,
    actor: &str,
    store: Option<&str>,
) -> Result<(pb::CheckpointWorkloadResponse, Duration)> {
    h.checkpoint(actor, store).await
}

/// Restores and makes the first request; returns the response, the first answer and the
/// time from the restore request to that answer.
pub async fn restore_counter(
    h: &mut Harness,
    actor: &str,
    store: Option<&str>,
) -> Result<(pb::RestoreWorkloadResponse, Count, Duration)> {
    let (r, t) = h.restore(actor, store).await?;
    let endpoint: SocketAddr = r.host_endpoint.parse()?;
    let first = hit(endpoint).await?;
    Ok((r, first, t.elapsed()))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// The qemu backend boots OCI images as Linux guests: it needs ateom's guest kernel and
/// guest init. Given ones are used; otherwise the built ones, or they are built now through
/// the scripts (progress on stderr; cached), the first time a demo or benchmark needs them.
fn with_guest_files(worker: &WorkerArgs) -> Result<WorkerArgs> {
    let mut w = worker.clone();
    if w.backend == crate::BackendKind::Qemu {
        use crate::images::{GuestAsset, ensure_guest_asset};
        w.kernel = Some(ensure_guest_asset(GuestAsset::Kernel, w.kernel.as_deref())?);
        w.guest_init = Some(ensure_guest_asset(GuestAsset::Init, w.guest_init.as_deref())?);
    }
    Ok(w)
}

pub async fn demo(a: DemoArgs) -> Result<()> {
    let say = |s: String| {
        if !a.json {
            eprintln!("{s}");
        }
    };
    let durable = matches!(a.destination, crate::client::DestinationArg::Durable);
    // The durable demo's default bucket: a directory standing in for object storage.
    let bucket_tmp = tempfile::Builder::new().prefix("ateom-demo-bucket-").tempdir()?;
    let store = match (&a.store, durable) {
        (Some(s), _) => Some(s.clone()),
        (None, true) => Some(format!("file://{}", bucket_tmp.path().display())),
        (None, false) => None,
    };
    if !durable && store.is_some() {
        bail!("--store is for --destination durable");
    }
    if a.worker.backend == crate::BackendKind::Firecracker {
        return crate::microvm_demo::demo(&a.worker, a.state_dir.clone(), a.requests, a.json).await;
    }
    let source = match a.image.clone() {
        Some(i) => ImageSource::Given(i),
        None => ImageSource::PackCounter(a.counter_bin.clone()),
    };
    let worker = with_guest_files(&a.worker)?;
    let a = DemoArgs { worker, ..a };
    let mut h = Harness::start(&a.worker, a.state_dir.clone(), source).await?;
    let mut fresh: Option<Harness> = None;
    let result = async {
        let caps = h.client.get_capabilities(pb::GetCapabilitiesRequest {}).await?.into_inner();
        let accelerator = caps.capabilities.map(|c| c.accelerator).unwrap_or_default();
        say(format!(
            "worker: {} backend ({accelerator}), state in {}",
            a.worker.backend.name(),
            h.state_dir.display()
        ));
        say(format!("image:  {}", h.image));
        let (run, run_ms) = run_counter(&mut h, "demo-1").await?;
        let endpoint: SocketAddr = run.host_endpoint.parse()?;
        say(format!(
            "run:    ready in {:.1} ms, serving at http://{endpoint}/ (inside: {})",
            ms(run_ms),
            run.workload_address
        ));
        let mut before = None;
        for _ in 0..a.requests {
            let c = hit(endpoint).await?;
            say(format!("        GET / -> memory_count={} file_count={}", c.memory, c.file));
            before = Some(c);
        }
        let before = before.ok_or_else(|| anyhow!("--requests must be at least 1"))?;
        let (ck, ck_ms) = checkpoint_counter(&mut h, "demo-1", store.as_deref()).await?;
        let m = ck.manifest.clone().unwrap_or_default();
        let bytes: u64 = m.artifacts.iter().map(|x| x.size).sum();
        say(format!(
            "checkpoint: {} ({} bytes, {} artifacts) in {:.1} ms; the sandbox is gone",
            m.snapshot_id,
            bytes,
            m.artifacts.len(),
            ms(ck_ms)
        ));
        if durable {
            say(format!(
                "            shipped to {} ({} bytes stored, push {} ms)",
                ck.location, ck.stored_bytes, ck.push_ms
            ));
        }
        let idle = h.client.get_capabilities(pb::GetCapabilitiesRequest {}).await?.into_inner();
        if !idle.running_actor.is_empty() {
            bail!("worker still reports {} running after the checkpoint", idle.running_actor);
        }
        // DURABLE: restore on a fresh node (a second worker with its own, empty state dir,
        // which has never seen the actor), from the object store alone.
        let (r, after, restore_ms) = if durable {
            let mut worker = a.worker.clone();
            worker.host_id = Some("demo-fresh-node".into());
            let node = Harness::start(&worker, None, ImageSource::Given(h.image.clone())).await?;
            say(format!("fresh node: state in {}", node.state_dir.display()));
            let node = fresh.insert(node);
            restore_counter(node, "demo-1", store.as_deref()).await?
        } else {
            restore_counter(&mut h, "demo-1", None).await?
        };
        say(format!(
            "restore: first answer after {:.1} ms -> memory_count={} file_count={}{}",
            ms(restore_ms),
            after.memory,
            after.file,
            if durable {
                format!(" (pulled {} bytes in {} ms)", r.pulled_bytes, r.pull_ms)
            } else {
                String::new()
            }
        ));
        let continuity = after.memory == before.memory + 1
            && after.file == before.file + 1
            && after.file_sha256 == before.file_sha256;
        say(format!(
            "continuity: {}",
            if continuity { "ok (state continued exactly where it stopped)" } else { "BROKEN" }
        ));
        let mut out = json!({
            "backend": a.worker.backend.name(),
            "accelerator": accelerator,
            "destination": if durable { "durable" } else { "local" },
            "image": h.image,
            "memory_count_before_checkpoint": before.memory,
            "memory_count_after_restore": after.memory,
            "file_count_before_checkpoint": before.file,
            "file_count_after_restore": after.file,
            "file_hash_before": before.file_sha256,
            "file_hash_after": after.file_sha256,
            "continuity_ok": continuity,
            "run_to_ready_ms": ms(run_ms),
            "checkpoint_ms": ms(ck_ms),
            "restore_to_first_answer_ms": ms(restore_ms),
            "snapshot_bytes": bytes,
            "snapshot_id": m.snapshot_id,
            "runtime_version": m.runtime_version,
        });
        if durable {
            out["store"] = json!(store);
            out["location"] = json!(ck.location);
            out["stored_bytes"] = json!(ck.stored_bytes);
            out["push_ms"] = json!(ck.push_ms);
            out["pull_ms"] = json!(r.pull_ms);
            out["pulled_bytes"] = json!(r.pulled_bytes);
            out["fresh_node_restore"] = json!(true);
        }
        if !continuity {
            bail!("state did not continue: {out}");
        }
        Ok::<_, anyhow::Error>(out)
    }
    .await;
    if let Some(node) = fresh {
        node.stop().await;
    }
    h.stop().await;
    let out = result?;
    if a.json {
        println!("{out}");
    }
    Ok(())
}

pub async fn bench(a: BenchArgs) -> Result<()> {
    if a.worker.backend == crate::BackendKind::Firecracker {
        let out = crate::microvm_demo::bench(&a.worker, a.iterations).await?;
        if a.json {
            println!("{out}");
        } else {
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        return Ok(());
    }
    let worker = with_guest_files(&a.worker)?;
    let a = BenchArgs { worker, ..a };
    let mut h = Harness::start(&a.worker, None, ImageSource::PackCounter(a.counter_bin.clone())).await?;
    let result = match a.kind {
        BenchKind::Runtime if a.worker.backend == crate::BackendKind::Qemu => {
            crate::bench::qemu(&mut h, &a.worker, a.iterations).await
        }
        BenchKind::Runtime => crate::bench::gvisor(&mut h, &a.worker, a.iterations).await,
        BenchKind::SnapshotStore => crate::bench::snapshot_store(&mut h, &a.worker, a.iterations).await,
    };
    h.stop().await;
    let out = result?;
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
