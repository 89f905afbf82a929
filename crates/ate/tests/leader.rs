//! One leader among `ate serve` replicas: two real replicas on one real Redis, real gVisor
//! workers, traffic through the routers.
//!
//! * only the leader runs the leader loops: the follower runs no round of them, and an actor
//!   kept busy through the *leader's* router is not paused by the follower (whose router sees
//!   no traffic for it); once idle it is paused exactly once, by the leader;
//! * the leader is SIGKILLed halfway through an idle pause: the follower takes the leadership
//!   over within about the lease's TTL (`leader_failover_ms`), settles the dead leader's
//!   intent at exactly the intended snapshot, and applies the idle policy from then on;
//!   every counter continues;
//! * a leader that stops cleanly (SIGTERM) hands over at once (`leader_handover_ms`).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ate::demo::parse_count;
use ate_core::ActorState;
use common::*;

const TTL_MS: u64 = 3000;

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn leader_rounds(text: &str) -> f64 {
    ["reconcile", "idle", "golden", "health"]
        .iter()
        .map(|l| metric(text, &format!("ate_leader_rounds_total{{loop=\"{l}\"}}")))
        .sum()
}

/// GET through `router`: the counter must continue by exactly one.
async fn expect_next(
    router: std::net::SocketAddr,
    actor: &str,
    expected: &mut HashMap<String, u64>,
    log: &str,
) {
    let (status, body) = get(router, actor).await.unwrap();
    assert_eq!(status, 200, "{actor}: {body}\n{log}");
    let c = parse_count(&body).unwrap();
    let want = expected.get(actor).copied().unwrap_or(0) + 1;
    assert_eq!((c.memory, c.file), (want, want), "{actor}: the counter must continue (memory and file)");
    expected.insert(actor.to_owned(), want);
}

async fn state(serve: &Serve, actor: &str) -> ate::api::ActorView {
    serve.api.actor(actor).await.unwrap()
}

async fn wait_state(serve: &Serve, actor: &str, want: ActorState, secs: u64) {
    let api = serve.api.clone();
    let got = wait_for(secs, || {
        let api = api.clone();
        async move { api.actor(actor).await.ok().filter(|a| a.actor.state == want) }
    })
    .await;
    assert!(
        got.is_some(),
        "{actor} never became {want:?}: {:?}\n{}",
        serve.api.actor(actor).await,
        serve.log_text()
    );
}

/// Polls `serve`'s status until it leads; how long after `since` that was.
async fn leads_within(serve: &Serve, since: Instant, secs: u64) -> Option<Duration> {
    while since.elapsed() < Duration::from_secs(secs) {
        if serve.api.status().await.is_ok_and(|s| s.leading) {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_leader_runs_the_loops_and_another_takes_over() {
    if let Some(why) = unavailable(true) {
        eprintln!("SKIPPED one_leader_runs_the_loops_and_another_takes_over: {why}");
        return;
    }
    let _serial = serial().await;
    let ttl = format!("{TTL_MS}ms");
    let serve_args: Vec<String> =
        ["--leader-ttl", &ttl, "--replica-ttl", &ttl].iter().map(|s| s.to_string()).collect();
    let mut lab = Lab::start_with(StoreKind::Redis, 2, &[], &serve_args);
    // Pause after 4 s idle, never suspend (within the test).
    lab.apply_counter(Some((4.0, 3600.0)));
    let names = lab.create_actors(2);
    let (a00, a01) = (names[0].clone(), names[1].clone());
    let mut b = lab.replica("test-b", &["--leader-ttl", &ttl, "--replica-ttl", &ttl]);
    let mut expected: HashMap<String, u64> = HashMap::new();

    // A (started first) leads; B follows and says who leads.
    let (sa, sb) = (lab.serve.api.status().await.unwrap(), b.api.status().await.unwrap());
    assert!(sa.leading && !sb.leading, "{sa:?} {sb:?}");
    assert_eq!(sb.leader.as_ref().map(|l| l.holder.as_str()), Some("test"), "{sb:?}");
    assert_eq!(sb.store, "redis");
    let (ok, out, err) = b.cli(&["status"]);
    assert!(ok && out.contains("leader:   test ") && out.contains("leading:  no"), "{out}{err}");
    assert!(metric(&lab.serve.metrics().await, "ate_leader{replica=\"test\"}") == 1.0);
    assert!(metric(&b.metrics().await, "ate_leader{replica=\"test-b\"}") == 0.0);
    assert!(lab.serve.log_text().contains("leadership gained"), "{}", lab.serve.log_text());

    // a00 is kept busy through A's router for longer than pauseAfterSeconds: B's router sees
    // no traffic for it, so a B running the idle policy would pause it. Nobody does.
    let busy_until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < busy_until {
        expect_next(lab.serve.router, &a00, &mut expected, &lab.serve.log_text()).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(state(&b, &a00).await.actor.state, ActorState::Running);
    // Idle now: paused once, by the leader.
    wait_state(&b, &a00, ActorState::Paused, 30).await;
    let (ma, mb) = (lab.serve.metrics().await, b.metrics().await);
    assert_eq!(metric(&ma, "ate_pauses_total"), 1.0, "the leader paused a00 once\n{ma}");
    assert_eq!(metric(&mb, "ate_pauses_total"), 0.0, "the follower paused nothing\n{mb}");
    assert!(leader_rounds(&ma) > 0.0, "{ma}");
    assert_eq!(leader_rounds(&mb), 0.0, "the follower ran a leader loop\n{mb}");

    // The leader is SIGKILLed halfway through an idle pause of a01.
    let mut killed_mid_pause = None;
    for attempt in 0..3 {
        expect_next(lab.serve.router, &a01, &mut expected, &lab.serve.log_text()).await;
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let v = state(&b, &a01).await;
            if v.actor.state == ActorState::Pausing && v.actor.op.as_ref().is_some_and(|o| o.owner == "test")
            {
                lab.serve.kill();
                killed_mid_pause = Some(v);
                break;
            }
            if v.actor.state == ActorState::Paused {
                eprintln!("attempt {attempt}: the pause ended between two looks; again");
                break;
            }
            assert!(Instant::now() < until, "a01 was never paused: {v:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if killed_mid_pause.is_some() {
            break;
        }
    }
    let killed = Instant::now();
    let seen = killed_mid_pause.expect("the leader was killed mid-pause within 3 attempts");
    let leader_failover_ms =
        leads_within(&b, killed, 30).await.expect("B never took the leadership over").as_millis();
    eprintln!("leader_failover_ms={leader_failover_ms} (lease TTL {TTL_MS} ms, killed mid-pause of a01)");
    assert!(
        leader_failover_ms <= u128::from(TTL_MS) + 1000,
        "failover took {leader_failover_ms} ms with a {TTL_MS} ms lease"
    );
    assert!(b.log_text().contains("leadership gained"), "{}", b.log_text());
    // B settles A's intent at exactly the intended snapshot (or finds it still running).
    let until = Instant::now() + Duration::from_secs(30);
    let end = loop {
        let v = state(&b, &a01).await;
        if !v.actor.state.is_intermediate() {
            break v;
        }
        assert!(Instant::now() < until, "a01 never settled: {v:?}\n{}", b.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!("a01 after the takeover: {} ({:?})", end.actor.state, end.actor.local);
    assert_ne!(end.actor.state, ActorState::Crashed, "{:?}", end.actor.reason);
    if end.actor.state == ActorState::Paused {
        assert_eq!(
            end.actor.local.as_ref().map(|l| l.snapshot_id.as_str()),
            seen.actor.intended_snapshot(),
            "paused at exactly the snapshot the dead leader intended"
        );
    }
    // B applies the idle policy now: both actors answer through B and are paused by B.
    for n in [&a00, &a01] {
        expect_next(b.router, n, &mut expected, &b.log_text()).await;
    }
    for n in [&a00, &a01] {
        wait_state(&b, n, ActorState::Paused, 30).await;
    }
    let mb = b.metrics().await;
    assert!(metric(&mb, "ate_pauses_total") >= 2.0, "the new leader's idle policy paused them\n{mb}");
    assert!(leader_rounds(&mb) > 0.0, "{mb}");

    // A comes back as a follower; B stops cleanly and A leads at once.
    lab.serve.restart();
    let sa = lab.serve.api.status().await.unwrap();
    assert!(!sa.leading && sa.leader.as_ref().is_some_and(|l| l.holder == "test-b"), "{sa:?}");
    let stopped = Instant::now();
    b.terminate();
    let leader_handover_ms = leads_within(&lab.serve, stopped, 10)
        .await
        .expect("A never took over after B's clean stop")
        .as_millis();
    eprintln!("leader_handover_ms={leader_handover_ms} (clean stop; lease TTL {TTL_MS} ms)");
    assert!(
        leader_handover_ms < 1500,
        "a clean stop hands over at once, not after the TTL: {leader_handover_ms} ms"
    );
    assert!(b.log_text().contains("leadership given up"), "{}", b.log_text());
    for n in [&a00, &a01] {
        expect_next(lab.serve.router, n, &mut expected, &lab.serve.log_text()).await;
    }
}
