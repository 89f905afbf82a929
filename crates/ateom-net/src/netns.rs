//! Named network namespaces bound under `/run/netns`, the `ip netns` convention.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::NetError;

/// Where named network namespaces are bound (the same directory `ip netns` uses).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The longest namespace name [`Netns::create`] accepts.
pub const MAX_NAMESPACE_NAME_LEN: usize = 64;

/// Serialises the one-time preparation of [`NETNS_RUN_DIR`] inside this process, so two
/// threads creating namespaces at the same time do not both turn it into a mount point.
static RUN_DIR_LOCK: Mutex<()> = Mutex::new(());

/// A named network namespace bound at `/run/netns/<name>`.
///
/// This is the convention of `ip netns`, so `ip -n <name> addr` or
/// `nsenter --net=/run/netns/<name>` work for debugging.
///
/// A `Netns` is only a handle (name and path); dropping it does not delete the namespace:
/// call [`Netns::delete`] or [`Netns::delete_by_name`]. The kernel keeps a namespace alive
/// while anything refers to it: the bind mount, a process or thread inside it (for example a
/// [`crate::NetnsDialer`]'s helper thread), or a socket created in it. Its interfaces (veth,
/// tap) disappear with it.
///
/// ```no_run
/// # fn main() -> Result<(), ateom_net::NetError> {
/// let ns = ateom_net::Netns::create("ateom-demo-sb")?;
/// let devices = ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev"))?;
/// ns.delete()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Creates a new, empty network namespace (only a down `lo`) and binds it at
    /// `/run/netns/<name>`.
    ///
    /// Fails with [`NetError::NamespaceExists`] if the name is taken. Like iproute2, it
    /// makes `/run/netns` a shared mount point first, so namespaces created later are
    /// visible from other mount namespaces that were cloned from this one.
    pub fn create(name: &str) -> Result<Netns, NetError> {
        validate_namespace_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        {
            let _serialised = RUN_DIR_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            prepare_run_dir()?;
        }

        // The mount point: an empty file, created exclusively so two creators cannot share it.
        match fs::OpenOptions::new().write(true).create_new(true).mode(0o000).open(&path) {
            Ok(_file) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetError::NamespaceExists { name: name.to_owned() });
            }
            Err(e) => return Err(NetError::sys(format!("creating {}", path.display()), e)),
        }

        let bind = || -> Result<(), NetError> {
            let outcome = thread::Builder::new()
                .name("ateom-netns-new".into())
                .spawn({
                    let path = path.clone();
                    move || -> Result<(), NetError> {
                        // Only this thread moves to the new namespace; it ends right after.
                        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
                            .map_err(|e| NetError::sys("unshare(CLONE_NEWNET)", io::Error::from(e)))?;
                        nix::mount::mount(
                            Some("/proc/thread-self/ns/net"),
                            &path,
                            None::<&str>,
                            MsFlags::MS_BIND,
                            None::<&str>,
                        )
                        .map_err(|e| {
                            NetError::sys(
                                format!("bind-mounting /proc/thread-self/ns/net on {}", path.display()),
                                io::Error::from(e),
                            )
                        })
                    }
                })
                .map_err(|source| NetError::ThreadSpawn { namespace: name.to_owned(), source })?
                .join();
            outcome.map_err(|_| NetError::ThreadPanicked { namespace: name.to_owned() })?
        };
        if let Err(e) = bind() {
            // Leave nothing behind: the mount never happened, so only the file exists.
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        tracing::debug!(netns = name, "created network namespace");
        Ok(Netns { name: name.to_owned(), path })
    }

    /// Opens an existing namespace bound at `/run/netns/<name>`.
    ///
    /// Fails with [`NetError::NamespaceNotFound`] if nothing is there and with
    /// [`NetError::NotANamespace`] if the file exists but no namespace is bound on it.
    pub fn open(name: &str) -> Result<Netns, NetError> {
        validate_namespace_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match nix::sys::statfs::statfs(&path) {
            Ok(st) if st.filesystem_type() == nix::sys::statfs::NSFS_MAGIC => {
                Ok(Netns { name: name.to_owned(), path })
            }
            Ok(_) => Err(NetError::NotANamespace { path }),
            Err(Errno::ENOENT) => Err(NetError::NamespaceNotFound { name: name.to_owned() }),
            Err(e) => Err(NetError::sys(format!("statfs {}", path.display()), io::Error::from(e))),
        }
    }

    /// Deletes this namespace's binding. See [`Netns::delete_by_name`].
    pub fn delete(self) -> Result<(), NetError> {
        Netns::delete_by_name(&self.name)
    }

    /// Unbinds (lazy unmount, `MNT_DETACH`) and removes `/run/netns/<name>`.
    ///
    /// Idempotent: a missing namespace, or a file with nothing mounted on it, is fine. The
    /// namespace itself goes away once nothing else refers to it (processes, threads,
    /// sockets inside it).
    pub fn delete_by_name(name: &str) -> Result<(), NetError> {
        validate_namespace_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        // A racing creator elsewhere could have stacked mounts; peel them all (bounded).
        for _ in 0..8 {
            match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                Err(Errno::EINVAL) | Err(Errno::ENOENT) => break,
                Err(e) => {
                    return Err(NetError::sys(format!("unmounting {}", path.display()), io::Error::from(e)));
                }
            }
        }
        match fs::remove_file(&path) {
            Ok(()) => {
                tracing::debug!(netns = name, "deleted network namespace");
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NetError::sys(format!("removing {}", path.display()), e)),
        }
    }

    /// Names of the namespaces under `/run/netns` that start with `prefix`, sorted.
    ///
    /// This lists names only; a name may be a leftover file with nothing bound on it
    /// ([`Netns::open`] tells them apart, [`Netns::delete_by_name`] removes either).
    pub fn list_with_prefix(prefix: &str) -> Result<Vec<String>, NetError> {
        let entries = match fs::read_dir(NETNS_RUN_DIR) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(NetError::sys(format!("listing {NETNS_RUN_DIR}"), e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| NetError::sys(format!("listing {NETNS_RUN_DIR}"), e))?;
            if let Some(name) = entry.file_name().to_str()
                && name.starts_with(prefix)
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Opens the namespace file (`O_RDONLY | O_CLOEXEC`), e.g. for `setns(2)` or
    /// `IFLA_NET_NS_FD`.
    pub fn open_fd(&self) -> Result<File, NetError> {
        File::open(&self.path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                NetError::NamespaceNotFound { name: self.name.clone() }
            } else {
                NetError::sys(format!("opening {}", self.path.display()), e)
            }
        })
    }

    /// Runs `f` on a fresh thread that has joined this namespace and returns its result.
    ///
    /// Use it for whatever binds to the namespace at creation: netlink sockets, TCP
    /// sockets, opening `/dev/net/tun`, reading `/proc/thread-self/net/*` (note: *not*
    /// `/proc/self/net`, which shows the namespace of the process's main thread). The
    /// thread exits afterwards, so no thread ever returns to the caller's pool in a foreign
    /// namespace. It blocks the caller for the duration of `f` (plus ~0.1 ms to start the
    /// thread); keep `f` short when calling from async code.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetError> {
        let ns_file = self.open_fd()?;
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name("ateom-netns-run".into())
                .spawn_scoped(scope, move || -> Result<T, NetError> {
                    nix::sched::setns(ns_file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        NetError::sys(format!("setns into {}", self.path.display()), io::Error::from(e))
                    })?;
                    drop(ns_file);
                    Ok(f())
                })
                .map_err(|source| NetError::ThreadSpawn { namespace: self.name.clone(), source })?;
            handle.join().map_err(|_| NetError::ThreadPanicked { namespace: self.name.clone() })?
        })
    }
}

/// Checks a namespace name: 1 to [`MAX_NAMESPACE_NAME_LEN`] characters out of
/// `[A-Za-z0-9_.-]`, not starting with `-` or `.`.
pub fn validate_namespace_name(name: &str) -> Result<(), NetError> {
    let reject = |reason| Err(NetError::InvalidNamespaceName { name: name.to_owned(), reason });
    if name.is_empty() {
        return reject("empty");
    }
    if name.len() > MAX_NAMESPACE_NAME_LEN {
        return reject("longer than 64 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')) {
        return reject("only A-Z a-z 0-9 _ . - are allowed");
    }
    if name.starts_with('-') || name.starts_with('.') {
        return reject("must not start with '-' or '.'");
    }
    Ok(())
}

/// Creates `/run/netns` and makes it a shared mount point, as `ip netns add` does.
fn prepare_run_dir() -> Result<(), NetError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(NETNS_RUN_DIR)
        .map_err(|e| NetError::sys(format!("creating {NETNS_RUN_DIR}"), e))?;
    let mut made_mount_point = false;
    loop {
        match nix::mount::mount(
            Some(""),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Bind it onto itself once, then retry.
            Err(Errno::EINVAL) if !made_mount_point => {
                nix::mount::mount(
                    Some(NETNS_RUN_DIR),
                    NETNS_RUN_DIR,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| {
                    NetError::sys(format!("bind-mounting {NETNS_RUN_DIR} on itself"), io::Error::from(e))
                })?;
                made_mount_point = true;
            }
            Err(e) => {
                return Err(NetError::sys(
                    format!("making {NETNS_RUN_DIR} a shared mount"),
                    io::Error::from(e),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        for good in ["a", "ateom-1-sb", "A_b.c-9", &"x".repeat(64)] {
            assert!(validate_namespace_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-x", ".x", "..", "a/b", "a b", "é", &"x".repeat(65), "a\0b"] {
            assert!(
                matches!(validate_namespace_name(bad), Err(NetError::InvalidNamespaceName { .. })),
                "{bad:?}"
            );
        }
    }
}
