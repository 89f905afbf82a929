//! `ateom-fault-matrix`: the standing fault matrix (run it through `scripts/fault-matrix.sh`,
//! which builds `ateom` with crash points and installs what the cases need).
//!
//! Real `ateom serve` workers are killed (SIGKILL of the worker at every crash point, SIGKILL
//! of its sandbox process), starved of disk (a small tmpfs state directory, filled at each
//! write) and cut off from their object store (a fault proxy in front of a real S3 server),
//! and each case checks that the actor continues from its last acknowledged state or is
//! reported lost with a reason, never an older state; that every acknowledged snapshot still
//! restores; that nothing is left behind; and that the next operation works.
//!
//! Prints one JSON object (`--json`) or a table and the same summary; exits non-zero when a
//! case failed. Skipped cases say why and never count as passed.

mod cases;
mod env;
mod report;
mod sys;
mod worker;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;

use crate::env::{Backend, Env, Tools};
use crate::report::{Outcome, Summary};

#[derive(Parser, Debug)]
#[command(
    name = "ateom-fault-matrix",
    about = "The fault matrix of ateom workers (see scripts/fault-matrix.sh)"
)]
struct Args {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// gvisor, qemu, firecracker or all.
    #[arg(long, default_value = "all")]
    backend: String,
    /// Only the cases whose `<backend>/<name>` contains this.
    #[arg(long)]
    filter: Option<String>,
    /// List the cases and exit.
    #[arg(long)]
    list: bool,
    /// The `ateom` binary, built with `--features failpoints`.
    #[arg(long)]
    ateom: PathBuf,
    /// The static counter binary (scripts/build-counter.sh).
    #[arg(long)]
    counter: PathBuf,
    /// s3s-fs (scripts/s3-server.sh install).
    #[arg(long)]
    s3s_fs: Option<PathBuf>,
    /// QEMU: the guest kernel (scripts/build-guest-kernel.sh) and init (scripts/build-init.sh).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    guest_init: Option<PathBuf>,
    /// Firecracker: the binary ($ATEOM_FIRECRACKER_BIN or PATH) and the freestanding guest.
    #[arg(long, env = "ATEOM_FIRECRACKER_BIN")]
    firecracker: Option<PathBuf>,
    #[arg(long)]
    test_guest: Option<PathBuf>,
    /// A backend that cannot run here and why, `BACKEND=REASON` (repeatable).
    #[arg(long = "unavailable")]
    unavailable: Vec<String>,
    /// Where cases keep their state directories and logs (default: a new dir under /tmp).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn firecracker_on_path() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join("firecracker"))
        .find(|p| p.is_file())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("ateom-fault-matrix: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn real_main() -> Result<bool> {
    let args = Args::parse();
    let backends: Vec<Backend> = match args.backend.as_str() {
        "all" => Backend::ALL.to_vec(),
        b => vec![
            Backend::parse(b)
                .with_context(|| format!("unknown backend {b:?} (gvisor, qemu, firecracker, all)"))?,
        ],
    };
    let mut defs: Vec<cases::Def> = backends.iter().flat_map(|b| cases::all(*b)).collect();
    if let Some(f) = &args.filter {
        defs.retain(|d| d.id().contains(f.as_str()));
    }
    if args.list {
        for d in &defs {
            println!("{}", d.id());
        }
        return Ok(true);
    }
    if defs.is_empty() {
        bail!("no case matches");
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("the fault matrix needs root (network namespaces, runsc, tmpfs mounts)");
    }
    let mut unavailable = Vec::new();
    for u in &args.unavailable {
        let (b, why) =
            u.split_once('=').with_context(|| format!("--unavailable {u:?}: expected BACKEND=REASON"))?;
        let b = Backend::parse(b).with_context(|| format!("--unavailable: unknown backend {b:?}"))?;
        unavailable.push((b, why.to_owned()));
    }
    let tools = Tools {
        ateom: args.ateom.canonicalize().context("--ateom")?,
        counter: args.counter.canonicalize().context("--counter")?,
        s3s_fs: args.s3s_fs,
        kernel: args.kernel,
        guest_init: args.guest_init,
        test_guest: args.test_guest,
        firecracker: args.firecracker.filter(|p| p.is_file()).or_else(firecracker_on_path),
        unavailable,
    };
    let root = match args.work_dir {
        Some(d) => d,
        None => PathBuf::from(format!("/tmp/ateom-fm-{}", std::process::id())),
    };
    let start = Instant::now();
    let env = Env::new(tools, root.clone()).await?;
    if let Some(why) = &env.s3_missing {
        eprintln!("\n!!!!! no S3 server: {why}: the object-store cases will be SKIPPED\n");
    }
    for b in &backends {
        if let Some(why) = env.unavailable(*b) {
            eprintln!("\n!!!!! {}: every case is SKIPPED: {why}\n", b.name());
        }
    }
    tokio::spawn(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate()))
        else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("\nateom-fault-matrix: interrupted: cleaning up the case under way");
        let _ = cases::interrupted().send(true);
    });
    let mut results = Vec::new();
    let total = defs.len();
    for (i, def) in defs.iter().enumerate() {
        if *cases::interrupted().borrow() {
            break;
        }
        eprint!("[{:>3}/{total}] {} ... ", i + 1, def.id());
        let r = cases::run(&env, def, i + 1).await;
        match r.outcome {
            Outcome::Passed => eprintln!("passed ({:.1} s)", r.elapsed_ms as f64 / 1000.0),
            Outcome::Failed => eprintln!("FAILED ({:.1} s): {}", r.elapsed_ms as f64 / 1000.0, r.detail),
            Outcome::Skipped => eprintln!("SKIPPED: {}", r.detail),
        }
        results.push(r);
    }
    let stopped = *cases::interrupted().borrow();
    let summary = Summary::new(results, start.elapsed().as_secs_f64());
    drop(env);
    if summary.totals.failed == 0 {
        let _ = std::fs::remove_dir_all(&root);
    } else {
        eprintln!("logs of the failed cases: {}", root.display());
    }
    if summary.totals.skipped > 0 {
        eprintln!("\n!!!!! {} case(s) SKIPPED (not passed):", summary.totals.skipped);
        for r in summary.results.iter().filter(|r| r.outcome == Outcome::Skipped) {
            eprintln!("!!!!!   {}/{}: {}", r.backend, r.name, r.detail);
        }
    }
    if args.json {
        println!("{}", summary.json());
    } else {
        print!("{}", summary.table());
    }
    if stopped {
        bail!("interrupted after {} of {total} cases", summary.totals.cases);
    }
    Ok(summary.totals.failed == 0)
}
