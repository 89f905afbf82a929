//! SIGKILL of the sandbox process (runsc's sandbox, QEMU, Firecracker — found by PID among the
//! processes of the case's state directory) while the worker is held at a point
//! (`<point>=sleep(ms)`), or while the workload simply runs. The operation must fail with a
//! clear error, the actor be reported lost or the error say its state died — never a silent
//! success — and the snapshot committed before must still restore.

use std::time::Duration;

use anyhow::{Context, Result};

use super::{
    Ctx, check_restorable, expect_idle, lost_reason, next_op, running_after_restore, wait_for, with_snapshot,
};
use crate::sys;
use crate::worker::{self, Live};

/// How long the worker is held at a point (the sandbox is killed meanwhile).
const HOLD_MS: u64 = 3000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Point {
    RunAfterStart,
    GoLiveAfterJournal,
    Running,
    CheckpointBeforeFreeze,
    CheckpointAfterFreeze,
    CheckpointAfterCommit,
    RestoreAfterSandbox,
}

impl Point {
    pub const ALL: [Point; 7] = [
        Point::RunAfterStart,
        Point::GoLiveAfterJournal,
        Point::Running,
        Point::CheckpointBeforeFreeze,
        Point::CheckpointAfterFreeze,
        Point::CheckpointAfterCommit,
        Point::RestoreAfterSandbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Point::RunAfterStart => "run-after-start",
            Point::GoLiveAfterJournal => "go-live-after-journal",
            Point::Running => "running",
            Point::CheckpointBeforeFreeze => "checkpoint-before-freeze",
            Point::CheckpointAfterFreeze => "checkpoint-after-freeze",
            Point::CheckpointAfterCommit => "checkpoint-after-commit",
            Point::RestoreAfterSandbox => "restore-after-sandbox",
        }
    }
}

const ACTOR: &str = "a1";

/// Words of an error that says the workload's state died with its sandbox.
const DIED: [&str; 9] =
    ["died", "dead", "gone", "killed", "exited", "lost", "no longer", "not running", "signal"];

fn says_died(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    DIED.iter().any(|w| m.contains(w))
}

/// Waits until the worker is held at `p` (what the worker writes or logs right before it).
async fn wait_at(ctx: &mut Ctx<'_>, w: usize, p: Point, log_offset: u64, s2: &str) -> Result<()> {
    let limit = Duration::from_secs(120);
    let backend = ctx.backend;
    let worker = ctx.wref(w);
    match p {
        Point::RunAfterStart => worker.wait_log(log_offset, backend.started_marker(), limit).await,
        Point::RestoreAfterSandbox => worker.wait_log(log_offset, "backend restore done", limit).await,
        Point::CheckpointAfterFreeze => worker.wait_log(log_offset, "backend checkpoint done", limit).await,
        Point::CheckpointAfterCommit => {
            worker.wait_log(log_offset, "snapshot digested and committed", limit).await
        }
        Point::GoLiveAfterJournal => {
            let journal = worker.state.join("worker/active.json");
            wait_for(limit, "the journal record of the run", || journal.is_file()).await
        }
        Point::CheckpointBeforeFreeze => {
            let intent =
                worker::snapshots_dir(&worker.state, ACTOR).join(format!(".partial-{s2}/.intent.json"));
            wait_for(limit, "the checkpoint's intent", || intent.is_file()).await
        }
        Point::Running => Ok(()),
    }
}

/// SIGKILLs the sandbox process(es) of the worker's state dir (waiting up to `wait` for one
/// to appear). Returns what was killed.
async fn kill_sandbox(ctx: &mut Ctx<'_>, w: usize, wait: Duration) -> Vec<String> {
    let state = ctx.wref(w).state.clone();
    let backend = ctx.backend;
    let deadline = std::time::Instant::now() + wait;
    loop {
        let procs = sys::sandbox_processes(&state, backend);
        if !procs.is_empty() {
            for p in &procs {
                sys::sigkill(p.pid);
            }
            return procs.iter().map(|p| format!("{} {}", p.comm, p.pid)).collect();
        }
        if std::time::Instant::now() > deadline {
            return Vec::new();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn run(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    match p {
        Point::RunAfterStart | Point::GoLiveAfterJournal => during_run(ctx, p).await,
        Point::Running => while_running(ctx).await,
        Point::CheckpointBeforeFreeze | Point::CheckpointAfterFreeze | Point::CheckpointAfterCommit => {
            during_checkpoint(ctx, p).await
        }
        Point::RestoreAfterSandbox => during_restore(ctx).await,
    }
}

/// After the sandbox died under a running actor: the next checkpoint must fail clearly and
/// the actor be reported lost (a checkpoint that "succeeds" would be a silent success).
async fn checkpoint_of_dead(ctx: &mut Ctx<'_>, w: usize, keep: &[String]) -> Result<()> {
    let mut c = ctx.client(w).await?;
    let s2 = ctx.snap_id("s2");
    match worker::checkpoint(&mut c, ACTOR, &s2, None, keep).await {
        Ok(_) => {
            ctx.problem("SILENT SUCCESS: a checkpoint of the dead sandbox answered OK");
        }
        Err(e) => {
            let k = worker::caps(&mut c).await?;
            let lost = lost_reason(&k, ACTOR);
            if lost.is_none() && !says_died(e.message()) {
                ctx.problem(format!(
                    "the checkpoint of the dead sandbox failed without saying its state died, and the actor is not reported lost: {:?}: {}",
                    e.code(),
                    e.message()
                ));
            }
            ctx.note(format!(
                "the checkpoint then failed ({:?}: {}){}",
                e.code(),
                trim(e.message()),
                lost.map(|r| format!("; reported lost: {}", trim(&r))).unwrap_or_default()
            ));
        }
    }
    Ok(())
}

fn trim(s: &str) -> String {
    let s = s.replace('\n', " ");
    if s.len() > 220 {
        let mut end = 220;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

async fn during_run(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, Some(&format!("{}=1*off->1*sleep({HOLD_MS})", p.name())))?;
    let s1 = with_snapshot(ctx, w, ACTOR).await?;
    let keep = vec![s1.id.clone()];
    let off = ctx.wref(w).log_len();
    let mut c = ctx.client(w).await?;
    let (backend, image) = (ctx.backend, ctx.env.image.clone());
    let task = tokio::spawn(async move { worker::run(&mut c, backend, &image, ACTOR).await });
    wait_at(ctx, w, p, off, "").await?;
    let killed = kill_sandbox(ctx, w, Duration::from_millis(HOLD_MS - 500)).await;
    if killed.is_empty() {
        ctx.problem(format!("no sandbox process was found at {}", p.name()));
    }
    match task.await? {
        Err(e) => {
            ctx.note(format!("killed {killed:?}; the run failed: {:?}: {}", e.code(), trim(e.message())));
            if e.message().trim().is_empty() {
                ctx.problem("the failed run gave no reason");
            }
        }
        Ok(live) => {
            if let Ok(n) = worker::poke_dead(ctx.backend, &live).await {
                ctx.problem(format!("the killed sandbox still answers ({})", n.memory));
            }
            // The runtime probes an HTTP workload after run-after-start; a console guest was
            // declared ready by its backend before it, as every workload is at go-live.
            if p == Point::RunAfterStart && !ctx.backend.console_counter() {
                ctx.problem(
                    "SILENT SUCCESS: the run answered OK although its sandbox died before it was ready",
                );
            } else {
                ctx.note(format!(
                    "killed {killed:?} after readiness; the run answered OK, the workload is dead"
                ));
            }
            checkpoint_of_dead(ctx, w, &keep).await?;
        }
    }
    expect_idle(ctx, w, "after the failure").await?;
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    ctx.note(format!("s1 restores as {}", s1.value + 1));
    next_op(ctx, w).await
}

async fn while_running(ctx: &mut Ctx<'_>) -> Result<()> {
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, None)?;
    let (s1, live, last) = running_after_restore(ctx, w, ACTOR).await?;
    let keep = vec![s1.id.clone()];
    let killed = kill_sandbox(ctx, w, Duration::from_secs(2)).await;
    if killed.is_empty() {
        ctx.problem("no sandbox process was found while running");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    if let Ok(n) = worker::poke_dead(ctx.backend, &live).await {
        ctx.problem(format!("the killed sandbox still answers ({} after {last})", n.memory));
    }
    let mut c = ctx.client(w).await?;
    let k = worker::caps(&mut c).await?;
    ctx.note(format!("killed {killed:?}; the worker then reports {:?}", k.state));
    checkpoint_of_dead(ctx, w, &keep).await?;
    expect_idle(ctx, w, "after the failure").await?;
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    ctx.note(format!("s1 restores as {}", s1.value + 1));
    next_op(ctx, w).await
}

async fn during_checkpoint(ctx: &mut Ctx<'_>, p: Point) -> Result<()> {
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, Some(&format!("{}=1*off->1*sleep({HOLD_MS})", p.name())))?;
    let (s1, _live, last) = running_after_restore(ctx, w, ACTOR).await?;
    let s2 = ctx.snap_id("s2");
    let keep = vec![s1.id.clone(), s2.clone()];
    let off = ctx.wref(w).log_len();
    let mut c = ctx.client(w).await?;
    let (sf, kf) = (s2.clone(), vec![s1.id.clone()]);
    let task = tokio::spawn(async move { worker::checkpoint(&mut c, ACTOR, &sf, None, &kf).await });
    wait_at(ctx, w, p, off, &s2).await?;
    // After the freeze, a gVisor sandbox has already exited (runsc checkpoint stops it) and
    // after the commit the sandbox is being torn down: there may be nothing left to kill.
    let wait = match p {
        Point::CheckpointBeforeFreeze => Duration::from_millis(HOLD_MS - 500),
        _ => Duration::from_millis(200),
    };
    let killed = kill_sandbox(ctx, w, wait).await;
    if killed.is_empty() && p == Point::CheckpointBeforeFreeze {
        ctx.problem("no sandbox process was found before the freeze");
    }
    let what = if killed.is_empty() {
        "no sandbox process was left to kill".to_owned()
    } else {
        format!("killed {killed:?}")
    };
    let mut c = ctx.client(w).await?;
    match task.await? {
        Ok(resp) => {
            let id = resp.manifest.map(|m| m.snapshot_id).unwrap_or_default();
            ctx.note(format!("{what}; the checkpoint answered OK: s2 must hold {last}"));
            if id != s2 {
                ctx.problem(format!("the checkpoint answered snapshot {id:?}, not s2"));
            }
            check_restorable(ctx, w, ACTOR, &super::Acked { id: s2.clone(), value: last }, &keep).await?;
        }
        Err(e) => {
            let k = worker::caps(&mut c).await?;
            let lost = lost_reason(&k, ACTOR);
            if lost.is_none() && !says_died(e.message()) {
                ctx.problem(format!(
                    "the checkpoint failed without saying the state died, and the actor is not reported lost: {:?}: {}",
                    e.code(),
                    e.message()
                ));
            }
            ctx.note(format!(
                "{what}; the checkpoint failed ({:?}: {}){}",
                e.code(),
                trim(e.message()),
                lost.map(|r| format!("; reported lost: {}", trim(&r))).unwrap_or_default()
            ));
            let snaps = worker::list(&mut c, ACTOR).await?;
            if let Some(s) = snaps.iter().find(|s| s.snapshot_id == s2) {
                ctx.note(format!("s2 exists ({})", s.state));
                if s.state == "complete" {
                    check_restorable(ctx, w, ACTOR, &super::Acked { id: s2.clone(), value: last }, &keep)
                        .await?;
                }
            }
        }
    }
    let k = worker::caps(&mut c).await?;
    if k.state == "running" {
        let live = Live { endpoint: k.host_endpoint.clone(), console: k.console.clone() };
        match worker::poke_dead(ctx.backend, &live).await {
            Ok(n) => {
                ctx.expect_count(&n, last + 1, "the workload reported running");
                ctx.note("the workload kept running");
            }
            Err(e) => ctx.problem(format!(
                "the worker reports its killed workload running, but it does not answer: {e:#}"
            )),
        }
        worker::delete(&mut c, ACTOR, true).await.context("stopping the workload")?;
    }
    expect_idle(ctx, w, "after the checkpoint").await?;
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    next_op(ctx, w).await
}

async fn during_restore(ctx: &mut Ctx<'_>) -> Result<()> {
    let p = Point::RestoreAfterSandbox;
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, Some(&format!("{}=1*sleep({HOLD_MS})", p.name())))?;
    let s1 = with_snapshot(ctx, w, ACTOR).await?;
    let keep = vec![s1.id.clone()];
    let off = ctx.wref(w).log_len();
    let mut c = ctx.client(w).await?;
    let (idf, kf) = (s1.id.clone(), keep.clone());
    let task = tokio::spawn(async move { worker::restore(&mut c, ACTOR, Some(&idf), None, &kf).await });
    wait_at(ctx, w, p, off, "").await?;
    let killed = kill_sandbox(ctx, w, Duration::from_millis(HOLD_MS - 500)).await;
    if killed.is_empty() {
        ctx.problem("no sandbox process was found after the restore started it");
    }
    match task.await? {
        Err(e) => {
            ctx.note(format!("killed {killed:?}; the restore failed: {:?}: {}", e.code(), trim(e.message())))
        }
        Ok((live, _)) => {
            if worker::poke_dead(ctx.backend, &live).await.is_ok() {
                ctx.problem("the killed sandbox still answers");
            }
            if ctx.backend.console_counter() {
                // No readiness probe after this point for a console guest: like a kill after
                // go-live, the death must be reported by the next operation.
                ctx.note(format!("killed {killed:?} after the backend restored it; the restore answered OK"));
            } else {
                ctx.problem(
                    "SILENT SUCCESS: the restore answered OK although its sandbox died before it was ready",
                );
            }
            checkpoint_of_dead(ctx, w, &keep).await?;
        }
    }
    expect_idle(ctx, w, "after the failed restore").await?;
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    ctx.note(format!("s1 still restores as {}", s1.value + 1));
    next_op(ctx, w).await
}
