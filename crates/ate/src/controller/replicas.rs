//! Replica liveness: each `ate serve` holds a short lease in the store, renewed every fifth
//! of `replica_ttl`. An intent whose owner's lease has expired was left by a replica that
//! died, and reconciliation takes it over at once (instead of after `stale_op`). A replica
//! that stops cleanly gives its lease up, so its unfinished operations are taken over
//! immediately.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Controller, CtlError};

impl Controller {
    /// Creates or renews this replica's liveness lease.
    pub async fn heartbeat(&self) -> Result<(), CtlError> {
        let (owner, ttl) = (self.cfg.owner.clone(), self.cfg.replica_ttl);
        self.db(move |s| s.heartbeat(&owner, ttl)).await
    }

    /// Renews the lease until the task is dropped.
    pub async fn heartbeat_loop(self: Arc<Self>) {
        let every = (self.cfg.replica_ttl / 5).max(Duration::from_millis(50));
        let mut failing = false;
        loop {
            match self.heartbeat().await {
                Ok(()) if failing => {
                    info!("liveness lease renewed again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        warn!(error = %e, "cannot renew this replica's liveness lease; other replicas will take over its operations once it expires");
                    }
                    failing = true;
                }
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Gives this replica's lease up (a clean stop).
    pub async fn release_replica_lease(&self) -> Result<(), CtlError> {
        let owner = self.cfg.owner.clone();
        self.db(move |s| s.release_replica(&owner)).await
    }

    /// Whether `owner` is a live replica (its lease is unexpired). This replica always is.
    pub(super) async fn replica_alive(&self, owner: &str) -> Result<bool, CtlError> {
        if owner == self.cfg.owner {
            return Ok(true);
        }
        let o = owner.to_owned();
        self.db(move |s| s.replica_alive(&o)).await
    }
}
