//! The `file://` backend: object_store's `LocalFileSystem` for reads and writes, with listing
//! and deleting done here so that they **never follow a symbolic link**.
//!
//! `LocalFileSystem` lists with `follow_links(true)` and deletes with `remove_file` on a path
//! resolved through every intermediate symlink, so a link planted inside the store directory
//! (`<root>/<id> -> /somewhere`) would make `delete` and `gc` remove files outside the store.
//! Here:
//!
//! * listings walk the tree without following links and do not report symlinks at all (a
//!   symlink is not an object of the store); a listed prefix with a symlink among its
//!   components lists as empty;
//! * a delete opens each directory from the root with `O_NOFOLLOW | O_DIRECTORY` and removes the
//!   last component with `unlinkat` (which removes a link itself, never its target); a symlink
//!   among the directories is refused ([`SymlinkRefused`], reported by the store as
//!   [`StoreError::SymlinkInStore`](crate::StoreError::SymlinkInStore)) — race-free, since no
//!   path is resolved twice. Emptied directories are then removed the same way, up to the root.
//!
//! Reads and writes go through `LocalFileSystem` unchanged.

use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// A delete that would have gone through a symlink: `component` (under the store root) is one.
#[derive(Debug, thiserror::Error)]
#[error("{component} is a symbolic link; a file:// store never deletes through one")]
pub(crate) struct SymlinkRefused {
    pub path: PathBuf,
    pub component: PathBuf,
}

/// `LocalFileSystem` with symlink-free listing and deleting (see the module docs).
#[derive(Debug)]
pub(crate) struct NoFollowLocal {
    inner: LocalFileSystem,
    root: PathBuf,
}

impl NoFollowLocal {
    pub fn new(root: &FsPath) -> Result<NoFollowLocal> {
        let inner = LocalFileSystem::new_with_prefix(root)?.with_automatic_cleanup(false).with_fsync(true);
        Ok(NoFollowLocal { inner, root: root.to_path_buf() })
    }
}

impl fmt::Display for NoFollowLocal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalFileSystem(no symlinks followed by list/delete)({})", self.root.display())
    }
}

/// The segments of a key as file names (our keys are plain `[A-Za-z0-9._-]` segments).
fn segments(location: &Path) -> Vec<String> {
    location.parts().map(|p| p.as_ref().to_string()).collect()
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic { store: "LocalFileSystem", source: Box::new(e) }
}

fn open_dir_nofollow(dir: impl AsFd, name: &str) -> nix::Result<OwnedFd> {
    openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Remove `root/segs...` without resolving any symlink (see the module docs).
fn delete_nofollow(root: &FsPath, segs: &[String]) -> Result<()> {
    let full = segs.iter().fold(root.to_path_buf(), |p, s| p.join(s));
    let Some((last, dirs)) = segs.split_last() else {
        return Err(generic(std::io::Error::other("cannot delete the store root")));
    };
    let io = |e: Errno, path: &FsPath| -> object_store::Error {
        let source = std::io::Error::from(e);
        if e == Errno::ENOENT {
            object_store::Error::NotFound { path: path.display().to_string(), source: Box::new(source) }
        } else {
            generic(std::io::Error::new(source.kind(), format!("{}: {source}", path.display())))
        }
    };
    let root_fd =
        nix::fcntl::open(root, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| io(e, root))?;
    // fds[i] is the directory holding segs[i]; names[i] its name in fds[i-1].
    let mut fds = vec![root_fd];
    let mut walked = root.to_path_buf();
    for d in dirs {
        walked.push(d);
        let parent = fds.last().expect("root is first");
        match open_dir_nofollow(parent, d.as_str()) {
            Ok(fd) => fds.push(fd),
            // O_NOFOLLOW on a symlink: ELOOP (Linux), or ENOTDIR when the link is to a file.
            Err(Errno::ELOOP | Errno::ENOTDIR) if is_symlink(&walked) => {
                return Err(object_store::Error::PermissionDenied {
                    path: full.display().to_string(),
                    source: Box::new(SymlinkRefused { path: full.clone(), component: walked }),
                });
            }
            Err(e) => return Err(io(e, &walked)),
        }
    }
    let dir = fds.last().expect("root is first");
    unlinkat(dir, last.as_str(), UnlinkatFlags::NoRemoveDir).map_err(|e| io(e, &full))?;
    nix::unistd::fsync(dir).map_err(|e| io(e, &full))?;
    // Remove directories the delete emptied, innermost first, never the root.
    for (i, name) in dirs.iter().enumerate().rev() {
        match unlinkat(&fds[i], name.as_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) => {}
            Err(_) => break, // not empty (or raced with a writer): leave it
        }
    }
    Ok(())
}

fn is_symlink(p: &FsPath) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
}

/// The directory of `prefix` under `root`, or `None` when it (or a component on the way) is
/// missing or a symlink: nothing to list.
fn prefix_dir(root: &FsPath, prefix: Option<&Path>) -> Option<PathBuf> {
    let mut dir = root.to_path_buf();
    for seg in prefix.map(segments).unwrap_or_default() {
        dir.push(seg);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            _ => return None,
        }
    }
    Some(dir)
}

/// Like `LocalFileSystem`, skip its staging files (`<name>#<digits>`).
fn is_staging(name: &str) -> bool {
    name.split_once('#').is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn meta_of(location: Path, md: &std::fs::Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let mtime =
        md.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).unwrap_or_default();
    let last_modified =
        chrono::DateTime::from_timestamp(mtime.as_secs() as i64, mtime.subsec_nanos()).unwrap_or_default();
    ObjectMeta {
        location,
        last_modified,
        size: md.len(),
        e_tag: Some(format!("{:x}-{:x}-{:x}", md.ino(), mtime.as_micros(), md.len())),
        version: None,
    }
}

/// The key of a file found at `rel` (relative to the root), if it is a valid key.
fn key_of(rel: &FsPath) -> Option<Path> {
    let parts: Vec<&str> = rel.iter().map(|s| s.to_str()).collect::<Option<_>>()?;
    if parts.last().is_some_and(|n| is_staging(n)) {
        return None;
    }
    Path::parse(parts.join("/")).ok()
}

fn list_nofollow(root: &FsPath, prefix: Option<&Path>) -> Vec<Result<ObjectMeta>> {
    let Some(dir) = prefix_dir(root, prefix) else { return Vec::new() };
    let walk = walkdir::WalkDir::new(&dir).min_depth(1).follow_links(false).follow_root_links(false);
    let mut out = Vec::new();
    for entry in walk {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => continue,
            Err(e) => {
                out.push(Err(generic(e)));
                continue;
            }
        };
        // Symlinks are not objects; directories only hold them.
        if !entry.file_type().is_file() {
            continue;
        }
        let Ok(rel) = entry.path().strip_prefix(root) else { continue };
        let Some(location) = key_of(rel) else { continue };
        match entry.metadata() {
            Ok(md) => out.push(Ok(meta_of(location, &md))),
            Err(e) if e.io_error().is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound) => {}
            Err(e) => out.push(Err(generic(e))),
        }
    }
    out
}

fn list_delimited(root: &FsPath, prefix: Option<&Path>) -> Result<ListResult> {
    let mut result =
        ListResult { common_prefixes: Vec::new(), objects: Vec::new(), extensions: Default::default() };
    let Some(dir) = prefix_dir(root, prefix) else { return Ok(result) };
    let entries = std::fs::read_dir(&dir).map_err(generic)?;
    for entry in entries {
        let entry = entry.map_err(generic)?;
        let Ok(ft) = entry.file_type() else { continue }; // does not follow links
        let Ok(rel) = entry.path().strip_prefix(root).map(FsPath::to_path_buf) else { continue };
        let Some(location) = key_of(&rel) else { continue };
        if ft.is_dir() {
            result.common_prefixes.push(location);
        } else if ft.is_file() {
            match entry.metadata() {
                Ok(md) => result.objects.push(meta_of(location, &md)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(generic(e)),
            }
        }
    }
    result.common_prefixes.sort();
    result.objects.sort_by(|a, b| a.location.cmp(&b.location));
    Ok(result)
}

#[async_trait]
impl ObjectStore for NoFollowLocal {
    async fn put_opts(&self, location: &Path, payload: PutPayload, opts: PutOptions) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(&self, locations: BoxStream<'static, Result<Path>>) -> BoxStream<'static, Result<Path>> {
        let root = Arc::new(self.root.clone());
        locations
            .map(move |location| {
                let root = root.clone();
                async move {
                    let location = location?;
                    let segs = segments(&location);
                    tokio::task::spawn_blocking(move || delete_nofollow(&root, &segs))
                        .await
                        .map_err(|e| object_store::Error::JoinError { source: e })??;
                    Ok(location)
                }
            })
            .buffered(8)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let root = self.root.clone();
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            tokio::task::spawn_blocking(move || list_nofollow(&root, prefix.as_ref()))
                .await
                .map_err(|e| object_store::Error::JoinError { source: e })
        })
        .map_ok(futures::stream::iter)
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let root = self.root.clone();
        let prefix = prefix.cloned();
        tokio::task::spawn_blocking(move || list_delimited(&root, prefix.as_ref()))
            .await
            .map_err(|e| object_store::Error::JoinError { source: e })?
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn lists_and_deletes_without_following_links() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, outside) = (tmp.path().join("store"), tmp.path().join("outside"));
        std::fs::create_dir_all(root.join("s/chunks")).unwrap();
        std::fs::create_dir_all(outside.join("chunks")).unwrap();
        std::fs::write(root.join("s/chunks/a"), b"a").unwrap();
        std::fs::write(outside.join("chunks/b"), b"b").unwrap();
        std::fs::write(outside.join("index.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.join("index.json"), root.join("s/index.json")).unwrap();
        let store = NoFollowLocal::new(&root).unwrap();

        let all: Vec<String> =
            store.list(None).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(all, ["s/chunks/a"], "symlinks are not objects and are not followed");
        let top = store.list_with_delimiter(None).await.unwrap();
        assert_eq!(top.common_prefixes, [Path::from("s")], "a symlinked directory is no prefix");
        let inside: Vec<ObjectMeta> = store.list(Some(&Path::from("evil"))).try_collect().await.unwrap();
        assert!(inside.is_empty());

        // Through the symlinked directory: refused, the target untouched.
        let e = store.delete(&Path::from("evil/chunks/b")).await.unwrap_err();
        let object_store::Error::PermissionDenied { source, .. } = &e else { panic!("{e}") };
        let refused = source.downcast_ref::<SymlinkRefused>().unwrap();
        assert_eq!(refused.component, root.join("evil"));
        assert!(outside.join("chunks/b").exists());
        // A symlink as the last component: the link goes, its target stays.
        store.delete(&Path::from("s/index.json")).await.unwrap();
        assert!(!root.join("s/index.json").exists() && outside.join("index.json").exists());
        // A plain object: removed, and the directories it emptied with it.
        store.delete(&Path::from("s/chunks/a")).await.unwrap();
        assert!(!root.join("s").exists() && root.exists());
        let e = store.delete(&Path::from("s/chunks/a")).await.unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    }
}
