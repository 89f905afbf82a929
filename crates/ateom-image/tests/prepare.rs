//! `ImageStore::prepare` on real layouts: packing, layer stacking with whiteouts, caching,
//! tags, corruption and hostile layers.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use ateom_image::oci_spec::image::MediaType;
use ateom_image::{ImageError, ImageRef, ImageStore};
use common::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn layout_ref(dir: &Path, tag: Option<&str>) -> ImageRef {
    ImageRef::OciLayout { dir: dir.to_owned(), tag: tag.map(str::to_owned) }
}

#[test]
fn layers_stack_with_whiteouts_opaque_dirs_and_links() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let packed = pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    assert_eq!(packed.dir, layout);

    // Layer 2 (zstd): delete /etc/app.conf, make /opaque opaque (adding new.txt, a new
    // subdirectory, and re-adding `sub` with new content), link and symlink things.
    let upper = tar_bytes(&[
        E::File("etc/.wh.app.conf", 0o644, b""),
        // Entries of the same layer written before the opaque marker survive it.
        E::Dir("opaque/sub/", 0o755),
        E::File("opaque/sub/fresh.txt", 0o644, b"fresh\n"),
        E::File("opaque/.wh..wh..opq", 0o644, b""),
        E::File("opaque/new.txt", 0o640, b"new\n"),
        E::Dir("usr/", 0o755),
        E::Dir("usr/lib/", 0o755),
        E::Symlink("lib", "usr/lib"),
        E::Symlink("abslib", "/usr/lib"),
        // Written through the symlinks: must land in /usr/lib.
        E::File("lib/libx.so", 0o755, b"x"),
        E::File("abslib/liby.so", 0o755, b"y"),
        E::HardLink("data/keep-link", "data/keep.txt"),
        E::CharDev("dev-null"),
        // Whiteout of something that never existed is harmless.
        E::File("nowhere/.wh.ghost", 0o644, b""),
    ]);
    add_layer(&layout, "v1", &upper, &zstd(&upper), MediaType::ImageLayerZstd);
    // Layer 3 (plain tar): replace a file by a directory and a directory by a file.
    let top = tar_bytes(&[E::Dir("bin/app/", 0o700), E::File("data", 0o644, b"data is a file now")]);
    let (_, manifest_digest) = add_layer(&layout, "v1", &top, &top, MediaType::ImageLayer);

    let store = ImageStore::new(tmp.path().join("cache"));
    let img = store.prepare(&layout_ref(&layout, Some("v1"))).unwrap();
    assert_eq!(img.manifest_digest, manifest_digest);
    assert!(!img.cache_hit);
    let r = &img.rootfs;
    assert_eq!(r, &tmp.path().join("cache/rootfs").join(manifest_digest.trim_start_matches("sha256:")));
    assert_eq!(mode(r), 0o755);

    // Whiteout: gone, and not materialised.
    assert!(!r.join("etc/app.conf").exists());
    assert!(!r.join("etc/.wh.app.conf").exists());
    assert!(r.join("etc").is_dir());
    // Opaque: lower content gone, this layer's content kept (even what came before the marker).
    let mut opaque: Vec<String> = tree(&r.join("opaque"));
    opaque.sort();
    assert_eq!(opaque, ["new.txt", "sub", "sub/fresh.txt"]);
    assert_eq!(std::fs::read_to_string(r.join("opaque/new.txt")).unwrap(), "new\n");
    assert_eq!(mode(&r.join("opaque/new.txt")), 0o640);
    // Symlinks kept as symlinks; writes through them stayed inside.
    assert_eq!(std::fs::read_link(r.join("lib")).unwrap(), Path::new("usr/lib"));
    assert_eq!(std::fs::read_link(r.join("abslib")).unwrap(), Path::new("/usr/lib"));
    assert_eq!(std::fs::read(r.join("usr/lib/libx.so")).unwrap(), b"x");
    assert_eq!(std::fs::read(r.join("usr/lib/liby.so")).unwrap(), b"y");
    // Device nodes are skipped.
    assert!(std::fs::symlink_metadata(r.join("dev-null")).is_err());
    assert!(!r.join("nowhere").exists());
    // Layer 3 replaced types both ways.
    assert!(r.join("bin/app").is_dir());
    assert_eq!(mode(&r.join("bin/app")), 0o700);
    assert_eq!(std::fs::read_to_string(r.join("data")).unwrap(), "data is a file now");
    // /tmp keeps its sticky bit, files their modes and (as root) owner.
    assert_eq!(mode(&r.join("tmp")), 0o1777);
    let meta = std::fs::metadata(r.join("etc")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    // The image config comes through.
    assert_eq!(img.config.entrypoint, ["/bin/app"]);
    assert_eq!(img.config.cmd, ["--serve"]);
    assert_eq!(img.config.env, [("A".to_owned(), "1".to_owned())]);
    assert_eq!(img.config.working_dir.as_deref(), Some("/data"));
    assert_eq!(img.config.exposed_ports, ["8080/tcp", "9000/tcp"]);
    assert_eq!(img.config.tcp_ports(), [8080, 9000]);
}

#[test]
fn hard_links_share_the_inode() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let upper = tar_bytes(&[E::HardLink("data/keep-link", "./data/keep.txt")]);
    add_layer(&layout, "v1", &upper, &gzip(&upper), MediaType::ImageLayerGzip);
    let img = ImageStore::new(tmp.path().join("cache")).prepare(&layout_ref(&layout, None)).unwrap();
    let a = std::fs::metadata(img.rootfs.join("data/keep.txt")).unwrap();
    let b = std::fs::metadata(img.rootfs.join("data/keep-link")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(mode(&img.rootfs.join("data/keep.txt")), 0o600);
}

#[test]
fn second_prepare_is_a_cache_hit_and_packing_is_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let spec = base_spec(&src);
    let a = pack(&spec, &tmp.path().join("a"), "v1").unwrap();
    // Same inputs elsewhere, under another tag: same manifest digest.
    let b = pack(&spec, &tmp.path().join("b"), "other").unwrap();
    assert_eq!(a.manifest_digest, b.manifest_digest);
    let blobs = |d: &Path| tree(&d.join("blobs/sha256"));
    assert_eq!(blobs(&a.dir), blobs(&b.dir));

    let store = ImageStore::new(tmp.path().join("cache"));
    let first = store.prepare(&a.image_ref()).unwrap();
    assert!(!first.cache_hit);
    // A marker inside the cached rootfs survives: the second call does not unpack again.
    std::fs::write(first.rootfs.join("marker"), "x").unwrap();
    let second = store.prepare(&b.image_ref()).unwrap();
    assert!(second.cache_hit);
    assert_eq!(second.rootfs, first.rootfs);
    assert_eq!(second.config, first.config);
    assert!(second.rootfs.join("marker").exists());
    // Only the finished rootfs is in the cache: no staging directories left behind.
    assert_eq!(tree(&tmp.path().join("cache/rootfs")).iter().filter(|p| !p.contains('/')).count(), 1);

    // Different content, different digest.
    std::fs::write(&spec.files[0].source, "changed").unwrap();
    let c = pack(&spec, &tmp.path().join("c"), "v1").unwrap();
    assert_ne!(c.manifest_digest, a.manifest_digest);
    let mut moded = spec.clone();
    moded.files[0].mode = 0o700;
    assert_ne!(pack(&moded, &tmp.path().join("d"), "v1").unwrap().manifest_digest, c.manifest_digest);
}

#[test]
fn stale_partial_builds_are_removed_and_never_taken_for_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let packed = pack(&base_spec(tmp.path()), &tmp.path().join("layout"), "v1").unwrap();
    let hex = packed.manifest_digest.trim_start_matches("sha256:").to_owned();
    let cache = tmp.path().join("cache/rootfs");
    // What a crash mid-unpack leaves (pid beyond pid_max: certainly dead).
    let stale = cache.join(format!(".tmp-{hex}-999999999-abc"));
    std::fs::create_dir_all(stale.join("bin")).unwrap();
    let img = ImageStore::new(tmp.path().join("cache")).prepare(&packed.image_ref()).unwrap();
    assert!(!img.cache_hit);
    assert!(!stale.exists());
    assert!(img.rootfs.join("bin/app").is_file());
}

#[test]
fn tags_select_images_and_errors_list_them() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let mut spec = base_spec(tmp.path());
    let one = pack(&spec, &layout, "one").unwrap();
    spec.env.insert("WHICH".into(), "two".into());
    let two = pack(&spec, &layout, "two").unwrap();
    assert_ne!(one.manifest_digest, two.manifest_digest);
    let store = ImageStore::new(tmp.path().join("cache"));

    let img = store.prepare(&layout_ref(&layout, Some("two"))).unwrap();
    assert_eq!(img.manifest_digest, two.manifest_digest);
    assert!(img.config.env.contains(&("WHICH".to_owned(), "two".to_owned())));
    assert_eq!(
        store.prepare(&layout_ref(&layout, Some("one"))).unwrap().manifest_digest,
        one.manifest_digest
    );

    match store.prepare(&layout_ref(&layout, Some("three"))).unwrap_err() {
        ImageError::TagNotFound { tag, available, .. } => {
            assert_eq!(tag, "three");
            assert_eq!(available, ["one", "two"]);
        }
        other => panic!("unexpected {other}"),
    }
    let err = store.prepare(&layout_ref(&layout, None)).unwrap_err();
    assert!(
        matches!(&err, ImageError::AmbiguousImage { count: 2, available, .. } if available == &["one", "two"])
    );
    assert!(err.to_string().contains("one, two"), "{err}");

    // Re-packing a tag replaces it rather than adding a third manifest.
    spec.env.insert("WHICH".into(), "two again".into());
    let again = pack(&spec, &layout, "two").unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        store.prepare(&layout_ref(&layout, Some("two"))).unwrap().manifest_digest,
        again.manifest_digest
    );
}

#[test]
fn not_a_layout() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::new(tmp.path().join("cache"));
    let err = store.prepare(&layout_ref(&tmp.path().join("nope"), None)).unwrap_err();
    assert!(matches!(err, ImageError::LayoutMissing { .. }), "{err}");
    std::fs::create_dir(tmp.path().join("empty")).unwrap();
    let err = store.prepare(&layout_ref(&tmp.path().join("empty"), None)).unwrap_err();
    assert!(
        matches!(&err, ImageError::LayoutMissing { reason, .. } if reason.contains("oci-layout")),
        "{err}"
    );
}

/// Flips one byte in the middle of a file.
fn corrupt(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_corrupt_layer_is_a_digest_mismatch_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let packed = pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let layer = manifest(&layout, "v1").layers()[0].digest().to_string();
    corrupt(&blob_path(&layout, &layer));
    let store = ImageStore::new(tmp.path().join("cache"));
    match store.prepare(&packed.image_ref()).unwrap_err() {
        ImageError::DigestMismatch { digest, actual } => {
            assert_eq!(digest, layer);
            assert_ne!(actual, layer);
        }
        other => panic!("unexpected {other}"),
    }
    // Nothing that looks like a rootfs (or a leftover) is in the cache.
    assert_eq!(tree(&tmp.path().join("cache/rootfs")), Vec::<String>::new());
}

#[test]
fn a_corrupt_config_or_manifest_is_a_digest_mismatch_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    let packed = pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let config = manifest(&layout, "v1").config().digest().to_string();
    corrupt(&blob_path(&layout, &config));
    let store = ImageStore::new(tmp.path().join("cache"));
    let err = store.prepare(&packed.image_ref()).unwrap_err();
    assert!(matches!(&err, ImageError::DigestMismatch { digest, .. } if digest == &config), "{err}");
    assert!(err.to_string().contains(&config));

    corrupt(&blob_path(&layout, &packed.manifest_digest));
    let err = store.prepare(&packed.image_ref()).unwrap_err();
    assert!(
        matches!(&err, ImageError::DigestMismatch { digest, .. } if digest == &packed.manifest_digest),
        "{err}"
    );

    std::fs::remove_file(blob_path(&layout, &packed.manifest_digest)).unwrap();
    let err = store.prepare(&packed.image_ref()).unwrap_err();
    assert!(
        matches!(&err, ImageError::BlobMissing { digest, .. } if digest == &packed.manifest_digest),
        "{err}"
    );
}

#[test]
fn a_wrong_diff_id_or_media_type_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("layout");
    pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let upper = tar_bytes(&[E::File("x", 0o644, b"x")]);
    let (layer, _) =
        add_layer_with_diff_id(&layout, "v1", &upper, MediaType::ImageLayer, sha256(b"something else"));
    let store = ImageStore::new(tmp.path().join("cache"));
    let err = store.prepare(&layout_ref(&layout, Some("v1"))).unwrap_err();
    assert!(matches!(&err, ImageError::DiffIdMismatch { digest, .. } if digest == &layer), "{err}");

    let layout2 = tmp.path().join("layout2");
    pack(&base_spec(tmp.path()), &layout2, "v1").unwrap();
    add_layer(&layout2, "v1", &upper, &upper, MediaType::Other("application/x-squashfs".into()));
    let err = store.prepare(&layout_ref(&layout2, Some("v1"))).unwrap_err();
    assert!(
        matches!(&err, ImageError::UnsupportedMediaType { media_type, .. } if media_type == "application/x-squashfs"),
        "{err}"
    );
}

/// Packs a base image, stacks `evil` on it, prepares, and returns the error; checks
/// that nothing landed in `outside` and no rootfs was cached.
fn prepare_evil(tmp: &Path, evil: &[E<'_>]) -> ImageError {
    let layout = tmp.join("layout");
    let _ = std::fs::remove_dir_all(&layout);
    pack(&base_spec(tmp), &layout, "v1").unwrap();
    let upper = tar_bytes(evil);
    add_layer(&layout, "v1", &upper, &upper, MediaType::ImageLayer);
    let cache = tmp.join("cache");
    let err = ImageStore::new(&cache).prepare(&layout_ref(&layout, Some("v1"))).unwrap_err();
    assert_eq!(tree(&cache.join("rootfs")), Vec::<String>::new(), "a rootfs was left in the cache");
    err
}

#[test]
fn hostile_layers_are_refused_and_write_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    // The cache rootfs is <base>/cache/rootfs/<hex>; aim at <base>/outside.
    let outside = base.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let up = "../../../../outside";

    let cases: Vec<(&str, Vec<E<'_>>)> = vec![
        ("dotdot", vec![E::File("../../../../outside/pwned", 0o644, b"x")]),
        ("nested dotdot", vec![E::File("etc/../../../../../outside/pwned", 0o644, b"x")]),
        ("absolute", vec![E::File("/outside-abs-pwned", 0o644, b"x")]),
        ("symlink parent", vec![E::Symlink("esc", up), E::File("esc/pwned", 0o644, b"x")]),
        ("symlink grandparent", vec![E::Symlink("esc", up), E::Dir("esc/sub/", 0o755)]),
        (
            "chained symlinks",
            vec![E::Symlink("a", "b/../.."), E::Dir("b/", 0o755), E::File("a/outside/pwned", 0o644, b"x")],
        ),
        ("hard link out", vec![E::HardLink("stolen", "../../../../outside/secret")]),
        ("whiteout through symlink", vec![E::Symlink("esc", up), E::File("esc/.wh.secret", 0o644, b"")]),
    ];
    std::fs::write(outside.join("secret"), "secret").unwrap();
    for (name, entries) in cases {
        let err = prepare_evil(base, &entries);
        assert!(matches!(err, ImageError::UnsafePath { .. }), "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains("refusing entry"), "{name}: {msg}");
        assert_eq!(tree(&outside), ["secret"], "{name} wrote outside");
        assert_eq!(std::fs::read_to_string(outside.join("secret")).unwrap(), "secret");
    }
    assert!(!Path::new("/outside-abs-pwned").exists());
    // The refused entry is named in the error.
    let err = prepare_evil(base, &[E::Symlink("esc", up), E::File("esc/pwned", 0o644, b"x")]);
    assert!(matches!(&err, ImageError::UnsafePath { entry, .. } if entry == "esc/pwned"), "{err}");
}

#[test]
fn absolute_symlinks_resolve_inside_the_rootfs() {
    // `/etc` style absolute links are legitimate: they point into the image, not the host.
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("hostdir");
    std::fs::create_dir(&target).unwrap();
    let layout = tmp.path().join("layout");
    pack(&base_spec(tmp.path()), &layout, "v1").unwrap();
    let host_target = target.to_str().unwrap().to_owned();
    let upper = tar_bytes(&[E::Symlink("hostlink", &host_target), E::File("hostlink/inside", 0o644, b"x")]);
    add_layer(&layout, "v1", &upper, &upper, MediaType::ImageLayer);
    let img = ImageStore::new(tmp.path().join("cache")).prepare(&layout_ref(&layout, None)).unwrap();
    assert_eq!(tree(&target), Vec::<String>::new());
    let inside = img.rootfs.join(host_target.trim_start_matches('/')).join("inside");
    assert_eq!(std::fs::read(inside).unwrap(), b"x");
}
