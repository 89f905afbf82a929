//! Leadership: the work that must run on one replica at a time.
//!
//! Every replica routes, serves the API, renews its liveness lease and settles its *own*
//! intents (an operation it started whose worker did not answer). One replica, the holder of
//! the store's leadership lease [`LEADER_LEASE`], also:
//!
//! * takes over the intents of replicas that died (their liveness lease expired) and those of
//!   live replicas older than `stale_op` (`reconcile_pass`);
//! * restarts interrupted golden builds (`reconcile_golden`) and runs golden builds
//!   (`golden_loop`);
//! * applies the templates' idle policies (`idle_loop`);
//! * observes the workers and repairs what disagrees with them (`health_once`: records worker
//!   observations, moves endpoints, marks RUNNING actors whose workload is gone CRASHED,
//!   checkpoints strays away).
//!
//! One lease for all of these rather than one per loop, because they depend on each other:
//! `reconcile_golden` restarts every BUILDING build that *this process* is not running, so it
//! must run where `golden_loop` runs; the stray clean-up in `health_once` must know which
//! golden builds are under way; and a single observer of the workers cannot flip a worker's
//! record back and forth when two replicas see it differently (a partition between one of
//! them and that host).
//!
//! The lease is renewed every fifth of `leader_ttl`. This replica considers itself leader only
//! until `ttl - ttl/10` after it *sent* its last successful renewal (the store started the
//! lease's TTL later than that), so it stops before any other replica can take over, whatever
//! the store's latency. Losing it (the store unreachable long enough, or another holder)
//! stops the loops at their next round and abandons golden builds under way at once (the new
//! leader restarts them, as after a crash); pauses and suspends the idle policy already
//! started finish, like any operation this replica started. Followers try to take the lease
//! every `min(ttl/10, 250 ms)`, so a leader that dies is replaced at most about `leader_ttl`
//! after its last renewal, and one that stops cleanly (it resigns) at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ate_core::store::LeaderState;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Controller, CtlError, now_ms};

/// The name of the leadership lease in the store.
pub const LEADER_LEASE: &str = "control";

/// This replica's side of the leadership lease.
pub(super) struct Leadership {
    /// Until when this replica may act as leader; None: it does not lead.
    until: tokio::sync::watch::Sender<Option<Instant>>,
    /// When it last became leader (ms since the epoch).
    since_ms: std::sync::Mutex<Option<u64>>,
}

impl Default for Leadership {
    fn default() -> Self {
        Leadership { until: tokio::sync::watch::channel(None).0, since_ms: Default::default() }
    }
}

/// Who leads, as `GET /v1/status` and `ate status` show it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    /// The replica that answered (`--replica-id`).
    pub replica: String,
    /// "sqlite" or "redis".
    pub store: String,
    /// Whether the replica that answered leads.
    pub leading: bool,
    /// Since when it leads (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leading_since_ms: Option<u64>,
    /// The lease's name in the store.
    pub lease: String,
    /// The holder of the leadership lease as the store sees it now (None: nobody; a
    /// replica takes it within a fraction of a second).
    pub leader: Option<LeaderState>,
    pub leader_ttl_ms: u64,
}

impl Controller {
    /// Whether this replica leads now.
    pub fn leading(&self) -> bool {
        self.leadership.until.borrow().is_some_and(|t| t > Instant::now())
    }

    /// One step on the leadership lease: take it if free, renew it if ours. Answers whether
    /// this replica leads afterwards.
    pub async fn lead_once(&self) -> Result<bool, CtlError> {
        let (owner, ttl) = (self.cfg.owner.clone(), self.cfg.leader_ttl);
        let sent = Instant::now();
        let st = self.db(move |s| s.try_lead(LEADER_LEASE, &owner, ttl)).await?;
        if st.held_by(&self.cfg.owner) {
            let until = sent + ttl - ttl / 10;
            if !self.leading() {
                *self.leadership.since_ms.lock().unwrap_or_else(|p| p.into_inner()) = Some(now_ms());
            }
            self.leadership.until.send_replace(Some(until));
            Ok(true)
        } else {
            self.leadership.until.send_replace(None);
            Ok(false)
        }
    }

    /// Keeps trying to lead (renewing while it does) until the task is dropped; logs and
    /// counts every gain and loss.
    pub async fn leader_loop(self: Arc<Self>) {
        let ttl = self.cfg.leader_ttl;
        let renew = (ttl / 5).max(Duration::from_millis(20));
        let poll = (ttl / 10).clamp(Duration::from_millis(20), Duration::from_millis(250));
        // What start() found is logged here too (the first step below renews it).
        let mut was = false;
        let mut failing = false;
        loop {
            // A leader waits for the store at most until its leadership would end anyway.
            let wait = match *self.leadership.until.borrow() {
                Some(t) => t.saturating_duration_since(Instant::now()).max(Duration::from_millis(10)),
                None => ttl / 2,
            };
            let step = tokio::time::timeout(wait.min(ttl / 2), self.lead_once()).await;
            let why_not = match step {
                Ok(Ok(_)) => {
                    if failing {
                        info!("the leadership lease answers again");
                        failing = false;
                    }
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("the store did not answer within {:?}", wait.min(ttl / 2))),
            };
            if let Some(e) = &why_not
                && !failing
            {
                warn!(error = %e, "cannot reach the leadership lease");
                failing = true;
            }
            let now = self.leading();
            if now != was {
                self.log_change(now, why_not.as_deref()).await;
                was = now;
            }
            // Sleep until the next step, waking when the leadership would end meanwhile.
            let next = Instant::now() + if now { renew } else { poll };
            let until = *self.leadership.until.borrow();
            match until {
                Some(u) if u < next => {
                    tokio::time::sleep_until(u.into()).await;
                    if was && !self.leading() {
                        self.log_change(false, Some("not renewed in time")).await;
                        was = false;
                    }
                    tokio::time::sleep_until(next.into()).await;
                }
                _ => tokio::time::sleep_until(next.into()).await,
            }
        }
    }

    async fn log_change(&self, leading: bool, why: Option<&str>) {
        if leading {
            self.metrics.inc("leader_gained");
            info!(lease = LEADER_LEASE, replica = %self.cfg.owner, ttl = ?self.cfg.leader_ttl,
                "leadership gained: this replica now reconciles, applies idle policies, builds golden snapshots and repairs workers");
        } else {
            self.metrics.inc("leader_lost");
            let holder = match self.db(|s| s.leader(LEADER_LEASE)).await {
                Ok(Some(l)) => l.holder,
                Ok(None) => "nobody yet".into(),
                Err(_) => "unknown (store unreachable)".into(),
            };
            warn!(lease = LEADER_LEASE, replica = %self.cfg.owner, %holder, reason = why.unwrap_or("another replica holds it"),
                "leadership lost: leader work stops here");
        }
    }

    /// Returns once this replica does not lead (at once if it does not).
    pub async fn leadership_lost(&self) {
        let mut rx = self.leadership.until.subscribe();
        loop {
            let until = *rx.borrow_and_update();
            match until {
                Some(t) if t > Instant::now() => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t.into()) => {}
                        r = rx.changed() => if r.is_err() { return },
                    }
                }
                _ => return,
            }
        }
    }

    /// Gives the leadership lease up (a clean stop), so another replica takes it at once.
    pub async fn resign_leadership(&self) -> Result<(), CtlError> {
        let was = self.leading();
        self.leadership.until.send_replace(None);
        let owner = self.cfg.owner.clone();
        let resigned = self.db(move |s| s.resign(LEADER_LEASE, &owner)).await?;
        if was || resigned {
            info!(lease = LEADER_LEASE, replica = %self.cfg.owner, "leadership given up (clean stop)");
        }
        Ok(())
    }

    /// Who leads, for `GET /v1/status`.
    pub async fn status(&self) -> Result<Status, CtlError> {
        let leader = self.db(|s| s.leader(LEADER_LEASE)).await?;
        let leading = self.leading();
        Ok(Status {
            replica: self.cfg.owner.clone(),
            store: self.store_backend().to_owned(),
            leading,
            leading_since_ms: if leading {
                *self.leadership.since_ms.lock().unwrap_or_else(|p| p.into_inner())
            } else {
                None
            },
            lease: LEADER_LEASE.to_owned(),
            leader,
            leader_ttl_ms: self.cfg.leader_ttl.as_millis() as u64,
        })
    }
}
