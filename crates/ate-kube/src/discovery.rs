//! Workers from the cluster: `ate serve --workers-from-cluster` takes each pool's workers from
//! its pods (label `ate.dev/pool`) instead of a static list, and follows pods coming, going
//! and changing readiness.
//!
//! A ready pod becomes a worker named after the pod, reached over mutual TLS at
//! `https://<pod-ip-dashed>.<service>.<ns>.svc.<domain>:7443` with its workload's TLS front
//! on port 7444 — the DNS name Kubernetes gives every pod behind the pool's headless
//! Service, which the worker certificate covers with `*.<service>.<ns>.svc.<domain>`.

use std::collections::BTreeMap;

use ate_core::Resource;
use ate_core::resource::{Metadata, PoolSpec, TlsSpec, WorkerSpec, check_name, check_worker_address};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::{WatchStreamExt, reflector, watcher};

use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::shape::{FORWARD_PORT, GRPC_PORT, LABEL_BACKEND, LABEL_NAME, LABEL_POOL, service_name};

/// How discovered workers are reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub namespace: String,
    pub cluster_domain: String,
    /// `ate`'s client certificate, key and the workers' CA (paths `ate serve` reads).
    pub tls: TlsSpec,
}

/// The pools seen in a list of pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovered {
    /// Pool name -> its ready workers (pools with none are absent).
    pub pools: BTreeMap<String, PoolSpec>,
    /// Pods not taken, with the reason (not ready, no address, ...).
    pub skipped: Vec<(String, String)>,
}

impl Discovered {
    /// The pools as resources to apply.
    pub fn resources(&self, namespace: &str) -> Vec<Resource> {
        self.pools
            .iter()
            .map(|(name, spec)| Resource::WorkerPool {
                api_version: Some("ate.dev/v1".into()),
                metadata: Metadata { name: name.clone(), namespace: namespace.to_owned() },
                spec: spec.clone(),
            })
            .collect()
    }
}

/// The DNS label Kubernetes gives a pod IP behind a headless Service: `10-1-2-3`, or for IPv6
/// the address with `:` as `-`.
pub fn ip_label(ip: &str) -> Option<String> {
    let addr: std::net::IpAddr = ip.parse().ok()?;
    Some(match addr {
        std::net::IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        std::net::IpAddr::V6(v6) => {
            // The fully written form: no "::" (which would make "--").
            v6.segments().iter().map(|s| format!("{s:x}")).collect::<Vec<_>>().join("-")
        }
    })
}

fn is_ready(pod: &Pod) -> Result<(), String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return Err("terminating".into());
    }
    let Some(status) = &pod.status else { return Err("no status yet".into()) };
    if status.phase.as_deref() != Some("Running") {
        return Err(format!("phase {}", status.phase.as_deref().unwrap_or("unknown")));
    }
    let ready = status.conditions.iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True");
    if !ready {
        return Err("not ready".into());
    }
    Ok(())
}

/// Pure: the workers of each pool among `pods` (only the ready ones).
pub fn workers_from_pods<'a>(pods: impl IntoIterator<Item = &'a Pod>, cfg: &DiscoveryConfig) -> Discovered {
    let mut out = Discovered::default();
    let mut backends: BTreeMap<String, String> = BTreeMap::new();
    let mut sorted: Vec<&Pod> = pods.into_iter().collect();
    sorted.sort_by_key(|p| p.name_any());
    for pod in sorted {
        let name = pod.name_any();
        let labels = pod.labels();
        if labels.get(LABEL_NAME).map(String::as_str) != Some("ateom") {
            continue;
        }
        let Some(pool) = labels.get(LABEL_POOL) else { continue };
        if pod.namespace().as_deref().is_some_and(|ns| ns != cfg.namespace) {
            continue;
        }
        let backend = labels.get(LABEL_BACKEND).cloned().unwrap_or_else(|| "gvisor".into());
        let take = || -> Result<WorkerSpec, String> {
            is_ready(pod)?;
            check_name(&name).map_err(|p| format!("pod name {p}"))?;
            check_name(pool).map_err(|p| format!("pool label {p}"))?;
            let ip = pod.status.as_ref().and_then(|s| s.pod_ip.as_deref()).ok_or("no pod IP")?;
            let label = ip_label(ip).ok_or_else(|| format!("pod IP {ip:?} is not an IP address"))?;
            let host = format!("{label}.{}.{}.svc.{}", service_name(pool), cfg.namespace, cfg.cluster_domain);
            let address = format!("https://{host}:{GRPC_PORT}");
            check_worker_address(&address)?;
            if let Some(b) = backends.get(pool)
                && *b != backend
            {
                return Err(format!("backend {backend} differs from the pool's other pods ({b})"));
            }
            Ok(WorkerSpec {
                name: name.clone(),
                socket: None,
                address: Some(address),
                forward: Some(format!("{host}:{FORWARD_PORT}")),
                tls: None,
            })
        };
        match take() {
            Ok(w) => {
                backends.entry(pool.clone()).or_insert_with(|| backend.clone());
                out.pools
                    .entry(pool.clone())
                    .or_insert_with(|| PoolSpec {
                        backend: backend.clone(),
                        tls: Some(cfg.tls.clone()),
                        workers: Vec::new(),
                        kubernetes: None,
                    })
                    .workers
                    .push(w);
            }
            Err(reason) => out.skipped.push((name, reason)),
        }
    }
    out
}

/// The label selector of every worker pod.
pub fn worker_selector() -> String {
    format!("{LABEL_NAME}=ateom,{LABEL_POOL}")
}

/// Watches the worker pods of `cfg.namespace` and calls `apply` with the pools whose ready
/// workers changed (each pool's full list). Returns when the watch stream ends.
pub async fn feed<F, Fut>(client: Client, cfg: DiscoveryConfig, mut apply: F)
where
    F: FnMut(Vec<Resource>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let api: Api<Pod> = Api::namespaced(client, &cfg.namespace);
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, watcher::Config::default().labels(&worker_selector())))
        .default_backoff();
    futures::pin_mut!(stream);
    let mut applied: BTreeMap<String, PoolSpec> = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event {
            Err(e) => {
                warn!(error = %e, "watching worker pods (retrying)");
                continue;
            }
            // The store swaps in a relisted state at InitDone: decide then, not per item.
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
            Ok(_) => {}
        }
        let pods = reader.state();
        let found = workers_from_pods(pods.iter().map(|p| p.as_ref()), &cfg);
        let changed: BTreeMap<String, PoolSpec> = found
            .pools
            .iter()
            .filter(|(k, v)| applied.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if changed.is_empty() {
            continue;
        }
        let d = Discovered { pools: changed.clone(), skipped: Vec::new() };
        for (pod, why) in &found.skipped {
            info!(%pod, reason = %why, "worker pod not taken");
        }
        match apply(d.resources(&cfg.namespace)).await {
            Ok(()) => applied.extend(changed),
            Err(e) => warn!(error = %e, "applying discovered workers (retried on the next change)"),
        }
    }
}

/// ActorTemplate resources of the cluster as `ate apply` takes them: each template applied
/// or changed in `namespace` is handed to `apply` (an unchanged one is a no-op there). Returns
/// when the watch stream ends.
pub async fn feed_templates<F, Fut>(client: Client, namespace: String, mut apply: F)
where
    F: FnMut(Vec<Resource>) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let api: Api<crate::crd::ActorTemplate> = Api::namespaced(client, &namespace);
    let stream = watcher(api, watcher::Config::default()).default_backoff().applied_objects();
    futures::pin_mut!(stream);
    while let Some(t) = stream.next().await {
        let t = match t {
            Ok(t) => t,
            Err(e) => {
                warn!(error = %e, "watching ActorTemplates (retrying)");
                continue;
            }
        };
        let name = t.name_any();
        let r = Resource::ActorTemplate {
            api_version: Some("ate.dev/v1".into()),
            metadata: Metadata { name: name.clone(), namespace: namespace.clone() },
            spec: t.spec.template.clone(),
        };
        // The same checks as `ate apply` (the API server's schema is looser).
        let text = match serde_json::to_string(&[&r]) {
            Ok(t) => t,
            Err(e) => {
                warn!(template = %name, error = %e, "ActorTemplate not taken");
                continue;
            }
        };
        match ate_core::parse_resources(&text) {
            Ok(rs) => {
                if let Err(e) = apply(rs).await {
                    warn!(template = %name, error = %e, "applying ActorTemplate");
                }
            }
            Err(e) => warn!(template = %name, error = %e, "ActorTemplate not taken"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg() -> DiscoveryConfig {
        DiscoveryConfig {
            namespace: "ate".into(),
            cluster_domain: "cluster.local".into(),
            tls: TlsSpec { ca: "/t/ca.crt".into(), cert: "/t/tls.crt".into(), key: "/t/tls.key".into() },
        }
    }

    fn pod(name: &str, pool: &str, backend: &str, ip: Option<&str>, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ate",
                         "labels": {"app.kubernetes.io/name": "ateom", "ate.dev/pool": pool, "ate.dev/backend": backend}},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap()
    }

    #[test]
    fn ready_pods_become_workers_reached_by_their_service_dns_name() {
        let pods = vec![
            pod("fc-b", "fc", "firecracker", Some("fd00::3"), "Running", true),
            pod("gv-a", "gv", "gvisor", Some("10.1.2.3"), "Running", true),
            pod("fc-a", "fc", "firecracker", Some("10.1.9.9"), "Running", true),
            pod("gv-b", "gv", "gvisor", Some("10.1.2.4"), "Running", false),
            pod("gv-c", "gv", "gvisor", None, "Pending", false),
            pod("gv-d", "gv", "qemu", Some("10.1.2.5"), "Running", true),
            pod("gv.e", "gv", "gvisor", Some("10.1.2.6"), "Running", true),
        ];
        let d = workers_from_pods(&pods, &cfg());
        assert_eq!(d.pools.keys().collect::<Vec<_>>(), ["fc", "gv"]);
        let gv = &d.pools["gv"];
        assert_eq!(gv.backend, "gvisor");
        assert_eq!(gv.tls, Some(cfg().tls));
        assert_eq!(gv.workers.len(), 1);
        let w = &gv.workers[0];
        assert_eq!(w.name, "gv-a");
        assert_eq!(w.address.as_deref(), Some("https://10-1-2-3.ateom-gv.ate.svc.cluster.local:7443"));
        assert_eq!(w.forward.as_deref(), Some("10-1-2-3.ateom-gv.ate.svc.cluster.local:7444"));
        let fc: Vec<&str> = d.pools["fc"].workers.iter().filter_map(|w| w.address.as_deref()).collect();
        assert_eq!(
            fc,
            [
                "https://10-1-9-9.ateom-fc.ate.svc.cluster.local:7443",
                "https://fd00-0-0-0-0-0-0-3.ateom-fc.ate.svc.cluster.local:7443"
            ]
        );
        let skipped: BTreeMap<&str, &str> = d.skipped.iter().map(|(p, r)| (p.as_str(), r.as_str())).collect();
        assert_eq!(skipped["gv-b"], "not ready");
        assert_eq!(skipped["gv-c"], "phase Pending");
        assert!(skipped["gv-d"].contains("differs"), "{skipped:?}");
        assert!(skipped["gv.e"].contains("pod name"), "{skipped:?}");
        // What `ate serve` applies validates as `ate apply` input.
        let text = serde_json::to_string(&d.resources("ate")).unwrap();
        assert_eq!(ate_core::parse_resources(&text).unwrap(), d.resources("ate"));
    }

    #[test]
    fn pods_of_other_namespaces_or_apps_are_not_workers() {
        let mut other_ns = pod("gv-a", "gv", "gvisor", Some("10.1.2.3"), "Running", true);
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut other_app = pod("gv-b", "gv", "gvisor", Some("10.1.2.4"), "Running", true);
        other_app.metadata.labels.as_mut().unwrap().insert(LABEL_NAME.into(), "nginx".into());
        let d = workers_from_pods(&[other_ns, other_app], &cfg());
        assert!(d.pools.is_empty() && d.skipped.is_empty(), "{d:?}");
        assert_eq!(ip_label("not-an-ip"), None);
    }
}
