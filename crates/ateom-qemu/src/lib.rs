//! # ateom-qemu
//!
//! The QEMU backend: Linux microVMs on QEMU's `microvm` machine, with hardware KVM where it
//! is usable and TCG (software emulation) elsewhere — which makes VM-isolated actors run from
//! distribution packages alone, including on hosts (like kvm-pvm ones) where stock Linux
//! guests cannot boot under KVM.
//!
//! ```text
//!  netns ateom-<instance>-vm
//!  ┌───────────────────────────────────────────────────────────────────┐
//!  │ tap0 169.254.0.1/30 ◀──▶ guest eth0 169.254.0.2 (fixed MAC)       │
//!  │ qemu-system-x86_64 -M microvm (cwd = work dir):                   │
//!  │   RAM = memory-backend-file `memory` (share=on)                   │
//!  │   virtio-blk `rootfs.ext4`, virtio-net tap0, virtio-rng           │
//!  │   serial on `console.sock` (console hub), QMP on `qmp.sock`      │
//!  └───────────────────────────────────────────────────────────────────┘
//! ```
//!
//! * **Run**: the container image becomes a cached ext4 root disk with ateom's guest init
//!   (`ateom-microvm::guest_image`); the workload gets a sparse copy; QEMU boots the guest
//!   kernel with `init=/.ateom/init` and the network on the command line; the runtime's HTTP
//!   probe decides readiness through the namespace.
//! * **Checkpoint**: `stop`, `x-ignore-shared` so migration skips the RAM (it is already in
//!   the `memory` file), migrate the device state to `vmstate`, `quit`; the RAM file and the
//!   disk move into the snapshot.
//! * **Restore**: copies of RAM file and disk in a fresh work dir, QEMU with the same devices
//!   and `-incoming defer`, incoming migration from `vmstate`, `cont`; then, before any
//!   traffic, ateom's control channel sets the guest clock from the host and reseeds the guest
//!   RNG with fresh host entropy (so clones never share randomness).

pub mod qmp;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ateom_core::{
    AdoptRequest, Adopted, Backend, BackendError, BackendInfo, BackendProvenance, Capabilities,
    CheckpointOutput, ContainerSource, Dialer, LaunchContext, MicroVmConfig, RuntimeConfig, Sandbox,
    SandboxHandle, SnapshotInput, TapNetwork,
};
use ateom_microvm::{Console, Kvm, guest};
use ateom_net::{Netns, NetnsDialer, TapPlan};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::qmp::Qmp;

pub const VMSTATE: &str = "vmstate";
pub const MEMORY: &str = "memory";
pub const DISK: &str = "rootfs.ext4";
/// QEMU serves the serial console on this unix socket in the work directory.
pub const CONSOLE_SOCKET: &str = "console.sock";
/// The name under which QEMU receives the migration file's descriptor (`getfd`).
const MIGRATION_FD: &str = "ateom-migration";
/// The console hub's socket for clients (`ateom console`), in the work directory.
const SERIAL_SOCKET: &str = "serial.sock";
/// QEMU's stderr, in the work directory.
const QEMU_LOG: &str = "qemu.log";
const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off,memory-backend=mem";

/// How the backend is set up; per-request `MicroVmConfig` fields override the defaults.
#[derive(Clone, Debug)]
pub struct QemuOptions {
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    pub instance: String,
    pub defaults: MicroVmConfig,
    /// The static guest init (`ateom-init`) put into every root disk built from an image.
    pub guest_init: Option<PathBuf>,
    /// `kvm`, `tcg`, or `auto` (KVM when a stock Linux guest can use it, else TCG).
    pub accel: String,
    /// CPU model; with TCG a named model keeps snapshots portable across hosts.
    pub cpu: String,
    /// How long a console readiness line may take.
    pub ready_timeout: Duration,
    /// Confine every QEMU (default): `-sandbox` (seccomp: no spawning, no obsolete or
    /// resource-control system calls), `-runas` an unprivileged uid:gid of this worker's own
    /// ([`ateom_microvm::sandbox_uid`]) and `-chroot` into the sandbox's work directory, all
    /// taking effect before the guest runs. `false` runs QEMU as root, unconfined.
    pub confine: bool,
}

/// The QEMU backend.
pub struct QemuBackend {
    opts: QemuOptions,
    info: BackendInfo,
    accel: &'static str,
    tsc_khz: Option<u64>,
}

/// `QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)` -> `7.2.22`.
pub fn parse_version(text: &str) -> Option<String> {
    let rest = text.lines().next()?.strip_prefix("QEMU emulator version ")?;
    Some(rest.split_whitespace().next()?.to_owned())
}

fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 =
        cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?.split_once(':')?.1.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

impl QemuBackend {
    pub async fn new(opts: QemuOptions) -> Result<Self, BackendError> {
        let out = tokio::process::Command::new(&opts.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| BackendError::Unavailable {
                what: format!("QEMU at {}", opts.binary.display()),
                detail: format!("{e} (apt install qemu-system-x86)"),
            })?;
        let version = parse_version(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            BackendError::Unavailable {
                what: format!("QEMU at {}", opts.binary.display()),
                detail: format!("unexpected --version output {:?}", String::from_utf8_lossy(&out.stdout)),
            }
        })?;
        let kvm = ateom_microvm::kvm();
        let accel: &'static str = match opts.accel.as_str() {
            "kvm" if kvm == Kvm::Absent => {
                return Err(BackendError::InvalidConfig {
                    field: "accel".into(),
                    reason: "no usable /dev/kvm".into(),
                });
            }
            "kvm" => "kvm",
            "tcg" => "tcg",
            "auto" if kvm.boots_linux() => "kvm",
            "auto" => {
                info!(
                    kvm = kvm.name(),
                    "no KVM a stock Linux guest can use here: QEMU runs guests with TCG (software emulation)"
                );
                "tcg"
            }
            other => {
                return Err(BackendError::InvalidConfig {
                    field: "accel".into(),
                    reason: format!("{other:?} is not one of kvm, tcg, auto"),
                });
            }
        };
        let info = BackendInfo {
            name: "qemu".into(),
            runtime_version: version.clone(),
            capabilities: Capabilities {
                supports_local_pause: true,
                supports_incremental: false,
                supports_memory_snapshot: true,
                // Under TCG the guest CPU is QEMU's model, not the host's: any host with the
                // same QEMU restores it. Under KVM the host CPU shows through.
                restore_requires_same_host: accel == "kvm",
                snapshot_portability_class: format!("qemu/{version}/microvm/{accel}/{}", opts.cpu),
                accelerator: accel.into(),
            },
        };
        info!(binary = %opts.binary.display(), %version, accel, cpu = %opts.cpu, "qemu backend ready");
        Ok(Self { tsc_khz: if accel == "tcg" { host_tsc_khz() } else { None }, opts, info, accel })
    }

    fn netns_name(&self) -> String {
        format!("ateom-{}-vm", self.opts.instance)
    }

    fn effective(
        &self,
        runtime: &Option<RuntimeConfig>,
        resources: &ateom_core::Resources,
    ) -> Result<MicroVmConfig, BackendError> {
        let req = match runtime {
            None => MicroVmConfig::default(),
            Some(RuntimeConfig::MicroVm(m)) => m.clone(),
            Some(RuntimeConfig::Gvisor(_)) => {
                return Err(BackendError::InvalidConfig {
                    field: "gvisor".into(),
                    reason: "this worker runs the qemu backend; send a microvm runtime config (or none)"
                        .into(),
                });
            }
        };
        let d = &self.opts.defaults;
        Ok(MicroVmConfig {
            vmm_path: req.vmm_path.or_else(|| d.vmm_path.clone()),
            kernel_image: req.kernel_image.or_else(|| d.kernel_image.clone()),
            rootfs_image: req.rootfs_image.or_else(|| d.rootfs_image.clone()),
            kernel_cmdline: req.kernel_cmdline.or_else(|| d.kernel_cmdline.clone()),
            // The microVM config's own numbers, else the request's resources, else the worker's.
            vcpus: req.vcpus.or(ateom_microvm::vcpus_for(resources)).or(d.vcpus),
            memory_mib: req.memory_mib.or(ateom_microvm::memory_mib_for(resources)).or(d.memory_mib),
            cpu_template: None,
            network: req
                .network
                .or_else(|| d.network.clone())
                .or_else(|| Some(ateom_microvm::default_network())),
            jailer_path: None,
            ready_console_line: req.ready_console_line.or_else(|| d.ready_console_line.clone()),
        })
    }

    /// The root disk for the workload: built from the container image (cached), or the
    /// configured base image. Returns the base to copy and the image digests.
    async fn root_disk(
        &self,
        ctx: &LaunchContext,
        cfg: &MicroVmConfig,
    ) -> Result<(Option<PathBuf>, BTreeMap<String, String>, bool), BackendError> {
        let mut digests = BTreeMap::new();
        let images: Vec<_> =
            ctx.containers.iter().filter(|(_, s)| matches!(s, ContainerSource::Image(_))).collect();
        match images.as_slice() {
            [] => Ok((cfg.rootfs_image.clone(), digests, false)),
            [(container, ContainerSource::Image(image))] => {
                let init = self.opts.guest_init.clone().ok_or_else(|| BackendError::Unavailable {
                    what: "the guest init (ateom-init)".into(),
                    detail: "build it with scripts/build-init.sh and start the worker with --guest-init"
                        .into(),
                })?;
                let (container, image) = ((*container).clone(), image.clone());
                let cache = ctx.cache_dir.clone();
                let volumes = guest_volumes(&ctx.volumes);
                let built = tokio::task::spawn_blocking(move || {
                    guest::disk_for(&cache, &container, &image, &init, &volumes)
                })
                .await
                .map_err(|e| BackendError::failed("building the root disk", e.to_string()))??;
                info!(disk = %built.0.path.display(), cache_hit = built.0.cache_hit, build_ms = built.0.build_ms, "root disk");
                digests.insert(built.1, built.2);
                Ok((Some(built.0.path), digests, true))
            }
            _ => Err(BackendError::InvalidConfig {
                field: "spec.containers".into(),
                reason: "the qemu backend runs one container image per microVM".into(),
            }),
        }
    }

    /// The kernel command line. `ateom_init`: the disk was built from an image with ateom's
    /// guest init inside (otherwise the operator's `kernel_cmdline` says what to run).
    fn cmdline(&self, cfg: &MicroVmConfig, hostname: &str, disk: bool, ateom_init: bool) -> String {
        let mut parts: Vec<String> =
            vec!["console=ttyS0".into(), "panic=-1".into(), "pci=off".into(), "reboot=t".into()];
        if disk {
            parts.extend(["root=/dev/vda".into(), "rw".into(), "rootfstype=ext4".into()]);
        }
        if ateom_init {
            parts.push(format!("init={}", ateom_microvm::guest_image::INIT_PATH));
        }
        if let Some(khz) = self.tsc_khz {
            // TCG cannot calibrate the TSC against the PIT reliably (guest/kernel/README.md).
            parts.push(format!("tsc_early_khz={khz}"));
        }
        if let (true, Some(n)) = (ateom_init, &cfg.network) {
            parts.push(guest::boot_args(n, hostname));
        }
        if let Some(extra) = &cfg.kernel_cmdline {
            parts.push(extra.clone());
        }
        parts.join(" ")
    }

    async fn network(&self, net: &TapNetwork) -> Result<(Netns, Arc<dyn Dialer>), BackendError> {
        let net_err = |e: ateom_net::NetError| BackendError::Network(e.to_string());
        let name = self.netns_name();
        Netns::delete_by_name(&name).map_err(net_err)?;
        let ns = Netns::create(&name).map_err(net_err)?;
        let plan = TapPlan {
            name: net.tap_name.clone(),
            host_ip: net.host_ip,
            prefix_len: net.prefix_len,
            vnet_hdr: true,
            owner: None,
        };
        let dialer = async {
            ateom_net::setup_tap(&ns, &plan).await?;
            NetnsDialer::new(&ns, IpAddr::V4(net.guest_ip))
        }
        .await;
        match dialer {
            Ok(d) => Ok((ns, Arc::new(d))),
            Err(e) => {
                let _ = ns.delete();
                Err(net_err(e))
            }
        }
    }

    async fn launch(
        &self,
        ctx: LaunchContext,
        snapshot: Option<SnapshotInput<'_>>,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        let mut cfg = self.effective(&ctx.runtime, &ctx.resources)?;
        // substrate's runtime_asset_paths: below the request's microvm config, above the
        // worker's defaults.
        let assets = ateom_core::AssetPaths::check(&ctx.asset_paths, &["qemu", "kernel", "rootfs"])?;
        let explicit = match &ctx.runtime {
            Some(RuntimeConfig::MicroVm(m)) => Some(m),
            _ => None,
        };
        cfg.take_assets(explicit, &assets, "qemu");
        // Durable-directory volumes: one disk each, after the root disk (see
        // `ateom_microvm::volumes`); their mounts are in the root disk's config.
        let volume_dirs: Vec<PathBuf> =
            ateom_core::distinct_volumes(&ctx.volumes).iter().map(|v| v.host_dir.clone()).collect();
        let kernel = cfg.kernel_image.clone().ok_or_else(|| BackendError::InvalidConfig {
            field: "microvm.kernel_image".into(),
            reason: "no guest kernel: build one with scripts/build-guest-kernel.sh and start the worker with --kernel".into(),
        })?;
        let kernel = std::path::absolute(&kernel).map_err(|e| BackendError::io("kernel path", e))?;
        // The snapshot's files, once verified (both copies below read them).
        let snap_dir = match snapshot {
            Some(s) => Some(s.verified_dir().await?),
            None => None,
        };
        let (kernel_id, base, digests, cmdline, ateom_init) = match snapshot {
            None => {
                let (base, digests, ateom_init) = self.root_disk(&ctx, &cfg).await?;
                if !ateom_init && !volume_dirs.is_empty() {
                    return Err(BackendError::InvalidConfig {
                        field: "spec.containers.durable_dir_volumes".into(),
                        reason: "durable directories on a microVM need a root disk built from an image (ateom-init mounts them)".into(),
                    });
                }
                let k = kernel.clone();
                let id = tokio::task::spawn_blocking(move || ateom_microvm::file_id(&k))
                    .await
                    .map_err(|e| BackendError::failed("hashing the kernel", e.to_string()))?
                    .map_err(|e| BackendError::InvalidConfig {
                        field: "microvm.kernel_image".into(),
                        reason: e.to_string(),
                    })?;
                let cmdline = self.cmdline(&cfg, ctx.actor.actor_id.as_str(), base.is_some(), ateom_init);
                (id, base, digests, cmdline, ateom_init)
            }
            Some(s) => {
                for needed in [VMSTATE, MEMORY] {
                    if s.manifest.artifact(needed).is_none() {
                        return Err(BackendError::Snapshot(format!(
                            "it has no {needed}: not a QEMU snapshot"
                        )));
                    }
                }
                // The snapshot's machine, not the request's: same RAM size, devices, command line.
                let p = &s.manifest.provenance;
                cfg.memory_mib = p.get("qemu.memory_mib").and_then(|v| v.parse().ok());
                cfg.vcpus = p.get("qemu.vcpus").and_then(|v| v.parse().ok());
                cfg.network = ateom_microvm::network_from_provenance(p)?;
                let cmdline = p.get("qemu.cmdline").cloned().unwrap_or_default();
                let disk = snap_dir.filter(|_| s.manifest.artifact(DISK).is_some()).map(|d| d.join(DISK));
                let ateom_init = p.get("qemu.guest_init").is_some_and(|v| v == "ateom-init");
                let in_snapshot: usize = p.get("qemu.volumes").and_then(|v| v.parse().ok()).unwrap_or(0);
                if s.foreign_volumes && in_snapshot > 0 {
                    // The frozen guest's file-system state belongs to these disks: another
                    // snapshot's volumes cannot be swapped in under it.
                    return Err(BackendError::Snapshot(format!(
                        "it holds {in_snapshot} volume disk(s) its frozen guest has mounted; a DATA-on-golden \
                         restore cannot put another snapshot's volumes under it (take the golden snapshot \
                         of a template without durable directories)"
                    )));
                }
                if in_snapshot != volume_dirs.len() {
                    return Err(BackendError::Snapshot(format!(
                        "it was taken with {in_snapshot} durable-directory volume(s), the request names {}",
                        volume_dirs.len()
                    )));
                }
                for i in 0..in_snapshot {
                    if s.manifest.artifact(&ateom_microvm::volumes::disk_name(i)).is_none() {
                        return Err(BackendError::Snapshot(format!(
                            "it has no {}",
                            ateom_microvm::volumes::disk_name(i)
                        )));
                    }
                }
                (s.manifest.kernel_id.clone(), disk, s.manifest.image_digests.clone(), cmdline, ateom_init)
            }
        };
        // Disk and (for a restore) RAM: the workload's own copies.
        let work = ctx.work_dir.clone();
        let mem_src = snap_dir.map(|d| d.join(MEMORY));
        let volumes_src: Vec<(PathBuf, bool)> = match snap_dir {
            // A restore: the snapshot's disks, exactly as the frozen guest left them.
            Some(d) => {
                (0..volume_dirs.len()).map(|i| (d.join(ateom_microvm::volumes::disk_name(i)), true)).collect()
            }
            // A start: disks built from the host directories.
            None => volume_dirs.iter().map(|h| (h.clone(), false)).collect(),
        };
        let volumes = volumes_src.len();
        let mem_mib = cfg.memory_mib.unwrap_or(256);
        let disk_src = base.clone();
        // A confined QEMU reopens its disk as its own user (block-device permission changes at
        // the end of a migration): its copies belong to that user (still 0600).
        let owner = self.opts.confine.then(|| ateom_microvm::sandbox_uid(&self.opts.instance));
        tokio::task::spawn_blocking(move || -> Result<(), BackendError> {
            let give = |path: &Path| match owner {
                Some(id) => std::os::unix::fs::chown(path, Some(id), Some(id))
                    .map_err(|e| BackendError::io(format!("handing {} to the VM's user", path.display()), e)),
                None => Ok(()),
            };
            if let Some(id) = owner {
                // The work directory becomes the confined QEMU's root: its group may enter it
                // (0710), nobody else.
                use std::os::unix::fs::PermissionsExt;
                std::os::unix::fs::chown(&work, None, Some(id))
                    .and_then(|()| std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o710)))
                    .map_err(|e| BackendError::io("opening the work directory to the VM's group", e))?;
            }
            if let Some(src) = disk_src {
                ateom_microvm::copy_sparse(&src, &work.join(DISK))
                    .map_err(|e| BackendError::failed("copying the root disk", e.to_string()))?;
                give(&work.join(DISK))?;
            }
            for (i, (src, copy)) in volumes_src.into_iter().enumerate() {
                let to = work.join(ateom_microvm::volumes::disk_name(i));
                if copy {
                    ateom_microvm::copy_sparse(&src, &to)
                        .map_err(|e| BackendError::failed("copying a volume disk", e.to_string()))?;
                } else {
                    ateom_microvm::volumes::build(&src, &to, i)
                        .map_err(|e| BackendError::failed("building a volume disk", e.to_string()))?;
                }
                give(&to)?;
            }
            match mem_src {
                Some(src) => {
                    ateom_microvm::copy_sparse(&src, &work.join(MEMORY))
                        .map_err(|e| BackendError::failed("copying the guest RAM", e.to_string()))?;
                }
                None => {
                    // Created here, private, rather than by QEMU with its umask.
                    std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(work.join(MEMORY))
                        .map_err(|e| BackendError::io("creating the guest RAM file", e))?;
                }
            }
            // Guest RAM is this file: a page the guest touches on a full disk would kill QEMU
            // (SIGBUS). Its whole size is reserved now, so a full disk fails the start (or the
            // restore) instead of killing a running VM. Zeros are punched out again when a
            // snapshot is committed.
            let ram = std::fs::OpenOptions::new()
                .write(true)
                .open(work.join(MEMORY))
                .map_err(|e| BackendError::io("opening the guest RAM file", e))?;
            nix::fcntl::fallocate(&ram, nix::fcntl::FallocateFlags::empty(), 0, (i64::from(mem_mib)) << 20)
                .map_err(|e| {
                BackendError::io("reserving disk space for the guest RAM", std::io::Error::from(e))
            })?;
            give(&work.join(MEMORY))?;
            Ok(())
        })
        .await
        .map_err(|e| BackendError::failed("preparing files", e.to_string()))??;

        let net = cfg.network.clone().expect("qemu guests always get a network");
        let (ns, dialer) = self.network(&net).await?;
        let mut args =
            qemu_args(self.accel, &self.opts.cpu, &cfg, &kernel, &cmdline, base.is_some(), volumes);
        if self.opts.confine {
            let id = ateom_microvm::sandbox_uid(&self.opts.instance);
            args.extend(confinement_args(id, id, &ctx.work_dir));
        }
        // Stopped until the console hub is connected (a boot prints nothing unseen) or the
        // incoming migration is done.
        args.push("-S".into());
        if snapshot.is_some() {
            args.extend(["-incoming".into(), "defer".into()]);
        }
        let binary = cfg.vmm_path.clone().unwrap_or_else(|| self.opts.binary.clone());
        let spawn_start = std::time::Instant::now();
        let proc =
            match QemuProcess::spawn(&binary, &args, &ctx.work_dir, &ns, ctx.actor.actor_id.as_str()).await {
                Ok(p) => p,
                Err(e) => {
                    drop(dialer);
                    let _ = ns.delete();
                    return Err(e);
                }
            };
        debug!(spawn_ms = spawn_start.elapsed().as_millis() as u64, "qemu up (QMP answers)");
        let mut vm = QemuSandbox {
            proc: Some(proc),
            ns: Some(ns),
            dialer: Some(dialer),
            work_dir: ctx.work_dir.clone(),
            disk: base.is_some(),
            volumes,
            provenance: BackendProvenance::default(),
            image_digests: digests,
        };
        vm.provenance = self.provenance(&cfg, &kernel_id, &cmdline, ateom_init);
        if volumes > 0 {
            vm.provenance.extra.insert("qemu.volumes".into(), volumes.to_string());
        }
        match snapshot {
            // The assets a snapshot was taken with stay in its provenance.
            Some(s) => vm.provenance.extra.extend(
                s.manifest
                    .provenance
                    .iter()
                    .filter(|(k, _)| k.starts_with("asset."))
                    .map(|(k, v)| (k.clone(), v.clone())),
            ),
            None => assets.record(&mut vm.provenance.extra),
        }
        let result = match snapshot {
            None => self.boot(&cfg, &mut vm, ateom_init).await,
            Some(s) => self.load(s, &mut vm, ateom_init).await,
        };
        match result {
            Ok(()) => Ok(Box::new(vm)),
            Err(e) => {
                vm.teardown().await;
                Err(e)
            }
        }
    }

    fn provenance(
        &self,
        cfg: &MicroVmConfig,
        kernel_id: &str,
        cmdline: &str,
        ateom_init: bool,
    ) -> BackendProvenance {
        let mut extra = BTreeMap::new();
        if ateom_init {
            extra.insert("qemu.guest_init".into(), "ateom-init".into());
        }
        extra.insert("qemu.machine".into(), MACHINE.into());
        extra.insert("qemu.accelerator".into(), self.accel.into());
        extra.insert("qemu.cpu".into(), self.opts.cpu.clone());
        extra.insert("qemu.memory_mib".into(), cfg.memory_mib.unwrap_or(256).to_string());
        extra.insert("qemu.vcpus".into(), cfg.vcpus.unwrap_or(1).to_string());
        extra.insert("qemu.cmdline".into(), cmdline.into());
        if let Some(n) = &cfg.network {
            ateom_microvm::network_to_provenance(n, &mut extra);
        }
        BackendProvenance {
            runtime_version: self.info.runtime_version.clone(),
            kernel_id: kernel_id.into(),
            cpu_template: self.opts.cpu.clone(),
            extra,
        }
    }

    async fn boot(
        &self,
        cfg: &MicroVmConfig,
        vm: &mut QemuSandbox,
        ateom_init: bool,
    ) -> Result<(), BackendError> {
        let p = vm.proc.as_mut().expect("spawned");
        p.qmp()
            .await?
            .execute("cont", None)
            .await
            .map_err(|e| BackendError::failed("starting the microVM", e.to_string()))?;
        if ateom_init {
            // The guest's clock starts from the RTC (one-second resolution): set it exactly.
            let dialer = vm.dialer.clone().expect("network");
            let p = vm.proc.as_ref().expect("spawned");
            tokio::select! {
                r = guest::sync_clock_and_entropy(dialer.as_ref(), self.opts.ready_timeout) => r?,
                why = async { loop { if let Some(w) = p.exited() { return w; } tokio::time::sleep(Duration::from_millis(5)).await; } } => {
                    return Err(BackendError::failed("booting the microVM", format!("{why}; console: {}", p.console.tail(2048))));
                }
            }
        }
        if let Some(line) = &cfg.ready_console_line {
            let p = vm.proc.as_ref().expect("spawned");
            let wait = p.console.wait_for(line, 0, self.opts.ready_timeout);
            let died = async {
                loop {
                    if let Some(why) = p.exited() {
                        return why;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                r = wait => r.map_err(|e| BackendError::failed("waiting for the console", e))?,
                why = died => return Err(BackendError::failed("booting the microVM", why)),
            }
        }
        Ok(())
    }

    async fn load(
        &self,
        s: SnapshotInput<'_>,
        vm: &mut QemuSandbox,
        ateom_init: bool,
    ) -> Result<(), BackendError> {
        let p = vm.proc.as_mut().expect("spawned");
        let qmp = p.qmp().await?;
        let fail = |what: &'static str| move |e: qmp::QmpError| BackendError::failed(what, e.to_string());
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
        )
        .await
        .map_err(fail("restoring (migration capabilities)"))?;
        let state = std::fs::File::open(s.verified_dir().await?.join(VMSTATE))
            .map_err(|e| BackendError::io("opening the snapshot's device state", e))?;
        qmp.pass_fd(MIGRATION_FD, std::os::fd::AsFd::as_fd(&state))
            .await
            .map_err(fail("restoring (passing the state file)"))?;
        drop(state);
        qmp.execute("migrate-incoming", Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })))
            .await
            .map_err(fail("restoring (incoming migration)"))?;
        qmp.wait_migration(Duration::from_secs(60)).await.map_err(fail("restoring (device state)"))?;
        qmp.execute("cont", None).await.map_err(fail("resuming the restored microVM"))?;
        let resumed = std::time::Instant::now();
        // Before the workload sees traffic: the host's clock and fresh entropy (guests that
        // run ateom's init; others are on their own).
        if ateom_init {
            let dialer = vm.dialer.clone().expect("network");
            guest::sync_clock_and_entropy(dialer.as_ref(), Duration::from_secs(10)).await?;
            debug!(sync_ms = resumed.elapsed().as_millis() as u64, "guest synced after resume");
        }
        Ok(())
    }
}

/// What confines a QEMU: seccomp (`-sandbox`: obsolete system calls, spawning processes and
/// resource control denied; its snapshots go through descriptors passed over QMP, so it never
/// needs to spawn), then, just before the guest runs (every file, device and socket QEMU needs
/// is open by then), `-runas uid:gid` and `-chroot` into the work directory.
/// The guest's view of the volumes: each mount, on the disk of its distinct volume.
fn guest_volumes(volumes: &[ateom_core::Volume]) -> Vec<ateom_microvm::volumes::VolumeMount> {
    let distinct = ateom_core::distinct_volumes(volumes);
    volumes
        .iter()
        .map(|v| {
            let i = distinct.iter().position(|d| d.name == v.name).unwrap_or(0);
            ateom_microvm::volumes::VolumeMount {
                label: ateom_microvm::volumes::label(i),
                mount_path: v.mount_path.clone(),
            }
        })
        .collect()
}

pub fn confinement_args(uid: u32, gid: u32, work_dir: &Path) -> Vec<String> {
    vec![
        "-sandbox".into(),
        "on,obsolete=deny,spawn=deny,resourcecontrol=deny".into(),
        "-runas".into(),
        format!("{uid}:{gid}"),
        "-chroot".into(),
        work_dir.display().to_string(),
    ]
}

/// The QEMU command line of a microVM (relative paths: QEMU runs in the work directory).
/// Public so benchmarks drive QEMU directly with exactly ateom's machine.
pub fn qemu_args(
    accel: &str,
    cpu: &str,
    cfg: &MicroVmConfig,
    kernel: &Path,
    cmdline: &str,
    disk: bool,
    volumes: usize,
) -> Vec<String> {
    let mem = cfg.memory_mib.unwrap_or(256);
    let mut a: Vec<String> = vec![
        "-M".into(),
        MACHINE.into(),
        "-accel".into(),
        accel.into(),
        "-cpu".into(),
        cpu.into(),
        "-m".into(),
        format!("{mem}M"),
        "-smp".into(),
        cfg.vcpus.unwrap_or(1).to_string(),
        "-object".into(),
        format!("memory-backend-file,id=mem,size={mem}M,mem-path={MEMORY},share=on"),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-no-reboot".into(),
        "-display".into(),
        "none".into(),
        "-chardev".into(),
        format!("socket,id=ser0,path={CONSOLE_SOCKET},server=on,wait=off"),
        "-serial".into(),
        "chardev:ser0".into(),
        "-qmp".into(),
        "unix:qmp.sock,server=on,wait=off".into(),
        "-kernel".into(),
        kernel.display().to_string(),
        "-append".into(),
        cmdline.into(),
    ];
    // Device order fixes the virtio-mmio slots: identical for boot and restore.
    if disk {
        a.extend([
            "-drive".into(),
            // A full host disk is reported to the guest as an I/O error instead of silently
            // stopping the VM (QEMU's default).
            format!("id=root,file={DISK},format=raw,if=none,werror=report,rerror=report"),
            "-device".into(),
            "virtio-blk-device,drive=root".into(),
        ]);
    }
    for i in 0..volumes {
        a.extend([
            "-drive".into(),
            format!(
                "id=vol{i},file={},format=raw,if=none,werror=report,rerror=report",
                ateom_microvm::volumes::disk_name(i)
            ),
            "-device".into(),
            format!("virtio-blk-device,drive=vol{i}"),
        ]);
    }
    if let Some(n) = &cfg.network {
        a.extend([
            "-netdev".into(),
            format!("tap,id=net0,ifname={},script=no,downscript=no", n.tap_name),
            "-device".into(),
            format!("virtio-net-device,netdev=net0,mac={}", n.guest_mac),
        ]);
    }
    a.extend([
        "-object".into(),
        "rng-random,id=rng0,filename=/dev/urandom".into(),
        "-device".into(),
        "virtio-rng-device,rng=rng0".into(),
    ]);
    a
}

/// Single-quotes a path for QEMU's `exec:` migration URIs (run by /bin/sh).
pub fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// One supervised qemu-system process. Nothing ties it to this worker process, so a restarted
/// worker can adopt it: its serial console is a unix socket QEMU serves (`console.sock`, the
/// hub connects to it and a later hub reconnects), QMP is `qmp.sock`, and its stderr goes to
/// `qemu.log` in the work directory (no pipe that would break with the worker).
struct QemuProcess {
    console: Console,
    pid: Option<u32>,
    exited: Arc<Mutex<Option<String>>>,
    waiter: Option<tokio::task::JoinHandle<()>>,
    qmp_path: PathBuf,
    qmp: Option<Qmp>,
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        if self.exited.lock().expect("exit lock").is_none()
            && let Some(pid) = self.pid
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// The last lines of QEMU's own log (its stderr).
fn log_tail(work_dir: &Path) -> String {
    let text = std::fs::read_to_string(work_dir.join(QEMU_LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join(" | ")
}

impl QemuProcess {
    async fn spawn(
        binary: &Path,
        args: &[String],
        work_dir: &Path,
        ns: &Netns,
        label: &str,
    ) -> Result<Self, BackendError> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work_dir.join(QEMU_LOG))
            .map_err(|e| BackendError::io("creating qemu.log", e))?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .current_dir(work_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(false)
            // Its own process group: it outlives this worker process (a restarted worker adopts
            // it), and a terminal's Ctrl-C for the worker does not reach it.
            .process_group(0);
        ateom_net::join_netns_before_exec(&mut cmd, ns, false)
            .map_err(|e| BackendError::Network(e.to_string()))?;
        debug!(?args, "qemu");
        let mut child = cmd.spawn().map_err(|e| BackendError::Unavailable {
            what: format!("QEMU at {}", binary.display()),
            detail: e.to_string(),
        })?;
        let pid = child.id();
        let exited = Arc::new(Mutex::new(None));
        let record = exited.clone();
        let dir = work_dir.to_owned();
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            *record.lock().expect("exit lock") = Some(match status {
                Ok(s) => format!("qemu exited ({s}); its log: {}", log_tail(&dir)),
                Err(e) => format!("waiting for qemu: {e}"),
            });
        });
        Self::attach(pid, exited, Some(waiter), work_dir, label).await
    }

    /// Takes over a QEMU process a previous worker process started (not our child: its exit
    /// is watched through a pidfd).
    async fn adopt(pid: u32, work_dir: &Path, label: &str) -> Result<Self, BackendError> {
        let watch = ateom_sys::ProcessWatch::new(pid)
            .map_err(|e| BackendError::failed("adopting QEMU", format!("process {pid}: {e}")))?;
        let exited = Arc::new(Mutex::new(None));
        let record = exited.clone();
        let dir = work_dir.to_owned();
        let waiter = tokio::spawn(async move {
            watch.wait().await;
            *record.lock().expect("exit lock") =
                Some(format!("qemu (process {pid}) exited; its log: {}", log_tail(&dir)));
        });
        Self::attach(Some(pid), exited, Some(waiter), work_dir, label).await
    }

    /// Connects QMP and the console hub once QEMU serves them.
    async fn attach(
        pid: Option<u32>,
        exited: Arc<Mutex<Option<String>>>,
        waiter: Option<tokio::task::JoinHandle<()>>,
        work_dir: &Path,
        label: &str,
    ) -> Result<Self, BackendError> {
        let qmp_path = work_dir.join("qmp.sock");
        let console_path = work_dir.join(CONSOLE_SOCKET);
        let gone = |e: &Arc<Mutex<Option<String>>>| e.lock().expect("exit lock").clone();
        // The QMP socket appears once QEMU has set the machine up.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let (qmp, console) = loop {
            if let Some(why) = gone(&exited) {
                return Err(BackendError::failed("starting QEMU", why));
            }
            if qmp_path.exists()
                && console_path.exists()
                && let Ok(q) = Qmp::connect(&qmp_path).await
                && let Ok(c) = connect_unix(&console_path).await
            {
                break (q, c);
            }
            if tokio::time::Instant::now() > deadline {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(BackendError::failed(
                    "starting QEMU",
                    "its QMP and console sockets never answered",
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let (from_guest, to_guest) = console.into_split();
        let console = Console::start(from_guest, to_guest, label.into(), &work_dir.join(SERIAL_SOCKET))
            .await
            .map_err(|e| BackendError::failed("starting QEMU", format!("console: {e}")))?;
        Ok(QemuProcess { console, pid, exited, waiter, qmp_path, qmp: Some(qmp) })
    }

    fn exited(&self) -> Option<String> {
        if let Some(why) = self.exited.lock().expect("exit lock").clone() {
            return Some(why);
        }
        // The watcher records the exit a moment later; the process table knows at once.
        match self.pid {
            Some(pid) if !ateom_sys::process_running(pid) => Some(format!("qemu (process {pid}) exited")),
            _ => None,
        }
    }

    async fn qmp(&mut self) -> Result<&mut Qmp, BackendError> {
        if self.qmp.is_none() {
            self.qmp = Some(
                Qmp::connect(&self.qmp_path).await.map_err(|e| BackendError::failed("QMP", e.to_string()))?,
            );
        }
        Ok(self.qmp.as_mut().expect("connected"))
    }

    async fn kill(&mut self) {
        if self.exited().is_none()
            && let Some(pid) = self.pid
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        self.wait(Duration::from_secs(10)).await;
    }

    async fn wait(&mut self, timeout: Duration) -> bool {
        match self.waiter.take() {
            None => true,
            Some(mut w) => match tokio::time::timeout(timeout, &mut w).await {
                Ok(_) => true,
                Err(_) => {
                    self.waiter = Some(w);
                    false
                }
            },
        }
    }
}

/// Connects to a unix socket whose path may be longer than `sockaddr_un` allows.
async fn connect_unix(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    let short = ateom_microvm::SocketPath::new(path)?;
    tokio::net::UnixStream::connect(short.path()).await
}

/// What a QEMU sandbox records to be found again by a restarted worker.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Handle {
    pid: u32,
    work_dir: PathBuf,
    netns: String,
    guest_ip: std::net::Ipv4Addr,
    disk: bool,
    /// Durable-directory volume disks (0 in handles of older workers).
    #[serde(default)]
    volumes: usize,
    provenance: BackendProvenance,
    image_digests: BTreeMap<String, String>,
}

/// A process of ours: a qemu-system whose working directory is a sandbox's work dir.
fn is_our_qemu(proc_dir: &Path, under: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("comm")).is_ok_and(|c| c.starts_with("qemu-system"))
        && std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| cwd.starts_with(under))
}

impl QemuBackend {
    /// Takes over a VM a previous worker process started (see [`Backend::adopt`]): QMP and the
    /// console socket are reconnected, the exit is watched through a pidfd, and a VM stopped
    /// for an interrupted checkpoint is resumed (its RAM file and disk moved back first).
    async fn adopt_vm(&self, req: AdoptRequest<'_>) -> Result<Adopted, BackendError> {
        let h: Handle = serde_json::from_value(req.handle.0.clone())
            .map_err(|e| BackendError::Snapshot(format!("the recorded VM handle is unreadable: {e}")))?;
        let proc_dir = PathBuf::from(format!("/proc/{}", h.pid));
        if h.pid == 0 || !is_our_qemu(&proc_dir, &h.work_dir) {
            return Ok(Adopted::Gone(format!("its QEMU (process {}) is gone", h.pid)));
        }
        let ns = match Netns::open(&h.netns) {
            Ok(ns) => ns,
            Err(e) => return Ok(Adopted::Gone(format!("its network namespace {} is gone: {e}", h.netns))),
        };
        let dialer: Arc<dyn Dialer> = match NetnsDialer::new(&ns, IpAddr::V4(h.guest_ip)) {
            Ok(d) => Arc::new(d),
            Err(e) => return Ok(Adopted::Gone(format!("cannot reach it: {e}"))),
        };
        let label = h.work_dir.parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned());
        let mut proc = match QemuProcess::adopt(h.pid, &h.work_dir, &label.unwrap_or_default()).await {
            Ok(p) => p,
            Err(e) => return Ok(Adopted::Gone(e.to_string())),
        };
        let qmp = proc.qmp().await?;
        let fail = |what: &'static str| move |e: qmp::QmpError| BackendError::failed(what, e.to_string());
        // A migration (the checkpoint's device state) may still be running: let it end.
        if req.interrupted_checkpoint.is_some() {
            let _ = qmp.wait_migration(Duration::from_secs(60)).await;
        }
        let status = qmp.execute("query-status", None).await.map_err(fail("adopting QEMU (query-status)"))?;
        let running = status.get("running").and_then(|r| r.as_bool()).unwrap_or(false);
        if req.resume && !running {
            if let Some(dir) = req.interrupted_checkpoint {
                let mut files = vec![MEMORY.to_owned(), DISK.to_owned()];
                files.extend((0..h.volumes).map(ateom_microvm::volumes::disk_name));
                for f in &files {
                    if dir.join(f).exists() && !h.work_dir.join(f).exists() {
                        std::fs::rename(dir.join(f), h.work_dir.join(f))
                            .map_err(|e| BackendError::io(format!("moving {f} back to the VM"), e))?;
                    }
                }
            }
            qmp.execute("cont", None).await.map_err(fail("resuming the adopted microVM"))?;
            info!(pid = h.pid, "resumed the microVM stopped by an interrupted checkpoint");
        }
        info!(pid = h.pid, "adopted a running QEMU microVM");
        Ok(Adopted::Running(Box::new(QemuSandbox {
            proc: Some(proc),
            ns: Some(ns),
            dialer: Some(dialer),
            work_dir: h.work_dir,
            disk: h.disk,
            volumes: h.volumes,
            provenance: h.provenance,
            image_digests: h.image_digests,
        })))
    }
}

/// One QEMU microVM.
pub struct QemuSandbox {
    proc: Option<QemuProcess>,
    ns: Option<Netns>,
    dialer: Option<Arc<dyn Dialer>>,
    work_dir: PathBuf,
    disk: bool,
    /// Durable-directory volume disks: `volume-<i>.ext4` for i < volumes.
    volumes: usize,
    provenance: BackendProvenance,
    image_digests: BTreeMap<String, String>,
}

impl QemuSandbox {
    /// The files that move between the work directory and a snapshot: RAM, disks.
    fn moving_files(&self) -> Vec<String> {
        let mut files = vec![MEMORY.to_owned()];
        if self.disk {
            files.push(DISK.to_owned());
        }
        files.extend((0..self.volumes).map(ateom_microvm::volumes::disk_name));
        files
    }

    async fn teardown(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill().await;
        }
        self.dialer = None;
        if let Some(ns) = self.ns.take() {
            let name = ns.name().to_owned();
            if let Err(e) = ns.delete() {
                warn!(netns = %name, error = %e, "deleting network namespace");
            }
        }
    }
}

#[async_trait]
impl Sandbox for QemuSandbox {
    fn dialer(&self) -> Option<Arc<dyn Dialer>> {
        self.dialer.clone()
    }

    fn console(&self) -> Option<String> {
        self.proc.as_ref().map(|p| p.console.addr())
    }

    fn exited(&self) -> Option<String> {
        self.proc.as_ref().and_then(QemuProcess::exited)
    }

    fn handle(&self) -> SandboxHandle {
        let ip = match self.dialer.as_ref().map(|d| d.ip()) {
            Some(IpAddr::V4(ip)) => ip,
            _ => std::net::Ipv4Addr::UNSPECIFIED,
        };
        let h = Handle {
            pid: self.proc.as_ref().and_then(|p| p.pid).unwrap_or(0),
            work_dir: self.work_dir.clone(),
            netns: self.ns.as_ref().map(|n| n.name().to_owned()).unwrap_or_default(),
            guest_ip: ip,
            disk: self.disk,
            volumes: self.volumes,
            provenance: self.provenance.clone(),
            image_digests: self.image_digests.clone(),
        };
        SandboxHandle(serde_json::to_value(h).expect("handle serializes"))
    }

    fn snapshot_output(&self) -> CheckpointOutput {
        CheckpointOutput { provenance: self.provenance.clone(), image_digests: self.image_digests.clone() }
    }

    async fn estimated_snapshot_bytes(&self) -> Option<u64> {
        // Guest RAM lives in a file that moves into the snapshot by rename; the migration
        // stream holds device state only.
        Some(32 << 20)
    }

    async fn checkpoint(&mut self, dir: &Path) -> Result<(), BackendError> {
        let p = self.proc.as_mut().ok_or_else(|| BackendError::failed("checkpoint", "QEMU is gone"))?;
        let qmp = p.qmp().await?;
        let fail = |what: &'static str| move |e: qmp::QmpError| BackendError::failed(what, e.to_string());
        qmp.execute("stop", None).await.map_err(fail("stopping the microVM"))?;
        let saved = async {
            qmp.execute(
                "migrate-set-capabilities",
                Some(json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})),
            )
            .await
            .map_err(fail("checkpoint (migration capabilities)"))?;
            let state = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(VMSTATE))
                .map_err(|e| BackendError::io("creating the snapshot's device state", e))?;
            qmp.pass_fd(MIGRATION_FD, std::os::fd::AsFd::as_fd(&state))
                .await
                .map_err(fail("checkpoint (passing the state file)"))?;
            drop(state);
            qmp.execute("migrate", Some(json!({ "uri": format!("fd:{MIGRATION_FD}") })))
                .await
                .map_err(fail("checkpoint (migrate)"))?;
            qmp.wait_migration(Duration::from_secs(120)).await.map_err(fail("checkpoint (device state)"))
        }
        .await;
        if let Err(e) = saved {
            let _ = std::fs::remove_file(dir.join(VMSTATE));
            if let Err(r) = qmp.execute("cont", None).await {
                warn!(error = %r, "resuming after a failed checkpoint");
            }
            return Err(e);
        }
        // The VM stays stopped (and QEMU alive) until the runtime has committed the snapshot:
        // then `delete`, or `abort_checkpoint` if the commit failed. The RAM file
        // (x-ignore-shared left it out of the stream) and the disk join the snapshot by
        // rename; QEMU keeps its mappings and open files.
        for f in self.moving_files() {
            std::fs::rename(self.work_dir.join(&f), dir.join(&f))
                .map_err(|e| BackendError::io(format!("moving {f} into the snapshot"), e))?;
        }
        Ok(())
    }

    fn volumes_to_host(
        &self,
        volumes: &[ateom_core::Volume],
        dir: Option<&Path>,
    ) -> Result<(), BackendError> {
        let distinct = ateom_core::distinct_volumes(volumes);
        if distinct.len() != self.volumes {
            return Err(BackendError::failed(
                "reading the volumes back",
                format!(
                    "the microVM has {} volume disk(s), the workload names {}",
                    self.volumes,
                    distinct.len()
                ),
            ));
        }
        let from = dir.unwrap_or(&self.work_dir);
        for (i, v) in distinct.into_iter().enumerate() {
            ateom_microvm::volumes::extract(&from.join(ateom_microvm::volumes::disk_name(i)), &v.host_dir)
                .map_err(|e| BackendError::failed("reading a volume disk back", e.to_string()))?;
        }
        Ok(())
    }

    fn can_abort_checkpoint(&self) -> bool {
        true
    }

    fn stats(&self) -> Option<ateom_core::SandboxStats> {
        ateom_microvm::process_stats(self.proc.as_ref()?.pid?)
    }

    async fn abort_checkpoint(&mut self, dir: &Path) -> Result<bool, BackendError> {
        let files = self.moving_files();
        let Some(p) = self.proc.as_mut() else { return Ok(false) };
        if p.exited().is_some() {
            return Ok(false);
        }
        for f in files {
            let f = f.as_str();
            if dir.join(f).exists() {
                std::fs::rename(dir.join(f), self.work_dir.join(f))
                    .map_err(|e| BackendError::io(format!("moving {f} back to the VM"), e))?;
            }
        }
        let qmp = p.qmp().await?;
        qmp.execute("cont", None)
            .await
            .map_err(|e| BackendError::failed("resuming the microVM", e.to_string()))?;
        info!("the microVM resumed after its snapshot could not be committed");
        Ok(true)
    }

    async fn is_alive(&self) -> bool {
        self.proc
            .as_ref()
            .is_some_and(|p| p.exited().is_none() && p.pid.is_some_and(ateom_sys::process_running))
    }

    async fn delete(mut self: Box<Self>) -> Result<(), BackendError> {
        self.teardown().await;
        Ok(())
    }
}

#[async_trait]
impl Backend for QemuBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    async fn run(&self, ctx: LaunchContext) -> Result<Box<dyn Sandbox>, BackendError> {
        self.launch(ctx, None).await
    }

    async fn restore(
        &self,
        ctx: LaunchContext,
        snapshot: SnapshotInput<'_>,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        self.launch(ctx, Some(snapshot)).await
    }

    async fn adopt(&self, req: AdoptRequest<'_>) -> Result<Adopted, BackendError> {
        self.adopt_vm(req).await
    }

    async fn cleanup_stale(&self, keep: Option<&SandboxHandle>) -> Result<Vec<String>, BackendError> {
        let keep: Option<Handle> = keep.and_then(|h| serde_json::from_value(h.0.clone()).ok());
        let spare = ateom_microvm::Spare {
            pid: keep.as_ref().map(|k| k.pid),
            netns: keep.as_ref().map(|k| k.netns.clone()),
        };
        // Our QEMUs run with their working directory in <state>/actors/*/work.
        let actors = self.opts.state_dir.join("actors");
        ateom_microvm::remove_stale(&format!("ateom-{}-", self.opts.instance), &spare, |proc_dir| {
            is_our_qemu(proc_dir, &actors)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright")
                .unwrap(),
            "7.2.22"
        );
        assert_eq!(parse_version("QEMU emulator version 10.0.2\n").unwrap(), "10.0.2");
        assert!(parse_version("nope").is_none());
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }
}
