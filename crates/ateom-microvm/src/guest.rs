//! The host side of ateom's guest contract with `ateom-init`, shared by the microVM backends:
//! the root disk built from a container image (with the workload configuration inside), the
//! kernel command-line words for the guest network, and the control channel that corrects
//! the clock and reseeds the RNG after a boot and after every restore.

use std::path::Path;
use std::time::Duration;

use crate::guest_image::{BuiltDisk, GuestImageBuilder};
use ateom_core::{BackendError, ContainerSpec, Dialer, ImageRef};
use tokio::io::AsyncWriteExt;
use tracing::info;

/// The root disk for one container image: (disk, container name, image digest).
pub fn disk_for(
    cache: &Path,
    container: &ContainerSpec,
    image: &ImageRef,
    init: &Path,
    volumes: &[ateom_init::config::VolumeMount],
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
        hostname: "ateom".into(),
        netns_path: None,
        readonly_rootfs: false,
    };
    let spec = ateom_image::runtime_spec(&prepared.config, &overrides, &opts)
        .map_err(|e| image_err(e.to_string()))?;
    let config = workload_config(&spec, volumes).map_err(image_err)?;
    let disk = GuestImageBuilder::new(cache.join("guest"))
        .build(&prepared.rootfs, &prepared.manifest_digest, init, &config)
        .map_err(|e| image_err(e.to_string()))?;
    Ok((disk, container.name.to_string(), prepared.manifest_digest))
}

/// `/.ateom/config.json` for `ateom-init`: the OCI runtime spec's process (ateom-init's
/// `Process` reads the OCI field names), validated by ateom-init's own decoder. Nothing
/// per-actor goes in (the hostname comes from the kernel command line), so every actor of
/// one template shares one cached root disk.
pub fn workload_config(
    spec: &ateom_image::oci_spec::runtime::Spec,
    volumes: &[ateom_init::config::VolumeMount],
) -> Result<Vec<u8>, String> {
    let process = spec.process().as_ref().ok_or("the image's runtime spec has no process")?;
    let mut v = serde_json::json!({
        "version": ateom_init::config::CONFIG_VERSION,
        "process": process,
    });
    if !volumes.is_empty() {
        v["volumes"] = serde_json::to_value(volumes).map_err(|e| e.to_string())?;
    }
    let config =
        ateom_init::config::WorkloadConfig::from_json(&serde_json::to_vec(&v).map_err(|e| e.to_string())?)
            .map_err(|e| format!("the workload does not fit ateom-init: {e}"))?;
    config.to_json().map_err(|e| e.to_string())
}

/// The kernel command-line words ateom-init reads for the guest network and hostname.
pub fn boot_args(net: &ateom_core::TapNetwork, hostname: &str) -> String {
    let params = ateom_init::cmdline::BootParams {
        ip: ateom_init::cmdline::Ipv4Cidr::new(net.guest_ip, net.prefix_len),
        gateway: Some(net.host_ip),
        hostname: Some(hostname.to_owned()),
        ..ateom_init::cmdline::BootParams::default()
    };
    params.kernel_args()
}

/// The guest init's control port.
pub const CONTROL_PORT: u16 = ateom_init::cmdline::DEFAULT_CTL_PORT;

/// Tells the guest the host's time and gives it fresh entropy (ateom-init sets
/// `CLOCK_REALTIME`, credits the entropy and forces a CRNG reseed), retrying until its
/// control port answers or `timeout` passes. After a restore this runs before the workload
/// sees traffic; after a boot it corrects the RTC's one-second resolution.
pub async fn sync_clock_and_entropy(dialer: &dyn Dialer, timeout: Duration) -> Result<(), BackendError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    // Short connect timeouts first: a SYN sent while the guest is still resuming is lost,
    // and the kernel would retransmit it only after a second.
    let mut connect = Duration::from_millis(10);
    while tokio::time::Instant::now() < deadline {
        let attempt = sync_once(dialer, connect).await;
        connect = (connect * 2).min(Duration::from_millis(500));
        match attempt {
            Ok(delta_ns) => {
                info!(clock_delta_ms = delta_ns / 1_000_000, "guest clock set and RNG reseeded");
                return Ok(());
            }
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Err(BackendError::failed("syncing the guest (clock, entropy) through ateom-init", last))
}

async fn sync_once(dialer: &dyn Dialer, connect_timeout: Duration) -> Result<i64, String> {
    use ateom_init::protocol::{self, Request, Response};
    let request = Request::sync_now().map_err(|e| format!("host entropy: {e}"))?;
    let frame = protocol::encode_request(&request).map_err(|e| e.to_string())?;
    let mut stream = tokio::time::timeout(connect_timeout, dialer.dial(CONTROL_PORT))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    stream.write_all(&frame).await.map_err(|e| e.to_string())?;
    let mut reply = Vec::new();
    let mut limited = tokio::io::AsyncReadExt::take(&mut stream, protocol::MAX_FRAME_LEN as u64);
    tokio::time::timeout(
        Duration::from_secs(2),
        tokio::io::AsyncBufReadExt::read_until(
            &mut tokio::io::BufReader::new(&mut limited),
            b'\n',
            &mut reply,
        ),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|e| e.to_string())?;
    match protocol::decode_response(&reply).map_err(|e| e.to_string())? {
        Response::Synced { delta_ns, reseeded: true, .. } => Ok(delta_ns),
        Response::Synced { .. } => Err("the guest could not reseed its RNG".into()),
        other => Err(format!("unexpected answer {other:?}")),
    }
}
