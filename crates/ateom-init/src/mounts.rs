//! The file systems `ateom-init` mounts, in order, and the mount-table parsing that tells it
//! what the kernel already mounted (the kernel automounts devtmpfs on `/dev` with
//! `CONFIG_DEVTMPFS_MOUNT`).

/// One mount `ateom-init` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// The `source` argument of `mount(2)`.
    pub source: &'static str,
    /// Where.
    pub target: &'static str,
    /// The file system type.
    pub fstype: &'static str,
    /// `MS_*` flags.
    pub flags: libc::c_ulong,
    /// File-system specific options.
    pub data: Option<&'static str>,
    /// Mode of the target directory if it has to be created.
    pub dir_mode: u32,
    /// A failure stops the boot (only `/proc`: without it there is no command line);
    /// the others are warnings.
    pub required: bool,
}

const NOSUID_NODEV: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV;

/// The mounts, in the order they are made.
pub const MOUNTS: [MountSpec; 7] = [
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: None,
        dir_mode: 0o555,
        required: true,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV | libc::MS_NOEXEC,
        data: None,
        dir_mode: 0o555,
        required: false,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: Some("mode=0755"),
        dir_mode: 0o755,
        required: false,
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        dir_mode: 0o755,
        required: false,
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        dir_mode: 0o1777,
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
        dir_mode: 0o755,
        required: false,
    },
    MountSpec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
        dir_mode: 0o1777,
        required: false,
    },
];

/// Symlinks made in `/dev` after mounting (what container runtimes provide).
pub const DEV_LINKS: [(&str, &str); 5] = [
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
];

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The source (device or pseudo name).
    pub source: String,
    /// The mount point, unescaped.
    pub target: String,
    /// The file system type.
    pub fstype: String,
}

/// Parses `/proc/self/mounts` (fstab format, octal escapes such as `\040` undone). Lines with
/// fewer than three fields are skipped.
pub fn parse_mount_table(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let source = unescape(fields.next()?);
            let target = unescape(fields.next()?);
            let fstype = unescape(fields.next()?);
            Some(MountEntry { source, target, fstype })
        })
        .collect()
}

/// The topmost mount at `target` in `table`, if any.
pub fn mounted_at<'a>(table: &'a [MountEntry], target: &str) -> Option<&'a MountEntry> {
    table.iter().rev().find(|entry| entry.target == target)
}

fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(octal) = bytes.get(i + 1..i + 4)
            && octal.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = octal.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "/dev/root / ext4 rw,relatime 0 0\n\
        devtmpfs /dev devtmpfs rw,relatime,size=121964k,nr_inodes=30491,mode=755 0 0\n\
        proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n\
        tmpfs /my\\040dir tmpfs rw 0 0\n\
        tmpfs /dev tmpfs rw 0 0\n\
        broken-line\n";

    #[test]
    fn parses_proc_mounts() {
        let table = parse_mount_table(TABLE);
        assert_eq!(table.len(), 5);
        assert_eq!(
            table[0],
            MountEntry { source: "/dev/root".into(), target: "/".into(), fstype: "ext4".into() }
        );
        assert_eq!(table[3].target, "/my dir");
        assert_eq!(mounted_at(&table, "/dev").unwrap().fstype, "tmpfs", "topmost wins");
        assert_eq!(mounted_at(&table, "/proc").unwrap().fstype, "proc");
        assert!(mounted_at(&table, "/sys").is_none());
    }

    #[test]
    fn unescape_edge_cases() {
        assert_eq!(unescape("a\\134b"), "a\\b");
        assert_eq!(unescape("trailing\\"), "trailing\\");
        assert_eq!(unescape("short\\04"), "short\\04");
        assert_eq!(unescape("\\777"), "\\777", "out of byte range stays as written");
    }

    #[test]
    fn plan_is_ordered_parents_first_and_only_proc_is_required() {
        for (i, m) in MOUNTS.iter().enumerate() {
            if let Some(parent) = std::path::Path::new(m.target).parent().and_then(|p| p.to_str())
                && parent != "/"
            {
                assert!(MOUNTS[..i].iter().any(|p| p.target == parent), "{} before its parent", m.target);
            }
        }
        assert_eq!(MOUNTS.iter().filter(|m| m.required).map(|m| m.target).collect::<Vec<_>>(), ["/proc"]);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tables_never_panic(s in "(\\PC|\\\\[0-9]{0,3}| |\n){0,200}") {
            let table = parse_mount_table(&s);
            let _ = mounted_at(&table, "/dev");
        }
    }
}
