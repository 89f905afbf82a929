//! What a request asks for, validated: the workload's containers, how to run them, where a
//! checkpoint goes and which snapshot a restore starts from.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{ActorRef, InvalidArgument, Name, SnapshotId};

/// Where a container's root file system comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageRef {
    /// An OCI image layout directory (`oci-layout:<dir>[:<tag>]`). Without a tag the
    /// layout's only manifest is used.
    OciLayout { dir: PathBuf, tag: Option<String> },
}

impl ImageRef {
    pub fn parse(field: &str, value: &str) -> Result<Self, InvalidArgument> {
        let Some(rest) = value.strip_prefix("oci-layout:") else {
            return Err(InvalidArgument::new(
                field,
                format!("{value:?} is not a supported image reference; use oci-layout:<dir>[:<tag>]"),
            ));
        };
        // The tag is whatever follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (dir, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let at = last_slash + i;
                (&rest[..at], Some(&rest[at + 1..]))
            }
            None => (rest, None),
        };
        if dir.is_empty() || !dir.starts_with('/') {
            return Err(InvalidArgument::new(
                field,
                format!("{value:?}: the layout directory must be an absolute path"),
            ));
        }
        if let Some(tag) = tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
            if !valid {
                return Err(InvalidArgument::new(field, format!("{value:?}: invalid tag {tag:?}")));
            }
        }
        Ok(Self::OciLayout { dir: PathBuf::from(dir), tag: tag.map(str::to_owned) })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::OciLayout { dir, tag: Some(t) } => write!(f, "oci-layout:{}:{t}", dir.display()),
            Self::OciLayout { dir, tag: None } => write!(f, "oci-layout:{}", dir.display()),
        }
    }
}

/// HTTP readiness probe: the workload is ready when `GET path` on `port` answers 200.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpProbe {
    pub path: String,
    pub port: u16,
    /// How long this probe may take to pass once the sandbox is up (`None`: the worker's
    /// `--ready-timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
}

impl HttpProbe {
    pub const DEFAULT_PATH: &'static str = "/readyz";

    pub fn parse(field: &str, path: &str, port: i32) -> Result<Self, InvalidArgument> {
        let port = u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
            InvalidArgument::new(format!("{field}.port"), format!("{port} is not a TCP port (1-65535)"))
        })?;
        let path = if path.is_empty() { Self::DEFAULT_PATH.to_owned() } else { path.to_owned() };
        if !path.starts_with('/') || path.chars().any(|c| c.is_ascii_control() || c == ' ') {
            return Err(InvalidArgument::new(
                format!("{field}.path"),
                format!("{path:?} must start with '/' and contain no spaces or control characters"),
            ));
        }
        Ok(Self { path, port, timeout_seconds: None })
    }

    /// This probe with a timeout from the wire (`0`: the worker's default; at most a day).
    pub fn with_timeout(mut self, field: &str, seconds: i32) -> Result<Self, InvalidArgument> {
        self.timeout_seconds = match seconds {
            0 => None,
            s @ 1..=Self::MAX_TIMEOUT_SECONDS => Some(s as u32),
            s => {
                return Err(InvalidArgument::new(
                    field,
                    format!(
                        "{s} is outside 0-{} seconds (0: the worker's default)",
                        Self::MAX_TIMEOUT_SECONDS
                    ),
                ));
            }
        };
        Ok(self)
    }

    /// The longest readiness timeout a request may ask for: a day.
    pub const MAX_TIMEOUT_SECONDS: i32 = 86_400;

    /// How long to wait for this probe, given the worker's default.
    pub fn timeout(&self, default: std::time::Duration) -> std::time::Duration {
        self.timeout_seconds.map_or(default, |s| std::time::Duration::from_secs(u64::from(s)))
    }
}

/// A durable-directory volume mounted into a container: the volume's name (its host
/// directory is `<actorDir>/durable-dir/<volume>/`, its copy in a snapshot
/// `durable/<volume>/`) and where the container sees it.
///
/// Substrate's original layout names only the mount path (the volume is then
/// [`volume_name`] of it); its renumbered layout names both. Older manifests and journals
/// recorded the bare mount path, which still reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "DurableDirRepr")]
pub struct DurableDir {
    pub volume: String,
    pub mount_path: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DurableDirRepr {
    Path(String),
    Named { volume: String, mount_path: String },
}

impl TryFrom<DurableDirRepr> for DurableDir {
    type Error = InvalidArgument;
    fn try_from(r: DurableDirRepr) -> Result<Self, InvalidArgument> {
        match r {
            DurableDirRepr::Named { volume, mount_path } => {
                Self::new("volume", volume, "mount_path", mount_path)
            }
            DurableDirRepr::Path(mount_path) => Self::at("mount_path", mount_path),
        }
    }
}

impl DurableDir {
    /// A named volume at `mount_path`, both checked: the name is one safe path component
    /// (1-128 bytes, no `/`, not `.` or `..`, no NUL or control characters), the mount path
    /// absolute without `..`. The errors name `volume_field` / `path_field`.
    pub fn new(
        volume_field: &str,
        volume: impl Into<String>,
        path_field: &str,
        mount_path: impl Into<String>,
    ) -> Result<Self, InvalidArgument> {
        let (volume, mount_path) = (volume.into(), mount_path.into());
        let d = &mount_path;
        if !d.starts_with('/') || d.split('/').any(|s| s == "..") || d.chars().any(|c| c.is_ascii_control()) {
            return Err(InvalidArgument::new(
                path_field,
                format!("{d:?} must be an absolute path without '..' or control characters"),
            ));
        }
        let bad = volume.is_empty()
            || volume.len() > crate::MAX_NAME_LEN
            || volume == "."
            || volume == ".."
            || volume.contains('/')
            || volume.chars().any(|c| c.is_control());
        if bad {
            return Err(InvalidArgument::new(
                volume_field,
                format!(
                    "{volume:?} is not a volume name: 1-{} bytes, one path component (no '/', not '.' or '..', no control characters)",
                    crate::MAX_NAME_LEN
                ),
            ));
        }
        Ok(Self { volume, mount_path })
    }

    /// The volume named after its mount path (substrate's original layout: `/var/lib/app` is
    /// volume `var-lib-app`).
    pub fn at(path_field: &str, mount_path: impl Into<String>) -> Result<Self, InvalidArgument> {
        let mount_path = mount_path.into();
        Self::new(path_field, volume_name(&mount_path), path_field, mount_path)
    }
}

/// One container of a workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: Name,
    pub readyz: Option<HttpProbe>,
    pub durable_dirs: Vec<DurableDir>,
    /// `None`: the node agent prepared an OCI bundle (see [`ContainerSource`]).
    pub image: Option<ImageRef>,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// What a backend starts a container from, resolved by the runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerSource {
    /// Unpack this image (the backend prepares the root file system).
    Image(ImageRef),
    /// An OCI bundle (`config.json` + `rootfs/`) that the node agent prepared.
    Bundle(PathBuf),
    /// Neither an image nor a node-agent bundle (which would be at `expected_bundle`): fine
    /// for backends that boot a given guest image (a microVM's kernel and disk), an error
    /// for backends that need a root file system.
    Nothing { expected_bundle: PathBuf },
}

/// The validated workload: at least one container, unique names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadSpec {
    pub containers: Vec<ContainerSpec>,
}

/// What an environment value becomes in a snapshot manifest.
pub const REDACTED: &str = "<redacted>";

impl WorkloadSpec {
    /// The spec as snapshot manifests record it: environment values (secrets, often) are
    /// replaced by [`REDACTED`]; the keys stay. Manifests travel: into object stores' indexes,
    /// into responses and logs. The values live on only inside the snapshot's own state (the
    /// frozen processes, a microVM's disk).
    pub fn redacted(&self) -> WorkloadSpec {
        let mut spec = self.clone();
        for c in &mut spec.containers {
            for v in c.env.values_mut() {
                *v = REDACTED.to_owned();
            }
        }
        spec
    }

    /// The container and probe whose port is the workload's service port: the first
    /// container that has a readiness probe.
    pub fn service(&self) -> Option<(&ContainerSpec, &HttpProbe)> {
        self.containers.iter().find_map(|c| c.readyz.as_ref().map(|p| (c, p)))
    }
}

/// gVisor's knobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GvisorConfig {
    pub runsc_path: Option<PathBuf>,
    pub platform: Option<String>,
}

/// Network of a microVM: a tap in the workload's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapNetwork {
    pub tap_name: String,
    pub guest_mac: String,
    pub guest_ip: std::net::Ipv4Addr,
    pub host_ip: std::net::Ipv4Addr,
    pub prefix_len: u8,
}

impl TapNetwork {
    /// Checks every field that reaches a VMM's command line or API: a tap name of 1-15
    /// characters of `[A-Za-z0-9_-]` (nothing a VMM option parser could split on), a MAC
    /// address, link-local addresses other than 169.254.169.254, a prefix of 16-30. The error
    /// names the field under `at` (e.g. `microvm.network` or `provenance`).
    pub fn check(&self, at: &str) -> Result<(), InvalidArgument> {
        let t = &self.tap_name;
        if t.is_empty()
            || t.len() > 15
            || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(InvalidArgument::new(
                format!("{at}.tap_name"),
                "must be 1-15 characters of [A-Za-z0-9_-]",
            ));
        }
        let m = &self.guest_mac;
        let mac_ok = m.len() == 17
            && m.split(':').count() == 6
            && m.split(':').all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
        if !mac_ok {
            return Err(InvalidArgument::new(
                format!("{at}.guest_mac"),
                format!("{m:?} is not a MAC address"),
            ));
        }
        for (field, ip) in [("guest_ip", self.guest_ip), ("host_ip", self.host_ip)] {
            if !ip.is_link_local() || ip.octets()[2] == 169 && ip.octets()[3] == 254 {
                return Err(InvalidArgument::new(
                    format!("{at}.{field}"),
                    format!("{ip} must be link-local (169.254.0.0/16) and not 169.254.169.254"),
                ));
            }
        }
        if !(16..=30).contains(&self.prefix_len) {
            return Err(InvalidArgument::new(
                format!("{at}.prefix_len"),
                format!("{} is outside 16-30", self.prefix_len),
            ));
        }
        Ok(())
    }
}

/// Knobs shared by the microVM backends (Firecracker, QEMU).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MicroVmConfig {
    pub vmm_path: Option<PathBuf>,
    pub kernel_image: Option<PathBuf>,
    pub rootfs_image: Option<PathBuf>,
    pub kernel_cmdline: Option<String>,
    pub vcpus: Option<u8>,
    pub memory_mib: Option<u32>,
    pub cpu_template: Option<String>,
    pub network: Option<TapNetwork>,
    pub jailer_path: Option<PathBuf>,
    pub ready_console_line: Option<String>,
}

impl MicroVmConfig {
    /// Takes the VMM (under `vmm_key`), kernel and root-disk paths from substrate's
    /// `runtime_asset_paths` where the request's own microVM config (`explicit`) names none:
    /// an explicit runtime config wins over the assets, which win over the worker's defaults.
    pub fn take_assets(
        &mut self,
        explicit: Option<&MicroVmConfig>,
        assets: &crate::AssetPaths,
        vmm_key: &str,
    ) {
        let explicit = explicit.cloned().unwrap_or_default();
        let pick = |mine: Option<PathBuf>, key: &str, slot: &mut Option<PathBuf>| {
            if mine.is_none()
                && let Some(p) = assets.get(key)
            {
                *slot = Some(p);
            }
        };
        pick(explicit.vmm_path, vmm_key, &mut self.vmm_path);
        pick(explicit.kernel_image, "kernel", &mut self.kernel_image);
        pick(explicit.rootfs_image, "rootfs", &mut self.rootfs_image);
    }
}

/// Per-request runtime configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeConfig {
    Gvisor(GvisorConfig),
    MicroVm(MicroVmConfig),
}

/// Where a checkpoint goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Destination {
    /// PAUSED: stays on this node.
    Local,
    /// SUSPENDED: shipped to object storage.
    Durable,
}

/// The name of a durable-directory volume: its mount path without the leading `/`, each
/// further `/` replaced by `-` (`/data` → `data`, `/var/lib/app` → `var-lib-app`). Its host
/// directory is `<actorDir>/durable-dir/<name>/`; in a snapshot it is `durable/<name>/`.
pub fn volume_name(mount_path: &str) -> String {
    mount_path.trim_matches('/').replace('/', "-")
}

/// What a snapshot captures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Full,
    Data,
}

/// A validated `RunWorkload`.
#[derive(Clone, Debug)]
pub struct RunRequest {
    pub actor: ActorRef,
    pub spec: WorkloadSpec,
    pub runtime: Option<RuntimeConfig>,
    pub asset_paths: BTreeMap<String, String>,
    /// Limits asked for (the worker fills in its defaults).
    pub resources: Resources,
}

/// What a sandbox may use of the host. `None`: not limited by the request (the worker's
/// default applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU time in thousandths of a CPU.
    pub cpu_milli: Option<u32>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u32>,
}

impl Resources {
    /// These limits, with `defaults` where these have none.
    pub fn or(self, defaults: Resources) -> Resources {
        Resources {
            cpu_milli: self.cpu_milli.or(defaults.cpu_milli),
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            pids: self.pids.or(defaults.pids),
        }
    }
}

/// A validated `CheckpointWorkload`.
#[derive(Clone, Debug)]
pub struct CheckpointRequest {
    pub actor: ActorRef,
    pub destination: Destination,
    pub scope: Scope,
    /// Set exactly when `destination` is [`Destination::Durable`].
    pub uri_prefix: Option<String>,
    /// The id the snapshot gets (`None`: the worker generates one).
    pub snapshot_id: Option<SnapshotId>,
    /// Snapshots of this actor the caller still references (retention keeps them).
    pub keep: Vec<SnapshotId>,
    /// The request carried only substrate's fields: its node agent ships the snapshot, so the
    /// files are also laid out in `<actorDir>/checkpoint-state/` and answered by relative
    /// name (see ARCHITECTURE.md, "The node agent's convention").
    pub node_agent: bool,
}

/// A validated `RestoreWorkload`.
#[derive(Clone, Debug)]
pub struct RestoreRequest {
    pub actor: ActorRef,
    pub spec: WorkloadSpec,
    pub runtime: Option<RuntimeConfig>,
    pub asset_paths: BTreeMap<String, String>,
    /// Fetch from here when the snapshot is not on this node.
    pub uri_prefix: Option<String>,
    /// `None`: the newest snapshot.
    pub snapshot_id: Option<SnapshotId>,
    /// Snapshots of this actor the caller still references (retention keeps them).
    pub keep: Vec<SnapshotId>,
    /// Limits asked for (the worker fills in its defaults).
    pub resources: Resources,
    /// What to restore: everything, or only the durable-directory volumes into a fresh start.
    pub scope: Scope,
    /// The request carried only substrate's fields: files its node agent placed in
    /// `<actorDir>/restore-state/` are the snapshot to restore.
    pub node_agent: bool,
    /// DATA on golden: the workload is restored from this golden snapshot (a FULL snapshot of
    /// the actor's template: memory, processes, root file system), and the durable-directory
    /// volumes from the actor's own snapshot (`uri_prefix` / `snapshot_id`, of either scope)
    /// are put back before it resumes. `scope` is then [`Scope::Data`].
    pub golden: Option<GoldenSource>,
}

/// Where a DATA-on-golden restore takes its golden snapshot from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoldenSource {
    /// The object-store prefix of the golden snapshots (the newest, by its `LATEST`, is used).
    pub uri_prefix: String,
    /// The namespaces a golden snapshot of the actor's template may come from (the actor's
    /// own, and its template's when the request names one): a golden snapshot of another
    /// template, or of a template elsewhere, is refused.
    pub namespaces: Vec<Name>,
}

/// Checks an object-store URI prefix: a scheme ateom knows and something after it.
pub fn parse_uri_prefix(field: &str, value: &str) -> Result<String, InvalidArgument> {
    const SCHEMES: [&str; 4] = ["file://", "s3://", "gs://", "az://"];
    let Some(scheme) = SCHEMES.iter().find(|s| value.starts_with(**s)) else {
        return Err(InvalidArgument::new(
            field,
            format!("{value:?} must start with one of file://, s3://, gs://, az://"),
        ));
    };
    let rest = &value[scheme.len()..];
    if rest.trim_matches('/').is_empty() {
        return Err(InvalidArgument::new(field, format!("{value:?} names no bucket or directory")));
    }
    if rest.split('/').any(|seg| seg == "..") || value.chars().any(|c| c.is_ascii_control()) {
        return Err(InvalidArgument::new(
            field,
            format!("{value:?} must not contain '..' or control characters"),
        ));
    }
    if *scheme == "file://" && !rest.starts_with('/') {
        return Err(InvalidArgument::new(
            field,
            format!("{value:?}: file:// needs an absolute path (file:///dir)"),
        ));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_layout_refs() {
        assert_eq!(
            ImageRef::parse("f", "oci-layout:/img/counter:latest").unwrap(),
            ImageRef::OciLayout { dir: "/img/counter".into(), tag: Some("latest".into()) }
        );
        assert_eq!(
            ImageRef::parse("f", "oci-layout:/img/counter").unwrap(),
            ImageRef::OciLayout { dir: "/img/counter".into(), tag: None }
        );
        // A ':' in a directory component is not a tag separator.
        assert_eq!(
            ImageRef::parse("f", "oci-layout:/a:b/c").unwrap(),
            ImageRef::OciLayout { dir: "/a:b/c".into(), tag: None }
        );
        for bad in [
            "docker.io/library/x",
            "oci-layout:",
            "oci-layout:rel/dir",
            "oci-layout:/x:",
            "oci-layout:/x:a b",
        ] {
            assert_eq!(
                ImageRef::parse("spec.containers[0].image", bad).unwrap_err().field,
                "spec.containers[0].image",
                "{bad}"
            );
        }
        let r = ImageRef::parse("f", "oci-layout:/img/c:v1").unwrap();
        assert_eq!(r.to_string(), "oci-layout:/img/c:v1");
    }

    #[test]
    fn probes() {
        let p = HttpProbe::parse("readyz", "", 8080).unwrap();
        assert_eq!(p.path, "/readyz");
        assert_eq!(HttpProbe::parse("readyz", "", 0).unwrap_err().field, "readyz.port");
        assert_eq!(HttpProbe::parse("readyz", "", 70000).unwrap_err().field, "readyz.port");
        assert_eq!(HttpProbe::parse("readyz", "", -1).unwrap_err().field, "readyz.port");
        assert_eq!(HttpProbe::parse("readyz", "healthz", 80).unwrap_err().field, "readyz.path");
        assert_eq!(HttpProbe::parse("readyz", "/a b", 80).unwrap_err().field, "readyz.path");
    }

    #[test]
    fn durable_dirs_read_old_bare_paths_and_new_named_volumes() {
        let old: Vec<DurableDir> = serde_json::from_str(r#"["/data", "/var/lib/app"]"#).unwrap();
        let names: Vec<(&str, &str)> =
            old.iter().map(|d| (d.volume.as_str(), d.mount_path.as_str())).collect();
        assert_eq!(names, [("data", "/data"), ("var-lib-app", "/var/lib/app")]);
        let new = DurableDir::new("v", "workspace", "p", "/data").unwrap();
        let json = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<DurableDir>(&json).unwrap(), new);
        // A crafted journal or manifest cannot smuggle a traversing volume name in.
        assert!(serde_json::from_str::<DurableDir>(r#"{"volume":"..","mount_path":"/data"}"#).is_err());
        assert!(serde_json::from_str::<DurableDir>(r#"{"volume":"a/b","mount_path":"/data"}"#).is_err());
        assert!(serde_json::from_str::<DurableDir>(r#""/a/../b""#).is_err());
        assert!(DurableDir::at("p", "/").is_err(), "the root names no volume");
    }

    #[test]
    fn uri_prefixes() {
        assert_eq!(parse_uri_prefix("p", "file:///tmp/bucket/").unwrap(), "file:///tmp/bucket");
        parse_uri_prefix("p", "s3://bucket/actors/a").unwrap();
        for bad in ["", "http://x", "s3://", "file://relative", "s3://b/../c", "gs:///"] {
            assert!(parse_uri_prefix("p", bad).is_err(), "{bad}");
        }
    }
}
