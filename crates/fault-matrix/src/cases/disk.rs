//! ENOSPC at each write: the state directory alone on a small tmpfs the suite mounts (and
//! unmounts at the end of the case, also on failure), filled with filler files at the right
//! moment.

use std::time::Duration;

use anyhow::{Context, Result};
use tonic::Code;

use super::{Acked, Ctx, check_restorable, expect_idle, next_op, running_after_restore, short};
use crate::env::Backend;
use crate::worker;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// Not enough space for the snapshot: refused before freezing, the workload keeps running.
    CheckpointRefused,
    /// The disk fills right after the capture: gVisor quarantines it (RecoverSnapshots commits
    /// it once space is back); a VMM resumes the VM.
    FullAfterCapture,
    /// A durable restore onto a full disk: fails leaving nothing partial, works once freed.
    PullFull,
    /// The run's journal record cannot be written: the run fails cleanly.
    RunJournalFull,
    /// The disk fills up under a running workload: it keeps running and counting, a
    /// checkpoint is refused, and works once space is freed.
    FullWhileRunning,
}

impl Case {
    pub const ALL: [Case; 5] = [
        Case::CheckpointRefused,
        Case::FullAfterCapture,
        Case::PullFull,
        Case::RunJournalFull,
        Case::FullWhileRunning,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::CheckpointRefused => "checkpoint-refused-before-freeze",
            Case::FullAfterCapture => "full-after-capture",
            Case::PullFull => "pull-onto-full-disk",
            Case::RunJournalFull => "run-journal-unwritable",
            Case::FullWhileRunning => "disk-full-while-running",
        }
    }
}

const ACTOR: &str = "a1";
const HOLD_MS: u64 = 4000;

/// The tmpfs for a backend's state dir: room for its caches, a running workload and two
/// snapshots (QEMU's guest RAM file lives in the state dir too).
fn tmpfs_mib(backend: Backend) -> u64 {
    match backend {
        Backend::Gvisor => 192,
        Backend::Qemu => 1024,
        Backend::Firecracker => 512,
    }
}

pub async fn run(ctx: &mut Ctx<'_>, c: Case) -> Result<()> {
    match c {
        Case::CheckpointRefused => refused(ctx).await,
        Case::FullAfterCapture => after_capture(ctx).await,
        Case::PullFull => pull_full(ctx).await,
        Case::RunJournalFull => run_full(ctx).await,
        Case::FullWhileRunning => full_while_running(ctx).await,
    }
}

async fn refused(ctx: &mut Ctx<'_>) -> Result<()> {
    let (state, disk) = ctx.tmpfs_state_dir("d", tmpfs_mib(ctx.backend))?;
    let w = ctx.start(&state, None)?;
    let (s1, live, last) = running_after_restore(ctx, w, ACTOR).await?;
    // Less than the worker's reserve (--min-free-mib 64) is left.
    ctx.fill(&disk, 16 << 20)?;
    let s2 = ctx.snap_id("s2");
    let keep = vec![s1.id.clone(), s2.clone()];
    let mut c = ctx.client(w).await?;
    match worker::checkpoint(&mut c, ACTOR, &s2, None, &keep).await {
        Ok(_) => ctx.problem("the checkpoint was not refused with 16 MiB free"),
        Err(e) if e.code() == Code::ResourceExhausted => {
            ctx.note(format!("refused: RESOURCE_EXHAUSTED ({})", super_trim(e.message())))
        }
        Err(e) => {
            ctx.problem(format!("refused with {:?} instead of RESOURCE_EXHAUSTED: {}", e.code(), e.message()))
        }
    }
    ctx.poke(&live, last + 1, "the workload after the refusal").await?;
    let snaps = worker::list(&mut c, ACTOR).await?;
    if snaps.iter().any(|s| s.snapshot_id == s2) {
        ctx.problem("the refused checkpoint left snapshot s2");
    }
    ctx.unfill();
    let s3 = ctx.snap_id("s3");
    let keep = vec![s1.id.clone(), s3.clone()];
    worker::checkpoint(&mut c, ACTOR, &s3, None, &keep).await.context("checkpoint after freeing space")?;
    check_restorable(ctx, w, ACTOR, &Acked { id: s3, value: last + 1 }, &keep).await?;
    ctx.note(format!("kept counting ({}), checkpointed once space was freed", last + 1));
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    next_op(ctx, w).await
}

fn super_trim(s: &str) -> String {
    s.chars().take(160).collect()
}

async fn after_capture(ctx: &mut Ctx<'_>) -> Result<()> {
    let (state, disk) = ctx.tmpfs_state_dir("d", tmpfs_mib(ctx.backend))?;
    let w = ctx.start(&state, Some(&format!("checkpoint-after-freeze=1*off->1*sleep({HOLD_MS})")))?;
    let (s1, live, last) = running_after_restore(ctx, w, ACTOR).await?;
    let s2 = ctx.snap_id("s2");
    let keep = vec![s1.id.clone(), s2.clone()];
    let off = ctx.wref(w).log_len();
    let mut c = ctx.client(w).await?;
    let (sf, kf) = (s2.clone(), keep.clone());
    let mut cc = c.clone();
    let task = tokio::spawn(async move { worker::checkpoint(&mut cc, ACTOR, &sf, None, &kf).await });
    ctx.wref(w).wait_log(off, "backend checkpoint done", Duration::from_secs(120)).await?;
    ctx.fill(&disk, 0)?;
    // The commit punches holes into zero runs (a dense VMM memory file has many), which frees
    // blocks; with no inode left, its manifest cannot be created all the same.
    ctx.exhaust_inodes(&disk)?;
    let result = task.await?;
    let vmm = ctx.backend != Backend::Gvisor;
    match (&result, vmm) {
        (Ok(_), _) => {
            ctx.problem("the commit succeeded on a full disk: the fault was not exercised");
        }
        (Err(e), false) => {
            if !e.message().contains("quarantine") {
                ctx.problem(format!("the error does not say quarantined: {:?}: {}", e.code(), e.message()));
            }
            ctx.note(format!("checkpoint failed: {:?}: {}", e.code(), super_trim(e.message())));
            let snaps = worker::list(&mut c, ACTOR).await?;
            match snaps.iter().find(|s| s.snapshot_id == s2).map(|s| s.state.as_str()) {
                Some("quarantined") => ctx.note("ListSnapshots shows s2 quarantined"),
                other => ctx.problem(format!("ListSnapshots shows s2 as {other:?}, not quarantined")),
            }
        }
        (Err(e), true) => {
            if !e.message().contains("resumed") {
                ctx.problem(format!("the error does not say resumed: {:?}: {}", e.code(), e.message()));
            }
            ctx.note(format!("checkpoint failed: {:?}: {}", e.code(), super_trim(e.message())));
        }
    }
    if vmm && result.is_err() {
        match worker::poke(ctx.backend, &live).await {
            Ok(n) => {
                ctx.expect_count(&n, last + 1, "the resumed workload (disk still full)");
            }
            Err(e) => ctx.problem(format!("the resumed workload does not answer with the disk full: {e:#}")),
        }
    }
    ctx.unfill();
    if !vmm && result.is_err() {
        let r = worker::recover(&mut c).await?;
        if r.recovered.iter().any(|x| x.ends_with(&format!("/{s2}"))) {
            ctx.note("RecoverSnapshots committed s2");
        } else {
            ctx.problem(format!(
                "RecoverSnapshots did not commit s2: {:?} / {:?}",
                r.recovered, r.still_quarantined
            ));
        }
        check_restorable(ctx, w, ACTOR, &Acked { id: s2.clone(), value: last }, &keep).await?;
        ctx.note(format!("s2 restores as {}", last + 1));
    } else if vmm && result.is_err() {
        let k = worker::caps(&mut c).await?;
        if k.state != "running" {
            ctx.problem(format!("after the resumed checkpoint the worker reports {:?}", k.state));
        } else {
            let s3 = ctx.snap_id("s3");
            let keep = vec![s1.id.clone(), s3.clone()];
            worker::checkpoint(&mut c, ACTOR, &s3, None, &keep)
                .await
                .context("checkpoint after freeing space")?;
            check_restorable(ctx, w, ACTOR, &Acked { id: s3.clone(), value: last + 1 }, &keep).await?;
            ctx.note(format!("kept running; s3 ({}) checkpointed once space was freed", short(&s3)));
        }
    } else if let Ok(resp) = &result {
        let id = resp.manifest.as_ref().map(|m| m.snapshot_id.clone()).unwrap_or_default();
        check_restorable(ctx, w, ACTOR, &Acked { id, value: last }, &keep).await?;
    }
    expect_idle(ctx, w, "after the checks").await?;
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    next_op(ctx, w).await
}

async fn pull_full(ctx: &mut Ctx<'_>) -> Result<()> {
    let (prefix, acked) = super::worker_kill::pushed_snapshot(ctx).await?;
    let (sb, disk) = ctx.tmpfs_state_dir("b", tmpfs_mib(ctx.backend))?;
    let b = ctx.start(&sb, None)?;
    ctx.fill(&disk, 0)?;
    let mut c = ctx.client(b).await?;
    match worker::restore(&mut c, ACTOR, None, Some(&prefix), &[]).await {
        Ok(_) => ctx.problem("the restore succeeded onto a full disk"),
        Err(e) => {
            ctx.note(format!("pull onto the full disk failed: {:?}: {}", e.code(), super_trim(e.message())));
            if e.code() != Code::ResourceExhausted {
                ctx.problem(format!("a full disk is reported as {:?}, not RESOURCE_EXHAUSTED", e.code()));
            }
        }
    }
    let left = worker::snapshot_entries(&sb, ACTOR);
    let pulled = std::fs::read_dir(sb.join("cache/pulled")).map(|d| d.count()).unwrap_or(0);
    if !left.is_empty() || pulled > 0 {
        ctx.problem(format!("the failed pull left {left:?} (and {pulled} entries in cache/pulled)"));
    }
    expect_idle(ctx, b, "after the failed pull").await?;
    ctx.unfill();
    match worker::restore(&mut c, ACTOR, None, Some(&prefix), &[]).await {
        Ok((live, resp)) => {
            if resp.snapshot_id != acked.id {
                ctx.wrong_resumes += 1;
                ctx.problem(format!("WRONG RESUME: restored {} instead of {}", resp.snapshot_id, acked.id));
            }
            ctx.poke(&live, acked.value + 1, "the pulled snapshot").await?;
            ctx.note(format!("after freeing, the pull restored s1 as {}", acked.value + 1));
            worker::delete(&mut c, ACTOR, true).await?;
        }
        Err(e) => {
            ctx.lost_ack += 1;
            ctx.problem(format!(
                "LOST: the pushed snapshot does not restore after freeing: {:?}: {}",
                e.code(),
                e.message()
            ));
        }
    }
    next_op(ctx, b).await
}

async fn run_full(ctx: &mut Ctx<'_>) -> Result<()> {
    let (state, disk) = ctx.tmpfs_state_dir("d", tmpfs_mib(ctx.backend))?;
    let w = ctx.start(&state, Some(&format!("run-after-start=1*sleep({HOLD_MS})")))?;
    let off = ctx.wref(w).log_len();
    let mut c = ctx.client(w).await?;
    let (backend, image) = (ctx.backend, ctx.env.image.clone());
    let mut cc = c.clone();
    let task = tokio::spawn(async move { worker::run(&mut cc, backend, &image, ACTOR).await });
    ctx.wref(w).wait_log(off, backend.started_marker(), Duration::from_secs(120)).await?;
    // runsc is still creating the sandbox when the backend returns: the disk fills once the
    // sandbox is up, so that the write that fails is the worker's journal record.
    if backend == Backend::Gvisor {
        super::wait_for(Duration::from_secs(2), "the sandbox process", || {
            !crate::sys::sandbox_processes(&state, backend).is_empty()
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    ctx.fill(&disk, 0)?;
    match task.await? {
        Ok(live) => {
            ctx.problem("the run answered OK although its journal record could not be written");
            let _ = worker::poke(ctx.backend, &live).await;
            let _ = worker::delete(&mut c, ACTOR, false).await;
        }
        Err(e) if e.message().contains("SIGBUS") => {
            // The guest RAM file lives on the state dir's file system.
            ctx.note(format!(
                "NOTE: the microVM died of SIGBUS before the journal write (its RAM file is on the full disk): {:?}: {}",
                e.code(),
                super_trim(e.message())
            ));
        }
        Err(e) => {
            ctx.note(format!("the run failed: {:?}: {}", e.code(), super_trim(e.message())));
            if e.code() != Code::ResourceExhausted {
                ctx.problem(format!("a full disk is reported as {:?}, not RESOURCE_EXHAUSTED", e.code()));
            }
        }
    }
    expect_idle(ctx, w, "after the failed run").await?;
    let alive = crate::sys::sandbox_processes(&state, ctx.backend);
    if !alive.is_empty() {
        ctx.problem(format!(
            "the failed run left its sandbox: {:?}",
            alive.iter().map(|p| p.pid).collect::<Vec<_>>()
        ));
    }
    ctx.unfill();
    next_op(ctx, w).await
}

async fn full_while_running(ctx: &mut Ctx<'_>) -> Result<()> {
    let (state, disk) = ctx.tmpfs_state_dir("d", tmpfs_mib(ctx.backend))?;
    let w = ctx.start(&state, None)?;
    let (s1, live, last) = running_after_restore(ctx, w, ACTOR).await?;
    ctx.fill(&disk, 0)?;
    let mut c = ctx.client(w).await?;
    let mut n = last;
    let mut died = false;
    for _ in 0..10 {
        match worker::poke(ctx.backend, &live).await {
            Ok(got) => {
                n += 1;
                ctx.expect_count(&got, n, "the workload on a full disk");
            }
            Err(e) => {
                let k = worker::caps(&mut c).await?;
                let lost = super::lost_reason(&k, ACTOR)
                    .map(|r| format!("reported lost: {r}"))
                    .unwrap_or_else(|| "not reported lost".into());
                let alive = !crate::sys::sandbox_processes(&state, ctx.backend).is_empty();
                ctx.problem(format!(
                    "a full state disk stopped the running workload (acknowledged {n}): {e:#}; its sandbox process is \
                     {}; the worker reports {:?}, {lost}",
                    if alive { "alive" } else { "gone" },
                    k.state
                ));
                died = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let s2 = ctx.snap_id("s2");
    let keep = vec![s1.id.clone(), s2.clone()];
    match worker::checkpoint(&mut c, ACTOR, &s2, None, &keep).await {
        Ok(_) => ctx.problem("a checkpoint on a full disk answered OK"),
        Err(e) if e.code() == Code::ResourceExhausted => {
            if died {
                ctx.problem(format!(
                    "the refusal says the workload keeps running, though it is dead: {}",
                    super_trim(e.message())
                ));
            }
        }
        Err(e) => {
            ctx.problem(format!("a checkpoint on a full disk failed with {:?}: {}", e.code(), e.message()))
        }
    }
    ctx.unfill();
    if died {
        // Whatever the worker believes, the workload is gone: it must say so now.
        match worker::checkpoint(&mut c, ACTOR, &s2, None, &keep).await {
            Ok(_) => ctx.problem("SILENT SUCCESS: a checkpoint of the dead workload answered OK"),
            Err(e) => ctx.note(format!(
                "once freed, the checkpoint failed: {:?}: {}",
                e.code(),
                super_trim(e.message())
            )),
        }
        let k = worker::caps(&mut c).await?;
        if k.state == "running" {
            worker::delete(&mut c, ACTOR, true).await?;
        }
    } else {
        let k = worker::caps(&mut c).await?;
        if k.state == "running" {
            ctx.poke(&live, n + 1, "the workload after freeing").await?;
            n += 1;
            worker::checkpoint(&mut c, ACTOR, &s2, None, &keep)
                .await
                .context("checkpoint after freeing space")?;
            check_restorable(ctx, w, ACTOR, &Acked { id: s2, value: n }, &keep).await?;
            ctx.note(format!(
                "kept counting to {n} on the full disk, checkpoint refused, then taken once freed"
            ));
        } else {
            ctx.problem(format!("after freeing the worker reports {:?}", k.state));
        }
    }
    check_restorable(ctx, w, ACTOR, &s1, &keep).await?;
    next_op(ctx, w).await
}
