//! Early boot: file systems, the console, boot parameters, the workload config, hostname.

use std::fs;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ateom_init::cmdline::{BootParams, DEFAULT_HOSTNAME};
use ateom_init::config::{CONFIG_PATH, MAX_CONFIG_LEN, WorkloadConfig};
use ateom_init::mounts::{DEV_LINKS, MOUNTS, MountEntry, MountSpec, mounted_at, parse_mount_table};
use nix::errno::Errno;
use nix::mount::MsFlags;

use super::error::InitError;

/// Makes every mount of [`MOUNTS`]. A failed required mount is returned as the error; failed
/// optional ones are logged as warnings.
pub fn mount_all() -> Result<(), InitError> {
    for spec in &MOUNTS {
        let table = read_mount_table();
        match mount_one(spec, &table) {
            Ok(true) => {}
            Ok(false) => say!("{} already mounted on {}", spec.fstype, spec.target),
            Err(e) if spec.required => return Err(e),
            Err(e) => say!("warning: {e} (continuing without it)"),
        }
    }
    for (link, target) in DEV_LINKS {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => say!("warning: linking {link} -> {target}: {e}"),
        }
    }
    Ok(())
}

fn read_mount_table() -> Vec<MountEntry> {
    fs::read_to_string("/proc/self/mounts").map(|t| parse_mount_table(&t)).unwrap_or_default()
}

/// Mounts `spec` unless the kernel already did; `Ok(false)` when it was already there.
fn mount_one(spec: &MountSpec, table: &[MountEntry]) -> Result<bool, InitError> {
    if mounted_at(table, spec.target).is_some_and(|e| e.fstype == spec.fstype) {
        return Ok(false);
    }
    let target = Path::new(spec.target);
    if !target.is_dir() {
        match fs::DirBuilder::new().recursive(true).mode(spec.dir_mode).create(target) {
            Ok(()) => {
                // The mode given to mkdir is masked by the umask; set it exactly.
                let _ = fs::set_permissions(target, fs::Permissions::from_mode(spec.dir_mode));
            }
            Err(e) => say!("warning: creating {}: {e}", spec.target),
        }
    }
    match nix::mount::mount(
        Some(spec.source),
        spec.target,
        Some(spec.fstype),
        MsFlags::from_bits_truncate(spec.flags),
        spec.data,
    ) {
        Ok(()) => Ok(true),
        // devtmpfs automounted by the kernel (and anything else mounted there before us).
        Err(Errno::EBUSY) => Ok(false),
        Err(source) => Err(InitError::Mount { fstype: spec.fstype, target: spec.target, source }),
    }
}

/// Makes sure fds 0, 1 and 2 are open: the kernel opens `/dev/console` for init only if it
/// exists in the root file system before devtmpfs is mounted.
pub fn ensure_stdio() {
    // SAFETY: F_GETFD only asks whether the descriptor number is open.
    let closed: Vec<i32> = (0..=2).filter(|fd| unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0).collect();
    if closed.is_empty() {
        return;
    }
    match fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOCTTY).open("/dev/console") {
        Ok(console) => {
            let fd = console.as_raw_fd();
            for target in &closed {
                // SAFETY: dup2 onto a closed descriptor number; `console` stays open meanwhile.
                unsafe { libc::dup2(fd, *target) };
            }
            if closed.contains(&fd) {
                // The console landed on one of 0..=2 itself: keep it open.
                let _ = console.into_raw_fd();
            }
        }
        Err(e) => say!("warning: fds {closed:?} are closed and /dev/console cannot be opened: {e}"),
    }
}

/// Reads `/proc/cmdline`; bad `ateom.*` words are logged and skipped.
pub fn boot_params() -> Result<BootParams, InitError> {
    let path = "/proc/cmdline";
    let cmdline = fs::read_to_string(path).map_err(|source| InitError::Read { path: path.into(), source })?;
    let (params, errors) = BootParams::parse_lenient(&cmdline);
    for e in errors {
        say!("warning: {e} (ignored)");
    }
    for name in &params.unknown {
        say!("warning: unknown kernel parameter {name} (ignored by this ateom-init version)");
    }
    Ok(params)
}

/// Reads and validates the workload config.
pub fn workload_config() -> Result<WorkloadConfig, InitError> {
    let read_err = |source| InitError::Read { path: CONFIG_PATH.into(), source };
    let file = fs::File::open(CONFIG_PATH).map_err(read_err)?;
    let mut bytes = Vec::new();
    use std::io::Read;
    // One byte more than allowed, so that an oversized file is reported as such.
    file.take(MAX_CONFIG_LEN as u64 + 1).read_to_end(&mut bytes).map_err(read_err)?;
    WorkloadConfig::from_json(&bytes).map_err(|source| InitError::Config { path: CONFIG_PATH, source })
}

/// Sets the hostname: `ateom.hostname`, else the config's, else [`DEFAULT_HOSTNAME`].
pub fn set_hostname(params: &BootParams, config: Option<&WorkloadConfig>) -> Result<String, InitError> {
    let name = params
        .hostname
        .as_deref()
        .or(config.and_then(|c| c.hostname.as_deref()))
        .unwrap_or(DEFAULT_HOSTNAME)
        .to_owned();
    nix::unistd::sethostname(&name).map_err(|e| InitError::sys(format!("sethostname({name:?})"), e))?;
    Ok(name)
}

/// The ext4 label of a block device, if it holds an ext4 (ext2/3) file system: the superblock
/// starts at byte 1024; its magic 0xEF53 is at 56 and the 16-byte volume name at 120.
fn ext4_label(dev: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(dev).ok()?;
    let mut sb = [0u8; 136];
    f.seek(SeekFrom::Start(1024)).ok()?;
    f.read_exact(&mut sb).ok()?;
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return None;
    }
    let name = &sb[120..136];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    String::from_utf8(name[..end].to_vec()).ok()
}

/// The block device whose ext4 label is `label`.
fn device_labelled(label: &str) -> Option<std::path::PathBuf> {
    let entries = fs::read_dir("/sys/block").ok()?;
    entries
        .flatten()
        .map(|e| Path::new("/dev").join(e.file_name()))
        .find(|dev| ext4_label(dev).as_deref() == Some(label))
}

/// Mounts every durable-directory volume of the config: the disk with its label, at its path
/// (created if missing), synchronously (`sync,dirsync`: a write the workload completed is on
/// the host's image, so the host can read the volume at any time). A volume that cannot be
/// mounted stops the boot: the workload would otherwise write into its root disk.
pub fn mount_volumes(config: &WorkloadConfig) -> Result<(), InitError> {
    for v in &config.volumes {
        // Devices are probed before init runs; a short wait covers a slow probe.
        let mut dev = device_labelled(&v.label);
        for _ in 0..40 {
            if dev.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            dev = device_labelled(&v.label);
        }
        let Some(dev) = dev else {
            return Err(InitError::sys(
                format!("finding the disk of volume {} (ext4 label {:?})", v.mount_path, v.label),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&v.mount_path)
            .map_err(|e| InitError::sys(format!("creating {}", v.mount_path), e))?;
        let flags = MsFlags::MS_SYNCHRONOUS | MsFlags::MS_DIRSYNC | MsFlags::MS_NOATIME;
        nix::mount::mount(Some(&dev), v.mount_path.as_str(), Some("ext4"), flags, None::<&str>)
            .map_err(|e| InitError::sys(format!("mounting {} on {}", dev.display(), v.mount_path), e))?;
        say!("volume {} mounted on {}", dev.display(), v.mount_path);
    }
    Ok(())
}
