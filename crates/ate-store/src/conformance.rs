//! The behaviour every [`Store`] must have, as one suite run against each implementation.
//!
//! `open` returns a fresh, empty store; `reopen` a second handle onto the *same* data (a
//! second connection, as a second control-plane replica would have).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ate_core::store::{Change, Expect, Kind, Store, StoreExt, delete, put};

/// One check: a fresh store and a second handle onto it.
pub type Check = fn(&Arc<dyn Store>, &Arc<dyn Store>);

/// Runs every check; panics with a description on the first failure.
pub fn run_all(open: &dyn Fn() -> (Arc<dyn Store>, Arc<dyn Store>)) {
    let checks: [(&str, Check); 11] = [
        ("create_get_and_absent", create_get_and_absent),
        ("writes_are_all_or_nothing", writes_are_all_or_nothing),
        ("versions_never_repeat", versions_never_repeat),
        ("delete_and_list", delete_and_list),
        ("bodies_round_trip_exactly", bodies_round_trip_exactly),
        ("exactly_one_claim_wins", exactly_one_claim_wins),
        ("cas_increments_are_linearizable", cas_increments_are_linearizable),
        ("typed_access", typed_access),
        ("replica_leases_expire_unless_renewed", replica_leases_expire_unless_renewed),
        ("one_leader_renews_expires_and_is_taken_over", one_leader_renews_expires_and_is_taken_over),
        ("exactly_one_contender_leads", exactly_one_contender_leads),
    ];
    for (name, check) in checks {
        let (a, b) = open();
        eprintln!("conformance[{}]: {name}", a.backend());
        check(&a, &b);
    }
}

fn body(s: &str) -> Option<Vec<u8>> {
    Some(s.as_bytes().to_vec())
}

fn change(kind: Kind, name: &str, expect: Expect, b: &str) -> Change {
    Change { kind, name: name.into(), expect, body: body(b) }
}

pub fn create_get_and_absent(s: &Arc<dyn Store>, _: &Arc<dyn Store>) {
    assert_eq!(s.get(Kind::Actor, "a1").unwrap(), None);
    let rev = s.commit(&[change(Kind::Actor, "a1", Expect::Absent, "one")]).unwrap();
    let r = s.get(Kind::Actor, "a1").unwrap().unwrap();
    assert_eq!((r.version, r.body.as_slice()), (rev, &b"one"[..]));
    let err = s.commit(&[change(Kind::Actor, "a1", Expect::Absent, "two")]).unwrap_err();
    assert!(err.is_conflict(), "{err}");
    let ate_core::StoreError::Conflict { kind, name, found, .. } = err else { unreachable!() };
    assert_eq!((kind, name.as_str(), found), ("actor", "a1", Some(rev)));
    // Same name, other kind: independent.
    assert_eq!(s.get(Kind::Worker, "a1").unwrap(), None);
    let rev2 = s.commit(&[change(Kind::Actor, "a1", Expect::Version(rev), "two")]).unwrap();
    assert!(rev2 > rev);
    assert_eq!(s.get(Kind::Actor, "a1").unwrap().unwrap().body, b"two");
    // A stale version is refused.
    assert!(s.commit(&[change(Kind::Actor, "a1", Expect::Version(rev), "three")]).unwrap_err().is_conflict());
    // Expect::Any always writes.
    s.commit(&[change(Kind::Actor, "a1", Expect::Any, "four")]).unwrap();
    s.commit(&[change(Kind::Actor, "a9", Expect::Any, "new")]).unwrap();
    assert_eq!(s.get(Kind::Actor, "a9").unwrap().unwrap().body, b"new");
}

pub fn writes_are_all_or_nothing(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    let rev = s.commit(&[change(Kind::Lease, "w1", Expect::Absent, "free")]).unwrap();
    s.commit(&[change(Kind::Actor, "a1", Expect::Absent, "suspended")]).unwrap();
    let a1 = s.get(Kind::Actor, "a1").unwrap().unwrap();
    // The actor's expectation holds, the lease's does not: nothing is written.
    let err = s
        .commit(&[
            change(Kind::Actor, "a1", Expect::Version(a1.version), "resuming on w1"),
            change(Kind::Lease, "w1", Expect::Version(rev + 100), "a1"),
            change(Kind::Actor, "a2", Expect::Absent, "created"),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, ate_core::StoreError::Conflict { kind: "lease", name, .. } if name == "w1"),
        "{err}"
    );
    for st in [s, other] {
        assert_eq!(st.get(Kind::Actor, "a1").unwrap().unwrap().body, b"suspended");
        assert_eq!(st.get(Kind::Lease, "w1").unwrap().unwrap().body, b"free");
        assert_eq!(st.get(Kind::Actor, "a2").unwrap(), None);
    }
    // Both hold: everything is written, with one version, visible to the other handle.
    let rev2 = s
        .commit(&[
            change(Kind::Actor, "a1", Expect::Version(a1.version), "resuming on w1"),
            change(Kind::Lease, "w1", Expect::Version(rev), "a1"),
        ])
        .unwrap();
    assert_eq!(other.get(Kind::Actor, "a1").unwrap().unwrap().version, rev2);
    assert_eq!(other.get(Kind::Lease, "w1").unwrap().unwrap().version, rev2);
    assert_eq!(other.get(Kind::Lease, "w1").unwrap().unwrap().body, b"a1");
}

pub fn versions_never_repeat(s: &Arc<dyn Store>, _: &Arc<dyn Store>) {
    let r1 = s.commit(&[change(Kind::Actor, "x", Expect::Absent, "1")]).unwrap();
    let r2 = s.commit(&[delete(Kind::Actor, "x", Expect::Version(r1))]).unwrap();
    assert!(r2 > r1);
    assert_eq!(s.get(Kind::Actor, "x").unwrap(), None);
    let r3 = s.commit(&[change(Kind::Actor, "x", Expect::Absent, "again")]).unwrap();
    assert!(r3 > r2);
    // Someone who read the first incarnation cannot write over the second (no ABA).
    assert!(s.commit(&[change(Kind::Actor, "x", Expect::Version(r1), "stale")]).unwrap_err().is_conflict());
    let mut last = r3;
    for i in 0..20 {
        let r = s.commit(&[change(Kind::Template, &format!("t{i}"), Expect::Any, "t")]).unwrap();
        assert!(r > last);
        last = r;
    }
}

pub fn delete_and_list(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    for n in ["b", "a", "c"] {
        s.commit(&[change(Kind::Worker, n, Expect::Absent, n)]).unwrap();
    }
    s.commit(&[change(Kind::Pool, "p", Expect::Absent, "pool")]).unwrap();
    let names: Vec<String> = other.list(Kind::Worker).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "b", "c"]);
    let b = s.get(Kind::Worker, "b").unwrap().unwrap();
    assert!(
        s.commit(&[delete(Kind::Worker, "b", Expect::Version(b.version + 1))]).unwrap_err().is_conflict()
    );
    s.commit(&[delete(Kind::Worker, "b", Expect::Version(b.version))]).unwrap();
    let names: Vec<String> = other.list(Kind::Worker).unwrap().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["a", "c"]);
    assert_eq!(s.list(Kind::Pool).unwrap().len(), 1);
    assert!(s.list(Kind::Actor).unwrap().is_empty());
    // Deleting what is absent with Expect::Absent is a no-op that succeeds; with a version
    // it is a conflict.
    s.commit(&[delete(Kind::Worker, "zz", Expect::Absent)]).unwrap();
    assert!(s.commit(&[delete(Kind::Worker, "zz", Expect::Version(1))]).unwrap_err().is_conflict());
}

pub fn bodies_round_trip_exactly(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    let weird = "ünïcödé \"quotes\" \\ :colons: \n newlines \u{0} nul";
    s.commit(&[change(Kind::Actor, "w", Expect::Absent, weird)]).unwrap();
    assert_eq!(other.get(Kind::Actor, "w").unwrap().unwrap().body, weird.as_bytes());
    let big = "x".repeat(1 << 20);
    s.commit(&[change(Kind::Actor, "big", Expect::Absent, &big)]).unwrap();
    assert_eq!(
        other.list(Kind::Actor).unwrap().iter().find(|(n, _)| n == "big").unwrap().1.body.len(),
        1 << 20
    );
}

/// Threads on both handles race to claim one lease with the version they read: exactly one
/// wins each round.
pub fn exactly_one_claim_wins(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    for round in 0..10 {
        let lease = format!("w{round}");
        let v = s.commit(&[change(Kind::Lease, &lease, Expect::Absent, "free")]).unwrap();
        let wins = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let st = if i % 2 == 0 { s.clone() } else { other.clone() };
                let (wins, barrier, lease) = (wins.clone(), barrier.clone(), lease.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = st.commit(&[
                        change(Kind::Lease, &lease, Expect::Version(v), &format!("actor-{i}")),
                        change(Kind::Actor, &format!("r{round}-{i}"), Expect::Absent, "resuming"),
                    ]);
                    match r {
                        Ok(_) => {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => assert!(e.is_conflict(), "{e}"),
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        let holder = String::from_utf8(s.get(Kind::Lease, &lease).unwrap().unwrap().body).unwrap();
        let winner = holder.strip_prefix("actor-").unwrap();
        // Only the winner's actor record was written with it.
        let actors: Vec<String> = s
            .list(Kind::Actor)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with(&format!("r{round}-")))
            .collect();
        assert_eq!(actors, [format!("r{round}-{winner}")]);
    }
}

/// Compare-and-set retry loops from several threads on both handles lose no increment.
pub fn cas_increments_are_linearizable(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    s.commit(&[change(Kind::Template, "counter", Expect::Absent, "0")]).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let st = if i % 2 == 0 { s.clone() } else { other.clone() };
            std::thread::spawn(move || {
                for _ in 0..25 {
                    loop {
                        let r = st.get(Kind::Template, "counter").unwrap().unwrap();
                        let n: u64 = String::from_utf8(r.body).unwrap().parse().unwrap();
                        match st.commit(&[change(
                            Kind::Template,
                            "counter",
                            Expect::Version(r.version),
                            &(n + 1).to_string(),
                        )]) {
                            Ok(_) => break,
                            Err(e) => assert!(e.is_conflict(), "{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(other.get(Kind::Template, "counter").unwrap().unwrap().body, b"100");
}

pub fn typed_access(s: &Arc<dyn Store>, _: &Arc<dyn Store>) {
    use ate_core::store::{Holder, Lease};
    let lease = Lease { holder: Some(Holder::Actor("a1".into())), since_ms: 5 };
    s.commit(&[put(Kind::Lease, "w1", Expect::Absent, &lease)]).unwrap();
    let got = s.get_as::<Lease>(Kind::Lease, "w1").unwrap().unwrap();
    assert_eq!(got.value, lease);
    let all = s.list_as::<Lease>(Kind::Lease).unwrap();
    assert_eq!(all.len(), 1);
    s.commit(&[change(Kind::Lease, "bad", Expect::Absent, "{not json")]).unwrap();
    let err = s.list_as::<Lease>(Kind::Lease).unwrap_err();
    assert!(err.to_string().contains("lease bad"), "{err}");
}

/// A replica's liveness lease is seen by every handle while renewed, expires by itself once
/// its owner stops renewing it (a replica SIGKILLed), and is gone at once when released.
pub fn replica_leases_expire_unless_renewed(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    use std::time::{Duration, Instant};
    assert!(!other.replica_alive("r1").unwrap(), "no lease before the first heartbeat");
    s.heartbeat("r1", Duration::from_millis(600)).unwrap();
    assert!(other.replica_alive("r1").unwrap());
    assert!(!other.replica_alive("r2").unwrap(), "leases are per replica");
    // Renewed before it expires: alive past the first TTL.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1200) {
        s.heartbeat("r1", Duration::from_millis(600)).unwrap();
        assert!(other.replica_alive("r1").unwrap(), "renewed lease lapsed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not renewed: expires within its TTL (and not much later).
    let stopped = Instant::now();
    while other.replica_alive("r1").unwrap() {
        assert!(stopped.elapsed() < Duration::from_secs(3), "an unrenewed lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last renewal was at most ~100 ms (plus scheduling) before `stopped`.
    assert!(stopped.elapsed() >= Duration::from_millis(300), "expired early: {:?}", stopped.elapsed());
    // A heartbeat after expiry brings it back; a release ends it at once.
    other.heartbeat("r2", Duration::from_secs(30)).unwrap();
    assert!(s.replica_alive("r2").unwrap());
    s.release_replica("r2").unwrap();
    assert!(!other.replica_alive("r2").unwrap());
    s.release_replica("never-seen").unwrap();
    // Leases are not records.
    assert!(s.list(Kind::Actor).unwrap().is_empty());
}

/// A leadership lease: taken when free, renewed only by its holder, refused to others while
/// it lasts (they learn who holds it), taken over by another once its holder stops renewing
/// it (after its TTL, not before), given up at once by a resignation of its holder only.
pub fn one_leader_renews_expires_and_is_taken_over(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    use std::time::{Duration, Instant};
    let ttl = Duration::from_millis(600);
    assert_eq!(other.leader("control").unwrap(), None, "nobody leads before the first step");
    let st = s.try_lead("control", "r1", ttl).unwrap();
    assert!(st.held_by("r1") && st.ttl_left_ms <= 600, "{st:?}");
    let seen = other.try_lead("control", "r2", ttl).unwrap();
    assert_eq!(seen.holder, "r1", "a held lease is not taken");
    assert!(seen.ttl_left_ms > 0 && seen.ttl_left_ms <= 600, "{seen:?}");
    assert_eq!(other.leader("control").unwrap().map(|l| l.holder).as_deref(), Some("r1"));
    // Leases are per name.
    assert!(other.try_lead("golden", "r2", ttl).unwrap().held_by("r2"));
    assert!(!s.try_lead("golden", "r1", ttl).unwrap().held_by("r1"));
    // Renewed by its holder: r2 never gets it, past several TTLs.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        assert!(s.try_lead("control", "r1", ttl).unwrap().held_by("r1"), "the holder's renewal failed");
        assert_eq!(other.try_lead("control", "r2", ttl).unwrap().holder, "r1", "taken while renewed");
        std::thread::sleep(Duration::from_millis(100));
    }
    // r1 stops renewing (it died): r2, trying all along, takes over within the TTL.
    let stopped = Instant::now();
    loop {
        let st = other.try_lead("control", "r2", ttl).unwrap();
        if st.held_by("r2") {
            break;
        }
        assert_eq!(st.holder, "r1");
        assert!(stopped.elapsed() < Duration::from_secs(3), "an unrenewed leadership never expired");
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = stopped.elapsed();
    assert!(took >= Duration::from_millis(300), "taken over early: {took:?}");
    // The old holder coming back does not renew over the new one.
    let back = s.try_lead("control", "r1", ttl).unwrap();
    assert_eq!(back.holder, "r2", "{back:?}");
    assert_eq!(s.leader("control").unwrap().map(|l| l.holder).as_deref(), Some("r2"));
    // Only the holder can resign; then the lease is free at once.
    assert!(!s.resign("control", "r1").unwrap(), "r1 does not hold it");
    assert_eq!(s.leader("control").unwrap().map(|l| l.holder).as_deref(), Some("r2"));
    assert!(other.resign("control", "r2").unwrap());
    assert_eq!(s.leader("control").unwrap(), None);
    let at_once = Instant::now();
    assert!(s.try_lead("control", "r1", ttl).unwrap().held_by("r1"));
    assert!(at_once.elapsed() < Duration::from_millis(300));
    assert!(!other.resign("never", "r2").unwrap());
    // Leadership leases are not records.
    assert!(s.list(Kind::Actor).unwrap().is_empty());
}

/// Contenders on both handles race for a free leadership lease: exactly one leads, and every
/// one of them is told the same holder.
pub fn exactly_one_contender_leads(s: &Arc<dyn Store>, other: &Arc<dyn Store>) {
    use std::time::Duration;
    for round in 0..10 {
        let name = format!("loop{round}");
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let st = if i % 2 == 0 { s.clone() } else { other.clone() };
                let (barrier, name) = (barrier.clone(), name.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    st.try_lead(&name, &format!("r{i}"), Duration::from_secs(30)).unwrap().holder
                })
            })
            .collect();
        let holders: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(holders.iter().all(|h| h == &holders[0]), "round {round}: {holders:?}");
        assert_eq!(s.leader(&name).unwrap().unwrap().holder, holders[0]);
    }
}
