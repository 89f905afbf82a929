//! Applying layer tars to a directory: decompression, digest checks, whiteouts and safe
//! path handling.
//!
//! Every entry's parent directory is resolved with [`crate::fspath`] (symlinks followed
//! inside the root, never out of it); the entry itself is then written at
//! `<resolved parent>/<name>` after removing whatever a lower layer left there, so the final
//! component is never followed either. Whiteouts only remove what lower layers wrote: the
//! paths written by the current layer are remembered and spared.
//!
//! The layer is read through the meters of [`crate::limits`]: uncompressed bytes, the
//! compression ratio and the metadata the tar reader buffers are bounded while the stream
//! is read, entries, path lengths and depths and declared file sizes before an entry is
//! written.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, MediaType};
use tar::EntryType;

use crate::error::ImageError;
use crate::fspath::{self, ResolveError};
use crate::layout::{Layout, Verifier};
use crate::limits::{Consumed, Limit, Meter, Produced, UnpackLimits};

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

/// What unpacking one image has cost so far, against its [`UnpackLimits`].
#[derive(Debug)]
pub(crate) struct ImageBudget {
    limits: UnpackLimits,
    /// Tar stream bytes of the layers applied so far.
    stream_bytes: u64,
    /// Declared (apparent) sizes of the files of the layers so far.
    file_bytes: u64,
    /// Entries of the layers so far.
    entries: u64,
}

impl ImageBudget {
    pub(crate) fn new(limits: UnpackLimits) -> Self {
        Self { limits, stream_bytes: 0, file_bytes: 0, entries: 0 }
    }
}

/// Applies one layer to `root`. `diff_id` is the config's digest of the uncompressed tar,
/// checked when given.
///
/// The compressed blob is verified against its descriptor before a single entry is
/// written (a layer whose digest lies costs one read of the blob, not an unpack), and again
/// while it streams through the decompressor (the bytes unpacked are the bytes verified).
pub(crate) fn apply_layer(
    layout: &Layout,
    desc: &Descriptor,
    diff_id: Option<&str>,
    root: &Path,
    budget: &mut ImageBudget,
) -> Result<(), ImageError> {
    let compression = Compression::of(desc)?;
    layout.verify_blob(desc)?;
    let file = layout.open_blob(desc)?;
    apply_stream(file, compression, desc, diff_id, root, budget)
}

/// Largest zstd window accepted: 128 MiB (libzstd's own default; stated here so that a
/// frame asking for more memory is refused whatever the library's default becomes).
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

fn apply_stream(
    file: std::fs::File,
    compression: Compression,
    desc: &Descriptor,
    diff_id: Option<&str>,
    root: &Path,
    budget: &mut ImageBudget,
) -> Result<(), ImageError> {
    let layer = desc.digest().to_string();
    let archive_err = |source: io::Error| ImageError::Layer { layer: layer.clone(), entry: None, source };
    let meter = Meter::new(budget.limits, compression != Compression::None, budget.stream_bytes);
    let buffered = Consumed::new(BufReader::with_capacity(256 << 10, Verifier::new(file)), meter.clone());
    let ctx = TarContext { diff_id, layer: &layer, root, meter: &meter };
    let mut buffered = match compression {
        Compression::None => apply_tar(Produced::new(buffered, meter.clone()), &ctx, budget)?.into_inner(),
        Compression::Gzip => {
            let decoder = flate2::bufread::MultiGzDecoder::new(buffered);
            apply_tar(Produced::new(decoder, meter.clone()), &ctx, budget)?.into_inner().into_inner()
        }
        Compression::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(buffered).map_err(archive_err)?;
            decoder.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(archive_err)?;
            apply_tar(Produced::new(decoder, meter.clone()), &ctx, budget)?.into_inner().finish()
        }
    };
    budget.stream_bytes = budget.stream_bytes.saturating_add(meter.produced());
    // Hash whatever the decompressor left unread, so the digest covers the whole blob.
    io::copy(&mut buffered, &mut io::sink()).map_err(archive_err)?;
    buffered.into_inner().into_inner().check(desc)
}

/// What [`apply_tar`] needs to know about the layer.
struct TarContext<'a> {
    diff_id: Option<&'a str>,
    layer: &'a str,
    root: &'a Path,
    meter: &'a Meter,
}

/// Applies the tar read from `reader`, verifies the diff id, and hands the reader back.
fn apply_tar<R: Read>(reader: R, ctx: &TarContext<'_>, budget: &mut ImageBudget) -> Result<R, ImageError> {
    let layer = ctx.layer;
    let mut archive = tar::Archive::new(Verifier::new(reader));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    // Ownership can only be given away by root.
    let as_root = std::fs::metadata(ctx.root).map(|m| m.uid() == 0).unwrap_or(false);
    archive.set_preserve_ownerships(as_root);
    let mut applier = Applier {
        root: ctx.root,
        layer,
        limits: budget.limits,
        written: HashSet::new(),
        skipped: HashSet::new(),
        keys: RandomState::new(),
        last_entry: None,
        layer_file_bytes: 0,
    };
    let applied = (|| {
        let archive_err =
            |source: io::Error| ImageError::Layer { layer: layer.to_owned(), entry: None, source };
        let mut entries = archive.entries().map_err(archive_err)?;
        loop {
            // Whatever the tar reader reads until it hands out the next entry is headers
            // and metadata it keeps in memory: bounded.
            ctx.meter.begin_headers();
            let next = entries.next();
            ctx.meter.end_headers();
            let Some(entry) = next else { break };
            let mut entry = entry.map_err(archive_err)?;
            applier.apply(&mut entry, budget)?;
            // Read what the entry did not use (data of skipped entries), so that the next
            // header read does not count it as metadata.
            io::copy(&mut entry, &mut io::sink()).map_err(|e| applier.entry_err_last(e))?;
        }
        Ok(())
    })();
    // A reader that hit a limit surfaces as some `io::Error` wrapped by the tar crate:
    // report the limit instead.
    // Between entries (in the headers of the next one, or after the last), the error names
    // the entry before.
    let limited = |err: ImageError, applier: &Applier<'_>, between: bool| match ctx.meter.tripped() {
        Some(limit) => {
            let (entry, after) = match (between || ctx.meter.tripped_between_entries(), &applier.last_entry) {
                (true, last) => (None, last.clone()),
                (false, last) => (last.clone(), None),
            };
            ImageError::LimitExceeded { layer: layer.to_owned(), entry, after, limit }
        }
        None => err,
    };
    applied.map_err(|e| limited(e, &applier, false))?;
    let mut verifier = archive.into_inner();
    // The end-of-archive blocks and any padding after them are part of the diff id.
    io::copy(&mut verifier, &mut io::sink()).map_err(|source| {
        limited(ImageError::Layer { layer: layer.to_owned(), entry: None, source }, &applier, true)
    })?;
    let (reader, actual, _) = verifier.into_parts();
    match ctx.diff_id {
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
    limits: UnpackLimits,
    /// Keys of the host paths this layer wrote (including directories it created
    /// implicitly): whiteouts spare them. Hashes rather than paths, so that a layer of a
    /// million long paths does not cost gigabytes.
    written: HashSet<u64>,
    /// Keys of the host paths of entries skipped (devices, FIFOs): hard links to them are
    /// skipped too.
    skipped: HashSet<u64>,
    keys: RandomState,
    /// The entry being applied (or the last one), for errors.
    last_entry: Option<String>,
    /// Declared (apparent) sizes of this layer's files so far.
    layer_file_bytes: u64,
}

impl Applier<'_> {
    fn apply<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        budget: &mut ImageBudget,
    ) -> Result<(), ImageError> {
        let raw = entry.path().map_err(|e| self.entry_err("?", e))?.into_owned();
        let shown = raw.display().to_string();
        self.last_entry = Some(shown.clone());
        budget.entries += 1;
        if budget.entries > self.limits.max_entries {
            return Err(self.limit(&shown, Limit::Entries { max: self.limits.max_entries }));
        }
        self.check_path_len(raw.as_os_str().len(), &shown)?;
        let components =
            fspath::normal_components(&raw).map_err(|reason| self.unsafe_path(&shown, reason))?;
        if components.len() > self.limits.max_path_depth {
            return Err(self.limit(&shown, Limit::PathDepth { max: self.limits.max_path_depth }));
        }
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
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // Checked before a byte is written; sparse files count with their apparent
                // size (what copying the rootfs, or an ext4 image of it, would cost).
                let size = entry.size();
                self.layer_file_bytes = self.layer_file_bytes.saturating_add(size);
                budget.file_bytes = budget.file_bytes.saturating_add(size);
                if self.layer_file_bytes > self.limits.max_layer_bytes {
                    return Err(self.limit(&shown, Limit::LayerBytes { max: self.limits.max_layer_bytes }));
                }
                if budget.file_bytes > self.limits.max_image_bytes {
                    return Err(self.limit(&shown, Limit::ImageBytes { max: self.limits.max_image_bytes }));
                }
            }
            EntryType::Directory | EntryType::Symlink | EntryType::Link => {}
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                return self.skip_special(entry, parents, name, kind, &shown);
            }
            other => {
                tracing::debug!(layer = self.layer, entry = %shown, kind = ?other, "skipping unsupported entry type");
                return Ok(());
            }
        }
        if matches!(kind, EntryType::Symlink | EntryType::Link) {
            let len = entry.link_name_bytes().map_or(0, |l| l.len());
            self.check_path_len(len, &shown)?;
        }
        let parent = self.resolve(parents, fspath::MKDIR_P, &shown)?;
        let dst = parent.join(name);
        self.clear_for(&dst, kind == EntryType::Directory, &shown)?;
        if kind == EntryType::Link {
            if !self.hard_link(entry, &dst, &shown)? {
                return Ok(());
            }
        } else {
            entry.unpack(&dst).map_err(|e| self.entry_err(&shown, e))?;
        }
        self.written.insert(self.key(&dst));
        Ok(())
    }

    /// Device nodes and FIFOs are never created: a device node would hand the sandbox a
    /// host device (whatever the device cgroup says, a microVM's disk carries it too), and
    /// a FIFO in a root file system shared by every sandbox of the image would be a channel
    /// between them. Runtimes provide `/dev` themselves.
    fn skip_special<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parents: &[&OsStr],
        name: &OsStr,
        kind: EntryType,
        shown: &str,
    ) -> Result<(), ImageError> {
        let header = entry.header();
        let (major, minor) = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let what = if kind == EntryType::Fifo { "a FIFO" } else { "a device node" };
        tracing::warn!(
            layer = self.layer,
            entry = %shown,
            kind = ?kind,
            major,
            minor,
            "skipping {what} in the image: ateom never creates device nodes or FIFOs from image layers"
        );
        // Remember where it would have been, so that hard links to it are skipped as well;
        // whatever a lower layer had there is replaced by nothing, as the entry would have.
        if let Ok(parent) = self.resolve(parents, fspath::EXISTING_DIR, shown) {
            let dst = parent.join(name);
            self.clear_for(&dst, false, shown)?;
            self.skipped.insert(self.key(&dst));
        }
        Ok(())
    }

    fn check_path_len(&self, len: usize, shown: &str) -> Result<(), ImageError> {
        if len > self.limits.max_path_bytes {
            return Err(self.limit(shown, Limit::PathBytes { len, max: self.limits.max_path_bytes }));
        }
        Ok(())
    }

    fn key(&self, path: &Path) -> u64 {
        self.keys.hash_one(path)
    }

    /// Resolves the parent directories of an entry (which itself lies one level deeper).
    fn resolve(
        &mut self,
        components: &[&OsStr],
        mode: fspath::Mode,
        shown: &str,
    ) -> Result<PathBuf, ImageError> {
        let mut created = Vec::new();
        let max_depth = self.limits.max_path_depth.saturating_sub(1);
        let result = fspath::resolve(self.root, components, mode, max_depth, &mut created);
        for c in &created {
            self.written.insert(self.key(c));
        }
        result.map_err(|e| self.resolve_err(e, shown))
    }

    fn resolve_err(&self, e: ResolveError, shown: &str) -> ImageError {
        match e {
            ResolveError::Io(path, source) => {
                self.entry_err(shown, io::Error::new(source.kind(), format!("{}: {source}", path.display())))
            }
            ResolveError::TooDeep => self.limit(shown, Limit::PathDepth { max: self.limits.max_path_depth }),
            other => self.unsafe_path(shown, &other.to_string()),
        }
    }

    /// Makes room for an entry at `dst`: a directory over a directory merges, anything else
    /// replaces what is there (a symlink is removed, never followed).
    fn clear_for(&self, dst: &Path, is_dir: bool, shown: &str) -> Result<(), ImageError> {
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() && is_dir => Ok(()),
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(dst).map_err(|e| self.entry_err(shown, e)),
            Ok(_) => std::fs::remove_file(dst).map_err(|e| self.entry_err(shown, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.entry_err(shown, e)),
        }
    }

    /// Links `dst` to the entry's target, resolved inside the root like the entry's own
    /// parents. A target that is a symlink is linked as the symlink (never followed). Returns
    /// `false` when the target was a skipped device node or FIFO (so is the link).
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dst: &Path,
        shown: &str,
    ) -> Result<bool, ImageError> {
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
            Ok(_) => std::fs::hard_link(&src, dst).map(|()| true).map_err(|e| self.entry_err(shown, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.skipped.contains(&self.key(&src)) => {
                tracing::warn!(
                    layer = self.layer,
                    entry = %shown,
                    target = %target.display(),
                    "skipping a hard link to a skipped device node or FIFO"
                );
                self.skipped.insert(self.key(dst));
                Ok(false)
            }
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
        let max_depth = self.limits.max_path_depth.saturating_sub(1);
        match fspath::resolve(self.root, parents, fspath::EXISTING_DIR, max_depth, &mut created) {
            Ok(p) => Ok(Some(p)),
            Err(ResolveError::NotFound(_)) => Ok(None),
            Err(other) => Err(self.resolve_err(other, shown)),
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
        if !self.written.contains(&self.key(path)) {
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

    fn limit(&self, entry: &str, limit: Limit) -> ImageError {
        ImageError::LimitExceeded {
            layer: self.layer.to_owned(),
            entry: Some(entry.to_owned()),
            after: None,
            limit,
        }
    }

    fn entry_err(&self, entry: &str, source: io::Error) -> ImageError {
        ImageError::Layer { layer: self.layer.to_owned(), entry: Some(entry.to_owned()), source }
    }

    /// An error about the last entry seen.
    fn entry_err_last(&self, source: io::Error) -> ImageError {
        ImageError::Layer { layer: self.layer.to_owned(), entry: self.last_entry.clone(), source }
    }
}
