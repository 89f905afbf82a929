//! # ateom-microvm
//!
//! What the microVM backends share, whatever the VMM:
//!
//! * [`console`]: the serial console hub (loopback TCP port, line waits, history);
//! * [`default_network`]: the fixed guest network identity a snapshot restores with;
//! * [`kvm`]: what `/dev/kvm` is on this host (hardware, PVM, or absent);
//! * [`copy_sparse`]: per-workload disk copies that cost what the data costs;
//! * [`file_id`]: sha256 of kernels and disk images, cached;
//! * [`guest_image`]: OCI image -> cached ext4 root disk with ateom's guest init inside.

pub mod console;
pub mod guest;
pub mod guest_image;
pub mod volumes;

use std::collections::HashMap;
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ateom_core::TapNetwork;
use sha2::{Digest, Sha256};

pub use console::Console;

/// The guest network a microVM gets when the request names none: a tap `tap0` in the
/// workload's namespace, the host side at 169.254.0.1/30, the guest at 169.254.0.2 with a
/// fixed locally administered MAC. Fixed, so a snapshot restores with the same identity.
pub fn default_network() -> TapNetwork {
    TapNetwork {
        tap_name: "tap0".into(),
        guest_mac: "06:00:a9:fe:00:02".into(),
        guest_ip: Ipv4Addr::new(169, 254, 0, 2),
        host_ip: Ipv4Addr::new(169, 254, 0, 1),
        prefix_len: 30,
    }
}

/// Records a guest network in a snapshot's provenance (`network.*` keys), so a restore
/// recreates the same identity whatever the request says.
pub fn network_to_provenance(n: &TapNetwork, extra: &mut std::collections::BTreeMap<String, String>) {
    extra.insert("network.tap_name".into(), n.tap_name.clone());
    extra.insert("network.guest_mac".into(), n.guest_mac.clone());
    extra.insert("network.guest_ip".into(), n.guest_ip.to_string());
    extra.insert("network.host_ip".into(), n.host_ip.to_string());
    extra.insert("network.prefix_len".into(), n.prefix_len.to_string());
}

/// The guest network recorded by [`network_to_provenance`] (`None`: the guest had none).
pub fn network_from_provenance(
    p: &std::collections::BTreeMap<String, String>,
) -> Result<Option<TapNetwork>, ateom_core::BackendError> {
    use ateom_core::BackendError;
    let Some(tap) = p.get("network.tap_name") else { return Ok(None) };
    let get =
        |k: &str| p.get(k).cloned().ok_or_else(|| BackendError::Snapshot(format!("provenance lacks {k}")));
    let ip = |k: &str| -> Result<Ipv4Addr, BackendError> {
        get(k)?.parse().map_err(|_| BackendError::Snapshot(format!("provenance {k} is not an IPv4 address")))
    };
    let net = TapNetwork {
        tap_name: tap.clone(),
        guest_mac: get("network.guest_mac")?,
        guest_ip: ip("network.guest_ip")?,
        host_ip: ip("network.host_ip")?,
        prefix_len: get("network.prefix_len")?
            .parse()
            .map_err(|_| BackendError::Snapshot("bad network.prefix_len".into()))?,
    };
    // Provenance comes from a snapshot, which may come from a bucket: re-validate everything
    // that reaches a VMM's options before using it.
    net.check("provenance.network").map_err(|e| BackendError::Snapshot(e.to_string()))?;
    Ok(Some(net))
}

/// What `/dev/kvm` is on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kvm {
    /// Hardware virtualisation (vmx/svm): any guest kernel boots.
    Hardware,
    /// kvm-pvm, software nested virtualisation: only PVM-patched guest kernels (or
    /// freestanding guests that need no paravirtualised kernel) run.
    Pvm,
    /// No usable /dev/kvm.
    Absent,
}

impl Kvm {
    /// The accelerator name reported in capabilities.
    pub fn name(self) -> &'static str {
        match self {
            Kvm::Hardware => "kvm",
            Kvm::Pvm => "kvm-pvm",
            Kvm::Absent => "none",
        }
    }

    /// Whether a stock Linux guest kernel can boot under KVM here.
    pub fn boots_linux(self) -> bool {
        self == Kvm::Hardware
    }
}

/// Detects what `/dev/kvm` is.
pub fn kvm() -> Kvm {
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Kvm::Absent;
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Kvm::Pvm;
    }
    Kvm::Hardware
}

/// What [`remove_stale`] leaves alone: the sandbox a restarted worker adopted.
#[derive(Clone, Debug, Default)]
pub struct Spare {
    /// Its VMM process.
    pub pid: Option<u32>,
    /// Its network namespace.
    pub netns: Option<String>,
}

/// The unprivileged uid (and gid) the VMMs of one worker run as: 200000 + a number derived
/// from the worker's instance id (below 300000: no account a distribution creates, and never
/// root). One worker runs one VM at a time, so this is a uid per VM; workers on one host get
/// different ones (a collision only makes two workers' VMs share a uid).
pub fn sandbox_uid(instance: &str) -> u32 {
    let n = u32::from_str_radix(
        &instance.chars().filter(char::is_ascii_hexdigit).take(6).collect::<String>(),
        16,
    )
    .unwrap_or(0);
    200_000 + n % 100_000
}

/// What a VMM process uses: its resident memory and CPU time (from `/proc/<pid>`).
pub fn process_stats(pid: u32) -> Option<ateom_core::SandboxStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<u64> {
        status.lines().find_map(|l| l.strip_prefix(k))?.split_whitespace().next()?.parse().ok()
    };
    let rss_kib = field("VmRSS:");
    let threads = field("Threads:");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces): utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ateom_core::SandboxStats {
        memory_bytes: rss_kib.map(|k| k * 1024),
        cpu_ns: Some(ticks * 1_000_000_000 / hz),
        pids: threads,
    })
}

/// vCPUs for a request's CPU limit: whole CPUs, rounded up (1000 milli = 1 vCPU).
pub fn vcpus_for(r: &ateom_core::Resources) -> Option<u8> {
    r.cpu_milli.map(|m| u8::try_from(m.div_ceil(1000).clamp(1, 32)).unwrap_or(32))
}

/// Guest memory for a request's memory limit, in MiB (at least 16).
pub fn memory_mib_for(r: &ateom_core::Resources) -> Option<u32> {
    r.memory_bytes.map(|b| u32::try_from((b >> 20).max(16)).unwrap_or(u32::MAX))
}

/// What a restarted worker removes before serving: processes `ours` recognises (from their
/// `/proc/<pid>` directory; they were started for this worker's state directory, so they are
/// its to kill) and network namespaces named `<prefix>*`, except what `spare` names. Returns
/// what it removed.
pub fn remove_stale(
    prefix: &str,
    spare: &Spare,
    ours: impl Fn(&Path) -> bool,
) -> Result<Vec<String>, ateom_core::BackendError> {
    let mut done = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid as u32 != std::process::id()
                && Some(pid as u32) != spare.pid
                && ours(&e.path())
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
                    .is_ok()
            {
                done.push(format!("process {pid}"));
            }
        }
    }
    let net = |e: ateom_net::NetError| ateom_core::BackendError::Network(e.to_string());
    for name in ateom_net::Netns::list_with_prefix(prefix).map_err(net)? {
        if spare.netns.as_deref() == Some(name.as_str()) {
            continue;
        }
        ateom_net::Netns::delete_by_name(&name).map_err(net)?;
        done.push(format!("network namespace {name}"));
    }
    Ok(done)
}

/// A unix socket path that fits `sockaddr_un` (108 bytes): sockets in deep work
/// directories (or inside a jail) are reached through `/proc/self/fd/<dir fd>/<name>`, with
/// the directory held open for as long as the returned handle lives.
#[derive(Debug)]
pub struct SocketPath {
    path: PathBuf,
    _dir: Option<std::os::fd::OwnedFd>,
}

impl SocketPath {
    pub fn new(path: &Path) -> std::io::Result<SocketPath> {
        const MAX: usize = 100;
        if path.as_os_str().len() <= MAX {
            return Ok(SocketPath { path: path.to_owned(), _dir: None });
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(SocketPath { path: path.to_owned(), _dir: None });
        };
        let fd: std::os::fd::OwnedFd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)?
            .into();
        let short = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd())).join(name);
        Ok(SocketPath { path: short, _dir: Some(fd) })
    }

    /// The path to connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Errors of the helpers here.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct MicroVmError {
    pub context: String,
    #[source]
    pub source: std::io::Error,
}

fn err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> MicroVmError {
    let context = context.into();
    move |source| MicroVmError { context, source }
}

/// Copies `src` to `dst` (which must not exist) without copying holes: a reflink where the
/// file system can (btrfs, xfs), else only the data ranges (`SEEK_DATA`/`SEEK_HOLE` +
/// `copy_file_range`). Returns the bytes of data copied (0 for a reflink).
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<u64, MicroVmError> {
    let from = File::open(src).map_err(err(format!("opening {}", src.display())))?;
    let len = from.metadata().map_err(err(format!("stat {}", src.display())))?.len();
    let to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        // A copy of a root disk or guest RAM: image data and secrets, root's only.
        .mode(0o600)
        .open(dst)
        .map_err(err(format!("creating {}", dst.display())))?;
    // SAFETY: FICLONE takes the source fd as its argument; no memory is passed.
    if unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0 {
        return Ok(0);
    }
    to.set_len(len).map_err(err(format!("sizing {}", dst.display())))?;
    let mut copied = 0u64;
    let mut pos: i64 = 0;
    let end = len as i64;
    while pos < end {
        // SAFETY: lseek on an fd we own.
        let data = unsafe { libc::lseek(from.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: only a hole is left
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(from.as_raw_fd(), data, libc::SEEK_HOLE) }.min(end);
        let (mut off_in, mut off_out) = (data, data);
        let mut left = (hole - data) as usize;
        while left > 0 {
            // SAFETY: both fds are ours; the offsets are plain integers we own.
            let n = unsafe {
                libc::copy_file_range(from.as_raw_fd(), &mut off_in, to.as_raw_fd(), &mut off_out, left, 0)
            };
            if n < 0 {
                return Err(err(format!("copying {} to {}", src.display(), dst.display()))(
                    std::io::Error::last_os_error(),
                ));
            }
            if n == 0 {
                break;
            }
            left -= n as usize;
            copied += n as u64;
        }
        pos = hole;
    }
    Ok(copied)
}

/// sha256 of a file (hex), cached by path, size and modification time: kernels and base
/// images are hashed once per worker, not once per workload.
pub fn file_id(path: &Path) -> Result<String, MicroVmError> {
    type Key = (PathBuf, u64, SystemTime);
    static CACHE: Mutex<Option<HashMap<Key, String>>> = Mutex::new(None);
    let meta = std::fs::metadata(path).map_err(err(format!("stat {}", path.display())))?;
    let key = (path.to_owned(), meta.len(), meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
    if let Some(id) = CACHE.lock().expect("cache lock").get_or_insert_with(HashMap::new).get(&key) {
        return Ok(id.clone());
    }
    let mut f = File::open(path).map_err(err(format!("opening {}", path.display())))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(err(format!("reading {}", path.display())))?;
    let id = hex::encode(h.finalize());
    CACHE.lock().expect("cache lock").get_or_insert_with(HashMap::new).insert(key, id.clone());
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn sparse_copies_keep_holes_and_content() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("disk");
        let mut f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(10 << 20)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start((64 << 20) - 4096)).unwrap();
        f.write_all(&[9u8; 4096]).unwrap();
        drop(f);
        let dst = tmp.path().join("copy");
        copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        assert!(std::fs::metadata(&dst).unwrap().blocks() * 512 < (1 << 20), "holes stayed holes");
        assert!(copy_sparse(&src, &dst).is_err(), "never overwrites");
    }

    #[test]
    fn file_ids_are_sha256_and_follow_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("k");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(file_id(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        std::fs::write(&p, b"abcd").unwrap();
        assert_ne!(file_id(&p).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn network_round_trips_through_provenance() {
        let net = default_network();
        let mut p = std::collections::BTreeMap::new();
        network_to_provenance(&net, &mut p);
        assert_eq!(network_from_provenance(&p).unwrap(), Some(net));
        assert_eq!(network_from_provenance(&std::collections::BTreeMap::new()).unwrap(), None);
        p.insert("network.guest_ip".into(), "nope".into());
        assert!(network_from_provenance(&p).is_err());
    }

    #[test]
    fn long_socket_paths_are_reached_through_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let deep = tmp.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let sock = deep.join("api.sock");
        assert!(std::os::unix::net::UnixListener::bind(&sock).is_err(), "too long to bind directly");
        // Bind through the short form too, then connect through it.
        let short = SocketPath::new(&sock).unwrap();
        assert!(short.path().as_os_str().len() < 100);
        let _l = std::os::unix::net::UnixListener::bind(short.path()).unwrap();
        std::os::unix::net::UnixStream::connect(SocketPath::new(&sock).unwrap().path()).unwrap();
        let near = tmp.path().join("s.sock");
        assert_eq!(SocketPath::new(&near).unwrap().path(), near);
    }

    #[test]
    fn the_default_network_is_link_local() {
        let n = default_network();
        assert!(n.guest_ip.is_link_local() && n.host_ip.is_link_local());
        assert_eq!(n.prefix_len, 30);
    }
}
