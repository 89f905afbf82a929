//! `ate operator`: reconciles each `WorkerPool` into the objects [`crate::shape::render`]
//! gives (server-side apply, field manager `ate-operator`) and writes the pool's status:
//! `Supported` (False with the reason when the pool's combination is refused — the operator
//! never crashes on a pool) and `Ready` (its worker pods are ready).
//!
//! A refused pool's earlier objects are left as they were: running workers (and the actors on
//! them) are not taken down because an edit was wrong.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::crd::{WorkerPool, WorkerPoolStatus, condition};
use crate::shape::{MANAGER, Object, OperatorConfig, Refusal, render};

/// Why a reconcile did not finish (it is retried).
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("applying {kind}/{name}: {source}")]
    Apply { kind: &'static str, name: String, source: kube::Error },
    #[error("writing the status of WorkerPool {name}: {source}")]
    Status { name: String, source: kube::Error },
    #[error("reading resources: {0}")]
    Parse(#[from] ate_core::ResourceError),
    #[error("printing YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("the leader lease was lost")]
    LostLease,
}

/// What the reconciler needs.
pub struct Ctx {
    pub client: Client,
    pub cfg: OperatorConfig,
}

/// What a reconcile did, for tests and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// These objects were applied; `ready` of `desired` workers are ready.
    Applied { objects: Vec<String>, ready: i32, desired: i32 },
    /// The pool was refused, with this reason.
    Refused(Refusal),
}

/// Reconciles one pool: applies its objects (or records why not) and writes its status.
pub async fn reconcile_pool(pool: &WorkerPool, ctx: &Ctx, now: Time) -> Result<Outcome, OperatorError> {
    let name = pool.name_any();
    let ns = pool.namespace().unwrap_or_else(|| "default".into());
    let previous = pool.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default();
    let generation = pool.metadata.generation;
    let outcome = match render(pool, &ctx.cfg) {
        Err(refusal) => {
            warn!(pool = %name, reason = refusal.reason, "{}", refusal.message);
            Outcome::Refused(refusal)
        }
        Ok(objects) => {
            let (mut ready, mut desired) = (0, 0);
            let mut names = Vec::new();
            for o in &objects {
                let (r, d) = apply(&ctx.client, &ns, o).await?;
                ready += r;
                desired += d;
                names.push(format!("{}/{}", o.kind(), o.name()));
            }
            Outcome::Applied { objects: names, ready, desired }
        }
    };
    let status = match &outcome {
        Outcome::Refused(r) => WorkerPoolStatus {
            conditions: vec![
                condition(
                    &previous,
                    "Supported",
                    false,
                    r.reason,
                    r.message.clone(),
                    generation,
                    now.clone(),
                ),
                condition(
                    &previous,
                    "Ready",
                    false,
                    r.reason,
                    "the pool is refused (see Supported)".into(),
                    generation,
                    now,
                ),
            ],
            observed_generation: generation,
            ready_workers: None,
            objects: Vec::new(),
        },
        Outcome::Applied { objects, ready, desired } => {
            let ok = *desired > 0 && ready >= desired;
            WorkerPoolStatus {
                conditions: vec![
                    condition(
                        &previous,
                        "Supported",
                        true,
                        "Supported",
                        "the pool's backend and pod options fit".into(),
                        generation,
                        now.clone(),
                    ),
                    condition(
                        &previous,
                        "Ready",
                        ok,
                        if ok { "WorkersReady" } else { "WorkersStarting" },
                        format!("{ready} of {desired} workers ready"),
                        generation,
                        now,
                    ),
                ],
                observed_generation: generation,
                ready_workers: Some(*ready),
                objects: objects.clone(),
            }
        }
    };
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({ "apiVersion": "ate.dev/v1", "kind": "WorkerPool", "status": status });
    api.patch_status(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(|source| OperatorError::Status { name: name.clone(), source })?;
    Ok(outcome)
}

/// Server-side applies one object; returns (ready, desired) workers of a workload.
async fn apply(client: &Client, ns: &str, o: &Object) -> Result<(i32, i32), OperatorError> {
    let pp = PatchParams::apply(MANAGER).force();
    let err = |source| OperatorError::Apply { kind: o.kind(), name: o.name().to_owned(), source };
    Ok(match o {
        Object::Deployment(d) => {
            let got = Api::<Deployment>::namespaced(client.clone(), ns)
                .patch(o.name(), &pp, &Patch::Apply(d.as_ref()))
                .await
                .map_err(err)?;
            let want = got.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            (got.status.and_then(|s| s.ready_replicas).unwrap_or(0), want)
        }
        Object::DaemonSet(d) => {
            let got = Api::<DaemonSet>::namespaced(client.clone(), ns)
                .patch(o.name(), &pp, &Patch::Apply(d.as_ref()))
                .await
                .map_err(err)?;
            let s = got.status.unwrap_or_default();
            (s.number_ready, s.desired_number_scheduled)
        }
        Object::Service(s) => {
            Api::<Service>::namespaced(client.clone(), ns)
                .patch(o.name(), &pp, &Patch::Apply(s.as_ref()))
                .await
                .map_err(err)?;
            (0, 0)
        }
        Object::PodDisruptionBudget(p) => {
            Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
                .patch(o.name(), &pp, &Patch::Apply(p.as_ref()))
                .await
                .map_err(err)?;
            (0, 0)
        }
    })
}

/// When to look again after a reconcile.
pub fn next_action(outcome: &Outcome) -> Action {
    match outcome {
        // Nothing changes until the pool is edited (which triggers a reconcile).
        Outcome::Refused(_) => Action::await_change(),
        Outcome::Applied { ready, desired, .. } if ready < desired => {
            Action::requeue(Duration::from_secs(10))
        }
        Outcome::Applied { .. } => Action::requeue(Duration::from_secs(300)),
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Runs the controller until the stream ends (or `stop` resolves): pools in `namespace` (all
/// namespaces when None), re-reconciled when an object they own changes.
pub async fn run(
    client: Client,
    cfg: OperatorConfig,
    namespace: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pools, deployments, daemonsets) = match &namespace {
        Some(ns) => (
            Api::<WorkerPool>::namespaced(client.clone(), ns),
            Api::<Deployment>::namespaced(client.clone(), ns),
            Api::<DaemonSet>::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone()), Api::all(client.clone())),
    };
    let ctx = Arc::new(Ctx { client, cfg });
    let owned = watcher::Config::default().labels(&format!("{}={MANAGER}", crate::shape::LABEL_MANAGED_BY));
    Controller::new(pools, watcher::Config::default())
        .owns(deployments, owned.clone())
        .owns(daemonsets, owned)
        .graceful_shutdown_on(stop)
        .run(
            |pool: Arc<WorkerPool>, ctx: Arc<Ctx>| async move {
                let outcome = reconcile_pool(&pool, &ctx, now()).await?;
                Ok::<_, OperatorError>(next_action(&outcome))
            },
            |pool: Arc<WorkerPool>, e: &OperatorError, _| {
                warn!(pool = %pool.name_any(), error = %e, "reconcile failed; retrying in 30s");
                Action::requeue(Duration::from_secs(30))
            },
            ctx,
        )
        .for_each(|r| async move {
            match r {
                Ok((o, _)) => info!(pool = %o.name, namespace = ?o.namespace, "reconciled"),
                Err(e) => warn!(error = %e, "controller"),
            }
        })
        .await;
}

/// `ate operator --dry-run -f FILE`: what the operator would create for each WorkerPool in
/// the file, as YAML, and a comment for each refused pool, without a cluster.
pub fn dry_run(text: &str, cfg: &OperatorConfig) -> Result<String, OperatorError> {
    let mut out = String::new();
    for r in ate_core::parse_resources(text)? {
        match r {
            ate_core::Resource::WorkerPool { metadata, spec, .. } => {
                let pool = WorkerPool::from_resource(&metadata, spec);
                match render(&pool, cfg) {
                    Ok(objects) => {
                        out.push_str(&format!(
                            "# WorkerPool {}/{}: {} objects\n",
                            metadata.namespace,
                            metadata.name,
                            objects.len()
                        ));
                        for o in objects {
                            out.push_str("---\n");
                            out.push_str(&serde_yaml::to_string(&o)?);
                        }
                    }
                    Err(r) => out.push_str(&format!(
                        "# WorkerPool {}/{}: refused ({}): {}\n",
                        metadata.namespace, metadata.name, r.reason, r.message
                    )),
                }
            }
            other => out.push_str(&format!(
                "# {} {}: nothing to create (the control plane runs it)\n",
                other.kind(),
                other.name()
            )),
        }
    }
    Ok(out)
}
