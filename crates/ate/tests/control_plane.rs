//! The control plane end to end: real `ateom` gVisor workers, a real `ate serve` process,
//! traffic through the router only, on SQLite and on a real Redis — the same scenarios.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ate::api::ActorView;
use ate::demo::parse_count;
use ate::worker::Workers;
use ate_core::ActorState;
use common::*;

/// One request per actor (bounded concurrency); every counter must continue by exactly one.
async fn traffic(
    router: SocketAddr,
    names: &[String],
    expected: &mut HashMap<String, u64>,
    concurrency: usize,
) {
    use futures::StreamExt;
    let results: Vec<(String, anyhow::Result<(u16, String)>)> = futures::stream::iter(names.to_vec())
        .map(|n| async move {
            let r = get(router, &n).await;
            (n, r)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    for (n, r) in results {
        let (status, body) = r.unwrap_or_else(|e| panic!("{n}: {e}"));
        assert_eq!(status, 200, "{n}: {body}");
        let c = parse_count(&body).unwrap();
        let want = expected.get(&n).copied().unwrap_or(0) + 1;
        assert_eq!((c.memory, c.file), (want, want), "{n}: the counter must continue (memory and file)");
        expected.insert(n, want);
    }
}

async fn actor(lab: &Lab, name: &str) -> ActorView {
    lab.serve.api.actor(name).await.unwrap()
}

/// Waits until no actor is in an intermediate state.
async fn settled(lab: &Lab, secs: u64) -> Vec<ActorView> {
    let until = deadline(secs);
    loop {
        let actors = lab.serve.api.actors().await.unwrap();
        if actors.iter().all(|a| !a.actor.state.is_intermediate()) {
            return actors;
        }
        assert!(
            Instant::now() < until,
            "actors still in intermediate states: {:?}",
            actors
                .iter()
                .filter(|a| a.actor.state.is_intermediate())
                .map(|a| (&a.actor.name, a.actor.state))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Exclusive assignment: every worker runs exactly the actor the store says is RUNNING on
/// it (asked directly over gRPC), at most one actor occupies a worker, and its lease names it.
async fn assert_consistent(lab: &Lab, secs: u64) {
    let until = deadline(secs);
    let clients = Workers::default();
    loop {
        let actors = lab.serve.api.actors().await.unwrap();
        let workers = lab.serve.api.workers().await.unwrap();
        let mut problems = Vec::new();
        for w in &lab.workers {
            let caps = clients
                .caps(
                    &w.name,
                    &ate_core::resource::WorkerTarget::Socket(w.socket.display().to_string()),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            let on: Vec<&ActorView> =
                actors.iter().filter(|a| a.actor.worker.as_deref() == Some(&w.name)).collect();
            if on.len() > 1 {
                problems.push(format!("worker {} assigned to {} actors", w.name, on.len()));
            }
            let holder = workers.iter().find(|x| x.name == w.name).and_then(|x| x.holder.clone());
            match on.first() {
                Some(a) => {
                    if a.actor.state != ActorState::Running {
                        problems.push(format!("{} is {} on {}", a.actor.name, a.actor.state, w.name));
                    }
                    if caps.running != format!("default/counter/{}", a.actor.name) {
                        problems.push(format!(
                            "{} runs {:?}, the store says {}",
                            w.name, caps.running, a.actor.name
                        ));
                    }
                    if holder != Some(format!("actor {}", a.actor.name)) {
                        problems.push(format!(
                            "lease of {} is {holder:?}, actor {} holds it",
                            w.name, a.actor.name
                        ));
                    }
                }
                None => {
                    if !caps.running.is_empty() {
                        problems.push(format!("{} runs {:?} but no actor is assigned", w.name, caps.running));
                    }
                    if holder.is_some() {
                        problems.push(format!("lease of {} held by {holder:?} with no actor on it", w.name));
                    }
                }
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(Instant::now() < until, "inconsistent: {problems:#?}\n{}", lab.serve.log_text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

/// Suspends an actor, retrying while its node is busy.
async fn suspend(lab: &Lab, name: &str) {
    let until = deadline(30);
    loop {
        match lab.serve.api.action(name, "suspend").await {
            Ok(a) if a.actor.state == ActorState::Suspended => return,
            r => assert!(Instant::now() < until, "suspend {name}: {r:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Forges a suspended actor's durable snapshot to require the same host, naming `host_id`.
async fn forge(lab: &Lab, name: &str, host_id: &str) {
    let a = lab.serve.api.actor(name).await.unwrap();
    let d = a.actor.durable.clone().unwrap();
    let p = index_path(lab, name, &d.snapshot_id);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["meta"]["capabilities"]["restore_requires_same_host"] = true.into();
    v["meta"]["host"]["host_id"] = host_id.into();
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
}

/// Snapshot indexes (committed durable snapshots) below a directory.
fn indexes_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries.flatten().filter(|e| e.path().join("index.json").is_file()).count()
}

fn flip_a_byte(path: &std::path::Path) {
    let mut b = std::fs::read(path).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x5a;
    std::fs::write(path, b).unwrap();
}

/// The index of a durable snapshot in the file:// bucket.
fn index_path(lab: &Lab, actor: &str, id: &str) -> std::path::PathBuf {
    lab.bucket.join("counter/actors").join(actor).join(id).join("index.json")
}

async fn actors_through_cycles(store: StoreKind) {
    let _serial = serial().await;
    let mut lab = Lab::start(store, 3);
    // The idle policy runs on its own: pause after 1 s idle, suspend after 2 s paused.
    lab.apply_counter(Some((1.0, 2.0)));
    let names = lab.create_actors(30);
    let (ok, out, _) = lab.serve.cli(&["get", "templates"]);
    assert!(ok && out.contains("READY"), "golden snapshot ready: {out}");
    let router = lab.serve.router;
    let mut expected = HashMap::new();

    // Round 1: every actor's first resume is a restore of the golden snapshot.
    traffic(router, &names, &mut expected, 6).await;
    // Idle: everything pauses, then suspends, by itself.
    tokio::time::sleep(Duration::from_secs(5)).await;
    traffic(router, &names, &mut expected, 6).await;
    // Short idle: paused, not yet suspended.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    traffic(router, &names, &mut expected, 6).await;
    // Explicit pause and suspend through the CLI, then traffic again.
    for n in names.iter().take(6) {
        let (ok, out, err) = lab.serve.cli(&["pause", "actor", n]);
        assert!(ok, "{out}{err}");
    }
    for n in names.iter().skip(6).take(6) {
        let (ok, out, err) = lab.serve.cli(&["suspend", "actor", n, "-o", "json"]);
        assert!(ok, "{out}{err}");
    }
    traffic(router, &names, &mut expected, 6).await;

    // Many concurrent requests to one paused actor: exactly one resume, all answered, every
    // count seen once.
    let target = names[7].clone();
    traffic(router, std::slice::from_ref(&target), &mut expected, 1).await;
    lab.serve.api.action(&target, "pause").await.unwrap();
    let before = actor(&lab, &target).await;
    assert_eq!(before.actor.state, ActorState::Paused);
    let hits = futures::future::join_all((0..12).map(|_| get(router, &target))).await;
    let mut counts: Vec<u64> = hits
        .into_iter()
        .map(|r| {
            let (s, b) = r.unwrap();
            assert_eq!(s, 200, "{b}");
            parse_count(&b).unwrap().memory
        })
        .collect();
    counts.sort();
    let base = expected[&target];
    assert_eq!(counts, (base + 1..=base + 12).collect::<Vec<_>>(), "each request counted once");
    expected.insert(target.clone(), base + 12);
    let after = actor(&lab, &target).await;
    assert_eq!(after.actor.resumes, before.actor.resumes + 1, "one resume for 12 concurrent requests");

    // Resumes from every tier happened, traffic-triggered.
    let (_, body) = lab.serve.api.raw(hyper::Method::GET, "/metrics", vec![]).await.unwrap();
    let m = String::from_utf8_lossy(&body).into_owned();
    for tier in ["golden", "local", "durable"] {
        assert!(
            metric(&m, &format!("ate_resume_seconds_count{{tier=\"{tier}\"}}")) > 0.0,
            "{tier} resumes: {m}"
        );
    }
    assert!(metric(&m, "ate_suspends_total") > 0.0 && metric(&m, "ate_pauses_total") > 0.0);
    assert!(m.contains("ate_workers{pool=\"gvisor\",state="), "{m}");

    // A paused actor resumes on its own node.
    let n = names[3].clone();
    traffic(router, std::slice::from_ref(&n), &mut expected, 1).await;
    lab.serve.api.action(&n, "pause").await.unwrap();
    let paused = actor(&lab, &n).await;
    assert_eq!(paused.actor.state, ActorState::Paused);
    let home = paused.actor.local.clone().unwrap().worker;
    traffic(router, std::slice::from_ref(&n), &mut expected, 1).await;
    let running = actor(&lab, &n).await;
    assert_eq!(
        running.actor.worker.as_deref(),
        Some(home.as_str()),
        "resumed on the node holding its snapshot"
    );

    // Capability-aware placement. A 4th worker with another host id joins the pool.
    let ateom = ateom_bin();
    lab.workers
        .push(ate::cluster::WorkerProc::start(&ateom, &lab.dir.path().join("w4"), "w4", "node-4").unwrap());
    lab.apply_counter(Some((1.0, 2.0)));
    tokio::time::sleep(Duration::from_millis(1500)).await; // health loop sees w4
    let (ok, out, _) = lab.serve.cli(&["get", "workers"]);
    assert!(ok && out.contains("w4") && out.contains("node-4"), "{out}");
    // (a) a snapshot that requires the same host, of a host no worker is on: CRASHED, with
    //     the reason, and no worker was given it (ateom itself ignores host ids, so only the
    //     control plane stands between it and a wrong resume).
    let x = names[20].clone();
    suspend(&lab, &x).await;
    forge(&lab, &x, "node-elsewhere").await;
    let (s, body) = get(router, &x).await.unwrap();
    assert_eq!(s, 503, "{body}");
    // The router's answer names nothing internal; the reason is the operator's to read.
    assert_eq!(body, "actor unavailable (crashed)\n");
    let (ok, out, _) = lab.serve.cli(&["get", "actor", &x]);
    assert!(ok && out.contains("CRASHED") && out.contains("host.host_id"), "{out}");
    // (b) the same, pinned to node-4: only w4 may take it, and it continues there.
    let y = names[21].clone();
    suspend(&lab, &y).await;
    forge(&lab, &y, "node-4").await;
    traffic(router, std::slice::from_ref(&y), &mut expected, 1).await;
    assert_eq!(actor(&lab, &y).await.actor.worker.as_deref(), Some("w4"), "only the pinned host fits");

    // A corrupted snapshot: the worker refuses it (DATA_LOSS), the actor is CRASHED with the
    // reason in `ate get actor` (the router's answer only says it crashed).
    let z = names[22].clone();
    suspend(&lab, &z).await;
    let za = actor(&lab, &z).await;
    let d = za.actor.durable.clone().unwrap();
    let local = za.actor.local.clone().unwrap();
    // Corrupt both copies: the node's local copy and every chunk in the bucket.
    let snap_dir = lab
        .worker(&local.worker)
        .state_dir
        .join(format!("actors/default:counter:{z}/snapshots/{}", d.snapshot_id));
    flip_a_byte(&snap_dir.join("checkpoint.img"));
    for c in std::fs::read_dir(lab.bucket.join("counter/actors").join(&z).join(&d.snapshot_id).join("chunks"))
        .unwrap()
    {
        flip_a_byte(&c.unwrap().path());
    }
    let (s, body) = get(router, &z).await.unwrap();
    assert_eq!(s, 503, "{body}");
    assert_eq!(body, "actor unavailable (crashed)\n", "router answer");
    let (ok, out, _) = lab.serve.cli(&["get", "actor", &z, "-o", "json"]);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["state"], "CRASHED");
    assert!(v[0]["reason"].as_str().unwrap().contains("DataLoss"), "{v}");
    // A crashed actor stays crashed for traffic (no retry storm) ...
    let (s, _) = get(router, &z).await.unwrap();
    assert_eq!(s, 503);
    // ... and an unknown actor is a 404.
    let (s, body) = get(router, "nobody").await.unwrap();
    assert_eq!(s, 404, "{body}");

    // Delete: the record and the actor's durable and local snapshots are gone.
    let del = names[29].clone();
    suspend(&lab, &del).await;
    let dir = lab.bucket.join("counter/actors").join(&del);
    assert!(indexes_under(&dir) > 0);
    let local_dir =
        |w: &str, a: &str| lab.worker(w).state_dir.join(format!("actors/default:counter:{a}/snapshots"));
    let holder = actor(&lab, &del).await.actor.local.expect("a suspended actor keeps its local copy").worker;
    assert!(local_dir(&holder, &del).exists());
    let (ok, out, err) = lab.serve.cli(&["delete", "actor", &del]);
    assert!(ok, "{out}{err}");
    assert_eq!(indexes_under(&dir), 0, "the actor's durable snapshots are removed");
    assert!(!local_dir(&holder, &del).exists(), "the actor's local snapshots are removed");
    let (ok, _, err) = lab.serve.cli(&["get", "actor", &del]);
    assert!(!ok && err.contains("404"), "{err}");
    // A RUNNING actor is stopped where it runs (nothing checkpointed) and its worker is free.
    let running = names[28].clone();
    traffic(router, std::slice::from_ref(&running), &mut expected, 1).await;
    let on = actor(&lab, &running).await.actor.worker.expect("running on a worker");
    let (ok, out, err) = lab.serve.cli(&["delete", "actor", &running]);
    assert!(ok, "{out}{err}");
    for w in &lab.workers {
        assert!(!local_dir(&w.name, &running).exists(), "no snapshot of {running} left on {}", w.name);
    }
    let (ok, _, err) = lab.serve.cli(&["get", "actor", &running]);
    assert!(!ok && err.contains("404"), "{err}");
    let mut c = ate::worker::connect_lazy(&lab.worker(&on).socket);
    let caps = c.get_capabilities(ateom_proto::GetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert!(!caps.running_actor.ends_with(&format!("/{running}")), "{caps:?}");

    // Everything still continues, and assignment is exclusive and true.
    let alive: Vec<String> =
        names.iter().filter(|n| ![&x, &z, &del, &running].contains(n)).cloned().collect();
    traffic(router, &alive, &mut expected, 6).await;
    settled(&lab, 30).await;
    assert_consistent(&lab, 20).await;
    let (ok, out, _) = lab.serve.cli(&["get", "actors"]);
    assert!(ok && out.contains("NAME") && out.contains("STATE"), "{out}");
    // Every log line of an actor operation carries the actor id.
    let log = lab.serve.log_text();
    assert!(log.lines().filter(|l| l.contains("resuming")).all(|l| l.contains("actor")), "actor ids in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_actors_continue_through_pause_suspend_cycles() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED sqlite_actors_continue_through_pause_suspend_cycles: {why}");
        return;
    }
    actors_through_cycles(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_actors_continue_through_pause_suspend_cycles() {
    if let Some(why) = unavailable(true) {
        eprintln!("SKIPPED redis_actors_continue_through_pause_suspend_cycles: {why}");
        return;
    }
    actors_through_cycles(StoreKind::Redis).await;
}

/// SIGKILL `ate serve` at random points while traffic and explicit pauses/suspends run,
/// restart it, and check: no actor lost, every actor settles, no worker double-assigned,
/// workers run exactly what the store says, counters never go back.
async fn killed_at_random_points(store: StoreKind, iterations: usize) {
    use rand::{Rng, SeedableRng};
    let _serial = serial().await;
    let mut lab = Lab::start(store, 3);
    lab.apply_counter(None);
    let names = lab.create_actors(12);
    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let mut kills_during = HashMap::<&str, usize>::new();
    for i in 0..iterations {
        let router = lab.serve.router;
        let api = lab.serve.api.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in 0..4 {
            let (names, seen, stop, api) = (names.clone(), seen.clone(), stop.clone(), api.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64((i * 10 + t) as u64);
                // Each driver owns a quarter of the actors, so its answers arrive in order.
                let mine: Vec<String> = names.iter().skip(t).step_by(4).cloned().collect();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let n = mine[rng.random_range(0..mine.len())].clone();
                    match rng.random_range(0..5) {
                        0 => {
                            let _ = api.action(&n, "pause").await;
                        }
                        1 => {
                            let _ = api.action(&n, "suspend").await;
                        }
                        _ => {
                            if let Ok((200, b)) = get(router, &n).await
                                && let Ok(c) = parse_count(&b)
                            {
                                let mut s = seen.lock().unwrap();
                                let last = s.entry(n.clone()).or_default();
                                assert!(
                                    c.memory > *last,
                                    "{n}: counter went back from {last} to {}",
                                    c.memory
                                );
                                assert_eq!(c.memory, c.file, "{n}: memory and file state diverged");
                                *last = c.memory;
                            }
                        }
                    }
                }
            }));
        }
        let delay = rand::rng().random_range(50..900);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // What was in flight when the control plane died.
        if let Ok(actors) = lab.serve.api.actors().await {
            for a in actors.iter().filter(|a| a.actor.state.is_intermediate()) {
                *kills_during.entry(a.actor.state.as_str()).or_default() += 1;
            }
        }
        lab.serve.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            let r = t.await;
            assert!(r.is_ok() || r.as_ref().err().is_some_and(|e| !e.is_panic()), "driver: {r:?}");
        }
        lab.serve.restart();
        let actors = settled(&lab, 60).await;
        assert_eq!(actors.len(), names.len(), "no actor lost (iteration {i})");
        assert_consistent(&lab, 30).await;
    }
    eprintln!("killed during: {kills_during:?}");
    // Afterwards every actor still answers and continues from where it was.
    let actors = lab.serve.api.actors().await.unwrap();
    let crashed: Vec<_> = actors
        .iter()
        .filter(|a| a.actor.state == ActorState::Crashed)
        .map(|a| (a.actor.name.clone(), a.actor.reason.clone()))
        .collect();
    assert!(crashed.is_empty(), "crashed: {crashed:?}\n{}", lab.serve.log_text());
    for n in &names {
        let (s, b) = get(lab.serve.router, n).await.unwrap();
        if s != 200 {
            let view = lab.serve.api.actor(n).await;
            let tail = |p: &std::path::Path| {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                t.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
            };
            let workers: String =
                lab.workers.iter().map(|w| format!("--- worker {}:\n{}\n", w.name, tail(&w.log))).collect();
            panic!("{n}: {s} {b}\nactor: {view:?}\n--- serve:\n{}\n{workers}", lab.serve.log_text());
        }
        let c = parse_count(&b).unwrap();
        let last = seen.lock().unwrap().get(n).copied().unwrap_or(0);
        assert!(c.memory > last, "{n}: counter went back from {last} to {}", c.memory);
    }
    assert_consistent(&lab, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_control_plane_killed_at_random_points() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED sqlite_control_plane_killed_at_random_points: {why}");
        return;
    }
    killed_at_random_points(StoreKind::Sqlite, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_control_plane_killed_at_random_points() {
    if let Some(why) = unavailable(true) {
        eprintln!("SKIPPED redis_control_plane_killed_at_random_points: {why}");
        return;
    }
    killed_at_random_points(StoreKind::Redis, 12).await;
}

/// Two `ate serve` replicas on one Redis: requests and pauses/suspends go through both at
/// random, then one replica is SIGKILLed and the other takes over its abandoned intents.
/// Checks: counters never go back, every actor settles and answers through either router,
/// workers run exactly what the store says, no worker is double-assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_two_replicas_share_the_actors() {
    use rand::{Rng, SeedableRng};
    if let Some(why) = unavailable(true) {
        eprintln!("SKIPPED redis_two_replicas_share_the_actors: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start(StoreKind::Redis, 3);
    lab.apply_counter(None);
    let names = lab.create_actors(8);
    let mut args = lab.store_args.clone(); // --redis URL --data-dir DIR (the same tokens)
    args.extend(
        [
            "--router",
            "127.0.0.1:0",
            "--api",
            "127.0.0.1:0",
            "--replica-id",
            "test-b",
            "--resume-timeout",
            "60s",
        ]
        .map(str::to_owned),
    );
    let mut b = Serve::start(&args, &lab.dir.path().join("ate-b.log"));
    let routers = [lab.serve.router, b.router];
    let apis = [lab.serve.api.clone(), b.api.clone()];

    let seen: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let failed: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..4usize {
        let (names, seen, apis, answered, failed) =
            (names.clone(), seen.clone(), apis.clone(), answered.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64 + 100);
            // Each driver owns a quarter of the actors, so its answers arrive in order.
            let mine: Vec<String> = names.iter().skip(t).step_by(4).cloned().collect();
            for _ in 0..30 {
                let n = mine[rng.random_range(0..mine.len())].clone();
                let via = rng.random_range(0..2usize);
                match rng.random_range(0..6) {
                    0 => {
                        let _ = apis[via].action(&n, "pause").await;
                    }
                    1 => {
                        let _ = apis[via].action(&n, "suspend").await;
                    }
                    _ => match get(routers[via], &n).await {
                        Ok((200, body)) => {
                            let c = parse_count(&body).unwrap();
                            let mut s = seen.lock().unwrap();
                            let last = s.entry(n.clone()).or_default();
                            assert!(c.memory > *last, "{n}: counter went back from {last} to {}", c.memory);
                            assert_eq!(c.memory, c.file, "{n}: memory and file state diverged");
                            *last = c.memory;
                            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        other => failed.lock().unwrap().push(format!("{n} via {via}: {other:?}")),
                    },
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("driver");
    }
    let failed = failed.lock().unwrap().clone();
    eprintln!(
        "two replicas: {} answers, {} failed requests {failed:?}",
        answered.load(std::sync::atomic::Ordering::Relaxed),
        failed.len()
    );
    assert!(failed.is_empty(), "requests failed while both replicas ran: {failed:?}");
    settled(&lab, 60).await;
    assert_consistent(&lab, 30).await;
    // Every actor answers through both routers and continues.
    for n in &names {
        for router in routers {
            let (s, body) = get(router, n).await.unwrap();
            assert_eq!(s, 200, "{n}: {body}");
            let c = parse_count(&body).unwrap();
            let mut s = seen.lock().unwrap();
            let last = s.entry(n.clone()).or_default();
            assert!(c.memory > *last, "{n}: counter went back from {last} to {}", c.memory);
            *last = c.memory;
        }
    }

    // Replica B dies in the middle of its own pauses; A takes B's intents over as soon as
    // B's liveness lease expires (not after --stale-op, which stays at its 5 min default),
    // and serves every actor alone.
    let pausing: Vec<_> = names
        .iter()
        .take(3)
        .map(|n| {
            let (api, n) = (b.api.clone(), n.clone());
            tokio::spawn(async move { api.action(&n, "pause").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    b.kill();
    let killed = Instant::now();
    for p in pausing {
        let _ = p.await;
    }
    settled(&lab, 30).await;
    eprintln!("replica B's operations settled {:?} after it was killed", killed.elapsed());
    assert_consistent(&lab, 30).await;
    for n in &names {
        let (s, body) = get(lab.serve.router, n).await.unwrap();
        assert_eq!(s, 200, "{n}: {body}\n{}", lab.serve.log_text());
        let c = parse_count(&body).unwrap();
        let last = seen.lock().unwrap().get(n).copied().unwrap_or(0);
        assert!(c.memory > last, "{n}: counter went back from {last} to {}", c.memory);
    }
}

/// The snapshot ids an actor's record names, for messages.
fn ids_of(a: &ActorView) -> String {
    format!(
        "local={:?} durable={:?} intent={:?}",
        a.actor.local.as_ref().map(|l| (&l.worker, &l.snapshot_id)),
        a.actor.durable.as_ref().map(|d| &d.snapshot_id),
        a.actor.intended_snapshot()
    )
}

/// GET through the router; the counter's (memory, file) values.
async fn count(router: SocketAddr, actor: &str) -> (u64, u64) {
    let (s, body) = get(router, actor).await.unwrap();
    assert_eq!(s, 200, "{actor}: {body}");
    let c = parse_count(&body).unwrap();
    (c.memory, c.file)
}

/// Every PAUSED/SUSPENDED state names the exact snapshot its pause/suspend wrote; only an
/// explicit `--from-snapshot` restores an older one; a missing snapshot makes the actor
/// CRASHED with a reason naming the newest snapshot that exists, never an older resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exact_snapshots_and_explicit_older_resumes() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED exact_snapshots_and_explicit_older_resumes: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start(StoreKind::Sqlite, 2);
    lab.apply_counter(None);
    let a = lab.create_actors(1).remove(0);
    let router = lab.serve.router;
    assert_eq!(count(router, &a).await, (1, 1));

    // Pause: PAUSED at exactly a snapshot that exists on its worker and did not before.
    let w = actor(&lab, &a).await.actor.worker.unwrap();
    let before: Vec<String> = lab.local_snapshots(&w, &a).await.into_iter().map(|s| s.snapshot_id).collect();
    let (ok, out, err) = lab.serve.cli(&["pause", "actor", &a]);
    assert!(ok, "{out}{err}");
    let p1v = actor(&lab, &a).await;
    assert_eq!(p1v.actor.state, ActorState::Paused);
    let p1 = p1v.actor.local.clone().unwrap().snapshot_id;
    assert!(!before.contains(&p1), "a new snapshot: {p1} in {before:?}");
    let on_worker = lab.local_snapshots(&w, &a).await;
    assert!(
        on_worker.iter().any(|s| s.snapshot_id == p1 && s.state == "complete" && s.pinned),
        "{on_worker:?}"
    );
    assert!(out.contains(&format!("local@{w}:{p1}")), "the CLI shows the exact snapshot: {out}");

    assert_eq!(count(router, &a).await, (2, 2));
    lab.serve.api.action(&a, "pause").await.unwrap();
    let p2 = actor(&lab, &a).await.actor.local.unwrap().snapshot_id;
    assert_ne!(p1, p2);

    // The candidates, with ages, newest first.
    let (ok, out, err) = lab.serve.cli(&["snapshots", "actor", &a]);
    assert!(ok, "{out}{err}");
    let line_of = |id: &str| out.lines().position(|l| l.starts_with(id));
    let (l1, l2) = (line_of(&p1).expect(&out), line_of(&p2).expect(&out));
    assert!(l2 < l1, "newest first: {out}");
    assert!(out.lines().nth(l2).unwrap().contains("local") && out.contains("golden"), "{out}");
    let listed = lab.serve.api.snapshots(&a).await.unwrap();
    assert!(listed.snapshots.iter().any(|s| s.seen.id == p2 && s.referenced_as == ["local"]), "{listed:?}");

    // Explicitly back to the older P1 (count 1 there): the next request sees 2 again.
    let (ok, out, err) = lab.serve.cli(&["resume", "actor", &a, "--from-snapshot", &p1]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("RUNNING"), "{out}");
    assert_eq!(count(router, &a).await, (2, 2), "exactly P1's state, continued");
    // An unknown id is refused, naming what exists.
    lab.serve.api.action(&a, "pause").await.unwrap();
    let p3 = actor(&lab, &a).await.actor.local.unwrap().snapshot_id;
    let err = lab.serve.api.resume_from(&a, "nope-123").await.unwrap_err().to_string();
    assert!(err.contains("404") && err.contains(&p3) && err.contains(&p2), "{err}");

    // P3 disappears from the worker's disk: the actor does not fall back to P2 or P1.
    std::fs::remove_dir_all(
        lab.worker(&w).state_dir.join(format!("actors/default:counter:{a}/snapshots/{p3}")),
    )
    .unwrap();
    let (s, body) = get(router, &a).await.unwrap();
    assert_eq!(s, 503, "{body}");
    let crashed = actor(&lab, &a).await;
    assert_eq!(crashed.actor.state, ActorState::Crashed, "{}", ids_of(&crashed));
    let reason = crashed.actor.reason.clone().unwrap();
    assert!(reason.contains(&p3) && reason.contains("does not exist"), "{reason}");
    assert!(
        reason.contains(&format!("--from-snapshot {p2}")) && reason.contains("old"),
        "names the newest: {reason}"
    );
    // A plain explicit resume retries the recorded snapshot only.
    let (ok, _, err) = lab.serve.cli(&["resume", "actor", &a]);
    assert!(!ok && err.contains(&p3), "{err}");
    assert_eq!(actor(&lab, &a).await.actor.state, ActorState::Crashed);
    // The operator chooses P2 (count 2 there).
    let v = lab.serve.api.resume_from(&a, &p2).await.unwrap();
    assert_eq!(v.actor.state, ActorState::Running);
    assert_eq!(count(router, &a).await, (3, 3));

    // Suspend: SUSPENDED at exactly the durable snapshot it wrote (also kept on the node).
    let v = lab.serve.api.action(&a, "suspend").await.unwrap();
    assert_eq!(v.actor.state, ActorState::Suspended);
    let d = v.actor.durable.clone().unwrap();
    assert_eq!(v.actor.local.as_ref().map(|l| &l.snapshot_id), Some(&d.snapshot_id), "{}", ids_of(&v));
    assert!(index_path(&lab, &a, &d.snapshot_id).is_file(), "the durable snapshot is under its exact id");
    let listed = lab.serve.api.snapshots(&a).await.unwrap();
    assert!(
        listed
            .snapshots
            .iter()
            .any(|s| s.seen.id == d.snapshot_id && s.seen.place == ate_core::snapshot::Place::Durable),
        "{listed:?}"
    );
    assert_eq!(count(router, &a).await, (4, 4));
}

/// Worker calls whose answers are lost (every call runs past `--rpc-timeout 40ms`, while
/// the worker carries on): restores are settled RUNNING from the worker's state, pauses
/// PAUSED at exactly the snapshot their intent named; counters always continue.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_answers_are_settled_from_the_workers_state() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED lost_answers_are_settled_from_the_workers_state: {why}");
        return;
    }
    let _serial = serial().await;
    let mut lab = Lab::start(StoreKind::Sqlite, 2);
    lab.apply_counter(None);
    // One actor per worker: none is evicted, each pause starts from RUNNING.
    let names = lab.create_actors(2);
    let mut expected = HashMap::new();
    traffic(lab.serve.router, &names, &mut expected, 2).await;
    // Every worker call now outlives its deadline (gVisor checkpoints and restores take
    // longer than 40 ms).
    lab.serve.restart_with(&["--rpc-timeout", "40ms"]);
    let router = lab.serve.router;
    for round in 0..2 {
        for n in &names {
            assert_eq!(actor(&lab, n).await.actor.state, ActorState::Running, "{n}");
            let w = actor(&lab, n).await.actor.worker.unwrap();
            let before: Vec<String> =
                lab.local_snapshots(&w, n).await.into_iter().map(|s| s.snapshot_id).collect();
            // A pause whose request never reached the worker in time is RUNNING again; retry.
            let mut paused = None;
            for _ in 0..5 {
                match lab.serve.api.action(n, "pause").await {
                    Ok(v) if v.actor.state == ActorState::Paused => {
                        paused = Some(v);
                        break;
                    }
                    other => eprintln!("{n}: pause without effect, again: {other:?}"),
                }
            }
            let v = paused.unwrap_or_else(|| panic!("{n}: never paused\n{}", lab.serve.log_text()));
            let id = v.actor.local.clone().unwrap().snapshot_id;
            let now: Vec<ateom_proto::LocalSnapshotInfo> = lab.local_snapshots(&w, n).await;
            assert!(!before.contains(&id), "{n}: a new snapshot ({id}), not an older one ({before:?})");
            let newest =
                now.iter().filter(|s| s.state == "complete").max_by(|a, b| a.created_at.cmp(&b.created_at));
            assert_eq!(
                newest.map(|s| &s.snapshot_id),
                Some(&id),
                "{n}: PAUSED at exactly the newest: {now:?}"
            );
        }
        traffic(router, &names, &mut expected, 2).await;
        eprintln!("round {round} done");
    }
    let m = lab.serve.metrics().await;
    let lost = metric(&m, "ate_lost_answers_total");
    assert!(lost >= (2 * 2 * names.len()) as f64, "every pause and restore lost its answer: {lost}\n{m}");
    assert!(
        metric(&m, "ate_resume_failures_total{tier=\"local\"}") == 0.0,
        "no resume failed for a lost answer\n{m}"
    );
    settled(&lab, 30).await;
    assert_consistent(&lab, 20).await;
}

/// SIGKILL of the `ateom` worker process at different moments of a pause or a suspend (the
/// freeze, the commit, the push), then a restart on the same state directory: the actor ends
/// RUNNING with its memory intact, or PAUSED/SUSPENDED at exactly the snapshot its intent
/// named, or CRASHED naming the newest snapshot that exists; the counter (kept in memory)
/// never goes back unless the operator chooses older state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_pause_never_yields_older_state() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED a_worker_killed_mid_pause_never_yields_older_state: {why}");
        return;
    }
    let _serial = serial().await;
    let mut lab = Lab::start(StoreKind::Sqlite, 1);
    lab.apply_counter(None);
    let a = lab.create_actors(1).remove(0);
    let ateom = ateom_bin();
    let mut last = count(lab.serve.router, &a).await.0;
    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let cases = [0u64, 10, 25, 40, 60, 90, 130, 200].map(|d| ("pause", d));
    let cases = cases.into_iter().chain([0u64, 30, 60, 100, 150, 250].map(|d| ("suspend", d)));
    for (verb, delay) in cases {
        // RUNNING first.
        let (c, _) = count(lab.serve.router, &a).await;
        assert_eq!(c, last + 1, "the counter continues");
        last = c;
        let before: Vec<String> =
            lab.local_snapshots("w1", &a).await.into_iter().map(|s| s.snapshot_id).collect();
        let api = lab.serve.api.clone();
        let name = a.clone();
        let op = tokio::spawn(async move { api.action(&name, verb).await });
        // Catch the intent (its snapshot id) as early as it shows, then kill at `delay`.
        let started = Instant::now();
        let mut intended = None;
        while started.elapsed() < Duration::from_millis(delay) || intended.is_none() {
            let v = actor(&lab, &a).await;
            if let Some(id) = v.actor.intended_snapshot() {
                intended = Some(id.to_owned());
            } else if v.actor.state != ActorState::Running || started.elapsed() > Duration::from_secs(5) {
                break;
            }
        }
        lab.worker_mut("w1").kill_daemon();
        tokio::time::sleep(Duration::from_millis(300)).await;
        lab.worker_mut("w1").restart(&ateom).unwrap();
        let _ = op.await;
        let end = settled(&lab, 60).await.remove(0);
        let after = lab.local_snapshots("w1", &a).await;
        let what = format!("{verb} killed after {delay} ms");
        *outcomes.entry(format!("{verb}: {}", end.actor.state)).or_default() += 1;
        match end.actor.state {
            ActorState::Running => {
                let (c, f) = count(lab.serve.router, &a).await;
                assert_eq!((c, f), (last + 1, last + 1), "{what}: RUNNING with memory intact");
                last = c;
            }
            ActorState::Paused | ActorState::Suspended => {
                let id = match end.actor.state {
                    ActorState::Paused => end.actor.local.clone().unwrap().snapshot_id,
                    _ => {
                        let d = end.actor.durable.clone().unwrap().snapshot_id;
                        assert!(
                            index_path(&lab, &a, &d).is_file(),
                            "{what}: SUSPENDED at a shipped snapshot"
                        );
                        d
                    }
                };
                if let Some(i) = &intended {
                    assert_eq!(&id, i, "{what}: at exactly the intended snapshot");
                }
                assert!(!before.contains(&id), "{what}: not an older snapshot");
                if end.actor.state == ActorState::Paused {
                    assert!(after.iter().any(|s| s.snapshot_id == id && s.state == "complete"), "{after:?}");
                }
                let (c, _) = count(lab.serve.router, &a).await;
                assert_eq!(c, last + 1, "{what}: resumed from it, nothing lost");
                last = c;
            }
            ActorState::Crashed => {
                let reason = end.actor.reason.clone().unwrap();
                let newest = after
                    .iter()
                    .filter(|s| s.state == "complete")
                    .max_by(|x, y| x.created_at.cmp(&y.created_at));
                match newest {
                    Some(n) => {
                        assert!(reason.contains(&format!("--from-snapshot {}", n.snapshot_id)), "{reason}")
                    }
                    None => assert!(reason.contains("snapshot"), "{reason}"),
                }
                // Traffic does not resume it; only the operator can choose older state.
                let (s, _) = get(lab.serve.router, &a).await.unwrap();
                assert_eq!(s, 503);
                let id = newest.map(|n| n.snapshot_id.clone()).unwrap_or_else(|| {
                    end.actor.durable.clone().unwrap().snapshot_id // the golden one
                });
                lab.serve.api.resume_from(&a, &id).await.unwrap();
                let (c, _) = count(lab.serve.router, &a).await;
                assert!(c <= last, "explicitly older state");
                last = c;
            }
            s => panic!("{what}: {s}"),
        }
        // The count above resumed it: RUNNING for the next case.
        assert_eq!(actor(&lab, &a).await.actor.state, ActorState::Running);
        eprintln!("{what}: {} ({})", end.actor.state, ids_of(&end));
    }
    eprintln!("outcomes: {outcomes:?}");
    assert_consistent(&lab, 20).await;
}

/// A replica SIGKILLed in the middle of its pauses: the survivor takes its intents over as
/// soon as the dead replica's liveness lease expires (seconds; `--stale-op` stays at 5 min),
/// at exactly the intended snapshots; counters continue.
async fn a_dead_replicas_operations_are_taken_over(store: StoreKind) {
    let _serial = serial().await;
    let lab = Lab::start(store, 3);
    lab.apply_counter(None);
    let names = lab.create_actors(3);
    let mut b = lab.replica("test-b", &[]);
    // B runs them (A never routes them before B dies, so with SQLite A has no stale view).
    let mut expected = HashMap::new();
    traffic(b.router, &names, &mut expected, 3).await;
    let pausing: Vec<_> = names
        .iter()
        .map(|n| {
            let (api, n) = (b.api.clone(), n.clone());
            tokio::spawn(async move { api.action(&n, "pause").await })
        })
        .collect();
    // Kill B as soon as one of its intents is in the store.
    let until = deadline(10);
    let seen = loop {
        let actors = lab.serve.api.actors().await.unwrap();
        let mine: Vec<ActorView> =
            actors.into_iter().filter(|a| a.actor.op.as_ref().is_some_and(|o| o.owner == "test-b")).collect();
        if !mine.is_empty() {
            break mine;
        }
        assert!(Instant::now() < until, "replica B never recorded an intent");
    };
    b.kill();
    let killed = Instant::now();
    for p in pausing {
        let _ = p.await;
    }
    eprintln!(
        "B died with intents: {:?}",
        seen.iter().map(|a| (&a.actor.name, a.actor.state)).collect::<Vec<_>>()
    );
    let actors = settled(&lab, 25).await;
    let took = killed.elapsed();
    eprintln!("settled {took:?} after the kill");
    assert!(took < Duration::from_secs(25), "taken over in seconds, not after --stale-op");
    let m = lab.serve.metrics().await;
    assert!(
        metric(&m, "ate_takeovers_total") >= 1.0,
        "A took B's operations over\n{m}\n{}",
        lab.serve.log_text()
    );
    for s in &seen {
        let end = actors.iter().find(|a| a.actor.name == s.actor.name).unwrap();
        if end.actor.state == ActorState::Paused
            && let Some(id) = s.actor.intended_snapshot()
        {
            assert_eq!(end.actor.local.as_ref().map(|l| l.snapshot_id.as_str()), Some(id), "{}", ids_of(end));
        }
        assert_ne!(end.actor.state, ActorState::Crashed, "{:?}", end.actor.reason);
    }
    traffic(lab.serve.router, &names, &mut expected, 3).await;
    assert_consistent(&lab, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_a_dead_replicas_operations_are_taken_over() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED sqlite_a_dead_replicas_operations_are_taken_over: {why}");
        return;
    }
    a_dead_replicas_operations_are_taken_over(StoreKind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_a_dead_replicas_operations_are_taken_over() {
    if let Some(why) = unavailable(true) {
        eprintln!("SKIPPED redis_a_dead_replicas_operations_are_taken_over: {why}");
        return;
    }
    a_dead_replicas_operations_are_taken_over(StoreKind::Redis).await;
}

/// A tmpfs mounted for a worker's state directory; unmounted when dropped (after the worker
/// it holds was stopped: declare it before the lab).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs on {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    fn available(&self) -> u64 {
        let out =
            std::process::Command::new("df").args(["--output=avail", "-B1"]).arg(&self.0).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Fills it until only `leave` bytes are free.
    fn fill_leaving(&self, leave: u64) {
        let n = self.available().saturating_sub(leave);
        let st = std::process::Command::new("fallocate")
            .args(["-l", &n.to_string()])
            .arg(self.0.join("filler"))
            .status()
            .unwrap();
        assert!(st.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A worker whose disk fills up: its pause is refused before anything is frozen and the
/// actor keeps RUNNING with its memory; afterwards no new placement goes there (the other
/// worker is used, evicting if needed), while it stays in the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_worker_keeps_its_workload_and_gets_no_new_placements() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED a_full_worker_keeps_its_workload_and_gets_no_new_placements: {why}");
        return;
    }
    let _serial = serial().await;
    let scratch = tempfile::Builder::new().prefix("ate-tmpfs-").tempdir().unwrap();
    let tmpfs = Tmpfs::mount(&scratch.path().join("w2"), "1g");
    let mut lab = Lab::start(StoreKind::Sqlite, 1);
    lab.workers.push(ate::cluster::WorkerProc::start(&ateom_bin(), &tmpfs.0, "w2", "node-2").unwrap());
    lab.apply_counter(None);
    let names = lab.create_actors(3);
    let router = lab.serve.router;
    let mut expected = HashMap::new();
    traffic(router, &names[..2], &mut expected, 2).await;
    let on = |v: &ActorView| v.actor.worker.clone().unwrap_or_default();
    let (a, b) = (actor(&lab, &names[0]).await, actor(&lab, &names[1]).await);
    let full = if on(&a) == "w2" { a.actor.name.clone() } else { b.actor.name.clone() };
    assert_eq!(on(&actor(&lab, &full).await), "w2", "one actor runs on each worker");

    // The disk fills: the pause is refused before the freeze; the actor keeps running.
    tmpfs.fill_leaving(24 << 20);
    let err = lab.serve.api.action(&full, "pause").await.unwrap_err().to_string();
    assert!(err.contains("not enough free space") && err.contains("keeps running"), "{err}");
    let v = actor(&lab, &full).await;
    assert_eq!((v.actor.state, on(&v).as_str()), (ActorState::Running, "w2"));
    traffic(router, std::slice::from_ref(&full), &mut expected, 1).await;

    // Once the worker is observed full, nothing new is placed there: its actor is deleted
    // (w2 free but full), and the others share w1.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (ok, out, err) = lab.serve.cli(&["delete", "actor", &full]);
    assert!(ok, "{out}{err}");
    expected.remove(&full);
    let others: Vec<String> = names.iter().filter(|n| **n != full).cloned().collect();
    for _ in 0..2 {
        for n in &others {
            traffic(router, std::slice::from_ref(n), &mut expected, 1).await;
            let v = actor(&lab, n).await;
            assert_eq!(on(&v), "w1", "{n} placed on the full worker: {}", ids_of(&v));
            let w2 = lab.serve.api.workers().await.unwrap().into_iter().find(|w| w.name == "w2").unwrap();
            assert!(w2.holder.is_none() && w2.healthy, "{w2:?}");
            let caps = Workers::default()
                .caps(
                    "w2",
                    &ate_core::resource::WorkerTarget::Socket(lab.worker("w2").socket.display().to_string()),
                    Duration::from_secs(5),
                )
                .await
                .unwrap();
            assert!(caps.running.is_empty(), "w2 runs {}", caps.running);
            assert!(
                caps.snapshot_bytes_free.is_some_and(|f| f < 256 << 20),
                "{:?}",
                caps.snapshot_bytes_free
            );
        }
    }
    assert!(metric(&lab.serve.metrics().await, "ate_evictions_total") >= 1.0);
    // Space again: w2 takes new placements again (a suspended actor, while w1 is busy).
    std::fs::remove_file(tmpfs.0.join("filler")).unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    suspend(&lab, &others[0]).await;
    traffic(router, &others[1..], &mut expected, 1).await;
    traffic(router, &others[..1], &mut expected, 1).await;
    assert_eq!(on(&actor(&lab, &others[0]).await), "w2", "with space again, w2 is used");
    assert_eq!(on(&actor(&lab, &others[1]).await), "w1");
    for w in &mut lab.workers {
        w.stop();
    }
    drop(lab);
    drop(tmpfs);
}

/// Signed snapshots end to end: workers and `ate serve` share a key (`--snapshot-key-file`).
/// The golden snapshot the worker signed verifies at ate (READY), an actor resumes from it
/// and suspends into a signed durable snapshot; once that snapshot's index loses its
/// signature, the next resume is refused at placement (CRASHED, "not signed") and `ate
/// resume` after restoring the signature brings the actor back with its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_snapshots_are_verified_at_placement() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED signed_snapshots_are_verified_at_placement: {why}");
        return;
    }
    let _serial = serial().await;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("snapshots.key");
    fake::keygen(&key);
    let k = vec!["--snapshot-key-file".to_owned(), key.display().to_string()];
    let lab = Lab::start_with(StoreKind::Sqlite, 1, &k, &k);
    lab.apply_counter(None);
    let names = lab.create_actors(1);
    let a = &names[0];
    let mut expected = HashMap::new();
    traffic(lab.serve.router, &names, &mut expected, 1).await;
    suspend(&lab, a).await;
    let d = actor(&lab, a).await.actor.durable.unwrap();
    let path = index_path(&lab, a, &d.snapshot_id);
    let signed = std::fs::read(&path).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&signed).unwrap();
    assert!(v.get("signature").is_some_and(|s| !s.is_null()), "the worker signs its durable snapshots: {v}");
    v.as_object_mut().unwrap().remove("signature");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let (status, body) = get(lab.serve.router, a).await.unwrap();
    assert_eq!(status, 503, "{body}");
    let crashed = actor(&lab, a).await;
    assert_eq!(crashed.actor.state, ActorState::Crashed);
    let reason = crashed.actor.reason.unwrap_or_default();
    assert!(reason.contains("not signed"), "{reason}");
    // The signature back: `ate resume` restores exactly that snapshot, state intact.
    std::fs::write(&path, &signed).unwrap();
    lab.serve.api.action(a, "resume").await.unwrap();
    traffic(lab.serve.router, &names, &mut expected, 1).await;
}

/// Drives `request` until `actor` is seen in `state` (polled every 2 ms), then drops it, which
/// closes its connection. False when the request answered before that.
async fn abandon_when<T>(
    lab: &Lab,
    actor: &str,
    state: ActorState,
    request: impl Future<Output = T>,
) -> bool {
    tokio::pin!(request);
    let until = deadline(30);
    loop {
        tokio::select! {
            _ = &mut request => return false,
            _ = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
        let views = lab.serve.api.actors().await.unwrap();
        if views.iter().any(|v| v.actor.name == actor && v.actor.state == state) {
            return true;
        }
        assert!(Instant::now() < until, "{actor} never seen {state:?}");
    }
}

/// A client that gives up on a pause (or a resume through the router) halfway does not stop
/// the operation halfway: the pause still ends PAUSED at a snapshot, the actor is reachable
/// again afterwards with its state continued, and nothing stays draining or mid-transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abandoned_requests_do_not_leave_operations_halfway() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED abandoned_requests_do_not_leave_operations_halfway: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start(StoreKind::Sqlite, 1);
    lab.apply_counter(None);
    let a = lab.create_actors(1).remove(0);
    let router = lab.serve.router;
    assert_eq!(count(router, &a).await, (1, 1));
    let mut prev = 1;
    for round in 0..3u64 {
        // The pause request is dropped (its connection closed) once the actor is seen pausing,
        // that is while the checkpoint is under way.
        let dropped_mid =
            abandon_when(&lab, &a, ActorState::Pausing, lab.serve.api.action(&a, "pause")).await;
        assert!(dropped_mid, "round {round}: the pause answered before it was seen under way");
        let views = settled(&lab, 120).await;
        let v = views.iter().find(|v| v.actor.name == a).unwrap();
        assert_eq!(v.actor.state, ActorState::Paused, "round {round}: {}", ids_of(v));
        assert!(v.actor.local.as_ref().is_some_and(|l| !l.snapshot_id.is_empty()), "round {round}");

        // A resume through the router whose client gives up early also runs to its end.
        let dropped_mid = abandon_when(&lab, &a, ActorState::Resuming, get(router, &a)).await;
        assert!(dropped_mid, "round {round}: the resume answered before it was seen under way");
        let views = settled(&lab, 120).await;
        let v = views.iter().find(|v| v.actor.name == a).unwrap();
        assert_eq!(v.actor.state, ActorState::Running, "round {round}: {}", ids_of(v));
        // The abandoned request may or may not have reached the workload: one or two more.
        let (memory, file) = count(router, &a).await;
        assert_eq!(memory, file, "round {round}");
        assert!(
            memory == prev + 1 || memory == prev + 2,
            "round {round}: {prev} then {memory}: continued exactly"
        );
        prev = memory;
    }
}
