//! Pod shaping: a pure function from a [`WorkerPool`] and the operator's configuration to the
//! objects that run its workers, or the reason the pool's combination is refused.
//!
//! What each backend gets (and why):
//!
//! | backend | pod | nodes |
//! |---|---|---|
//! | gvisor | privileged (runsc makes namespaces, mounts procfs under the container's masked `/proc`, writes cgroups); `--runsc` from the image | any Linux node |
//! | firecracker | `/dev/kvm` + `/dev/net/tun` from a device plugin (extended resources) with the jailer's capabilities, or by hostPath in a privileged container; optional 2 MiB huge pages | `ate.dev/firecracker=true`, set by `ate node-probe` |
//! | qemu | `/dev/net/tun`; `/dev/kvm` with `accel: kvm`; `auto` splits a DaemonSet in two: KVM-shaped on `ate.dev/kvm=true` nodes, TCG-shaped elsewhere | by the probe's `ate.dev/kvm` label |
//!
//! Every backend: the worker's state directory on a hostPath (local snapshots survive the
//! pod; at most one worker of a pool per node), CPU/memory (requests = limits), the worker's
//! TLS Secret, gRPC and workload ports with mutual TLS, exec probes of `ateom caps` (the
//! worker answers GetCapabilities on its socket), a headless Service (each pod's DNS name
//! `<pod-ip-dashed>.<service>.<ns>.svc.<domain>` is what the worker certificate covers) and a
//! PodDisruptionBudget.

use std::collections::BTreeMap;

use ate_core::resource::{DeviceAccess, KubernetesPool, WorkloadKind, parse_cpu, parse_memory};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, AppArmorProfile, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, ExecAction, HostPathVolumeSource, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, ObjectFieldSelector, PodAffinityTerm, PodAntiAffinity, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort,
    ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource as _;
use serde::Serialize;

use crate::crd::WorkerPool;

/// Label of every worker pod: its pool.
pub const LABEL_POOL: &str = "ate.dev/pool";
/// Label of every worker pod: its backend.
pub const LABEL_BACKEND: &str = "ate.dev/backend";
/// Label of the pods of a QEMU pool's KVM- or TCG-shaped half.
pub const LABEL_ACCEL: &str = "ate.dev/accel";
/// Node label set by `ate node-probe`: `/dev/kvm` is hardware virtualisation.
pub const NODE_KVM: &str = "ate.dev/kvm";
/// Node label set by `ate node-probe`: `ateom doctor` says firecracker runs there.
pub const NODE_FIRECRACKER: &str = "ate.dev/firecracker";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "ate-operator";
/// The worker's gRPC port (mutual TLS).
pub const GRPC_PORT: u16 = 7443;
/// The worker's TLS front for its workload.
pub const FORWARD_PORT: u16 = 7444;
/// The worker's unix socket inside its pod.
pub const SOCKET: &str = "/run/ateom/ateom.sock";
/// Where the worker's TLS Secret is mounted.
pub const TLS_DIR: &str = "/etc/ateom/tls";
/// Longest pool name: `ateom-<pool>-kvm` must leave room for a pod's 6-character suffix in a
/// 63-character name.
pub const MAX_POOL_NAME: usize = 40;

/// The operator's own settings (command-line flags of `ate operator`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// The worker image (with `ateom`, `runsc` and the guest files) unless a pool names one.
    pub worker_image: String,
    /// `cluster.local` unless the cluster says otherwise.
    pub cluster_domain: String,
    /// Extended resource of a device plugin that hands out `/dev/kvm`.
    pub kvm_resource: String,
    /// Extended resource of a device plugin that hands out `/dev/net/tun`.
    pub tun_resource: String,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            worker_image: "ghcr.io/ateom/ateom:latest".into(),
            cluster_domain: "cluster.local".into(),
            kvm_resource: "devices.kubevirt.io/kvm".into(),
            tun_resource: "devices.kubevirt.io/tun".into(),
        }
    }
}

/// Why a pool is not turned into pods. Written into its `Supported` condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {message}")]
pub struct Refusal {
    /// CamelCase condition reason.
    pub reason: &'static str,
    pub message: String,
}

fn refuse(reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { reason, message: message.into() }
}

/// One object the operator applies.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    Deployment(Box<Deployment>),
    DaemonSet(Box<DaemonSet>),
    Service(Box<Service>),
    PodDisruptionBudget(Box<PodDisruptionBudget>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Deployment(_) => "Deployment",
            Object::DaemonSet(_) => "DaemonSet",
            Object::Service(_) => "Service",
            Object::PodDisruptionBudget(_) => "PodDisruptionBudget",
        }
    }

    pub fn name(&self) -> &str {
        let m = match self {
            Object::Deployment(o) => &o.metadata,
            Object::DaemonSet(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::PodDisruptionBudget(o) => &o.metadata,
        };
        m.name.as_deref().unwrap_or_default()
    }
}

/// The backend as the operator shapes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Gvisor,
    Firecracker,
    Qemu,
}

/// QEMU's accelerator choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// A pool's settings, checked: every combination the operator accepts.
struct Checked<'a> {
    ns: String,
    name: String,
    backend: Backend,
    k: &'a KubernetesPool,
    accel: Accel,
    devices: DeviceAccess,
    cpu_milli: Option<u64>,
    memory: Option<u64>,
    hugepages: Option<u64>,
}

/// Checks what the operator can run, refusing the rest with a reason.
fn check(pool: &WorkerPool) -> Result<Checked<'_>, Refusal> {
    let spec = &pool.spec.pool;
    let name = pool.metadata.name.clone().unwrap_or_default();
    let ns = pool.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let dns_label = |s: &str| {
        !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && s.as_bytes()[0].is_ascii_lowercase()
            && !s.ends_with('-')
    };
    if !dns_label(&name) || name.len() > MAX_POOL_NAME {
        return Err(refuse(
            "InvalidName",
            format!(
                "pool name {name:?} must be a DNS label (a-z, 0-9, '-', starting with a letter) of at most {MAX_POOL_NAME} characters: it names the pool's Service and workload"
            ),
        ));
    }
    let Some(k) = &spec.kubernetes else {
        return Err(refuse(
            "NoKubernetesSpec",
            "spec.kubernetes is missing: this pool lists its workers itself (spec.workers, for `ate apply`); give spec.kubernetes for the operator to run its workers",
        ));
    };
    if !spec.workers.is_empty() {
        return Err(refuse(
            "StaticWorkers",
            "spec.workers and spec.kubernetes together: a pool run by the operator discovers its workers from its pods; remove spec.workers",
        ));
    }
    if let Err(p) = ate_core::resource::check_name(&k.tls_secret) {
        return Err(refuse("InvalidTlsSecret", format!("spec.kubernetes.tlsSecret {p}")));
    }
    let backend = match spec.backend.as_str() {
        "gvisor" => Backend::Gvisor,
        "firecracker" => Backend::Firecracker,
        "qemu" => Backend::Qemu,
        other => {
            return Err(refuse(
                "UnsupportedBackend",
                format!("backend {other:?} is not one ateom has (gvisor, firecracker, qemu)"),
            ));
        }
    };
    if k.workload == WorkloadKind::DaemonSet && k.replicas.is_some() {
        return Err(refuse(
            "ReplicasWithDaemonSet",
            "spec.kubernetes.replicas is for a Deployment; a DaemonSet runs one worker on every selected node",
        ));
    }
    if k.replicas == Some(0) {
        return Err(refuse("NoReplicas", "spec.kubernetes.replicas must be at least 1"));
    }
    if k.resources.pids.is_some() {
        return Err(refuse(
            "UnsupportedResource",
            "spec.kubernetes.resources.pids: a pod has no pids limit (set pids on the template: it limits each sandbox)",
        ));
    }
    let cpu_milli = k
        .resources
        .cpu
        .as_deref()
        .map(parse_cpu)
        .transpose()
        .map_err(|p| refuse("InvalidResources", format!("spec.kubernetes.resources.cpu: {p}")))?;
    let memory = k
        .resources
        .memory
        .as_deref()
        .map(parse_memory)
        .transpose()
        .map_err(|p| refuse("InvalidResources", format!("spec.kubernetes.resources.memory: {p}")))?;
    let hugepages = match (&k.hugepages, backend) {
        (None, _) => None,
        (Some(h), Backend::Firecracker) => {
            let bytes = parse_memory(h)
                .map_err(|p| refuse("InvalidHugepages", format!("spec.kubernetes.hugepages: {p}")))?;
            if !bytes.is_multiple_of(2 << 20) {
                return Err(refuse(
                    "InvalidHugepages",
                    format!("spec.kubernetes.hugepages {h:?} is not a whole number of 2Mi pages"),
                ));
            }
            if memory.is_none() && cpu_milli.is_none() {
                return Err(refuse(
                    "HugepagesWithoutResources",
                    "spec.kubernetes.hugepages needs resources.cpu or resources.memory too (Kubernetes admits huge pages only to a container that requests cpu or memory)",
                ));
            }
            Some(bytes)
        }
        (Some(_), _) => {
            return Err(refuse(
                "HugepagesUnsupported",
                format!(
                    "spec.kubernetes.hugepages is for firecracker (guest memory); the {} backend does not use them",
                    spec.backend
                ),
            ));
        }
    };
    if k.runsc.is_some() && backend != Backend::Gvisor {
        return Err(refuse(
            "RunscUnsupported",
            format!("spec.kubernetes.runsc is for gvisor, not {}", spec.backend),
        ));
    }
    let accel = match (k.accel.as_deref(), backend) {
        (None, Backend::Qemu) | (Some("auto"), Backend::Qemu) => Accel::Auto,
        (Some("kvm"), Backend::Qemu) => Accel::Kvm,
        (Some("tcg"), Backend::Qemu) => Accel::Tcg,
        (Some(a), Backend::Qemu) => {
            return Err(refuse(
                "InvalidAccel",
                format!("spec.kubernetes.accel {a:?} is not auto, kvm or tcg"),
            ));
        }
        (Some(_), _) => {
            return Err(refuse(
                "AccelUnsupported",
                format!("spec.kubernetes.accel is for qemu, not {}", spec.backend),
            ));
        }
        (None, _) => Accel::Auto,
    };
    if backend == Backend::Qemu && accel == Accel::Auto && k.workload == WorkloadKind::Deployment {
        return Err(refuse(
            "AutoAccelNeedsDaemonSet",
            "qemu with accel auto needs workload DaemonSet (a KVM-shaped set on nodes labelled ate.dev/kvm=true and a TCG-shaped one elsewhere): a Deployment's pods share one shape; or choose accel kvm or tcg",
        ));
    }
    if backend == Backend::Gvisor && k.device_access.is_some() {
        return Err(refuse(
            "DeviceAccessUnsupported",
            "spec.kubernetes.deviceAccess is for the microVM backends; gvisor (ptrace platform) needs no devices",
        ));
    }
    Ok(Checked {
        ns,
        name,
        backend,
        k,
        accel,
        devices: k.device_access.unwrap_or_default(),
        cpu_milli,
        memory,
        hugepages,
    })
}

/// The objects that run `pool`'s workers, or why the pool is refused. Pure: the same pool
/// and config give the same objects.
pub fn render(pool: &WorkerPool, cfg: &OperatorConfig) -> Result<Vec<Object>, Refusal> {
    let c = check(pool)?;
    let base = format!("ateom-{}", c.name);
    let owner = owner_ref(pool);
    let meta = |name: &str, extra: &[(&str, &str)]| ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(c.ns.clone()),
        labels: Some(labels(&c, extra)),
        owner_references: owner.clone().map(|o| vec![o]),
        ..Default::default()
    };
    let mut out = Vec::new();
    // The workload(s): one shape, or QEMU auto's KVM and TCG halves.
    let halves: Vec<(String, Option<Accel>)> = match (c.backend, c.accel) {
        (Backend::Qemu, Accel::Auto) => {
            vec![(format!("{base}-kvm"), Some(Accel::Kvm)), (format!("{base}-tcg"), Some(Accel::Tcg))]
        }
        (Backend::Qemu, a) => vec![(base.clone(), Some(a))],
        _ => vec![(base.clone(), None)],
    };
    let split = halves.len() > 1;
    for (name, accel) in halves {
        let accel_label = accel.filter(|_| split).map(|a| if a == Accel::Kvm { "kvm" } else { "tcg" });
        let extra: Vec<(&str, &str)> = accel_label.map(|a| vec![(LABEL_ACCEL, a)]).unwrap_or_default();
        let selector =
            LabelSelector { match_labels: Some(selector_labels(&c, &extra)), ..Default::default() };
        let template = pod_template(&c, cfg, accel, split, &extra);
        match c.k.workload {
            WorkloadKind::Deployment => out.push(Object::Deployment(Box::new(Deployment {
                metadata: meta(&name, &extra),
                spec: Some(DeploymentSpec {
                    replicas: Some(c.k.replicas.unwrap_or(1).min(i32::MAX as u32) as i32),
                    selector,
                    template,
                    // A worker's state directory is a hostPath: the old pod leaves before
                    // the new one starts on that node (never two daemons on one directory).
                    strategy: Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
                        type_: Some("Recreate".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                status: None,
            }))),
            WorkloadKind::DaemonSet => out.push(Object::DaemonSet(Box::new(DaemonSet {
                metadata: meta(&name, &extra),
                spec: Some(DaemonSetSpec { selector, template, ..Default::default() }),
                status: None,
            }))),
        }
    }
    out.push(Object::Service(Box::new(Service {
        metadata: meta(&base, &[]),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(&c, &[])),
            publish_not_ready_addresses: Some(false),
            ports: Some(vec![
                ServicePort {
                    name: Some("grpc".into()),
                    port: GRPC_PORT.into(),
                    target_port: Some(IntOrString::String("grpc".into())),
                    ..Default::default()
                },
                ServicePort {
                    name: Some("forward".into()),
                    port: FORWARD_PORT.into(),
                    target_port: Some(IntOrString::String("forward".into())),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        }),
        status: None,
    })));
    out.push(Object::PodDisruptionBudget(Box::new(PodDisruptionBudget {
        metadata: meta(&base, &[]),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(
                c.k.max_unavailable.unwrap_or(1).min(i32::MAX as u32) as i32
            )),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&c, &[])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    })));
    Ok(out)
}

/// The headless Service's name for a pool.
pub fn service_name(pool: &str) -> String {
    format!("ateom-{pool}")
}

fn owner_ref(pool: &WorkerPool) -> Option<OwnerReference> {
    // A pool read from a file (dry run) has no uid: its objects have no owner.
    let mut o = pool.controller_owner_ref(&())?;
    o.block_owner_deletion = Some(true);
    Some(o)
}

fn selector_labels(c: &Checked<'_>, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m = BTreeMap::from([
        (LABEL_NAME.to_owned(), "ateom".to_owned()),
        (LABEL_POOL.to_owned(), c.name.clone()),
    ]);
    for (k, v) in extra {
        m.insert((*k).to_owned(), (*v).to_owned());
    }
    m
}

fn labels(c: &Checked<'_>, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut m = selector_labels(c, extra);
    m.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
    m.insert(LABEL_BACKEND.into(), backend_name(c.backend).into());
    m
}

fn backend_name(b: Backend) -> &'static str {
    match b {
        Backend::Gvisor => "gvisor",
        Backend::Firecracker => "firecracker",
        Backend::Qemu => "qemu",
    }
}

fn quantity_milli(m: u64) -> Quantity {
    if m.is_multiple_of(1000) { Quantity((m / 1000).to_string()) } else { Quantity(format!("{m}m")) }
}

fn quantity_bytes(b: u64) -> Quantity {
    for (shift, unit) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
        if b.is_multiple_of(1 << shift) {
            return Quantity(format!("{}{unit}", b >> shift));
        }
    }
    Quantity(b.to_string())
}

fn env_field(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn exec_probe(period: i32, failures: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(vec!["ateom".into(), "caps".into(), "--socket".into(), SOCKET.into()]),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

fn host_path(name: &str, path: &str, type_: &str) -> Volume {
    Volume {
        name: name.into(),
        host_path: Some(HostPathVolumeSource { path: path.into(), type_: Some(type_.into()) }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// The capabilities Firecracker's jailer and QEMU's confinement need, with ateom's own
/// network set-up: mount and network namespaces and `pivot_root` (SYS_ADMIN), the chroot
/// (SYS_CHROOT), dropping to the VMM's uid/gid (SETUID, SETGID), device nodes in the chroot
/// (MKNOD), taps and addresses (NET_ADMIN), owning and reading the chroot's files (CHOWN,
/// FOWNER, DAC_OVERRIDE), the VMM's rlimits (SYS_RESOURCE) and stopping it (KILL).
pub const MICROVM_CAPABILITIES: &[&str] = &[
    "SYS_ADMIN",
    "SYS_CHROOT",
    "SETUID",
    "SETGID",
    "MKNOD",
    "NET_ADMIN",
    "CHOWN",
    "FOWNER",
    "DAC_OVERRIDE",
    "SYS_RESOURCE",
    "KILL",
];

fn pod_template(
    c: &Checked<'_>,
    cfg: &OperatorConfig,
    accel: Option<Accel>,
    split: bool,
    extra: &[(&str, &str)],
) -> PodTemplateSpec {
    let state_dir = c.k.state_dir.clone().unwrap_or_else(|| format!("/var/lib/ateom/{}/{}", c.ns, c.name));
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--backend".into(),
        backend_name(c.backend).into(),
        "--socket".into(),
        SOCKET.into(),
        "--state-dir".into(),
        "/var/lib/ateom".into(),
        "--listen-tcp".into(),
        format!("0.0.0.0:{GRPC_PORT}"),
        "--forward-tls".into(),
        format!("0.0.0.0:{FORWARD_PORT}"),
        "--tls-cert".into(),
        format!("{TLS_DIR}/tls.crt"),
        "--tls-key".into(),
        format!("{TLS_DIR}/tls.key"),
        "--tls-ca".into(),
        format!("{TLS_DIR}/ca.crt"),
        // Local snapshots live on this node: the node is the host in fingerprints.
        "--host-id".into(),
        "$(NODE_NAME)".into(),
    ];
    let mut limits: BTreeMap<String, Quantity> = BTreeMap::new();
    if let Some(m) = c.cpu_milli {
        limits.insert("cpu".into(), quantity_milli(m));
    }
    if let Some(b) = c.memory {
        limits.insert("memory".into(), quantity_bytes(b));
    }
    let mut volumes = vec![
        host_path("state", &state_dir, "DirectoryOrCreate"),
        Volume { name: "run".into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() },
        Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(c.k.tls_secret.clone()),
                default_mode: Some(0o400),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    let mut mounts = vec![
        mount("state", "/var/lib/ateom", false),
        mount("run", "/run/ateom", false),
        mount("tls", TLS_DIR, true),
    ];
    let mut node_selector = BTreeMap::from([("kubernetes.io/os".to_owned(), "linux".to_owned())]);
    let mut node_affinity = None;
    let privileged_sc = || SecurityContext { privileged: Some(true), ..Default::default() };
    let microvm_sc = || SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(true),
        capabilities: Some(Capabilities {
            add: Some(MICROVM_CAPABILITIES.iter().map(|s| (*s).to_owned()).collect()),
            drop: Some(vec!["ALL".into()]),
        }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        // The runtime's default AppArmor profile denies mount(2), which the jailer needs.
        app_armor_profile: Some(AppArmorProfile { type_: "Unconfined".into(), ..Default::default() }),
        ..Default::default()
    };
    let mut devices = |kvm: bool, sc: &mut SecurityContext| match c.devices {
        DeviceAccess::DevicePlugin => {
            if kvm {
                limits.insert(cfg.kvm_resource.clone(), Quantity("1".into()));
            }
            limits.insert(cfg.tun_resource.clone(), Quantity("1".into()));
        }
        DeviceAccess::Privileged => {
            *sc = privileged_sc();
            if kvm {
                volumes.push(host_path("dev-kvm", "/dev/kvm", "CharDevice"));
                mounts.push(mount("dev-kvm", "/dev/kvm", false));
            }
            volumes.push(host_path("dev-tun", "/dev/net/tun", "CharDevice"));
            mounts.push(mount("dev-tun", "/dev/net/tun", false));
        }
    };
    let security = match (c.backend, accel) {
        (Backend::Gvisor, _) => {
            args.push("--runsc".into());
            args.push(c.k.runsc.clone().unwrap_or_else(|| "/usr/bin/runsc".into()));
            args.extend(["--platform".into(), "ptrace".into()]);
            privileged_sc()
        }
        (Backend::Firecracker, _) => {
            node_selector.insert(NODE_FIRECRACKER.into(), "true".into());
            let mut sc = microvm_sc();
            devices(true, &mut sc);
            if let Some(h) = c.hugepages {
                limits.insert("hugepages-2Mi".into(), quantity_bytes(h));
                volumes.push(Volume {
                    name: "hugepages".into(),
                    empty_dir: Some(EmptyDirVolumeSource {
                        medium: Some("HugePages-2Mi".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                mounts.push(mount("hugepages", "/dev/hugepages", false));
            }
            sc
        }
        (Backend::Qemu, a) => {
            let mut sc = microvm_sc();
            let kvm = a == Some(Accel::Kvm);
            // `auto` on a KVM node: ateom still checks that a stock guest boots with KVM
            // (kvm-pvm hosts cannot) and falls back to TCG itself.
            let flag = match (a, split) {
                (Some(Accel::Kvm), true) => "auto",
                (Some(Accel::Kvm), false) => "kvm",
                _ => "tcg",
            };
            args.extend(["--accel".into(), flag.into()]);
            if kvm {
                node_selector.insert(NODE_KVM.into(), "true".into());
            } else if split {
                node_affinity = Some(NodeAffinity {
                    required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                        node_selector_terms: vec![NodeSelectorTerm {
                            match_expressions: Some(vec![NodeSelectorRequirement {
                                key: NODE_KVM.into(),
                                operator: "NotIn".into(),
                                values: Some(vec!["true".into()]),
                            }]),
                            ..Default::default()
                        }],
                    }),
                    ..Default::default()
                });
            }
            devices(kvm, &mut sc);
            sc
        }
    };
    for (k, v) in &c.k.node_selector {
        node_selector.insert(k.clone(), v.clone());
    }
    // At most one worker of a pool per node: they would share the hostPath state directory.
    let anti_affinity = PodAntiAffinity {
        required_during_scheduling_ignored_during_execution: Some(vec![PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(LABEL_POOL.to_owned(), c.name.clone())])),
                ..Default::default()
            }),
            topology_key: "kubernetes.io/hostname".into(),
            ..Default::default()
        }]),
        ..Default::default()
    };
    let resources = (!limits.is_empty()).then(|| ResourceRequirements {
        limits: Some(limits.clone()),
        requests: Some(limits),
        ..Default::default()
    });
    let container = Container {
        name: "ateom".into(),
        image: Some(c.k.image.clone().unwrap_or_else(|| cfg.worker_image.clone())),
        command: Some(vec!["ateom".into()]),
        args: Some(args),
        env: Some(vec![
            env_field("NODE_NAME", "spec.nodeName"),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: GRPC_PORT.into(),
                ..Default::default()
            },
            ContainerPort {
                name: Some("forward".into()),
                container_port: FORWARD_PORT.into(),
                ..Default::default()
            },
        ]),
        resources,
        security_context: Some(security),
        volume_mounts: Some(mounts),
        // Leftovers of a previous daemon are cleaned up at start: give it time.
        startup_probe: Some(exec_probe(5, 60)),
        readiness_probe: Some(exec_probe(10, 3)),
        liveness_probe: Some(exec_probe(20, 6)),
        ..Default::default()
    };
    PodTemplateSpec {
        metadata: Some(ObjectMeta { labels: Some(labels(c, extra)), ..Default::default() }),
        spec: Some(PodSpec {
            containers: vec![container],
            volumes: Some(volumes),
            node_selector: Some(node_selector),
            affinity: Some(Affinity {
                node_affinity,
                pod_anti_affinity: Some(anti_affinity),
                ..Default::default()
            }),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(60),
            ..Default::default()
        }),
    }
}
