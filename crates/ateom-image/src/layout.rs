//! Reading an OCI image layout: `index.json`, tag selection, platform selection, and
//! content-addressed blobs verified against their descriptors.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, IoContext};

/// Annotation that carries a manifest's tag in `index.json`.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Largest index, manifest or config blob accepted (they are read into memory).
const MAX_JSON_BLOB: u64 = 8 << 20;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// An opened OCI image layout directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    dir: PathBuf,
}

/// A manifest and its config, read and verified.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedImage {
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    pub config: ImageConfiguration,
}

impl Layout {
    /// Opens `dir`, checking that it looks like a layout.
    pub(crate) fn open(dir: &Path) -> Result<Self, ImageError> {
        let missing = |reason: String| ImageError::LayoutMissing { dir: dir.to_owned(), reason };
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(missing("it is not a directory".into())),
            Err(e) => return Err(missing(format!("cannot access it: {e}"))),
        }
        let marker = dir.join("oci-layout");
        let text = match std::fs::read(&marker) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(missing("no oci-layout file".into()));
            }
            Err(e) => return Err(ImageError::io(format!("reading {}", marker.display()), e)),
        };
        let version = serde_json::from_slice::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("imageLayoutVersion").and_then(|v| v.as_str()).map(str::to_owned));
        match version {
            Some(v) if v.starts_with("1.") => {}
            other => {
                return Err(ImageError::InvalidLayout {
                    what: marker.display().to_string(),
                    reason: format!("unsupported imageLayoutVersion {other:?} (want 1.x)"),
                });
            }
        }
        if !dir.join("index.json").is_file() {
            return Err(missing("no index.json".into()));
        }
        Ok(Self { dir: dir.to_owned() })
    }

    /// Reads `index.json`.
    pub(crate) fn index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.dir.join("index.json");
        let bytes = read_limited(&path, MAX_JSON_BLOB)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidLayout {
            what: path.display().to_string(),
            reason: e.to_string(),
        })
    }

    /// Picks the manifest for `tag` (or the only one), descends into image indexes to this
    /// host's platform, and reads the manifest and config, verifying both.
    pub(crate) fn resolve(&self, tag: Option<&str>) -> Result<ResolvedImage, ImageError> {
        let index = self.index()?;
        let available = tags(&index);
        let descriptor = match tag {
            Some(tag) => {
                let matching: Vec<&Descriptor> =
                    index.manifests().iter().filter(|d| ref_name(d) == Some(tag)).collect();
                match matching.as_slice() {
                    [] => {
                        return Err(ImageError::TagNotFound {
                            dir: self.dir.clone(),
                            tag: tag.to_owned(),
                            available,
                        });
                    }
                    [one] => (*one).clone(),
                    // Several per-platform manifests under one tag.
                    many => select_platform(many, &format!("tag {tag:?} in {}", self.dir.display()))?,
                }
            }
            None => match index.manifests().as_slice() {
                [one] => one.clone(),
                many => {
                    return Err(ImageError::AmbiguousImage {
                        dir: self.dir.clone(),
                        count: many.len(),
                        available,
                    });
                }
            },
        };
        let manifest_desc = self.descend_to_manifest(descriptor, 0)?;
        let manifest_digest = manifest_desc.digest().to_string();
        let manifest: ImageManifest = self.read_json(&manifest_desc, "manifest")?;
        let config_desc = manifest.config();
        match config_desc.media_type() {
            MediaType::ImageConfig => {}
            MediaType::Other(m) if m == DOCKER_CONFIG => {}
            other => {
                return Err(ImageError::UnsupportedMediaType {
                    digest: config_desc.digest().to_string(),
                    media_type: other.to_string(),
                    what: "image config",
                });
            }
        }
        let config: ImageConfiguration = self.read_json(config_desc, "config")?;
        let (os, arch) = host_platform();
        if config.os() != &os || config.architecture() != &arch {
            return Err(ImageError::NoMatchingPlatform {
                what: format!("image {manifest_digest}"),
                wanted: format!("{os}/{arch}"),
                available: vec![format!("{}/{}", config.os(), config.architecture())],
            });
        }
        Ok(ResolvedImage { manifest_digest, manifest, config })
    }

    fn descend_to_manifest(&self, desc: Descriptor, depth: usize) -> Result<Descriptor, ImageError> {
        match desc.media_type() {
            MediaType::ImageManifest => Ok(desc),
            MediaType::Other(m) if m == DOCKER_MANIFEST => Ok(desc),
            MediaType::ImageIndex if depth < 4 => self.pick_from_index(&desc, depth),
            MediaType::Other(m) if m == DOCKER_MANIFEST_LIST && depth < 4 => {
                self.pick_from_index(&desc, depth)
            }
            other => Err(ImageError::UnsupportedMediaType {
                digest: desc.digest().to_string(),
                media_type: other.to_string(),
                what: "manifest",
            }),
        }
    }

    fn pick_from_index(&self, desc: &Descriptor, depth: usize) -> Result<Descriptor, ImageError> {
        let nested: ImageIndex = self.read_json(desc, "index")?;
        let candidates: Vec<&Descriptor> = nested.manifests().iter().collect();
        let chosen = select_platform(&candidates, &format!("image index {}", desc.digest()))?;
        self.descend_to_manifest(chosen, depth + 1)
    }

    /// Where the blob for `digest` lives, after checking the digest is a sha256 one.
    pub(crate) fn blob_path(&self, digest: &oci_spec::image::Digest) -> Result<PathBuf, ImageError> {
        let hex = sha256_hex(digest)?;
        Ok(self.dir.join("blobs").join("sha256").join(hex))
    }

    /// Opens a blob for streaming; the caller verifies it through a [`Verifier`].
    pub(crate) fn open_blob(&self, desc: &Descriptor) -> Result<File, ImageError> {
        let path = self.blob_path(desc.digest())?;
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ImageError::BlobMissing { digest: desc.digest().to_string(), path },
            _ => ImageError::io(format!("opening blob {}", path.display()), e),
        })
    }

    /// Checks a blob against its descriptor without using it: its size first (a blob of
    /// another size is not read at all), then its digest.
    pub(crate) fn verify_blob(&self, desc: &Descriptor) -> Result<(), ImageError> {
        let file = self.open_blob(desc)?;
        let len = file.metadata().ctx(|| format!("inspecting blob {}", desc.digest()))?.len();
        if len != desc.size() {
            return Err(ImageError::SizeMismatch {
                digest: desc.digest().to_string(),
                expected: desc.size(),
                actual: len,
            });
        }
        let mut verifier = Verifier::new(file);
        io::copy(&mut verifier, &mut io::sink()).ctx(|| format!("reading blob {}", desc.digest()))?;
        verifier.check(desc)
    }

    /// Reads a whole blob (at most [`MAX_JSON_BLOB`]) and verifies size and digest.
    pub(crate) fn read_blob(&self, desc: &Descriptor, what: &'static str) -> Result<Vec<u8>, ImageError> {
        if desc.size() > MAX_JSON_BLOB {
            return Err(ImageError::BlobTooLarge {
                digest: desc.digest().to_string(),
                what,
                size: desc.size(),
                limit: MAX_JSON_BLOB,
            });
        }
        let mut verifier = Verifier::new(self.open_blob(desc)?);
        let mut bytes = Vec::new();
        (&mut verifier)
            .take(MAX_JSON_BLOB + 1)
            .read_to_end(&mut bytes)
            .ctx(|| format!("reading blob {}", desc.digest()))?;
        verifier.check(desc)?;
        Ok(bytes)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        desc: &Descriptor,
        what: &'static str,
    ) -> Result<T, ImageError> {
        let bytes = self.read_blob(desc, what)?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidLayout {
            what: format!("{what} {}", desc.digest()),
            reason: e.to_string(),
        })
    }
}

/// The tags of an index, sorted, without duplicates.
pub(crate) fn tags(index: &ImageIndex) -> Vec<String> {
    let mut tags: Vec<String> = index.manifests().iter().filter_map(ref_name).map(str::to_owned).collect();
    tags.sort();
    tags.dedup();
    tags
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations().as_ref()?.get(REF_NAME_ANNOTATION).map(String::as_str)
}

/// This host's OCI platform.
pub(crate) fn host_platform() -> (Os, Arch) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => Arch::Amd64,
        "aarch64" => Arch::ARM64,
        "x86" => Arch::i386,
        "arm" => Arch::ARM,
        "riscv64" => Arch::from("riscv64"),
        "powerpc64" => Arch::from("ppc64"),
        "s390x" => Arch::from("s390x"),
        other => Arch::from(other),
    };
    (Os::Linux, arch)
}

/// Picks the descriptor for this host's platform among several.
fn select_platform(candidates: &[&Descriptor], what: &str) -> Result<Descriptor, ImageError> {
    let (os, arch) = host_platform();
    let matching: Vec<&&Descriptor> = candidates
        .iter()
        .filter(|d| d.platform().as_ref().is_some_and(|p| p.os() == &os && p.architecture() == &arch))
        .collect();
    match matching.as_slice() {
        [one] => Ok((**one).clone()),
        _ => Err(ImageError::NoMatchingPlatform {
            what: what.to_owned(),
            wanted: if matching.is_empty() {
                format!("{os}/{arch}")
            } else {
                format!("{os}/{arch} (exactly one; found {})", matching.len())
            },
            available: candidates
                .iter()
                .map(|d| match d.platform() {
                    Some(p) => format!("{}/{}", p.os(), p.architecture()),
                    None => format!("{} (no platform)", d.digest()),
                })
                .collect(),
        }),
    }
}

/// The hex part of a sha256 digest, refusing other algorithms.
pub(crate) fn sha256_hex(digest: &oci_spec::image::Digest) -> Result<&str, ImageError> {
    let hex = digest.digest();
    let valid = digest.algorithm() == &oci_spec::image::DigestAlgorithm::Sha256
        && hex.len() == 64
        && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if valid { Ok(hex) } else { Err(ImageError::UnsupportedDigest { digest: digest.to_string() }) }
}

/// Reads a file into memory, refusing more than `limit` bytes.
pub(crate) fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ImageError> {
    let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).ctx(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(ImageError::InvalidLayout {
            what: path.display().to_string(),
            reason: format!("larger than {limit} bytes"),
        });
    }
    Ok(bytes)
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct Verifier<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Verifier<R> {
    pub(crate) fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    /// `sha256:<hex>` of everything read so far, and its length.
    pub(crate) fn finish(self) -> (String, u64) {
        let (_, digest, count) = self.into_parts();
        (digest, count)
    }

    /// The inner reader, the `sha256:<hex>` of everything read so far, and its length.
    pub(crate) fn into_parts(self) -> (R, String, u64) {
        (self.inner, format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count)
    }

    /// Checks what was read against a descriptor: digest first (it names the blob), then size.
    pub(crate) fn check(self, desc: &Descriptor) -> Result<(), ImageError> {
        let (actual, size) = self.finish();
        let digest = desc.digest().to_string();
        if actual != digest {
            return Err(ImageError::DigestMismatch { digest, actual });
        }
        if size != desc.size() {
            return Err(ImageError::SizeMismatch { digest, expected: desc.size(), actual: size });
        }
        Ok(())
    }
}

impl<R: Read> Read for Verifier<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}
