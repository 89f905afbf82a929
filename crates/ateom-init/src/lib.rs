//! # ateom-init
//!
//! `ateom-init` is the PID 1 of ateom's microVM guests (Firecracker, QEMU `microvm`): a
//! static binary at `/sbin/ateom-init` in a root file system made from an OCI image, started
//! by the kernel with `init=/sbin/ateom-init`. This library is the contract between it and
//! the host; the binary (`src/main.rs`) is the PID 1 itself.
//!
//! ## What the guest does, in order
//!
//! 1. mounts [`mounts::MOUNTS`] (proc, sysfs, devtmpfs — already there if the kernel
//!    automounted it —, devpts, tmpfs on `/dev/shm`, `/run`, `/tmp`) and the `/dev` links;
//! 2. reads the `ateom.*` words of `/proc/cmdline` ([`cmdline::BootParams`]) and the workload
//!    from [`config::CONFIG_PATH`] ([`config::WorkloadConfig`]); sets the hostname;
//! 3. network over netlink: `lo` up, the interface (`eth0`) up with `ateom.ip`, default
//!    route via `ateom.gw`;
//! 4. listens for the control channel ([`protocol`]) on `ateom.ip:ateom.ctl_port`;
//! 5. starts the workload (stdout/stderr on `/dev/console`), reaps every zombie, forwards
//!    SIGTERM/SIGINT/SIGHUP to it; a SIGTERM to PID 1 also starts the stop grace period
//!    (`ateom.grace_ms`), after which the workload is killed;
//! 6. when the workload has exited: SIGTERM then SIGKILL to whatever is left, `sync`, root
//!    remounted read-only, `reboot(RB_AUTOBOOT)` — which ends the VM under QEMU
//!    `-no-reboot` and Firecracker.
//!
//! Its own console lines start with `ateom-init: `. Stable ones a host can wait for:
//! `ateom-init: workload started pid=<pid>`, `ateom-init: workload exited: code <n>` /
//! `ateom-init: workload exited: killed by signal <n> (<name>)`,
//! `ateom-init: control channel listening on <addr>`, `ateom-init: rebooting`
//! (see [`CONSOLE_PREFIX`]).
//!
//! ## What the host does
//!
//! * put the static binary at `/sbin/ateom-init` (mode 0755) and
//!   [`config::WorkloadConfig::to_json`] at [`config::CONFIG_PATH`] in the rootfs;
//! * boot with `init=/sbin/ateom-init` plus [`cmdline::BootParams::kernel_args`];
//! * after boot or restore, before the workload sees traffic: dial the control port from the
//!   workload's network namespace and send [`protocol::Request::sync_now`]
//!   ([`protocol::call`]): the guest clock is set to the host's and the RNG reseeded.

pub mod cmdline;
pub mod config;
pub mod mounts;
pub mod protocol;
pub mod server;

pub use cmdline::{BootParams, DEFAULT_CTL_PORT};
pub use config::{CONFIG_PATH, WorkloadConfig};
pub use protocol::{PROTOCOL_VERSION, Request, Response};

/// Every console line `ateom-init` writes starts with this.
pub const CONSOLE_PREFIX: &str = "ateom-init: ";
/// Where the binary lives in the guest.
pub const INIT_PATH: &str = "/sbin/ateom-init";
