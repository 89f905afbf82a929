//! Object-store faults through the fault proxy in front of the real S3 server (s3s-fs): 5xx,
//! 429, a stall past the request timeout, a truncated body (a cut upload for writes) and a
//! connection reset, at the index, `LATEST` and chunk writes (a DURABLE checkpoint) and reads
//! (a durable restore on a fresh node). Each case runs the fault once (transient: retried, the
//! operation succeeds byte for byte) and then on every request (persistent: a push fails with
//! the local snapshot kept and restorable, a pull fails leaving nothing partial), and the
//! operation succeeds again once the fault is cleared.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sha2::Digest;

use super::{Acked, Ctx, check_restorable, next_op, short};
use crate::worker::{self, Live};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Index,
    Latest,
    Chunk,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Index => "index",
            Target::Latest => "LATEST",
            Target::Chunk => "chunk",
        }
    }
    fn path(self) -> &'static str {
        match self {
            Target::Index => "/index.json",
            Target::Latest => "/LATEST",
            Target::Chunk => "/chunks/",
        }
    }
    /// A cut inside the object's body.
    fn cut(self) -> u64 {
        match self {
            Target::Chunk => 1000,
            Target::Index => 100,
            Target::Latest => 10,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Status5xx,
    Status429,
    Stall,
    Truncate,
    Reset,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Status5xx => "5xx",
            Fault::Status429 => "429",
            Fault::Stall => "stall",
            Fault::Truncate => "truncated",
            Fault::Reset => "reset",
        }
    }

    /// The proxy action: transient faults answer 503, persistent ones 500 (both 5xx).
    fn action(self, target: Target, write: bool, transient: bool) -> Value {
        match self {
            Fault::Status5xx => json!({"type": "status", "status": if transient { 503 } else { 500 }}),
            Fault::Status429 => json!({"type": "status", "status": 429, "retry_after_secs": 1}),
            // Past the request timeout of this case's workers (STALL_TIMEOUT).
            Fault::Stall => json!({"type": "stall", "ms": 3000}),
            Fault::Truncate if write => json!({"type": "drop_request_body", "after_bytes": target.cut() / 2}),
            Fault::Truncate => json!({"type": "truncate", "after_bytes": target.cut()}),
            Fault::Reset => json!({"type": "reset"}),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Case {
    pub write: bool,
    pub target: Target,
    pub fault: Fault,
}

impl Case {
    pub fn all() -> Vec<Case> {
        let mut out = Vec::new();
        for write in [true, false] {
            for target in [Target::Index, Target::Latest, Target::Chunk] {
                for fault in [Fault::Status5xx, Fault::Status429, Fault::Stall, Fault::Truncate, Fault::Reset]
                {
                    out.push(Case { write, target, fault });
                }
            }
        }
        out
    }

    pub fn name(&self) -> String {
        format!("{}/{}/{}", if self.write { "push" } else { "pull" }, self.target.name(), self.fault.name())
    }

    fn rule(&self, transient: bool) -> Value {
        json!([{
            "method": if self.write { "PUT" } else { "GET" },
            "path_contains": self.target.path(),
            "occurrence": if transient { json!({"first": 1}) } else { json!("every") },
            "action": self.fault.action(self.target, self.write, transient),
        }])
    }
}

const ACTOR: &str = "a1";
/// The object store's request timeout for the workers of stall cases (shorter than the
/// suite's default, so that a persistent stall gives up sooner).
const STALL_TIMEOUT: &str = "1s";

pub async fn run(ctx: &mut Ctx<'_>, c: &Case) -> Result<()> {
    if ctx.env.proxy.is_none() {
        let why = ctx.env.s3_missing.clone().unwrap_or_default();
        ctx.skip(format!("no S3 server: {why}"));
        return Ok(());
    }
    if c.fault == Fault::Stall {
        ctx.extra_env.push(("AWS_TIMEOUT".into(), STALL_TIMEOUT.into()));
    }
    if c.write { push(ctx, c).await } else { pull(ctx, c).await }
}

fn latest(ctx: &Ctx<'_>, prefix: &str) -> Option<String> {
    super::latest(ctx.env, prefix)
}

fn index_written(ctx: &Ctx<'_>, prefix: &str, id: &str) -> bool {
    ctx.env.s3.as_ref().is_some_and(|s3| s3.object(&Ctx::key(prefix, &format!("{id}/index.json"))).is_file())
}

/// DURABLE checkpoints through the faults; the snapshots' acknowledged values: s0 = 3 (pushed
/// cleanly), s1 = 5 (transient fault: pushed after a retry), s2 = 6 (persistent fault: kept
/// locally only), s3 = 7 (pushed after the fault cleared).
async fn push(ctx: &mut Ctx<'_>, case: &Case) -> Result<()> {
    let env = ctx.env;
    let proxy = env.proxy()?;
    let state = ctx.state_dir("s");
    let w = ctx.start(&state, None)?;
    let prefix = ctx.prefix("p");
    let mut c = ctx.client(w).await?;
    let live = worker::run(&mut c, ctx.backend, &env.image, ACTOR).await.context("setup: run")?;
    for i in 1..=3 {
        ctx.poke(&live, i, "setup").await?;
    }
    let s0 = ctx.snap_id("s0");
    worker::checkpoint(&mut c, ACTOR, &s0, Some(&prefix), &[])
        .await
        .context("setup: clean durable checkpoint")?;
    let mut keep = vec![s0.clone()];
    let (live, _) = worker::restore(&mut c, ACTOR, Some(&s0), None, &keep).await.context("setup: restore")?;
    ctx.poke(&live, 4, "setup").await?;
    ctx.poke(&live, 5, "setup").await?;

    // Transient: the first matching request fails, the retry succeeds.
    proxy.set(case.rule(true))?;
    let s1 = ctx.snap_id("s1");
    keep.push(s1.clone());
    let r = worker::checkpoint(&mut c, ACTOR, &s1, Some(&prefix), &keep).await;
    let applied = proxy.applied(0);
    proxy.clear();
    let s1_manifest = match r {
        Ok(resp) => {
            if applied != 1 {
                ctx.problem(format!("transient: the fault was applied {applied} times, not once"));
            }
            if latest(ctx, &prefix).as_deref() != Some(s1.as_str()) {
                ctx.problem(format!("transient: LATEST is {:?} after the push of s1", latest(ctx, &prefix)));
            }
            resp.manifest
        }
        Err(e) => {
            ctx.problem(format!(
                "transient: the push was not retried into success: {:?}: {}",
                e.code(),
                e.message()
            ));
            None
        }
    };
    // s1 holds 5 locally; it restores and counts on.
    let (live, _) =
        worker::restore(&mut c, ACTOR, Some(&s1), None, &keep).await.context("restoring s1 locally")?;
    ctx.poke(&live, 6, "restored s1").await?;

    // Persistent: every matching request fails; the push gives up, the local snapshot stays.
    proxy.set(case.rule(false))?;
    let s2 = ctx.snap_id("s2");
    keep.push(s2.clone());
    let r = worker::checkpoint(&mut c, ACTOR, &s2, Some(&prefix), &keep).await;
    let applied = proxy.applied(0);
    proxy.clear();
    let latest_now = latest(ctx, &prefix);
    let s2_local = match r {
        Ok(_) => {
            ctx.problem(format!("persistent: the push succeeded through a fault applied {applied} times"));
            true
        }
        Err(e) => {
            let kept = e.message().contains("kept on this node");
            if !kept {
                ctx.problem(format!(
                    "persistent: the error does not say the snapshot is kept: {:?}: {}",
                    e.code(),
                    e.message()
                ));
            }
            ctx.note(format!(
                "persistent ({applied} faults): {:?}: …{}",
                e.code(),
                e.message()
                    .split("shipping it failed:")
                    .nth(1)
                    .unwrap_or(e.message())
                    .chars()
                    .take(140)
                    .collect::<String>()
            ));
            kept
        }
    };
    // LATEST never names a snapshot whose push failed, nor moves back.
    let expect_latest = if s1_manifest.is_some() { s1.as_str() } else { s0.as_str() };
    if latest_now.as_deref() != Some(expect_latest) {
        ctx.problem(format!(
            "persistent: LATEST is {:?}, expected {} (the last good push)",
            latest_now.as_deref().map(short),
            short(expect_latest)
        ));
    }
    let s2_indexed = index_written(ctx, &prefix, &s2);
    if s2_indexed && case.target != Target::Latest {
        ctx.problem("persistent: the failed push left a complete-looking index of s2");
    }
    if s2_local {
        // Restorable locally, and the counter continues.
        check_restorable(ctx, w, ACTOR, &Acked { id: s2.clone(), value: 6 }, &keep).await?;
    }
    // Once the fault is gone, shipping works: s3 of the restored s2.
    let (live, _) = worker::restore(&mut c, ACTOR, Some(&s2), None, &keep).await.context("restoring s2")?;
    ctx.poke(&live, 7, "restored s2").await?;
    let s3 = ctx.snap_id("s3");
    keep.push(s3.clone());
    match worker::checkpoint(&mut c, ACTOR, &s3, Some(&prefix), &keep).await {
        Ok(_) if latest(ctx, &prefix).as_deref() == Some(s3.as_str()) => {}
        Ok(_) => {
            ctx.problem(format!("after the fault cleared, LATEST is {:?}, not s3", latest(ctx, &prefix)))
        }
        Err(e) => {
            ctx.problem(format!("after the fault cleared the push failed: {:?}: {}", e.code(), e.message()))
        }
    }
    // The retried push (s1) restores on a fresh node, byte for byte.
    if let Some(m) = s1_manifest {
        fresh_node_restore(
            ctx,
            &prefix,
            Some(&s1),
            &Acked { id: s1.clone(), value: 5 },
            &m,
            "transient push",
        )
        .await?;
    }
    ctx.note("transient: retried, pushed, byte-exact on a fresh node; persistent: failed, kept and restorable locally, LATEST unmoved; cleared: pushed");
    next_op(ctx, w).await
}

/// A durable restore on a fresh node: checks the restored snapshot and the pulled bytes, then
/// deletes it there.
async fn fresh_node_restore(
    ctx: &mut Ctx<'_>,
    prefix: &str,
    id: Option<&str>,
    want: &Acked,
    manifest: &ateom_proto::SnapshotManifest,
    what: &str,
) -> Result<()> {
    let sb = ctx.state_dir("n");
    let b = ctx.start(&sb, None)?;
    let mut c = ctx.client(b).await?;
    match worker::restore(&mut c, ACTOR, id, Some(prefix), &[]).await {
        Ok((live, resp)) => {
            check_restored(ctx, &sb, &live, &resp, want, manifest, what).await?;
            worker::delete(&mut c, ACTOR, false).await?;
        }
        Err(e) => {
            ctx.lost_ack += 1;
            ctx.problem(format!(
                "LOST: {what}: snapshot {} does not restore on a fresh node: {:?}: {}",
                short(&want.id),
                e.code(),
                e.message()
            ));
        }
    }
    ctx.w(b).stop(Duration::from_secs(45)).await;
    Ok(())
}

/// The restore brought back `want` (else a wrong resume), byte for byte, and it continues.
async fn check_restored(
    ctx: &mut Ctx<'_>,
    state: &Path,
    live: &Live,
    resp: &ateom_proto::RestoreWorkloadResponse,
    want: &Acked,
    manifest: &ateom_proto::SnapshotManifest,
    what: &str,
) -> Result<()> {
    if resp.snapshot_id != want.id {
        ctx.wrong_resumes += 1;
        ctx.problem(format!("WRONG RESUME: {what}: restored {} instead of {}", resp.snapshot_id, want.id));
        return Ok(());
    }
    if resp.pulled_bytes == 0 {
        ctx.problem(format!("{what}: nothing was pulled"));
    }
    let dir = worker::snapshots_dir(state, ACTOR).join(&want.id);
    for a in &manifest.artifacts {
        let bytes = std::fs::read(dir.join(&a.name)).with_context(|| format!("reading pulled {}", a.name))?;
        let sum = hex::encode(sha2::Sha256::digest(&bytes));
        if sum != a.sha256 || bytes.len() as u64 != a.size {
            ctx.problem(format!("{what}: pulled {} differs from what was pushed", a.name));
        }
    }
    ctx.poke(live, want.value + 1, what).await
}

/// Durable restores on fresh nodes through the faults, of a snapshot pushed cleanly.
async fn pull(ctx: &mut Ctx<'_>, case: &Case) -> Result<()> {
    let env = ctx.env;
    let proxy = env.proxy()?;
    // Node a pushes s1 (3) cleanly.
    let sa = ctx.state_dir("a");
    let a = ctx.start(&sa, None)?;
    let mut c = ctx.client(a).await?;
    let live = worker::run(&mut c, ctx.backend, &env.image, ACTOR).await.context("setup: run")?;
    for i in 1..=3 {
        ctx.poke(&live, i, "setup").await?;
    }
    let prefix = ctx.prefix("p");
    let s1 = ctx.snap_id("s1");
    let manifest = worker::checkpoint(&mut c, ACTOR, &s1, Some(&prefix), &[])
        .await
        .context("setup: durable checkpoint")?
        .manifest
        .context("no manifest")?;
    ctx.w(a).stop(Duration::from_secs(45)).await;
    let acked = Acked { id: s1.clone(), value: 3 };

    // Node b restores the newest snapshot under the prefix (LATEST, index, chunks).
    let sb = ctx.state_dir("b");
    let b = ctx.start(&sb, None)?;
    let mut c = ctx.client(b).await?;
    proxy.set(case.rule(true))?;
    let r = worker::restore(&mut c, ACTOR, None, Some(&prefix), &[]).await;
    let applied = proxy.applied(0);
    proxy.clear();
    match r {
        Ok((live, resp)) => {
            if applied != 1 {
                ctx.problem(format!("transient: the fault was applied {applied} times, not once"));
            }
            check_restored(ctx, &sb, &live, &resp, &acked, &manifest, "transient").await?;
            worker::delete(&mut c, ACTOR, false).await?;
        }
        Err(e) => ctx.problem(format!(
            "transient: the pull was not retried into success: {:?}: {}",
            e.code(),
            e.message()
        )),
    }

    proxy.set(case.rule(false))?;
    let r = worker::restore(&mut c, ACTOR, None, Some(&prefix), &[]).await;
    let applied = proxy.applied(0);
    proxy.clear();
    match r {
        Ok((live, resp)) => {
            ctx.problem(format!("persistent: the pull succeeded through a fault applied {applied} times"));
            check_restored(ctx, &sb, &live, &resp, &acked, &manifest, "persistent").await?;
            worker::delete(&mut c, ACTOR, false).await?;
        }
        Err(e) => {
            ctx.note(format!(
                "persistent ({applied} faults): {:?}: {}",
                e.code(),
                e.message().chars().take(140).collect::<String>()
            ));
            let left = worker::snapshot_entries(&sb, ACTOR);
            if !left.is_empty() {
                ctx.problem(format!("persistent: the failed pull left {left:?}"));
            }
            let k = worker::caps(&mut c).await?;
            if k.state != "idle" {
                ctx.problem(format!("persistent: after the failed pull the worker reports {:?}", k.state));
            }
        }
    }
    // Cleared: the pull works.
    match worker::restore(&mut c, ACTOR, None, Some(&prefix), &[]).await {
        Ok((live, resp)) => {
            check_restored(ctx, &sb, &live, &resp, &acked, &manifest, "after the fault cleared").await?;
            worker::delete(&mut c, ACTOR, false).await?;
        }
        Err(e) => {
            ctx.lost_ack += 1;
            ctx.problem(format!(
                "LOST: after the fault cleared the pull failed: {:?}: {}",
                e.code(),
                e.message()
            ));
        }
    }
    ctx.note("transient: retried, byte-exact; persistent: failed, nothing partial; cleared: restored");
    next_op(ctx, b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_has_a_valid_rule() {
        let cases = Case::all();
        assert_eq!(cases.len(), 30);
        for c in cases {
            for transient in [true, false] {
                let specs: Vec<faultproxy::rules::RuleSpec> =
                    serde_json::from_value(c.rule(transient)).unwrap();
                faultproxy::rules::compile(specs).unwrap();
            }
        }
    }
}
