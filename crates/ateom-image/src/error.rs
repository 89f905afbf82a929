//! The one error type of this crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while reading, unpacking or writing images and bundles.
///
/// Each variant names the thing at fault (a layout, a blob digest, a tar entry, a file) so
/// that the message alone tells an operator what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The directory is not an OCI image layout (no `oci-layout` or `index.json`).
    #[error("{}: not an OCI image layout: {reason}", dir.display())]
    LayoutMissing {
        /// The layout directory that was asked for.
        dir: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A layout document (`oci-layout`, `index.json`, a manifest, a config) is malformed.
    #[error("{what}: {reason}")]
    InvalidLayout {
        /// The document: a path or a blob digest.
        what: String,
        /// Why it was refused.
        reason: String,
    },
    /// No manifest in `index.json` carries the requested tag.
    #[error("{}: no image tagged {tag:?}; available tags: {}", dir.display(), list(available))]
    TagNotFound {
        /// The layout directory.
        dir: PathBuf,
        /// The tag that was asked for.
        tag: String,
        /// The tags the layout does have (`org.opencontainers.image.ref.name`).
        available: Vec<String>,
    },
    /// No tag was given and the layout does not hold exactly one image.
    #[error(
        "{}: holds {count} manifests, name one with a tag; available tags: {}",
        dir.display(),
        list(available)
    )]
    AmbiguousImage {
        /// The layout directory.
        dir: PathBuf,
        /// How many manifests `index.json` lists.
        count: usize,
        /// The tags the layout does have.
        available: Vec<String>,
    },
    /// The image (or image index) offers nothing for this host's platform.
    #[error("{what}: no image for {wanted}; available: {}", list(available))]
    NoMatchingPlatform {
        /// The index or image at fault.
        what: String,
        /// The platform this host runs, `os/architecture`.
        wanted: String,
        /// The platforms on offer.
        available: Vec<String>,
    },
    /// A blob named by a descriptor is not in `blobs/`.
    #[error("blob {digest} is missing ({})", path.display())]
    BlobMissing {
        /// The blob's digest.
        digest: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A blob's content does not hash to its digest.
    #[error("blob {digest} is corrupt: its content hashes to {actual}")]
    DigestMismatch {
        /// The digest the descriptor promised (the blob's name).
        digest: String,
        /// The digest of the bytes found.
        actual: String,
    },
    /// A blob's size differs from its descriptor's.
    #[error("blob {digest} is {actual} bytes, its descriptor says {expected}")]
    SizeMismatch {
        /// The blob's digest.
        digest: String,
        /// Size in the descriptor.
        expected: u64,
        /// Size found.
        actual: u64,
    },
    /// A layer's uncompressed content does not match the config's `rootfs.diff_ids`.
    #[error("layer {digest}: uncompressed content hashes to {actual}, the image config says {expected}")]
    DiffIdMismatch {
        /// The layer blob's digest.
        digest: String,
        /// The diff id in the image config.
        expected: String,
        /// The digest of the uncompressed tar.
        actual: String,
    },
    /// A JSON blob (manifest, config, index) is larger than this crate accepts.
    #[error("blob {digest} is {size} bytes, more than the {limit} allowed for a {what}")]
    BlobTooLarge {
        /// The blob's digest.
        digest: String,
        /// What the blob is (manifest, config, index).
        what: &'static str,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A digest whose algorithm is not sha256 or whose value is malformed.
    #[error("unsupported digest {digest:?}: only sha256 digests are supported")]
    UnsupportedDigest {
        /// The digest as written.
        digest: String,
    },
    /// A descriptor with a media type this crate cannot handle at that place.
    #[error("blob {digest}: unsupported media type {media_type:?} for a {what}")]
    UnsupportedMediaType {
        /// The blob's digest.
        digest: String,
        /// Its media type.
        media_type: String,
        /// What was expected there (layer, manifest, config).
        what: &'static str,
    },
    /// A layer entry that would be written outside the root file system.
    #[error("layer {layer}: refusing entry {entry:?}: {reason}")]
    UnsafePath {
        /// The layer blob's digest.
        layer: String,
        /// The entry's path as written in the tar.
        entry: String,
        /// Why it is unsafe.
        reason: String,
    },
    /// A layer is not a readable tar (stream), or an entry could not be applied.
    #[error("layer {layer}: {}: {source}", entry.as_deref().map_or_else(|| "reading the archive".to_owned(), |e| format!("entry {e:?}")))]
    Layer {
        /// The layer blob's digest.
        layer: String,
        /// The entry being applied, when the failure is about one.
        entry: Option<String>,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A layer went beyond one of the [`UnpackLimits`](crate::UnpackLimits).
    #[error("layer {layer}: {}{limit}", limit_place(entry.as_deref(), after.as_deref()))]
    LimitExceeded {
        /// The layer blob's digest.
        layer: String,
        /// The entry being read when the limit was reached.
        entry: Option<String>,
        /// When the limit was reached between entries (in the headers of the next one, or
        /// after the last one): the entry before, if any.
        after: Option<String>,
        /// Which limit, with the figures.
        limit: crate::Limit,
    },
    /// A directory that would hold image data (or bundle secrets) cannot be made private:
    /// it is not a directory, or another user owns it.
    #[error("{}: refusing to keep image data there: {reason}", path.display())]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// The image's user (or group) cannot be resolved in the root file system.
    #[error("user {user:?}: {reason}")]
    UnknownUser {
        /// The `User` value of the image config.
        user: String,
        /// What could not be found.
        reason: String,
    },
    /// Neither the overrides nor the image give a process to run.
    #[error("no command: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    /// An override (command, args, env) that cannot be put in a runtime spec.
    #[error("invalid {field}: {reason}")]
    InvalidOverride {
        /// Which override.
        field: String,
        /// Why.
        reason: String,
    },
    /// A [`PackSpec`](crate::PackSpec) that cannot be packed.
    #[error("invalid pack spec: {0}")]
    InvalidPackSpec(String),
    /// A bundle directory without a usable `config.json` or root file system.
    #[error("{}: invalid OCI bundle: {reason}", dir.display())]
    InvalidBundle {
        /// The bundle directory.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Building an OCI document failed (a builder refused its fields).
    #[error("building the {what}: {reason}")]
    Spec {
        /// Which document.
        what: &'static str,
        /// The builder's message.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl ImageError {
    /// An [`ImageError::Io`] with its context.
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}

fn limit_place(entry: Option<&str>, after: Option<&str>) -> String {
    match (entry, after) {
        (Some(e), _) => format!("entry {e:?}: "),
        (None, Some(a)) => format!("in the headers after entry {a:?}: "),
        (None, None) => String::new(),
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() { "(none)".to_owned() } else { items.join(", ") }
}

/// Adds path context to `io::Result`s.
pub(crate) trait IoContext<T> {
    /// Wraps the error in [`ImageError::Io`] with a lazily built context.
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::io(context(), e))
    }
}
