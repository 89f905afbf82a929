//! Declared resources: actor templates, worker pools and actors, as the YAML files that
//! `ate apply -f` reads (shaped like the Kubernetes resources they will map onto).
//!
//! ```yaml
//! apiVersion: ate.dev/v1
//! kind: WorkerPool
//! metadata: { name: gvisor }
//! spec:
//!   backend: gvisor
//!   # for workers named by address: ate's client certificate and the workers' CA
//!   tls: { ca: /etc/ate/ca.crt, cert: /etc/ate/ate.crt, key: /etc/ate/ate.key }
//!   workers:
//!     - { name: w1, socket: /run/ateom/w1.sock }            # on this host
//!     - { name: w2, address: "https://10.0.0.5:7443", forward: "10.0.0.5:7444" }
//! ---
//! apiVersion: ate.dev/v1
//! kind: ActorTemplate
//! metadata: { name: counter, namespace: default }
//! spec:
//!   pool: gvisor
//!   containers:
//!     - name: counter
//!       image: oci-layout:/srv/images/counter:latest
//!       readyz: { httpGet: { path: /readyz, port: 8080 } }
//!   resources: { cpu: "1", memory: 256Mi }
//!   snapshot: { location: file:///var/lib/ate/snapshots/counter, scope: full }
//!   idlePolicy: { pauseAfterSeconds: 30, suspendAfterSeconds: 300 }
//! ```
//!
//! Parsing validates every name (a safe identifier without dots, since an actor's name is
//! the first label of its host name) and every field the control plane relies on, and names
//! the offending document and field on error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a resource document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("document {doc}: not valid YAML for a resource: {detail}")]
    Yaml { doc: usize, detail: String },
    #[error("document {doc} ({kind} {name}): {field} {problem}")]
    Invalid { doc: usize, kind: &'static str, name: String, field: String, problem: String },
    #[error("collections nested deeper than {max} levels")]
    TooDeep { max: usize },
}

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a resource name: 1..=63 bytes of `[a-z0-9-]` (upper case allowed too), starting
/// with a letter or digit. No dots: an actor's name is a DNS label in `Host:` headers, and
/// the control plane reserves dotted names (`golden.<n>`) for itself.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is {} bytes long, at most {MAX_NAME_LEN} allowed", name.len()));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))) {
        return Err(format!("{name:?} contains {bad:?}; only letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

/// Longest accepted free-form string (a path, an image reference, an argument), in bytes.
pub const MAX_STRING_LEN: usize = 4096;

/// Checks a free-form string that reaches a worker or a file system: at most
/// [`MAX_STRING_LEN`] bytes, no NUL or other control characters.
pub fn check_text(s: &str) -> Result<(), String> {
    if s.len() > MAX_STRING_LEN {
        return Err(format!("is {} bytes long, at most {MAX_STRING_LEN} allowed", s.len()));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!("contains the control character {c:?}"));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

pub fn default_namespace() -> String {
    "default".into()
}

/// `HTTPGetAction` of a readiness probe.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default = "default_readyz_path")]
    pub path: String,
    pub port: u16,
}

fn default_readyz_path() -> String {
    "/readyz".into()
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readyz {
    pub http_get: HttpGet,
}

/// One container of a template.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    /// Image reference the worker prepares itself (`oci-layout:<dir>[:<tag>]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readyz: Option<Readyz>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub durable_dir_volumes: Vec<String>,
}

/// Limits of an actor's sandbox, sent to the worker on every run and restore (proto
/// `Resources`, field 25). Kubernetes-style quantities, as strings or plain numbers:
///
/// ```yaml
/// resources: { cpu: "500m", memory: 256Mi, pids: 512 }   # also cpu: 1, cpu: "0.5", memory: 268435456
/// ```
///
/// A field left out is the worker's default. Parsed by [`Resources::limits`].
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// CPUs: `"1"`, `"0.5"`, `"500m"` (thousandths), or a number.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "string_or_number")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "int_or_string"))]
    pub cpu: Option<String>,
    /// Memory: bytes, or with a suffix `Ki Mi Gi Ti` (powers of 1024) or `k M G T` (of 1000).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "string_or_number")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "int_or_string"))]
    pub memory: Option<String>,
    /// Processes and threads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

/// [`Resources`] as numbers (what the worker receives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_milli: Option<u64>,
    pub memory_bytes: Option<u64>,
    pub pids: Option<u32>,
}

/// Largest CPU request accepted (thousandths of a CPU): 1024 CPUs.
pub const MAX_CPU_MILLI: u64 = 1024 * 1000;
/// Largest memory request accepted: 16 TiB.
pub const MAX_MEMORY_BYTES: u64 = 16 << 40;
/// Largest pids limit accepted (Linux's `pid_max` ceiling).
pub const MAX_PIDS: u32 = 4 << 20;

/// A Kubernetes quantity in a CRD schema: a string or a number.
#[cfg(feature = "schema")]
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true })
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Q {
        S(String),
        U(u64),
        F(f64),
    }
    Ok(match Option::<Q>::deserialize(d)? {
        None => None,
        Some(Q::S(s)) => Some(s),
        Some(Q::U(u)) => Some(u.to_string()),
        Some(Q::F(f)) => Some(f.to_string()),
    })
}

/// `"1"`, `"1.5"`, `"250m"` -> thousandths of a CPU.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let milli = if let Some(m) = t.strip_suffix('m') {
        m.parse::<u64>().map_err(|_| format!("{s:?} is not a CPU quantity like 1, 0.5 or 500m"))?
    } else {
        decimal_scaled(t, 1000).ok_or_else(|| format!("{s:?} is not a CPU quantity like 1, 0.5 or 500m"))?
    };
    if milli == 0 {
        return Err(format!("{s:?} is zero"));
    }
    if milli > MAX_CPU_MILLI {
        return Err(format!("{s:?} is more than {} CPUs", MAX_CPU_MILLI / 1000));
    }
    Ok(milli)
}

/// `"268435456"`, `"256Mi"`, `"1.5Gi"`, `"512M"` -> bytes.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("{s:?} is not a memory quantity like 256Mi, 1Gi or 268435456");
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale: u64 = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = decimal_scaled(num, scale).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(format!("{s:?} is zero"));
    }
    if bytes > MAX_MEMORY_BYTES {
        return Err(format!("{s:?} is more than 16Ti"));
    }
    Ok(bytes)
}

/// `digits[.digits]` times `scale`, exactly (fractions of a unit rounded up), None if it is
/// not such a number or overflows.
fn decimal_scaled(num: &str, scale: u64) -> Option<u64> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9
    {
        return None;
    }
    let whole = if int.is_empty() { 0 } else { int.parse::<u64>().ok()? };
    let mut v = whole.checked_mul(scale)?;
    if !frac.is_empty() {
        let f: u128 = frac.parse().ok()?;
        let denom = 10u128.pow(frac.len() as u32);
        let part = (f * u128::from(scale)).div_ceil(denom);
        v = v.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(v)
}

impl Resources {
    /// The limits as numbers, or which field is wrong and why.
    pub fn limits(&self) -> Result<Limits, (&'static str, String)> {
        let cpu_milli = self.cpu.as_deref().map(parse_cpu).transpose().map_err(|e| ("cpu", e))?;
        let memory_bytes = self.memory.as_deref().map(parse_memory).transpose().map_err(|e| ("memory", e))?;
        if let Some(p) = self.pids
            && !(1..=MAX_PIDS).contains(&p)
        {
            return Err(("pids", format!("{p} is not in 1..={MAX_PIDS}")));
        }
        Ok(Limits { cpu_milli, memory_bytes, pids: self.pids })
    }
}

/// What a snapshot captures.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Memory, processes and file system.
    #[default]
    Full,
    /// Only the durable data directories.
    Data,
}

/// What survives the loss of the host an actor was paused on (`snapshot.durability`).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A pause is a LOCAL snapshot on the actor's worker: the fastest pause and resume, lost
    /// with its host.
    #[default]
    Local,
    /// Every pause is a DURABLE checkpoint (a local copy and object storage, before the pause
    /// answers): the actor is SUSPENDED, resumable on any fitting host.
    Durable,
    /// A pause is LOCAL; the worker then copies that snapshot to object storage in the
    /// background, and when it lands the actor is SUSPENDED at the same snapshot. Resumes
    /// prefer the local copy and use the durable one on another host when the first is gone.
    Both,
}

impl Durability {
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Local => "local",
            Durability::Durable => "durable",
            Durability::Both => "both",
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Object-store URI prefix (`file:///dir`, `s3://bucket/prefix`, ...). The golden
    /// snapshot goes under `<location>/golden`, each actor's under `<location>/actors/<actor>`.
    pub location: String,
    #[serde(default)]
    pub scope: Scope,
    /// What a pause leaves behind: `local` (a snapshot on the worker, lost with its host),
    /// `durable` (also in object storage before the pause answers) or `both` (local at once,
    /// copied to object storage in the background).
    #[serde(default)]
    pub durability: Durability,
}

/// When the control plane pauses and suspends an idle actor on its own.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdlePolicy {
    /// RUNNING with no request for this long -> PAUSED (LOCAL snapshot). None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_seconds: Option<f64>,
    /// PAUSED for this long -> SUSPENDED (DURABLE snapshot). None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after_seconds: Option<f64>,
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// The worker pool whose workers run this template's actors.
    pub pool: String,
    /// Backend the pool must have (checked against the workers' reported backend).
    #[serde(default = "default_backend")]
    pub backend: String,
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub resources: Resources,
    pub snapshot: SnapshotSpec,
    #[serde(default)]
    pub idle_policy: IdlePolicy,
}

fn default_backend() -> String {
    "gvisor".into()
}

/// One worker of a pool: on this host (`socket`) or on another one (`address` + `forward`,
/// always with mutual TLS).
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Unique among all pools.
    pub name: String,
    /// The worker's `ateom serve --socket` (a worker on this host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// `https://host:port`: the worker's `ateom serve --listen-tcp` (a worker on another host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `host:port`: the worker's `--forward-tls` front, where the router reaches its workload.
    /// Required with `address`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    /// This worker's TLS material, instead of the pool's `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
}

impl WorkerSpec {
    /// How `ate` reaches this worker, with the pool's TLS material as the default. None only
    /// for a spec that did not validate.
    pub fn target(&self, pool_tls: Option<&TlsSpec>) -> Option<WorkerTarget> {
        match (&self.socket, &self.address, &self.forward) {
            (Some(s), None, None) => Some(WorkerTarget::Socket(s.clone())),
            (None, Some(a), Some(f)) => Some(WorkerTarget::Tls(RemoteWorker {
                address: a.clone(),
                forward: f.clone(),
                tls: self.tls.clone().or_else(|| pool_tls.cloned())?,
            })),
            _ => None,
        }
    }
}

/// Mutual-TLS material for reaching workers on other hosts: absolute paths of PEM files that
/// `ate serve` reads.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsSpec {
    /// The CA that signed the workers' certificates.
    pub ca: String,
    /// `ate`'s client certificate (signed by a CA the workers accept).
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A worker on another host, as `ate` reaches it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteWorker {
    /// `https://host:port` (gRPC with mutual TLS).
    pub address: String,
    /// `host:port` of its TLS front for the workload.
    pub forward: String,
    pub tls: TlsSpec,
}

/// How `ate` reaches a worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerTarget {
    /// A unix socket on this host.
    Socket(String),
    /// Another host, over mutual TLS.
    Tls(RemoteWorker),
}

impl std::fmt::Display for WorkerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerTarget::Socket(s) => f.write_str(s),
            WorkerTarget::Tls(r) => f.write_str(&r.address),
        }
    }
}

#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    #[serde(default = "default_backend")]
    pub backend: String,
    /// TLS material for the workers named by `address` (each may override it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The workers, by socket or address. Empty for a pool run on Kubernetes (`kubernetes`),
    /// whose workers `ate serve --workers-from-cluster` discovers from its pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerSpec>,
    /// How `ate operator` runs this pool's workers on Kubernetes (ignored elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesPool>,
}

/// A worker pool's pods on Kubernetes: what `ate operator` turns into a Deployment or
/// DaemonSet (crate `ate-kube` derives the pod shape from this and the pool's backend).
///
/// ```yaml
/// kubernetes:
///   workload: Deployment          # or DaemonSet (one worker per selected node)
///   replicas: 3
///   tlsSecret: ateom-worker-tls   # kubernetes.io/tls Secret: tls.crt, tls.key, ca.crt
///   resources: { cpu: "2", memory: 4Gi }
///   hugepages: 1Gi                # firecracker only: 2Mi pages for guest memory
/// ```
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KubernetesPool {
    /// `Deployment` (default: `replicas` workers anywhere they fit) or `DaemonSet` (one
    /// worker on every selected node).
    #[serde(default)]
    pub workload: WorkloadKind,
    /// Workers of a Deployment (default 1). Not for a DaemonSet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// The worker image (with `ateom`); default: the operator's `--worker-image`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Only nodes with these labels (added to the backend's own selector).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// The worker pod's CPU and memory (requests = limits). `pids` is not a pod resource.
    #[serde(default)]
    pub resources: Resources,
    /// 2 MiB huge pages for guest memory (e.g. `1Gi`); firecracker only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepages: Option<String>,
    /// A `kubernetes.io/tls` Secret with the worker's certificate (`tls.crt`, `tls.key`; its
    /// names must cover `*.<service>.<namespace>.svc.<cluster domain>`) and the CA of the
    /// clients let in (`ca.crt`).
    pub tls_secret: String,
    /// The worker's state directory on the node (a hostPath); default
    /// `/var/lib/ateom/<namespace>/<pool>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
    /// gvisor: the runsc binary in the worker image (default `/usr/bin/runsc`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runsc: Option<String>,
    /// qemu: `auto` (default; KVM where the node has it, TCG elsewhere — needs a DaemonSet),
    /// `kvm` or `tcg`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accel: Option<String>,
    /// microVM backends: how `/dev/kvm` and `/dev/net/tun` reach the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_access: Option<DeviceAccess>,
    /// Workers a voluntary disruption (a drain) may take down at once (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
}

/// Which controller runs a pool's worker pods.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadKind {
    #[default]
    Deployment,
    DaemonSet,
}

/// How a microVM worker gets `/dev/kvm` and `/dev/net/tun`.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DeviceAccess {
    /// Extended resources of a device plugin (the operator's `--kvm-resource`,
    /// `--tun-resource`): the container stays unprivileged.
    #[default]
    DevicePlugin,
    /// The host's device nodes by hostPath in a privileged container (clusters without a
    /// device plugin).
    Privileged,
}

/// Splits `host:port` (`[v6]:port` for IPv6) into a host ([`check_host`]) and a port 1..=65535.
pub fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(|| format!("{s:?}: '[' without ']'"))?;
        let p = p.strip_prefix(':').ok_or_else(|| format!("{s:?} has no :port"))?;
        h.parse::<std::net::Ipv6Addr>().map_err(|_| format!("{s:?}: {h:?} is not an IPv6 address"))?;
        (h, p)
    } else {
        s.rsplit_once(':').ok_or_else(|| format!("{s:?} has no :port"))?
    };
    if !s.starts_with('[') {
        check_host(host).map_err(|p| format!("{s:?}: {p}"))?;
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: the port must be a number 1..=65535"))?;
    Ok((host.to_owned(), port))
}

/// A DNS host name: at most 253 bytes of dot-separated RFC 1123 labels (`[A-Za-z0-9-]`, 1 to
/// 63 long, no leading or trailing `-`).
pub fn is_host_name(host: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

/// A host name (DNS labels of `[A-Za-z0-9-]`) or an IPv4 address.
fn check_host(host: &str) -> Result<(), String> {
    if host.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if !is_host_name(host) {
        return Err(format!("{host:?} is not a host name or an IP address (IPv6 in [brackets])"));
    }
    Ok(())
}

/// Checks a worker's `address`: `https://host:port` and nothing more.
pub fn check_worker_address(a: &str) -> Result<(String, u16), String> {
    let Some(rest) = a.strip_prefix("https://") else {
        return Err(format!(
            "{a:?} must be https://host:port (workers on other hosts are reached only with mutual TLS)"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(format!("{a:?} must be https://host:port, without a path, query or user"));
    }
    split_host_port(rest)
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSpec {
    pub template: String,
}

/// One YAML document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    ActorTemplate {
        #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        metadata: Metadata,
        spec: TemplateSpec,
    },
    WorkerPool {
        #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        metadata: Metadata,
        spec: PoolSpec,
    },
    Actor {
        #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        metadata: Metadata,
        spec: ActorSpec,
    },
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::ActorTemplate { .. } => "ActorTemplate",
            Resource::WorkerPool { .. } => "WorkerPool",
            Resource::Actor { .. } => "Actor",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::ActorTemplate { metadata, .. }
            | Resource::WorkerPool { metadata, .. }
            | Resource::Actor { metadata, .. } => &metadata.name,
        }
    }

    fn validate(&self, doc: usize) -> Result<(), ResourceError> {
        let kind = self.kind();
        // Named in errors: bounded (a megabyte of name is not echoed back).
        let name: String = self.name().chars().take(MAX_NAME_LEN + 1).collect();
        let invalid = |field: &str, problem: String| ResourceError::Invalid {
            doc,
            kind,
            name: name.clone(),
            field: field.to_owned(),
            problem,
        };
        check_name(&name).map_err(|p| invalid("metadata.name", p))?;
        match self {
            Resource::ActorTemplate { metadata, spec, .. } => {
                check_name(&metadata.namespace).map_err(|p| invalid("metadata.namespace", p))?;
                check_name(&spec.pool).map_err(|p| invalid("spec.pool", p))?;
                if spec.containers.is_empty() {
                    return Err(invalid("spec.containers", "must list at least one container".into()));
                }
                for (i, c) in spec.containers.iter().enumerate() {
                    check_name(&c.name).map_err(|p| invalid(&format!("spec.containers[{i}].name"), p))?;
                    if let Some(r) = &c.readyz {
                        if r.http_get.port == 0 {
                            return Err(invalid(
                                &format!("spec.containers[{i}].readyz.httpGet.port"),
                                "must be 1..=65535".into(),
                            ));
                        }
                        let path = &r.http_get.path;
                        if !path.starts_with('/') || path.len() > MAX_STRING_LEN {
                            return Err(invalid(
                                &format!("spec.containers[{i}].readyz.httpGet.path"),
                                "must be an absolute URL path (starting with '/')".into(),
                            ));
                        }
                        check_text(path)
                            .map_err(|p| invalid(&format!("spec.containers[{i}].readyz.httpGet.path"), p))?;
                    }
                    if let Some(image) = &c.image {
                        check_text(image).map_err(|p| invalid(&format!("spec.containers[{i}].image"), p))?;
                    }
                    for (field, list) in [("command", &c.command), ("args", &c.args)] {
                        for (j, a) in list.iter().enumerate() {
                            check_text(a)
                                .map_err(|p| invalid(&format!("spec.containers[{i}].{field}[{j}]"), p))?;
                        }
                    }
                    for (j, d) in c.durable_dir_volumes.iter().enumerate() {
                        check_text(d).map_err(|p| {
                            invalid(&format!("spec.containers[{i}].durableDirVolumes[{j}]"), p)
                        })?;
                    }
                    for (k, v) in &c.env {
                        let field = format!("spec.containers[{i}].env.{k}");
                        if k.is_empty() || k.contains('=') {
                            return Err(invalid(
                                &field,
                                "an environment key must be non-empty without '='".into(),
                            ));
                        }
                        check_text(k).map_err(|p| invalid(&field, p))?;
                        check_text(v).map_err(|p| invalid(&field, p))?;
                    }
                }
                spec.resources.limits().map_err(|(f, p)| invalid(&format!("spec.resources.{f}"), p))?;
                check_name(&spec.backend).map_err(|p| invalid("spec.backend", p))?;
                let loc = &spec.snapshot.location;
                check_text(loc).map_err(|p| invalid("spec.snapshot.location", p))?;
                if !["file:///", "s3://", "gs://", "az://"].iter().any(|s| loc.starts_with(s)) {
                    return Err(invalid(
                        "spec.snapshot.location",
                        format!("{loc:?} is not an object-store URI (file:///abs, s3://, gs://, az://)"),
                    ));
                }
                for (field, v) in [
                    ("spec.idlePolicy.pauseAfterSeconds", spec.idle_policy.pause_after_seconds),
                    ("spec.idlePolicy.suspendAfterSeconds", spec.idle_policy.suspend_after_seconds),
                ] {
                    if let Some(v) = v
                        && !(v.is_finite() && v >= 0.0)
                    {
                        return Err(invalid(field, format!("{v} is not a number of seconds >= 0")));
                    }
                }
            }
            Resource::WorkerPool { spec, .. } => {
                check_name(&spec.backend).map_err(|p| invalid("spec.backend", p))?;
                if let Some(k) = &spec.kubernetes {
                    check_name(&k.tls_secret).map_err(|p| invalid("spec.kubernetes.tlsSecret", p))?;
                    for (field, v) in [
                        ("image", &k.image),
                        ("hugepages", &k.hugepages),
                        ("stateDir", &k.state_dir),
                        ("runsc", &k.runsc),
                        ("accel", &k.accel),
                    ] {
                        if let Some(v) = v {
                            check_text(v).map_err(|p| invalid(&format!("spec.kubernetes.{field}"), p))?;
                        }
                    }
                    for (key, v) in &k.node_selector {
                        check_text(key).map_err(|p| invalid("spec.kubernetes.nodeSelector", p))?;
                        check_text(v)
                            .map_err(|p| invalid(&format!("spec.kubernetes.nodeSelector.{key}"), p))?;
                    }
                    k.resources
                        .limits()
                        .map_err(|(f, p)| invalid(&format!("spec.kubernetes.resources.{f}"), p))?;
                    if let Some(h) = &k.hugepages {
                        parse_memory(h).map_err(|p| invalid("spec.kubernetes.hugepages", p))?;
                    }
                } else if spec.workers.is_empty() {
                    return Err(invalid(
                        "spec.workers",
                        "must list at least one worker (or give spec.kubernetes: workers discovered from a cluster)"
                            .into(),
                    ));
                }
                let check_tls = |field: &str, t: &TlsSpec| -> Result<(), ResourceError> {
                    for (f, path) in [("ca", &t.ca), ("cert", &t.cert), ("key", &t.key)] {
                        let field = format!("{field}.{f}");
                        check_text(path).map_err(|p| invalid(&field, p))?;
                        if !path.starts_with('/') {
                            return Err(invalid(&field, format!("{path:?} must be an absolute path")));
                        }
                    }
                    Ok(())
                };
                if let Some(t) = &spec.tls {
                    check_tls("spec.tls", t)?;
                }
                let mut seen = std::collections::BTreeSet::new();
                let mut addresses = std::collections::BTreeSet::new();
                for (i, w) in spec.workers.iter().enumerate() {
                    let at = |f: &str| format!("spec.workers[{i}].{f}");
                    check_name(&w.name).map_err(|p| invalid(&at("name"), p))?;
                    if !seen.insert(&w.name) {
                        return Err(invalid(&at("name"), "is listed twice".into()));
                    }
                    match (&w.socket, &w.address) {
                        (Some(_), Some(_)) => {
                            return Err(invalid(
                                &format!("spec.workers[{i}]"),
                                "names both socket and address; give exactly one".into(),
                            ));
                        }
                        (None, None) => {
                            return Err(invalid(
                                &format!("spec.workers[{i}]"),
                                "names neither socket (a worker on this host) nor address (https://host:port of a worker on another host)".into(),
                            ));
                        }
                        (Some(socket), None) => {
                            check_text(socket).map_err(|p| invalid(&at("socket"), p))?;
                            if !socket.starts_with('/') {
                                return Err(invalid(
                                    &at("socket"),
                                    format!("{socket:?} must be an absolute path"),
                                ));
                            }
                            for (f, given) in [("forward", w.forward.is_some()), ("tls", w.tls.is_some())] {
                                if given {
                                    return Err(invalid(
                                        &at(f),
                                        "is only for a worker named by address (this one has a socket)"
                                            .into(),
                                    ));
                                }
                            }
                        }
                        (None, Some(address)) => {
                            check_text(address).map_err(|p| invalid(&at("address"), p))?;
                            check_worker_address(address).map_err(|p| invalid(&at("address"), p))?;
                            let Some(forward) = &w.forward else {
                                return Err(invalid(
                                    &at("forward"),
                                    "is required with address: host:port of the worker's --forward-tls front (where the router reaches its workload)".into(),
                                ));
                            };
                            check_text(forward).map_err(|p| invalid(&at("forward"), p))?;
                            split_host_port(forward).map_err(|p| {
                                invalid(&at("forward"), format!("{p} (give host:port, without a scheme)"))
                            })?;
                            for (f, v) in [("address", address), ("forward", forward)] {
                                if !addresses.insert(v.trim_end_matches('/').to_owned()) {
                                    return Err(invalid(
                                        &at(f),
                                        format!("{v:?} is already used by another worker"),
                                    ));
                                }
                            }
                            match &w.tls {
                                Some(t) => check_tls(&at("tls"), t)?,
                                None if spec.tls.is_none() => {
                                    return Err(invalid(
                                        "spec.tls",
                                        format!(
                                            "is required: worker {} (spec.workers[{i}]) is named by address, and workers on other hosts are reached only with mutual TLS ({{ ca, cert, key }}, or tls on the worker)",
                                            w.name
                                        ),
                                    ));
                                }
                                None => {}
                            }
                        }
                    }
                }
            }
            Resource::Actor { spec, .. } => {
                check_name(&spec.template).map_err(|p| invalid("spec.template", p))?;
            }
        }
        Ok(())
    }
}

/// Parses a multi-document YAML file (or a JSON array of resources) into validated
/// resources. Unknown fields are refused (a misspelt field is never silently ignored), and
/// so are YAML documents whose aliases expand past serde_yaml's limits ("billion laughs").
pub fn parse_resources(text: &str) -> Result<Vec<Resource>, ResourceError> {
    check_flow_depth(text)?;
    if text.trim_start().starts_with('[')
        && let Ok(list) = serde_json::from_str::<Vec<serde_json::Value>>(text)
    {
        let mut out = Vec::new();
        for (doc, v) in list.into_iter().enumerate() {
            let kind = v.get("kind").and_then(|k| k.as_str()).map(str::to_owned);
            let r = decode_doc(doc, kind.as_deref(), v)?;
            r.validate(doc)?;
            out.push(r);
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de)
            .map_err(|e| ResourceError::Yaml { doc, detail: e.to_string() })?;
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let kind = value.get("kind").and_then(|k| k.as_str()).map(str::to_owned);
        let r = decode_doc(doc, kind.as_deref(), value)?;
        r.validate(doc)?;
        out.push(r);
    }
    Ok(out)
}

/// Deepest nesting of flow collections (`[`, `{`) accepted: serde_yaml's own recursion limit.
/// Checked before parsing because libyaml's scanner takes time quadratic in the nesting depth
/// (100 000 brackets keep it busy for minutes).
pub const MAX_FLOW_DEPTH: usize = 128;

fn check_flow_depth(text: &str) -> Result<(), ResourceError> {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<u8> = None;
    let mut bytes = text.bytes().peekable();
    let mut prev = b'\n';
    while let Some(b) = bytes.next() {
        match quote {
            Some(b'"') if b == b'\\' => {
                bytes.next();
            }
            Some(q) if b == q => {
                // '' inside a single-quoted scalar is an escaped quote.
                if q == b'\'' && bytes.peek() == Some(&b'\'') {
                    bytes.next();
                } else {
                    quote = None;
                }
            }
            Some(_) => {}
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'#' if prev.is_ascii_whitespace() => {
                    for c in bytes.by_ref() {
                        if c == b'\n' {
                            break;
                        }
                    }
                    prev = b'\n';
                    continue;
                }
                b'[' | b'{' => {
                    depth += 1;
                    max = max.max(depth);
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        if max > MAX_FLOW_DEPTH {
            return Err(ResourceError::TooDeep { max: MAX_FLOW_DEPTH });
        }
        prev = b;
    }
    Ok(())
}

/// One document as written: `kind` selects the spec type.
#[derive(Deserialize)]
struct Doc<S> {
    #[serde(default, rename = "apiVersion")]
    api_version: Option<String>,
    #[allow(dead_code)]
    kind: String,
    metadata: Metadata,
    spec: S,
}

/// Decodes one document of `kind`, refusing fields no resource has.
fn decode_doc<'de, D>(doc: usize, kind: Option<&str>, d: D) -> Result<Resource, ResourceError>
where
    D: serde::Deserializer<'de>,
    D::Error: std::fmt::Display,
{
    fn typed<'de, S: Deserialize<'de>, D>(doc: usize, d: D) -> Result<(Doc<S>, Vec<String>), ResourceError>
    where
        D: serde::Deserializer<'de>,
        D::Error: std::fmt::Display,
    {
        let mut unknown = Vec::new();
        let parsed = serde_ignored::deserialize(d, |path| unknown.push(field_path(&path)))
            .map_err(|e| ResourceError::Yaml { doc, detail: e.to_string() })?;
        Ok((parsed, unknown))
    }
    let unknown_err = |kind: &'static str, name: &str, unknown: Vec<String>| ResourceError::Invalid {
        doc,
        kind,
        name: name.chars().take(MAX_NAME_LEN + 1).collect(),
        field: if unknown.len() > 8 {
            format!("{} (and {} more)", unknown[..8].join(", "), unknown.len() - 8)
        } else {
            unknown.join(", ")
        },
        problem: "is not a known field".into(),
    };
    match kind {
        Some("ActorTemplate") => {
            let (d, unknown): (Doc<TemplateSpec>, _) = typed(doc, d)?;
            if !unknown.is_empty() {
                return Err(unknown_err("ActorTemplate", &d.metadata.name, unknown));
            }
            Ok(Resource::ActorTemplate { api_version: d.api_version, metadata: d.metadata, spec: d.spec })
        }
        Some("WorkerPool") => {
            let (d, unknown): (Doc<PoolSpec>, _) = typed(doc, d)?;
            if !unknown.is_empty() {
                return Err(unknown_err("WorkerPool", &d.metadata.name, unknown));
            }
            Ok(Resource::WorkerPool { api_version: d.api_version, metadata: d.metadata, spec: d.spec })
        }
        Some("Actor") => {
            let (d, unknown): (Doc<ActorSpec>, _) = typed(doc, d)?;
            if !unknown.is_empty() {
                return Err(unknown_err("Actor", &d.metadata.name, unknown));
            }
            Ok(Resource::Actor { api_version: d.api_version, metadata: d.metadata, spec: d.spec })
        }
        Some(other) => Err(ResourceError::Yaml {
            doc,
            detail: format!(
                "unknown kind {:?} (ActorTemplate, WorkerPool, Actor)",
                other.chars().take(64).collect::<String>()
            ),
        }),
        None => Err(ResourceError::Yaml {
            doc,
            detail: "no `kind` string (ActorTemplate, WorkerPool, Actor)".into(),
        }),
    }
}

/// `spec.containers[0].imgae` for a serde_ignored path (keys cut at 64 characters).
pub fn field_path(p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => {
            let parent = field_path(parent);
            let key: String = key.chars().take(64).collect();
            if parent.is_empty() { key } else { format!("{parent}.{key}") }
        }
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => {
            field_path(parent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: ate.dev/v1
kind: WorkerPool
metadata: { name: gvisor }
spec:
  backend: gvisor
  workers:
    - { name: w1, socket: /run/ateom/w1.sock }
    - { name: w2, socket: /run/ateom/w2.sock }
---
apiVersion: ate.dev/v1
kind: ActorTemplate
metadata: { name: counter }
spec:
  pool: gvisor
  containers:
    - name: counter
      image: oci-layout:/srv/images/counter:latest
      readyz: { httpGet: { port: 8080 } }
  resources: { cpu: "1", memory: 256Mi }
  snapshot: { location: "file:///var/lib/ate/snapshots/counter" }
  idlePolicy: { pauseAfterSeconds: 30, suspendAfterSeconds: 300 }
---
kind: Actor
metadata: { name: a1 }
spec: { template: counter }
"#;

    #[test]
    fn parses_the_documented_example() {
        let rs = parse_resources(EXAMPLE).unwrap();
        assert_eq!(rs.len(), 3);
        let Resource::ActorTemplate { metadata, spec, .. } = &rs[1] else { panic!("{rs:?}") };
        assert_eq!(metadata.namespace, "default");
        assert_eq!(spec.backend, "gvisor");
        assert_eq!(spec.containers[0].readyz.as_ref().unwrap().http_get.path, "/readyz");
        assert_eq!(spec.snapshot.scope, Scope::Full);
        assert_eq!(spec.idle_policy.pause_after_seconds, Some(30.0));
        assert_eq!(rs[2].kind(), "Actor");
        // And the JSON form of the same resources parses back identically.
        let json = serde_json::to_string(&rs).unwrap();
        assert_eq!(parse_resources(&json).unwrap(), rs);
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let bad = EXAMPLE.replace("name: a1", "name: a.1");
        let err = parse_resources(&bad).unwrap_err();
        assert!(
            matches!(&err, ResourceError::Invalid { doc: 2, field, .. } if field == "metadata.name"),
            "{err}"
        );
        let bad = EXAMPLE.replace("file:///var/lib", "/var/lib");
        let err = parse_resources(&bad).unwrap_err();
        assert!(err.to_string().contains("spec.snapshot.location"), "{err}");
        let bad = EXAMPLE.replace("socket: /run/ateom/w2.sock", "socket: w2.sock");
        assert!(parse_resources(&bad).unwrap_err().to_string().contains("spec.workers[1].socket"));
        let bad = EXAMPLE.replace("kind: Actor\n", "kind: Robot\n");
        assert!(matches!(parse_resources(&bad).unwrap_err(), ResourceError::Yaml { doc: 2, .. }));
    }

    #[test]
    fn resources_parse_to_limits() {
        let y = EXAMPLE.replace(
            "resources: { cpu: \"1\", memory: 256Mi }",
            "resources: { cpu: 500m, memory: 1.5Gi, pids: 64 }",
        );
        let rs = parse_resources(&y).unwrap();
        let Resource::ActorTemplate { spec, .. } = &rs[1] else { panic!() };
        let l = spec.resources.limits().unwrap();
        assert_eq!(l, Limits { cpu_milli: Some(500), memory_bytes: Some(3 << 29), pids: Some(64) });
        // Plain numbers are the same shape.
        let y = EXAMPLE
            .replace("resources: { cpu: \"1\", memory: 256Mi }", "resources: { cpu: 2, memory: 1048576 }");
        let rs = parse_resources(&y).unwrap();
        let Resource::ActorTemplate { spec, .. } = &rs[1] else { panic!() };
        assert_eq!(spec.resources.limits().unwrap().cpu_milli, Some(2000));
        assert_eq!(spec.resources.limits().unwrap().memory_bytes, Some(1 << 20));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        assert_eq!(parse_cpu("1"), Ok(1000));
        assert_eq!(parse_memory("512M"), Ok(512_000_000));
        for bad in ["0", "-1", "1.2.3", "abc", "2000", "", "m", "1e3"] {
            assert!(parse_cpu(bad).is_err(), "cpu {bad:?}");
        }
        for bad in ["0", "1Xi", "-5Mi", "17Ti", "", "Mi", "99999999999999999999"] {
            assert!(parse_memory(bad).is_err(), "memory {bad:?}");
        }
        for (field, value) in [("cpu", "lots"), ("memory", "256MB"), ("pids", "0"), ("pids", "-3")] {
            let y = EXAMPLE.replace(
                "resources: { cpu: \"1\", memory: 256Mi }",
                &format!("resources: {{ {field}: {value} }}"),
            );
            let err = parse_resources(&y).unwrap_err().to_string();
            // Wrong types are serde's errors; wrong values name the field.
            assert!(
                value == "-3" || err.contains(&format!("spec.resources.{field}")),
                "{field}={value}: {err}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_refused_with_their_path() {
        let y = EXAMPLE
            .replace("readyz: { httpGet: { port: 8080 } }", "readyz: { httpGet: { port: 8080, prot: 1 } }");
        let err = parse_resources(&y).unwrap_err();
        assert!(
            matches!(&err, ResourceError::Invalid { doc: 1, field, .. } if field == "spec.containers[0].readyz.httpGet.prot"),
            "{err}"
        );
        let y = EXAMPLE.replace("metadata: { name: a1 }", "metadata: { name: a1 }\nstatus: {}");
        assert!(parse_resources(&y).unwrap_err().to_string().contains("status"));
        let json = r#"[{"kind":"Actor","metadata":{"name":"a1"},"spec":{"template":"t","extra":true}}]"#;
        assert!(parse_resources(json).unwrap_err().to_string().contains("spec.extra"));
    }

    #[test]
    fn hostile_documents_are_errors_not_crashes() {
        // Billion laughs: serde_yaml refuses the alias expansion.
        let mut y = String::from("a0: &a0 [\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\",\"x\"]\n");
        for i in 1..10 {
            let p = i - 1;
            y.push_str(&format!("a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"));
        }
        y.push_str("kind: Actor\nmetadata: { name: x }\nspec: { template: t }\n");
        assert!(parse_resources(&y).is_err());
        // Deep nesting: recursion limits, not a stack overflow.
        let deep = format!("kind: Actor\nmetadata: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_resources(&deep).is_err());
        let deep_json = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse_resources(&deep_json).is_err());
        // Wrong types, names with ../ and NULs, strings with control characters.
        for bad in [
            "kind: Actor\nmetadata: { name: [1] }\nspec: { template: t }\n",
            "kind: Actor\nmetadata: { name: ../etc }\nspec: { template: t }\n",
            "kind: Actor\nmetadata: { name: \"a\\0b\" }\nspec: { template: t }\n",
            "kind: Actor\nmetadata: { name: a }\nspec: { template: ../t }\n",
            "kind: 7\nmetadata: { name: a }\nspec: { template: t }\n",
            "- 1\n- 2\n",
            "just a string",
        ] {
            assert!(parse_resources(bad).is_err(), "{bad:?}");
        }
        let y = EXAMPLE.replace("socket: /run/ateom/w1.sock", "socket: \"/run/\\0w1.sock\"");
        assert!(parse_resources(&y).unwrap_err().to_string().contains("spec.workers[0].socket"));
        let y =
            EXAMPLE.replace("{ httpGet: { port: 8080 } }", "{ httpGet: { path: \"x\\ny\", port: 8080 } }");
        assert!(parse_resources(&y).unwrap_err().to_string().contains("httpGet.path"));
    }

    const REMOTE: &str = r#"
kind: WorkerPool
metadata: { name: hosts }
spec:
  tls: { ca: /etc/ate/ca.crt, cert: /etc/ate/ate.crt, key: /etc/ate/ate.key }
  workers:
    - { name: w1, address: "https://10.0.0.5:7443", forward: "10.0.0.5:7444" }
    - { name: w2, address: "https://node-2.example:7443/", forward: "node-2.example:7444", tls: { ca: /etc/ate/ca2.crt, cert: /etc/ate/b.crt, key: /etc/ate/b.key } }
    - { name: w3, address: "https://[fd00::3]:7443", forward: "[fd00::3]:7444" }
    - { name: w4, socket: /run/ateom/w4.sock }
"#;

    #[test]
    fn workers_on_other_hosts_are_named_by_address_with_tls() {
        let rs = parse_resources(REMOTE).unwrap();
        let Resource::WorkerPool { spec, .. } = &rs[0] else { panic!() };
        let pool_tls = spec.tls.as_ref();
        let Some(WorkerTarget::Tls(w1)) = spec.workers[0].target(pool_tls) else { panic!() };
        assert_eq!((w1.address.as_str(), w1.forward.as_str()), ("https://10.0.0.5:7443", "10.0.0.5:7444"));
        assert_eq!(w1.tls.ca, "/etc/ate/ca.crt", "the pool's TLS material by default");
        let Some(WorkerTarget::Tls(w2)) = spec.workers[1].target(pool_tls) else { panic!() };
        assert_eq!(w2.tls.ca, "/etc/ate/ca2.crt", "overridden per worker");
        assert!(matches!(spec.workers[2].target(pool_tls), Some(WorkerTarget::Tls(_))));
        assert_eq!(spec.workers[3].target(pool_tls), Some(WorkerTarget::Socket("/run/ateom/w4.sock".into())));
        // Backward compatible: the JSON form round-trips, socket pools serialize as before.
        let json = serde_json::to_string(&rs).unwrap();
        assert_eq!(parse_resources(&json).unwrap(), rs);
        let plain = parse_resources(EXAMPLE).unwrap();
        let json = serde_json::to_string(&plain[0]).unwrap();
        assert!(!json.contains("address") && !json.contains("tls"), "{json}");
    }

    #[test]
    fn worker_addresses_are_validated_naming_the_field() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "address: \"https://10.0.0.5:7443\"",
                "address: \"http://10.0.0.5:7443\"",
                "spec.workers[0].address",
            ),
            ("address: \"https://10.0.0.5:7443\"", "address: \"10.0.0.5:7443\"", "spec.workers[0].address"),
            (
                "address: \"https://10.0.0.5:7443\"",
                "address: \"https://10.0.0.5\"",
                "spec.workers[0].address",
            ),
            (
                "address: \"https://10.0.0.5:7443\"",
                "address: \"https://10.0.0.5:0\"",
                "spec.workers[0].address",
            ),
            (
                "address: \"https://10.0.0.5:7443\"",
                "address: \"https://10.0.0.5:7443/x\"",
                "spec.workers[0].address",
            ),
            (
                "address: \"https://10.0.0.5:7443\"",
                "address: \"https://u@10.0.0.5:7443\"",
                "spec.workers[0].address",
            ),
            (
                "address: \"https://10.0.0.5:7443\"",
                "address: \"https://a b:7443\"",
                "spec.workers[0].address",
            ),
            (", forward: \"10.0.0.5:7444\"", "", "spec.workers[0].forward"),
            ("forward: \"10.0.0.5:7444\"", "forward: \"https://10.0.0.5:7444\"", "spec.workers[0].forward"),
            ("forward: \"10.0.0.5:7444\"", "forward: \"10.0.0.5\"", "spec.workers[0].forward"),
            ("forward: \"10.0.0.5:7444\"", "forward: \"node-2.example:7444\"", "spec.workers[1].forward"),
            ("{ name: w1, address", "{ name: w1, socket: /run/w1.sock, address", "spec.workers[0]"),
            ("{ name: w4, socket: /run/ateom/w4.sock }", "{ name: w4 }", "spec.workers[3]"),
            ("w4.sock }", "w4.sock, forward: \"127.0.0.1:1\" }", "spec.workers[3].forward"),
            (
                "  tls: { ca: /etc/ate/ca.crt, cert: /etc/ate/ate.crt, key: /etc/ate/ate.key }\n",
                "",
                "spec.tls",
            ),
            ("ca: /etc/ate/ca.crt,", "ca: ca.crt,", "spec.tls.ca"),
            ("key: /etc/ate/b.key", "key: b.key", "spec.workers[1].tls.key"),
            ("key: /etc/ate/b.key", "key: /etc/ate/b.key, password: x", "spec.workers[1].tls.password"),
            ("cert: /etc/ate/ate.crt, ", "", "spec.tls"),
        ];
        for (from, to, field) in cases {
            assert!(REMOTE.contains(from), "{from}");
            let y = REMOTE.replacen(from, to, 1);
            let err = parse_resources(&y).expect_err(to);
            let text = err.to_string();
            assert!(
                matches!(&err, ResourceError::Invalid { field: f, .. } if f == field)
                    || (matches!(&err, ResourceError::Yaml { .. }) && text.contains("missing field")),
                "{to}: want {field}, got {text}"
            );
        }
    }

    #[test]
    fn a_kubernetes_pool_needs_no_static_workers() {
        let y = r#"
apiVersion: ate.dev/v1
kind: WorkerPool
metadata: { name: fc, namespace: ate }
spec:
  backend: firecracker
  tls: { ca: /etc/ate/tls/ca.crt, cert: /etc/ate/tls/tls.crt, key: /etc/ate/tls/tls.key }
  kubernetes:
    workload: DaemonSet
    tlsSecret: ateom-worker-tls
    resources: { cpu: 4, memory: 8Gi }
    hugepages: 2Gi
    deviceAccess: privileged
"#;
        let rs = parse_resources(y).unwrap();
        let Resource::WorkerPool { spec, .. } = &rs[0] else { panic!() };
        let k = spec.kubernetes.as_ref().unwrap();
        assert!(spec.workers.is_empty());
        assert_eq!((k.workload, k.device_access), (WorkloadKind::DaemonSet, Some(DeviceAccess::Privileged)));
        assert_eq!(k.resources.cpu.as_deref(), Some("4"));
        // Round-trips; an old pool (static workers, no kubernetes) serializes as before.
        let json = serde_json::to_string(&rs).unwrap();
        assert_eq!(parse_resources(&json).unwrap(), rs);
        // Bad values name their field; a pool with neither workers nor kubernetes is refused.
        for (from, to, field) in [
            ("tlsSecret: ateom-worker-tls", "tlsSecret: ../x", "spec.kubernetes.tlsSecret"),
            ("hugepages: 2Gi", "hugepages: lots", "spec.kubernetes.hugepages"),
            ("memory: 8Gi", "memory: 8GB", "spec.kubernetes.resources.memory"),
            ("workload: DaemonSet", "workload: DaemonSet\n    replica: 2", "spec.kubernetes.replica"),
        ] {
            let err = parse_resources(&y.replace(from, to)).unwrap_err();
            assert!(matches!(&err, ResourceError::Invalid { field: f, .. } if f == field), "{to}: {err}");
        }
        let none = y.split("  kubernetes:").next().unwrap();
        assert!(parse_resources(none).unwrap_err().to_string().contains("spec.workers"));
    }

    #[test]
    fn names_are_dns_labels_without_dots() {
        for good in ["a", "actor-1", "A_b", "0"] {
            check_name(good).unwrap();
        }
        for bad in ["", "a.b", "-a", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
