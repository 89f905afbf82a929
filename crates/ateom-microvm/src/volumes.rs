//! Durable-directory volumes of microVM guests: one ext4 disk per volume.
//!
//! A volume's host directory (`<actorDir>/durable-dir/<volume>/`) becomes an ext4 image built
//! with `mkfs.ext4 -d` (no journal, labelled [`label`]`(i)`), attached as a virtio-blk disk
//! after the root disk, and mounted by `ateom-init` at its path with `sync,dirsync`, so every
//! write the workload completed is in the image on the host. A checkpoint reads the image back
//! into the host directory with `debugfs -R rdump` (e2fsprogs: no loop mount, no root needed)
//! and, for a FULL snapshot, keeps the image itself next to the guest's RAM, so the guest's
//! file-system state in memory and on disk stay one.
//!
//! Volume `i` is the `i`-th distinct volume of the workload in spec order
//! ([`ateom_core::distinct_volumes`]); its disk is [`disk_name`]`(i)` in the work directory
//! and in snapshots.

use std::path::Path;
use std::process::Command;

pub use ateom_init::config::VolumeMount;

use crate::MicroVmError;

/// The ext4 label of volume `i` (at most 16 bytes).
pub fn label(i: usize) -> String {
    format!("ateom-vol{i}")
}

/// The file name of volume `i`'s disk (work directory and snapshot).
pub fn disk_name(i: usize) -> String {
    format!("volume-{i}.ext4")
}

fn fail(context: impl Into<String>, detail: impl std::fmt::Display) -> MicroVmError {
    MicroVmError { context: context.into(), source: std::io::Error::other(detail.to_string()) }
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len().max(4096);
        }
    }
    total
}

/// Builds volume `i`'s disk at `out` (created 0600) from `host_dir`: twice its contents plus
/// 256 MiB of room, sparse.
pub fn build(host_dir: &Path, out: &Path, i: usize) -> Result<(), MicroVmError> {
    use std::os::unix::fs::OpenOptionsExt;
    let size = (tree_bytes(host_dir) * 2 + (256 << 20)).div_ceil(1 << 20) << 20;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| fail(format!("creating {}", out.display()), e))?;
    f.set_len(size).map_err(|e| fail(format!("sizing {}", out.display()), e))?;
    drop(f);
    let o = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal", "-E", "root_owner=0:0", "-L"])
        .arg(label(i))
        .arg("-d")
        .arg(host_dir)
        .arg(out)
        .output()
        .map_err(|e| fail("running mkfs.ext4 (e2fsprogs)", e))?;
    if !o.status.success() {
        return Err(fail(
            format!("building the volume disk from {}", host_dir.display()),
            String::from_utf8_lossy(&o.stderr).trim(),
        ));
    }
    Ok(())
}

/// Replaces the contents of `host_dir` with the files of the volume disk `disk` (the guest is
/// stopped or writes synchronously). Dumped into a sibling directory first, then swapped in,
/// so a failure leaves `host_dir` as it was.
pub fn extract(disk: &Path, host_dir: &Path) -> Result<(), MicroVmError> {
    let parent = host_dir.parent().ok_or_else(|| fail("extracting a volume", "no parent directory"))?;
    let name = host_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let staging = parent.join(format!(".extract-{name}"));
    let old = parent.join(format!(".old-{name}"));
    let _ = std::fs::remove_dir_all(&staging);
    let _ = std::fs::remove_dir_all(&old);
    std::fs::create_dir(&staging).map_err(|e| fail(format!("creating {}", staging.display()), e))?;
    // debugfs takes one command line; a path with a quote or newline could not be passed.
    let target = staging.to_str().filter(|s| !s.contains(['"', '\n', '\r'])).ok_or_else(|| {
        fail("extracting a volume", format!("{} cannot be named to debugfs", staging.display()))
    })?;
    let o = Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / \"{target}\""))
        .arg(disk)
        .output()
        .map_err(|e| fail("running debugfs (e2fsprogs)", e))?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    // debugfs prints its banner on stderr and exits 0 even when a command fails.
    let errors: Vec<&str> =
        stderr.lines().filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty()).collect();
    if !o.status.success() || !errors.is_empty() {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(fail(format!("reading the volume disk {}", disk.display()), errors.join("; ")));
    }
    // mkfs's lost+found is the file system's, not the workload's.
    let _ = std::fs::remove_dir(staging.join("lost+found"));
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o777));
    }
    if host_dir.exists() {
        std::fs::rename(host_dir, &old)
            .map_err(|e| fail(format!("moving {} aside", host_dir.display()), e))?;
    }
    std::fs::rename(&staging, host_dir).map_err(|e| fail(format!("placing {}", host_dir.display()), e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real mkfs.ext4 and debugfs: a directory survives the round trip through a disk.
    #[test]
    fn a_directory_round_trips_through_a_volume_disk() {
        if Command::new("debugfs").arg("-V").output().is_err() {
            eprintln!("SKIPPED a_directory_round_trips_through_a_volume_disk: e2fsprogs (debugfs) missing");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("count"), "7").unwrap();
        std::fs::write(src.join("sub/f"), vec![42u8; 100_000]).unwrap();
        let disk = tmp.path().join(disk_name(0));
        build(&src, &disk, 0).unwrap();
        let back = tmp.path().join("back");
        std::fs::create_dir(&back).unwrap();
        std::fs::write(back.join("stale"), "x").unwrap();
        extract(&disk, &back).unwrap();
        assert_eq!(std::fs::read_to_string(back.join("count")).unwrap(), "7");
        assert_eq!(std::fs::read(back.join("sub/f")).unwrap(), vec![42u8; 100_000]);
        assert!(!back.join("stale").exists() && !back.join("lost+found").exists());
        assert!(extract(&tmp.path().join("nope.ext4"), &back).is_err(), "a missing disk is an error");
        assert_eq!(std::fs::read_to_string(back.join("count")).unwrap(), "7", "and changes nothing");
    }
}
