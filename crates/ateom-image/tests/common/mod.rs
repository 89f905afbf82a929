//! Helpers shared by the integration tests: hand-made tar layers and a way to stack them
//! onto a packed image.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ateom_image::oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use ateom_image::{PackDir, PackFile, PackSpec, PackedImage, REF_NAME_ANNOTATION, pack_layout};
use sha2::{Digest, Sha256};

/// One entry of a hand-made layer. Names and link targets are written raw into the tar
/// header, so hostile ones (`../x`, `/abs`) can be produced.
pub enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, u32, &'a [u8]),
    /// A file with an owner: name, mode, uid, gid, content.
    Owned(&'a str, u32, u64, u64, &'a [u8]),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDev(&'a str),
    BlockDev(&'a str),
    Fifo(&'a str),
    /// A file whose name may be longer than a tar header holds (GNU long-name entry).
    LongName(&'a str, &'a [u8]),
    /// A symlink whose target may be longer than a tar header holds.
    LongSymlink(&'a str, &'a str),
    /// PAX extended header records for the next entry.
    Pax(Vec<(&'a str, Vec<u8>)>),
    /// A bare header of this type with this content (metadata entries).
    Raw(tar::EntryType, &'a str, &'a [u8]),
    /// A GNU sparse file of this apparent size: 512 bytes of data at its end, a hole before.
    Sparse(&'a str, u64),
}

fn raw_header(name: &str, kind: tar::EntryType, mode: u32, size: u64, link: Option<&str>) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    {
        let old = h.as_old_mut();
        assert!(name.len() < old.name.len());
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            old.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    h
}

/// A tar numeric field in base-256 (GNU), for values octal cannot hold.
fn base256(field: &mut [u8; 12], value: u64) {
    *field = [0; 12];
    field[0] = 0x80;
    field[4..].copy_from_slice(&value.to_be_bytes());
}

/// Appends `e` to a tar being built.
pub fn append<W: std::io::Write>(b: &mut tar::Builder<W>, e: &E<'_>) {
    let simple = |n: &str, kind, mode, data: &[u8], link| {
        (raw_header(n, kind, mode, data.len() as u64, link), data.to_vec())
    };
    let (h, data) = match e {
        E::Dir(n, m) => simple(n, tar::EntryType::Directory, *m, b"", None),
        E::File(n, m, d) => simple(n, tar::EntryType::Regular, *m, d, None),
        E::Owned(n, m, uid, gid, d) => {
            let (mut h, d) = simple(n, tar::EntryType::Regular, *m, d, None);
            h.set_uid(*uid);
            h.set_gid(*gid);
            h.set_cksum();
            (h, d)
        }
        E::Symlink(n, t) => simple(n, tar::EntryType::Symlink, 0o777, b"", Some(t)),
        E::HardLink(n, t) => simple(n, tar::EntryType::Link, 0o644, b"", Some(t)),
        E::CharDev(n) | E::BlockDev(n) => {
            let kind = if matches!(e, E::CharDev(_)) { tar::EntryType::Char } else { tar::EntryType::Block };
            let (mut h, d) = simple(n, kind, 0o666, b"", None);
            // /dev/sda's numbers: a device the sandbox must never get.
            h.set_device_major(8).unwrap();
            h.set_device_minor(0).unwrap();
            h.set_cksum();
            (h, d)
        }
        E::Fifo(n) => simple(n, tar::EntryType::Fifo, 0o644, b"", None),
        E::LongName(n, d) => {
            let mut h = raw_header("x", tar::EntryType::Regular, 0o644, d.len() as u64, None);
            b.append_data(&mut h, n, *d).unwrap();
            return;
        }
        E::LongSymlink(n, t) => {
            let mut h = raw_header("x", tar::EntryType::Symlink, 0o777, 0, None);
            b.append_link(&mut h, n, t).unwrap();
            return;
        }
        E::Pax(records) => {
            b.append_pax_extensions(records.iter().map(|(k, v)| (*k, v.as_slice()))).unwrap();
            return;
        }
        E::Raw(kind, n, d) => simple(n, *kind, 0o644, d, None),
        E::Sparse(n, apparent) => {
            let mut h = raw_header(n, tar::EntryType::GNUSparse, 0o644, 512, None);
            let gnu = h.as_gnu_mut().unwrap();
            base256(&mut gnu.sparse[0].offset, apparent - 512);
            base256(&mut gnu.sparse[0].numbytes, 512);
            base256(&mut gnu.realsize, *apparent);
            h.set_cksum();
            (h, vec![b's'; 512])
        }
    };
    b.append(&h, data.as_slice()).unwrap();
}

/// An uncompressed tar of `entries`, in order.
pub fn tar_bytes(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append(&mut b, e);
    }
    b.into_inner().unwrap()
}

/// The tar header of [`bomb`]'s file.
pub fn bomb_header(name: &str, mib: u64) -> tar::Header {
    raw_header(name, tar::EntryType::Regular, 0o644, mib << 20, None)
}

/// A decompression bomb: a tar holding one file `name` of `mib` MiB of zeros, as
/// concatenated gzip members (or zstd frames) that each inflate one MiB, so that building
/// it costs one compression of 1 MiB. Returns the compressed bytes.
pub fn bomb(name: &str, mib: u64, zstd_frames: bool) -> Vec<u8> {
    let compress = |bytes: &[u8]| {
        if zstd_frames {
            zstd::encode_all(bytes, 19).unwrap()
        } else {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            enc.write_all(bytes).unwrap();
            enc.finish().unwrap()
        }
    };
    let header = bomb_header(name, mib);
    let one_mib = compress(&vec![0u8; 1 << 20]);
    let mut out = compress(header.as_bytes());
    for _ in 0..mib {
        out.extend_from_slice(&one_mib);
    }
    out.extend_from_slice(&compress(&[0u8; 1024]));
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

pub fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).unwrap()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

pub fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))
}

fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let d = sha256(bytes);
    std::fs::write(blob_path(layout, &d), bytes).unwrap();
    d
}

/// The index descriptor for `tag`.
pub fn tagged(layout: &Path, tag: &str) -> Descriptor {
    let index = ImageIndex::from_file(layout.join("index.json")).unwrap();
    index
        .manifests()
        .iter()
        .find(|d| {
            d.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)).map(String::as_str) == Some(tag)
        })
        .unwrap()
        .clone()
}

pub fn manifest(layout: &Path, tag: &str) -> ImageManifest {
    ImageManifest::from_file(blob_path(layout, tagged(layout, tag).digest().as_ref())).unwrap()
}

/// Stacks a layer blob (`tar` is its uncompressed content, `blob` the bytes stored) on the
/// image tagged `tag`, rewriting config, manifest and index. Returns the layer digest and
/// the new manifest digest.
pub fn add_layer(
    layout: &Path,
    tag: &str,
    tar: &[u8],
    blob: &[u8],
    media_type: MediaType,
) -> (String, String) {
    add_layer_with_diff_id(layout, tag, blob, media_type, sha256(tar))
}

pub fn add_layer_with_diff_id(
    layout: &Path,
    tag: &str,
    blob: &[u8],
    media_type: MediaType,
    diff_id: String,
) -> (String, String) {
    let layer_digest = write_blob(layout, blob);
    let mut manifest = manifest(layout, tag);
    let mut config =
        ImageConfiguration::from_file(blob_path(layout, manifest.config().digest().as_ref())).unwrap();
    let mut rootfs = config.rootfs().clone();
    rootfs.diff_ids_mut().push(diff_id);
    config.set_rootfs(rootfs);
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(layout, &config_bytes);
    manifest.set_config(Descriptor::new(
        MediaType::ImageConfig,
        config_bytes.len() as u64,
        config_digest.parse::<ateom_image::oci_spec::image::Digest>().unwrap(),
    ));
    manifest.layers_mut().push(Descriptor::new(
        media_type,
        blob.len() as u64,
        layer_digest.parse::<ateom_image::oci_spec::image::Digest>().unwrap(),
    ));
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = write_blob(layout, &manifest_bytes);
    let mut index = ImageIndex::from_file(layout.join("index.json")).unwrap();
    let mut manifests = index.manifests().clone();
    for d in &mut manifests {
        if d.annotations().as_ref().and_then(|a| a.get(REF_NAME_ANNOTATION)).map(String::as_str) == Some(tag)
        {
            d.set_digest(manifest_digest.parse().unwrap());
            d.set_size(manifest_bytes.len() as u64);
        }
    }
    index.set_manifests(manifests);
    index.to_file(layout.join("index.json")).unwrap();
    (layer_digest, manifest_digest)
}

/// Packs `spec` into `dir` under `tag`.
pub fn pack(spec: &PackSpec, dir: &Path, tag: &str) -> Result<PackedImage, ateom_image::ImageError> {
    pack_layout(&PackSpec { out_dir: dir.to_owned(), tag: tag.to_owned(), ..spec.clone() })
}

/// A small base image spec: a binary, a config file, a kept file, a directory to be made
/// opaque, and `/tmp`.
pub fn base_spec(src: &Path) -> PackSpec {
    let file = |name: &str, content: &str| {
        let p = src.join(name);
        std::fs::write(&p, content).unwrap();
        p
    };
    PackSpec {
        out_dir: PathBuf::new(),
        tag: String::new(),
        files: vec![
            PackFile { source: file("app", "#!/bin/true\nbinary"), dest: "/bin/app".into(), mode: 0o755 },
            PackFile { source: file("conf", "key=value\n"), dest: "/etc/app.conf".into(), mode: 0o644 },
            PackFile { source: file("keep", "keep me\n"), dest: "/data/keep.txt".into(), mode: 0o600 },
            PackFile { source: file("old", "old\n"), dest: "/opaque/old.txt".into(), mode: 0o644 },
            PackFile { source: file("sub", "sub\n"), dest: "/opaque/sub/deep.txt".into(), mode: 0o644 },
        ],
        dirs: vec![PackDir { path: "/tmp".into(), mode: 0o1777 }],
        entrypoint: vec!["/bin/app".into()],
        cmd: vec!["--serve".into()],
        env: [("A".to_owned(), "1".to_owned())].into(),
        working_dir: Some("/data".into()),
        user: None,
        exposed_ports: vec![9000, 8080],
    }
}

/// Every path below `dir`, relative, sorted (to show that nothing was written).
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
