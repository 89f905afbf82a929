//! What the suite looks at and cleans up on the host: processes, network namespaces, mounts,
//! cgroups and links of one worker's state directory, tmpfs mounts and disk fillers.
//!
//! Everything here is scoped to paths and names the suite created (a state directory, the
//! instance id derived from it); nothing acts on the host at large.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::Digest;

/// The instance id ateom derives from a state directory: every namespace, container id and
/// cgroup of that worker carries `ateom-<instance>-`.
pub fn instance_id(state_dir: &Path) -> String {
    let canonical = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
    hex::encode(sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..8].to_owned()
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn args_of(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            c.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn comm_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default()
}

fn is_zombie(pid: i32) -> bool {
    // The state is the first field after the parenthesised command name.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// `arg` names the path `dir` or something below it (not merely a longer name that starts
/// with the same characters).
fn mentions(arg: &str, dir: &str) -> bool {
    arg.match_indices(dir)
        .any(|(i, _)| matches!(arg[i + dir.len()..].chars().next(), None | Some('/' | '"' | ',' | ' ' | ':')))
}

/// A process that works for a state directory.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: i32,
    pub comm: String,
    pub args: Vec<String>,
}

impl Proc {
    pub fn describe(&self) -> String {
        let args: Vec<&str> = self.args.iter().take(4).map(String::as_str).collect();
        format!("process {} ({}: {})", self.pid, self.comm, args.join(" "))
    }
}

/// Live (non-zombie) processes whose command line names `state` (e.g. runsc's
/// `--root=<state>/runsc`, QEMU's paths) or whose working directory is inside it. This
/// process is never among them.
pub fn processes_of(state: &Path) -> Vec<Proc> {
    let needle = state.display().to_string();
    let canonical = state.canonicalize().unwrap_or_else(|_| state.to_owned());
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for pid in pids() {
        if pid == me || is_zombie(pid) {
            continue;
        }
        let args = args_of(pid);
        let in_args = args.iter().any(|a| mentions(a, &needle));
        let in_cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|c| c.starts_with(&canonical) || c.starts_with(state));
        if in_args || in_cwd {
            out.push(Proc { pid, comm: comm_of(pid), args });
        }
    }
    out
}

/// The sandbox process of a backend: runsc's `boot` process (the sandbox kernel), or the VMM.
pub fn sandbox_processes(state: &Path, backend: crate::env::Backend) -> Vec<Proc> {
    use crate::env::Backend;
    let instance = instance_id(state);
    processes_of(state)
        .into_iter()
        .chain(match backend {
            // A jailed Firecracker's cwd is its chroot; its --id names the instance.
            Backend::Firecracker => pids()
                .into_iter()
                .filter(|p| *p != std::process::id() as i32 && !is_zombie(*p))
                .filter_map(|pid| {
                    let args = args_of(pid);
                    args.windows(2)
                        .any(|w| w[0] == "--id" && w[1].starts_with(&format!("ateom-{instance}-")))
                        .then(|| Proc { pid, comm: comm_of(pid), args })
                })
                .collect(),
            _ => Vec::new(),
        })
        .filter(|p| match backend {
            // runsc re-executes itself as `runsc-sandbox ... boot ...` (comm "exe").
            Backend::Gvisor => {
                p.args.first().is_some_and(|a| a == "runsc-sandbox") || p.args.iter().any(|a| a == "boot")
            }
            Backend::Qemu => p.comm.starts_with("qemu-system"),
            Backend::Firecracker => p.comm.starts_with("firecracker") || p.args.iter().any(|a| a == "--id"),
        })
        .fold(Vec::new(), |mut acc, p| {
            if !acc.iter().any(|q: &Proc| q.pid == p.pid) {
                acc.push(p);
            }
            acc
        })
}

/// Network namespaces of an instance (`/run/netns/ateom-<instance>-*`).
pub fn netns_of(instance: &str) -> Vec<String> {
    let prefix = format!("ateom-{instance}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn unescape_mount(s: &str) -> String {
    // /proc/self/mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points strictly below `dir` (deepest first).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

/// cgroup directories (any hierarchy, a few levels deep) whose name carries the instance.
pub fn cgroups_of(instance: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, depth: u32, needle: &str, out: &mut Vec<PathBuf>) {
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if e.file_name().to_string_lossy().contains(needle) {
                out.push(p);
            } else {
                walk(&p, depth - 1, needle, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(Path::new("/sys/fs/cgroup"), 5, &format!("ateom-{instance}"), &mut out);
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Network links of the root namespace whose name carries the instance (taps and veths
/// belong inside ateom's namespaces, never here).
pub fn links_of(instance: &str) -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(instance))
                .collect()
        })
        .unwrap_or_default()
}

/// Everything a worker on `state` left behind, described one item per entry.
pub fn leftovers(state: &Path) -> Vec<String> {
    let instance = instance_id(state);
    let mut out: Vec<String> = processes_of(state).iter().map(Proc::describe).collect();
    out.extend(netns_of(&instance).into_iter().map(|n| format!("network namespace {n}")));
    out.extend(mounts_under(state).into_iter().map(|m| format!("mount {}", m.display())));
    // One cgroup of cgroup v1 appears in every hierarchy: one leak, its hierarchies listed.
    let mut groups: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for c in cgroups_of(&instance) {
        let rel = c.strip_prefix("/sys/fs/cgroup").unwrap_or(&c);
        let mut parts = rel.components().map(|p| p.as_os_str().to_string_lossy().into_owned());
        let hierarchy = parts.next().unwrap_or_default();
        let path: Vec<String> = parts.collect();
        groups.entry(path.join("/")).or_default().push(hierarchy);
    }
    out.extend(groups.into_iter().map(|(path, h)| format!("cgroup {path} (in {})", h.join(", "))));
    out.extend(links_of(&instance).into_iter().map(|l| format!("link {l} in the root namespace")));
    out
}

/// Removes whatever a worker on `state` left (after [`leftovers`] counted it): SIGKILL of its
/// processes (by PID), its namespaces, mounts and cgroups.
pub fn clean(state: &Path) {
    let instance = instance_id(state);
    for _ in 0..3 {
        let procs = processes_of(state);
        if procs.is_empty() {
            break;
        }
        for p in procs {
            sigkill(p.pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for m in mounts_under(state) {
        let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
    }
    for n in netns_of(&instance) {
        let _ = Command::new("ip").args(["netns", "delete", &n]).output();
    }
    for c in cgroups_of(&instance) {
        let _ = std::fs::remove_dir(&c);
    }
}

pub fn sigkill(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

/// Free bytes for an unprivileged-equivalent writer on the file system of `path`.
pub fn available(path: &Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
}

/// Inodes of the suite's tmpfs mounts: far more than a state dir uses (a few hundred).
pub const TMPFS_INODES: u64 = 8192;

/// Uses up the inodes of the file system of `dir` (empty files in a directory of their own,
/// returned): no new file can be created there, whatever space is freed meanwhile.
pub fn exhaust_inodes(dir: &Path) -> Result<PathBuf> {
    let d = dir.join(".fault-matrix-inodes");
    std::fs::create_dir_all(&d)?;
    for i in 0..(TMPFS_INODES * 2) {
        match std::fs::File::create(d.join(i.to_string())) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => return Ok(d),
            Err(e) => bail!("using up the inodes of {}: {e}", dir.display()),
        }
    }
    bail!("{} has more inodes than expected", dir.display())
}

/// A tmpfs the suite mounted; unmounted (lazily) when dropped, whatever happened.
pub struct Tmpfs {
    pub path: PathBuf,
    mounted: bool,
}

impl Tmpfs {
    /// A tmpfs of `size_mib` with at most [`TMPFS_INODES`] inodes (few enough for a test to
    /// use them all up).
    pub fn mount(path: &Path, size_mib: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(path)?;
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            // Not nodev: Firecracker's jailer makes /dev/kvm and /dev/net/tun inside its chroot
            // under the state dir, and a nodev mount turns opening them into EACCES.
            nix::mount::MsFlags::MS_NOSUID,
            Some(format!("size={size_mib}m,nr_inodes={TMPFS_INODES},mode=0700").as_str()),
        )
        .with_context(|| format!("mounting a {size_mib} MiB tmpfs on {}", path.display()))?;
        Ok(Tmpfs { path: path.to_owned(), mounted: true })
    }

    pub fn unmount(&mut self) -> Result<()> {
        if self.mounted {
            // Anything mounted below it first (a leak, counted before this runs).
            for m in mounts_under(&self.path) {
                let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
            }
            nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH)
                .with_context(|| format!("unmounting {}", self.path.display()))?;
            self.mounted = false;
        }
        Ok(())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

/// Fills the file system of `dir` until at most `leave` bytes are free, with filler files in
/// `dir`. Returns them (delete them to free the space again).
pub fn fill(dir: &Path, leave: u64) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let avail = available(dir)?;
    if avail > leave {
        let path = dir.join(format!(".fault-matrix-filler-{}", files.len()));
        let f = std::fs::File::create(&path)?;
        files.push(path.clone());
        let mut want = avail - leave;
        // Rounding (blocks, metadata) can make the exact size fail: back off a little.
        loop {
            // SAFETY: a plain syscall on an open file descriptor.
            let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, want as libc::off_t) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ENOSPC) || want < (1 << 20) {
                bail!("filling {}: fallocate({want}): {err}", dir.display());
            }
            want -= 64 << 10;
        }
    }
    if leave == 0 {
        // Whatever is left, in small writes, until the file system says ENOSPC.
        let path = dir.join(format!(".fault-matrix-filler-{}", files.len()));
        let mut f = std::fs::File::create(&path)?;
        files.push(path);
        let block = vec![0xa5u8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => bail!("filling {}: {e}", dir.display()),
            }
        }
        let _ = f.sync_all();
    }
    Ok(files)
}

/// Deletes filler files (and inode-filler directories).
pub fn unfill(files: &mut Vec<PathBuf>) {
    for f in files.drain(..) {
        if f.is_dir() {
            let _ = std::fs::remove_dir_all(f);
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Waits until `port` on loopback accepts connections.
pub fn wait_port(port: u16, secs: u64) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_dir_is_named_only_as_itself_or_a_parent() {
        assert!(mentions("--root=/t/c001/s/runsc", "/t/c001/s"));
        assert!(mentions("/t/c001/s", "/t/c001/s"));
        assert!(!mentions("--data=/t/c001/s3-data", "/t/c001/s"));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/end\\"), "/end\\");
    }
}
