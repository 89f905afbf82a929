//! The PID 1 itself. [`run`] boots the guest and supervises the workload until it ends;
//! [`shutdown::power_off`] then ends the VM.

mod ctl;
mod error;
pub mod log;
mod net;
mod reap;
mod setup;
pub mod shutdown;
mod supervise;
mod sys;
mod workload;

use std::sync::atomic::Ordering;

use nix::unistd::Pid;

pub use error::InitError;
use reap::WorkloadExit;

/// Why the guest is shutting down.
#[derive(Debug)]
pub enum Stop {
    /// The workload ended.
    Workload(WorkloadExit),
    /// Booting could not go on.
    Fatal(InitError),
}

/// Boots the guest and runs the workload until it exits.
pub fn run() -> Stop {
    say!("starting (version {}, uptime {:.3} s)", env!("CARGO_PKG_VERSION"), sys::uptime_s());
    if let Err(e) = setup::mount_all() {
        return Stop::Fatal(e);
    }
    setup::ensure_stdio();
    // Ctrl-Alt-Del (Firecracker's SendCtrlAltDel) becomes SIGINT to PID 1, a graceful stop,
    // instead of an immediate kernel reboot without sync.
    if let Err(e) = nix::sys::reboot::set_cad_enabled(false) {
        say!("warning: disabling Ctrl-Alt-Del reboot: {e}");
    }
    let params = match setup::boot_params() {
        Ok(p) => p,
        Err(e) => return Stop::Fatal(e),
    };
    let config = setup::workload_config();
    match setup::set_hostname(&params, config.as_ref().ok()) {
        Ok(name) => say!("hostname {name}"),
        Err(e) => say!("warning: {e}"),
    }
    let config = match config {
        Ok(c) => c,
        Err(e) => return Stop::Fatal(e),
    };
    if let Err(e) = setup::mount_volumes(&config) {
        return Stop::Fatal(e);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return Stop::Fatal(InitError::sys("starting the Tokio runtime", e)),
    };
    let stop = runtime.block_on(async {
        let net = net::configure(&params).await;
        let ops = sys::SystemOps::default();
        match ctl::bind(net.ip, params.ctl_port).await {
            Ok(listener) => {
                let addr = listener.local_addr().map_or_else(|e| format!("? ({e})"), |a| a.to_string());
                say!("control channel listening on {addr}");
                tokio::spawn(ctl::serve(listener, net.ip, ops.clone()));
            }
            Err(e) => {
                let ip = net.ip.map_or("0.0.0.0".to_owned(), |ip| ip.to_string());
                say!(
                    "error: control channel: binding {ip}:{}: {e}; the host cannot sync this guest",
                    params.ctl_port
                );
            }
        }
        let mut signals = match supervise::Signals::install() {
            Ok(s) => s,
            Err(e) => return Stop::Fatal(e),
        };
        let pid = match workload::spawn(&config) {
            Ok(pid) => pid,
            Err(e) => return Stop::Fatal(e),
        };
        ops.workload_pid.store(pid, Ordering::Relaxed);
        say!("workload started pid={pid} (uptime {:.3} s): {:?}", sys::uptime_s(), config.process.args);
        let raw = i32::try_from(pid).unwrap_or(i32::MAX);
        let exit = supervise::supervise(Pid::from_raw(raw), params.grace, &mut signals).await;
        ops.workload_pid.store(0, Ordering::Relaxed);
        Stop::Workload(exit)
    });
    // Drops the control channel tasks.
    runtime.shutdown_background();
    stop
}
