//! Leader election with a `coordination.k8s.io/v1` Lease, for the operator and the control
//! plane's loops when they run in a cluster. (Outside a cluster, the Redis-based leader lease
//! of the control plane does the same job; the two are separate modules on purpose: this one
//! needs only the API server.)
//!
//! The protocol is client-go's: the holder renews `renewTime` every `ttl / 3`; anyone may
//! take the Lease over once `renewTime + leaseDurationSeconds` has passed. Every write carries
//! the `resourceVersion` it read, so of two candidates racing for an expired Lease exactly one
//! wins (the other gets a 409 Conflict and stays a follower).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// What a candidate does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStep {
    /// No Lease yet: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over (one more transition).
    TakeOver,
    /// Someone else holds it until this time.
    Follow { holder: String, until: Timestamp },
}

/// Pure decision: what `me` does with `lease` at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseStep {
    let Some(spec) = lease else { return LeaseStep::Create };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return LeaseStep::Renew;
    }
    if holder.is_empty() {
        return LeaseStep::TakeOver;
    }
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return LeaseStep::TakeOver;
    };
    let until = renewed.0.checked_add(SignedDuration::from_secs(secs)).unwrap_or(renewed.0);
    if now >= until { LeaseStep::TakeOver } else { LeaseStep::Follow { holder: holder.to_owned(), until } }
}

/// One candidate for one Lease.
#[derive(Clone)]
pub struct KubeLeaderLease {
    api: Api<Lease>,
    name: String,
    identity: String,
    ttl: Duration,
}

impl KubeLeaderLease {
    /// `identity` must be unique among the candidates (the pod's name).
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, ttl: Duration) -> Self {
        KubeLeaderLease {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            ttl: ttl.max(Duration::from_secs(1)),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.ttl.as_secs().clamp(1, i32::MAX as u64) as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: true when this candidate holds the Lease afterwards. A lost race (409) is
    /// "not the leader", not an error.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let step = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &self.identity, now);
        let pp = PostParams::default();
        let result = match (&step, current) {
            (LeaseStep::Follow { .. }, _) => return Ok(false),
            (LeaseStep::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&pp, &lease).await.map(|_| ())
            }
            (LeaseStep::Renew | LeaseStep::TakeOver, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if step == LeaseStep::Renew {
                    self.spec(now, old.acquire_time, transitions)
                } else {
                    self.spec(now, None, transitions.saturating_add(1))
                });
                // metadata.resourceVersion stays: the write fails if anyone wrote in between.
                self.api.replace(&self.name, &pp, &lease).await.map(|_| ())
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on a clean shutdown), so another candidate need not wait for it to
    /// expire. Only if we still hold it.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else { return Ok(()) };
        if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) != Some(self.identity.as_str()) {
            return Ok(());
        }
        if let Some(s) = lease.spec.as_mut() {
            s.holder_identity = None;
        }
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Runs the election in the background: the receiver says whether this candidate leads
    /// now. An API error counts as not leading (a leader that cannot renew must assume it
    /// lost the Lease before it expires elsewhere).
    pub fn spawn(self) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let leading = match self.try_acquire_or_renew(Timestamp::now()).await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(lease = %self.name, error = %e, "leader lease");
                        false
                    }
                };
                if *tx.borrow() != leading {
                    info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
                }
                if tx.send(leading).is_err() {
                    return; // nobody listens any more
                }
                tokio::time::sleep(self.ttl / 3).await;
            }
        });
        rx
    }
}
