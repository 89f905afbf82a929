//! `ateom snapshots`: list local and durable snapshots, promote LOCAL to DURABLE, pull,
//! delete, collect garbage left by interrupted uploads; on a running worker, prune local
//! snapshots and commit quarantined ones; make a snapshot signing key.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ateom_core::{ActorRef, SnapshotId};
use ateom_snapshot::LocalSnapshots;
use ateom_store::{GcOptions, Progress, PullOptions, Store};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

#[derive(Subcommand)]
pub enum SnapshotsCommand {
    /// List snapshots: an actor's on this worker (--state-dir), or all under a store prefix.
    List {
        /// The worker's state directory (local snapshots).
        #[arg(long, conflicts_with = "store")]
        state_dir: Option<PathBuf>,
        /// The actor, as namespace:template:actor_id (with --state-dir).
        #[arg(long, requires = "state_dir")]
        actor: Option<String>,
        /// An object-store URI prefix (durable snapshots).
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Promote a LOCAL snapshot to DURABLE: ship it to an object store (resumable: a rerun
    /// after an interruption uploads only what is missing).
    Push {
        #[arg(long)]
        state_dir: PathBuf,
        /// namespace:template:actor_id
        #[arg(long)]
        actor: String,
        /// The snapshot (default: the actor's newest).
        #[arg(long)]
        snapshot_id: Option<String>,
        /// Object-store URI prefix: file:///dir, s3://bucket/prefix, gs://..., az://...
        #[arg(long)]
        store: String,
        /// Sign the pushed snapshot with this key (as the worker's --snapshot-key-file).
        #[arg(long, env = "ATEOM_SNAPSHOT_KEY_FILE")]
        snapshot_key_file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Fetch a durable snapshot into a directory, verifying every chunk.
    Pull {
        #[arg(long)]
        store: String,
        /// Refuse a snapshot not signed with this key (as the worker's --snapshot-key-file).
        #[arg(long, env = "ATEOM_SNAPSHOT_KEY_FILE")]
        snapshot_key_file: Option<PathBuf>,
        /// Default: the prefix's LATEST.
        #[arg(long)]
        snapshot_id: Option<String>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Delete a durable snapshot (its index first, so it stops existing at once).
    Delete {
        #[arg(long)]
        store: String,
        #[arg(long)]
        snapshot_id: String,
    },
    /// List (and with --delete remove) garbage from interrupted or replaced uploads.
    Gc {
        #[arg(long)]
        store: String,
        /// Only objects older than this count as garbage (an upload in progress is not).
        #[arg(long, default_value = "1h", value_parser = crate::parse_duration)]
        grace: Duration,
        /// Remove it (default: only list it).
        #[arg(long)]
        delete: bool,
        #[arg(long)]
        json: bool,
    },
    /// On a running worker: delete local snapshots that are neither pinned by the control
    /// plane nor among the newest --keep of their actor (the worker also does this after
    /// every checkpoint).
    Prune {
        /// The worker's unix socket.
        #[arg(long, env = "ATEOM_SOCKET")]
        socket: PathBuf,
        /// Only this actor (namespace:template:actor_id); default: every actor on the worker.
        #[arg(long)]
        actor: Option<String>,
        /// Snapshots kept per actor besides the pinned ones (default: the worker's --keep-snapshots).
        #[arg(long)]
        keep: Option<u32>,
        /// Only show what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// On a running worker: commit the snapshots kept in quarantine because a checkpoint
    /// could not commit them (a full disk, say). Free space first.
    Recover {
        /// The worker's unix socket.
        #[arg(long, env = "ATEOM_SOCKET")]
        socket: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Write a new snapshot signing key (32 random bytes, hex, mode 0600) for
    /// --snapshot-key-file. Keep it outside the store; give every worker (and `ate`) the same.
    Keygen {
        /// Where to write it (refused if the file exists).
        #[arg(long)]
        out: PathBuf,
    },
}

fn parse_actor(s: &str) -> Result<ActorRef> {
    let parts: Vec<&str> = s.split(':').collect();
    let [ns, tpl, id] = parts.as_slice() else {
        bail!("--actor {s:?}: expected namespace:template:actor_id");
    };
    Ok(ActorRef::parse(ns, tpl, id)?)
}

/// An indicatif bar with bytes and throughput, fed by the store's progress callbacks.
struct Bar(ProgressBar);

impl Bar {
    fn new(what: &str, hidden: bool) -> Arc<Self> {
        let bar = if hidden { ProgressBar::hidden() } else { ProgressBar::new(0) };
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>6} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        bar.set_message(what.to_owned());
        Arc::new(Self(bar))
    }
}

impl Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

fn open_store(uri: &str) -> Result<Store> {
    open_signed_store(uri, None)
}

/// A store that signs and requires signatures with `key` when given.
fn open_signed_store(uri: &str, key: Option<&PathBuf>) -> Result<Store> {
    let uri = ateom_core::parse_uri_prefix("--store", uri)?;
    let store = Store::open(&uri)?;
    let Some(key) = key else { return Ok(store) };
    let keys = ateom_store::SigningKeys::from_files(std::slice::from_ref(key)).map_err(anyhow::Error::msg)?;
    Ok(store.with_config(ateom_store::StoreConfig { signing: Some(keys), ..store.config().clone() })?)
}

pub async fn main(cmd: SnapshotsCommand) -> Result<()> {
    match cmd {
        SnapshotsCommand::List { state_dir, actor, store, json } => {
            if let Some(uri) = store {
                let store = open_store(&uri)?;
                let list = store.list().await?;
                if json {
                    let v: Vec<_> = list
                        .iter()
                        .map(|s| json!({"snapshot_id": s.snapshot_id, "committed_unix_ms": s.committed_unix_ms}))
                        .collect();
                    println!("{}", json!(v));
                } else {
                    println!("{:<32} COMMITTED (unix ms)", "SNAPSHOT");
                    for s in list {
                        println!("{:<32} {}", s.snapshot_id, s.committed_unix_ms);
                    }
                }
                return Ok(());
            }
            let (Some(dir), Some(actor)) = (state_dir, actor) else {
                bail!("give --store URI, or --state-dir DIR with --actor namespace:template:actor_id");
            };
            let actor = parse_actor(&actor)?;
            let local = LocalSnapshots::new(dir.join("actors"));
            let ids = local.list(&actor)?;
            let mut rows = Vec::new();
            for id in &ids {
                let s = local.open(&actor, id)?;
                rows.push((id.to_string(), s.manifest.total_bytes(), s.manifest.created_at.clone(), s.dir));
            }
            if json {
                let v: Vec<_> = rows
                    .iter()
                    .map(|(id, b, c, d)| json!({"snapshot_id": id, "bytes": b, "created_at": c, "dir": d}))
                    .collect();
                println!("{}", json!(v));
            } else {
                println!("{:<32} {:>12} {:<26} DIR", "SNAPSHOT", "BYTES", "CREATED");
                for (id, b, c, d) in rows {
                    println!("{id:<32} {b:>12} {c:<26} {}", d.display());
                }
            }
            Ok(())
        }
        SnapshotsCommand::Push { state_dir, actor, snapshot_id, store, snapshot_key_file, json } => {
            let actor = parse_actor(&actor)?;
            let local = LocalSnapshots::new(state_dir.join("actors"));
            let snap = match snapshot_id {
                Some(id) => local.open(&actor, &SnapshotId::parse("--snapshot-id", &id)?)?,
                None => local.latest(&actor)?,
            };
            let s = snap.clone();
            tokio::task::spawn_blocking(move || s.verify()).await??;
            let store = open_signed_store(&store, snapshot_key_file.as_ref())?;
            let bar = Bar::new("push", json);
            let pushed = ateom_runtime::durable::push(&store, &snap, Some(bar.clone())).await?;
            bar.0.finish();
            let out = json!({
                "snapshot_id": snap.manifest.snapshot_id.to_string(),
                "location": pushed.location,
                "logical_bytes": snap.manifest.total_bytes(),
                "stored_bytes": pushed.stored_bytes,
                "push_ms": pushed.elapsed.as_millis() as u64,
            });
            if json {
                println!("{out}");
            } else {
                println!(
                    "pushed {} to {} ({} bytes stored for {} logical) in {} ms",
                    snap.manifest.snapshot_id,
                    pushed.location,
                    pushed.stored_bytes,
                    snap.manifest.total_bytes(),
                    pushed.elapsed.as_millis()
                );
            }
            Ok(())
        }
        SnapshotsCommand::Pull { store, snapshot_key_file, snapshot_id, out, json } => {
            let store = open_signed_store(&store, snapshot_key_file.as_ref())?;
            let bar = Bar::new("pull", json);
            let opts = PullOptions { progress: Some(bar.clone()) };
            let report = store.pull_with(snapshot_id.as_deref(), &out, &opts).await?;
            bar.0.finish();
            let index = store.read_index(&report.snapshot_id).await?;
            std::fs::write(out.join("manifest.json"), serde_json::to_vec_pretty(&index.meta)?)
                .with_context(|| format!("writing {}/manifest.json", out.display()))?;
            if json {
                println!(
                    "{}",
                    json!({"snapshot_id": report.snapshot_id, "logical_bytes": report.logical_bytes, "stored_bytes": report.stored_bytes, "pull_ms": report.elapsed_ms, "dir": out})
                );
            } else {
                println!(
                    "pulled {} into {} ({} bytes, {} fetched) in {} ms",
                    report.snapshot_id,
                    out.display(),
                    report.logical_bytes,
                    report.stored_bytes,
                    report.elapsed_ms
                );
            }
            Ok(())
        }
        SnapshotsCommand::Delete { store, snapshot_id } => {
            let store = open_store(&store)?;
            let r = store.delete(&snapshot_id).await?;
            println!("deleted {snapshot_id} ({} objects)", r.objects_deleted);
            Ok(())
        }
        SnapshotsCommand::Gc { store, grace, delete, json } => {
            let store = open_store(&store)?;
            let r = store.gc(&GcOptions { grace, delete }).await?;
            if json {
                let v: Vec<_> = r
                    .garbage
                    .iter()
                    .map(|g| json!({"key": g.key, "bytes": g.size, "reason": format!("{:?}", g.reason)}))
                    .collect();
                println!(
                    "{}",
                    json!({"garbage": v, "garbage_bytes": r.garbage_bytes, "deleted_objects": r.deleted_objects})
                );
            } else {
                for g in &r.garbage {
                    println!("{:<80} {:>12} {:?}", g.key, g.size, g.reason);
                }
                println!(
                    "{} objects of garbage{}",
                    r.garbage.len(),
                    if delete {
                        format!(", {} deleted", r.deleted_objects)
                    } else {
                        " (use --delete to remove)".into()
                    }
                );
            }
            Ok(())
        }
        SnapshotsCommand::Prune { socket, actor, keep, dry_run, json } => {
            let actor = actor.as_deref().map(parse_actor).transpose()?;
            let mut c = crate::client::connect(&socket).await?;
            let (ns, tpl, id) = match &actor {
                Some(a) => (a.namespace.to_string(), a.template.to_string(), a.actor_id.to_string()),
                None => Default::default(),
            };
            let r = c
                .prune_snapshots(ateom_proto::PruneSnapshotsRequest {
                    actor_template_namespace: ns,
                    actor_template_name: tpl,
                    actor_id: id,
                    keep: keep.unwrap_or(0),
                    dry_run,
                })
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            if json {
                println!(
                    "{}",
                    json!({"deleted": r.deleted, "freed_bytes": r.freed_bytes, "dry_run": dry_run})
                );
            } else {
                for d in &r.deleted {
                    println!("{} {d}", if dry_run { "would delete" } else { "deleted" });
                }
                println!(
                    "{} snapshots, {} bytes{}",
                    r.deleted.len(),
                    r.freed_bytes,
                    if dry_run { " (dry run)" } else { "" }
                );
            }
            Ok(())
        }
        SnapshotsCommand::Recover { socket, json } => {
            let mut c = crate::client::connect(&socket).await?;
            let r = c
                .recover_snapshots(ateom_proto::RecoverSnapshotsRequest {})
                .await
                .map_err(crate::client::status_error)?
                .into_inner();
            if json {
                println!("{}", json!({"recovered": r.recovered, "still_quarantined": r.still_quarantined}));
            } else {
                for s in &r.recovered {
                    println!("committed {s}");
                }
                for s in &r.still_quarantined {
                    println!("still quarantined: {s}");
                }
                if r.recovered.is_empty() && r.still_quarantined.is_empty() {
                    println!("nothing in quarantine");
                }
            }
            if !r.still_quarantined.is_empty() {
                bail!(
                    "{} snapshots are still quarantined (free more space and run this again)",
                    r.still_quarantined.len()
                );
            }
            Ok(())
        }
        SnapshotsCommand::Keygen { out } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key: [u8; 32] = rand::random();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| {
                    format!("creating {} (an existing key is never overwritten)", out.display())
                })?;
            f.write_all(format!("{}\n", hex::encode(key)).as_bytes())?;
            f.sync_all()?;
            let id = ateom_store::SigningKeys::from_files(std::slice::from_ref(&out))
                .map_err(anyhow::Error::msg)?
                .key_ids();
            println!("wrote snapshot signing key {} to {} (mode 0600)", id[0], out.display());
            Ok(())
        }
    }
}
