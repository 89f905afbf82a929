//! SIGKILL of `ateom` itself at every step (`FAILPOINTS="<point>=return"` makes the worker
//! kill itself exactly there; mid-push and mid-pull are a stalled object-store request through
//! the fault proxy and a SIGKILL while the worker says it is pushing or restoring). Then a new
//! worker starts on the same state directory, and what it reports and does is checked: the
//! workload adopted and still counting from the last acknowledged value, or the exact snapshot
//! that was being written committed and restorable, or idle with the previous snapshot intact.

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    Acked, Ctx, check_restorable, expect_idle, lost_reason, next_op, running_after_restore, short,
    with_snapshot,
};
use crate::worker::{self, Live};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    RunAfterStart,
    GoLiveAfterJournal,
    CheckpointBeforeFreeze,
    CheckpointAfterFreeze,
    CheckpointAfterCommit,
    PushBefore,
    MidPush,
    MidCopy,
    PullBefore,
    MidPull,
    RestoreBeforeSandbox,
    RestoreAfterSandbox,
}

impl Point {
    pub const ALL: [Point; 12] = [
        Point::RunAfterStart,
        Point::GoLiveAfterJournal,
        Point::CheckpointBeforeFreeze,
        Point::CheckpointAfterFreeze,
        Point::CheckpointAfterCommit,
        Point::PushBefore,
        Point::MidPush,
        Point::MidCopy,
        Point::PullBefore,
        Point::MidPull,
        Point::RestoreBeforeSandbox,
        Point::RestoreAfterSandbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::RunAfterStart => "run-after-start",
            Point::GoLiveAfterJournal => "go-live-after-journal",
            Point::CheckpointBeforeFreeze => "checkpoint-before-freeze",
            Point::CheckpointAfterFreeze => "checkpoint-after-freeze",
            Point::CheckpointAfterCommit => "checkpoint-after-commit",
            Point::PushBefore => "push-before",
            Point::MidPush => "mid-push",
            Point::MidCopy => "mid-copy",
            Point::PullBefore => "pull-before",
            Point::MidPull => "mid-pull",
            Point::RestoreBeforeSandbox => "restore-before-sandbox",
            Point::RestoreAfterSandbox => "restore-after-sandbox",
        }
    }
}

const ACTOR: &str = "a1";

pub async fn run(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    match p {
        Point::RunAfterStart | Point::GoLiveAfterJournal => during_run(ctx, p).await,
        Point::CheckpointBeforeFreeze | Point::CheckpointAfterFreeze | Point::CheckpointAfterCommit => {
            during_checkpoint(ctx, p).await
        }
        Point::PushBefore | Point::MidPush => during_push(ctx, p).await,
        Point::MidCopy => during_copy(ctx).await,
        Point::PullBefore | Point::MidPull => during_pull(ctx, p).await,
        Point::RestoreBeforeSandbox | Point::RestoreAfterSandbox => during_restore(ctx, p).await,
    }
}

/// The worker dies while it starts a second run of an actor that has a snapshot.
async fn during_run(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let state = ctx.state_dir("s");
    // The setup's own run passes the point once.
    let w = ctx.start(&state, Some(&format!("{}=1*off->return", p.name())))?;
    let s1 = with_snapshot(ctx, w, ACTOR).await?;
    let mut c = ctx.client(w).await?;
    if worker::run(&mut c, ctx.backend, &ctx.env.image, ACTOR).await.is_ok() {
        ctx.problem("the run answered OK although the worker was to die before answering");
    }
    ctx.w(w).expect_fault_death(p.name()).await?;

    let w2 = ctx.start(&state, None)?;
    let mut c = ctx.client(w2).await?;
    let k = worker::caps(&mut c).await?;
    let running_it = k.state == "running" && k.running_actor == worker::actor_ref(ACTOR);
    match (running_it, k.state.as_str(), p) {
        (true, _, _) => {
            let live = Live { endpoint: k.host_endpoint.clone(), console: k.console.clone() };
            ctx.poke(&live, 1, "the adopted fresh run").await?;
            ctx.note("restarted worker adopted the started workload (it answers 1: fresh)");
            if p == Point::RunAfterStart {
                ctx.note("it adopted a sandbox that was not yet journaled");
            }
            worker::delete(&mut c, ACTOR, true).await.context("stopping the adopted run")?;
        }
        (false, "idle", Point::RunAfterStart) => {
            ctx.note("restarted worker idle: the unjournaled sandbox was removed");
        }
        (false, "idle", _) => {
            let why = lost_reason(&k, ACTOR).unwrap_or_else(|| "not reported lost".into());
            ctx.problem(format!("the journaled, live sandbox was not adopted (idle; {why})"));
        }
        (false, other, _) => {
            ctx.problem(format!("the restarted worker reports {other:?} {}", k.running_actor))
        }
    }
    if p == Point::RunAfterStart && lost_reason(&k, ACTOR).is_some() {
        ctx.note("the unacknowledged run is reported lost");
    }
    check_restorable(ctx, w2, ACTOR, &s1, std::slice::from_ref(&s1.id)).await?;
    ctx.note(format!("snapshot {} (3) restores as 4", short(&s1.id)));
    next_op(ctx, w2).await
}

/// The worker dies at a point of a LOCAL checkpoint of a running actor.
async fn during_checkpoint(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, Some(&format!("{}=1*off->return", p.name())))?;
    let (s1, _live, last) = running_after_restore(ctx, w, ACTOR).await?;
    let s2 = ctx.snap_id("s2");
    let mut c = ctx.client(w).await?;
    if worker::checkpoint(&mut c, ACTOR, &s2, None, std::slice::from_ref(&s1.id)).await.is_ok() {
        ctx.problem("the checkpoint answered OK although the worker was to die first");
    }
    ctx.w(w).expect_fault_death(p.name()).await?;
    let w2 = ctx.start(&state, None)?;
    settle(ctx, w2, &s1, &s2, last).await?;
    check_restorable(ctx, w2, ACTOR, &s1, std::slice::from_ref(&s1.id)).await?;
    next_op(ctx, w2).await
}

/// After an interrupted checkpoint of snapshot `s2` (counter at `last`): the restarted worker
/// either serves the workload (answers last + 1), or committed `s2` (restores as last + 1).
/// Anything else lost state that was alive when only the worker died.
async fn settle(ctx: &mut Ctx<'_>, w: usize, s1: &Acked, s2: &str, last: u64) -> Result<()> {
    let mut c = ctx.client(w).await?;
    let k = worker::caps(&mut c).await?;
    let snaps = worker::list(&mut c, ACTOR).await?;
    let s2_state = snaps.iter().find(|s| s.snapshot_id == s2).map(|s| s.state.clone());
    let keep = vec![s1.id.clone(), s2.to_owned()];
    if k.state == "running" && k.running_actor == worker::actor_ref(ACTOR) {
        let live = Live { endpoint: k.host_endpoint.clone(), console: k.console.clone() };
        ctx.poke(&live, last + 1, "the adopted workload").await?;
        ctx.note(format!(
            "restarted worker adopted the workload, counting on from {last}{}",
            if s2_state.is_some() {
                format!(" (snapshot s2 is {})", s2_state.as_deref().unwrap_or(""))
            } else {
                String::new()
            }
        ));
        // The adopted sandbox checkpoints and restores like any other.
        let s3 = ctx.snap_id("s3");
        worker::checkpoint(&mut c, ACTOR, &s3, None, &keep)
            .await
            .context("checkpoint of the adopted workload")?;
        check_restorable(ctx, w, ACTOR, &Acked { id: s3, value: last + 1 }, &keep).await?;
        return Ok(());
    }
    if k.state != "idle" {
        ctx.problem(format!("the restarted worker reports {:?} {}", k.state, k.running_actor));
        return Ok(());
    }
    match s2_state.as_deref() {
        Some("complete") => {
            ctx.note(format!(
                "restarted worker idle with snapshot s2 committed; it restores as {}",
                last + 1
            ));
            check_restorable(ctx, w, ACTOR, &Acked { id: s2.to_owned(), value: last }, &keep).await?;
        }
        Some(other) => {
            ctx.problem(format!("snapshot s2 is left {other} after the restart (the disk is not full)"))
        }
        None => match lost_reason(&k, ACTOR) {
            Some(why) => ctx.problem(format!(
                "the actor was reported lost although only the worker died (its sandbox was alive): {why}"
            )),
            None => {
                ctx.lost_ack += 1;
                ctx.problem(format!(
                    "LOST: the workload (acknowledged at {last}) is neither running nor in snapshot s2, and not reported lost"
                ));
            }
        },
    }
    expect_idle(ctx, w, "after settling").await
}

/// The worker dies before or in the middle of shipping a DURABLE checkpoint (committed
/// locally first).
/// The worker dies while it copies a committed LOCAL snapshot to the store in the background
/// (`PushSnapshot`, durability `both`): a chunk PUT stalls, then SIGKILL. The local snapshot
/// must stay whole and restorable, the store must not hold an index for a half copy, and the
/// copy asked again must complete (and a third ask be a no-op).
async fn during_copy(ctx: &mut Ctx<'_>) -> Result<()> {
    let env = ctx.env;
    let proxy = env.proxy()?;
    let s3 = env.s3()?;
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, None)?;
    let (s1, _live, last) = running_after_restore(ctx, w, ACTOR).await?;
    let mut c = ctx.client(w).await?;
    let s2 = ctx.snap_id("s2");
    let keep = vec![s1.id.clone()];
    worker::checkpoint(&mut c, ACTOR, &s2, None, &keep).await.context("local checkpoint s2")?;
    let prefix = ctx.prefix("c");
    proxy.set(
        json!([{"method": "PUT", "path_contains": "/chunks/", "action": {"type": "stall", "ms": 60000}}]),
    )?;
    let (pf, sf) = (prefix.clone(), s2.clone());
    let mut cc = ctx.client(w).await?;
    let task = tokio::spawn(async move { worker::push(&mut cc, ACTOR, &sf, &pf).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while proxy.applied(0) < 1 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the copy never reached the store");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctx.w(w).kill();
    ctx.note("worker SIGKILLed while a chunk PUT of its background copy stalled");
    if task.await?.is_ok() {
        ctx.problem("the copy answered OK although the worker died during it");
    }
    proxy.clear();
    let index = s3.object(&Ctx::key(&prefix, &format!("{s2}/index.json")));
    if index.is_file() {
        ctx.problem("the store holds an index for a copy that never finished");
    }
    let w2 = ctx.start(&state, None)?;
    let mut c = ctx.client(w2).await?;
    let keep = vec![s1.id.clone(), s2.clone()];
    match worker::list(&mut c, ACTOR).await?.iter().find(|s| s.snapshot_id == s2).map(|s| s.state.clone()) {
        Some(st) if st == "complete" => {}
        other => {
            ctx.lost_ack += 1;
            ctx.problem(format!("LOST: local snapshot s2 is {other:?} after a copy was killed"));
        }
    }
    let again = worker::push(&mut c, ACTOR, &s2, &prefix).await.context("copying s2 again")?;
    if again.already_stored || again.stored_bytes == 0 || !index.is_file() {
        ctx.problem(format!("the second copy did not store s2 whole: {again:?}"));
    }
    let third = worker::push(&mut c, ACTOR, &s2, &prefix).await.context("copying s2 a third time")?;
    if !third.already_stored {
        ctx.problem("a copy of a snapshot stored whole was not a no-op");
    }
    check_restorable(ctx, w2, ACTOR, &Acked { id: s2.clone(), value: last }, &keep).await?;
    ctx.note(format!("s2 kept locally, copied on the second ask, restores as {}", last + 1));
    Ok(())
}

async fn during_push(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let env = ctx.env;
    let proxy = env.proxy()?;
    let s3 = env.s3()?;
    let state = ctx.state_dir("s");
    let fp = (p == Point::PushBefore).then(|| "push-before=return".to_owned());
    let w = ctx.start(&state, fp.as_deref())?;
    let (s1, _live, last) = running_after_restore(ctx, w, ACTOR).await?;
    let prefix = ctx.prefix("p");
    let s2 = ctx.snap_id("s2");
    if p == Point::MidPush {
        proxy.set(
            json!([{"method": "PUT", "path_contains": "/chunks/", "action": {"type": "stall", "ms": 60000}}]),
        )?;
    }
    let mut c = ctx.client(w).await?;
    let keep = vec![s1.id.clone()];
    let (pf, sf, kf) = (prefix.clone(), s2.clone(), keep.clone());
    let task = tokio::spawn(async move { worker::checkpoint(&mut c, ACTOR, &sf, Some(&pf), &kf).await });
    if p == Point::MidPush {
        let mut c = ctx.client(w).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let k = worker::caps(&mut c).await?;
            if k.state == "pushing" && k.checkpoint_snapshot_id == s2 && proxy.applied(0) >= 1 {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the push never got stuck (state {:?})",
                k.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ctx.w(w).kill();
        ctx.note("worker SIGKILLed while GetCapabilities said pushing and a chunk PUT stalled");
    } else {
        ctx.w(w).expect_fault_death(p.name()).await?;
    }
    if task.await?.is_ok() {
        ctx.problem("the durable checkpoint answered OK although the worker died during its push");
    }
    proxy.clear();

    let w2 = ctx.start(&state, None)?;
    let mut c = ctx.client(w2).await?;
    let k = worker::caps(&mut c).await?;
    if k.state != "idle" {
        ctx.problem(format!("the restarted worker reports {:?} instead of idle", k.state));
    }
    let snaps = worker::list(&mut c, ACTOR).await?;
    let keep = vec![s1.id.clone(), s2.clone()];
    match snaps.iter().find(|s| s.snapshot_id == s2).map(|s| s.state.as_str()) {
        Some("complete") => {
            check_restorable(ctx, w2, ACTOR, &Acked { id: s2.clone(), value: last }, &keep).await?;
            ctx.note(format!("s2 committed locally before the push and restores as {}", last + 1));
        }
        other => {
            ctx.lost_ack += 1;
            ctx.problem(format!(
                "LOST: snapshot s2, committed before its push, is {other:?} after the restart"
            ));
        }
    }
    let index = s3.object(&Ctx::key(&prefix, &format!("{s2}/index.json")));
    let latest = super::latest(env, &prefix);
    if latest.as_deref() == Some(s2.as_str()) && !index.is_file() {
        ctx.problem("LATEST names s2 but its index was never written");
    }
    ctx.note(format!(
        "in the store: s2 index {}, LATEST {:?}",
        if index.is_file() { "written" } else { "absent (no snapshot)" },
        latest.as_deref().map(short)
    ));
    // Shipping works again: a durable checkpoint of the restored s2.
    let (live, _) = worker::restore(&mut c, ACTOR, Some(&s2), None, &keep).await.context("restoring s2")?;
    ctx.poke(&live, last + 1, "restored s2").await?;
    let s4 = ctx.snap_id("s4");
    match worker::checkpoint(&mut c, ACTOR, &s4, Some(&prefix), &keep).await {
        Ok(_) => {
            let latest = super::latest(env, &prefix);
            if latest.as_deref() != Some(s4.as_str()) {
                ctx.problem(format!("after a good push LATEST is {latest:?}, not s4"));
            }
        }
        Err(e) => ctx.problem(format!("the next durable checkpoint failed: {:?}: {}", e.code(), e.message())),
    }
    check_restorable(ctx, w2, ACTOR, &s1, &keep).await?;
    next_op(ctx, w2).await
}

/// A fresh node dies before or in the middle of pulling a durable snapshot.
async fn during_pull(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let env = ctx.env;
    let proxy = env.proxy()?;
    let (prefix, acked) = pushed_snapshot(ctx).await?;
    let sb = ctx.state_dir("b");
    let fp = (p == Point::PullBefore).then(|| "pull-before=return".to_owned());
    let b = ctx.start(&sb, fp.as_deref())?;
    if p == Point::MidPull {
        proxy.set(
            json!([{"method": "GET", "path_contains": "/chunks/", "action": {"type": "stall", "ms": 60000}}]),
        )?;
    }
    let mut c = ctx.client(b).await?;
    let pf = prefix.clone();
    let task = tokio::spawn(async move { worker::restore(&mut c, ACTOR, None, Some(&pf), &[]).await });
    if p == Point::MidPull {
        let mut c = ctx.client(b).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let k = worker::caps(&mut c).await?;
            if k.state == "restoring" && proxy.applied(0) >= 1 {
                break;
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the pull never got stuck (state {:?})",
                k.state
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ctx.w(b).kill();
        ctx.note("worker SIGKILLed while restoring, a chunk GET stalled");
    } else {
        ctx.w(b).expect_fault_death(p.name()).await?;
    }
    if task.await?.is_ok() {
        ctx.problem("the restore answered OK although the worker died during its pull");
    }
    proxy.clear();

    let b2 = ctx.start(&sb, None)?;
    expect_idle(ctx, b2, "after the restart").await?;
    let left = worker::snapshot_entries(&sb, ACTOR);
    if !left.is_empty() {
        ctx.problem(format!("the interrupted pull left {left:?} after the restart"));
    }
    let mut c = ctx.client(b2).await?;
    match worker::restore(&mut c, ACTOR, None, Some(&prefix), &[]).await {
        Ok((live, resp)) => {
            if resp.snapshot_id != acked.id {
                ctx.wrong_resumes += 1;
                ctx.problem(format!("WRONG RESUME: LATEST is {}, restored {}", acked.id, resp.snapshot_id));
            }
            ctx.poke(&live, acked.value + 1, "the pulled snapshot").await?;
            ctx.note(format!(
                "restart left nothing partial; the pull then restored s1 as {}",
                acked.value + 1
            ));
            worker::delete(&mut c, ACTOR, true).await?;
        }
        Err(e) => {
            ctx.lost_ack += 1;
            ctx.problem(format!(
                "LOST: the pushed snapshot no longer restores: {:?}: {}",
                e.code(),
                e.message()
            ));
        }
    }
    next_op(ctx, b2).await
}

/// Node "a" runs the actor, counts to 3 and pushes it (DURABLE) through the proxy; it is
/// stopped afterwards. Returns the prefix and the acknowledged snapshot.
pub async fn pushed_snapshot(ctx: &mut Ctx<'_>) -> Result<(String, Acked)> {
    let sa = ctx.state_dir("a");
    let a = ctx.start(&sa, None)?;
    let mut c = ctx.client(a).await?;
    let live = worker::run(&mut c, ctx.backend, &ctx.env.image, ACTOR).await.context("setup: run")?;
    for i in 1..=3 {
        ctx.poke(&live, i, "setup").await?;
    }
    let prefix = ctx.prefix("p");
    let id = ctx.snap_id("s1");
    worker::checkpoint(&mut c, ACTOR, &id, Some(&prefix), &[]).await.context("setup: durable checkpoint")?;
    ctx.w(a).stop(Duration::from_secs(45)).await;
    Ok((prefix, Acked { id, value: 3 }))
}

/// The worker dies while restoring a local snapshot.
async fn during_restore(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, Some(&format!("{}=return", p.name())))?;
    let s1 = with_snapshot(ctx, w, ACTOR).await?;
    let mut c = ctx.client(w).await?;
    if worker::restore(&mut c, ACTOR, Some(&s1.id), None, std::slice::from_ref(&s1.id)).await.is_ok() {
        ctx.problem("the restore answered OK although the worker was to die first");
    }
    ctx.w(w).expect_fault_death(p.name()).await?;
    let w2 = ctx.start(&state, None)?;
    let mut c = ctx.client(w2).await?;
    let k = worker::caps(&mut c).await?;
    if k.state == "running" && k.running_actor == worker::actor_ref(ACTOR) {
        let live = Live { endpoint: k.host_endpoint.clone(), console: k.console.clone() };
        ctx.poke(&live, s1.value + 1, "the adopted restore").await?;
        ctx.note("restarted worker adopted the restored workload");
        worker::delete(&mut c, ACTOR, true).await?;
    } else if k.state == "idle" {
        ctx.note("restarted worker idle: the unacknowledged restore left nothing running");
    } else {
        ctx.problem(format!("the restarted worker reports {:?}", k.state));
    }
    check_restorable(ctx, w2, ACTOR, &s1, std::slice::from_ref(&s1.id)).await?;
    ctx.note(format!("snapshot s1 restores as {}", s1.value + 1));
    next_op(ctx, w2).await
}
