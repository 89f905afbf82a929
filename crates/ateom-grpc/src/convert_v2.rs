//! Substrate's renumbered layout (`proto/substrate/v2/ateom.proto`) -> the same validated
//! domain requests as the default layout ([`crate::convert`]), whose validators do the
//! checking: this module only maps fields (and names them as this layout does).
//!
//! Mapping:
//! * the actor is (namespace = `atespace`, template = `actor_template_name`,
//!   id = `actor_uid`, or `actor_name` when `actor_uid` is empty);
//!   `actor_template_atespace` is validated, not part of the identity; the whole identity
//!   is returned as an [`Identity`] so stats can echo it;
//! * `cpu_milli` / `memory_bytes` are the domain [`Resources`](ateom_core::Resources);
//! * `snapshot_uri` is the checkpoint's / restore's object-store prefix (a checkpoint with
//!   it is DURABLE, without it LOCAL);
//! * `durable_dir_volume_mounts[]` are the container's durable directories: volume
//!   `volume_name` (host directory `<actorDir>/durable-dir/<volume_name>/`) at `mount_path`;
//! * `readyz.timeout_seconds` is that probe's own readiness timeout (0: the worker's).
//!
//! * `SNAPSHOT_SCOPE_DATA_ON_GOLDEN` with `golden_snapshot_uri` (required then, refused
//!   otherwise) is a DATA restore onto the template's golden snapshot
//!   ([`GoldenSource`](ateom_core::GoldenSource)): a golden snapshot of the actor's template in
//!   the actor's atespace or `actor_template_atespace`.
//!
//! Refused with [`Refused::Unimplemented`] (naming the field): what ateom has no meaning
//! for yet — `egress_gateway`, CSI / system-info / image volume mounts. Nothing is silently
//! dropped.

use std::time::SystemTime;

use ateom_core as core;
use ateom_core::{ActorRef, InvalidArgument, Name, SandboxStats, WorkloadSpec};
use ateom_proto::substrate::v2 as pb;

use crate::convert::{self, CheckpointFields, ContainerFields, DurableDirField};

/// Why a request of this layout is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// A malformed field (INVALID_ARGUMENT).
    #[error(transparent)]
    Invalid(#[from] InvalidArgument),
    /// A well-formed field or value ateom does not implement (UNIMPLEMENTED).
    #[error("{field}: {reason}")]
    Unimplemented { field: String, reason: String },
}

fn unimplemented(field: impl Into<String>, reason: impl Into<String>) -> Refused {
    Refused::Unimplemented { field: field.into(), reason: reason.into() }
}

/// The actor as this layout names it, kept to echo it back in stats samples.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub atespace: String,
    pub actor_name: String,
    pub actor_uid: String,
    pub actor_template_atespace: String,
    pub actor_template_name: String,
}

macro_rules! identity_of {
    ($r:expr) => {
        Identity {
            atespace: $r.atespace.clone(),
            actor_name: $r.actor_name.clone(),
            actor_uid: $r.actor_uid.clone(),
            actor_template_atespace: $r.actor_template_atespace.clone(),
            actor_template_name: $r.actor_template_name.clone(),
        }
    };
}

impl Identity {
    /// Validates every field that is set; the template may be left out.
    fn parts(&self) -> Result<(Name, Option<Name>, Name), InvalidArgument> {
        let namespace = Name::parse("atespace", &self.atespace)?;
        if !self.actor_template_atespace.is_empty() {
            Name::parse("actor_template_atespace", &self.actor_template_atespace)?;
        }
        let template = if self.actor_template_name.is_empty() {
            None
        } else {
            Some(Name::parse("actor_template_name", &self.actor_template_name)?)
        };
        if !self.actor_name.is_empty() {
            Name::parse("actor_name", &self.actor_name)?;
        }
        let actor_id = match (self.actor_uid.as_str(), self.actor_name.as_str()) {
            ("", "") => return Err(InvalidArgument::new("actor_uid", "must not be empty (nor actor_name)")),
            ("", name) => Name::parse("actor_name", name)?,
            (uid, _) => Name::parse("actor_uid", uid)?,
        };
        Ok((namespace, template, actor_id))
    }

    /// The domain actor: (atespace, actor_template_name, actor_uid or actor_name).
    pub fn actor(&self) -> Result<ActorRef, InvalidArgument> {
        let (namespace, template, actor_id) = self.parts()?;
        let template =
            template.ok_or_else(|| InvalidArgument::new("actor_template_name", "must not be empty"))?;
        Ok(ActorRef { namespace, template, actor_id })
    }

    /// What the echo of a sample says when the worker does not know how the actor was named
    /// (it was started before this worker process): the domain's three names, the id as
    /// `actor_uid` (substrate always sends one).
    pub fn fallback(actor: &ActorRef) -> Self {
        Self {
            atespace: actor.namespace.to_string(),
            actor_uid: actor.actor_id.to_string(),
            actor_template_name: actor.template.to_string(),
            ..Self::default()
        }
    }
}

fn workload(spec: Option<&pb::WorkloadSpec>, required: bool) -> Result<WorkloadSpec, Refused> {
    let containers = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let mut fields = Vec::with_capacity(containers.len());
    for (i, c) in containers.iter().enumerate() {
        let at = format!("spec.containers[{i}]");
        for (field, set) in [
            ("csi_volume_mounts", !c.csi_volume_mounts.is_empty()),
            ("system_info_volume_mounts", !c.system_info_volume_mounts.is_empty()),
            ("image_volume_mounts", !c.image_volume_mounts.is_empty()),
        ] {
            if set {
                return Err(unimplemented(format!("{at}.{field}"), "ateom does not mount these volumes"));
            }
        }
        let durable_dirs = c
            .durable_dir_volume_mounts
            .iter()
            .enumerate()
            .map(|(j, m)| DurableDirField {
                at: format!("durable_dir_volume_mounts[{j}]"),
                volume: Some(("volume_name", m.volume_name.as_str())),
                mount_path: ("mount_path", m.mount_path.as_str()),
            })
            .collect();
        fields.push(ContainerFields {
            name: &c.name,
            readyz: c.readyz.as_ref().map(|r| r.http_get.as_ref().map(|g| (g.path.as_str(), g.port))),
            readyz_timeout_seconds: c.readyz.as_ref().map_or(0, |r| r.timeout_seconds),
            durable_dirs,
            image: "",
            command: &[],
            args: &[],
            env: None,
        });
    }
    Ok(convert::workload_of(fields, required)?)
}

/// The sandbox's size: 0 means the worker's default; the ranges are the default layout's.
fn size(cpu_milli: i64, memory_bytes: i64) -> Result<core::Resources, InvalidArgument> {
    let non_negative = |field: &str, v: i64| {
        u64::try_from(v).map_err(|_| InvalidArgument::new(field, format!("{v} is negative")))
    };
    convert::limits(
        (non_negative("cpu_milli", cpu_milli)?, "cpu_milli"),
        (non_negative("memory_bytes", memory_bytes)?, "memory_bytes"),
        (0, "pids"),
    )
}

fn no_egress_gateway(g: Option<&pb::EgressGateway>) -> Result<(), Refused> {
    match g {
        None => Ok(()),
        Some(_) => Err(unimplemented(
            "egress_gateway",
            "ateom does not tunnel egress; the workload's traffic would not go through the gateway",
        )),
    }
}

pub fn run_request(r: &pb::RunWorkloadRequest) -> Result<(core::RunRequest, Identity), Refused> {
    let identity = identity_of!(r);
    let req = core::RunRequest {
        actor: identity.actor()?,
        spec: workload(r.spec.as_ref(), true)?,
        runtime: convert::runtime(&r.runsc_path, None)?,
        asset_paths: convert::asset_paths(&r.runtime_asset_paths)?,
        resources: size(r.cpu_milli, r.memory_bytes)?,
    };
    no_egress_gateway(r.egress_gateway.as_ref())?;
    Ok((req, identity))
}

pub fn checkpoint_request(r: &pb::CheckpointWorkloadRequest) -> Result<core::CheckpointRequest, Refused> {
    let actor = identity_of!(r).actor()?;
    // Validated for consistency even though a checkpoint acts on the running workload.
    workload(r.spec.as_ref(), false)?;
    convert::runtime(&r.runsc_path, None)?;
    convert::asset_paths(&r.runtime_asset_paths)?;
    if r.scope == pb::SnapshotScope::DataOnGolden as i32 {
        return Err(
            InvalidArgument::new("scope", "SNAPSHOT_SCOPE_DATA_ON_GOLDEN is for restores only").into()
        );
    }
    Ok(convert::checkpoint_of(CheckpointFields {
        actor,
        scope: r.scope,
        uri: ("snapshot_uri", &r.snapshot_uri),
        destination: 0,
        snapshot_id: "",
        keep: &[],
        // The v2 layout names where snapshots go (`snapshot_uri`); ateom writes them there.
        node_agent: false,
    })?)
}

pub fn restore_request(r: &pb::RestoreWorkloadRequest) -> Result<(core::RestoreRequest, Identity), Refused> {
    let identity = identity_of!(r);
    let actor = identity.actor()?;
    let on_golden = r.scope == pb::SnapshotScope::DataOnGolden as i32;
    let golden = match (on_golden, r.golden_snapshot_uri.as_str()) {
        (false, "") => None,
        (false, _) => {
            return Err(InvalidArgument::new(
                "golden_snapshot_uri",
                "is only used with scope SNAPSHOT_SCOPE_DATA_ON_GOLDEN",
            )
            .into());
        }
        (true, "") => {
            return Err(InvalidArgument::new(
                "golden_snapshot_uri",
                "is required with scope SNAPSHOT_SCOPE_DATA_ON_GOLDEN",
            )
            .into());
        }
        (true, uri) => {
            let uri_prefix = core::parse_uri_prefix("golden_snapshot_uri", uri)?;
            let mut namespaces = vec![actor.namespace.clone()];
            if !r.actor_template_atespace.is_empty() {
                let t = Name::parse("actor_template_atespace", &r.actor_template_atespace)?;
                if t != actor.namespace {
                    namespaces.push(t);
                }
            }
            Some(core::GoldenSource { uri_prefix, namespaces })
        }
    };
    let req = core::RestoreRequest {
        actor,
        golden,
        scope: if on_golden { core::Scope::Data } else { convert::scope(r.scope)? },
        node_agent: false,
        spec: workload(r.spec.as_ref(), false)?,
        runtime: convert::runtime(&r.runsc_path, None)?,
        asset_paths: convert::asset_paths(&r.runtime_asset_paths)?,
        uri_prefix: convert::uri_prefix("snapshot_uri", &r.snapshot_uri)?,
        snapshot_id: None,
        keep: Vec::new(),
        resources: size(r.cpu_milli, r.memory_bytes)?,
    };
    no_egress_gateway(r.egress_gateway.as_ref())?;
    Ok((req, identity))
}

/// Which actor a TerminateWorkload names. Substrate may leave the template out; then the
/// actor is whichever one with this atespace and id runs here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminateTarget {
    pub namespace: Name,
    pub template: Option<Name>,
    pub actor_id: Name,
}

impl TerminateTarget {
    pub fn matches(&self, a: &ActorRef) -> bool {
        a.namespace == self.namespace
            && a.actor_id == self.actor_id
            && self.template.as_ref().is_none_or(|t| *t == a.template)
    }
}

pub fn terminate_request(r: &pb::TerminateWorkloadRequest) -> Result<TerminateTarget, Refused> {
    let (namespace, template, actor_id) = identity_of!(r).parts()?;
    workload(r.spec.as_ref(), false)?;
    convert::runtime(&r.runsc_path, None)?;
    Ok(TerminateTarget { namespace, template, actor_id })
}

pub fn stats_request(r: &pb::GetWorkloadStatsRequest) -> Result<Name, Refused> {
    Ok(Name::parse("actor_uid", &r.actor_uid)?)
}

/// Substrate's sandbox family of a backend.
pub fn sandbox_class(backend: &str) -> pb::SandboxClass {
    match backend {
        "gvisor" => pb::SandboxClass::Gvisor,
        "firecracker" | "qemu" => pb::SandboxClass::Microvm,
        _ => pb::SandboxClass::Unspecified,
    }
}

/// One stats sample. `identity`: how the request that started the actor named it.
pub fn sample(
    identity: &Identity,
    class: pb::SandboxClass,
    stats: &SandboxStats,
    at: SystemTime,
) -> pb::WorkloadStatsSample {
    let measured = stats.memory_bytes.is_some() || stats.cpu_ns.is_some() || stats.pids.is_some();
    let memory = stats.memory_bytes.unwrap_or(0);
    pb::WorkloadStatsSample {
        atespace: identity.atespace.clone(),
        actor_name: identity.actor_name.clone(),
        actor_uid: identity.actor_uid.clone(),
        actor_template_atespace: identity.actor_template_atespace.clone(),
        actor_template_name: identity.actor_template_name.clone(),
        sandbox_class: class as i32,
        source: (if measured { pb::StatsSource::Cgroup } else { pb::StatsSource::Unspecified }) as i32,
        memory_current_bytes: memory,
        memory_peak_bytes: 0,
        memory_working_set_bytes: memory,
        cpu_usage_usec: stats.cpu_ns.unwrap_or(0) / 1000,
        observed_at_unix_nano: at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
        pids: stats.pids.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests;
