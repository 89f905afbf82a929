//! Private directories and files: what holds image data or secrets is reachable by this
//! process's user only.
//!
//! Unpacked images keep their setuid bits and root ownership (they must still work inside
//! the sandbox), so a setuid-root shell in a tenant's layer would be a root shell for any
//! local user who can reach it. Every directory above unpacked files is therefore `0700` and
//! owned by this process's user, and files holding secrets are created `0600` (never widened
//! and narrowed later).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::error::{ImageError, IoContext};

/// Makes `dir` a private directory of this process's user.
///
/// A missing `dir` is created `0700`, and so is every missing parent. An existing one
/// (symlinks followed) must be a directory owned by this process's effective user, else
/// [`ImageError::UnsafeDirectory`]; a wider mode is reduced to `0700` (a cache made by an
/// older version is fixed in place). Parents that already exist are left alone.
pub fn ensure_private_dir(dir: &Path) -> Result<(), ImageError> {
    let unsafe_dir = |reason: String| ImageError::UnsafeDirectory { path: dir.to_owned(), reason };
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .ctx(|| format!("creating {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).ctx(|| format!("inspecting {}", dir.display()))?;
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(unsafe_dir(format!(
            "it is owned by uid {}, not by this process's uid {me}: another user could replace what is \
             in it; remove it (or chown it to uid {me}) and try again",
            meta.uid()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .ctx(|| format!("making {} private (0700)", dir.display()))?;
        tracing::info!(dir = %dir.display(), old_mode = format!("{mode:04o}"), "made the directory private (0700)");
    }
    Ok(())
}

/// Writes `bytes` to `path` (replacing it) as a `0600` file: created with that mode in the
/// same directory under a temporary name, synced, then renamed into place, so that the
/// content is never readable by anyone else, even for a moment, and never half-written.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).ctx(|| format!("writing {}", tmp.path().display()))?;
    tmp.as_file().sync_all().ctx(|| format!("syncing {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| ImageError::io(format!("renaming into {}", path.display()), e.error))?;
    Ok(())
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
