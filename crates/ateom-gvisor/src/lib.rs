//! # ateom-gvisor
//!
//! The gVisor backend. Each workload runs in a runsc sandbox with its own network stack:
//!
//! ```text
//!  netns ateom-<instance>-gw              netns ateom-<instance>-sb
//!  ┌──────────────────────────┐           ┌─────────────────────────────────┐
//!  │ gw0 169.254.0.1/30       │◀── veth ─▶│ eth0 169.254.0.2/30 (runsc's    │
//!  │ ateom's sockets live here│           │ netstack takes it over)          │
//!  └──────────────────────────┘           └─────────────────────────────────┘
//! ```
//!
//! runsc takes over every interface with an IPv4 address in the sandbox's namespace, so the
//! host side of the veth lives in a second namespace; ateom's forwarder and readiness probe
//! open their sockets there. Every runsc command for a sandbox runs inside the sandbox's
//! namespace (its control socket is abstract, i.e. per network namespace).
//!
//! Root file system changes go to an in-sandbox memory overlay (`--overlay2 root:memory`),
//! so the checkpoint image carries memory, processes *and* file system deltas, and the
//! unpacked image underneath stays pristine and shared (cached by image digest).
//!
//! Quirks of older runsc releases handled here (see the brief): the root-namespace check
//! looks at `/proc/sys/net/core/rmem_default`, which newer kernels show in every namespace,
//! so runsc is started with an empty tmpfs over `/proc/sys/net/core` in a private mount
//! namespace; `ip netns exec` is never used (it remounts /sys); a checkpoint fails while a
//! TCP connection is open or in TIME_WAIT, so the runtime aborts forwarded connections
//! first and every ateom-side socket closes with RST.

pub mod runsc;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use ateom_core::{
    AdoptRequest, Adopted, Backend, BackendError, BackendInfo, BackendProvenance, Capabilities,
    CheckpointOutput, ContainerSource, Dialer, LaunchContext, RuntimeConfig, Sandbox, SandboxHandle,
    SnapshotInput,
};
use ateom_net::{Netns, NetnsDialer, VethPlan};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::process::Command;
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

pub use runsc::Runsc;

/// Address of the workload inside its namespace. Fixed, so a snapshot restores anywhere
/// with the same network identity.
pub const SANDBOX_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
/// Address of ateom's side of the veth.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
const PREFIX_LEN: u8 = 30;

/// How the backend is set up.
#[derive(Clone, Debug)]
pub struct GvisorOptions {
    pub runsc_path: PathBuf,
    /// `ptrace` unless told otherwise (the `kvm` platform does not work on PVM hosts).
    pub platform: String,
    /// The worker's state directory; runsc's state goes to `<state_dir>/runsc`.
    pub state_dir: PathBuf,
    /// Short unique name of this worker, part of every namespace name.
    pub instance: String,
    /// Write runsc debug logs to `<work_dir>/runsc-debug/`.
    pub debug_logs: bool,
}

/// The gVisor backend.
pub struct GvisorBackend {
    opts: GvisorOptions,
    runsc: Runsc,
    info: BackendInfo,
    mask_core_sysctls: bool,
    /// runsc binaries named by requests, probed once.
    others: Mutex<BTreeMap<PathBuf, Runsc>>,
}

impl GvisorBackend {
    /// Probes runsc and the kernel.
    pub async fn new(opts: GvisorOptions) -> Result<Self, BackendError> {
        let runsc = Runsc::probe(&opts.runsc_path).await?;
        if !runsc.features.platforms.is_empty() && !runsc.features.platforms.contains(&opts.platform) {
            return Err(BackendError::InvalidConfig {
                field: "platform".into(),
                reason: format!(
                    "runsc {} supports {:?}, not {:?}",
                    runsc.version, runsc.features.platforms, opts.platform
                ),
            });
        }
        let mask_core_sysctls = ateom_net::kernel_shows_core_sysctls_in_netns()
            .map_err(|e| BackendError::Network(format!("probing the kernel's per-namespace sysctls: {e}")))?;
        info!(
            runsc = %runsc.path.display(),
            version = %runsc.version,
            overlay2 = runsc.features.overlay2,
            mask_core_sysctls,
            platform = %opts.platform,
            "gvisor backend ready"
        );
        let info = info_for(&runsc, &opts.platform);
        Ok(Self { opts, runsc, info, mask_core_sysctls, others: Mutex::new(BTreeMap::new()) })
    }

    fn root_dir(&self) -> PathBuf {
        self.opts.state_dir.join("runsc")
    }

    fn netns_prefix(&self) -> String {
        format!("ateom-{}-", self.opts.instance)
    }

    async fn runsc_for(&self, runtime: &Option<RuntimeConfig>) -> Result<Runsc, BackendError> {
        match runtime {
            None => Ok(self.runsc.clone()),
            Some(RuntimeConfig::MicroVm(_)) => Err(BackendError::InvalidConfig {
                field: "microvm".into(),
                reason: "this worker runs the gvisor backend; send a gvisor runtime config (or none)".into(),
            }),
            Some(RuntimeConfig::Gvisor(g)) => {
                if let Some(p) = &g.platform
                    && p != &self.opts.platform
                {
                    return Err(BackendError::InvalidConfig {
                        field: "gvisor.platform".into(),
                        reason: format!("this worker runs runsc with platform {}", self.opts.platform),
                    });
                }
                match &g.runsc_path {
                    None => Ok(self.runsc.clone()),
                    Some(p) if *p == self.runsc.path => Ok(self.runsc.clone()),
                    Some(p) => {
                        let mut others = self.others.lock().await;
                        if let Some(r) = others.get(p) {
                            return Ok(r.clone());
                        }
                        let r = Runsc::probe(p).await?;
                        others.insert(p.clone(), r.clone());
                        Ok(r)
                    }
                }
            }
        }
    }

    /// The global flags every runsc invocation for our sandboxes gets.
    fn global_args(&self, runsc: &Runsc, work_dir: Option<&Path>) -> Vec<String> {
        let mut args = vec![
            format!("--root={}", self.root_dir().display()),
            format!("--platform={}", self.opts.platform),
            "--network=sandbox".to_owned(),
        ];
        if runsc.features.overlay2 {
            args.push("--overlay2=root:memory".into());
        } else if runsc.features.overlay_legacy {
            args.push("--overlay".into());
        }
        // runsc's own log always goes to the sandbox's work directory (at its default level:
        // warnings and fatal errors, which is where runsc says why a sandbox did not start);
        // `--debug-logs` raises it to debug.
        if let Some(dir) = work_dir {
            if self.opts.debug_logs {
                args.push("--debug".into());
            }
            args.push(format!("--debug-log={}/runsc-debug/", dir.display()));
        }
        args
    }

    async fn launch(
        &self,
        ctx: LaunchContext,
        snapshot: Option<SnapshotInput<'_>>,
    ) -> Result<Box<dyn Sandbox>, BackendError> {
        // substrate's runtime_asset_paths may name the runsc binary (below an explicit gvisor
        // runtime config, above the worker's default).
        let assets = ateom_core::AssetPaths::check(&ctx.asset_paths, &["runsc"])?;
        let runtime = match (&ctx.runtime, assets.get("runsc")) {
            (None, Some(p)) => {
                Some(RuntimeConfig::Gvisor(ateom_core::GvisorConfig { runsc_path: Some(p), platform: None }))
            }
            (r, _) => r.clone(),
        };
        let runsc = self.runsc_for(&runtime).await?;
        if let Some(s) = snapshot
            && s.manifest.runtime_version != runsc.version
        {
            return Err(BackendError::Snapshot(format!(
                "snapshot was taken with runsc {}, this runsc is {}",
                s.manifest.runtime_version, runsc.version
            )));
        }
        let [(container, source)] = ctx.containers.as_slice() else {
            return Err(BackendError::InvalidConfig {
                field: "spec.containers".into(),
                reason: format!(
                    "the gvisor backend runs exactly one container per workload, got {} (this runsc cannot restore a multi-container sandbox; see ARCHITECTURE.md)",
                    ctx.containers.len()
                ),
            });
        };

        // 1. Network namespaces (removing any leftovers of ours first).
        let net = SandboxNet::create(&self.netns_prefix()).await?;

        // 2. Root file system and OCI spec (with the sandbox's limits and its own cgroup).
        let cid = format!("ateom-{}-{:08x}", self.opts.instance, rand::random::<u32>());
        let bundle_dir = ctx.work_dir.join("bundle");
        let prepared = {
            let container = container.clone();
            let source = source.clone();
            let cache = ctx.cache_dir.join("images");
            let bundle_dir = bundle_dir.clone();
            let netns_path = net.sandbox.path().to_owned();
            let hostname = ctx.actor.actor_id.to_string();
            let limits = Limits {
                resources: ctx.resources,
                cgroups_path: format!("/ateom/{cid}"),
                volumes: ctx
                    .volumes
                    .iter()
                    .filter(|v| v.container == container.name.as_str())
                    .cloned()
                    .collect(),
            };
            tokio::task::spawn_blocking(move || {
                prepare_bundle(&container, &source, &cache, &bundle_dir, &netns_path, &hostname, &limits)
            })
            .await
            .map_err(|e| BackendError::failed("preparing bundle", e.to_string()))?
        };
        let (digest, image_cache_hit) = match prepared {
            Ok(d) => d,
            Err(e) => {
                net.delete();
                return Err(e);
            }
        };
        let mut image_digests = BTreeMap::new();
        image_digests.insert(container.name.to_string(), digest.clone());
        if let Some(s) = snapshot
            && let Some(want) = s.manifest.image_digests.get(container.name.as_str())
            && *want != digest
        {
            if want.starts_with("bundle-sha256:") && digest.starts_with("bundle-sha256:") {
                // A node agent prepares its bundles itself and may word the config differently
                // on each worker (annotations, hostnames): that the image is the same is its
                // contract, not something ateom can judge from the config.
                warn!(
                    container = %container.name,
                    snapshot_bundle = %want,
                    bundle = %digest,
                    "the node agent's bundle differs from the one the snapshot was taken with; restoring anyway"
                );
            } else {
                net.delete();
                return Err(BackendError::Snapshot(format!(
                    "container {:?}: the snapshot was taken from image {want}, the image given now is {digest}",
                    container.name
                )));
            }
        }
        debug!(image = %digest, cache_hit = image_cache_hit, "bundle ready");

        // 3. runsc run / restore inside the sandbox namespace, in the foreground: the runsc
        //    process stays our child and is the parent of the sandbox and gofer, so it reaps
        //    them the moment they exit. (With --detach they are orphaned to PID 1, and on hosts
        //    whose init reaps lazily `runsc delete` waits ~2 s for the zombie to go away.)
        let console = ctx.work_dir.join("console.log");
        let mut args = self.global_args(&runsc, Some(&ctx.work_dir));
        match snapshot {
            None => args.push("run".into()),
            Some(s) => {
                let dir = match s.verified_dir().await {
                    Ok(d) => d,
                    Err(e) => {
                        net.delete();
                        return Err(e);
                    }
                };
                args.extend(["restore".into(), format!("--image-path={}", dir.display())]);
            }
        }
        args.extend([format!("--bundle={}", bundle_dir.display()), cid.clone()]);
        let op = if snapshot.is_some() { "runsc restore" } else { "runsc run" };
        let supervisor = match self.spawn_runsc(&runsc, &net.sandbox, &args, &console).await {
            Ok(child) => Supervisor::watch(child, op, console.clone()),
            Err(e) => {
                net.delete();
                return Err(BackendError::failed(op, e));
            }
        };
        let dialer: Arc<dyn Dialer> = match NetnsDialer::new(&net.gateway, IpAddr::V4(SANDBOX_IP)) {
            Ok(d) => Arc::new(d),
            Err(e) => {
                let _ = runsc_output(
                    &runsc.path,
                    Some(&net.sandbox),
                    &[self.global_args(&runsc, None), vec!["delete".into(), "--force".into(), cid.clone()]]
                        .concat(),
                )
                .await;
                net.delete();
                return Err(BackendError::Network(e.to_string()));
            }
        };
        info!(%cid, op, "sandbox starting");
        Ok(Box::new(GvisorSandbox {
            backend: BackendRef { global: self.global_args(&runsc, None) },
            runsc,
            cid,
            bundle: bundle_dir,
            net: Some(net),
            dialer: Some(dialer),
            supervisor,
            image_digests,
            platform: self.opts.platform.clone(),
        }))
    }

    /// Spawns one long-running runsc command (run/restore) in `ns`, output appended to `log`.
    async fn spawn_runsc(
        &self,
        runsc: &Runsc,
        ns: &Netns,
        args: &[String],
        log: &Path,
    ) -> Result<tokio::process::Child, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("opening {}: {e}", log.display()))?;
        let err_file = file.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&runsc.path);
        // Its own process group: the sandbox outlives this worker process (a restarted worker
        // adopts it), and a terminal's Ctrl-C for the worker does not reach it.
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err_file)
            .kill_on_drop(false)
            .process_group(0);
        ateom_net::join_netns_before_exec(&mut cmd, ns, self.mask_core_sysctls).map_err(|e| e.to_string())?;
        debug!(?args, "runsc");
        cmd.spawn().map_err(|e| format!("spawning {}: {e}", runsc.path.display()))
    }
}

fn info_for(runsc: &Runsc, platform: &str) -> BackendInfo {
    BackendInfo {
        name: "gvisor".into(),
        runtime_version: runsc.version.clone(),
        capabilities: Capabilities {
            supports_local_pause: true,
            supports_incremental: false,
            supports_memory_snapshot: true,
            // The sentry's state is host-independent; runsc itself refuses a CPU that lacks
            // features the snapshot uses.
            restore_requires_same_host: false,
            snapshot_portability_class: format!("gvisor/{}/{}", runsc.version, std::env::consts::ARCH),
            accelerator: platform.to_owned(),
        },
    }
}

/// Runs runsc (optionally inside `ns`) and returns stdout, or stderr as the error.
async fn runsc_output(path: &Path, ns: Option<&Netns>, args: &[String]) -> Result<String, String> {
    let mut cmd = Command::new(path);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(ns) = ns {
        ateom_net::join_netns_before_exec(&mut cmd, ns, false).map_err(|e| e.to_string())?;
    }
    let out = cmd.output().await.map_err(|e| format!("spawning {}: {e}", path.display()))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status))
    }
}

fn console_tail(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else { return String::new() };
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(8)..];
    if tail.is_empty() { String::new() } else { format!("; output: {}", tail.join(" | ")) }
}

/// Resolves the container's root file system and writes `<bundle_dir>/config.json`.
/// Returns the image digest (or a digest of the node agent's config) and whether the
/// unpacked image came from the cache.
fn prepare_bundle(
    container: &ateom_core::ContainerSpec,
    source: &ContainerSource,
    cache: &Path,
    bundle_dir: &Path,
    netns_path: &Path,
    hostname: &str,
    limits: &Limits,
) -> Result<(String, bool), BackendError> {
    let image_err = |detail: String| BackendError::Image { container: container.name.to_string(), detail };
    std::fs::create_dir_all(bundle_dir)
        .map_err(|e| BackendError::io(format!("creating {}", bundle_dir.display()), e))?;
    let (spec, digest, hit) = match source {
        ContainerSource::Image(image) => {
            let store = ateom_image::ImageStore::new(cache);
            let prepared = store.prepare(image).map_err(|e| image_err(e.to_string()))?;
            let overrides = ateom_image::ProcessOverrides {
                command: container.command.clone(),
                args: container.args.clone(),
                env: container.env.clone(),
            };
            let opts = ateom_image::BundleOptions {
                rootfs: prepared.rootfs.clone(),
                hostname: hostname.to_owned(),
                netns_path: Some(netns_path.to_owned()),
                readonly_rootfs: false,
            };
            let spec = ateom_image::runtime_spec(&prepared.config, &overrides, &opts)
                .map_err(|e| image_err(e.to_string()))?;
            (spec, prepared.manifest_digest, prepared.cache_hit)
        }
        ContainerSource::Nothing { expected_bundle } => {
            return Err(BackendError::InvalidConfig {
                field: "spec.containers[0].image".into(),
                reason: format!(
                    "is empty and there is no node-agent bundle at {} (config.json + rootfs/)",
                    expected_bundle.display()
                ),
            });
        }
        ContainerSource::Bundle(dir) => {
            let mut spec = ateom_image::load_bundle(dir).map_err(|e| image_err(e.to_string()))?;
            set_network_namespace(&mut spec, netns_path);
            // The digest of the config as the node agent wrote it, in canonical form (its
            // capability sets are unordered).
            let raw = std::fs::read(dir.join("config.json")).unwrap_or_default();
            let canonical = serde_json::from_slice::<oci_spec::runtime::Spec>(&raw)
                .ok()
                .and_then(|s| ateom_image::canonical_json(&s).ok())
                .unwrap_or(raw);
            (spec, format!("bundle-sha256:{}", hex::encode(Sha256::digest(&canonical))), true)
        }
    };
    let mut spec = spec;
    apply_limits(&mut spec, limits).map_err(|e| image_err(format!("setting the sandbox's limits: {e}")))?;
    ateom_image::write_bundle(bundle_dir, &spec).map_err(|e| image_err(e.to_string()))?;
    Ok((digest, hit))
}

/// A sandbox's limits, the cgroup runsc puts it in, and its durable-directory volumes.
struct Limits {
    resources: ateom_core::Resources,
    cgroups_path: String,
    volumes: Vec<ateom_core::Volume>,
}

/// Sets the spec's cgroup path and its memory, CPU and pids limits (runsc enforces them on
/// the whole sandbox through that cgroup, which `runsc delete` removes). A node agent's
/// bundle keeps its own limits where the request sets none.
fn apply_limits(spec: &mut oci_spec::runtime::Spec, limits: &Limits) -> Result<(), oci_spec::OciSpecError> {
    use oci_spec::runtime::{LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder};
    let r = &limits.resources;
    let mut linux = spec.linux().clone().unwrap_or_default();
    linux.set_cgroups_path(Some(limits.cgroups_path.clone().into()));
    let mut res = linux.resources().clone().unwrap_or_default();
    if let Some(bytes) = r.memory_bytes {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        // No swap beyond the limit: memory+swap equals memory.
        res.set_memory(Some(LinuxMemoryBuilder::default().limit(bytes).swap(bytes).build()?));
    }
    if let Some(milli) = r.cpu_milli {
        const PERIOD: u64 = 100_000;
        let quota = i64::from(milli) * PERIOD as i64 / 1000;
        res.set_cpu(Some(LinuxCpuBuilder::default().quota(quota).period(PERIOD).build()?));
    }
    if let Some(pids) = r.pids {
        res.set_pids(Some(LinuxPidsBuilder::default().limit(i64::from(pids)).build()?));
    }
    linux.set_resources(Some(res));
    spec.set_linux(Some(linux));
    // Durable directories: host directories bind-mounted read-write (not under the memory
    // overlay, so their data stays on the host; a snapshot copies them in).
    if !limits.volumes.is_empty() {
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for v in &limits.volumes {
            mounts.retain(|m| m.destination() != Path::new(&v.mount_path));
            mounts.push(
                oci_spec::runtime::MountBuilder::default()
                    .destination(PathBuf::from(&v.mount_path))
                    .typ("bind")
                    .source(v.host_dir.clone())
                    .options(vec!["rbind".to_owned(), "rw".to_owned()])
                    .build()?,
            );
        }
        spec.set_mounts(Some(mounts));
    }
    Ok(())
}

/// Points the spec's network namespace at ours (adding one if the node agent left it out).
fn set_network_namespace(spec: &mut oci_spec::runtime::Spec, path: &Path) {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let ns = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Network)
        .path(path.to_owned())
        .build()
        .expect("namespace builds");
    let mut linux = spec.linux().clone().unwrap_or_default();
    let mut namespaces = linux.namespaces().clone().unwrap_or_default();
    namespaces.retain(|n| n.typ() != LinuxNamespaceType::Network);
    namespaces.push(ns);
    linux.set_namespaces(Some(namespaces));
    spec.set_linux(Some(linux));
}

/// The pair of namespaces of one sandbox.
struct SandboxNet {
    sandbox: Netns,
    gateway: Netns,
}

impl SandboxNet {
    async fn create(prefix: &str) -> Result<Self, BackendError> {
        let net_err = |e: ateom_net::NetError| BackendError::Network(e.to_string());
        let sb_name = format!("{prefix}sb");
        let gw_name = format!("{prefix}gw");
        for stale in [&sb_name, &gw_name] {
            Netns::delete_by_name(stale).map_err(net_err)?;
        }
        let sandbox = Netns::create(&sb_name).map_err(net_err)?;
        let gateway = match Netns::create(&gw_name) {
            Ok(g) => g,
            Err(e) => {
                let _ = sandbox.delete();
                return Err(net_err(e));
            }
        };
        let plan = VethPlan {
            sandbox_ip: SANDBOX_IP,
            gateway_ip: GATEWAY_IP,
            prefix_len: PREFIX_LEN,
            sandbox_if: "eth0".into(),
            gateway_if: "gw0".into(),
            sandbox_mac: Some([0x02, 0xa7, 0xe0, 0x00, 0x00, 0x02]),
        };
        let net = Self { sandbox, gateway };
        if let Err(e) = ateom_net::setup_veth(&net.sandbox, &net.gateway, &plan).await {
            net.delete();
            return Err(net_err(e));
        }
        Ok(net)
    }

    fn delete(self) {
        for ns in [self.sandbox, self.gateway] {
            let name = ns.name().to_owned();
            if let Err(e) = ns.delete() {
                warn!(netns = %name, error = %e, "deleting network namespace");
            }
        }
    }
}

/// What a sandbox needs of its backend after launch.
struct BackendRef {
    global: Vec<String>,
}

/// Watches the foreground runsc process (our child, or — after the worker restarted — a
/// process adopted by PID) and records how it ended.
struct Supervisor {
    exited: Arc<std::sync::Mutex<Option<String>>>,
    task: Option<tokio::task::JoinHandle<()>>,
    pid: Option<u32>,
}

impl Supervisor {
    fn watch(mut child: tokio::process::Child, op: &'static str, console: PathBuf) -> Self {
        let pid = child.id();
        let exited = Arc::new(std::sync::Mutex::new(None));
        let record = exited.clone();
        let task = tokio::spawn(async move {
            let reason = match child.wait().await {
                Ok(status) => format!("{op} exited ({status}){}", console_tail(&console)),
                Err(e) => format!("waiting for {op}: {e}"),
            };
            debug!(%reason, "runsc supervisor");
            *record.lock().expect("supervisor lock") = Some(reason);
        });
        Self { exited, task: Some(task), pid }
    }

    /// Watches a process that is not our child (its exit status is its parent's to see).
    fn adopt(pid: u32, console: PathBuf) -> std::io::Result<Self> {
        let watch = ateom_sys::ProcessWatch::new(pid)?;
        let exited = Arc::new(std::sync::Mutex::new(None));
        let record = exited.clone();
        let task = tokio::spawn(async move {
            watch.wait().await;
            let reason = format!("the sandbox's runsc process {pid} exited{}", console_tail(&console));
            debug!(%reason, "runsc supervisor (adopted)");
            *record.lock().expect("supervisor lock") = Some(reason);
        });
        Ok(Self { exited, task: Some(task), pid: Some(pid) })
    }

    fn exited(&self) -> Option<String> {
        self.exited.lock().expect("supervisor lock").clone()
    }

    /// Waits until the runsc process has exited; kills it after `grace`.
    async fn finish(&mut self, grace: std::time::Duration) {
        let Some(mut task) = self.task.take() else { return };
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            if let Some(pid) = self.pid {
                warn!(pid, "runsc did not exit after delete; killing it");
                nix_kill(pid as i32);
            }
            let _ = task.await;
        }
    }
}

/// What a gVisor sandbox records to be found again by a restarted worker.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Handle {
    cid: String,
    runsc_path: PathBuf,
    runsc_version: String,
    /// The foreground `runsc run`/`restore` process.
    pid: Option<u32>,
    bundle: PathBuf,
    sandbox_netns: String,
    gateway_netns: String,
    platform: String,
    image_digests: BTreeMap<String, String>,
}

/// The exit status of `runsc checkpoint`, written by the shell that ran it (so that it
/// survives the worker process) into the snapshot directory.
const CHECKPOINT_STATUS: &str = ".runsc-status";
/// `runsc checkpoint`'s output, in the snapshot directory.
const CHECKPOINT_LOG: &str = ".runsc-checkpoint.log";

/// One runsc sandbox.
pub struct GvisorSandbox {
    backend: BackendRef,
    runsc: Runsc,
    cid: String,
    bundle: PathBuf,
    net: Option<SandboxNet>,
    /// Dropped before the namespaces are deleted (its helper thread lives in one).
    dialer: Option<Arc<dyn Dialer>>,
    supervisor: Supervisor,
    image_digests: BTreeMap<String, String>,
    platform: String,
}

impl GvisorSandbox {
    async fn runsc(&self, tail: &[&str]) -> Result<String, String> {
        let mut args = self.backend.global.clone();
        args.extend(tail.iter().map(|s| (*s).to_owned()));
        runsc_output(&self.runsc.path, self.net.as_ref().map(|n| &n.sandbox), &args).await
    }

    /// `runsc state`'s status of the container (`running`, `stopped`, ...), if it answers.
    async fn status(&self) -> Option<String> {
        let json = self.runsc(&["state", &self.cid]).await.ok()?;
        serde_json::from_str::<serde_json::Value>(&json)
            .ok()?
            .get("status")
            .and_then(|s| s.as_str())
            .map(str::to_owned)
    }
}

#[async_trait]
impl Sandbox for GvisorSandbox {
    fn dialer(&self) -> Option<Arc<dyn Dialer>> {
        self.dialer.clone()
    }

    fn exited(&self) -> Option<String> {
        self.supervisor.exited()
    }

    fn handle(&self) -> SandboxHandle {
        let h = Handle {
            cid: self.cid.clone(),
            runsc_path: self.runsc.path.clone(),
            runsc_version: self.runsc.version.clone(),
            pid: self.supervisor.pid,
            bundle: self.bundle.clone(),
            sandbox_netns: self.net.as_ref().map(|n| n.sandbox.name().to_owned()).unwrap_or_default(),
            gateway_netns: self.net.as_ref().map(|n| n.gateway.name().to_owned()).unwrap_or_default(),
            platform: self.platform.clone(),
            image_digests: self.image_digests.clone(),
        };
        SandboxHandle(serde_json::to_value(h).expect("handle serializes"))
    }

    fn snapshot_output(&self) -> CheckpointOutput {
        let mut extra = BTreeMap::new();
        extra.insert("gvisor.platform".into(), self.platform.clone());
        extra.insert("gvisor.sandbox_ip".into(), SANDBOX_IP.to_string());
        extra.insert(
            "gvisor.overlay".into(),
            if self.runsc.features.overlay2 { "root:memory" } else { "legacy" }.into(),
        );
        CheckpointOutput {
            provenance: BackendProvenance {
                runtime_version: self.runsc.version.clone(),
                kernel_id: String::new(),
                cpu_template: String::new(),
                extra,
            },
            image_digests: self.image_digests.clone(),
        }
    }

    async fn checkpoint(&mut self, dir: &Path) -> Result<(), BackendError> {
        // `runsc checkpoint` runs under a shell that records its exit status in the snapshot
        // directory, with its output in a file there: if this worker process dies meanwhile,
        // the checkpoint still completes (the sandbox does the work), and the restarted worker
        // reads from the status whether the capture is whole.
        let mut args = self.backend.global.clone();
        args.extend(["checkpoint".into(), format!("--image-path={}", dir.display()), self.cid.clone()]);
        let log = std::fs::File::create(dir.join(CHECKPOINT_LOG))
            .map_err(|e| BackendError::io("creating the checkpoint log", e))?;
        let err_log = log.try_clone().map_err(|e| BackendError::io("creating the checkpoint log", e))?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(r#"s="$1"; shift; "$@"; echo $? > "$s""#)
            .arg("ateom-checkpoint")
            .arg(dir.join(CHECKPOINT_STATUS))
            .arg(&self.runsc.path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .kill_on_drop(false)
            .process_group(0);
        if let Some(net) = &self.net {
            ateom_net::join_netns_before_exec(&mut cmd, &net.sandbox, false)
                .map_err(|e| BackendError::Network(e.to_string()))?;
        }
        let t = std::time::Instant::now();
        let status = cmd
            .status()
            .await
            .map_err(|e| BackendError::failed("runsc checkpoint", format!("spawning /bin/sh: {e}")))?;
        let recorded = std::fs::read_to_string(dir.join(CHECKPOINT_STATUS)).unwrap_or_default();
        if !status.success() || recorded.trim() != "0" {
            let out = std::fs::read_to_string(dir.join(CHECKPOINT_LOG)).unwrap_or_default();
            return Err(BackendError::failed(
                "runsc checkpoint",
                format!("exit status {}: {}", recorded.trim(), out.trim()),
            ));
        }
        debug!(cid = %self.cid, elapsed_ms = t.elapsed().as_millis() as u64, "runsc checkpoint done");
        Ok(())
    }

    async fn is_alive(&self) -> bool {
        if self.supervisor.exited().is_some() {
            return false;
        }
        self.status().await.as_deref() == Some("running")
    }

    fn stats(&self) -> Option<ateom_core::SandboxStats> {
        // The sandbox's cgroup (`/ateom/<cid>`), v1 hierarchies or v2.
        let read = |rel: &str| -> Option<u64> {
            std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(rel)).ok()?.trim().parse().ok()
        };
        let cg = format!("ateom/{}", self.cid);
        let memory = read(&format!("memory/{cg}/memory.usage_in_bytes"))
            .or_else(|| read(&format!("{cg}/memory.current")));
        let cpu = read(&format!("cpuacct/{cg}/cpuacct.usage")).or_else(|| {
            let stat = std::fs::read_to_string(format!("/sys/fs/cgroup/{cg}/cpu.stat")).ok()?;
            let usec: u64 = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse().ok()?;
            Some(usec * 1000)
        });
        let pids = read(&format!("pids/{cg}/pids.current")).or_else(|| read(&format!("{cg}/pids.current")));
        Some(ateom_core::SandboxStats { memory_bytes: memory, cpu_ns: cpu, pids })
    }

    async fn delete(mut self: Box<Self>) -> Result<(), BackendError> {
        let t = std::time::Instant::now();
        // Stop the container first and let the foreground runsc reap it; `runsc delete`
        // then finds nothing left to wait for. (Deleting a running restored container
        // directly waits 5 s for a gofer that only its parent can reap.)
        if self.supervisor.exited().is_none() {
            if let Err(e) = self.runsc(&["kill", &self.cid, "KILL"]).await {
                debug!(cid = %self.cid, error = %e, "runsc kill before delete");
            }
            self.supervisor.finish(std::time::Duration::from_secs(5)).await;
        }
        let result = self.runsc(&["delete", "--force", &self.cid]).await;
        self.supervisor.finish(std::time::Duration::from_secs(5)).await;
        // A sandbox that died while runsc was still creating it has no state for `runsc
        // delete` to find: its cgroups are removed here (empty once its processes are gone).
        for dir in sandbox_cgroups(&self.cid) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                debug!(cgroup = %dir.display(), error = %e, "removing the sandbox's cgroup");
            }
        }
        debug!(cid = %self.cid, elapsed_ms = t.elapsed().as_millis() as u64, "runsc delete done");
        self.dialer = None;
        if let Some(net) = self.net.take() {
            net.delete();
        }
        match result {
            Ok(_) => Ok(()),
            // Already gone is fine: delete is idempotent in effect.
            Err(e) if e.contains("does not exist") || e.contains("not found") => Ok(()),
            Err(e) => Err(BackendError::failed("runsc delete", e)),
        }
    }
}

impl GvisorBackend {
    /// Takes over a sandbox a previous worker process started (see [`Backend::adopt`]).
    async fn adopt_sandbox(&self, req: AdoptRequest<'_>) -> Result<Adopted, BackendError> {
        let h: Handle = serde_json::from_value(req.handle.0.clone())
            .map_err(|e| BackendError::Snapshot(format!("the recorded sandbox handle is unreadable: {e}")))?;
        let runsc = if h.runsc_path == self.runsc.path {
            self.runsc.clone()
        } else {
            self.runsc_for(&Some(RuntimeConfig::Gvisor(ateom_core::GvisorConfig {
                runsc_path: Some(h.runsc_path.clone()),
                platform: None,
            })))
            .await?
        };
        if runsc.version != h.runsc_version {
            return Ok(Adopted::Gone(format!(
                "it was started by runsc {}, {} is now {}",
                h.runsc_version,
                runsc.path.display(),
                runsc.version
            )));
        }
        let (sandbox_ns, gateway_ns) = match (Netns::open(&h.sandbox_netns), Netns::open(&h.gateway_netns)) {
            (Ok(s), Ok(g)) => (s, g),
            (s, _) => {
                let missing = if s.is_err() { &h.sandbox_netns } else { &h.gateway_netns };
                return Ok(Adopted::Gone(format!("its network namespace {missing} is gone")));
            }
        };
        let console = req.work_dir.join("console.log");
        let net = SandboxNet { sandbox: sandbox_ns, gateway: gateway_ns };
        let supervisor = match h
            .pid
            .filter(|p| ateom_sys::pid_exists(*p))
            .map(|p| Supervisor::adopt(p, console.clone()))
        {
            Some(Ok(s)) => s,
            _ => Supervisor { exited: Arc::new(std::sync::Mutex::new(None)), task: None, pid: None },
        };
        let mut sandbox = GvisorSandbox {
            backend: BackendRef { global: self.global_args(&runsc, None) },
            runsc,
            cid: h.cid.clone(),
            bundle: h.bundle.clone(),
            net: Some(net),
            dialer: None,
            supervisor,
            image_digests: h.image_digests.clone(),
            platform: h.platform.clone(),
        };

        if let Some(dir) = req.interrupted_checkpoint {
            // Wait (bounded) for a `runsc checkpoint` still under way to record its status.
            let status_file = dir.join(CHECKPOINT_STATUS);
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while !status_file.exists() && std::time::Instant::now() < deadline && checkpoint_running(dir) {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let recorded = std::fs::read_to_string(&status_file).unwrap_or_default();
            if recorded.trim() == "0" {
                info!(cid = %h.cid, "the interrupted runsc checkpoint completed");
                let _ = Box::new(sandbox).delete().await;
                return Ok(Adopted::Captured);
            }
            if !recorded.trim().is_empty() {
                debug!(cid = %h.cid, status = %recorded.trim(), "the interrupted runsc checkpoint failed");
            }
        }
        match sandbox.status().await.as_deref() {
            Some("running") => {
                let dialer: Arc<dyn Dialer> = match NetnsDialer::new(
                    &sandbox.net.as_ref().expect("set").gateway,
                    IpAddr::V4(SANDBOX_IP),
                ) {
                    Ok(d) => Arc::new(d),
                    Err(e) => return Ok(Adopted::Gone(format!("cannot reach it: {e}"))),
                };
                sandbox.dialer = Some(dialer);
                if sandbox.supervisor.pid.is_none() {
                    // The foreground runsc is gone but the sandbox runs: watch the sandbox itself.
                    if let Some(pid) = sandbox_pid(&sandbox).await
                        && let Ok(s) = Supervisor::adopt(pid, console)
                    {
                        sandbox.supervisor = s;
                    }
                }
                info!(cid = %h.cid, "adopted a running gVisor sandbox");
                Ok(Adopted::Running(Box::new(sandbox)))
            }
            other => {
                let why = match other {
                    Some(status) => format!("runsc reports its container {} as {status}", h.cid),
                    None => format!("runsc no longer knows its container {}", h.cid),
                };
                Ok(Adopted::Gone(why))
            }
        }
    }
}

/// The sandbox process's PID from `runsc state`.
async fn sandbox_pid(s: &GvisorSandbox) -> Option<u32> {
    let json = s.runsc(&["state", &s.cid]).await.ok()?;
    let v: serde_json::Value = serde_json::from_str(&json).ok()?;
    v.get("pid").and_then(serde_json::Value::as_u64).map(|p| p as u32)
}

/// True while a `runsc checkpoint` writing into `dir` is still running.
fn checkpoint_running(dir: &Path) -> bool {
    let needle = format!("--image-path={}", dir.display());
    let Ok(entries) = std::fs::read_dir("/proc") else { return false };
    entries.flatten().any(|e| {
        std::fs::read(e.path().join("cmdline"))
            .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == needle.as_bytes()))
    })
}

#[async_trait]
impl Backend for GvisorBackend {
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
        if snapshot.manifest.artifact("checkpoint.img").is_none() {
            return Err(BackendError::Snapshot("it has no checkpoint.img: not a gVisor snapshot".into()));
        }
        self.launch(ctx, Some(snapshot)).await
    }

    async fn adopt(&self, req: AdoptRequest<'_>) -> Result<Adopted, BackendError> {
        self.adopt_sandbox(req).await
    }

    async fn cleanup_stale(&self, keep: Option<&SandboxHandle>) -> Result<Vec<String>, BackendError> {
        let keep: Option<Handle> = keep.and_then(|h| serde_json::from_value(h.0.clone()).ok());
        let mut done = Vec::new();
        let root = self.root_dir();
        std::fs::create_dir_all(&root)
            .map_err(|e| BackendError::io(format!("creating {}", root.display()), e))?;
        let mut list_args = self.global_args(&self.runsc, None);
        list_args.extend(["list".into(), "--quiet".into()]);
        let sb = Netns::open(&format!("{}sb", self.netns_prefix())).ok();
        if let Ok(ids) = runsc_output(&self.runsc.path, None, &list_args).await {
            let kept = keep.as_ref().map(|k| k.cid.as_str());
            for id in ids.lines().map(str::trim).filter(|l| !l.is_empty() && Some(*l) != kept) {
                let mut args = self.global_args(&self.runsc, None);
                args.extend(["delete".into(), "--force".into(), id.to_owned()]);
                match runsc_output(&self.runsc.path, sb.as_ref(), &args).await {
                    Ok(_) => done.push(format!("runsc container {id}")),
                    Err(e) => warn!(container = id, error = %e, "could not delete stale container"),
                }
            }
        }
        for pid in processes_using_root(&root, keep.as_ref()) {
            // These are runsc processes started for this state directory by a previous
            // ateom: ours to kill.
            if nix_kill(pid) {
                done.push(format!("runsc process {pid}"));
            }
        }
        // Cgroups runsc made for sandboxes of ours that no `runsc delete` removed.
        let prefix = format!("ateom-{}-", self.opts.instance);
        for dir in sandbox_cgroups(&prefix) {
            if keep.as_ref().is_some_and(|k| dir.ends_with(&k.cid)) {
                continue;
            }
            if std::fs::remove_dir(&dir).is_ok() {
                done.push(format!("cgroup {}", dir.display()));
            }
        }
        let names = Netns::list_with_prefix(&self.netns_prefix())
            .map_err(|e| BackendError::Network(e.to_string()))?;
        let kept: Vec<&str> = keep
            .as_ref()
            .map(|k| vec![k.sandbox_netns.as_str(), k.gateway_netns.as_str()])
            .unwrap_or_default();
        for name in names.into_iter().filter(|n| !kept.contains(&n.as_str())) {
            Netns::delete_by_name(&name).map_err(|e| BackendError::Network(e.to_string()))?;
            done.push(format!("network namespace {name}"));
        }
        Ok(done)
    }
}

/// PIDs of processes whose command line carries `--root=<root>`, except those of the kept
/// (adopted) sandbox: the foreground runsc, the sandbox and the gofer each carry its
/// container id or its bundle among their arguments.
fn processes_using_root(root: &Path, keep: Option<&Handle>) -> Vec<i32> {
    let needle = format!("--root={}", root.display());
    let spared = |cmdline: &[u8]| {
        keep.is_some_and(|k| {
            let bundle = k.bundle.as_os_str().as_encoded_bytes();
            let bundle_flag = format!("--bundle={}", k.bundle.display());
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == k.cid.as_bytes() || arg == bundle || arg == bundle_flag.as_bytes())
        })
    };
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return pids };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(e.path().join("cmdline"))
            && cmdline.split(|b| *b == 0).any(|arg| arg == needle.as_bytes())
            && !spared(&cmdline)
        {
            pids.push(pid);
        }
    }
    pids
}

fn nix_kill(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).is_ok()
}

/// The cgroup directories (any hierarchy, v1 or v2) runsc created for containers whose id
/// starts with `prefix`: under ateom's `/ateom` cgroup, and at the top of a hierarchy (where
/// runsc puts a container that names no cgroup path, as earlier ateom versions did).
pub fn sandbox_cgroups(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
    for root in roots {
        for parent in [root.join("ateom"), root] {
            let Ok(entries) = std::fs::read_dir(&parent) else { continue };
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(prefix) && e.path().is_dir() {
                    out.push(e.path());
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}
