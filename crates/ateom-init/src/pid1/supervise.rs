//! The main loop while the workload runs: reap, forward signals, enforce the stop grace.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::signal::unix::{Signal as SignalStream, SignalKind, signal};
use tokio::time::Instant;

use super::error::InitError;
use super::reap::{WorkloadExit, reap};

/// PID 1's signal handlers. Installed before the workload starts, so that no SIGCHLD is
/// missed.
pub struct Signals {
    child: SignalStream,
    term: SignalStream,
    int: SignalStream,
    hup: SignalStream,
}

impl Signals {
    /// Installs the handlers (inside the Tokio runtime).
    pub fn install() -> Result<Signals, InitError> {
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| InitError::sys(format!("installing the {name} handler"), e))
        };
        Ok(Signals {
            child: install(SignalKind::child(), "SIGCHLD")?,
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

/// Runs until the workload has exited, and says how.
///
/// * SIGCHLD: reap every ended child (orphans included);
/// * SIGTERM, SIGINT (also what Ctrl-Alt-Del becomes, see `super::run`): forwarded to the
///   workload, and the first one starts the grace period, after which the workload gets
///   SIGKILL;
/// * SIGHUP: forwarded.
pub async fn supervise(workload: Pid, grace: Duration, signals: &mut Signals) -> WorkloadExit {
    let mut kill_at: Option<Instant> = None;
    let mut killed = false;
    loop {
        let reaped = reap(Some(workload));
        if let Some(exit) = reaped.workload {
            return exit;
        }
        let deadline = async {
            match kill_at {
                Some(at) if !killed => tokio::time::sleep_until(at).await,
                _ => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.child.recv() => {}
            _ = signals.term.recv() => stop_request(workload, Signal::SIGTERM, grace, &mut kill_at),
            _ = signals.int.recv() => stop_request(workload, Signal::SIGINT, grace, &mut kill_at),
            _ = signals.hup.recv() => forward(workload, Signal::SIGHUP),
            () = deadline => {
                say!("workload pid={workload} still running {} ms after the stop request: SIGKILL", grace.as_millis());
                forward(workload, Signal::SIGKILL);
                killed = true;
            }
        }
    }
}

fn stop_request(workload: Pid, signal: Signal, grace: Duration, kill_at: &mut Option<Instant>) {
    forward(workload, signal);
    if kill_at.is_none() {
        say!("{} received: stopping the workload (grace {} ms)", signal.as_str(), grace.as_millis());
        *kill_at = Some(Instant::now() + grace);
    }
}

fn forward(workload: Pid, signal: Signal) {
    match kill(workload, signal) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(e) => say!("warning: sending {} to the workload pid={workload}: {e}", signal.as_str()),
    }
}
