//! Starting processes (runsc, a VMM) inside a network namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::OnceLock;
use std::thread;

use nix::sched::CloneFlags;

use crate::{NetError, Netns};

/// The directory masked by `mask_proc_sys_net_core`.
const PROC_SYS_NET_CORE: &std::ffi::CStr = c"/proc/sys/net/core";

/// Prepares `cmd` so that the child joins `ns` between `fork` and `exec`.
///
/// The namespace file is opened now (close-on-exec, so the child's program never sees it)
/// and the child calls `setns(fd, CLONE_NEWNET)` in `pre_exec`. With
/// `mask_proc_sys_net_core`, the child then also unshares its mount namespace, makes `/`
/// recursively private (so nothing propagates back to the host) and mounts an empty
/// read-only tmpfs over `/proc/sys/net/core`. That must happen *after* joining `ns`:
/// `/proc/sys/net` shows the network namespace of the task looking at it, so the mount
/// has to land on the target namespace's directory. Old runsc releases need this mask (see
/// [`kernel_shows_core_sysctls_in_netns`]).
///
/// Only async-signal-safe system calls run in the child. A failure there makes `spawn`
/// return the raw OS error (e.g. `EPERM` without `CAP_SYS_ADMIN`).
pub fn join_netns_before_exec(
    cmd: &mut tokio::process::Command,
    ns: &Netns,
    mask_proc_sys_net_core: bool,
) -> Result<(), NetError> {
    join_netns_before_exec_std(cmd.as_std_mut(), ns, mask_proc_sys_net_core)
}

/// [`join_netns_before_exec`] for a [`std::process::Command`].
pub fn join_netns_before_exec_std(
    cmd: &mut std::process::Command,
    ns: &Netns,
    mask_proc_sys_net_core: bool,
) -> Result<(), NetError> {
    let ns_file = OwnedFd::from(ns.open_fd()?);
    let child_setup = move || -> io::Result<()> {
        // Everything below is a raw system call on data prepared before fork: no allocation,
        // no locks.
        // SAFETY: plain system calls with valid, NUL-terminated, 'static arguments.
        unsafe {
            if libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if mask_proc_sys_net_core {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::mount(
                    c"tmpfs".as_ptr(),
                    PROC_SYS_NET_CORE.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    c"mode=0555,size=4k".as_ptr().cast(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls (see above).
    unsafe {
        cmd.pre_exec(child_setup);
    }
    Ok(())
}

/// Whether `/proc/sys/net/core/rmem_default` is visible inside a non-root network
/// namespace on this kernel.
///
/// Old runsc releases take that file's presence as "I am in the root network namespace"
/// and refuse `--network=sandbox`; on kernels where this returns `true` such a runsc needs
/// `mask_proc_sys_net_core` (see [`join_netns_before_exec`]). Probed once (by a thread
/// that unshares a throwaway network namespace and looks) and cached; a failed probe is
/// not cached.
pub fn kernel_shows_core_sysctls_in_netns() -> Result<bool, NetError> {
    static PROBED: OnceLock<bool> = OnceLock::new();
    if let Some(shown) = PROBED.get() {
        return Ok(*shown);
    }
    let probe = thread::Builder::new()
        .name("ateom-netns-probe".into())
        .spawn(|| -> Result<bool, NetError> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::sys("unshare(CLONE_NEWNET)", io::Error::from(e)))?;
            Ok(Path::new("/proc/sys/net/core/rmem_default").exists())
        })
        .map_err(|source| NetError::ThreadSpawn { namespace: "<probe>".into(), source })?
        .join()
        .map_err(|_| NetError::ThreadPanicked { namespace: "<probe>".into() })??;
    Ok(*PROBED.get_or_init(|| probe))
}
