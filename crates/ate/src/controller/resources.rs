//! Declared resources: `apply` of worker pools, templates and actors, and actor creation.

use std::time::{Duration, Instant};

use ate_core::resource::WorkerTarget;
use ate_core::store::{
    Expect, Golden, GoldenStatus, Kind, Lease, PoolRecord, StoreExt, TemplateRecord, WorkerRecord, delete,
    put,
};
use ate_core::{Actor, DurableRef, Resource, StoreError, Tier};
use tracing::info;

use super::{Controller, CtlError, now_ms};

impl Controller {
    /// Applies resources (pools, templates, actors). Returns one line per resource.
    pub async fn apply(&self, resources: Vec<Resource>) -> Result<Vec<String>, CtlError> {
        let mut out = Vec::new();
        for r in resources {
            match r {
                Resource::WorkerPool { metadata, spec, .. } => {
                    let name = metadata.name.clone();
                    let rec = PoolRecord { name: name.clone(), spec: spec.clone() };
                    let kept = self
                        .db(move |s| {
                            let mut changes = vec![put(Kind::Pool, &rec.name, Expect::Any, &rec)];
                            // Workers no longer listed (a pod gone, a host retired) go, unless an
                            // actor still holds or references them: those stay until it moved off.
                            let listed: std::collections::HashSet<&str> =
                                rec.spec.workers.iter().map(|w| w.name.as_str()).collect();
                            let actors = s.list_as::<Actor>(Kind::Actor)?;
                            let mut kept = Vec::new();
                            for w in s.list_as::<WorkerRecord>(Kind::Worker)? {
                                if w.value.pool != rec.name || listed.contains(w.value.name.as_str()) {
                                    continue;
                                }
                                let n = w.value.name.clone();
                                let lease = s.get_as::<Lease>(Kind::Lease, &n)?;
                                let referenced = actors.iter().any(|a| {
                                    a.value.worker.as_deref() == Some(n.as_str())
                                        || a.value.local.as_ref().is_some_and(|l| l.worker == n)
                                });
                                if referenced || lease.as_ref().is_some_and(|l| l.value.holder.is_some()) {
                                    kept.push(n);
                                    continue;
                                }
                                changes.push(delete(Kind::Worker, &n, Expect::Version(w.version)));
                                if let Some(l) = lease {
                                    changes.push(delete(Kind::Lease, &n, Expect::Version(l.version)));
                                }
                            }
                            for w in &rec.spec.workers {
                                let existing = s.get_as::<WorkerRecord>(Kind::Worker, &w.name)?;
                                if let Some(e) = &existing
                                    && e.value.pool != rec.name
                                {
                                    return Err(StoreError::Backend(format!(
                                        "worker {} already belongs to pool {}",
                                        w.name, e.value.pool
                                    )));
                                }
                                let Some(target) = w.target(rec.spec.tls.as_ref()) else {
                                    return Err(StoreError::Backend(format!(
                                        "worker {} names neither a socket nor an address with TLS material",
                                        w.name
                                    )));
                                };
                                let keep = existing.as_ref().filter(|e| e.value.target() == target);
                                if keep.is_none() {
                                    let (socket, remote) = match target {
                                        WorkerTarget::Socket(s) => (s, None),
                                        WorkerTarget::Tls(r) => (String::new(), Some(r)),
                                    };
                                    let wr = WorkerRecord {
                                        name: w.name.clone(),
                                        pool: rec.name.clone(),
                                        socket,
                                        remote,
                                        info: None,
                                        healthy: false,
                                        running: String::new(),
                                        state: String::new(),
                                        snapshot_bytes_free: None,
                                        error: None,
                                        observed_ms: 0,
                                        unhealthy_since_ms: None,
                                    };
                                    changes.push(put(Kind::Worker, &w.name, Expect::Any, &wr));
                                }
                                if s.get(Kind::Lease, &w.name)?.is_none() {
                                    changes.push(put(
                                        Kind::Lease,
                                        &w.name,
                                        Expect::Absent,
                                        &Lease::default(),
                                    ));
                                }
                            }
                            s.commit(&changes)?;
                            Ok(kept)
                        })
                        .await
                        .map_err(|e| match e {
                            CtlError::Store(StoreError::Backend(m)) => CtlError::Invalid(m),
                            e => e,
                        })?;
                    info!(pool = %name, workers = spec.workers.len(), ?kept, "worker pool applied");
                    let mut line = format!("workerpool/{name} applied ({} workers)", spec.workers.len());
                    if !kept.is_empty() {
                        line.push_str(&format!(
                            "; no longer listed but kept while an actor holds or references them: {}",
                            kept.join(", ")
                        ));
                    }
                    out.push(line);
                }
                Resource::ActorTemplate { metadata, spec, .. } => {
                    let name = metadata.name.clone();
                    let existing = self.template(&name).await.ok();
                    let unchanged = existing.as_ref().is_some_and(|t| {
                        t.value.spec == spec
                            && t.value.namespace == metadata.namespace
                            && t.value.golden.status != GoldenStatus::Failed
                    });
                    if unchanged {
                        out.push(format!("actortemplate/{name} unchanged"));
                        continue;
                    }
                    let generation = existing.as_ref().map_or(0, |t| t.value.golden.generation) + 1;
                    let rec = TemplateRecord {
                        name: name.clone(),
                        namespace: metadata.namespace.clone(),
                        golden: Golden {
                            status: GoldenStatus::Pending,
                            generation,
                            worker: None,
                            prefix: TemplateRecord::golden_prefix(&spec),
                            snapshot_id: None,
                            reason: None,
                            boot_ms: 0,
                        },
                        spec,
                    };
                    let expect = existing.map_or(Expect::Absent, |t| Expect::Version(t.version));
                    self.db(move |s| s.commit(&[put(Kind::Template, &rec.name, expect, &rec)])).await?;
                    info!(template = %name, generation, "template applied; golden snapshot pending");
                    out.push(format!(
                        "actortemplate/{name} applied (golden snapshot generation {generation} pending)"
                    ));
                }
                Resource::Actor { metadata, spec, .. } => {
                    match self.create_actor(&metadata.name, &spec.template, Duration::from_secs(300)).await {
                        Ok(_) => out.push(format!("actor/{} created", metadata.name)),
                        Err(CtlError::Conflict(_)) => {
                            let a = self.actor(&metadata.name).await?;
                            if a.value.template != spec.template {
                                return Err(CtlError::Conflict(format!(
                                    "actor {} exists with template {}",
                                    metadata.name, a.value.template
                                )));
                            }
                            out.push(format!("actor/{} unchanged", metadata.name));
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(out)
    }

    /// Creates an actor: SUSPENDED on its template's golden snapshot (waiting, bounded, for
    /// the golden snapshot to be ready).
    pub async fn create_actor(&self, name: &str, template: &str, wait: Duration) -> Result<Actor, CtlError> {
        ate_core::resource::check_name(name).map_err(|p| CtlError::Invalid(format!("actor name {p}")))?;
        let deadline = Instant::now() + wait;
        let t = loop {
            let t = self.template(template).await?;
            match t.value.golden.status {
                GoldenStatus::Ready => break t,
                GoldenStatus::Failed => {
                    return Err(CtlError::Unavailable(format!(
                        "template {template}'s golden snapshot failed: {}",
                        t.value.golden.reason.unwrap_or_default()
                    )));
                }
                s if Instant::now() > deadline => {
                    return Err(CtlError::Unavailable(format!(
                        "template {template}'s golden snapshot is still {s:?}; try again"
                    )));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        let golden = DurableRef {
            prefix: t.value.golden.prefix.clone(),
            snapshot_id: t.value.golden.snapshot_id.clone().unwrap_or_default(),
            tier: Tier::Golden,
        };
        let a = Actor::new(name, template, golden, now_ms());
        let rec = a.clone();
        self.db(move |s| s.commit(&[put(Kind::Actor, &rec.name, Expect::Absent, &rec)])).await.map_err(
            |e| match e {
                CtlError::Store(e) if e.is_conflict() => {
                    CtlError::Conflict(format!("actor {name} already exists"))
                }
                e => e,
            },
        )?;
        info!(actor = %name, %template, "actor created (SUSPENDED on the golden snapshot)");
        Ok(a)
    }
}
