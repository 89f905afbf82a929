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
//! Layers are untrusted input. Entries with absolute paths or `..` components are refused,
//! and so is any entry whose parent directory resolves (through symlinks laid down by
//! earlier entries) outside the root file system; symlinks are followed the way a process
//! chrooted into the rootfs would follow them. Whiteouts (`.wh.<name>`, `.wh..wh..opq`)
//! remove what lower layers wrote and are never materialised. Device nodes and FIFOs are
//! skipped. Ownership is preserved when running as root.
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
mod pack;
mod store;
mod unpack;

pub use ateom_core::ImageRef;
pub use bundle::{
    BundleOptions, DEFAULT_CAPABILITIES, DEFAULT_NOFILE, DEFAULT_PATH, OCI_RUNTIME_VERSION, ProcessOverrides,
    load_bundle, runtime_spec, write_bundle,
};
pub use error::ImageError;
pub use layout::REF_NAME_ANNOTATION;
pub use oci_spec;
pub use pack::{
    PACK_MTIME, PackDir, PackFile, PackSpec, PackedImage, default_counter_pack_spec, pack_layout,
};
pub use store::{ImageConfig, ImageStore, PreparedImage};
