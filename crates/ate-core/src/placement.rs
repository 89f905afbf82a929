//! Placement as pure logic: which worker restores which snapshot.
//!
//! Rules (issue 6 §3):
//!
//! * only workers of the template's pool, healthy (they answered `GetCapabilities`), and of
//!   the template's backend are considered;
//! * a LOCAL snapshot (a PAUSED actor) restores only on the worker holding it; if that worker
//!   is busy the caller waits a bounded time (evicting an idle actor there if it can), and
//!   then may use the durable snapshot **only if it is the same snapshot** (a SUSPENDED actor
//!   whose snapshot also stayed on a node) — an older durable snapshot would be a silently
//!   wrong resume;
//! * a durable snapshot goes only to a worker whose capabilities and fingerprint fit its
//!   provenance ([`fits`]): same backend, runtime version and portability class, same CPU
//!   vendor; and if the snapshot says `restore_requires_same_host`, the same host — host id,
//!   CPU model and flags, host kernel. Among fitting free workers, one that already holds the
//!   snapshot locally is preferred (no data moves);
//! * a new placement (anything but a PAUSED actor going home) avoids a worker whose free
//!   snapshot space is below the caller's threshold: its next checkpoint would be refused
//!   (RESOURCE_EXHAUSTED) or end in quarantine. A PAUSED actor's own node is where its
//!   snapshot is, however full;
//! * no fitting worker at all → the actor is CRASHED with a reason listing, per worker, why
//!   it does not fit.

use serde::{Deserialize, Serialize};

use crate::actor::{Host, Provenance};

/// What a worker reported through `GetCapabilities`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub backend: String,
    pub runtime_version: String,
    pub snapshot_portability_class: String,
    pub restore_requires_same_host: bool,
    pub supports_local_pause: bool,
    #[serde(default)]
    pub accelerator: String,
    pub host: Host,
    /// Where the running workload is reached: the loopback address ateom forwards into it (a
    /// worker on this host), or `tls://<forward>`, the TLS front of a worker on another host.
    pub host_endpoint: String,
}

/// One worker as placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub pool: String,
    /// Answered `GetCapabilities` recently.
    pub healthy: bool,
    /// Its lease is free (and it is not seen busy with an operation nobody holds it for).
    pub free: bool,
    pub info: Option<WorkerInfo>,
    /// Free bytes on its snapshot file system, as last reported (None: unknown).
    pub snapshot_bytes_free: Option<u64>,
}

/// Why a worker cannot take a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub field: &'static str,
    pub snapshot: String,
    pub worker: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (snapshot {:?}, worker {:?})", self.field, self.snapshot, self.worker)
    }
}

/// Every reason `worker` cannot restore a snapshot of provenance `p` (empty: it fits).
pub fn fits(p: &Provenance, worker: &WorkerInfo) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut cmp = |field: &'static str, snapshot: &str, w: &str| {
        if snapshot != w {
            out.push(Mismatch { field, snapshot: snapshot.to_owned(), worker: w.to_owned() });
        }
    };
    cmp("backend", &p.backend, &worker.backend);
    cmp("runtime_version", &p.runtime_version, &worker.runtime_version);
    cmp("snapshot_portability_class", &p.snapshot_portability_class, &worker.snapshot_portability_class);
    cmp("host.cpu_vendor", &p.host.cpu_vendor, &worker.host.cpu_vendor);
    if p.restore_requires_same_host {
        cmp("host.host_id", &p.host.host_id, &worker.host.host_id);
        cmp("host.cpu_model", &p.host.cpu_model, &worker.host.cpu_model);
        cmp("host.cpu_flags_digest", &p.host.cpu_flags_digest, &worker.host.cpu_flags_digest);
        cmp("host.host_kernel", &p.host.host_kernel, &worker.host.host_kernel);
    }
    out
}

/// What to restore, as placement needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub pool: &'a str,
    pub backend: &'a str,
    /// PAUSED: the worker holding the newest (local) snapshot.
    pub local_on: Option<&'a str>,
    /// The durable snapshot's provenance, when the durable snapshot is the newest state
    /// (SUSPENDED, or PAUSED with the same snapshot also durable).
    pub durable: Option<&'a Provenance>,
    /// A worker that holds the durable snapshot locally too (restores there move no data).
    pub prefer: Option<&'a str>,
    /// The caller has waited its bounded time for the local snapshot's worker.
    pub waited: bool,
    /// A new placement needs at least this much free snapshot space on the worker.
    pub min_free_bytes: u64,
}

/// Placement's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restore on this worker (its lease is free: claim it in the same write).
    Use { worker: String, local: bool },
    /// Nothing free now; these workers could take it once free (candidates for eviction).
    Wait { reason: String, busy: Vec<String> },
    /// No worker can ever take it: CRASHED with this reason.
    Crash { reason: String },
}

/// Decides where a resume goes. Pure: `workers` is a snapshot of the pool's state.
pub fn place(req: &Request<'_>, workers: &[Candidate]) -> Decision {
    let pool: Vec<&Candidate> = workers.iter().filter(|w| w.pool == req.pool).collect();
    if let Some(home) = req.local_on {
        match pool.iter().find(|w| w.name == home) {
            Some(w) if w.healthy && w.free => return Decision::Use { worker: w.name.clone(), local: true },
            Some(w) if !req.waited || req.durable.is_none() => {
                let why = if w.healthy { "busy" } else { "not answering" };
                let host = w.info.as_ref().map(|i| i.host.host_id.as_str()).filter(|h| !h.is_empty());
                let on = match host {
                    Some(h) => format!("worker {home} (host {h})"),
                    None => format!("worker {home}"),
                };
                return Decision::Wait {
                    reason: format!("the actor's newest snapshot is on {on}, which is {why}"),
                    busy: if w.healthy { vec![w.name.clone()] } else { vec![] },
                };
            }
            Some(_) => {} // waited long enough and the same snapshot is durable: go on below
            None if req.durable.is_none() => {
                return Decision::Crash {
                    reason: format!(
                        "the actor's newest snapshot is a local snapshot on worker {home}, which is no longer in pool {}",
                        req.pool
                    ),
                };
            }
            None => {}
        }
    }
    let Some(prov) = req.durable else {
        return Decision::Crash { reason: "the actor has no snapshot to resume from".into() };
    };
    let mut why_not = Vec::new();
    let mut fitting = Vec::new();
    for w in &pool {
        let Some(info) = &w.info else {
            why_not.push(format!("{}: capabilities unknown (never answered)", w.name));
            continue;
        };
        let mut mism = fits(prov, info);
        if info.backend != req.backend {
            mism.push(Mismatch {
                field: "template backend",
                snapshot: req.backend.into(),
                worker: info.backend.clone(),
            });
        }
        if mism.is_empty() {
            fitting.push(*w);
        } else {
            why_not.push(format!(
                "{}: {}",
                w.name,
                mism.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ));
        }
    }
    // Unknown capabilities may become known; only a pool where every worker is known not
    // to fit is a reason to crash.
    let unknown = pool.iter().any(|w| w.info.is_none());
    if fitting.is_empty() {
        if unknown {
            return Decision::Wait {
                reason: format!("no worker known to fit yet: {}", why_not.join("; ")),
                busy: vec![],
            };
        }
        return Decision::Crash {
            reason: if pool.is_empty() {
                format!("pool {} has no workers", req.pool)
            } else {
                format!(
                    "no worker in pool {} fits the snapshot's provenance: {}",
                    req.pool,
                    why_not.join("; ")
                )
            },
        };
    }
    let roomy = |w: &&&Candidate| w.snapshot_bytes_free.is_none_or(|f| f >= req.min_free_bytes);
    let free_any: Vec<&&Candidate> = fitting.iter().filter(|w| w.healthy && w.free).collect();
    let free: Vec<&&Candidate> = free_any.iter().copied().filter(|w| roomy(w)).collect();
    if free.is_empty() && !free_any.is_empty() {
        let full: Vec<String> = free_any
            .iter()
            .map(|w| format!("{} ({} MiB free)", w.name, w.snapshot_bytes_free.unwrap_or(0) >> 20))
            .collect();
        let busy: Vec<String> =
            fitting.iter().filter(|w| w.healthy && !w.free && roomy(w)).map(|w| w.name.clone()).collect();
        return Decision::Wait {
            reason: format!(
                "the free fitting workers of pool {} are low on snapshot space (below {} MiB): {}",
                req.pool,
                req.min_free_bytes >> 20,
                full.join(", ")
            ),
            busy,
        };
    }
    if let Some(p) = req.prefer
        && let Some(w) = free.iter().find(|w| w.name == p)
    {
        return Decision::Use { worker: w.name.clone(), local: false };
    }
    // Spread: the free worker on the host with the fewest busy workers of the pool (so one
    // host's loss takes as few running actors as it can), the first such in the pool's order.
    let host_of = |c: &Candidate| c.info.as_ref().map(|i| i.host.host_id.clone()).unwrap_or_default();
    let busy_on = |host: &str| pool.iter().filter(|c| !c.free && host_of(c) == host).count();
    if let Some(w) = free.iter().min_by_key(|w| busy_on(&host_of(w))) {
        return Decision::Use { worker: w.name.clone(), local: false };
    }
    Decision::Wait {
        reason: format!("every fitting worker of pool {} is busy", req.pool),
        busy: fitting.iter().filter(|w| w.healthy && roomy(w)).map(|w| w.name.clone()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(id: &str) -> Host {
        Host {
            cpu_vendor: "GenuineIntel".into(),
            cpu_model: "Xeon".into(),
            cpu_flags_digest: "f00d".into(),
            host_kernel: "6.1".into(),
            host_id: id.into(),
        }
    }

    fn info(id: &str) -> WorkerInfo {
        WorkerInfo {
            backend: "gvisor".into(),
            runtime_version: "runsc 1".into(),
            snapshot_portability_class: "gvisor/runsc 1/x86_64".into(),
            restore_requires_same_host: false,
            supports_local_pause: true,
            accelerator: "ptrace".into(),
            host: host(id),
            host_endpoint: "127.0.0.1:1".into(),
        }
    }

    fn prov(id: &str, same_host: bool) -> Provenance {
        Provenance {
            backend: "gvisor".into(),
            runtime_version: "runsc 1".into(),
            snapshot_portability_class: "gvisor/runsc 1/x86_64".into(),
            restore_requires_same_host: same_host,
            host: host(id),
        }
    }

    fn cand(name: &str, host_id: &str, free: bool) -> Candidate {
        Candidate {
            name: name.into(),
            pool: "p".into(),
            healthy: true,
            free,
            info: Some(info(host_id)),
            snapshot_bytes_free: None,
        }
    }

    fn req<'a>(p: Option<&'a Provenance>) -> Request<'a> {
        Request {
            pool: "p",
            backend: "gvisor",
            local_on: None,
            durable: p,
            prefer: None,
            waited: false,
            min_free_bytes: 256 << 20,
        }
    }

    #[test]
    fn a_paused_actor_goes_home_or_waits() {
        let ws = [cand("w1", "a", true), cand("w2", "b", true)];
        let mut r = req(None);
        r.local_on = Some("w2");
        assert_eq!(place(&r, &ws), Decision::Use { worker: "w2".into(), local: true });
        let ws = [cand("w1", "a", true), cand("w2", "b", false)];
        assert!(matches!(place(&r, &ws), Decision::Wait { busy, .. } if busy == ["w2"]));
        // Waiting longer changes nothing without a durable copy of the same snapshot.
        r.waited = true;
        assert!(matches!(place(&r, &ws), Decision::Wait { .. }));
        // With one, it may move after the bounded wait (and not before).
        let p = prov("b", false);
        r.durable = Some(&p);
        assert_eq!(place(&r, &ws), Decision::Use { worker: "w1".into(), local: false });
        r.waited = false;
        assert!(matches!(place(&r, &ws), Decision::Wait { .. }));
    }

    #[test]
    fn new_placements_spread_over_hosts() {
        let p = prov("a", false);
        // w1 and w2 on host a (w1 busy), w3 on host b: w3, though w2 comes first.
        let ws = [cand("w1", "a", false), cand("w2", "a", true), cand("w3", "b", true)];
        assert_eq!(place(&req(Some(&p)), &ws), Decision::Use { worker: "w3".into(), local: false });
        // Equally loaded hosts: the pool's order.
        let ws = [cand("w1", "a", true), cand("w2", "b", true)];
        assert_eq!(place(&req(Some(&p)), &ws), Decision::Use { worker: "w1".into(), local: false });
        // A worker holding the snapshot locally still wins.
        let ws = [cand("w1", "a", false), cand("w2", "a", true), cand("w3", "b", true)];
        let mut r = req(Some(&p));
        r.prefer = Some("w2");
        assert_eq!(place(&r, &ws), Decision::Use { worker: "w2".into(), local: false });
    }

    #[test]
    fn same_host_snapshots_never_go_to_another_host() {
        let p = prov("node-a", true);
        let ws = [cand("w1", "node-b", true), cand("w2", "node-c", true)];
        let Decision::Crash { reason } = place(&req(Some(&p)), &ws) else { panic!() };
        assert!(reason.contains("host.host_id"), "{reason}");
        assert!(reason.contains("w1") && reason.contains("w2"), "{reason}");
        let ws = [cand("w1", "node-b", true), cand("w3", "node-a", false)];
        assert!(matches!(place(&req(Some(&p)), &ws), Decision::Wait { busy, .. } if busy == ["w3"]));
        // A portable snapshot goes anywhere that fits.
        let p = prov("node-a", false);
        assert_eq!(place(&req(Some(&p)), &ws), Decision::Use { worker: "w1".into(), local: false });
    }

    #[test]
    fn version_and_backend_mismatches_crash_with_every_reason() {
        let mut p = prov("a", false);
        p.runtime_version = "runsc 0".into();
        p.backend = "firecracker".into();
        let Decision::Crash { reason } = place(&req(Some(&p)), &[cand("w1", "a", true)]) else { panic!() };
        assert!(reason.contains("backend") && reason.contains("runtime_version"), "{reason}");
    }

    #[test]
    fn prefers_the_worker_that_holds_the_snapshot() {
        let p = prov("a", false);
        let ws = [cand("w1", "a", true), cand("w2", "b", true)];
        let mut r = req(Some(&p));
        r.prefer = Some("w2");
        assert_eq!(place(&r, &ws), Decision::Use { worker: "w2".into(), local: false });
    }

    #[test]
    fn unknown_workers_mean_wait_not_crash() {
        let p = prov("a", true);
        let ws = [
            cand("w1", "b", true),
            Candidate {
                name: "w2".into(),
                pool: "p".into(),
                healthy: false,
                free: true,
                info: None,
                snapshot_bytes_free: None,
            },
        ];
        assert!(matches!(place(&req(Some(&p)), &ws), Decision::Wait { .. }));
        assert!(matches!(place(&req(None), &ws), Decision::Crash { .. }));
    }

    #[test]
    fn new_placements_avoid_full_workers_but_a_paused_actor_goes_home() {
        let p = prov("a", false);
        let mut full = cand("w1", "a", true);
        full.snapshot_bytes_free = Some(100 << 20);
        let mut roomy = cand("w2", "b", true);
        roomy.snapshot_bytes_free = Some(10 << 30);
        let ws = [full.clone(), roomy.clone()];
        let mut r = req(Some(&p));
        r.prefer = Some("w1"); // even the worker holding a copy
        assert_eq!(place(&r, &ws), Decision::Use { worker: "w2".into(), local: false });
        // Only full workers free: wait (space may be freed), naming them; the roomy busy one
        // is the eviction candidate.
        roomy.free = false;
        let Decision::Wait { reason, busy } = place(&r, &[full.clone(), roomy]) else { panic!() };
        assert!(reason.contains("low on snapshot space") && reason.contains("w1 (100 MiB free)"), "{reason}");
        assert_eq!(busy, ["w2"]);
        // A PAUSED actor's snapshot is on w1: it goes home regardless.
        let mut home = req(None);
        home.local_on = Some("w1");
        assert_eq!(place(&home, &[full]), Decision::Use { worker: "w1".into(), local: true });
    }

    fn arb_candidate() -> impl Strategy<Value = Candidate> {
        (0u8..4, 0u8..3, any::<bool>(), any::<bool>(), 0u8..3, any::<bool>(), 0u8..2, 0u8..3).prop_map(
            |(n, h, healthy, free, version, known, pool, space)| {
                let mut i = info(&format!("h{h}"));
                if version == 2 {
                    i.runtime_version = "runsc 2".into();
                }
                Candidate {
                    name: format!("w{n}"),
                    pool: if pool == 0 { "p".into() } else { "other".into() },
                    healthy,
                    free,
                    info: known.then_some(i),
                    snapshot_bytes_free: [None, Some(1 << 20), Some(1 << 40)][space as usize],
                }
            },
        )
    }

    proptest! {
        /// Placement never hands a snapshot to a busy, unhealthy, foreign-pool or unfitting
        /// worker, and a same-host snapshot only to its own host.
        #[test]
        fn never_a_wrong_worker(
            ws in proptest::collection::vec(arb_candidate(), 0..6),
            same_host in any::<bool>(),
            snap_host in 0u8..3,
            local in proptest::option::of(0u8..4),
            waited in any::<bool>(),
            has_durable in any::<bool>(),
        ) {
            let p = prov(&format!("h{snap_host}"), same_host);
            let local_name = local.map(|l| format!("w{l}"));
            let r = Request {
                pool: "p",
                backend: "gvisor",
                local_on: local_name.as_deref(),
                durable: has_durable.then_some(&p),
                prefer: None,
                waited,
                min_free_bytes: 256 << 20,
            };
            if let Decision::Use { worker, local: is_local } = place(&r, &ws) {
                let w = ws.iter().find(|c| c.name == worker && c.pool == "p" && c.healthy && c.free);
                prop_assert!(w.is_some(), "used {worker} which is not a free healthy pool member");
                if is_local {
                    prop_assert_eq!(Some(&worker), local_name.as_ref());
                } else {
                    prop_assert!(has_durable);
                    // A new placement never lands on a worker known to be low on space.
                    prop_assert!(ws.iter().filter(|c| c.name == worker && c.pool == "p" && c.healthy && c.free)
                        .any(|c| c.snapshot_bytes_free.is_none_or(|f| f >= 256 << 20)));
                    // Some matching candidate entry fits.
                    let fit = ws.iter().filter(|c| c.name == worker).any(|c| c.info.as_ref().is_some_and(|i| fits(&p, i).is_empty()));
                    prop_assert!(fit);
                    if same_host {
                        prop_assert!(ws.iter().filter(|c| c.name == worker && c.pool == "p").any(|c| c.info.as_ref().is_some_and(|i| i.host.host_id == p.host.host_id)));
                    }
                    // Leaving the local snapshot's node needs the bounded wait first, unless
                    // that node is not in the pool at all (nothing to wait for).
                    let home_in_pool = ws.iter().any(|c| Some(&c.name) == local_name.as_ref() && c.pool == "p");
                    if home_in_pool {
                        prop_assert!(waited, "left the local snapshot's node without waiting");
                    }
                }
            }
        }
    }
}
