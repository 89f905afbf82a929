//! [`ImageStore`]: image references in, cached root file systems out.

use std::path::{Path, PathBuf};

use ateom_core::ImageRef;
use oci_spec::image::ImageConfiguration;

use crate::error::{ImageError, IoContext};
use crate::layout::{Layout, sha256_hex};
use crate::limits::UnpackLimits;
use crate::private::ensure_private_dir;
use crate::unpack::{ImageBudget, apply_layer};

/// Where unpacked root file systems are kept, keyed by manifest digest.
///
/// Layout of the cache: `<cache_root>/rootfs/<hex of the manifest digest>/` is a complete
/// root file system. It is built in a `.tmp-<hex>-<pid>-*` sibling and renamed into place
/// only when every layer applied and verified, so a directory under its final name is
/// always complete. Temporary siblings left by a process that died are removed by the
/// next `prepare` of the same image.
///
/// **The cache is private.** Unpacked files keep their owners and setuid/setgid bits (the
/// image must work inside the sandbox), so `<cache_root>` and `<cache_root>/rootfs` are
/// `0700` and owned by this process's user (every `prepare` checks and, for a cache made by
/// an older version, fixes this; another owner is refused): no other local user can reach
/// an unpacked file. The rootfs directories themselves are `0755`, as a root directory is
/// inside a sandbox. Unpacking is bounded by [`UnpackLimits`].
///
/// **A cached rootfs is shared by every workload of that image and must not be written
/// to**: run it read-only, or under an overlay, or copy it first.
#[derive(Clone, Debug)]
pub struct ImageStore {
    cache_root: PathBuf,
    limits: UnpackLimits,
}

/// The process-related parts of an image config, in plain types.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`, in image order, split at the first `=` (entries without one are dropped).
    pub env: Vec<(String, String)>,
    /// `WorkingDir`, if set and not empty.
    pub working_dir: Option<String>,
    /// `User` (`uid`, `uid:gid`, `name`, `name:group`…), if set and not empty.
    pub user: Option<String>,
    /// `ExposedPorts` keys such as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
}

impl ImageConfig {
    /// Extracts the process fields of an OCI image configuration.
    pub fn from_oci(config: &ImageConfiguration) -> Self {
        let Some(c) = config.config() else { return Self::default() };
        let env = c
            .env()
            .iter()
            .flatten()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())))
            .collect();
        let mut exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        exposed_ports.dedup();
        Self {
            entrypoint: c.entrypoint().clone().unwrap_or_default(),
            cmd: c.cmd().clone().unwrap_or_default(),
            env,
            working_dir: c.working_dir().clone().filter(|w| !w.is_empty()),
            user: c.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
        }
    }

    /// The exposed TCP ports (`8080/tcp` or a bare `8080`), sorted.
    pub fn tcp_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .exposed_ports
            .iter()
            .filter_map(|p| match p.split_once('/') {
                Some((port, proto)) if proto.eq_ignore_ascii_case("tcp") => port.parse().ok(),
                Some(_) => None,
                None => p.parse().ok(),
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// An image whose root file system is ready on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedImage {
    /// The manifest's digest, `sha256:<hex>`: the image's identity.
    pub manifest_digest: String,
    /// The unpacked root file system (in the cache: treat as read-only).
    pub rootfs: PathBuf,
    /// The process fields of the image config.
    pub config: ImageConfig,
    /// Whether the rootfs was already in the cache.
    pub cache_hit: bool,
}

impl ImageStore {
    /// A store that caches under `cache_root` (created on first use).
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        Self { cache_root: cache_root.into(), limits: UnpackLimits::default() }
    }

    /// The same store, unpacking under `limits` instead of [`UnpackLimits::default`].
    pub fn with_limits(mut self, limits: UnpackLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits unpacking runs under.
    pub fn limits(&self) -> &UnpackLimits {
        &self.limits
    }

    /// The cache root.
    pub fn cache_root(&self) -> &Path {
        &self.cache_root
    }

    /// Resolves `image`, verifies it and makes its root file system available.
    ///
    /// The reference is looked up in the layout's `index.json`: by the
    /// `org.opencontainers.image.ref.name` annotation when it has a tag, otherwise the
    /// layout must hold exactly one manifest (the error lists the tags). Image indexes are
    /// followed to this host's platform. The manifest and config are verified against their
    /// digests; layers are verified while they are unpacked (and against the config's
    /// `diff_ids`), in order, into `<cache_root>/rootfs/<hex digest>/`. A second call for the
    /// same manifest is a cache hit and does not touch the layers.
    ///
    /// The cache directories are made private first (see the type's docs): another user's
    /// directory there is [`ImageError::UnsafeDirectory`]. Unpacking stops at the store's
    /// [`UnpackLimits`] with [`ImageError::LimitExceeded`]; a refused image leaves nothing in
    /// the cache.
    ///
    /// Blocking: call it from `spawn_blocking` in async code.
    pub fn prepare(&self, image: &ImageRef) -> Result<PreparedImage, ImageError> {
        let ImageRef::OciLayout { dir, tag } = image;
        let layout = Layout::open(dir)?;
        let resolved = layout.resolve(tag.as_deref())?;
        let config = ImageConfig::from_oci(&resolved.config);
        let digest: oci_spec::image::Digest = resolved
            .manifest_digest
            .parse()
            .map_err(|_| ImageError::UnsupportedDigest { digest: resolved.manifest_digest.clone() })?;
        let hex = sha256_hex(&digest)?.to_owned();
        let cache_dir = self.cache_root.join("rootfs");
        // Before anything is looked up or written: the cache must be private.
        ensure_private_dir(&self.cache_root)?;
        ensure_private_dir(&cache_dir)?;
        let rootfs = cache_dir.join(&hex);
        if rootfs.is_dir() {
            tracing::debug!(image = %image, digest = %resolved.manifest_digest, "rootfs cache hit");
            return Ok(PreparedImage {
                manifest_digest: resolved.manifest_digest,
                rootfs,
                config,
                cache_hit: true,
            });
        }
        remove_stale_builds(&cache_dir, &hex);
        let staging = tempfile::Builder::new()
            .prefix(&format!(".tmp-{hex}-{}-", std::process::id()))
            .tempdir_in(&cache_dir)
            .ctx(|| format!("creating a staging directory in {}", cache_dir.display()))?;

        let layers = resolved.manifest.layers();
        let diff_ids = resolved.config.rootfs().diff_ids();
        if diff_ids.len() != layers.len() {
            return Err(ImageError::InvalidLayout {
                what: format!("image {}", resolved.manifest_digest),
                reason: format!(
                    "the manifest has {} layers but the config lists {} diff_ids",
                    layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let started = std::time::Instant::now();
        let mut budget = ImageBudget::new(self.limits);
        for (layer, diff_id) in layers.iter().zip(diff_ids) {
            apply_layer(&layout, layer, Some(diff_id), staging.path(), &mut budget)?;
        }
        set_mode(staging.path(), 0o755)?;
        let built = staging.keep();
        match std::fs::rename(&built, &rootfs) {
            Ok(()) => {}
            // Another prepare of the same image finished first: use its result.
            Err(_) if rootfs.is_dir() => {
                let _ = std::fs::remove_dir_all(&built);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&built);
                return Err(ImageError::io(
                    format!("renaming {} to {}", built.display(), rootfs.display()),
                    e,
                ));
            }
        }
        tracing::info!(
            image = %image,
            digest = %resolved.manifest_digest,
            layers = layers.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "unpacked image"
        );
        Ok(PreparedImage { manifest_digest: resolved.manifest_digest, rootfs, config, cache_hit: false })
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {}", path.display()))
}

/// Removes `.tmp-<hex>-<pid>-*` build directories whose process is gone.
fn remove_stale_builds(cache_dir: &Path, hex: &str) {
    let Ok(entries) = std::fs::read_dir(cache_dir) else { return };
    let prefix = format!(".tmp-{hex}-");
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(path = %entry.path().display(), "removing a stale partial rootfs");
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
