//! Hostile layers, one case at a time: each is crafted here as a real tar (plain, gzip or
//! zstd), stacked on a packed base image and unpacked for real by `ImageStore::prepare`.
//! Every refusal names the layer digest and the entry, and leaves nothing in the cache.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ateom_image::oci_spec::image::MediaType;
use ateom_image::{ImageError, ImageRef, ImageStore, Limit, PreparedImage, UnpackLimits};
use common::*;

/// How a crafted layer is stored.
#[derive(Clone, Copy)]
enum Z {
    Plain,
    Gzip,
    Zstd,
}

/// A base image with `layers` (uncompressed tars) stacked on it; returns the layout and the
/// layer digests in order.
fn image(tmp: &Path, layers: &[(Vec<u8>, Z)]) -> (PathBuf, Vec<String>) {
    let layout = tmp.join("layout");
    let _ = std::fs::remove_dir_all(&layout);
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    pack(&base_spec(&src), &layout, "v1").unwrap();
    let digests = layers
        .iter()
        .map(|(tar, z)| {
            let (blob, media) = match z {
                Z::Plain => (tar.clone(), MediaType::ImageLayer),
                Z::Gzip => (gzip(tar), MediaType::ImageLayerGzip),
                Z::Zstd => (zstd(tar), MediaType::ImageLayerZstd),
            };
            add_layer(&layout, "v1", tar, &blob, media).0
        })
        .collect();
    (layout, digests)
}

fn prepare(tmp: &Path, layout: &Path, limits: UnpackLimits) -> Result<PreparedImage, ImageError> {
    let image = ImageRef::OciLayout { dir: layout.to_owned(), tag: Some("v1".into()) };
    ImageStore::new(tmp.join("cache")).with_limits(limits).prepare(&image)
}

/// Prepares and expects a refusal; checks that nothing (not even a partial tree) was left
/// in the cache.
fn refused(tmp: &Path, layout: &Path, limits: UnpackLimits) -> ImageError {
    let _ = std::fs::remove_dir_all(tmp.join("cache"));
    let err = prepare(tmp, layout, limits).expect_err("the image must be refused");
    assert_eq!(tree(&tmp.join("cache/rootfs")), Vec::<String>::new(), "left in the cache after: {err}");
    err
}

/// `(layer, entry, limit)` of a `LimitExceeded`, or a panic naming what came instead.
fn limit_of(err: &ImageError) -> (&str, Option<&str>, &Limit) {
    match err {
        ImageError::LimitExceeded { layer, entry, after: None, limit } => (layer, entry.as_deref(), limit),
        other => panic!("expected a LimitExceeded, got: {other}"),
    }
}

fn unsafe_entry(err: &ImageError) -> (&str, &str, &str) {
    match err {
        ImageError::UnsafePath { layer, entry, reason } => (layer, entry, reason),
        other => panic!("expected an UnsafePath, got: {other}"),
    }
}

fn ok(tmp: &Path, layout: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(tmp.join("cache"));
    prepare(tmp, layout, UnpackLimits::default()).unwrap().rootfs
}

// ---------------------------------------------------------------------------------------
// Digests

#[test]
fn a_layer_whose_digest_lies_is_refused_before_anything_is_unpacked() {
    let tmp = tempfile::tempdir().unwrap();
    // What the file really holds: a valid 1 GiB gzip bomb. Had it been unpacked before its
    // digest was checked, the ratio guard would have stopped it instead.
    let real = bomb("zeros", 1024, false);
    let mut claimed = real.clone();
    let last = claimed.len() - 1;
    claimed[last] ^= 0xff;
    let layout = tmp.path().join("layout");
    pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let (layer, _) = add_layer_with_diff_id(&layout, "v1", &claimed, MediaType::ImageLayerGzip, sha256(b"x"));
    std::fs::write(blob_path(&layout, &layer), &real).unwrap();
    match refused(tmp.path(), &layout, UnpackLimits::default()) {
        ImageError::DigestMismatch { digest, actual } => {
            assert_eq!(digest, layer);
            assert_eq!(actual, sha256(&real));
        }
        other => panic!("unexpected {other}"),
    }
    // A blob longer than its descriptor says is refused without being read.
    let mut longer = claimed.clone();
    longer.push(0);
    std::fs::write(blob_path(&layout, &layer), &longer).unwrap();
    match refused(tmp.path(), &layout, UnpackLimits::default()) {
        ImageError::SizeMismatch { digest, expected, actual } => {
            assert_eq!(digest, layer);
            assert_eq!((expected, actual), (claimed.len() as u64, longer.len() as u64));
        }
        other => panic!("unexpected {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Bombs and sizes

#[test]
fn gzip_and_zstd_bombs_stop_within_the_ratio_grace_with_default_limits() {
    let tmp = tempfile::tempdir().unwrap();
    for (zstd_frames, media) in [(false, MediaType::ImageLayerGzip), (true, MediaType::ImageLayerZstd)] {
        let layout = tmp.path().join("layout");
        let _ = std::fs::remove_dir_all(&layout);
        pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
        // 1 GiB of zeros from about a megabyte (gzip) or a few kilobytes (zstd).
        let blob = bomb("zeros", 1024, zstd_frames);
        let (layer, _) = add_layer_with_diff_id(&layout, "v1", &blob, media, sha256(b"never reached"));
        let err = refused(tmp.path(), &layout, UnpackLimits::default());
        let (l, entry, limit) = limit_of(&err);
        assert_eq!((l, entry), (layer.as_str(), Some("zeros")), "{err}");
        let Limit::CompressionRatio { max, uncompressed, compressed } = limit.clone() else {
            panic!("expected the ratio guard: {err}")
        };
        assert_eq!(max, 100);
        // Stopped just past the 64 MiB grace, not after the gigabyte.
        assert!(uncompressed > 64 << 20 && uncompressed < 66 << 20, "{err}");
        assert!(compressed < blob.len() as u64, "{err}");
        assert!(uncompressed > 100 * compressed, "{err}");
        let msg = err.to_string();
        assert!(msg.contains(&layer) && msg.contains("max_compression_ratio"), "{msg}");
    }
}

#[test]
fn zeros_within_the_grace_or_under_a_raised_ratio_unpack() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    // 16 MiB of zeros, with its true diff id this time.
    let blob = bomb("zeros", 16, false);
    let mut tar = bomb_header("zeros", 16).as_bytes().to_vec();
    tar.resize(tar.len() + (16 << 20) + 1024, 0);
    add_layer_with_diff_id(&layout, "v1", &blob, MediaType::ImageLayerGzip, sha256(&tar));
    // Default grace (64 MiB): fine.
    let img = prepare(tmp.path(), &layout, UnpackLimits::default()).unwrap();
    assert_eq!(std::fs::metadata(img.rootfs.join("zeros")).unwrap().len(), 16 << 20);
    // A 1 MiB grace catches it...
    std::fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let strict = UnpackLimits { ratio_grace_bytes: 1 << 20, ..UnpackLimits::default() };
    let err = refused(tmp.path(), &layout, strict);
    assert!(matches!(limit_of(&err).2, Limit::CompressionRatio { .. }), "{err}");
    // ...unless the ratio is raised for an image known to be legitimate.
    let raised = UnpackLimits { max_compression_ratio: 100_000, ..strict };
    prepare(tmp.path(), &layout, raised).unwrap();
}

#[test]
fn a_zstd_frame_asking_for_a_huge_window_is_refused_not_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    let tar = tar_bytes(&[E::File("f", 0o644, &[1u8; 4096])]);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
    enc.window_log(30).unwrap(); // a 1 GiB window, declared in the frame header
    enc.long_distance_matching(true).unwrap();
    enc.write_all(&tar).unwrap();
    let blob = enc.finish().unwrap();
    let layout = tmp.path().join("layout");
    pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let (layer, _) = add_layer(&layout, "v1", &tar, &blob, MediaType::ImageLayerZstd);
    match refused(tmp.path(), &layout, UnpackLimits::default()) {
        ImageError::Layer { layer: l, source, .. } => {
            assert_eq!(l, layer);
            assert!(source.to_string().contains("too much memory"), "{source}");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn layer_and_image_byte_limits_name_the_layer_and_entry() {
    let tmp = tempfile::tempdir().unwrap();
    let small =
        UnpackLimits { max_layer_bytes: 1 << 20, max_image_bytes: 4 << 20, ..UnpackLimits::default() };
    let big = vec![b'x'; 2 << 20];

    // A file declared larger than the layer may be: refused before it is written.
    let t = tar_bytes(&[E::File("ok", 0o644, b"fine"), E::File("big", 0o644, &big)]);
    let (layout, layers) = image(tmp.path(), &[(t, Z::Gzip)]);
    let err = refused(tmp.path(), &layout, small);
    assert_eq!(limit_of(&err), (layers[0].as_str(), Some("big"), &Limit::LayerBytes { max: 1 << 20 }));
    assert!(err.to_string().contains("max_layer_bytes"), "{err}");

    // Bytes that are no file (a device entry carrying data) count all the same: the
    // stream is metered.
    let t = tar_bytes(&[E::Raw(tar::EntryType::Char, "sneaky", &big)]);
    let (layout, layers) = image(tmp.path(), &[(t, Z::Zstd)]);
    let err = refused(tmp.path(), &layout, small);
    assert_eq!(limit_of(&err), (layers[0].as_str(), Some("sneaky"), &Limit::LayerBytes { max: 1 << 20 }));

    // Two layers each under the layer limit, together over the image's.
    let part = vec![b'y'; 600 << 10];
    let one = tar_bytes(&[E::File("one", 0o644, &part)]);
    let two = tar_bytes(&[E::File("two", 0o644, &part)]);
    let (layout, layers) = image(tmp.path(), &[(one, Z::Plain), (two, Z::Plain)]);
    let err = refused(tmp.path(), &layout, UnpackLimits { max_image_bytes: 1 << 20, ..small });
    let (layer, entry, limit) = limit_of(&err);
    assert_eq!((layer, limit), (layers[1].as_str(), &Limit::ImageBytes { max: 1 << 20 }), "{err}");
    assert!(entry == Some("two"), "{err}");
    // With the default limits the same image is fine.
    let root = ok(tmp.path(), &layout);
    assert_eq!(std::fs::read(root.join("two")).unwrap(), part);
}

#[test]
fn sparse_files_count_with_their_apparent_size() {
    let tmp = tempfile::tempdir().unwrap();
    // 1 KiB in the tar, 20 GiB on the disk of anyone copying the rootfs.
    let t = tar_bytes(&[E::Sparse("holes", 20 << 30)]);
    assert!(t.len() < 4096);
    let (layout, layers) = image(tmp.path(), &[(t, Z::Gzip)]);
    let err = refused(tmp.path(), &layout, UnpackLimits::default());
    assert_eq!(limit_of(&err), (layers[0].as_str(), Some("holes"), &Limit::LayerBytes { max: 16 << 30 }));
    // A sparse file within the limits unpacks with its holes.
    let t = tar_bytes(&[E::Sparse("holes", 1 << 20)]);
    let (layout, _) = image(tmp.path(), &[(t, Z::Gzip)]);
    let root = ok(tmp.path(), &layout);
    let bytes = std::fs::read(root.join("holes")).unwrap();
    assert_eq!(bytes.len(), 1 << 20);
    assert!(bytes[..(1 << 20) - 512].iter().all(|b| *b == 0));
    assert!(bytes[(1 << 20) - 512..].iter().all(|b| *b == b's'));
}

#[test]
fn entry_counts_are_limited_over_the_whole_image() {
    let tmp = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..1500).map(|i| format!("many/f{i:04}")).collect();
    let many: Vec<E<'_>> = names.iter().map(|n| E::File(n, 0o644, b"")).collect();
    let limits = UnpackLimits { max_entries: 1000, ..UnpackLimits::default() };
    let (layout, layers) = image(tmp.path(), &[(tar_bytes(&many), Z::Gzip)]);
    let err = refused(tmp.path(), &layout, limits);
    let (layer, entry, limit) = limit_of(&err);
    assert_eq!((layer, limit), (layers[0].as_str(), &Limit::Entries { max: 1000 }));
    assert!(entry.is_some_and(|e| e.starts_with("many/f0")), "{err}");

    // 2 x 600: each layer is fine, the image is not.
    let (a, b) = many.split_at(600);
    let (layout, layers) = image(tmp.path(), &[(tar_bytes(a), Z::Plain), (tar_bytes(&b[..600]), Z::Plain)]);
    let err = refused(tmp.path(), &layout, limits);
    assert_eq!(limit_of(&err).0, layers[1], "{err}");
    assert!(ok(tmp.path(), &layout).join("many/f1199").is_file());
}

#[test]
fn long_paths_deep_trees_and_big_metadata_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let defaults = UnpackLimits::default();

    // A 5000-byte name (GNU long-name entry) and a 5000-byte symlink target.
    let long = format!("{}/f", "n".repeat(4998));
    let (layout, layers) = image(tmp.path(), &[(tar_bytes(&[E::LongName(&long, b"x")]), Z::Gzip)]);
    let err = refused(tmp.path(), &layout, defaults);
    assert_eq!(
        limit_of(&err),
        (layers[0].as_str(), Some(long.as_str()), &Limit::PathBytes { len: 5000, max: 4096 })
    );
    let target = "t/".repeat(2500);
    let (layout, _) = image(tmp.path(), &[(tar_bytes(&[E::LongSymlink("link", &target)]), Z::Gzip)]);
    let err = refused(tmp.path(), &layout, defaults);
    assert_eq!(limit_of(&err).2, &Limit::PathBytes { len: 5000, max: 4096 }, "{err}");

    // 300 directories deep, written out.
    let deep = format!("{}f", "d/".repeat(300));
    let (layout, _) = image(tmp.path(), &[(tar_bytes(&[E::LongName(&deep, b"x")]), Z::Gzip)]);
    let err = refused(tmp.path(), &layout, defaults);
    assert_eq!(limit_of(&err).1, Some(deep.as_str()));
    assert_eq!(limit_of(&err).2, &Limit::PathDepth { max: 256 });

    // 200 + 101 levels, no entry path deeper than 201: a symlink to the bottom of the first
    // tree is the top of the second. Only the resolved depth catches it.
    let bottom = "a/".repeat(200);
    let first = format!("{bottom}f");
    let second = format!("s/{}f", "b/".repeat(100));
    let t = tar_bytes(&[
        E::LongName(&first, b"x"),
        E::LongSymlink("s", bottom.trim_end_matches('/')),
        E::LongName(&second, b"x"),
    ]);
    let (layout, _) = image(tmp.path(), &[(t, Z::Zstd)]);
    let err = refused(tmp.path(), &layout, defaults);
    assert_eq!(limit_of(&err).1, Some(second.as_str()), "{err}");
    assert_eq!(limit_of(&err).2, &Limit::PathDepth { max: 256 });
    // The first tree alone is fine.
    let (layout, _) = image(tmp.path(), &[(tar_bytes(&[E::LongName(&first, b"x")]), Z::Zstd)]);
    assert!(ok(tmp.path(), &layout).join(&first).is_file());

    // 8 MiB of GNU long name, 8 MiB of PAX header: what the tar reader would buffer in
    // memory is cut at 1 MiB.
    let huge = vec![b'a'; 8 << 20];
    for (kind, name) in
        [(tar::EntryType::GNULongName, "././@LongLink"), (tar::EntryType::XHeader, "PaxHeaders/x")]
    {
        let t =
            tar_bytes(&[E::File("before", 0o644, b""), E::Raw(kind, name, &huge), E::File("x", 0o644, b"")]);
        let (layout, layers) = image(tmp.path(), &[(t, Z::Gzip)]);
        let err = refused(tmp.path(), &layout, defaults);
        // The entry the metadata belongs to is unknown: the error names the one before.
        match &err {
            ImageError::LimitExceeded { layer, entry: None, after: Some(after), limit } => {
                assert_eq!(
                    (layer, after.as_str(), limit),
                    (&layers[0], "before", &Limit::EntryMetadata { max: 1 << 20 })
                );
            }
            other => panic!("{kind:?}: unexpected {other}"),
        }
        assert!(err.to_string().contains("in the headers after entry \"before\""), "{err}");
    }
    // Ordinary PAX metadata is honoured.
    let pax_path = format!("pax/{}", "p".repeat(200));
    let t =
        tar_bytes(&[E::Pax(vec![("path", pax_path.clone().into_bytes())]), E::File("short", 0o644, b"pax")]);
    let (layout, _) = image(tmp.path(), &[(t, Z::Plain)]);
    assert_eq!(std::fs::read(ok(tmp.path(), &layout).join(&pax_path)).unwrap(), b"pax");
}

// ---------------------------------------------------------------------------------------
// Paths, symlinks and hard links

/// `<tmp>/outside/secret`, the target of every escape; the cache rootfs is
/// `<tmp>/cache/rootfs/<hex>`, so `../../../../outside` climbs to it.
fn outside(tmp: &Path) -> PathBuf {
    let dir = tmp.join("outside");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("secret"), "secret").unwrap();
    dir
}

fn assert_untouched(outside: &Path) {
    assert_eq!(tree(outside), ["secret"], "something was written outside the rootfs");
    assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "secret");
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().nlink(), 1, "hard-linked from the rootfs");
}

const UP: &str = "../../../../outside";

#[test]
fn a_symlink_from_an_earlier_layer_cannot_carry_a_later_write_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let out = outside(tmp.path());
    let host_secret = out.join("secret").display().to_string();
    // The symlinks themselves are fine (they resolve inside the sandbox)...
    let lower =
        tar_bytes(&[E::Symlink("esc", UP), E::Symlink("etc/passwd", &host_secret), E::Symlink("d", UP)]);
    for (name, upper) in [
        // ...writing through them is not.
        ("file through it", vec![E::File("esc/pwned", 0o644, b"x")]),
        ("dir through it", vec![E::Dir("esc/sub/", 0o755)]),
        ("hard link through it", vec![E::HardLink("stolen", "esc/secret")]),
        ("whiteout through it", vec![E::File("esc/.wh.secret", 0o644, b"")]),
        ("opaque through it", vec![E::File("esc/.wh..wh..opq", 0o644, b"")]),
    ] {
        let (layout, layers) = image(tmp.path(), &[(lower.clone(), Z::Gzip), (tar_bytes(&upper), Z::Zstd)]);
        let err = refused(tmp.path(), &layout, UnpackLimits::default());
        let (layer, _, reason) = unsafe_entry(&err);
        assert_eq!(layer, layers[1], "{name}: {err}");
        assert!(reason.contains("outside the root"), "{name}: {err}");
        assert_untouched(&out);
    }
    // Entries that replace the symlinks replace them, and do not write through them.
    let upper = tar_bytes(&[
        E::File("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n"),
        E::Dir("d/", 0o755),
        E::File("d/inside", 0o644, b"in"),
        E::HardLink("esc", "etc/app.conf"),
    ]);
    let (layout, _) = image(tmp.path(), &[(lower, Z::Gzip), (upper, Z::Plain)]);
    let root = ok(tmp.path(), &layout);
    assert!(std::fs::symlink_metadata(root.join("etc/passwd")).unwrap().is_file());
    assert!(std::fs::symlink_metadata(root.join("d")).unwrap().is_dir());
    assert_eq!(std::fs::read(root.join("d/inside")).unwrap(), b"in");
    assert_eq!(std::fs::read(root.join("esc")).unwrap(), b"key=value\n");
    assert_untouched(&out);
}

#[test]
fn symlink_then_write_in_one_layer_and_absolute_or_dotdot_names() {
    let tmp = tempfile::tempdir().unwrap();
    let out = outside(tmp.path());
    for (name, entries) in [
        ("symlink then file", vec![E::Symlink("esc", UP), E::File("esc/pwned", 0o644, b"x")]),
        (
            "symlink chain",
            vec![E::Symlink("a", "b/../.."), E::Dir("b/", 0o755), E::File("a/x/pwned", 0o644, b"x")],
        ),
        (
            "relative climb in a target",
            vec![E::Symlink("etc/up", "../../.."), E::File("etc/up/pwned", 0o644, b"x")],
        ),
        ("dotdot", vec![E::File("../../../../outside/pwned", 0o644, b"x")]),
        ("dotdot inside", vec![E::File("etc/../../x", 0o644, b"x")]),
        ("absolute", vec![E::File("/tmp/ateom-absolute-pwned", 0o644, b"x")]),
        ("hard link dotdot", vec![E::HardLink("stolen", "../../../../outside/secret")]),
        ("hard link absolute", vec![E::HardLink("stolen", "/etc/shadow")]),
        (
            "hard link through an escaping symlink",
            vec![E::Symlink("esc", UP), E::HardLink("stolen", "esc/secret")],
        ),
    ] {
        let (layout, layers) = image(tmp.path(), &[(tar_bytes(&entries), Z::Plain)]);
        let err = refused(tmp.path(), &layout, UnpackLimits::default());
        let (layer, entry, reason) = unsafe_entry(&err);
        assert_eq!(layer, layers[0], "{name}");
        assert!(!entry.is_empty() && err.to_string().contains(entry), "{name}: {err}");
        assert!(!reason.is_empty(), "{name}");
        assert_untouched(&out);
    }
    assert!(!Path::new("/tmp/ateom-absolute-pwned").exists());
}

#[test]
fn hard_links_resolve_inside_the_root_and_link_symlinks_as_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = outside(tmp.path());
    let t = tar_bytes(&[
        // Through an in-root symlink (absolute, as images write them): the image's /etc.
        E::Symlink("etclink", "/etc"),
        E::HardLink("conf-link", "etclink/app.conf"),
        // To a symlink that points outside: the link is another such symlink, the host
        // file is not reached.
        E::Symlink("evil", UP),
        E::HardLink("evil-link", "evil"),
    ]);
    let (layout, _) = image(tmp.path(), &[(t, Z::Gzip)]);
    let root = ok(tmp.path(), &layout);
    let conf = std::fs::metadata(root.join("etc/app.conf")).unwrap();
    assert_eq!(std::fs::metadata(root.join("conf-link")).unwrap().ino(), conf.ino());
    let link = std::fs::symlink_metadata(root.join("evil-link")).unwrap();
    assert!(link.file_type().is_symlink());
    assert_eq!(std::fs::read_link(root.join("evil-link")).unwrap(), Path::new(UP));
    assert_untouched(&out);
}

// ---------------------------------------------------------------------------------------
// Devices and FIFOs

/// Captures what `tracing` logs while `f` runs.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf(Arc::default());
    let writer = buf.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

#[test]
fn device_nodes_and_fifos_are_skipped_with_a_warning_and_replace_what_was_there() {
    let tmp = tempfile::tempdir().unwrap();
    let lower =
        tar_bytes(&[E::File("dev/sda", 0o644, b"a lower file"), E::File("data/pipe", 0o644, b"lower")]);
    let upper = tar_bytes(&[
        E::BlockDev("dev/sda"),
        E::CharDev("dev/mem"),
        E::Fifo("data/pipe"),
        // Hard links to what was skipped are skipped too.
        E::HardLink("dev/sda-again", "dev/sda"),
    ]);
    let (layout, layers) = image(tmp.path(), &[(lower, Z::Plain), (upper, Z::Gzip)]);
    let (result, log) = logged(|| prepare(tmp.path(), &layout, UnpackLimits::default()));
    let root = result.unwrap().rootfs;
    for p in ["dev/sda", "dev/mem", "data/pipe", "dev/sda-again"] {
        assert!(std::fs::symlink_metadata(root.join(p)).is_err(), "{p} exists");
    }
    assert!(root.join("dev").is_dir() && root.join("data/keep.txt").is_file());
    for needle in ["skipping a device node", "skipping a FIFO", "dev/mem", "data/pipe", "major=8", &layers[1]]
    {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(log.contains("WARN"), "{log}");
}

// ---------------------------------------------------------------------------------------
// Whiteouts

#[test]
fn whiteout_tricks() {
    let tmp = tempfile::tempdir().unwrap();
    let out = outside(tmp.path());
    // Names that would white out the root, a parent, or climb.
    for bad in [".wh.", "etc/.wh..", "etc/.wh...", "../.wh.outside", "etc/../../.wh.x"] {
        let (layout, layers) = image(tmp.path(), &[(tar_bytes(&[E::File(bad, 0o644, b"")]), Z::Plain)]);
        let err = refused(tmp.path(), &layout, UnpackLimits::default());
        let (layer, entry, _) = unsafe_entry(&err);
        assert_eq!((layer, entry), (layers[0].as_str(), bad), "{err}");
        assert_untouched(&out);
    }
    // An opaque marker under a file is malformed.
    let t = tar_bytes(&[E::File("etc/app.conf/.wh..wh..opq", 0o644, b"")]);
    let (layout, _) = image(tmp.path(), &[(t, Z::Plain)]);
    let err = refused(tmp.path(), &layout, UnpackLimits::default());
    assert!(unsafe_entry(&err).2.contains("/etc/app.conf is not a directory"), "{err}");

    // An opaque root: every lower entry goes, this layer's stay, the root itself stays;
    // markers in missing directories change nothing and create nothing; a whiteout
    // through an in-root symlink removes the file it leads to.
    let lower = tar_bytes(&[
        E::Dir("usr/lib/", 0o755),
        E::File("usr/lib/libx.so", 0o644, b"x"),
        E::Symlink("lib", "usr/lib"),
    ]);
    let upper = tar_bytes(&[
        E::File("lib/.wh.libx.so", 0o644, b""),
        E::File("kept", 0o644, b"mine"),
        E::File("nowhere/.wh..wh..opq", 0o644, b""),
        E::File("nowhere2/deeper/.wh.ghost", 0o644, b""),
    ]);
    let (layout, _) = image(tmp.path(), &[(lower.clone(), Z::Gzip), (upper, Z::Gzip)]);
    let root = ok(tmp.path(), &layout);
    assert!(!root.join("usr/lib/libx.so").exists());
    assert!(root.join("usr/lib").is_dir() && root.join("bin/app").is_file());
    assert!(!root.join("nowhere").exists() && !root.join("nowhere2").exists());

    // (With a root directory entry that would open the root to everyone: the root stays 0755.)
    let opaque_root = tar_bytes(&[
        E::Dir("./", 0o777),
        E::File("kept", 0o644, b"mine"),
        E::File(".wh..wh..opq", 0o644, b""),
    ]);
    let (layout, _) = image(tmp.path(), &[(lower, Z::Gzip), (opaque_root, Z::Zstd)]);
    let root = ok(tmp.path(), &layout);
    assert_eq!(tree(&root), ["kept"]);
    assert_eq!(std::fs::metadata(&root).unwrap().mode() & 0o7777, 0o755);
    assert_untouched(&out);
}
