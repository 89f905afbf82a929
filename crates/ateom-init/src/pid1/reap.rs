//! Reaping children: PID 1 inherits every orphan of the guest and must wait for them all.

use std::fmt;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadExit {
    /// It exited with this code.
    Code(i32),
    /// A signal killed it.
    Signal(Signal),
}

impl fmt::Display for WorkloadExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WorkloadExit::Code(code) => write!(f, "code {code}"),
            WorkloadExit::Signal(signal) => {
                write!(f, "killed by signal {} ({})", *signal as i32, signal.as_str())
            }
        }
    }
}

/// What one [`reap`] pass found.
#[derive(Debug, Default)]
pub struct Reaped {
    /// The workload's end, if it was among the reaped.
    pub workload: Option<WorkloadExit>,
    /// Other processes reaped.
    pub others: usize,
    /// `ECHILD`: PID 1 has no children left at all.
    pub no_children_left: bool,
}

/// Waits (without blocking) for every child that has ended.
pub fn reap(workload: Option<Pid>) -> Reaped {
    let mut reaped = Reaped::default();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(WaitStatus::Exited(pid, code)) => note(&mut reaped, workload, pid, WorkloadExit::Code(code)),
            Ok(WaitStatus::Signaled(pid, signal, _core)) => {
                note(&mut reaped, workload, pid, WorkloadExit::Signal(signal))
            }
            Ok(_) => {} // stopped/continued: not reported without WUNTRACED/WCONTINUED
            Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => {
                reaped.no_children_left = true;
                break;
            }
            Err(e) => {
                say!("warning: waitpid(-1): {e}");
                break;
            }
        }
    }
    reaped
}

fn note(reaped: &mut Reaped, workload: Option<Pid>, pid: Pid, exit: WorkloadExit) {
    if Some(pid) == workload {
        reaped.workload = Some(exit);
    } else {
        reaped.others += 1;
    }
}
