//! Builds the backend a worker was asked for and the runtime around it. This is the only
//! place that knows every backend.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use ateom_core::Backend;
use ateom_runtime::{Runtime, RuntimeOptions};
use sha2::{Digest, Sha256};

use crate::{BackendKind, WorkerArgs};

/// A short name unique to a state directory: namespaces and sandboxes of two workers on one
/// machine never collide, and a restarted worker finds its predecessor's leftovers.
pub fn instance_id(state_dir: &Path) -> String {
    let canonical = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
    hex::encode(Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..8].to_owned()
}

pub async fn make_backend(args: &WorkerArgs, state_dir: &Path) -> Result<Arc<dyn Backend>> {
    match args.backend {
        BackendKind::Gvisor => {
            let opts = ateom_gvisor::GvisorOptions {
                runsc_path: args.runsc.clone(),
                platform: args.platform.clone(),
                state_dir: state_dir.to_owned(),
                instance: instance_id(state_dir),
                debug_logs: args.debug_logs,
            };
            let b = ateom_gvisor::GvisorBackend::new(opts)
                .await
                .context("starting the gvisor backend (is runsc installed? `apt install runsc`)")?;
            Ok(Arc::new(b))
        }
    }
}

pub async fn start_runtime(args: &WorkerArgs, state_dir: &Path, listen: SocketAddr) -> Result<Runtime> {
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    let backend = make_backend(args, state_dir).await?;
    let opts = RuntimeOptions {
        state_dir: state_dir.to_owned(),
        host_id: args.host_id.clone(),
        forward_addr: listen,
        ready_timeout: args.ready_timeout,
    };
    Ok(Runtime::start(backend, opts).await?)
}
