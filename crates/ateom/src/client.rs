//! `ateom run|checkpoint|restore|delete|caps`: a client of a worker's unix socket.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use ateom_proto as pb;
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

/// Which worker and which actor.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The worker's unix socket.
    #[arg(long, env = "ATEOM_SOCKET")]
    pub socket: PathBuf,
    /// Actor template namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Actor template name.
    #[arg(long, default_value = "standalone")]
    pub template: String,
    /// Actor id.
    #[arg(long)]
    pub actor: String,
    /// Print the response as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What to run (one container).
#[derive(Args, Clone, Debug, Default)]
pub struct ContainerArgs {
    /// Container name.
    #[arg(long, default_value = "main")]
    pub container: String,
    /// Image reference, `oci-layout:<dir>[:<tag>]`. Without it the worker uses the node
    /// agent's bundle under its state dir.
    #[arg(long)]
    pub image: Option<String>,
    /// Port of the readiness probe, which is also the port ateom forwards to.
    #[arg(long)]
    pub port: Option<i32>,
    /// Path of the readiness probe.
    #[arg(long, default_value = "/readyz")]
    pub readyz_path: String,
    /// Replace the image's entrypoint (repeat for several words).
    #[arg(long = "command")]
    pub command: Vec<String>,
    /// Replace the image's cmd (repeat for several words).
    #[arg(long = "arg")]
    pub args: Vec<String>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

impl ContainerArgs {
    pub fn spec(&self) -> pb::WorkloadSpec {
        pb::WorkloadSpec {
            containers: vec![pb::Container {
                name: self.container.clone(),
                readyz: self.port.map(|port| pb::Readyz {
                    http_get: Some(pb::HttpGetAction { path: self.readyz_path.clone(), port }),
                    timeout_seconds: 0,
                }),
                durable_dir_volumes: vec![],
                image: self.image.clone().unwrap_or_default(),
                command: self.command.clone(),
                args: self.args.clone(),
                env: self.env.iter().cloned().collect::<HashMap<_, _>>(),
            }],
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    container: ContainerArgs,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DestinationArg {
    Local,
    Durable,
}

#[derive(Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    target: Target,
    /// LOCAL keeps the snapshot on the worker; DURABLE ships it to --store.
    /// Default: DURABLE when --store is given, else LOCAL.
    #[arg(long, value_enum)]
    destination: Option<DestinationArg>,
    /// Object-store URI prefix (file:///dir, s3://bucket/prefix, gs://..., az://...).
    #[arg(long)]
    store: Option<String>,
}

#[derive(Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    target: Target,
    /// Restore this snapshot (default: the actor's newest).
    #[arg(long)]
    snapshot_id: Option<String>,
    /// Fetch the snapshot from this object-store URI prefix if it is not on the worker.
    #[arg(long)]
    store: Option<String>,
    /// Override the workload recorded in the snapshot (normally not needed).
    #[command(flatten)]
    container: ContainerArgs,
}

#[derive(Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    target: Target,
    /// Only stop the running workload; keep the actor's local snapshots.
    #[arg(long)]
    keep_snapshots: bool,
}

#[derive(Args)]
pub struct CapsArgs {
    /// The worker's unix socket.
    #[arg(long, env = "ATEOM_SOCKET")]
    socket: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn connect(socket: &std::path::Path) -> Result<pb::AteomClient<tonic::transport::Channel>> {
    ateom_grpc::connect_unix(socket).await.with_context(|| {
        format!("connecting to the worker at {} (is `ateom serve` running?)", socket.display())
    })
}

pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn print(json_out: bool, value: Value, human: String) {
    if json_out {
        println!("{value}");
    } else {
        println!("{human}");
    }
}

pub fn started_json(ready_ms: u64, workload: &str, endpoint: &str, console: &str) -> Value {
    json!({ "ready": true, "ready_ms": ready_ms, "workload_address": workload, "host_endpoint": endpoint, "console": console })
}

pub async fn run(a: RunArgs) -> Result<()> {
    let mut c = connect(&a.target.socket).await?;
    let req = pb::RunWorkloadRequest {
        actor_template_namespace: a.target.namespace.clone(),
        actor_template_name: a.target.template.clone(),
        actor_id: a.target.actor.clone(),
        spec: Some(a.container.spec()),
        ..Default::default()
    };
    let r = c.run_workload(req).await.map_err(status_error)?.into_inner();
    print(
        a.target.json,
        started_json(r.ready_ms, &r.workload_address, &r.host_endpoint, &r.console),
        format!(
            "ready in {} ms; reach it at http://{}/ (inside: {})",
            r.ready_ms, r.host_endpoint, r.workload_address
        ),
    );
    Ok(())
}

pub fn manifest_json(m: &pb::SnapshotManifest) -> Value {
    json!({
        "snapshot_id": m.snapshot_id,
        "format_version": m.format_version,
        "actor": m.actor,
        "created_at": m.created_at,
        "backend": m.backend,
        "runtime_version": m.runtime_version,
        "kernel_id": m.kernel_id,
        "cpu_template": m.cpu_template,
        "cpu_model": m.cpu_model,
        "image_digests": m.image_digests,
        "provenance": m.provenance,
        "artifacts": m.artifacts.iter().map(|a| json!({"name": a.name, "size": a.size, "sha256": a.sha256})).collect::<Vec<_>>(),
    })
}

pub async fn checkpoint(a: CheckpointArgs) -> Result<()> {
    let destination = match (a.destination, &a.store) {
        (Some(DestinationArg::Durable), None) => bail!("--destination durable needs --store URI"),
        (Some(DestinationArg::Local), _) => pb::SnapshotDestination::Local,
        (Some(DestinationArg::Durable), Some(_)) => pb::SnapshotDestination::Durable,
        // Always explicit: a request with none of ateom's fields follows substrate's node-agent
        // convention (the node agent ships the files itself).
        (None, Some(_)) => pb::SnapshotDestination::Durable,
        (None, None) => pb::SnapshotDestination::Local,
    };
    let mut c = connect(&a.target.socket).await?;
    let req = pb::CheckpointWorkloadRequest {
        actor_template_namespace: a.target.namespace.clone(),
        actor_template_name: a.target.template.clone(),
        actor_id: a.target.actor.clone(),
        snapshot_uri_prefix: a.store.clone().unwrap_or_default(),
        destination: destination as i32,
        ..Default::default()
    };
    let r = c.checkpoint_workload(req).await.map_err(status_error)?.into_inner();
    let m = r.manifest.clone().unwrap_or_default();
    let bytes: u64 = m.artifacts.iter().map(|x| x.size).sum();
    print(
        a.target.json,
        json!({
            "snapshot_id": m.snapshot_id,
            "location": r.location,
            "checkpoint_ms": r.checkpoint_ms,
            "snapshot_bytes": bytes,
            "stored_bytes": r.stored_bytes,
            "push_ms": r.push_ms,
            "snapshot_files": r.snapshot_files,
            "manifest": manifest_json(&m),
        }),
        format!("snapshot {} ({} bytes) in {} ms at {}", m.snapshot_id, bytes, r.checkpoint_ms, r.location),
    );
    Ok(())
}

pub async fn restore(a: RestoreArgs) -> Result<()> {
    let mut c = connect(&a.target.socket).await?;
    let spec = if a.container.image.is_some() || a.container.port.is_some() {
        Some(a.container.spec())
    } else {
        None
    };
    let req = pb::RestoreWorkloadRequest {
        actor_template_namespace: a.target.namespace.clone(),
        actor_template_name: a.target.template.clone(),
        actor_id: a.target.actor.clone(),
        spec,
        snapshot_uri_prefix: a.store.clone().unwrap_or_default(),
        snapshot_id: a.snapshot_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    let r = c.restore_workload(req).await.map_err(status_error)?.into_inner();
    let mut v = started_json(r.ready_ms, &r.workload_address, &r.host_endpoint, &r.console);
    v["snapshot_id"] = json!(r.snapshot_id);
    v["pulled_bytes"] = json!(r.pulled_bytes);
    v["pull_ms"] = json!(r.pull_ms);
    print(
        a.target.json,
        v,
        format!(
            "restored {} and ready in {} ms; reach it at http://{}/",
            r.snapshot_id, r.ready_ms, r.host_endpoint
        ),
    );
    Ok(())
}

pub async fn delete(a: DeleteArgs) -> Result<()> {
    let mut c = connect(&a.target.socket).await?;
    let req = pb::DeleteWorkloadRequest {
        actor_template_namespace: a.target.namespace.clone(),
        actor_template_name: a.target.template.clone(),
        actor_id: a.target.actor.clone(),
        keep_snapshots: a.keep_snapshots,
    };
    let r = c.delete_workload(req).await.map_err(status_error)?.into_inner();
    let stopped = if r.stopped { "stopped its running workload" } else { "nothing was running" };
    print(
        a.target.json,
        json!({
            "stopped": r.stopped,
            "deleted_snapshot_ids": r.deleted_snapshot_ids,
            "freed_bytes": r.freed_bytes,
        }),
        format!(
            "deleted actor {}: {stopped}; {} local snapshot(s) removed, {} bytes freed",
            a.target.actor,
            r.deleted_snapshot_ids.len(),
            r.freed_bytes
        ),
    );
    Ok(())
}

pub fn caps_json(r: &pb::GetCapabilitiesResponse) -> Value {
    let c = r.capabilities.clone().unwrap_or_default();
    let h = r.host.clone().unwrap_or_default();
    json!({
        "backend": r.backend,
        "runtime_version": r.runtime_version,
        "capabilities": {
            "supports_local_pause": c.supports_local_pause,
            "supports_incremental": c.supports_incremental,
            "supports_memory_snapshot": c.supports_memory_snapshot,
            "restore_requires_same_host": c.restore_requires_same_host,
            "snapshot_portability_class": c.snapshot_portability_class,
            "accelerator": c.accelerator,
        },
        "host": {
            "cpu_vendor": h.cpu_vendor, "cpu_model": h.cpu_model, "cpu_flags_digest": h.cpu_flags_digest,
            "host_kernel": h.host_kernel, "host_id": h.host_id,
        },
        "running_actor": r.running_actor,
        "host_endpoint": r.host_endpoint,
        "console": r.console,
        "state": r.state,
    })
}

pub async fn caps(a: CapsArgs) -> Result<()> {
    let mut c = connect(&a.socket).await?;
    let r = c.get_capabilities(pb::GetCapabilitiesRequest {}).await.map_err(status_error)?.into_inner();
    let v = caps_json(&r);
    let human = serde_json::to_string_pretty(&v)?;
    print(a.json, v, human);
    Ok(())
}

#[derive(Args)]
pub struct ConsoleArgs {
    /// The worker's unix socket.
    #[arg(long, env = "ATEOM_SOCKET")]
    socket: PathBuf,
}

/// Attaches the terminal to the running workload's serial console until stdin closes or the
/// console goes away.
pub async fn console(a: ConsoleArgs) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut c = connect(&a.socket).await?;
    let r = c.get_capabilities(pb::GetCapabilitiesRequest {}).await.map_err(status_error)?.into_inner();
    if r.console.is_empty() {
        if r.running_actor.is_empty() {
            bail!("nothing is running on this worker");
        }
        bail!("the running workload ({}, {} backend) has no serial console", r.running_actor, r.backend);
    }
    let stream = ateom_microvm::console::connect(&r.console)
        .await
        .with_context(|| format!("connecting to the console at {}", r.console))?;
    eprintln!("attached to the console of {} (close stdin, e.g. Ctrl-D, to detach)", r.running_actor);
    let (mut from, mut to) = stream.into_split();
    let mut stdin = tokio::io::stdin();
    let mut stdout = tokio::io::stdout();
    let up = async {
        let _ = tokio::io::copy(&mut stdin, &mut to).await;
        let _ = to.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from, &mut stdout).await;
    };
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
    Ok(())
}
