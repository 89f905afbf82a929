//! OCI images for ateom: image layouts in, root file systems and runtime bundles out.
//!
//! - [`ImageStore::prepare`] resolves an [`ImageRef`] (an OCI image layout directory and
//!   an optional tag), verifies every blob against its sha256 digest, and unpacks the layers
//!   into a cached root file system keyed by the manifest digest.
//! - [`runtime_spec`] turns an image config plus per-workload overrides into an OCI runtime
//!   spec with Kubernetes' command/args semantics; [`write_bundle`] writes it as
//!   `config.json`; [`load_bundle`] reads a bundle that a node agent prepared.
//! - [`pack_layout`] packs files (a static binary, say) into a reproducible image layout;
//!   [`default_counter_pack_spec`] describes the `counter` demo image.
//!
//! The API is synchronous and does file system work: from async code, call it inside
//! `spawn_blocking`.
//!
//! # Layer safety
//!
//! Layers are untrusted input (tenants supply images; the host has other, unprivileged
//! users). What holds, each proved by a test in `tests/hostile.rs` or `tests/private.rs`:
//!
//! - **Verified before use.** A layer blob whose size or sha256 differs from its descriptor
//!   is refused before any entry is written; its uncompressed content must match the
//!   config's `diff_id`.
//! - **Nothing lands outside the root.** Entries with absolute paths or `..` components are
//!   refused, and so is any entry whose parent directory resolves (through symlinks laid
//!   down by this or earlier layers) outside the root file system; symlinks are followed the
//!   way a process chrooted into the rootfs would follow them. An entry replaces whatever is
//!   at its own path (a symlink there is removed, never followed). Hard link targets resolve
//!   the same way, and a target that is a symlink is linked as the symlink.
//! - **Whiteouts** (`.wh.<name>`, `.wh..wh..opq`) remove only what lower layers wrote, are
//!   never materialised, and `.wh.`, `.wh..`, `.wh...` are refused.
//! - **No devices, no FIFOs.** Device nodes and FIFOs are skipped with a warning naming the
//!   layer and entry (and so are hard links to them): the sandbox never gets a host device
//!   from an image, and sandboxes sharing a cached rootfs get no channel between them.
//!   Runtimes provide `/dev` themselves.
//! - **Bounded.** [`UnpackLimits`] caps uncompressed bytes per layer and per image, entries,
//!   path length and depth (after symlinks), the decompression ratio (gzip and zstd bombs
//!   stop within the first 64 MiB), the metadata of an entry held in memory (1 MiB) and the
//!   zstd window (128 MiB). Hitting one is [`ImageError::LimitExceeded`], naming the layer,
//!   the entry and the option to raise.
//! - **Image semantics kept, but private.** Modes (setuid, setgid, sticky) and, when
//!   running as root, owners are preserved so that the image works inside the sandbox; the
//!   cache above the unpacked trees is `0700` (see [`ImageStore`]), so no other host user
//!   can reach them. Extended attributes (file capabilities) are not unpacked.
//! - Bundle `config.json` files (they hold the environment, often secrets) are created
//!   `0600` and renamed into place ([`write_bundle`]).
//!
//! # Example
//!
//! ```no_run
//! use std::path::Path;
//! use ateom_image::{
//!     BundleOptions, ImageStore, ProcessOverrides, default_counter_pack_spec, pack_layout, runtime_spec,
//!     write_bundle,
//! };
//!
//! # fn main() -> Result<(), ateom_image::ImageError> {
//! let mut spec = default_counter_pack_spec(Path::new("/path/to/static/counter"));
//! spec.out_dir = "/var/lib/ateom/layouts/counter".into();
//! let packed = pack_layout(&spec)?;
//! let store = ImageStore::new("/var/lib/ateom/images");
//! let image = store.prepare(&packed.image_ref())?;
//! let opts = BundleOptions {
//!     rootfs: image.rootfs.clone(),
//!     hostname: "counter".into(),
//!     netns_path: None,
//!     readonly_rootfs: true,
//! };
//! let oci = runtime_spec(&image.config, &ProcessOverrides::default(), &opts)?;
//! write_bundle(Path::new("/run/ateom/bundles/counter"), &oci)?;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod bundle;
mod error;
mod fspath;
mod layout;
mod limits;
mod pack;
mod private;
mod store;
mod unpack;

pub use ateom_core::ImageRef;
pub use bundle::{
    BundleOptions, DEFAULT_CAPABILITIES, DEFAULT_NOFILE, DEFAULT_PATH, OCI_RUNTIME_VERSION, ProcessOverrides,
    canonical_json, load_bundle, runtime_spec, write_bundle,
};
pub use error::ImageError;
pub use layout::REF_NAME_ANNOTATION;
pub use limits::{Limit, UnpackLimits};
pub use oci_spec;
pub use pack::{
    PACK_MTIME, PackDir, PackFile, PackSpec, PackedImage, default_counter_pack_spec, pack_layout,
};
pub use private::ensure_private_dir;
pub use store::{ImageConfig, ImageStore, PreparedImage};
