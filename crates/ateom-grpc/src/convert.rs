//! Wire messages -> validated domain requests, and domain results -> wire messages.
//!
//! Every field is checked here; an error names the field by its path in the request
//! (`spec.containers[1].readyz.http_get.port`) so a caller knows exactly what to fix.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ateom_core as core;
use ateom_core::{
    ActorRef, ContainerSpec, Destination, DurableDir, HttpProbe, ImageRef, InvalidArgument, Name,
    RuntimeConfig, Scope, SnapshotId, WorkloadSpec,
};
use ateom_proto as pb;

/// Most containers one workload may have.
pub const MAX_CONTAINERS: usize = 16;

/// One container as a wire layout carries it, borrowed: what [`workload_of`] validates. Each
/// layout ([`workload`] here, `convert_v2` for substrate's renumbered one) fills it in from its
/// own message types, so the rules live in one place.
pub(crate) struct ContainerFields<'a> {
    pub name: &'a str,
    /// `None`: no readiness probe; `Some(None)`: a probe without its HTTP action.
    pub readyz: Option<Option<(&'a str, i32)>>,
    /// The probe's timeout in seconds (0: the worker's default).
    pub readyz_timeout_seconds: i32,
    /// Each durable directory: (field path below the container, the volume's name if the
    /// layout names it, mount path).
    pub durable_dirs: Vec<DurableDirField<'a>>,
    pub image: &'a str,
    pub command: &'a [String],
    pub args: &'a [String],
    pub env: Option<&'a std::collections::HashMap<String, String>>,
}

/// A durable directory as a layout carries it.
pub(crate) struct DurableDirField<'a> {
    /// The field path of the entry below the container (`durable_dir_volumes[0]`).
    pub at: String,
    /// The volume name's own field (`None`: the layout names the volume after its path).
    pub volume: Option<(&'a str, &'a str)>,
    /// (field name, mount path).
    pub mount_path: (&'a str, &'a str),
}

pub(crate) fn workload_of(
    containers: Vec<ContainerFields<'_>>,
    required: bool,
) -> Result<WorkloadSpec, InvalidArgument> {
    if containers.is_empty() {
        if required {
            return Err(InvalidArgument::new("spec.containers", "must list at least one container"));
        }
        return Ok(WorkloadSpec { containers: Vec::new() });
    }
    if containers.len() > MAX_CONTAINERS {
        return Err(InvalidArgument::new(
            "spec.containers",
            format!("has {} containers, at most {MAX_CONTAINERS} allowed", containers.len()),
        ));
    }
    let mut names = BTreeSet::new();
    let mut volumes_seen: BTreeMap<String, String> = BTreeMap::new();
    let mut out = Vec::with_capacity(containers.len());
    for (i, c) in containers.into_iter().enumerate() {
        let at = format!("spec.containers[{i}]");
        let name = Name::parse(&format!("{at}.name"), c.name)?;
        if !names.insert(name.clone()) {
            return Err(InvalidArgument::new(format!("{at}.name"), format!("{name:?} is used twice")));
        }
        let readyz = match c.readyz {
            None => None,
            Some(None) => {
                return Err(InvalidArgument::new(
                    format!("{at}.readyz.http_get"),
                    "must be set when readyz is",
                ));
            }
            Some(Some((path, port))) => Some(
                HttpProbe::parse(&format!("{at}.readyz.http_get"), path, port)?
                    .with_timeout(&format!("{at}.readyz.timeout_seconds"), c.readyz_timeout_seconds)?,
            ),
        };
        let mut durable_dirs: Vec<DurableDir> = Vec::with_capacity(c.durable_dirs.len());
        for d in &c.durable_dirs {
            let (path_field, path) = d.mount_path;
            let path_field = if path_field.is_empty() {
                format!("{at}.{}", d.at)
            } else {
                format!("{at}.{}.{path_field}", d.at)
            };
            let dir = match d.volume {
                Some((volume_field, volume)) => {
                    DurableDir::new(&format!("{at}.{}.{volume_field}", d.at), volume, &path_field, path)?
                }
                None => DurableDir::at(&path_field, path)?,
            };
            if durable_dirs.iter().any(|o| o.mount_path == dir.mount_path) {
                return Err(InvalidArgument::new(path_field, format!("{path:?} is mounted twice")));
            }
            durable_dirs.push(dir);
        }
        // One volume is one host directory: a name may be shared by containers (the same
        // volume in each), but two mount paths deriving the same name would silently share.
        for dir in &durable_dirs {
            if let Some(other) = volumes_seen.get(&dir.volume)
                && c.durable_dirs.iter().all(|d| d.volume.is_none())
                && *other != dir.mount_path
            {
                return Err(InvalidArgument::new(
                    format!("{at}.durable_dir_volumes"),
                    format!(
                        "{:?} and {other:?} both name volume {:?}; give them distinct paths",
                        dir.mount_path, dir.volume
                    ),
                ));
            }
            volumes_seen.insert(dir.volume.clone(), dir.mount_path.clone());
        }
        let image =
            if c.image.is_empty() { None } else { Some(ImageRef::parse(&format!("{at}.image"), c.image)?) };
        for (field, list) in [("command", c.command), ("args", c.args)] {
            if let Some(j) = list.iter().position(|a| a.contains('\0')) {
                return Err(InvalidArgument::new(format!("{at}.{field}[{j}]"), "contains a NUL byte"));
            }
        }
        let mut env = BTreeMap::new();
        for (k, v) in c.env.into_iter().flatten() {
            let valid_key = !k.is_empty() && !k.contains('=') && !k.contains('\0');
            if !valid_key || v.contains('\0') {
                return Err(InvalidArgument::new(
                    format!("{at}.env[{k:?}]"),
                    "keys must be non-empty without '=' and no NUL bytes anywhere",
                ));
            }
            env.insert(k.clone(), v.clone());
        }
        out.push(ContainerSpec {
            name,
            readyz,
            durable_dirs,
            image,
            command: c.command.to_vec(),
            args: c.args.to_vec(),
            env,
        });
    }
    Ok(WorkloadSpec { containers: out })
}

fn workload(spec: Option<&pb::WorkloadSpec>, required: bool) -> Result<WorkloadSpec, InvalidArgument> {
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let fields = containers
        .iter()
        .map(|c| ContainerFields {
            name: &c.name,
            readyz: c.readyz.as_ref().map(|r| r.http_get.as_ref().map(|g| (g.path.as_str(), g.port))),
            readyz_timeout_seconds: c.readyz.as_ref().map_or(0, |r| r.timeout_seconds),
            durable_dirs: c
                .durable_dir_volumes
                .iter()
                .enumerate()
                .map(|(j, d)| DurableDirField {
                    at: format!("durable_dir_volumes[{j}]"),
                    volume: None,
                    mount_path: ("", d.as_str()),
                })
                .collect(),
            image: &c.image,
            command: &c.command,
            args: &c.args,
            env: Some(&c.env),
        })
        .collect();
    workload_of(fields, required)
}

pub(crate) fn abs_path(field: &str, value: &str) -> Result<Option<PathBuf>, InvalidArgument> {
    if value.is_empty() {
        return Ok(None);
    }
    if !value.starts_with('/') || value.contains('\0') {
        return Err(InvalidArgument::new(field, format!("{value:?} must be an absolute path")));
    }
    Ok(Some(PathBuf::from(value)))
}

pub(crate) fn runtime(
    legacy_runsc: &str,
    oneof: Option<&pb::run_workload_request::Runtime>,
) -> Result<Option<RuntimeConfig>, InvalidArgument> {
    use pb::run_workload_request::Runtime as R;
    let legacy = abs_path("runsc_path", legacy_runsc)?;
    match oneof {
        None => {
            Ok(legacy
                .map(|p| RuntimeConfig::Gvisor(core::GvisorConfig { runsc_path: Some(p), platform: None })))
        }
        Some(R::Gvisor(g)) => {
            let runsc_path = abs_path("gvisor.runsc_path", &g.runsc_path)?.or(legacy);
            let platform = match g.platform.as_str() {
                "" => None,
                p @ ("ptrace" | "kvm" | "systrap") => Some(p.to_owned()),
                other => {
                    return Err(InvalidArgument::new(
                        "gvisor.platform",
                        format!("{other:?} is not one of ptrace, kvm, systrap"),
                    ));
                }
            };
            Ok(Some(RuntimeConfig::Gvisor(core::GvisorConfig { runsc_path, platform })))
        }
        Some(R::Microvm(m)) => microvm(m).map(|m| Some(RuntimeConfig::MicroVm(m))),
    }
}

fn microvm(m: &pb::MicroVmConfig) -> Result<core::MicroVmConfig, InvalidArgument> {
    let vcpus = match m.vcpus {
        0 => None,
        n @ 1..=32 => Some(n as u8),
        n => return Err(InvalidArgument::new("microvm.vcpus", format!("{n} is outside 1-32"))),
    };
    let memory_mib = match m.memory_mib {
        0 => None,
        n @ 16..=65536 => Some(n),
        n => return Err(InvalidArgument::new("microvm.memory_mib", format!("{n} is outside 16-65536"))),
    };
    let network = match &m.network {
        None => None,
        Some(n) => {
            let ip = |field: &str, v: &str| -> Result<std::net::Ipv4Addr, InvalidArgument> {
                v.parse().map_err(|_| {
                    InvalidArgument::new(
                        format!("microvm.network.{field}"),
                        format!("{v:?} is not an IPv4 address"),
                    )
                })
            };
            let prefix_len = match n.prefix_len {
                0 => 30,
                p => u8::try_from(p).unwrap_or(u8::MAX),
            };
            let net = core::TapNetwork {
                tap_name: n.tap_name.clone(),
                guest_mac: n.guest_mac.to_lowercase(),
                guest_ip: ip("guest_ip", &n.guest_ip)?,
                host_ip: ip("host_ip", &n.host_ip)?,
                prefix_len,
            };
            net.check("microvm.network")?;
            Some(net)
        }
    };
    if m.kernel_cmdline.len() > 4096 || m.kernel_cmdline.contains('\0') {
        return Err(InvalidArgument::new("microvm.kernel_cmdline", "must be at most 4096 bytes without NUL"));
    }
    Ok(core::MicroVmConfig {
        vmm_path: abs_path("microvm.vmm_path", &m.vmm_path)?,
        kernel_image: abs_path("microvm.kernel_image", &m.kernel_image)?,
        rootfs_image: abs_path("microvm.rootfs_image", &m.rootfs_image)?,
        kernel_cmdline: (!m.kernel_cmdline.is_empty()).then(|| m.kernel_cmdline.clone()),
        vcpus,
        memory_mib,
        cpu_template: (!m.cpu_template.is_empty()).then(|| m.cpu_template.clone()),
        network,
        jailer_path: abs_path("microvm.jailer_path", &m.jailer_path)?,
        ready_console_line: (!m.ready_console_line.is_empty()).then(|| m.ready_console_line.clone()),
    })
}

pub(crate) fn asset_paths(
    map: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, InvalidArgument> {
    let mut out = BTreeMap::new();
    for (k, v) in map {
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(InvalidArgument::new(format!("runtime_asset_paths[{k:?}]"), "empty key or NUL byte"));
        }
        out.insert(k.clone(), v.clone());
    }
    Ok(out)
}

// The three request messages carry the same runtime oneof as distinct generated types.
fn checkpoint_runtime(r: &pb::checkpoint_workload_request::Runtime) -> pb::run_workload_request::Runtime {
    use pb::checkpoint_workload_request::Runtime as C;
    use pb::run_workload_request::Runtime as R;
    match r {
        C::Gvisor(g) => R::Gvisor(g.clone()),
        C::Microvm(m) => R::Microvm(m.clone()),
    }
}

fn restore_runtime(r: &pb::restore_workload_request::Runtime) -> pb::run_workload_request::Runtime {
    use pb::restore_workload_request::Runtime as S;
    use pb::run_workload_request::Runtime as R;
    match r {
        S::Gvisor(g) => R::Gvisor(g.clone()),
        S::Microvm(m) => R::Microvm(m.clone()),
    }
}

pub(crate) fn scope(value: i32) -> Result<Scope, InvalidArgument> {
    match pb::SnapshotScope::try_from(value) {
        Ok(pb::SnapshotScope::Unspecified | pb::SnapshotScope::Full) => Ok(Scope::Full),
        Ok(pb::SnapshotScope::Data) => Ok(Scope::Data),
        Err(_) => Err(InvalidArgument::new("scope", format!("{value} is not a SnapshotScope"))),
    }
}

/// Limits: CPU 10 millicores - 256 CPUs, memory 16 MiB - 1 TiB, pids 8 - 1,000,000.
pub fn resources(r: Option<&pb::Resources>) -> Result<core::Resources, InvalidArgument> {
    let Some(r) = r else { return Ok(core::Resources::default()) };
    limits(
        (r.cpu_milli, "resources.cpu_milli"),
        (r.memory_bytes, "resources.memory_bytes"),
        (r.pids, "resources.pids"),
    )
}

/// [`resources`] for a layout that names its limit fields differently; 0 means unset.
pub(crate) fn limits(
    (cpu, cpu_field): (u64, &str),
    (memory, memory_field): (u64, &str),
    (pids, pids_field): (u32, &str),
) -> Result<core::Resources, InvalidArgument> {
    let cpu_milli = match cpu {
        0 => None,
        n @ 10..=256_000 => Some(n as u32),
        n => return Err(InvalidArgument::new(cpu_field, format!("{n} is outside 10-256000"))),
    };
    const MIN_MEMORY: u64 = 16 << 20;
    const MAX_MEMORY: u64 = 1 << 40;
    let memory_bytes = match memory {
        0 => None,
        n @ MIN_MEMORY..=MAX_MEMORY => Some(n),
        n => return Err(InvalidArgument::new(memory_field, format!("{n} is outside 16 MiB - 1 TiB"))),
    };
    let pids = match pids {
        0 => None,
        n @ 8..=1_000_000 => Some(n),
        n => return Err(InvalidArgument::new(pids_field, format!("{n} is outside 8-1000000"))),
    };
    Ok(core::Resources { cpu_milli, memory_bytes, pids })
}

/// An optional object-store prefix field: empty means none.
pub(crate) fn uri_prefix(field: &str, value: &str) -> Result<Option<String>, InvalidArgument> {
    if value.is_empty() { Ok(None) } else { core::parse_uri_prefix(field, value).map(Some) }
}

pub fn run_request(r: &pb::RunWorkloadRequest) -> Result<core::RunRequest, InvalidArgument> {
    Ok(core::RunRequest {
        actor: ActorRef::parse(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)?,
        spec: workload(r.spec.as_ref(), true)?,
        runtime: runtime(&r.runsc_path, r.runtime.as_ref())?,
        asset_paths: asset_paths(&r.runtime_asset_paths)?,
        resources: resources(r.resources.as_ref())?,
    })
}

pub fn checkpoint_request(
    r: &pb::CheckpointWorkloadRequest,
) -> Result<core::CheckpointRequest, InvalidArgument> {
    let actor = ActorRef::parse(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)?;
    // Validated for consistency even though a checkpoint acts on the running workload.
    workload(r.spec.as_ref(), false)?;
    runtime(&r.runsc_path, r.runtime.as_ref().map(checkpoint_runtime).as_ref())?;
    asset_paths(&r.runtime_asset_paths)?;
    // Only substrate's fields (1-8): its node agent ships the files itself.
    let node_agent = r.runtime.is_none()
        && r.destination == 0
        && r.snapshot_id.is_empty()
        && r.keep_snapshot_ids.is_empty();
    checkpoint_of(CheckpointFields {
        actor,
        scope: r.scope,
        uri: ("snapshot_uri_prefix", &r.snapshot_uri_prefix),
        destination: r.destination,
        snapshot_id: &r.snapshot_id,
        keep: &r.keep_snapshot_ids,
        node_agent,
    })
}

/// What decides a checkpoint, from whichever layout carried it.
pub(crate) struct CheckpointFields<'a> {
    pub actor: ActorRef,
    /// A `SnapshotScope` value (FULL and DATA are the same numbers in every layout).
    pub scope: i32,
    /// (field name, value) of the object-store URI; empty: none.
    pub uri: (&'a str, &'a str),
    /// A `SnapshotDestination` value; 0 (UNSPECIFIED): DURABLE when a URI is set, else LOCAL.
    pub destination: i32,
    pub snapshot_id: &'a str,
    pub keep: &'a [String],
    /// The node-agent convention: the snapshot stays in the actor directory's
    /// `checkpoint-state/` for the caller to ship; nothing is pushed.
    pub node_agent: bool,
}

pub(crate) fn checkpoint_of(f: CheckpointFields<'_>) -> Result<core::CheckpointRequest, InvalidArgument> {
    let scope = scope(f.scope)?;
    let (uri_field, uri) = f.uri;
    let prefix = uri_prefix(uri_field, uri)?;
    let destination = match pb::SnapshotDestination::try_from(f.destination) {
        Ok(pb::SnapshotDestination::Unspecified) => {
            if prefix.is_some() {
                Destination::Durable
            } else {
                Destination::Local
            }
        }
        Ok(pb::SnapshotDestination::Local) => Destination::Local,
        Ok(pb::SnapshotDestination::Durable) => {
            if prefix.is_none() {
                return Err(InvalidArgument::new(uri_field, "is required for a DURABLE checkpoint"));
            }
            Destination::Durable
        }
        Err(_) => {
            return Err(InvalidArgument::new(
                "destination",
                format!("{} is not a SnapshotDestination", f.destination),
            ));
        }
    };
    let (destination, prefix) = if f.node_agent { (Destination::Local, None) } else { (destination, prefix) };
    let uri_prefix = if destination == Destination::Durable { prefix } else { None };
    let snapshot_id =
        if f.snapshot_id.is_empty() { None } else { Some(SnapshotId::parse("snapshot_id", f.snapshot_id)?) };
    let keep = snapshot_ids("keep_snapshot_ids", f.keep)?;
    Ok(core::CheckpointRequest {
        actor: f.actor,
        destination,
        scope,
        uri_prefix,
        snapshot_id,
        keep,
        node_agent: f.node_agent,
    })
}

/// Most snapshot ids one request may pin.
pub const MAX_KEEP_IDS: usize = 256;

fn snapshot_ids(field: &str, ids: &[String]) -> Result<Vec<SnapshotId>, InvalidArgument> {
    if ids.len() > MAX_KEEP_IDS {
        return Err(InvalidArgument::new(
            field,
            format!("names {} snapshots, at most {MAX_KEEP_IDS} allowed", ids.len()),
        ));
    }
    ids.iter().enumerate().map(|(i, id)| SnapshotId::parse(&format!("{field}[{i}]"), id)).collect()
}

/// A `PushSnapshot` request: every field is required.
pub fn push_request(r: &pb::PushSnapshotRequest) -> Result<(ActorRef, SnapshotId, String), InvalidArgument> {
    let actor = ActorRef::parse(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)?;
    let id = SnapshotId::parse("snapshot_id", &r.snapshot_id)?;
    let prefix = uri_prefix("snapshot_uri_prefix", &r.snapshot_uri_prefix)?.ok_or_else(|| {
        InvalidArgument::new("snapshot_uri_prefix", "is required (where to copy the snapshot)")
    })?;
    Ok((actor, id, prefix))
}

/// The actor triple of a request that may leave all three empty (meaning every actor).
pub fn optional_actor(ns: &str, template: &str, id: &str) -> Result<Option<ActorRef>, InvalidArgument> {
    if ns.is_empty() && template.is_empty() && id.is_empty() {
        return Ok(None);
    }
    ActorRef::parse(ns, template, id).map(Some)
}

pub fn restore_request(r: &pb::RestoreWorkloadRequest) -> Result<core::RestoreRequest, InvalidArgument> {
    let node_agent = r.runtime.is_none()
        && r.snapshot_id.is_empty()
        && r.keep_snapshot_ids.is_empty()
        && r.resources.is_none();
    Ok(core::RestoreRequest {
        scope: scope(r.scope)?,
        node_agent,
        actor: ActorRef::parse(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)?,
        spec: workload(r.spec.as_ref(), false)?,
        runtime: runtime(&r.runsc_path, r.runtime.as_ref().map(restore_runtime).as_ref())?,
        asset_paths: asset_paths(&r.runtime_asset_paths)?,
        uri_prefix: uri_prefix("snapshot_uri_prefix", &r.snapshot_uri_prefix)?,
        snapshot_id: if r.snapshot_id.is_empty() {
            None
        } else {
            Some(SnapshotId::parse("snapshot_id", &r.snapshot_id)?)
        },
        keep: snapshot_ids("keep_snapshot_ids", &r.keep_snapshot_ids)?,
        resources: resources(r.resources.as_ref())?,
        golden: None,
    })
}

pub fn host(h: &core::HostFingerprint) -> pb::HostFingerprint {
    pb::HostFingerprint {
        cpu_vendor: h.cpu_vendor.clone(),
        cpu_model: h.cpu_model.clone(),
        cpu_flags_digest: h.cpu_flags_digest.clone(),
        host_kernel: h.host_kernel.clone(),
        host_id: h.host_id.clone(),
    }
}

pub fn capabilities(c: &core::Capabilities) -> pb::Capabilities {
    pb::Capabilities {
        supports_local_pause: c.supports_local_pause,
        supports_incremental: c.supports_incremental,
        supports_memory_snapshot: c.supports_memory_snapshot,
        restore_requires_same_host: c.restore_requires_same_host,
        snapshot_portability_class: c.snapshot_portability_class.clone(),
        accelerator: c.accelerator.clone(),
    }
}

pub fn manifest(m: &core::SnapshotManifest) -> pb::SnapshotManifest {
    let mut provenance: std::collections::HashMap<_, _> = m.provenance.clone().into_iter().collect();
    provenance.insert("snapshot_portability_class".into(), m.capabilities.snapshot_portability_class.clone());
    provenance.insert("accelerator".into(), m.capabilities.accelerator.clone());
    pb::SnapshotManifest {
        snapshot_id: m.snapshot_id.to_string(),
        artifacts: m
            .artifacts
            .iter()
            .map(|a| pb::SnapshotArtifact { name: a.name.clone(), size: a.size, sha256: a.sha256.clone() })
            .collect(),
        backend: m.backend.clone(),
        runtime_version: m.runtime_version.clone(),
        kernel_id: m.kernel_id.clone(),
        cpu_template: m.cpu_template.clone(),
        cpu_model: m.host.cpu_model.clone(),
        image_digests: m.image_digests.clone().into_iter().collect(),
        provenance,
        format_version: m.format_version,
        host: Some(host(&m.host)),
        actor: m.actor.to_string(),
        created_at: m.created_at.clone(),
    }
}

#[cfg(test)]
mod tests;
