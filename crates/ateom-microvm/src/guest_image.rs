//! OCI image -> bootable ext4 root disk for microVM guests.
//!
//! The image's unpacked root file system (from `ateom-image`'s cache) plus ateom's guest
//! init at `/.ateom/init` and the workload's configuration at `/.ateom/config.json` become
//! an ext4 image built with `mkfs.ext4 -d` (no loop mount, no root privileges needed for the
//! image itself). Images are cached by (image digest, init digest, configuration), so a
//! second workload of the same template costs a sparse copy of the cached image, not a build.
//! `/.ateom` is ateom's own directory: it never follows the image's symlinks (an image whose
//! `/sbin` is an absolute symlink would otherwise point the init at the host).
//!
//! A disk holds the image's files with their setuid bits and owners (and the workload's
//! environment, which may hold secrets), so the cache is private: `<cache>` and
//! `<cache>/ext4` are `0700` and owned by ateom's user (as `ateom-image` keeps its rootfs
//! cache), and every disk is created `0600` (a disk an older version left wider is narrowed
//! when it is next used). `/.ateom/config.json` is `0600` inside the guest as well.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::MicroVmError;

/// Where the guest init lives inside the root disk (the kernel's `init=`).
pub const INIT_PATH: &str = "/.ateom/init";
/// Where the workload configuration lives inside the root disk.
pub const CONFIG_PATH: &str = "/.ateom/config.json";
/// Bumped whenever the layout of built images changes.
const RECIPE: &str = "ateom-guest-ext4-v1";

/// A built (or cached) root disk image. Never modified after it is built: workloads get
/// copies.
#[derive(Clone, Debug)]
pub struct BuiltDisk {
    pub path: PathBuf,
    pub key: String,
    pub cache_hit: bool,
    pub build_ms: u64,
}

fn fail(context: impl Into<String>, detail: impl std::fmt::Display) -> MicroVmError {
    MicroVmError { context: context.into(), source: std::io::Error::other(detail.to_string()) }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), MicroVmError> {
    let out = cmd.output().map_err(|e| fail(what, format!("cannot run: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(fail(what, format!("{} ({})", String::from_utf8_lossy(&out.stderr).trim(), out.status)))
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            total += m.len().max(4096);
        }
    }
    total
}

/// A new file only this user can read, `0600` from its creation (never created wider and
/// narrowed later); fails if something is already there.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)
}

/// Narrows a disk an older version left readable to `0600`.
fn make_private_file(path: &Path) -> Result<(), MicroVmError> {
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("inspecting {}", path.display()), e))?;
    if meta.permissions().mode() & 0o7777 != 0o600 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| fail(format!("making {} private (0600)", path.display()), e))?;
        tracing::info!(disk = %path.display(), "made the cached root disk private (0600)");
    }
    Ok(())
}

/// Builds root disks into `<cache>/ext4/` (both directories private, every disk `0600`).
#[derive(Clone, Debug)]
pub struct GuestImageBuilder {
    cache: PathBuf,
}

impl GuestImageBuilder {
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        Self { cache: cache.into() }
    }

    /// The cache key of a disk: recipe, image digest, init binary digest, configuration.
    pub fn key(image_digest: &str, init_id: &str, config: &[u8]) -> String {
        let mut h = Sha256::new();
        for part in [RECIPE.as_bytes(), image_digest.as_bytes(), init_id.as_bytes(), config] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part);
        }
        hex::encode(h.finalize())
    }

    /// The disk for an unpacked image `rootfs` (digest `image_digest`) with `init` and
    /// `config` injected: from the cache, or built now.
    pub fn build(
        &self,
        rootfs: &Path,
        image_digest: &str,
        init: &Path,
        config: &[u8],
    ) -> Result<BuiltDisk, MicroVmError> {
        let start = Instant::now();
        let init_id = crate::file_id(init)?;
        let key = Self::key(image_digest, &init_id, config);
        let dir = self.cache.join("ext4");
        let private = |d: &Path| {
            ateom_image::ensure_private_dir(d).map_err(|e| fail(format!("making {} private", d.display()), e))
        };
        private(&self.cache)?;
        private(&dir)?;
        let path = dir.join(format!("{key}.ext4"));
        if path.is_file() {
            make_private_file(&path)?;
            return Ok(BuiltDisk {
                path,
                key,
                cache_hit: true,
                build_ms: start.elapsed().as_millis() as u64,
            });
        }
        let tag = format!("{key}.{}", std::process::id());
        let staging = dir.join(format!(".staging-{tag}"));
        let tmp = dir.join(format!(".building-{tag}.ext4"));
        let result = (|| {
            let _ = std::fs::remove_dir_all(&staging);
            // Hard links: the cached rootfs is not copied, and staging only adds files.
            run(
                Command::new("cp").arg("-a").arg("-l").arg(rootfs).arg(&staging),
                "linking the image's files",
            )?;
            let ateom_dir = staging.join(".ateom");
            if ateom_dir.symlink_metadata().is_ok() {
                run(Command::new("rm").arg("-rf").arg(&ateom_dir), "clearing the image's /.ateom")?;
            }
            std::fs::create_dir(&ateom_dir).map_err(|e| fail("creating /.ateom", e))?;
            let guest_init = staging.join(INIT_PATH.trim_start_matches('/'));
            std::fs::copy(init, &guest_init).map_err(|e| fail(format!("copying {}", init.display()), e))?;
            std::fs::set_permissions(&guest_init, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| fail("init permissions", e))?;
            // The environment may hold secrets: 0600 from the start.
            let config_path = staging.join(CONFIG_PATH.trim_start_matches('/'));
            create_private(&config_path)
                .and_then(|mut f| f.write_all(config))
                .map_err(|e| fail("writing the workload config", e))?;
            // Room for the workload's writes: half again the content, at least 64 MiB.
            let content = dir_bytes(&staging);
            let size = (content + content / 2 + (64 << 20)).div_ceil(4 << 20) * (4 << 20);
            let _ = std::fs::remove_file(&tmp);
            let f = create_private(&tmp).map_err(|e| fail(format!("creating {}", tmp.display()), e))?;
            f.set_len(size).map_err(|e| fail("sizing the disk", e))?;
            drop(f);
            run(
                Command::new("mkfs.ext4")
                    .args([
                        "-q",
                        "-F",
                        "-L",
                        "ateom-root",
                        "-m",
                        "0",
                        "-b",
                        "4096",
                        "-E",
                        "root_owner=0:0",
                        "-d",
                    ])
                    .arg(&staging)
                    .arg(&tmp),
                "mkfs.ext4 -d (is e2fsprogs installed?)",
            )?;
            std::fs::rename(&tmp, &path).map_err(|e| fail("moving the disk into the cache", e))
        })();
        let _ = std::fs::remove_dir_all(&staging);
        let _ = std::fs::remove_file(&tmp);
        result?;
        Ok(BuiltDisk { path, key, cache_hit: false, build_ms: start.elapsed().as_millis() as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_then_hits_the_cache_and_injects_init_and_config() {
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("SKIPPED guest image test: mkfs.ext4 missing (apt install e2fsprogs)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/app"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("/usr/sbin", rootfs.join("sbin")).unwrap(); // must not be followed
        let init = tmp.path().join("init");
        std::fs::write(&init, b"\x7fELF fake init").unwrap();
        let b = GuestImageBuilder::new(tmp.path().join("cache"));
        let d1 = b.build(&rootfs, "sha256:abc", &init, b"{\"v\":1}").unwrap();
        assert!(!d1.cache_hit);
        let d2 = b.build(&rootfs, "sha256:abc", &init, b"{\"v\":1}").unwrap();
        assert!(d2.cache_hit && d2.path == d1.path);
        let d3 = b.build(&rootfs, "sha256:abc", &init, b"{\"v\":2}").unwrap();
        assert_ne!(d3.path, d1.path, "another config is another disk");
        // Read the files back out of the ext4 image without mounting it.
        let cat = |p: &str| {
            Command::new("debugfs").args(["-R", &format!("cat {p}")]).arg(&d1.path).output().unwrap().stdout
        };
        assert_eq!(cat(INIT_PATH), b"\x7fELF fake init");
        assert_eq!(cat(CONFIG_PATH), b"{\"v\":1}");
        assert_eq!(cat("/bin/app"), b"#!/bin/sh\necho hi\n");
        assert!(!Path::new("/usr/sbin/ateom-init").exists());
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("cache/ext4"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "no staging left behind");
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// `debugfs -R "stat <p>"` of an ext4 image: the mode and owner lines.
    fn ext4_stat(disk: &Path, p: &str) -> String {
        let out = Command::new("debugfs").args(["-R", &format!("stat {p}")]).arg(disk).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn disks_are_private_and_keep_the_images_setuid_bits_and_owners() {
        use std::os::unix::fs::MetadataExt;
        if Command::new("mkfs.ext4").arg("-V").output().is_err() {
            eprintln!("SKIPPED guest image test: mkfs.ext4 missing (apt install e2fsprogs)");
            return;
        }
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!("SKIPPED: needs root (owners in the image, setpriv)");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // Traversable by anyone: only ateom's own modes may keep other users out.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o755)).unwrap();
        let su = rootfs.join("bin/su");
        std::fs::write(&su, b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(&su, Some(0), Some(0)).unwrap();
        std::fs::set_permissions(&su, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let notes = rootfs.join("bin/notes");
        std::fs::write(&notes, b"mine").unwrap();
        std::os::unix::fs::chown(&notes, Some(1000), Some(1000)).unwrap();
        let init = tmp.path().join("init");
        std::fs::write(&init, b"\x7fELF fake init").unwrap();
        let cache = tmp.path().join("cache/guest");
        let b = GuestImageBuilder::new(&cache);
        let disk = b.build(&rootfs, "sha256:abc", &init, b"{\"env\":[\"TOKEN=s3cr3t\"]}").unwrap();

        // Host side: private directories, a 0600 disk.
        for d in [tmp.path().join("cache"), cache.clone(), cache.join("ext4")] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&disk.path), 0o600);
        // Guest side: the image's semantics, and a private config.
        let su_stat = ext4_stat(&disk.path, "/bin/su");
        assert!(su_stat.contains("Mode:  04755") && su_stat.contains("User:     0"), "{su_stat}");
        let notes_stat = ext4_stat(&disk.path, "/bin/notes");
        assert!(notes_stat.contains("User:  1000   Group:  1000"), "{notes_stat}");
        let config_stat = ext4_stat(&disk.path, CONFIG_PATH);
        assert!(config_stat.contains("Mode:  0600") && config_stat.contains("User:     0"), "{config_stat}");

        // Another user cannot read the disk even where the directories would let them
        // (control: they can stat it, so only the disk's own mode stops them).
        std::fs::set_permissions(tmp.path().join("cache"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(cache.join("ext4"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let nobody = |args: &[&str]| {
            Command::new("setpriv")
                .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "--", "/bin/sh", "-c"])
                .arg("exec \"$@\"")
                .arg("sh")
                .args(args)
                .output()
                .unwrap()
        };
        let disk_path = disk.path.to_str().unwrap();
        let stat = nobody(&["stat", "-c", "%a", disk_path]);
        assert_eq!(String::from_utf8_lossy(&stat.stdout).trim(), "600", "{stat:?}");
        let read = nobody(&["head", "-c", "1", disk_path]);
        assert!(!read.status.success() && read.stdout.is_empty(), "{read:?}");

        // A disk an older version left 0644, in open directories: narrowed on the next use.
        std::fs::set_permissions(&disk.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let again = b.build(&rootfs, "sha256:abc", &init, b"{\"env\":[\"TOKEN=s3cr3t\"]}").unwrap();
        assert!(again.cache_hit);
        assert_eq!(mode(&again.path), 0o600);
        assert_eq!((mode(&cache), mode(&cache.join("ext4"))), (0o700, 0o700));
        let stat = nobody(&["stat", disk_path]);
        assert!(!stat.status.success(), "{stat:?}");
    }
}
