//! OCI image -> bootable ext4 root disk for microVM guests.
//!
//! The image's unpacked root file system (from `ateom-image`'s cache) plus ateom's guest
//! init at `/.ateom/init` and the workload's configuration at `/.ateom/config.json` become
//! an ext4 image built with `mkfs.ext4 -d` (no loop mount, no root privileges needed for the
//! image itself). Images are cached by (image digest, init digest, configuration), so a
//! second workload of the same template costs a sparse copy of the cached image, not a build.
//! `/.ateom` is ateom's own directory: it never follows the image's symlinks (an image whose
//! `/sbin` is an absolute symlink would otherwise point the init at the host).

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

/// Builds root disks into `<cache>/ext4/`.
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
        let path = dir.join(format!("{key}.ext4"));
        if path.is_file() {
            return Ok(BuiltDisk {
                path,
                key,
                cache_hit: true,
                build_ms: start.elapsed().as_millis() as u64,
            });
        }
        std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating {}", dir.display()), e))?;
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
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&guest_init, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| fail("init permissions", e))?;
            let config_path = staging.join(CONFIG_PATH.trim_start_matches('/'));
            std::fs::write(&config_path, config).map_err(|e| fail("writing the workload config", e))?;
            // The environment may hold secrets.
            std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| fail("config permissions", e))?;
            // Room for the workload's writes: half again the content, at least 64 MiB.
            let content = dir_bytes(&staging);
            let size = (content + content / 2 + (64 << 20)).div_ceil(4 << 20) * (4 << 20);
            let f =
                std::fs::File::create(&tmp).map_err(|e| fail(format!("creating {}", tmp.display()), e))?;
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
}
