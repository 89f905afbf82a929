//! The CRDs: `WorkerPool` and `ActorTemplate` in `ate.dev/v1`, derived with kube-rs from the
//! very types `ate apply` reads ([`ate_core::resource::PoolSpec`], [`TemplateSpec`]), so one
//! YAML document works for `ate apply -f` and `kubectl apply -f`. Both have a status
//! subresource with conditions.

// clippy reads kube's repeated `printcolumn(type_ = ...)` arguments as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use ate_core::resource::{PoolSpec, TemplateSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use kube::core::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every ate resource.
pub const GROUP: &str = "ate.dev";
/// Its only version.
pub const VERSION: &str = "v1";

/// `WorkerPool.spec`: ate-core's [`PoolSpec`] as is (flattened: the fields are the same).
#[derive(CustomResource, Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ate.dev",
    version = "v1",
    kind = "WorkerPool",
    namespaced,
    status = "WorkerPoolStatus",
    shortname = "wp",
    derive = "PartialEq",
    printcolumn(name = "Backend", type_ = "string", json_path = ".spec.backend"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(name = "Workers", type_ = "integer", json_path = ".status.readyWorkers")
)]
pub struct WorkerPoolSpec {
    #[serde(flatten)]
    pub pool: PoolSpec,
}

/// `ActorTemplate.spec`: ate-core's [`TemplateSpec`] as is.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ate.dev",
    version = "v1",
    kind = "ActorTemplate",
    namespaced,
    status = "ActorTemplateStatus",
    shortname = "at",
    derive = "PartialEq",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.pool"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    )
)]
pub struct ActorTemplateSpec {
    #[serde(flatten)]
    pub template: TemplateSpec,
}

/// What the operator observed of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// `Ready` (the workload exists and its pods are ready), `Supported` (the pool's
    /// backend and pod options fit together; False with the reason when refused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Worker pods ready to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_workers: Option<i32>,
    /// The objects the operator applies for this pool (`Kind/name`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<String>,
}

/// What the control plane observed of a template (written by whoever runs it; conditions).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActorTemplateStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// Both CRDs.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![WorkerPool::crd(), ActorTemplate::crd()]
}

/// Both CRDs as a multi-document YAML stream (what `ate crds` prints).
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for c in crds() {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&c)?);
    }
    Ok(out)
}

/// A condition, with `lastTransitionTime` kept from `previous` when the status did not change
/// (the Kubernetes convention: the time is of the last transition, not of the last write).
pub fn condition(
    previous: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let last = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(now, |c| c.last_transition_time.clone());
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: last,
    }
}

impl WorkerPool {
    /// From a parsed `ate apply` document.
    pub fn from_resource(metadata: &ate_core::resource::Metadata, spec: PoolSpec) -> Self {
        let mut p = WorkerPool::new(&metadata.name, WorkerPoolSpec { pool: spec });
        p.metadata.namespace = Some(metadata.namespace.clone());
        p
    }
}
