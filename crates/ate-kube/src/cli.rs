//! The `ate` subcommands of this crate (`ate crds`, `ate operator`, `ate node-probe`) and
//! `ate serve`'s cluster flags, so `ate`'s main only dispatches.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ate_core::resource::TlsSpec;
use clap::Args;

use crate::discovery::DiscoveryConfig;
use crate::kube_lease::KubeLeaderLease;
use crate::shape::OperatorConfig;

/// `ate operator`.
#[derive(Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Print what would be created for the WorkerPools in --file, without a cluster.
    #[arg(long, requires = "file")]
    pub dry_run: bool,
    /// Resources (YAML) for --dry-run.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Watch WorkerPools in this namespace only (default: all namespaces).
    #[arg(long, env = "ATE_OPERATOR_NAMESPACE")]
    pub namespace: Option<String>,
    #[command(flatten)]
    pub shape: ShapeArgs,
    /// Leader election: the Lease's namespace (default: $POD_NAMESPACE). Without it (and
    /// without $POD_NAMESPACE) there is no election: run one replica only.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: $POD_NAME).
    #[arg(long, env = "POD_NAME")]
    pub lease_identity: Option<String>,
    /// The Lease's name.
    #[arg(long, default_value = "ate-operator")]
    pub lease_name: String,
    /// How long a leader's Lease lasts unless renewed (renewed every third of it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
}

/// How worker pods are shaped.
#[derive(Args, Debug, Clone)]
pub struct ShapeArgs {
    /// The worker image, for pools that do not name one.
    #[arg(long, env = "ATE_WORKER_IMAGE", default_value = "ghcr.io/ateom/ateom:latest")]
    pub worker_image: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The device plugin resource that hands out /dev/kvm.
    #[arg(long, default_value = "devices.kubevirt.io/kvm")]
    pub kvm_resource: String,
    /// The device plugin resource that hands out /dev/net/tun.
    #[arg(long, default_value = "devices.kubevirt.io/tun")]
    pub tun_resource: String,
}

impl ShapeArgs {
    pub fn config(&self) -> OperatorConfig {
        OperatorConfig {
            worker_image: self.worker_image.clone(),
            cluster_domain: self.cluster_domain.clone(),
            kvm_resource: self.kvm_resource.clone(),
            tun_resource: self.tun_resource.clone(),
        }
    }
}

/// `ate crds`: both CRDs as YAML.
pub fn crds() -> Result<()> {
    print!("{}", crate::crd::crds_yaml()?);
    Ok(())
}

/// `ate operator`.
pub async fn operator(a: OperatorArgs) -> Result<()> {
    let cfg = a.shape.config();
    if a.dry_run {
        let Some(file) = &a.file else { bail!("--dry-run needs -f FILE") };
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        print!("{}", crate::operator::dry_run(&text, &cfg)?);
        return Ok(());
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in a pod, or with KUBECONFIG)")?;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match (&a.lease_namespace, &a.lease_identity) {
        (Some(ns), Some(id)) => {
            let lease = KubeLeaderLease::new(client.clone(), ns, &a.lease_name, id, a.lease_ttl);
            let mut leading = lease.clone().spawn();
            tracing::info!(lease = %a.lease_name, identity = %id, "waiting to lead");
            leading.wait_for(|l| *l).await.context("leader election ended")?;
            tracing::info!("leading: reconciling worker pools");
            // Losing the Lease ends this process (its pod restarts as a follower): a
            // reconciler that may no longer lead must stop writing at once.
            let lost = async move {
                let _ = leading.wait_for(|l| !*l).await;
            };
            tokio::select! {
                _ = crate::operator::run(client, cfg, a.namespace, stop) => { let _ = lease.release().await; Ok(()) }
                _ = lost => Err(crate::operator::OperatorError::LostLease.into()),
            }
        }
        _ => {
            tracing::warn!(
                "no leader election (no --lease-namespace/--lease-identity): run a single replica"
            );
            crate::operator::run(client, cfg, a.namespace, stop).await;
            Ok(())
        }
    }
}

/// `ate node-probe`.
#[derive(Args, Debug, Clone)]
pub struct NodeProbeArgs {
    /// The node to label (in a DaemonSet: from spec.nodeName).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// The ateom binary whose `doctor --json` is the probe.
    #[arg(long, default_value = "ateom")]
    pub ateom: PathBuf,
    /// Probe again after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Print the labels once and exit, without a cluster.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn node_probe(a: NodeProbeArgs) -> Result<()> {
    if a.dry_run {
        let report = crate::probe::doctor(&a.ateom).await?;
        println!("{}", serde_json::to_string_pretty(&crate::probe::labels_from_doctor(&report))?);
        return Ok(());
    }
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    crate::probe::run(client, a.node, a.ateom, a.interval).await;
    Ok(())
}

/// `ate serve`'s flags for workers discovered from the cluster.
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "Workers from a Kubernetes cluster")]
pub struct ClusterWorkersArgs {
    /// Take the pools' workers from the worker pods of this namespace (ready pods labelled
    /// ate.dev/pool), following them as they come and go, instead of a static list; and apply
    /// the namespace's ActorTemplate resources as they are created or changed.
    #[arg(long, value_name = "NAMESPACE")]
    pub workers_from_cluster: Option<String>,
    /// Directory with ate's client certificate for the workers: ca.crt, tls.crt, tls.key
    /// (a mounted kubernetes.io/tls Secret).
    #[arg(long, default_value = "/etc/ate/tls")]
    pub cluster_tls_dir: PathBuf,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
}

impl ClusterWorkersArgs {
    /// The discovery settings, or None without --workers-from-cluster.
    pub fn config(&self) -> Result<Option<DiscoveryConfig>> {
        let Some(ns) = &self.workers_from_cluster else { return Ok(None) };
        let dir = std::path::absolute(&self.cluster_tls_dir)?;
        let path = |f: &str| dir.join(f).display().to_string();
        Ok(Some(DiscoveryConfig {
            namespace: ns.clone(),
            cluster_domain: self.cluster_domain.clone(),
            tls: TlsSpec { ca: path("ca.crt"), cert: path("tls.crt"), key: path("tls.key") },
        }))
    }
}

/// Connects and feeds the pools discovered from pods, and the namespace's ActorTemplate
/// resources, to `apply` until the watches end.
pub async fn feed_workers<F, Fut>(cfg: DiscoveryConfig, apply: F) -> Result<()>
where
    F: FnMut(Vec<ate_core::Resource>) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let ns = cfg.namespace.clone();
    futures::join!(
        crate::discovery::feed(client.clone(), cfg, apply.clone()),
        crate::discovery::feed_templates(client, ns, apply)
    );
    Ok(())
}
