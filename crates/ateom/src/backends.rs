//! Builds the backend a worker was asked for and the runtime around it. This is the only
//! place that knows every backend.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
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
        BackendKind::Firecracker => {
            let binary = match &args.firecracker {
                Some(p) => p.clone(),
                None => find_on_path("firecracker").context(
                    "the firecracker backend needs a firecracker binary: pass --firecracker PATH, set \
                     ATEOM_FIRECRACKER_BIN, or put `firecracker` on PATH",
                )?,
            };
            let instance = instance_id(state_dir);
            // The jailer by default when one sits next to a static firecracker.
            let jailer_binary = match (&args.jailer, args.no_jailer) {
                (_, true) => None,
                (Some(j), _) => Some(j.clone()),
                (None, false) => binary
                    .parent()
                    .map(|d| d.join("jailer"))
                    .filter(|j| j.is_file() && ateom_firecracker::vmm::is_static_elf(&binary)),
            };
            if let Some(j) = &jailer_binary {
                tracing::info!(jailer = %j.display(), "firecracker VMMs run under the jailer");
            } else {
                tracing::warn!("firecracker VMMs run without the jailer (as root, unconfined)");
            }
            let uid = args.jailer_uid.unwrap_or_else(|| ateom_microvm::sandbox_uid(&instance));
            let opts = ateom_firecracker::FirecrackerOptions {
                binary,
                state_dir: state_dir.to_owned(),
                instance,
                defaults: microvm_defaults(args),
                guest_init: args.guest_init.clone().or_else(crate::images::default_guest_init),
                jailer: jailer_binary.map(|binary| ateom_firecracker::vmm::Jailer {
                    binary,
                    uid,
                    gid: args.jailer_gid.unwrap_or(uid),
                    cgroup_version: args.jailer_cgroup_version,
                    cgroups: args.jailer_cgroups.clone(),
                }),
                ready_timeout: args.ready_timeout,
            };
            let b = ateom_firecracker::FirecrackerBackend::new(opts)
                .await
                .context("starting the firecracker backend")?;
            Ok(Arc::new(b))
        }
        BackendKind::Qemu => {
            let binary = if args.qemu.is_absolute() {
                args.qemu.clone()
            } else {
                find_on_path(&args.qemu.to_string_lossy()).context(
                    "the qemu backend needs qemu-system-x86_64 (apt install qemu-system-x86) or --qemu PATH",
                )?
            };
            let mut defaults = microvm_defaults(args);
            defaults.kernel_image = defaults.kernel_image.or_else(crate::images::default_guest_kernel);
            let opts = ateom_qemu::QemuOptions {
                binary,
                state_dir: state_dir.to_owned(),
                instance: instance_id(state_dir),
                defaults,
                guest_init: args.guest_init.clone().or_else(crate::images::default_guest_init),
                accel: args.accel.clone(),
                cpu: args.qemu_cpu.clone(),
                ready_timeout: args.ready_timeout,
                confine: !args.qemu_unconfined,
            };
            let b = ateom_qemu::QemuBackend::new(opts).await.context("starting the qemu backend")?;
            Ok(Arc::new(b))
        }
    }
}

/// The worker-level microVM defaults from the command line.
pub fn microvm_defaults(args: &WorkerArgs) -> ateom_core::MicroVmConfig {
    ateom_core::MicroVmConfig {
        vmm_path: None,
        kernel_image: args.kernel.clone(),
        rootfs_image: args.rootfs.clone(),
        kernel_cmdline: args.kernel_cmdline.clone(),
        vcpus: Some(args.vcpus),
        memory_mib: Some(args.memory_mib),
        cpu_template: args.cpu_template.clone(),
        network: None,
        jailer_path: None,
        ready_console_line: args.ready_console_line.clone(),
    }
}

/// The first executable `name` on PATH.
pub fn find_on_path(name: &str) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Checks this host the way `ateom doctor` does, for a worker with these flags: logs one line
/// per check when `log_summary` is set (`ateom serve`; the demo and bench keep quiet), and
/// refuses a backend that cannot run here with the doctor's reason.
pub async fn preflight(args: &WorkerArgs, state_dir: &Path, log_summary: bool) -> Result<()> {
    let report = crate::doctor::Report::gather(args, state_dir, None).await;
    if log_summary {
        report.log(args.backend);
    }
    if let Some(why) = report.refusal(args.backend) {
        let b = args.backend.name();
        bail!(
            "the {b} backend cannot run on this host: {why} \
             (`ateom doctor --backend {b}` shows what this host can and cannot run)"
        );
    }
    Ok(())
}

/// Starts the runtime of a worker: checks the host ([`preflight`]), builds the backend.
pub async fn start_runtime(
    args: &WorkerArgs,
    state_dir: &Path,
    listen: SocketAddr,
    log_summary: bool,
) -> Result<Runtime> {
    // Absolute from here on: runsc's gofer cannot mount a relative root, and every path a
    // sandbox or a journal records must mean the same after a restart from another directory.
    let state_dir =
        &std::path::absolute(state_dir).with_context(|| format!("resolving {}", state_dir.display()))?;
    std::fs::create_dir_all(state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
    preflight(args, state_dir, log_summary).await?;
    let backend = make_backend(args, state_dir).await?;
    let opts = RuntimeOptions {
        state_dir: state_dir.to_owned(),
        host_id: args.host_id.clone(),
        forward_addr: listen,
        ready_timeout: args.ready_timeout,
        keep_snapshots: args.keep_snapshots,
        min_free_bytes: args.min_free_mib << 20,
        // microVMs are sized by --memory-mib / --vcpus (or a request's resources).
        default_resources: match args.backend {
            BackendKind::Gvisor => ateom_core::Resources {
                cpu_milli: (args.default_cpu_milli > 0).then_some(args.default_cpu_milli),
                memory_bytes: (args.default_memory_mib > 0).then_some(args.default_memory_mib << 20),
                pids: (args.default_pids > 0).then_some(args.default_pids),
            },
            _ => ateom_core::Resources::default(),
        },
        signing: if args.snapshot_key_files.is_empty() {
            None
        } else {
            Some(ateom_store::SigningKeys::from_files(&args.snapshot_key_files).map_err(anyhow::Error::msg)?)
        },
    };
    Ok(Runtime::start(backend, opts).await?)
}
