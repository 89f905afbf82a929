//! Packing files into an OCI image layout: one reproducible gzip layer, an image config, a
//! manifest, and a tag in `index.json`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use ateom_core::ImageRef;
use oci_spec::image::{
    ConfigBuilder, Descriptor, DescriptorBuilder, ImageConfigurationBuilder, ImageIndex, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, PlatformBuilder, RootFsBuilder,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::error::{ImageError, IoContext};
use crate::layout::{REF_NAME_ANNOTATION, host_platform, read_limited, tags};

/// Modification time of every packed entry (the epoch: packing is reproducible).
pub const PACK_MTIME: u64 = 0;

/// A file to put in the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackFile {
    /// Where to read it on the host.
    pub source: PathBuf,
    /// Its absolute path in the image, e.g. `/counter`.
    pub dest: String,
    /// Its permission bits, e.g. `0o755`.
    pub mode: u32,
}

/// A directory to put in the image (parents of files are added with mode 0755 anyway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackDir {
    /// Its absolute path in the image, e.g. `/var/lib/counter`.
    pub path: String,
    /// Its permission bits, e.g. `0o755` or `0o1777`.
    pub mode: u32,
}

/// What [`pack_layout`] puts in an image, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PackSpec {
    /// The OCI image layout directory to create or add to.
    pub out_dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`) to give the manifest; an earlier
    /// manifest with the same tag is replaced.
    pub tag: String,
    /// Files, owned by root.
    pub files: Vec<PackFile>,
    /// Directories, owned by root.
    pub dirs: Vec<PackDir>,
    /// `Entrypoint`.
    pub entrypoint: Vec<String>,
    /// `Cmd`.
    pub cmd: Vec<String>,
    /// `Env`.
    pub env: BTreeMap<String, String>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User`.
    pub user: Option<String>,
    /// `ExposedPorts` (TCP).
    pub exposed_ports: Vec<u16>,
}

/// The result of [`pack_layout`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedImage {
    /// The manifest digest, `sha256:<hex>`.
    pub manifest_digest: String,
    /// The layout directory (absolute).
    pub dir: PathBuf,
    /// The tag the manifest was given.
    pub tag: String,
}

impl PackedImage {
    /// The reference to hand to [`ImageStore::prepare`](crate::ImageStore::prepare).
    pub fn image_ref(&self) -> ImageRef {
        ImageRef::OciLayout { dir: self.dir.clone(), tag: Some(self.tag.clone()) }
    }
}

/// The counter demo's image: `/counter` (0755) as entrypoint, `PORT=8080`,
/// `COUNTER_DIR=/var/lib/counter`, empty `/var/lib/counter` (0755) and `/tmp` (1777)
/// directories, port 8080 exposed, tag `latest`. `out_dir` is left empty: set it.
pub fn default_counter_pack_spec(counter_binary: &Path) -> PackSpec {
    PackSpec {
        out_dir: PathBuf::new(),
        tag: "latest".into(),
        files: vec![PackFile { source: counter_binary.to_owned(), dest: "/counter".into(), mode: 0o755 }],
        dirs: vec![
            PackDir { path: "/var/lib/counter".into(), mode: 0o755 },
            PackDir { path: "/tmp".into(), mode: 0o1777 },
        ],
        entrypoint: vec!["/counter".into()],
        cmd: vec![],
        env: BTreeMap::from([
            ("PORT".to_owned(), "8080".to_owned()),
            ("COUNTER_DIR".to_owned(), "/var/lib/counter".to_owned()),
        ]),
        working_dir: None,
        user: None,
        exposed_ports: vec![8080],
    }
}

/// Packs `spec` into the OCI image layout at `spec.out_dir` (created if needed, added to
/// if it is already a layout) under `spec.tag`, replacing an earlier manifest with that tag.
///
/// Writes one gzip layer with the files and directories (sorted, owned by root, mtime
/// [`PACK_MTIME`]), an image config for this host's platform, the manifest, `oci-layout`
/// and `index.json`. The same inputs always give the same manifest digest. Blobs and
/// `index.json` are written to temporary files and renamed into place.
pub fn pack_layout(spec: &PackSpec) -> Result<PackedImage, ImageError> {
    let tag = spec.tag.as_str();
    validate_tag(tag)?;
    if spec.out_dir.as_os_str().is_empty() {
        return Err(ImageError::InvalidPackSpec("out_dir is not set".into()));
    }
    let tree = build_tree(spec)?;
    let out_dir =
        std::path::absolute(&spec.out_dir).ctx(|| format!("resolving {}", spec.out_dir.display()))?;
    let blobs = out_dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).ctx(|| format!("creating {}", blobs.display()))?;

    // The layer.
    let (layer_digest, layer_size, diff_id) = write_layer(&tree, &blobs)?;
    let spec_err = |what: &'static str| {
        move |e: oci_spec::OciSpecError| ImageError::Spec { what, reason: e.to_string() }
    };
    let layer_desc = Descriptor::new(MediaType::ImageLayerGzip, layer_size, parse_digest(&layer_digest)?);

    // The config.
    let mut config = ConfigBuilder::default();
    if !spec.entrypoint.is_empty() {
        config = config.entrypoint(spec.entrypoint.clone());
    }
    if !spec.cmd.is_empty() {
        config = config.cmd(spec.cmd.clone());
    }
    if !spec.env.is_empty() {
        config = config.env(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>());
    }
    if let Some(w) = &spec.working_dir {
        config = config.working_dir(w.clone());
    }
    if let Some(u) = &spec.user {
        config = config.user(u.clone());
    }
    if !spec.exposed_ports.is_empty() {
        let mut ports: Vec<u16> = spec.exposed_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        config = config.exposed_ports(ports.iter().map(|p| format!("{p}/tcp")).collect::<Vec<_>>());
    }
    let (os, arch) = host_platform();
    let image_config = ImageConfigurationBuilder::default()
        .architecture(arch.clone())
        .os(os.clone())
        .config(config.build().map_err(spec_err("image config"))?)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id])
                .build()
                .map_err(spec_err("image config rootfs"))?,
        )
        .build()
        .map_err(spec_err("image config"))?;
    let config_bytes = canonical_json(&image_config)?;
    let config_digest = write_blob(&blobs, &config_bytes)?;
    let config_desc =
        Descriptor::new(MediaType::ImageConfig, config_bytes.len() as u64, parse_digest(&config_digest)?);

    // The manifest.
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(vec![layer_desc])
        .build()
        .map_err(spec_err("manifest"))?;
    let manifest_bytes = canonical_json(&manifest)?;
    let manifest_digest = write_blob(&blobs, &manifest_bytes)?;

    // oci-layout and index.json.
    write_atomic(&out_dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index_path = out_dir.join("index.json");
    let mut manifests: Vec<Descriptor> = match std::fs::metadata(&index_path) {
        Ok(_) => {
            let bytes = read_limited(&index_path, 8 << 20)?;
            let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| {
                ImageError::InvalidLayout { what: index_path.display().to_string(), reason: e.to_string() }
            })?;
            tracing::debug!(tags = ?tags(&index), "adding to an existing layout");
            index
                .manifests()
                .iter()
                .filter(|d| {
                    d.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)).map(String::as_str)
                        != Some(tag)
                })
                .cloned()
                .collect()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(ImageError::io(format!("reading {}", index_path.display()), e)),
    };
    manifests.push(
        DescriptorBuilder::default()
            .media_type(MediaType::ImageManifest)
            .size(manifest_bytes.len() as u64)
            .digest(parse_digest(&manifest_digest)?)
            .platform(
                PlatformBuilder::default().os(os).architecture(arch).build().map_err(spec_err("platform"))?,
            )
            .annotations(std::collections::HashMap::from([(REF_NAME_ANNOTATION.to_owned(), tag.to_owned())]))
            .build()
            .map_err(spec_err("index descriptor"))?,
    );
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(manifests)
        .build()
        .map_err(spec_err("index"))?;
    write_atomic(&index_path, &canonical_json(&index)?)?;
    tracing::debug!(dir = %out_dir.display(), tag, digest = %manifest_digest, "packed image");
    Ok(PackedImage { manifest_digest, dir: out_dir, tag: tag.to_owned() })
}

/// An entry of the layer.
#[derive(Clone, Debug)]
enum Node {
    Dir(u32),
    File { source: PathBuf, mode: u32 },
}

/// The layer's entries keyed by relative path; parents before children.
fn build_tree(spec: &PackSpec) -> Result<BTreeMap<String, Node>, ImageError> {
    let invalid = |m: String| ImageError::InvalidPackSpec(m);
    let mut tree: BTreeMap<String, Node> = BTreeMap::new();
    let mut explicit_dirs = BTreeMap::new();
    for d in &spec.dirs {
        check_mode(d.mode, &d.path)?;
        let rel = image_path(&d.path)?;
        if explicit_dirs.insert(rel.clone(), d.mode).is_some() {
            return Err(invalid(format!("directory {} is listed twice", d.path)));
        }
    }
    for f in &spec.files {
        check_mode(f.mode, &f.dest)?;
        let rel = image_path(&f.dest)?;
        if explicit_dirs.contains_key(&rel) {
            return Err(invalid(format!("{} is both a file and a directory", f.dest)));
        }
        if tree.insert(rel, Node::File { source: f.source.clone(), mode: f.mode }).is_some() {
            return Err(invalid(format!("{} is listed twice", f.dest)));
        }
    }
    let mut dirs: BTreeMap<String, u32> = BTreeMap::new();
    for path in tree.keys().chain(explicit_dirs.keys()) {
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.insert(p.to_string_lossy().into_owned(), 0o755);
            parent = p.parent();
        }
    }
    dirs.extend(explicit_dirs);
    for (path, mode) in dirs {
        if tree.contains_key(&path) {
            return Err(invalid(format!("/{path} is a file but also the parent of another entry")));
        }
        tree.insert(path, Node::Dir(mode));
    }
    Ok(tree)
}

/// `/a/b` -> `a/b`, refusing anything that is not a plain absolute path.
fn image_path(path: &str) -> Result<String, ImageError> {
    let invalid = |why: &str| ImageError::InvalidPackSpec(format!("image path {path:?} {why}"));
    if !path.starts_with('/') {
        return Err(invalid("must be absolute"));
    }
    if path.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    // `Path::components` silently drops inner `.`: look at the raw segments.
    if path.split('/').any(|s| s == "." || s == "..") {
        return Err(invalid("must not contain '.' or '..'"));
    }
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => {
                let n = n.to_string_lossy();
                if n.starts_with(".wh.") {
                    return Err(invalid("has a whiteout (.wh.) name"));
                }
                parts.push(n.into_owned());
            }
            Component::CurDir | Component::ParentDir | Component::Prefix(_) => {
                return Err(invalid("must not contain '.' or '..'"));
            }
        }
    }
    if parts.is_empty() {
        return Err(invalid("is the root directory"));
    }
    Ok(parts.join("/"))
}

fn check_mode(mode: u32, path: &str) -> Result<(), ImageError> {
    if mode > 0o7777 {
        return Err(ImageError::InvalidPackSpec(format!("{path}: mode {mode:o} has bits beyond 07777")));
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), ImageError> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid { Ok(()) } else { Err(ImageError::InvalidPackSpec(format!("invalid tag {tag:?}"))) }
}

/// Writes the gzip layer into `blobs`; returns its digest, size and diff id.
fn write_layer(tree: &BTreeMap<String, Node>, blobs: &Path) -> Result<(String, u64, String), ImageError> {
    let tmp = tempfile::NamedTempFile::new_in(blobs)
        .ctx(|| format!("creating a temporary file in {}", blobs.display()))?;
    let file = tmp.as_file().try_clone().ctx(|| "duplicating a file handle".to_owned())?;
    let gz = flate2::GzBuilder::new().mtime(0).write(HashWriter::new(file), flate2::Compression::default());
    let mut builder = tar::Builder::new(HashWriter::new(gz));
    builder.mode(tar::HeaderMode::Deterministic);
    let tar_err = |path: &str, e: io::Error| ImageError::io(format!("adding /{path} to the layer"), e);
    for (path, node) in tree {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(PACK_MTIME);
        match node {
            Node::Dir(mode) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(*mode);
                header.set_size(0);
                builder
                    .append_data(&mut header, format!("{path}/"), io::empty())
                    .map_err(|e| tar_err(path, e))?;
            }
            Node::File { source, mode } => {
                let f = File::open(source).ctx(|| format!("opening {}", source.display()))?;
                let meta = f.metadata().ctx(|| format!("reading the metadata of {}", source.display()))?;
                if !meta.is_file() {
                    return Err(ImageError::InvalidPackSpec(format!(
                        "{} is not a regular file",
                        source.display()
                    )));
                }
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(meta.len());
                builder.append_data(&mut header, path, f).map_err(|e| tar_err(path, e))?;
            }
        }
    }
    let finish_err = |e: io::Error| ImageError::io(format!("writing the layer in {}", blobs.display()), e);
    let uncompressed = builder.into_inner().map_err(finish_err)?;
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish().map_err(finish_err)?;
    let (mut file, digest, size) = compressed.finish();
    file.flush().map_err(finish_err)?;
    drop(file);
    let hex = digest.trim_start_matches("sha256:");
    let dest = blobs.join(hex);
    tmp.persist(&dest).map_err(|e| ImageError::io(format!("writing {}", dest.display()), e.error))?;
    Ok((digest, size, diff_id))
}

/// Writes a blob under its digest; returns the digest.
fn write_blob(blobs: &Path, bytes: &[u8]) -> Result<String, ImageError> {
    let hex = hex::encode(Sha256::digest(bytes));
    write_atomic(&blobs.join(&hex), bytes)?;
    Ok(format!("sha256:{hex}"))
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .ctx(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes).ctx(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path).map_err(|e| ImageError::io(format!("writing {}", path.display()), e.error))?;
    // NamedTempFile is created 0600; layouts are meant to be read by others.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
        .ctx(|| format!("chmod {}", path.display()))
}

fn parse_digest(d: &str) -> Result<oci_spec::image::Digest, ImageError> {
    d.parse().map_err(|_| ImageError::UnsupportedDigest { digest: d.to_owned() })
}

/// Serializes with object keys sorted at every level, whatever map types the document
/// uses internally (oci-spec keeps annotations and exposed ports in `HashMap`s), so the
/// bytes, and the digest, only depend on the content.
pub(crate) fn canonical_json<T: serde::Serialize>(doc: &T) -> Result<Vec<u8>, ImageError> {
    let value = serde_json::to_value(doc)
        .map_err(|e| ImageError::Spec { what: "JSON document", reason: e.to_string() })?;
    let mut out = String::new();
    write_canonical(&value, &mut out);
    Ok(out.into_bytes())
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        leaf => out.push_str(&leaf.to_string()),
    }
}

/// A writer that hashes and counts what passes through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, format!("sha256:{}", hex::encode(self.hasher.finalize())), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":1,"a":{"d":[{"z":1,"y":"\u0000"}],"c":null}}"#).unwrap();
        let out = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(out, r#"{"a":{"c":null,"d":[{"y":"\u0000","z":1}]},"b":1}"#);
    }

    #[test]
    fn image_paths_must_be_plain_and_absolute() {
        assert_eq!(image_path("/usr/local/bin/x").unwrap(), "usr/local/bin/x");
        assert_eq!(image_path("/tmp/").unwrap(), "tmp");
        for bad in ["rel", "/", "/a/../b", "/a/./b", "/.wh.x", "/a\0b"] {
            assert!(image_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_tree_adds_parents_and_rejects_conflicts() {
        let spec = PackSpec {
            files: vec![PackFile { source: "/dev/null".into(), dest: "/usr/bin/x".into(), mode: 0o755 }],
            dirs: vec![PackDir { path: "/usr".into(), mode: 0o700 }],
            ..PackSpec::default()
        };
        let tree = build_tree(&spec).unwrap();
        let listed: Vec<(&str, String)> = tree
            .iter()
            .map(|(k, n)| {
                (
                    k.as_str(),
                    match n {
                        Node::Dir(m) => format!("d{m:o}"),
                        Node::File { mode, .. } => format!("f{mode:o}"),
                    },
                )
            })
            .collect();
        assert_eq!(
            listed,
            [("usr", "d700".into()), ("usr/bin", "d755".into()), ("usr/bin/x", "f755".into())]
        );

        let mut clash = spec.clone();
        clash.files.push(PackFile { source: "/dev/null".into(), dest: "/usr/bin/x/y".into(), mode: 0o644 });
        assert!(matches!(build_tree(&clash), Err(ImageError::InvalidPackSpec(_))));
        let mut twice = spec.clone();
        twice.files.push(twice.files[0].clone());
        assert!(matches!(build_tree(&twice), Err(ImageError::InvalidPackSpec(_))));
        let mut both = spec;
        both.dirs.push(PackDir { path: "/usr/bin/x".into(), mode: 0o755 });
        assert!(matches!(build_tree(&both), Err(ImageError::InvalidPackSpec(_))));
    }
}
