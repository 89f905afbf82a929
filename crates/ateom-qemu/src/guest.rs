//! The host side of ateom's guest contract: the workload configuration written into the root
//! disk for `ateom-init`, the network identity kept in provenance, and the control channel
//! that corrects the clock and reseeds the RNG after a restore.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ateom_core::{BackendError, ContainerSpec, Dialer, ImageRef};
use ateom_microvm::guest_image::{BuiltDisk, GuestImageBuilder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::info;

/// The root disk for one container image: (disk, container name, image digest).
pub fn disk_for(
    cache: &Path,
    container: &ContainerSpec,
    image: &ImageRef,
    init: &Path,
    hostname: &str,
) -> Result<(BuiltDisk, String, String), BackendError> {
    let image_err = |detail: String| BackendError::Image { container: container.name.to_string(), detail };
    let prepared = ateom_image::ImageStore::new(cache.join("images"))
        .prepare(image)
        .map_err(|e| image_err(e.to_string()))?;
    let overrides = ateom_image::ProcessOverrides {
        command: container.command.clone(),
        args: container.args.clone(),
        env: container.env.clone(),
    };
    let opts = ateom_image::BundleOptions {
        rootfs: prepared.rootfs.clone(),
        hostname: hostname.into(),
        netns_path: None,
        readonly_rootfs: false,
    };
    let spec = ateom_image::runtime_spec(&prepared.config, &overrides, &opts)
        .map_err(|e| image_err(e.to_string()))?;
    let config = workload_config(&spec).map_err(image_err)?;
    let disk = GuestImageBuilder::new(cache.join("guest"))
        .build(&prepared.rootfs, &prepared.manifest_digest, init, &config)
        .map_err(|e| image_err(e.to_string()))?;
    Ok((disk, container.name.to_string(), prepared.manifest_digest))
}

/// `/.ateom/config.json` for `ateom-init`: the process of the OCI runtime spec.
pub fn workload_config(spec: &ateom_image::oci_spec::runtime::Spec) -> Result<Vec<u8>, String> {
    let process = spec.process().as_ref().ok_or("the image's runtime spec has no process")?;
    let v = serde_json::json!({ "version": 1, "process": process });
    serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())
}

/// The guest init's control port.
pub const CONTROL_PORT: u16 = 10789;

/// After a restore: tell the guest the host's time and give it fresh entropy, retrying
/// until its control port answers (the guest just resumed) or `timeout` passes.
pub async fn sync_after_restore(dialer: &dyn Dialer, timeout: Duration) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        match sync_once(dialer).await {
            Ok(delta_ms) => {
                info!(clock_delta_ms = delta_ms, "guest clock set and RNG reseeded");
                return Ok(());
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Err(BackendError::failed("syncing the restored guest (clock, entropy)", last))
}

async fn sync_once(dialer: &dyn Dialer) -> Result<i64, String> {
    let mut entropy = [0u8; 64];
    getrandom(&mut entropy)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos() as u64;
    let mut stream = tokio::time::timeout(Duration::from_millis(200), dialer.dial(CONTROL_PORT))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let req = serde_json::json!({"op": "sync", "unix_time_ns": now, "entropy": hex::encode(entropy)});
    stream.write_all(format!("{req}\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut resp))
        .await
        .map_err(|_| "no answer".to_string())?
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&resp).map_err(|e| format!("bad answer: {e}"))?;
    v.get("delta_ms").and_then(|d| d.as_i64()).ok_or_else(|| format!("unexpected answer {v}"))
}

fn getrandom(buf: &mut [u8]) -> Result<(), String> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .map_err(|e| format!("host entropy: {e}"))
}
