//! # ateom-firecracker
//!
//! The Firecracker backend: one `firecracker` process per workload, driven through its HTTP
//! API on a unix socket exactly as a production worker would.
//!
//! ```text
//!  netns ateom-<instance>-vm
//!  ┌────────────────────────────────────────────────────────────────┐
//!  │ tap0 169.254.0.1/30 ◀──▶ guest eth0 169.254.0.2 (fixed MAC)    │
//!  │ firecracker (cwd = the sandbox's work dir; API socket, logger  │
//!  │ and metrics FIFOs there; serial console = its stdin/stdout)    │
//!  └────────────────────────────────────────────────────────────────┘
//! ```
//!
//! * **Run**: boot-source, machine-config, the root disk (a sparse per-workload copy of the
//!   base image, named by a *relative* path so snapshots restore from any directory), the
//!   tap, InstanceStart; ready on a console line (guests without a network) or, for Linux
//!   guests, on the HTTP readiness probe the runtime runs through the namespace.
//! * **Checkpoint**: pause, Full snapshot (vmstate + memory file) into the snapshot
//!   directory, kill the VMM, move the disk in beside them (Firecracker does not capture
//!   disks). The manifest's provenance records what a restore needs: Firecracker and
//!   snapshot-format versions, kernel sha256, CPU template, the network identity.
//! * **Restore**: a fresh namespace with the same tap name, a new firecracker whose working
//!   directory holds a copy of the disk, `snapshot/load` with the memory file mapped from the
//!   snapshot (Firecracker maps it privately, so the snapshot stays intact and can be
//!   restored again), resume.
//!
//! Firecracker snapshots need the same Firecracker version, host kernel and a compatible
//! CPU: the backend says `restore_requires_same_host`, and the runtime compares the host
//! fingerprint before a restore. Stock Linux guests need hardware virtualisation: on a
//! kvm-pvm host only freestanding (or PVM-patched) guests boot, and a guest that dies with
//! `KVM_EXIT_INTERNAL_ERROR` there is reported as such.

pub mod api;
pub mod vmm;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ateom_core::{
    AdoptRequest, Adopted, Backend, BackendError, BackendInfo, BackendProvenance, Capabilities,
    CheckpointOutput, ContainerSource, Dialer, LaunchContext, MicroVmConfig, RuntimeConfig, Sandbox,
    SandboxHandle, SnapshotInput, TapNetwork,
};
use ateom_microvm::Kvm;
use ateom_net::{Netns, NetnsDialer, TapPlan};
use tracing::{debug, info, warn};

use crate::vmm::{SpawnOptions, Vmm};

/// The artifacts of a Firecracker snapshot.
pub const VMSTATE: &str = "vmstate";
pub const MEMORY: &str = "memory";
pub const DISK: &str = "rootfs.ext4";

/// How the backend is set up; per-request `MicroVmConfig` fields override the defaults.
#[derive(Clone, Debug)]
pub struct FirecrackerOptions {
    pub binary: PathBuf,
    pub state_dir: PathBuf,
    /// Short unique name of this worker, part of namespace names and VMM ids.
    pub instance: String,
    pub defaults: MicroVmConfig,
    /// The static guest init (`ateom-init`) put into root disks built from container images.
    pub guest_init: Option<PathBuf>,
    /// Run every VMM under Firecracker's jailer (a request's `jailer_path` asks for it too,
    /// with this uid/gid and cgroups).
    pub jailer: Option<vmm::Jailer>,
    /// How long a console readiness line may take.
    pub ready_timeout: Duration,
}

/// The Firecracker backend.
pub struct FirecrackerBackend {
    opts: FirecrackerOptions,
    info: BackendInfo,
    snapshot_version: String,
    kvm: Kvm,
}

/// `Firecracker v1.16.1` -> `1.16.1`.
pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("Firecracker v"))?;
    Some(line.trim_start_matches("Firecracker v").trim().to_owned())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

impl FirecrackerBackend {
    /// Probes the binary (version, snapshot format) and `/dev/kvm`.
    pub async fn new(opts: FirecrackerOptions) -> Result<Self, BackendError> {
        let unavailable = |detail: String| BackendError::Unavailable {
            what: format!("firecracker at {}", opts.binary.display()),
            detail,
        };
        let out = tokio::process::Command::new(&opts.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let version = parse_version(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            unavailable(format!("unexpected --version output {:?}", String::from_utf8_lossy(&out.stdout)))
        })?;
        let out = tokio::process::Command::new(&opts.binary)
            .arg("--snapshot-version")
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let snapshot_version = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .trim_start_matches('v')
            .to_owned();
        let kvm = ateom_microvm::kvm();
        if kvm == Kvm::Absent {
            return Err(BackendError::Unavailable {
                what: "/dev/kvm".into(),
                detail: "firecracker needs KVM; this host has no usable /dev/kvm".into(),
            });
        }
        let template = opts.defaults.cpu_template.clone().unwrap_or_else(|| "none".into());
        let info = BackendInfo {
            name: "firecracker".into(),
            runtime_version: version.clone(),
            capabilities: Capabilities {
                supports_local_pause: true,
                supports_incremental: false,
                supports_memory_snapshot: true,
                restore_requires_same_host: true,
                snapshot_portability_class: format!("firecracker/{version}/{}/{template}", cpu_model()),
                accelerator: kvm.name().into(),
            },
        };
        if kvm == Kvm::Pvm {
            warn!(
                "/dev/kvm is kvm-pvm (software nested virtualisation): stock Linux guests cannot boot here; freestanding guests can"
            );
        }
        info!(binary = %opts.binary.display(), %version, %snapshot_version, accelerator = kvm.name(), "firecracker backend ready");
        Ok(Self { opts, info, snapshot_version, kvm })
    }

    fn netns_name(&self) -> String {
        format!("ateom-{}-vm", self.opts.instance)
    }

    /// The request's microVM settings over the worker's defaults.
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
                    reason:
                        "this worker runs the firecracker backend; send a microvm runtime config (or none)"
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
            cpu_template: req.cpu_template.or_else(|| d.cpu_template.clone()),
            network: req.network.or_else(|| d.network.clone()),
            jailer_path: req.jailer_path.or_else(|| self.opts.jailer.as_ref().map(|j| j.binary.clone())),
            ready_console_line: req.ready_console_line.or_else(|| d.ready_console_line.clone()),
        })
    }

    /// The jailer a VMM runs under, if any: the worker's settings, with the request's binary.
    /// Its uid/gid is the worker's own unprivileged one ([`ateom_microvm::sandbox_uid`]) unless
    /// configured.
    fn jailer(&self, cfg: &MicroVmConfig) -> Option<vmm::Jailer> {
        let binary = cfg.jailer_path.clone()?;
        let id = ateom_microvm::sandbox_uid(&self.opts.instance);
        let base = self.opts.jailer.clone().unwrap_or(vmm::Jailer {
            binary: binary.clone(),
            uid: id,
            gid: id,
            cgroup_version: None,
            cgroups: vec![],
        });
        Some(vmm::Jailer { binary, ..base })
    }

    fn binary(&self, cfg: &MicroVmConfig) -> PathBuf {
        cfg.vmm_path.clone().unwrap_or_else(|| self.opts.binary.clone())
    }

    /// The workload's network namespace, fresh (a stale one of the same name is removed).
    fn namespace(&self) -> Result<Netns, BackendError> {
        let net_err = |e: ateom_net::NetError| BackendError::Network(e.to_string());
        let name = self.netns_name();
        Netns::delete_by_name(&name).map_err(net_err)?;
        Netns::create(&name).map_err(net_err)
    }

    /// The tap inside `ns` and a dialer to the guest behind it (none without a network).
    /// Independent of the VMM process, so it runs while that starts.
    async fn attach_network(
        ns: &Netns,
        net: Option<&TapNetwork>,
        tap_owner: Option<u32>,
    ) -> Result<Option<Arc<dyn Dialer>>, BackendError> {
        let net_err = |e: ateom_net::NetError| BackendError::Network(e.to_string());
        let Some(net) = net else { return Ok(None) };
        let plan = TapPlan {
            name: net.tap_name.clone(),
            host_ip: net.host_ip,
            prefix_len: net.prefix_len,
            vnet_hdr: true,
            owner: tap_owner,
        };
        ateom_net::setup_tap(ns, &plan).await.map_err(net_err)?;
        let dialer = NetnsDialer::new(ns, IpAddr::V4(net.guest_ip)).map_err(net_err)?;
        Ok(Some(Arc::new(dialer)))
    }

    fn pvm_hint(&self, detail: String) -> String {
        // The VMM's exit reads "firecracker (process N) exited".
        let vmm_exited = detail.contains("firecracker") && detail.contains("exited");
        if self.kvm == Kvm::Pvm && (detail.contains("KVM_EXIT") || vmm_exited) {
            format!(
                "{detail} — this host's /dev/kvm is kvm-pvm (software nested virtualisation), on which stock Linux guests cannot boot; use hardware virtualisation, a PVM-patched guest kernel, or the qemu backend"
            )
        } else {
            detail
        }
    }

    async fn boot(&self, cfg: &MicroVmConfig, vm: &mut FcSandbox) -> Result<(), BackendError> {
        let kernel = cfg.kernel_image.clone().ok_or_else(|| BackendError::InvalidConfig {
            field: "microvm.kernel_image".into(),
            reason: "no guest kernel: give one in the request or start the worker with --kernel".into(),
        })?;
        let kernel = std::path::absolute(&kernel).map_err(|e| BackendError::io("kernel path", e))?;
        let kernel_id = {
            let k = kernel.clone();
            tokio::task::spawn_blocking(move || ateom_microvm::file_id(&k))
                .await
                .map_err(|e| BackendError::failed("hashing the kernel", e.to_string()))?
                .map_err(|e| BackendError::InvalidConfig {
                    field: "microvm.kernel_image".into(),
                    reason: e.to_string(),
                })?
        };
        vm.kernel_id = kernel_id;
        let vmm = vm.vmm.as_ref().expect("spawned");
        if let Some(base) = &cfg.rootfs_image {
            // The workload's own copy (sparse), where the VMM finds it by a relative name.
            vmm.place(base, DISK, true)?;
            vm.disk = true;
        }
        // Inside a jail the kernel must be inside the chroot too.
        let kernel_path = match vmm.owner {
            Some(_) => vmm.place(&kernel, "vmlinux", false)?,
            None => kernel.display().to_string(),
        };
        let api = &vmm.api;
        let fault = |e: api::ApiError| BackendError::failed("configuring firecracker", e.to_string());
        api.boot_source(&api::BootSource {
            kernel_image_path: kernel_path,
            boot_args: cfg.kernel_cmdline.clone(),
        })
        .await
        .map_err(fault)?;
        api.machine_config(&api::MachineConfig {
            vcpu_count: cfg.vcpus.unwrap_or(1),
            mem_size_mib: cfg.memory_mib.unwrap_or(256),
            cpu_template: cfg.cpu_template.clone(),
        })
        .await
        .map_err(fault)?;
        if vm.disk {
            api.drive(&api::Drive {
                drive_id: "rootfs".into(),
                path_on_host: DISK.into(),
                is_root_device: true,
                is_read_only: false,
            })
            .await
            .map_err(fault)?;
        }
        if let Some(net) = &vm.network {
            api.network_interface(&api::NetworkInterface {
                iface_id: "eth0".into(),
                host_dev_name: net.tap_name.clone(),
                guest_mac: net.guest_mac.clone(),
            })
            .await
            .map_err(fault)?;
        }
        let mark = vm.vmm.as_ref().expect("spawned").console.printed();
        api.start()
            .await
            .map_err(|e| BackendError::failed("starting the microVM", self.pvm_hint(e.to_string())))?;
        if let Some(line) = &cfg.ready_console_line {
            let vmm = vm.vmm.as_ref().expect("spawned");
            let wait = vmm.console.wait_for(line, mark, self.opts.ready_timeout);
            let died = async {
                loop {
                    if let Some(why) = vmm.exited() {
                        return why;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::select! {
                r = wait => r.map_err(|e| BackendError::failed("waiting for the console", e))?,
                why = died => return Err(BackendError::failed("booting the microVM", self.pvm_hint(why))),
            }
        }
        vm.sync_guest(self.opts.ready_timeout).await.map_err(|e| match e {
            BackendError::Failed { op, detail } => BackendError::Failed { op, detail: self.pvm_hint(detail) },
            other => other,
        })
    }

    async fn launch(
        &self,
        ctx: LaunchContext,
        snapshot: Option<SnapshotInput<'_>>,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        let mut cfg = self.effective(&ctx.runtime, &ctx.resources)?;
        // substrate's runtime_asset_paths: below the request's microvm config, above the
        // worker's defaults.
        let assets =
            ateom_core::AssetPaths::check(&ctx.asset_paths, &["firecracker", "jailer", "kernel", "rootfs"])?;
        let explicit = match &ctx.runtime {
            Some(RuntimeConfig::MicroVm(m)) => Some(m),
            _ => None,
        };
        cfg.take_assets(explicit, &assets, "firecracker");
        if let Some(p) = assets.get("jailer") {
            cfg.jailer_path = Some(p);
        }
        ateom_core::refuse_durable_dirs("firecracker", &ctx.volumes)?;
        let mut image_digests = BTreeMap::new();
        let mut ateom_init = false;
        if snapshot.is_none() {
            for (c, source) in &ctx.containers {
                match source {
                    ContainerSource::Image(image) => {
                        // The same guest images as the qemu backend: the image as an ext4
                        // root disk with ateom-init inside.
                        let init = self.opts.guest_init.clone().ok_or_else(|| BackendError::Unavailable {
                            what: "the guest init (ateom-init)".into(),
                            detail:
                                "build it with scripts/build-init.sh and start the worker with --guest-init"
                                    .into(),
                        })?;
                        let (cache, c2, image) = (ctx.cache_dir.clone(), c.clone(), image.clone());
                        let (disk, name, digest) = tokio::task::spawn_blocking(move || {
                            ateom_microvm::guest::disk_for(&cache, &c2, &image, &init, &[])
                        })
                        .await
                        .map_err(|e| BackendError::failed("building the root disk", e.to_string()))??;
                        info!(disk = %disk.path.display(), cache_hit = disk.cache_hit, "root disk");
                        cfg.rootfs_image = Some(disk.path);
                        image_digests.insert(name, digest);
                        ateom_init = true;
                    }
                    ContainerSource::Bundle(_) => {
                        return Err(BackendError::InvalidConfig {
                            field: "spec.containers".into(),
                            reason: format!(
                                "container {:?}: the firecracker backend boots images, not node-agent bundles",
                                c.name
                            ),
                        });
                    }
                    ContainerSource::Nothing { .. } => {}
                }
            }
        } else if let Some(s) = snapshot {
            ateom_init =
                s.manifest.provenance.get("firecracker.guest_init").is_some_and(|v| v == "ateom-init");
            image_digests = s.manifest.image_digests.clone();
        }
        // A guest that is probed over HTTP needs a network even if none was configured.
        if cfg.network.is_none() && ctx.containers.iter().any(|(c, _)| c.readyz.is_some()) {
            cfg.network = Some(ateom_microvm::default_network());
        }
        // A restore gets the network identity the snapshot was taken with.
        if let Some(s) = snapshot {
            cfg.network = ateom_microvm::network_from_provenance(&s.manifest.provenance)?;
        }
        if ateom_init && snapshot.is_none() {
            let net = cfg.network.get_or_insert_with(ateom_microvm::default_network).clone();
            let mut cmdline = format!(
                "console=ttyS0 reboot=k panic=-1 pci=off root=/dev/vda rw rootfstype=ext4 init={} {}",
                ateom_microvm::guest_image::INIT_PATH,
                ateom_microvm::guest::boot_args(&net, ctx.actor.actor_id.as_str())
            );
            if let Some(extra) = &cfg.kernel_cmdline {
                cmdline.push(' ');
                cmdline.push_str(extra);
            }
            cfg.kernel_cmdline = Some(cmdline);
        }
        let jailer = self.jailer(&cfg);
        let phase = std::time::Instant::now();
        let ns = self.namespace()?;
        let ns_us = phase.elapsed().as_micros() as u64;
        let id = format!("ateom-{}-{:08x}", self.opts.instance, rand::random::<u32>());
        // The VMM process starts (its API socket takes a few ms) while the tap is made: the
        // device is first needed when the snapshot is loaded or the VM configured.
        let binary = self.binary(&cfg);
        let spawn = Vmm::spawn(SpawnOptions {
            binary: &binary,
            work_dir: &ctx.work_dir,
            netns: Some(&ns),
            id: &id,
            jailer: jailer.as_ref(),
        });
        let attach = Self::attach_network(&ns, cfg.network.as_ref(), jailer.as_ref().map(|j| j.uid));
        let (vmm, dialer) = match tokio::join!(spawn, attach) {
            (Ok(v), Ok(d)) => (v, d),
            (Ok(mut v), Err(e)) => {
                v.kill().await;
                let _ = ns.delete();
                return Err(e);
            }
            (Err(e), dialer) => {
                drop(dialer);
                let _ = ns.delete();
                return Err(e);
            }
        };
        debug!(netns_us = ns_us, spawn_and_tap_us = phase.elapsed().as_micros() as u64 - ns_us, "VMM up");
        let mut vm = FcSandbox {
            vmm: Some(vmm),
            ns: Some(ns),
            dialer,
            network: cfg.network.clone(),
            disk: false,
            kernel_id: String::new(),
            cfg: cfg.clone(),
            version: self.info.runtime_version.clone(),
            snapshot_version: self.snapshot_version.clone(),
            accelerator: self.kvm.name().into(),
            ateom_init,
            image_digests,
            assets: match snapshot {
                Some(s) => s
                    .manifest
                    .provenance
                    .iter()
                    .filter(|(k, _)| k.starts_with("asset."))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => {
                    let mut a = BTreeMap::new();
                    assets.record(&mut a);
                    a
                }
            },
        };
        let result = match snapshot {
            None => self.boot(&cfg, &mut vm).await,
            Some(s) => self.load(s, &mut vm).await,
        };
        match result {
            Ok(()) => {
                info!(%id, op = if snapshot.is_some() { "restore" } else { "run" }, "microVM running");
                Ok(Box::new(vm))
            }
            Err(e) => {
                Box::new(vm).teardown().await;
                Err(e)
            }
        }
    }

    async fn load(&self, s: SnapshotInput<'_>, vm: &mut FcSandbox) -> Result<(), BackendError> {
        for needed in [VMSTATE, MEMORY] {
            if s.manifest.artifact(needed).is_none() {
                return Err(BackendError::Snapshot(format!(
                    "it has no {needed}: not a Firecracker snapshot"
                )));
            }
        }
        vm.kernel_id = s.manifest.kernel_id.clone();
        let dir = s.verified_dir().await?;
        let vmm = vm.vmm.as_ref().expect("spawned");
        if s.manifest.artifact(DISK).is_some() {
            // A copy: the restored VM writes to it, the snapshot stays as it was.
            vmm.place(&dir.join(DISK), DISK, true)?;
            vm.disk = true;
        }
        // vmstate and memory are only read (firecracker maps the memory privately): outside a
        // jail straight from the snapshot, inside one linked into the chroot.
        let (vmstate, memory) = match vmm.owner {
            Some(_) => {
                (vmm.place(&dir.join(VMSTATE), VMSTATE, false)?, vmm.place(&dir.join(MEMORY), MEMORY, false)?)
            }
            None => (dir.join(VMSTATE).display().to_string(), dir.join(MEMORY).display().to_string()),
        };
        for key in ["firecracker.vcpus", "firecracker.memory_mib"] {
            if let Some(v) = s.manifest.provenance.get(key) {
                match key {
                    "firecracker.vcpus" => vm.cfg.vcpus = v.parse().ok(),
                    _ => vm.cfg.memory_mib = v.parse().ok(),
                }
            }
        }
        vm.cfg.kernel_cmdline = s.manifest.provenance.get("firecracker.boot_args").cloned();
        vm.cfg.cpu_template = (!s.manifest.cpu_template.is_empty() && s.manifest.cpu_template != "none")
            .then(|| s.manifest.cpu_template.clone());
        let api = &vm.vmm.as_ref().expect("spawned").api;
        let phase = std::time::Instant::now();
        api.load_snapshot(&api::SnapshotLoad {
            snapshot_path: vmstate,
            mem_backend: api::MemBackend { backend_type: "File", backend_path: memory },
            resume_vm: true,
        })
        .await
        .map_err(|e| BackendError::failed("loading the snapshot", self.pvm_hint(e.to_string())))?;
        debug!(load_us = phase.elapsed().as_micros() as u64, "snapshot loaded and resumed");
        // Inside a jail the snapshot's files were linked in by name. The VMM holds what it needs
        // (the state is read, the memory mapped privately): unlink them, so the next snapshot
        // this VM writes under the same names creates new files instead of writing through the
        // links into the snapshot it came from.
        if let Some(vmm) = vm.vmm.as_ref()
            && vmm.owner.is_some()
        {
            for f in [VMSTATE, MEMORY] {
                if let Err(e) = std::fs::remove_file(vmm.root.join(f)) {
                    warn!(file = f, error = %e, "unlinking the snapshot file from the jail");
                }
            }
        }
        // Before the workload sees traffic: the host's clock and fresh entropy.
        vm.sync_guest(Duration::from_secs(10)).await
    }
}

/// What a Firecracker sandbox records to be found again by a restarted worker.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Handle {
    pid: u32,
    id: String,
    work_dir: PathBuf,
    root: PathBuf,
    owner: Option<(u32, u32)>,
    netns: String,
    network: Option<TapNetwork>,
    disk: bool,
    kernel_id: String,
    cfg: MicroVmConfig,
    version: String,
    snapshot_version: String,
    accelerator: String,
    ateom_init: bool,
    image_digests: BTreeMap<String, String>,
    #[serde(default)]
    assets: BTreeMap<String, String>,
}

/// A firecracker (or jailer) process of this worker: its `--id` starts with `prefix`.
fn is_our_vmm(proc_dir: &Path, prefix: &str) -> bool {
    std::fs::read(proc_dir.join("cmdline")).is_ok_and(|cmdline| {
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2).any(|w| w[0] == b"--id" && w[1].starts_with(prefix.as_bytes()))
    })
}

impl FirecrackerBackend {
    /// Takes over a VM a previous worker process started (see [`Backend::adopt`]): API socket,
    /// console and logs reconnected, exit watched through a pidfd; a VM paused by an
    /// interrupted checkpoint is resumed (its disk moved back first).
    async fn adopt_vm(&self, req: AdoptRequest<'_>) -> Result<Adopted, BackendError> {
        let h: Handle = serde_json::from_value(req.handle.0.clone())
            .map_err(|e| BackendError::Snapshot(format!("the recorded VM handle is unreadable: {e}")))?;
        let prefix = format!("ateom-{}-", self.opts.instance);
        if !h.id.starts_with(&prefix) || !is_our_vmm(Path::new(&format!("/proc/{}", h.pid)), &h.id) {
            return Ok(Adopted::Gone(format!("its firecracker (process {}) is gone", h.pid)));
        }
        let ns = match Netns::open(&h.netns) {
            Ok(ns) => ns,
            Err(e) => return Ok(Adopted::Gone(format!("its network namespace {} is gone: {e}", h.netns))),
        };
        let dialer: Option<Arc<dyn Dialer>> = match &h.network {
            None => None,
            Some(n) => match NetnsDialer::new(&ns, IpAddr::V4(n.guest_ip)) {
                Ok(d) => Some(Arc::new(d)),
                Err(e) => return Ok(Adopted::Gone(format!("cannot reach it: {e}"))),
            },
        };
        let vmm = match Vmm::adopt(h.pid, &h.work_dir, &h.root, h.owner, &h.id).await {
            Ok(v) => v,
            Err(e) => return Ok(Adopted::Gone(e.to_string())),
        };
        // A snapshot being written when the worker died: its API call is still running in the
        // VMM; the next call waits for it.
        let state = vmm.api.instance_info().await.map(|i| i.state).unwrap_or_default();
        if req.resume && state == "Paused" {
            if let Some(dir) = req.interrupted_checkpoint
                && h.disk
                && dir.join(DISK).exists()
                && !h.root.join(DISK).exists()
            {
                std::fs::rename(dir.join(DISK), h.root.join(DISK))
                    .map_err(|e| BackendError::io("moving the disk back to the VM", e))?;
            }
            vmm.api
                .resume()
                .await
                .map_err(|e| BackendError::failed("resuming the adopted microVM", e.to_string()))?;
            info!(pid = h.pid, "resumed the microVM paused by an interrupted checkpoint");
        }
        info!(pid = h.pid, id = %h.id, "adopted a running Firecracker microVM");
        Ok(Adopted::Running(Box::new(FcSandbox {
            vmm: Some(vmm),
            ns: Some(ns),
            dialer,
            network: h.network,
            disk: h.disk,
            kernel_id: h.kernel_id,
            cfg: h.cfg,
            version: h.version,
            snapshot_version: h.snapshot_version,
            accelerator: h.accelerator,
            ateom_init: h.ateom_init,
            image_digests: h.image_digests,
            assets: h.assets,
        })))
    }
}

/// One microVM.
pub struct FcSandbox {
    vmm: Option<Vmm>,
    ns: Option<Netns>,
    dialer: Option<Arc<dyn Dialer>>,
    network: Option<TapNetwork>,
    disk: bool,
    kernel_id: String,
    cfg: MicroVmConfig,
    version: String,
    snapshot_version: String,
    accelerator: String,
    /// The guest runs ateom-init: sync its clock and entropy after boot and restore.
    ateom_init: bool,
    image_digests: BTreeMap<String, String>,
    /// `asset.<key>` provenance: the runtime_asset_paths this VM was started with.
    assets: BTreeMap<String, String>,
}

impl FcSandbox {
    /// Clock and entropy from the host through ateom-init's control channel.
    async fn sync_guest(&self, timeout: Duration) -> Result<(), BackendError> {
        if !self.ateom_init {
            return Ok(());
        }
        let dialer = self
            .dialer
            .clone()
            .ok_or_else(|| BackendError::failed("syncing the guest", "it has no network"))?;
        let vmm = self.vmm.as_ref().expect("spawned");
        tokio::select! {
            r = ateom_microvm::guest::sync_clock_and_entropy(dialer.as_ref(), timeout) => r,
            why = async { loop { if let Some(w) = vmm.exited() { return w; } tokio::time::sleep(Duration::from_millis(5)).await; } } => {
                Err(BackendError::failed("booting the microVM", why))
            }
        }
    }

    async fn teardown(mut self: Box<Self>) {
        if let Some(mut vmm) = self.vmm.take() {
            vmm.kill().await;
        }
        self.dialer = None;
        if let Some(ns) = self.ns.take() {
            let name = ns.name().to_owned();
            if let Err(e) = ns.delete() {
                warn!(netns = %name, error = %e, "deleting network namespace");
            }
        }
    }

    fn provenance(&self) -> BackendProvenance {
        let mut extra = BTreeMap::new();
        extra.insert("firecracker.snapshot_version".into(), self.snapshot_version.clone());
        extra.insert("firecracker.vcpus".into(), self.cfg.vcpus.unwrap_or(1).to_string());
        extra.insert("firecracker.memory_mib".into(), self.cfg.memory_mib.unwrap_or(256).to_string());
        if let Some(args) = &self.cfg.kernel_cmdline {
            extra.insert("firecracker.boot_args".into(), args.clone());
        }
        extra.insert("accelerator".into(), self.accelerator.clone());
        if self.ateom_init {
            extra.insert("firecracker.guest_init".into(), "ateom-init".into());
        }
        if let Some(n) = &self.network {
            ateom_microvm::network_to_provenance(n, &mut extra);
        }
        extra.extend(self.assets.clone());
        BackendProvenance {
            runtime_version: self.version.clone(),
            kernel_id: self.kernel_id.clone(),
            cpu_template: self.cfg.cpu_template.clone().unwrap_or_else(|| "none".into()),
            extra,
        }
    }
}

#[async_trait]
impl Sandbox for FcSandbox {
    fn dialer(&self) -> Option<Arc<dyn Dialer>> {
        self.dialer.clone()
    }

    fn console(&self) -> Option<String> {
        self.vmm.as_ref().map(|v| v.console.addr())
    }

    fn exited(&self) -> Option<String> {
        self.vmm.as_ref().and_then(Vmm::exited)
    }

    fn handle(&self) -> SandboxHandle {
        let Some(vmm) = self.vmm.as_ref() else { return SandboxHandle::default() };
        let h = Handle {
            pid: vmm.pid().unwrap_or(0),
            id: vmm.id.clone(),
            work_dir: vmm.work_dir.clone(),
            root: vmm.root.clone(),
            owner: vmm.owner,
            netns: self.ns.as_ref().map(|n| n.name().to_owned()).unwrap_or_default(),
            network: self.network.clone(),
            disk: self.disk,
            kernel_id: self.kernel_id.clone(),
            cfg: self.cfg.clone(),
            version: self.version.clone(),
            snapshot_version: self.snapshot_version.clone(),
            accelerator: self.accelerator.clone(),
            ateom_init: self.ateom_init,
            image_digests: self.image_digests.clone(),
            assets: self.assets.clone(),
        };
        SandboxHandle(serde_json::to_value(h).expect("handle serializes"))
    }

    fn snapshot_output(&self) -> CheckpointOutput {
        CheckpointOutput { provenance: self.provenance(), image_digests: self.image_digests.clone() }
    }

    async fn estimated_snapshot_bytes(&self) -> Option<u64> {
        // A Full snapshot writes all guest memory (holes are punched at commit); the disk
        // moves in by rename.
        Some(u64::from(self.cfg.memory_mib.unwrap_or(256)) << 20)
    }

    async fn checkpoint(&mut self, dir: &Path) -> Result<(), BackendError> {
        let vmm = self.vmm.as_mut().ok_or_else(|| BackendError::failed("checkpoint", "the VMM is gone"))?;
        vmm.api.pause().await.map_err(|e| BackendError::failed("pausing the microVM", e.to_string()))?;
        let mem = self.cfg.memory_mib.unwrap_or(256);
        let created = vmm
            .api
            .create_snapshot(
                &api::SnapshotCreate {
                    snapshot_type: "Full",
                    snapshot_path: VMSTATE.into(),
                    mem_file_path: MEMORY.into(),
                },
                mem,
            )
            .await;
        if let Err(e) = created {
            let _ = std::fs::remove_file(vmm.root.join(VMSTATE));
            let _ = std::fs::remove_file(vmm.root.join(MEMORY));
            if let Err(r) = vmm.api.resume().await {
                warn!(error = %r, "resuming after a failed snapshot");
            }
            return Err(BackendError::failed("creating the snapshot", e.to_string()));
        }
        // The snapshot is complete; the VM stays paused (and alive) until the runtime has
        // committed it: then `delete`, or `abort_checkpoint` if the commit failed. What the
        // VMM wrote in its root, and its disk, move into the snapshot (same file system:
        // renames; the VMM keeps its open disk file).
        let mut files = vec![VMSTATE, MEMORY];
        if self.disk {
            files.push(DISK);
        }
        for f in files {
            std::fs::rename(vmm.root.join(f), dir.join(f))
                .map_err(|e| BackendError::io(format!("moving {f} into the snapshot"), e))?;
        }
        Ok(())
    }

    fn can_abort_checkpoint(&self) -> bool {
        true
    }

    fn stats(&self) -> Option<ateom_core::SandboxStats> {
        ateom_microvm::process_stats(self.vmm.as_ref()?.pid()?)
    }

    async fn abort_checkpoint(&mut self, dir: &Path) -> Result<bool, BackendError> {
        let Some(vmm) = self.vmm.as_mut() else { return Ok(false) };
        if vmm.exited().is_some() {
            return Ok(false);
        }
        if self.disk && dir.join(DISK).exists() {
            std::fs::rename(dir.join(DISK), vmm.root.join(DISK))
                .map_err(|e| BackendError::io("moving the disk back to the VM", e))?;
        }
        vmm.api.resume().await.map_err(|e| BackendError::failed("resuming the microVM", e.to_string()))?;
        info!("the microVM resumed after its snapshot could not be committed");
        Ok(true)
    }

    async fn is_alive(&self) -> bool {
        self.vmm
            .as_ref()
            .is_some_and(|v| v.exited().is_none() && v.pid().is_some_and(ateom_sys::process_running))
    }

    async fn delete(self: Box<Self>) -> Result<(), BackendError> {
        self.teardown().await;
        Ok(())
    }
}

#[async_trait]
impl Backend for FirecrackerBackend {
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
        // Our VMMs carry `--id ateom-<instance>-...`.
        let prefix = format!("ateom-{}-", self.opts.instance);
        let mut done =
            ateom_microvm::remove_stale(&prefix, &spare, |proc_dir| is_our_vmm(proc_dir, &prefix))?;
        for dir in vmm::jail_cgroups(&prefix) {
            if keep.as_ref().is_some_and(|k| dir.ends_with(&k.id)) {
                continue;
            }
            if std::fs::remove_dir(&dir).is_ok() {
                done.push(format!("cgroup {}", dir.display()));
            }
        }
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(parse_version("Firecracker v1.16.1\n\n").unwrap(), "1.16.1");
        assert!(parse_version("nope").is_none());
    }
}
