//! Applying layer tars to a directory: decompression, digest checks, whiteouts and safe
//! path handling.
//!
//! Every entry's parent directory is resolved with [`crate::fspath`] (symlinks followed
//! inside the root, never out of it); the entry itself is then written at
//! `<resolved parent>/<name>` after removing whatever a lower layer left there, so the final
//! component is never followed either. Whiteouts only remove what lower layers wrote: the
//! paths written by the current layer are remembered and spared.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};
use tar::EntryType;

use crate::error::ImageError;
use crate::fspath::{self, ResolveError};
use crate::layout::{Layout, Verifier, hash_file};

/// Prefix of a whiteout file.
const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the opaque-directory marker.
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of a layer media type, or an error for non-layer types.
    pub(crate) fn of(desc: &Descriptor) -> Result<Self, ImageError> {
        Ok(match desc.media_type() {
            MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Self::None,
            MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Self::Gzip,
            MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Self::Zstd,
            MediaType::Other(m) if m == "application/vnd.docker.image.rootfs.diff.tar" => Self::None,
            MediaType::Other(m)
                if m == "application/vnd.docker.image.rootfs.diff.tar.gzip"
                    || m == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" =>
            {
                Self::Gzip
            }
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    digest: desc.digest().to_string(),
                    media_type: other.to_string(),
                    what: "layer",
                });
            }
        })
    }
}

/// Applies one layer to `root`. `diff_id` is the config's digest of the uncompressed tar,
/// checked when given.
pub(crate) fn apply_layer(
    layout: &Layout,
    desc: &Descriptor,
    diff_id: Option<&str>,
    root: &Path,
) -> Result<(), ImageError> {
    let compression = Compression::of(desc)?;
    let file = layout.open_blob(desc)?;
    let result = apply_stream(file, compression, desc, diff_id, root);
    match result {
        Err(err) if !matches!(err, ImageError::DigestMismatch { .. }) => {
            // A corrupt blob usually fails as a bad gzip stream or tar header long before
            // its digest can be checked: say it is corrupt when it is.
            let path = layout.blob_path(desc.digest())?;
            match hash_file(&path) {
                Ok(actual) if actual != desc.digest().as_ref() => {
                    Err(ImageError::DigestMismatch { digest: desc.digest().to_string(), actual })
                }
                _ => Err(err),
            }
        }
        other => other,
    }
}

fn apply_stream(
    file: std::fs::File,
    compression: Compression,
    desc: &Descriptor,
    diff_id: Option<&str>,
    root: &Path,
) -> Result<(), ImageError> {
    let layer = desc.digest().to_string();
    let archive_err = |source: io::Error| ImageError::Layer { layer: layer.clone(), entry: None, source };
    let buffered = BufReader::with_capacity(256 << 10, Verifier::new(file));
    let mut buffered = match compression {
        Compression::None => apply_tar(buffered, diff_id, &layer, root)?,
        Compression::Gzip => {
            apply_tar(flate2::bufread::MultiGzDecoder::new(buffered), diff_id, &layer, root)?.into_inner()
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(buffered).map_err(archive_err)?;
            apply_tar(decoder, diff_id, &layer, root)?.finish()
        }
    };
    // Hash whatever the decompressor left unread, so the digest covers the whole blob.
    io::copy(&mut buffered, &mut io::sink()).map_err(archive_err)?;
    buffered.into_inner().check(desc)
}

/// Applies the tar read from `reader`, verifies the diff id, and hands the reader back.
fn apply_tar<R: Read>(reader: R, diff_id: Option<&str>, layer: &str, root: &Path) -> Result<R, ImageError> {
    let archive_err = |source: io::Error| ImageError::Layer { layer: layer.to_owned(), entry: None, source };
    let mut archive = tar::Archive::new(Verifier::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    // Ownership can only be given away by root.
    let as_root = std::fs::metadata(root).map(|m| m.uid() == 0).unwrap_or(false);
    archive.set_preserve_ownerships(as_root);
    let mut applier = Applier { root, layer, written: HashSet::new() };
    for entry in archive.entries().map_err(archive_err)? {
        let mut entry = entry.map_err(archive_err)?;
        applier.apply(&mut entry)?;
    }
    let mut verifier = archive.into_inner();
    // The end-of-archive blocks and any padding after them are part of the diff id.
    io::copy(&mut verifier, &mut io::sink()).map_err(archive_err)?;
    let (reader, actual, _) = verifier.into_parts();
    match diff_id {
        Some(expected) if expected != actual => {
            return Err(ImageError::DiffIdMismatch {
                digest: layer.to_owned(),
                expected: expected.to_owned(),
                actual,
            });
        }
        _ => {}
    }
    Ok(reader)
}

struct Applier<'a> {
    root: &'a Path,
    layer: &'a str,
    /// Host paths this layer wrote (including directories it created implicitly).
    written: HashSet<PathBuf>,
}

impl Applier<'_> {
    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ImageError> {
        let raw = entry.path().map_err(|e| self.entry_err("?", e))?.into_owned();
        let shown = raw.display().to_string();
        let components =
            fspath::normal_components(&raw).map_err(|reason| self.unsafe_path(&shown, reason))?;
        let Some((name, parents)) = components.split_last() else {
            tracing::debug!(layer = self.layer, entry = %shown, "skipping the root directory entry");
            return Ok(());
        };
        let name_str = name.to_string_lossy();
        if name_str == OPAQUE_MARKER {
            return self.opaque(parents, &shown);
        }
        if let Some(hidden) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.starts_with(".wh.") {
                tracing::debug!(layer = self.layer, entry = %shown, "skipping unknown whiteout meta file");
                return Ok(());
            }
            return self.whiteout(parents, OsStr::new(hidden), &shown);
        }
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory
            | EntryType::Symlink
            | EntryType::Link => {}
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                tracing::debug!(layer = self.layer, entry = %shown, ?kind, "skipping device node or fifo");
                return Ok(());
            }
            other => {
                tracing::debug!(layer = self.layer, entry = %shown, kind = ?other, "skipping unsupported entry type");
                return Ok(());
            }
        }
        let parent = self.resolve(parents, fspath::MKDIR_P, &shown)?;
        let dst = parent.join(name);
        self.clear_for(&dst, kind == EntryType::Directory, &shown)?;
        if kind == EntryType::Link {
            self.hard_link(entry, &dst, &shown)?;
        } else {
            entry.unpack(&dst).map_err(|e| self.entry_err(&shown, e))?;
        }
        self.written.insert(dst);
        Ok(())
    }

    fn resolve(
        &mut self,
        components: &[&OsStr],
        mode: fspath::Mode,
        shown: &str,
    ) -> Result<PathBuf, ImageError> {
        let mut created = Vec::new();
        let result = fspath::resolve(self.root, components, mode, &mut created);
        self.written.extend(created);
        result.map_err(|e| match e {
            ResolveError::Io(path, source) => {
                self.entry_err(shown, io::Error::new(source.kind(), format!("{}: {source}", path.display())))
            }
            other => self.unsafe_path(shown, &other.to_string()),
        })
    }

    /// Makes room for an entry at `dst`: a directory over a directory merges, anything else
    /// replaces what is there.
    fn clear_for(&self, dst: &Path, is_dir: bool, shown: &str) -> Result<(), ImageError> {
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() && is_dir => Ok(()),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(dst).map_err(|e| self.entry_err(shown, e)),
            Ok(_) => std::fs::remove_file(dst).map_err(|e| self.entry_err(shown, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.entry_err(shown, e)),
        }
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dst: &Path,
        shown: &str,
    ) -> Result<(), ImageError> {
        let target = entry
            .link_name()
            .map_err(|e| self.entry_err(shown, e))?
            .ok_or_else(|| self.unsafe_path(shown, "hard link without a target"))?
            .into_owned();
        let components = fspath::normal_components(&target).map_err(|reason| {
            self.unsafe_path(shown, &format!("hard link target {}: {reason}", target.display()))
        })?;
        let Some((name, parents)) = components.split_last() else {
            return Err(self.unsafe_path(shown, "hard link to the root directory"));
        };
        let parent = self.resolve(parents, fspath::EXISTING_DIR, shown)?;
        let src = parent.join(name);
        match std::fs::symlink_metadata(&src) {
            Ok(m) if m.is_dir() => {
                Err(self.unsafe_path(shown, &format!("hard link target {} is a directory", target.display())))
            }
            Ok(_) => std::fs::hard_link(&src, dst).map_err(|e| self.entry_err(shown, e)),
            Err(e) => Err(self.entry_err(
                shown,
                io::Error::new(e.kind(), format!("hard link target {}: {e}", target.display())),
            )),
        }
    }

    /// `.wh.<name>`: removes `<name>` as lower layers left it.
    fn whiteout(&mut self, parents: &[&OsStr], hidden: &OsStr, shown: &str) -> Result<(), ImageError> {
        if hidden.is_empty() || hidden == "." || hidden == ".." {
            return Err(self.unsafe_path(shown, "whiteout of an invalid name"));
        }
        let Some(parent) = self.existing_dir(parents, shown)? else { return Ok(()) };
        self.prune(&parent.join(hidden), shown)
    }

    /// `.wh..wh..opq`: empties the directory of everything lower layers put there.
    fn opaque(&mut self, parents: &[&OsStr], shown: &str) -> Result<(), ImageError> {
        let Some(dir) = self.existing_dir(parents, shown)? else { return Ok(()) };
        self.prune_children(&dir, shown)
    }

    /// The directory, or `None` when it does not exist (nothing to white out).
    fn existing_dir(&mut self, parents: &[&OsStr], shown: &str) -> Result<Option<PathBuf>, ImageError> {
        let mut created = Vec::new();
        match fspath::resolve(self.root, parents, fspath::EXISTING_DIR, &mut created) {
            Ok(p) => Ok(Some(p)),
            Err(ResolveError::NotFound(_)) => Ok(None),
            Err(ResolveError::Io(path, source)) => {
                Err(self
                    .entry_err(shown, io::Error::new(source.kind(), format!("{}: {source}", path.display()))))
            }
            Err(other) => Err(self.unsafe_path(shown, &other.to_string())),
        }
    }

    /// Removes `path` unless this layer wrote it; for a directory this layer wrote, prunes
    /// its children instead.
    fn prune(&self, path: &Path, shown: &str) -> Result<(), ImageError> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.entry_err(shown, e)),
        };
        if !self.written.contains(path) {
            let removed =
                if meta.is_dir() { std::fs::remove_dir_all(path) } else { std::fs::remove_file(path) };
            return removed.map_err(|e| self.entry_err(shown, e));
        }
        if meta.is_dir() { self.prune_children(path, shown) } else { Ok(()) }
    }

    fn prune_children(&self, dir: &Path, shown: &str) -> Result<(), ImageError> {
        let entries = std::fs::read_dir(dir).map_err(|e| self.entry_err(shown, e))?;
        for child in entries {
            let child = child.map_err(|e| self.entry_err(shown, e))?;
            self.prune(&child.path(), shown)?;
        }
        Ok(())
    }

    fn unsafe_path(&self, entry: &str, reason: &str) -> ImageError {
        ImageError::UnsafePath {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn entry_err(&self, entry: &str, source: io::Error) -> ImageError {
        ImageError::Layer { layer: self.layer.to_owned(), entry: Some(entry.to_owned()), source }
    }
}
