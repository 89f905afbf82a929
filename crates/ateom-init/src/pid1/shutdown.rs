//! Ending the VM: stop what is left, flush, `reboot(RB_AUTOBOOT)`.
//!
//! With `reboot=t` (QEMU, triple fault) or `reboot=k` (Firecracker, i8042 reset) on the
//! kernel command line, a reboot is what makes QEMU `-no-reboot` and Firecracker exit, with
//! and without ACPI (see guest/kernel/README.md); `poweroff` only halts without ACPI.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::MsFlags;
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::Stop;
use super::reap::reap;

/// How long the processes left after the workload get between SIGTERM and SIGKILL.
const LEFTOVER_GRACE: Duration = Duration::from_secs(2);

/// Stops every remaining process, syncs, remounts `/` read-only and reboots. Never returns.
pub fn power_off(stop: &Stop) -> ! {
    match stop {
        Stop::Workload(exit) => say!("workload exited: {exit}"),
        Stop::Fatal(e) => say!("fatal: {e}"),
    }
    if signal_all(Signal::SIGTERM) && !wait_all(LEFTOVER_GRACE) {
        say!("processes left after {} ms: SIGKILL", LEFTOVER_GRACE.as_millis());
        signal_all(Signal::SIGKILL);
        wait_all(Duration::from_secs(1));
    }
    nix::unistd::sync();
    if let Err(e) = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    ) {
        say!("warning: remounting / read-only: {e}");
    }
    nix::unistd::sync();
    say!("rebooting");
    let Err(e) = reboot(RebootMode::RB_AUTOBOOT);
    say!("error: reboot(RB_AUTOBOOT): {e}; exiting (the kernel panics and, with panic=-1, reboots)");
    std::process::exit(1)
}

/// Sends `signal` to every process but PID 1; false if there was none.
fn signal_all(signal: Signal) -> bool {
    match kill(Pid::from_raw(-1), signal) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(e) => {
            say!("warning: kill(-1, {}): {e}", signal.as_str());
            true
        }
    }
}

/// Reaps until no child is left or `timeout` passed; true if none is left.
fn wait_all(timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if reap(None).no_children_left {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
