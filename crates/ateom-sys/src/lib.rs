//! # ateom-sys
//!
//! Host facilities that several of ateom's crates need and that no backend owns:
//!
//! * [`ProcessWatch`]: wait for any process to exit — also one that is not our child, such
//!   as a sandbox a restarted worker adopted (Linux pidfds, polled by tokio);
//! * [`atomic_write`]: replace a small file so that a crash leaves the old or the new
//!   content, never a mix (temp file, fsync, rename, fsync of the directory);
//! * [`space`]: free and total bytes of the file system holding a path;
//! * [`StateLock`]: one daemon per state directory (an exclusive `flock`).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

/// Waits for a process to exit, whether or not it is our child.
///
/// Built on `pidfd_open(2)` (Linux 5.3+): the descriptor names the process itself, so a
/// recycled PID can never be mistaken for it, and it becomes readable when the process
/// exits. (nix has no wrapper for `pidfd_open`; it is one system call.)
#[derive(Debug)]
pub struct ProcessWatch {
    pid: u32,
    fd: AsyncFd<OwnedFd>,
}

impl ProcessWatch {
    /// Starts watching `pid`. Fails with `ESRCH` when no such process exists (any more).
    /// Must be called inside a tokio runtime.
    pub fn new(pid: u32) -> io::Result<Self> {
        // SAFETY: a plain system call; the returned descriptor is owned below.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open and the same for
        // its whole life.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { pid, fd })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True once the process has exited (it may still be a zombie waiting for its parent).
    pub fn exited(&self) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.get_ref().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// Resolves when the process exits.
    pub async fn wait(&self) {
        loop {
            match self.fd.readable().await {
                Ok(mut guard) => {
                    if self.exited() {
                        return;
                    }
                    guard.clear_ready();
                }
                // The reactor is shutting down: nothing more to wait for.
                Err(_) => return,
            }
        }
    }

    /// Sends `signal` to the process through its pidfd (never to a recycled PID).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: a plain system call on a descriptor we own.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

/// True while a process with this PID exists (a zombie counts as existing).
pub fn pid_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// True while the process runs: it exists and is not a zombie (an exited process whose
/// parent has not reaped it yet). Read straight from `/proc`, so it is right at once, unlike
/// a flag a watcher task sets a moment after the exit.
pub fn process_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // The state is the first field after the command name, which is in parentheses and may
    // itself contain spaces or parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .is_some_and(|s| s != "Z" && s != "X")
}

/// Writes `bytes` to `path` atomically with file mode `mode`: a crash at any moment leaves
/// either the previous file or the complete new one.
pub fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name =
        path.file_name().ok_or_else(|| io::Error::other(format!("{} has no file name", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// fsyncs a directory (after a rename or a create inside it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Free space on a file system, as an unprivileged writer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to unprivileged writers (`f_bavail`).
    pub available: u64,
    /// Size of the file system.
    pub total: u64,
}

/// Free and total bytes of the file system that holds `path`.
pub fn space(path: &Path) -> io::Result<Space> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    let frag = st.fragment_size() as u64;
    Ok(Space { available: st.blocks_available() as u64 * frag, total: st.blocks() as u64 * frag })
}

/// An exclusive lock on a state directory: one daemon per directory. Released when dropped
/// (or when the process dies: the kernel drops `flock`s with their last descriptor).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes `<dir>/ateom.lock`, writing our PID into it. Fails at once, naming the holder's
    /// PID, when another process holds it.
    pub fn acquire(dir: &Path) -> Result<Self, LockError> {
        let path = dir.join("ateom.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|source| LockError::Io { path: path.clone(), source })?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = std::fs::read_to_string(&path).unwrap_or_default().trim().to_owned();
                return Err(LockError::Held { path, holder });
            }
            return Err(LockError::Io { path, source: err });
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|source| LockError::Io { path: path.clone(), source })?;
        Ok(Self { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Why a state directory could not be locked.
#[derive(Debug)]
pub enum LockError {
    /// Another process (PID as written in the file, if any) holds it.
    Held {
        path: PathBuf,
        holder: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, holder } if holder.is_empty() => {
                write!(f, "another ateom holds {}: one worker per state directory", path.display())
            }
            LockError::Held { path, holder } => write!(
                f,
                "another ateom (pid {holder}) holds {}: one worker per state directory",
                path.display()
            ),
            LockError::Io { path, source } => write!(f, "locking {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for LockError {}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_watch_sees_the_exit_of_a_process_that_is_not_awaited() {
        let mut child = std::process::Command::new("sleep").arg("0.2").spawn().unwrap();
        let watch = ProcessWatch::new(child.id()).unwrap();
        assert!(!watch.exited());
        tokio::time::timeout(Duration::from_secs(5), watch.wait()).await.expect("exit seen");
        assert!(watch.exited());
        child.wait().unwrap();
        assert!(ProcessWatch::new(child.id()).is_err(), "a reaped process cannot be watched");
    }

    #[tokio::test]
    async fn signals_go_through_the_pidfd() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let watch = ProcessWatch::new(child.id()).unwrap();
        watch.signal(libc::SIGKILL).unwrap();
        tokio::time::timeout(Duration::from_secs(5), watch.wait()).await.expect("killed");
        child.wait().unwrap();
    }

    #[test]
    fn atomic_writes_replace_whole_files_with_the_given_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn one_lock_holder_per_directory() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description: a second open conflicts even in
        // the same process.
        let err = StateLock::acquire(dir.path()).unwrap_err();
        assert!(err.to_string().contains(&std::process::id().to_string()), "{err}");
        drop(held);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn space_is_reported() {
        let s = space(Path::new("/")).unwrap();
        assert!(s.total > 0 && s.available <= s.total);
    }
}
