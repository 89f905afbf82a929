//! The cases, and what every case shares: its context (workers, state directories, tmpfs
//! mounts, what it noticed), the continuity checks, and the end of every case — the
//! workers' own clean stop, the leak scan *before* the suite removes anything itself, then
//! the clean-up.
//!
//! The model every case checks: a client "acknowledges" a counter value when the counter
//! answered it, and a snapshot when a checkpoint answered OK (or when it is committed and the
//! worker names it). After any fault, the actor continues from the last acknowledged value
//! (answers exactly +1), or its state is reported lost with a reason when it really died with
//! its sandbox. An answer below the acknowledged value, or a restore that brings back a
//! snapshot other than the one asked for, is a **wrong resume**; a committed or acknowledged
//! snapshot that no longer restores is **lost acknowledged state**.

pub mod disk;
pub mod sandbox;
pub mod store;
pub mod worker_kill;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::env::{Backend, Env};
use crate::report::{CaseResult, Outcome};
use crate::sys;
use crate::worker::{self, Client, Live, Worker};

/// One case of the matrix.
#[derive(Clone, Debug)]
pub struct Def {
    pub name: String,
    pub backend: Backend,
    pub kind: Kind,
}

#[derive(Clone, Debug)]
pub enum Kind {
    WorkerKill(worker_kill::Point),
    SandboxKill(sandbox::Point),
    Disk(disk::Case),
    Store(store::Case),
}

impl Def {
    pub fn id(&self) -> String {
        format!("{}/{}", self.backend.name(), self.name)
    }
}

/// Every case of a backend, in the order they run.
pub fn all(backend: Backend) -> Vec<Def> {
    let mut out = Vec::new();
    for p in worker_kill::Point::ALL {
        out.push(Def { name: format!("worker-kill/{}", p.name()), backend, kind: Kind::WorkerKill(p) });
    }
    for p in sandbox::Point::ALL {
        out.push(Def { name: format!("sandbox-kill/{}", p.name()), backend, kind: Kind::SandboxKill(p) });
    }
    for c in disk::Case::ALL {
        out.push(Def { name: format!("enospc/{}", c.name()), backend, kind: Kind::Disk(c) });
    }
    // Object-store faults are backend-independent: they run on gVisor.
    if backend == Backend::Gvisor {
        for c in store::Case::all() {
            out.push(Def { name: format!("store/{}", c.name()), backend, kind: Kind::Store(c) });
        }
    }
    out
}

/// What a case works with and what it found.
pub struct Ctx<'e> {
    pub env: &'e Env,
    pub backend: Backend,
    pub dir: PathBuf,
    notes: Vec<String>,
    problems: Vec<String>,
    pub wrong_resumes: u32,
    pub lost_ack: u32,
    pub leaks: u32,
    workers: Vec<Worker>,
    states: Vec<PathBuf>,
    tmpfs: Vec<sys::Tmpfs>,
    fillers: Vec<PathBuf>,
    starts: u32,
    ids: u32,
    skip: Option<String>,
    /// Environment added to the workers this case starts.
    pub extra_env: Vec<(String, String)>,
}

/// A snapshot the client holds as acknowledged, and the counter value it holds.
#[derive(Clone, Debug)]
pub struct Acked {
    pub id: String,
    pub value: u64,
}

impl<'e> Ctx<'e> {
    fn new(env: &'e Env, backend: Backend, dir: PathBuf) -> Self {
        Ctx {
            env,
            backend,
            dir,
            notes: Vec::new(),
            problems: Vec::new(),
            wrong_resumes: 0,
            lost_ack: 0,
            leaks: 0,
            workers: Vec::new(),
            states: Vec::new(),
            tmpfs: Vec::new(),
            fillers: Vec::new(),
            starts: 0,
            ids: 0,
            skip: None,
            extra_env: Vec::new(),
        }
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    /// A check that failed (the case goes on, to report everything it sees).
    pub fn problem(&mut self, s: impl Into<String>) {
        self.problems.push(s.into());
    }

    /// The case cannot run here (said loudly, never counted as passed).
    pub fn skip(&mut self, why: impl Into<String>) {
        self.skip = Some(why.into());
    }

    /// A state directory on the ordinary disk.
    pub fn state_dir(&mut self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        self.states.push(p.clone());
        p
    }

    /// A state directory alone on a tmpfs of `size_mib` (mounted here, unmounted at the end of
    /// the case whatever happens). Returns (state dir, the tmpfs root to fill).
    pub fn tmpfs_state_dir(&mut self, name: &str, size_mib: u64) -> Result<(PathBuf, PathBuf)> {
        let disk = self.dir.join(format!("{name}-disk"));
        self.tmpfs.push(sys::Tmpfs::mount(&disk, size_mib)?);
        let state = disk.join("s");
        self.states.push(state.clone());
        Ok((state, disk))
    }

    /// Fills the tmpfs at `disk` until at most `leave` bytes are free.
    pub fn fill(&mut self, disk: &Path, leave: u64) -> Result<()> {
        let files = sys::fill(disk, leave)?;
        self.fillers.extend(files);
        Ok(())
    }

    /// Uses up the inodes of the tmpfs at `disk` (until [`Ctx::unfill`]).
    pub fn exhaust_inodes(&mut self, disk: &Path) -> Result<()> {
        let d = sys::exhaust_inodes(disk)?;
        self.fillers.push(d);
        Ok(())
    }

    pub fn unfill(&mut self) {
        sys::unfill(&mut self.fillers);
    }

    /// Starts `ateom serve` on `state`, with `FAILPOINTS` when given. Returns its index.
    pub fn start(&mut self, state: &Path, failpoints: Option<&str>) -> Result<usize> {
        self.starts += 1;
        let n = self.starts;
        let mut env = self.env.worker_env();
        env.extend(self.extra_env.iter().cloned());
        let w = Worker::start(
            &self.env.tools.ateom,
            &self.env.worker_args(self.backend),
            &env,
            state,
            &self.dir.join(format!("w{n}.sock")),
            &self.dir.join(format!("w{n}.log")),
            failpoints,
        )?;
        self.workers.push(w);
        Ok(self.workers.len() - 1)
    }

    pub fn w(&mut self, i: usize) -> &mut Worker {
        &mut self.workers[i]
    }

    pub fn wref(&self, i: usize) -> &Worker {
        &self.workers[i]
    }

    pub async fn client(&self, i: usize) -> Result<Client> {
        self.workers[i].client().await
    }

    /// A fresh snapshot id; ids of one case sort by creation.
    pub fn snap_id(&mut self, tag: &str) -> String {
        self.ids += 1;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        format!("{ms}-{:02}-{tag}", self.ids)
    }

    /// A store prefix of this case.
    pub fn prefix(&self, tag: &str) -> String {
        format!(
            "s3://{}/{}-{tag}",
            crate::env::BUCKET,
            self.dir.file_name().unwrap_or_default().to_string_lossy()
        )
    }

    /// The key under the bucket of an object of `prefix`.
    pub fn key(prefix: &str, rest: &str) -> String {
        let p = prefix.trim_start_matches("s3://").split_once('/').map(|(_, p)| p).unwrap_or_default();
        format!("{p}/{rest}")
    }

    /// Checks a counter answer: exactly `want`. Below is a wrong resume.
    pub fn expect_count(&mut self, got: &worker::Count, want: u64, what: &str) {
        if got.memory < want || got.file < want {
            self.wrong_resumes += 1;
            self.problem(format!(
                "WRONG RESUME: {what} answered memory {} / file {}, below the acknowledged {}",
                got.memory,
                got.file,
                want - 1
            ));
        } else if got.memory != want || got.file != want {
            self.problem(format!(
                "{what} answered memory {} / file {}, expected {want}",
                got.memory, got.file
            ));
        }
    }

    /// Increments the counter and checks it answers `want`.
    pub async fn poke(&mut self, live: &Live, want: u64, what: &str) -> Result<()> {
        let got = worker::poke(self.backend, live).await.with_context(|| format!("{what}: the counter"))?;
        self.expect_count(&got, want, what);
        Ok(())
    }
}

/// Runs an actor, counts to 3, and checkpoints it (LOCAL) as an acknowledged snapshot. The
/// worker is idle afterwards.
pub async fn with_snapshot(ctx: &mut Ctx<'_>, w: usize, actor: &str) -> Result<Acked> {
    let mut c = ctx.client(w).await?;
    let live = worker::run(&mut c, ctx.backend, &ctx.env.image, actor).await.context("setup: run")?;
    for i in 1..=3 {
        ctx.poke(&live, i, "setup").await?;
    }
    let id = ctx.snap_id("s1");
    worker::checkpoint(&mut c, actor, &id, None, std::slice::from_ref(&id))
        .await
        .context("setup: checkpoint")?;
    Ok(Acked { id, value: 3 })
}

/// [`with_snapshot`], then restored and counted on to 5: a running actor whose last
/// acknowledged value (5) is newer than its acknowledged snapshot (3).
pub async fn running_after_restore(ctx: &mut Ctx<'_>, w: usize, actor: &str) -> Result<(Acked, Live, u64)> {
    let s1 = with_snapshot(ctx, w, actor).await?;
    let mut c = ctx.client(w).await?;
    let (live, _) = worker::restore(&mut c, actor, Some(&s1.id), None, std::slice::from_ref(&s1.id))
        .await
        .context("setup: restore")?;
    ctx.poke(&live, 4, "setup after restore").await?;
    ctx.poke(&live, 5, "setup after restore").await?;
    Ok((s1, live, 5))
}

/// Restores an acknowledged (or committed) snapshot by id and checks it continues from its
/// value; then stops it, keeping the snapshots. A snapshot that no longer restores is lost
/// acknowledged state; another snapshot coming back is a wrong resume.
pub async fn check_restorable(
    ctx: &mut Ctx<'_>,
    w: usize,
    actor: &str,
    s: &Acked,
    keep: &[String],
) -> Result<()> {
    let mut c = ctx.client(w).await?;
    let mut r = worker::restore(&mut c, actor, Some(&s.id), None, keep).await;
    if let Err(e) = &r
        && e.code() == tonic::Code::FailedPrecondition
        && e.message().contains("busy")
    {
        // Not the snapshot's fault: the worker still holds a workload (one it believes runs).
        ctx.problem(format!(
            "the worker is still busy when snapshot {} is restored ({}): the actor is deleted to check the snapshot",
            short(&s.id),
            e.message()
        ));
        worker::delete(&mut c, actor, true).await.context("deleting the workload the worker still holds")?;
        r = worker::restore(&mut c, actor, Some(&s.id), None, keep).await;
    }
    match r {
        Ok((live, resp)) => {
            if resp.snapshot_id != s.id {
                ctx.wrong_resumes += 1;
                ctx.problem(format!("WRONG RESUME: asked for snapshot {}, got {}", s.id, resp.snapshot_id));
            }
            ctx.poke(&live, s.value + 1, &format!("snapshot {}", short(&s.id))).await?;
            worker::delete(&mut c, actor, true).await.context("stopping the restored actor")?;
        }
        Err(e) => {
            ctx.lost_ack += 1;
            ctx.problem(format!(
                "LOST: snapshot {} (value {}) no longer restores: {:?}: {}",
                short(&s.id),
                s.value,
                e.code(),
                e.message()
            ));
        }
    }
    Ok(())
}

/// The next operation on the worker works: a fresh actor runs and answers 1, and is deleted;
/// the worker is idle again.
pub async fn next_op(ctx: &mut Ctx<'_>, w: usize) -> Result<()> {
    let mut c = ctx.client(w).await?;
    let live = match worker::run(&mut c, ctx.backend, &ctx.env.image, "next").await {
        Ok(l) => l,
        Err(e) => {
            ctx.problem(format!("the next run on the worker failed: {:?}: {}", e.code(), e.message()));
            return Ok(());
        }
    };
    ctx.poke(&live, 1, "a fresh run").await?;
    worker::delete(&mut c, "next", false).await.context("deleting the fresh run")?;
    expect_idle(ctx, w, "after the fresh run").await
}

/// The worker reports `idle`.
pub async fn expect_idle(ctx: &mut Ctx<'_>, w: usize, when: &str) -> Result<()> {
    let mut c = ctx.client(w).await?;
    let k = worker::caps(&mut c).await?;
    if k.state != "idle" {
        ctx.problem(format!("{when}: the worker reports {:?} ({}), not idle", k.state, k.running_actor));
    }
    Ok(())
}

/// `lost_actors` names the actor: its reason.
pub fn lost_reason(k: &ateom_proto::GetCapabilitiesResponse, actor: &str) -> Option<String> {
    k.lost_actors.iter().rev().find(|l| l.actor == worker::actor_ref(actor)).map(|l| l.reason.clone())
}

/// The snapshot `LATEST` under `prefix` names, read from the S3 server's files (a JSON
/// document `{"snapshot_id": ...}`, or a bare id).
pub fn latest(env: &Env, prefix: &str) -> Option<String> {
    let s3 = env.s3.as_ref()?;
    let text = std::fs::read_to_string(s3.object(&Ctx::key(prefix, "LATEST"))).ok()?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => v["snapshot_id"].as_str().map(str::to_owned),
        Err(_) => Some(text.trim().to_owned()),
    }
}

/// The tail of a snapshot id (ids carry a timestamp first).
pub fn short(id: &str) -> &str {
    id.split_once('-').map(|(_, t)| t).unwrap_or(id)
}

/// Set when the suite is told to stop (SIGINT, SIGTERM): the case under way ends at once and
/// is cleaned up like any other; no further case starts.
pub fn interrupted() -> &'static tokio::sync::watch::Sender<bool> {
    static TX: std::sync::OnceLock<tokio::sync::watch::Sender<bool>> = std::sync::OnceLock::new();
    TX.get_or_init(|| tokio::sync::watch::channel(false).0)
}

/// Runs one case: its body under a deadline, then the end every case shares.
pub async fn run(env: &Env, def: &Def, seq: usize) -> CaseResult {
    let start = Instant::now();
    let dir = env.root.join(format!("c{seq:03}"));
    let mut ctx = Ctx::new(env, def.backend, dir.clone());
    let result = match env.unavailable(def.backend) {
        Some(why) => {
            ctx.skip(why);
            Ok(())
        }
        None => match std::fs::create_dir_all(&dir) {
            Err(e) => Err(anyhow::anyhow!("creating {}: {e}", dir.display())),
            Ok(()) => {
                use futures::FutureExt;
                let limit = crate::env::case_limit(def.backend);
                let mut stop = interrupted().subscribe();
                // A panic in a case is a failed case: the clean-up below still runs.
                let guarded = std::panic::AssertUnwindSafe(body(&mut ctx, def)).catch_unwind();
                tokio::select! {
                    r = tokio::time::timeout(limit, guarded) => match r {
                        Ok(Ok(r)) => r,
                        Ok(Err(panic)) => Err(anyhow::anyhow!(
                            "the case panicked: {}",
                            panic.downcast_ref::<String>().map(String::as_str)
                                .or_else(|| panic.downcast_ref::<&str>().copied()).unwrap_or("?")
                        )),
                        Err(_) => Err(anyhow::anyhow!("the case did not finish within {limit:?}")),
                    },
                    _ = stop.wait_for(|v| *v) => Err(anyhow::anyhow!("interrupted (SIGINT/SIGTERM)")),
                }
            }
        },
    };
    if let Err(e) = &result {
        ctx.problem(format!("{e:#}"));
    }
    finish(&mut ctx).await;
    let outcome = if ctx.skip.is_some() {
        Outcome::Skipped
    } else if ctx.problems.is_empty() && ctx.wrong_resumes == 0 && ctx.lost_ack == 0 && ctx.leaks == 0 {
        Outcome::Passed
    } else {
        Outcome::Failed
    };
    let mut detail = match (&ctx.skip, outcome) {
        (Some(why), _) => format!("SKIPPED: {why}"),
        (None, Outcome::Failed) => format!("FAILED: {}", ctx.problems.join("; ")),
        _ => String::new(),
    };
    if !ctx.notes.is_empty() && ctx.skip.is_none() {
        if !detail.is_empty() {
            detail.push_str(" | ");
        }
        detail.push_str(&ctx.notes.join("; "));
    }
    if outcome == Outcome::Failed {
        detail.push_str(&format!(" | logs kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    CaseResult {
        name: def.name.clone(),
        backend: def.backend.name().into(),
        outcome,
        detail,
        elapsed_ms: start.elapsed().as_millis() as u64,
        wrong_resumes: ctx.wrong_resumes,
        lost_acknowledged_state: ctx.lost_ack,
        leaks: ctx.leaks,
    }
}

async fn body(ctx: &mut Ctx<'_>, def: &Def) -> Result<()> {
    match &def.kind {
        Kind::WorkerKill(p) => worker_kill::run(ctx, *p).await,
        Kind::SandboxKill(p) => sandbox::run(ctx, *p).await,
        Kind::Disk(c) => disk::run(ctx, *c).await,
        Kind::Store(c) => store::run(ctx, c).await,
    }
}

/// The end of every case: each worker stops by itself (SIGTERM; `--on-exit stop` deletes its
/// workload), then whatever is left of any of the case's state directories is counted as a
/// leak — before the suite removes anything itself — and then removed regardless.
async fn finish(ctx: &mut Ctx<'_>) {
    if let Some(p) = ctx.env.proxy.as_ref() {
        p.clear();
    }
    let mut unstoppable = Vec::new();
    for w in &mut ctx.workers {
        if w.alive() && !w.stop(Duration::from_secs(45)).await {
            unstoppable.push(w.pid);
        }
    }
    for pid in unstoppable {
        ctx.problem(format!("worker {pid} did not stop within 45 s of SIGTERM (killed)"));
    }
    // The sandbox's own processes may take a moment to be reaped after the worker's delete.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left = Vec::new();
    loop {
        left.clear();
        for s in &ctx.states {
            for item in sys::leftovers(s) {
                left.push(format!("{item} [state {}]", s.display()));
            }
        }
        if left.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !left.is_empty() {
        ctx.leaks += left.len() as u32;
        let listed = left.join(", ");
        ctx.problem(format!("LEAKS after the workers' own teardown: {listed}"));
    }
    ctx.workers.clear();
    for s in ctx.states.clone() {
        sys::clean(&s);
        let _ = std::fs::remove_dir_all(&s);
    }
    ctx.unfill();
    for mut t in ctx.tmpfs.drain(..) {
        if let Err(e) = t.unmount() {
            ctx.problems.push(format!("{e:#}"));
        }
    }
}

/// Polls `f` until it is true or `limit` passes.
pub async fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("{what} did not happen within {limit:?}")
}
