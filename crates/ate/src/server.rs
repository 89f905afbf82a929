//! `ate serve`: the store, the controller, its loops, the router and the admin API in one
//! process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ate_store::StoreConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::ApiLimits;
use crate::auth::{Auth, TokenError, TokenFiles};
use crate::controller::{Config, Controller};
use crate::http::Limits as HttpLimits;
use crate::router::RouterConfig;

/// How the admin API authenticates.
#[derive(Clone, Debug)]
pub enum AuthSetup {
    /// Bearer tokens from these files (created at first start where they are the defaults).
    Tokens(TokenFiles),
    /// `--insecure-no-auth`: no tokens; refused unless the API listens on loopback.
    Insecure,
}

/// How to run the control plane.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub store: StoreConfig,
    pub router: SocketAddr,
    pub api: SocketAddr,
    /// Optional separate metrics listener: `GET /metrics` only, without a token.
    pub metrics: Option<SocketAddr>,
    pub controller: Config,
    /// Resources (YAML) applied at start.
    pub resources: Option<String>,
    /// The private data directory (`--data-dir`): created 0700, narrowed if wider.
    pub data_dir: Option<PathBuf>,
    pub auth: AuthSetup,
    pub api_limits: ApiLimits,
    /// Connection limits of the API and metrics listeners.
    pub http: HttpLimits,
    /// The router's suffix and limits.
    pub router_cfg: RouterConfig,
}

/// Why `ate serve` refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "--insecure-no-auth needs a loopback API address, and {0} is not one: anyone who can reach it could apply resources and delete actors (use the API tokens instead, or --api 127.0.0.1:PORT)"
    )]
    InsecureNotLoopback(SocketAddr),
    #[error("API tokens: {0}")]
    Tokens(#[from] TokenError),
}

/// A running control plane.
pub struct Running {
    pub ctl: Arc<Controller>,
    pub router_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    /// Where the admin token is (None without authentication).
    pub admin_token_file: Option<PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops every task of this control plane (the store and the workers stay as they are).
    /// Its liveness lease expires by itself.
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }

    /// Stops every task, then gives the leadership (if it held it) and this replica's
    /// liveness lease up, so that another replica leads and takes over its unfinished
    /// operations at once.
    pub async fn shutdown(self) {
        let ctl = self.ctl.clone();
        self.stop();
        if let Err(e) = ctl.resign_leadership().await {
            warn!(error = %e, "giving up the leadership (it expires by itself)");
        }
        if let Err(e) = ctl.release_replica_lease().await {
            warn!(error = %e, "giving up the liveness lease (it expires by itself)");
        }
    }
}

/// Starts everything: observe the workers, reconcile intents left by a previous life, apply
/// the given resources, then serve.
pub async fn start(opts: ServeOptions) -> Result<Running> {
    if let Some(dir) = &opts.data_dir {
        crate::auth::private_dir(dir).map_err(ServeError::from)?;
    }
    let (auth, admin_token_file) = match &opts.auth {
        AuthSetup::Insecure if !opts.api.ip().is_loopback() => {
            return Err(ServeError::InsecureNotLoopback(opts.api).into());
        }
        AuthSetup::Insecure => {
            warn!(api = %opts.api, "the admin API runs WITHOUT authentication (--insecure-no-auth): every local user may call it");
            (Auth::Insecure, None)
        }
        AuthSetup::Tokens(files) => {
            let tokens = files.load().map_err(ServeError::from)?;
            (Auth::Tokens(tokens), Some(files.admin_path()))
        }
    };
    let store_cfg = opts.store.clone();
    let store = tokio::task::spawn_blocking(move || ate_store::open(&store_cfg))
        .await?
        .with_context(|| format!("opening store {}", opts.store))?;
    info!(store = %opts.store, replica = %opts.controller.owner, "control plane starting");
    let ctl = Controller::new(store, opts.controller.clone());
    // Alive before anything else: other replicas must not take over what this one is about
    // to reconcile itself.
    if let Err(e) = ctl.heartbeat().await {
        warn!(error = %e, "first liveness heartbeat");
    }
    // Leader or not decides what the first observation and reconciliation do (a follower
    // settles only its own intents); the leader loop logs the outcome.
    if let Err(e) = ctl.lead_once().await {
        warn!(error = %e, "first step on the leadership lease");
    }
    if let Err(e) = ctl.health_once().await {
        warn!(error = %e, "first observation of the workers");
    }
    match ctl.reconcile().await {
        Ok(0) => {}
        Ok(n) => info!(n, "reconciled intents left by a previous run"),
        Err(e) => warn!(error = %e, "reconcile (will retry)"),
    }
    if let Some(text) = &opts.resources {
        let resources = ate_core::parse_resources(text)?;
        let ctl2 = ctl.clone();
        // Applying templates waits for golden snapshots, which need the loops: run it aside.
        tokio::spawn(async move {
            match ctl2.apply(resources).await {
                Ok(lines) => lines.iter().for_each(|l| info!("{l}")),
                Err(e) => warn!(error = %e, "applying --config resources"),
            }
        });
    }
    let router =
        TcpListener::bind(opts.router).await.with_context(|| format!("binding router {}", opts.router))?;
    let api = TcpListener::bind(opts.api).await.with_context(|| format!("binding API {}", opts.api))?;
    let (router_addr, api_addr) = (router.local_addr()?, api.local_addr()?);
    let mut tasks = vec![
        tokio::spawn(ctl.clone().heartbeat_loop()),
        tokio::spawn(ctl.clone().leader_loop()),
        tokio::spawn(crate::router::serve(router, ctl.clone(), opts.router_cfg.clone())),
        tokio::spawn(crate::api::serve(api, ctl.clone(), auth, opts.api_limits.clone(), opts.http.clone())),
        tokio::spawn(ctl.clone().health_loop()),
        tokio::spawn(ctl.clone().idle_loop()),
        tokio::spawn(ctl.clone().golden_loop()),
        tokio::spawn(ctl.clone().durability_loop()),
    ];
    let ctl2 = ctl.clone();
    tasks.push(tokio::spawn(async move {
        // Intents whose worker did not answer yet (every replica, its own), and while this
        // replica leads intents of replicas that died (their liveness lease expired): settled
        // in tasks of their own, so a slow worker never delays the takeover of another actor.
        let mut last_golden = std::time::Instant::now();
        loop {
            tokio::time::sleep(ctl2.cfg.reconcile_interval).await;
            if ctl2.leading() {
                ctl2.metrics.inc("round_reconcile");
            }
            if let Err(e) = ctl2.reconcile_pass().await {
                warn!(error = %e, "reconcile");
            }
            if ctl2.leading() && last_golden.elapsed() >= Duration::from_secs(5) {
                last_golden = std::time::Instant::now();
                if let Err(e) = ctl2.reconcile_golden().await {
                    warn!(error = %e, "reconcile golden builds");
                }
            }
        }
    }));
    let metrics_addr = match opts.metrics {
        Some(addr) => {
            let l = TcpListener::bind(addr).await.with_context(|| format!("binding metrics {addr}"))?;
            let a = l.local_addr()?;
            tasks.push(tokio::spawn(crate::api::serve_metrics(l, ctl.clone(), opts.http.clone())));
            Some(a)
        }
        None => None,
    };
    info!(%router_addr, %api_addr, suffix = %opts.router_cfg.suffix, "serving");
    Ok(Running { ctl, router_addr, api_addr, metrics_addr, admin_token_file, tasks })
}
