//! The loss of a host, end to end with real gVisor workers (issue 12, item 4): each worker is
//! its own host (`--host-id node-N`); "losing" one SIGKILLs its `ateom` daemon and every runsc
//! process of it and deletes its network namespaces, so nothing on it answers again.
//!
//! Templates of the three durability policies, and actors whose newest state is on the lost
//! host: `both` (paused, its copy landed) and `durable` (paused = suspended) resume on the
//! other host on the next request with their state intact; `local` (paused there) is
//! reported unavailable, naming the host and its newest durable snapshot with its age, and
//! only an operator's explicit `--from-snapshot` after `--host-loss-grace` moves it; an actor
//! that was RUNNING there likewise.

mod common;

use std::time::{Duration, Instant};

use ate::api::ActorView;
use ate::demo::parse_count;
use ate_core::ActorState;
use common::*;

const GRACE_S: u64 = 10;

/// The pool (of `workers`), three templates of the counter, one per policy, and the actors.
fn resources(lab: &Lab, workers: &[&str]) -> String {
    let refs: Vec<&ate::cluster::WorkerProc> = workers.iter().map(|w| lab.worker(w)).collect();
    let mut yaml = String::new();
    for (name, durability) in [("cl", "local"), ("cb", "both"), ("cd", "durable")] {
        let doc = ate::cluster::counter_resources("gvisor", &refs, name, &lab.image, &lab.location, None);
        let with = doc.replace(
            &format!("snapshot: {{ location: \"{}\" }}", lab.location),
            &format!("snapshot: {{ location: \"{}\", durability: {durability} }}", lab.location),
        );
        assert_ne!(doc, with, "the template's snapshot line changed shape");
        // One pool document is enough.
        let tpl = with.split("---\n").nth(1).unwrap().to_owned();
        if yaml.is_empty() {
            yaml.push_str(with.split("---\n").next().unwrap());
        }
        yaml.push_str("---\n");
        yaml.push_str(&tpl);
    }
    for (actor, tpl) in [("l1", "cl"), ("b1", "cb"), ("d1", "cd"), ("r1", "cl")] {
        yaml.push_str(&format!(
            "---\nkind: Actor\nmetadata: {{ name: {actor} }}\nspec: {{ template: {tpl} }}\n"
        ));
    }
    yaml
}

async fn view(lab: &Lab, name: &str) -> ActorView {
    lab.serve.api.actor(name).await.unwrap()
}

/// GET through the router: the counter's memory value.
async fn hit(lab: &Lab, actor: &str) -> u64 {
    let (s, body) = get(lab.serve.router, actor).await.unwrap();
    assert_eq!(s, 200, "{actor}: {body}\n{}", lab.serve.log_text());
    parse_count(&body).unwrap().memory
}

fn cli(lab: &Lab, args: &[&str]) -> (bool, String) {
    let (ok, out, err) = lab.serve.cli(args);
    (ok, format!("{out}{err}"))
}

/// SIGKILL of everything of one worker's host: the daemon, its sandboxes, its namespaces.
fn lose_host(w: &mut ate::cluster::WorkerProc) {
    w.kill_daemon();
    for pid in w.runsc_processes() {
        // SAFETY: runsc processes of this worker's own state directory, started by this test.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for ns in w.namespaces() {
        let _ = std::process::Command::new("ip").args(["netns", "delete", &ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actors_survive_or_are_reported_when_their_host_is_lost() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED actors_survive_or_are_reported_when_their_host_is_lost: {why}");
        return;
    }
    let _serial = serial().await;
    let grace = format!("{GRACE_S}s");
    let mut lab = Lab::start_with(
        StoreKind::Sqlite,
        2,
        &[],
        &["--host-loss-grace".into(), grace, "--local-wait".into(), "1s".into()],
    );
    // The pool has only w1 at first, so that every actor's state lands there.
    let path = lab.dir.path().join("resources.yaml");
    std::fs::write(&path, resources(&lab, &["w1"])).unwrap();
    let (ok, out) = cli(&lab, &["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    for t in ["cl", "cb", "cd"] {
        let g = golden_settled(&lab.serve, t, 180).await;
        assert_eq!(g["golden"]["status"], "READY", "{g}");
    }

    // Each actor runs (twice) and pauses on w1.
    let mut counts = std::collections::HashMap::new();
    for a in ["l1", "b1", "d1"] {
        hit(&lab, a).await;
        counts.insert(a, hit(&lab, a).await);
        let (ok, out) = cli(&lab, &["pause", "actor", a]);
        assert!(ok, "pause {a}: {out}");
    }
    // `durable`: the pause answered with the snapshot in the store already.
    let d1 = view(&lab, "d1").await.actor;
    assert_eq!(d1.state, ActorState::Suspended, "{d1:?}");
    assert_eq!(d1.local.as_ref().map(|l| &l.snapshot_id), d1.durable.as_ref().map(|d| &d.snapshot_id));
    assert_eq!(view(&lab, "l1").await.actor.state, ActorState::Paused);
    // `both`: PAUSED at once, SUSPENDED at the same snapshot once the background copy landed.
    let b1 = wait_for(60, || async {
        let a = view(&lab, "b1").await.actor;
        (a.state == ActorState::Suspended).then_some(a)
    })
    .await
    .unwrap_or_else(|| panic!("b1's copy never landed:\n{}", lab.serve.log_text()));
    let local = b1.local.clone().expect("the local copy stays");
    assert_eq!(Some(&local.snapshot_id), b1.durable.as_ref().map(|d| &d.snapshot_id));
    let home = local.worker.clone();
    for a in ["l1", "d1"] {
        let v = view(&lab, a).await.actor;
        assert_eq!(v.local.map(|l| l.worker), Some(home.clone()), "{a} paused on another worker");
    }
    // r1 (local policy) RUNNING on the same worker when the host goes.
    hit(&lab, "r1").await;
    assert_eq!(view(&lab, "r1").await.actor.worker.as_deref(), Some(home.as_str()));

    // Now the pool grows by w2, on another host.
    std::fs::write(&path, resources(&lab, &["w1", "w2"])).unwrap();
    let (ok, out) = cli(&lab, &["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let w2_up = wait_for(20, || async {
        let ws = lab.serve.api.workers().await.ok()?;
        ws.iter().any(|w| w.name == "w2" && w.healthy).then_some(())
    })
    .await;
    assert!(w2_up.is_some(), "w2 never answered");

    let lost_at = Instant::now();
    let host = lab.worker(&home).host_id.clone();
    lose_host(lab.worker_mut(&home));
    // The next requests, at once: `both` and `durable` continue on the other host, state
    // intact (a restore tried on the dead worker before health noticed is not reached, rolled
    // back and placed again).
    for a in ["b1", "d1"] {
        let before = counts[a];
        let n = hit(&lab, a).await;
        assert_eq!(n, before + 1, "{a} resumed from other state");
        let v = view(&lab, a).await.actor;
        assert_ne!(v.worker.as_deref(), Some(home.as_str()), "{a}");
        eprintln!("{a}: serving again {} ms after its host was lost", lost_at.elapsed().as_millis());
        let (ok, out) = cli(&lab, &["pause", "actor", a]);
        assert!(ok, "pause {a} after the move: {out}");
    }

    // Health has noticed by now (every second, a 2 s deadline per call).
    let noticed = wait_for(20, || async {
        let ws = lab.serve.api.workers().await.ok()?;
        ws.iter().any(|w| w.name == home && !w.healthy).then_some(())
    })
    .await;
    assert!(noticed.is_some(), "worker {home} still reported healthy");
    // The grace counts from when the control plane noticed.
    let noticed_at = Instant::now();

    // `local`: unavailable (503, promptly), reported with the host and the durable fallback.
    let t = Instant::now();
    let (s, body) = get(lab.serve.router, "l1").await.unwrap();
    assert_eq!(s, 503, "{body}");
    assert!(t.elapsed() < Duration::from_secs(20), "a lost host held the request {:?}", t.elapsed());
    let l1 = view(&lab, "l1").await;
    let note = l1.unavailable.clone().unwrap_or_default();
    assert!(note.contains(&host) && note.contains(&home), "{note}");
    let golden = l1.actor.durable.clone().expect("the golden reference").snapshot_id;
    assert!(note.contains(&golden) && note.contains("old"), "names the durable snapshot and its age: {note}");
    let (ok, out) = cli(&lab, &["get", "actor", "l1"]);
    assert!(ok && out.contains("unavailable") && out.contains(&host), "{out}");
    // Health per host: the lost one answers on none of its workers.
    let (ok, out) = cli(&lab, &["get", "hosts", "-o", "json"]);
    assert!(ok, "{out}");
    let hosts: serde_json::Value = serde_json::from_str(&out).unwrap();
    let lost = hosts.as_array().unwrap().iter().find(|h| h["host"] == host.as_str()).expect("the lost host");
    assert_eq!((lost["answering"].as_u64(), lost["silent_ms"].is_u64()), (Some(0), true), "{lost}");

    // Before the grace: refused (the host may come back with the newer state).
    // The control plane noticed after the loss, so it has counted less than this since.
    assert!(
        lost_at.elapsed() < Duration::from_secs(GRACE_S - 1),
        "too slow to check the grace: {:?} since the loss",
        lost_at.elapsed()
    );
    let (ok, out) = cli(&lab, &["resume", "actor", "l1", "--from-snapshot", &golden]);
    assert!(!ok && out.contains("retry in"), "{out}");
    // r1 was RUNNING there: not moved by traffic, reported likewise.
    let r1 = view(&lab, "r1").await;
    assert_eq!(r1.actor.state, ActorState::Running);
    assert!(r1.unavailable.as_deref().unwrap_or_default().contains(&host), "{:?}", r1.unavailable);

    // After the grace, an operator moves them (older state: the golden snapshot).
    tokio::time::sleep(Duration::from_secs(GRACE_S + 1).saturating_sub(noticed_at.elapsed())).await;
    for a in ["l1", "r1"] {
        let golden = view(&lab, a).await.actor.durable.unwrap().snapshot_id;
        let (ok, out) = cli(&lab, &["resume", "actor", a, "--from-snapshot", &golden]);
        assert!(ok, "{a}: {out}\n{}", lab.serve.log_text());
        assert_eq!(hit(&lab, a).await, 1, "{a} restarts from its template's golden state");
        let (ok, out) = cli(&lab, &["pause", "actor", a]);
        assert!(ok, "{a}: {out}");
    }
}

/// A partition, simulated by freezing a worker's daemon (SIGSTOP: it neither answers the control
/// plane nor forwards traffic, its sandbox stays alive, as on a host cut off from the network),
/// then healed (SIGCONT). Within the grace nothing moves; an operator moves the RUNNING actor
/// after it; when the host is back, its old copy of that actor is checkpointed away (it holds no
/// lease) so the actor runs exactly once, and the PAUSED actor there resumes with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healed_partition_never_runs_an_actor_twice() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED a_healed_partition_never_runs_an_actor_twice: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start_with(
        StoreKind::Sqlite,
        2,
        &[],
        &["--host-loss-grace".into(), "3s".into(), "--local-wait".into(), "1s".into()],
    );
    let path = lab.dir.path().join("resources.yaml");
    std::fs::write(&path, resources(&lab, &["w1"])).unwrap();
    let (ok, out) = cli(&lab, &["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(golden_settled(&lab.serve, "cl", 180).await["golden"]["status"], "READY");
    hit(&lab, "l1").await;
    let l1_before = hit(&lab, "l1").await;
    let (ok, out) = cli(&lab, &["pause", "actor", "l1"]);
    assert!(ok, "{out}");
    hit(&lab, "r1").await;
    assert_eq!(view(&lab, "r1").await.actor.worker.as_deref(), Some("w1"));
    std::fs::write(&path, resources(&lab, &["w1", "w2"])).unwrap();
    let (ok, out) = cli(&lab, &["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "{out}");
    let healthy = |name: &'static str, want: bool| {
        let api = lab.serve.api.clone();
        async move {
            wait_for(30, || async {
                let ws = api.workers().await.ok()?;
                ws.iter().any(|w| w.name == name && w.healthy == want).then_some(())
            })
            .await
            .is_some()
        }
    };
    assert!(healthy("w2", true).await, "w2 never answered");

    let w1 = lab.worker("w1").child.id() as i32;
    // SAFETY: our own child.
    unsafe { libc::kill(w1, libc::SIGSTOP) };
    assert!(healthy("w1", false).await, "the frozen w1 still counts as healthy");
    let (s, body) = get(lab.serve.router, "l1").await.unwrap();
    assert_eq!(s, 503, "{body}");
    // Past the grace, the operator moves r1 (to its golden state: what was in its memory is
    // out of reach).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let golden = view(&lab, "r1").await.actor.durable.unwrap().snapshot_id;
    let (ok, out) = cli(&lab, &["resume", "actor", "r1", "--from-snapshot", &golden]);
    assert!(ok, "{out}\n{}", lab.serve.log_text());
    assert_eq!(hit(&lab, "r1").await, 1);
    assert_eq!(view(&lab, "r1").await.actor.worker.as_deref(), Some("w2"));

    // The partition heals.
    // SAFETY: our own child.
    unsafe { libc::kill(w1, libc::SIGCONT) };
    assert!(healthy("w1", true).await, "w1 did not come back");
    let runs_of_r1 = || async {
        let ws = lab.serve.api.workers().await.unwrap();
        ws.iter().filter(|w| w.running.ends_with("/r1")).map(|w| w.name.clone()).collect::<Vec<_>>()
    };
    let once = wait_for(30, || async {
        let on = runs_of_r1().await;
        (on == ["w2"]).then_some(())
    })
    .await;
    assert!(once.is_some(), "r1 runs on {:?}\n{}", runs_of_r1().await, lab.serve.log_text());
    assert_eq!(hit(&lab, "r1").await, 2, "r1 continues where it runs");
    // The paused actor was never moved: it resumes on w1 with its state.
    assert_eq!(hit(&lab, "l1").await, l1_before + 1);

    // A worker no longer listed in its pool goes, but only once no actor holds or references it.
    let (ok, out) = cli(&lab, &["pause", "actor", "r1"]);
    assert!(ok, "{out}");
    std::fs::write(&path, resources(&lab, &["w1"])).unwrap();
    let (ok, out) = cli(&lab, &["apply", "-f", path.to_str().unwrap()]);
    assert!(ok && out.contains("kept while an actor holds or references them: w2"), "{out}");
    let (ok, out) = cli(&lab, &["delete", "actor", "r1"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&lab, &["apply", "-f", path.to_str().unwrap()]);
    assert!(ok && !out.contains("kept"), "{out}");
    let names: Vec<String> = lab.serve.api.workers().await.unwrap().into_iter().map(|w| w.name).collect();
    assert_eq!(names, ["w1"]);
}
