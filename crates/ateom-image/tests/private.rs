//! Image data and bundle secrets are private to ateom's user, while unpacked files keep
//! the modes and owners the sandbox needs. Checked directly (modes, owners) and from the
//! point of view of another local user (`setpriv` to uid 65534), against files made here.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ateom_image::oci_spec::image::MediaType;
use ateom_image::{
    BundleOptions, ImageError, ImageRef, ImageStore, ProcessOverrides, runtime_spec, write_bundle,
};
use common::*;

const NOBODY: &str = "65534";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn owner(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `args` as uid/gid 65534 with no supplementary groups and no capabilities.
///
/// Through `sh`: setpriv itself still holds root's capabilities while it looks up the
/// program it executes (they go at that exec), so `setpriv … <path>` would reach a path no
/// user 65534 can; a shell running as 65534 looks it up as that user.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid",
            NOBODY,
            "--regid",
            NOBODY,
            "--clear-groups",
            "--",
            "/bin/sh",
            "-c",
            "exec \"$@\"",
            "sh",
        ])
        .args(args)
        .output()
        .expect("setpriv (util-linux) runs")
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

/// A temporary directory every local user may traverse (`tempdir` makes them 0700, which
/// would protect the cache by accident and prove nothing).
fn open_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o755);
    tmp
}

/// A base image plus a layer holding a setuid-root copy of `id`, a setgid file and a file
/// owned by an ordinary user.
fn setuid_image(tmp: &Path) -> PathBuf {
    let layout = tmp.join("layout");
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    pack(&base_spec(&src), &layout, "v1").unwrap();
    let id = std::fs::read("/usr/bin/id").unwrap();
    let layer = tar_bytes(&[
        E::Owned("bin/su", 0o4755, 0, 0, &id),
        E::Owned("bin/wall", 0o2755, 0, 5, b"#!/bin/sh\n"),
        E::Owned("home/app/notes", 0o640, 1000, 1000, b"mine\n"),
    ]);
    add_layer(&layout, "v1", &layer, &gzip(&layer), MediaType::ImageLayerGzip);
    layout
}

#[test]
fn the_cache_is_private_but_unpacked_files_keep_setuid_bits_and_owners() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (owners are only preserved, and setpriv only works, as root)");
        return;
    }
    let tmp = open_tempdir();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o755);
    let layout = setuid_image(tmp.path());
    // `<state>/cache` does not exist yet: the store creates it, privately too.
    let cache_root = state.join("cache/images");
    let img = ImageStore::new(&cache_root)
        .prepare(&ImageRef::OciLayout { dir: layout, tag: Some("v1".into()) })
        .unwrap();
    let root = &img.rootfs;

    // Every directory above the unpacked tree: 0700, ours.
    for dir in [state.join("cache"), cache_root.clone(), cache_root.join("rootfs")] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
        assert_eq!(owner(&dir).0, 0, "{}", dir.display());
    }
    assert_eq!(root.parent().unwrap(), cache_root.join("rootfs"));
    // Inside: the image as it must be inside the sandbox.
    assert_eq!(mode(root), 0o755);
    let su = root.join("bin/su");
    assert_eq!((mode(&su), owner(&su)), (0o4755, (0, 0)));
    assert_eq!((mode(&root.join("bin/wall")), owner(&root.join("bin/wall"))), (0o2755, (0, 5)));
    assert_eq!(owner(&root.join("home/app/notes")), (1000, 1000));
    assert_eq!(mode(&root.join("tmp")), 0o1777);

    // Control: the same setuid-root binary where another user can reach it makes that
    // user root (this is what a world-traversable cache did).
    let control = tmp.path().join("control");
    std::fs::create_dir(&control).unwrap();
    chmod(&control, 0o755);
    let exposed = control.join("su");
    std::fs::copy(&su, &exposed).unwrap();
    chmod(&exposed, 0o4755);
    let out = as_nobody(&[exposed.to_str().unwrap(), "-u"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0", "control: {out:?}");
    std::fs::remove_file(&exposed).unwrap();

    // In the cache, another user can neither see nor run it.
    let su_path = su.to_str().unwrap();
    let stat = as_nobody(&["stat", su_path]);
    assert!(!stat.status.success(), "nobody could stat {su_path}");
    assert!(String::from_utf8_lossy(&stat.stderr).contains("Permission denied"), "{stat:?}");
    let run = as_nobody(&[su_path, "-u"]);
    assert!(!run.status.success() && run.stdout.is_empty(), "nobody ran {su_path}: {run:?}");
    let list = as_nobody(&["ls", cache_root.to_str().unwrap()]);
    assert!(!list.status.success(), "nobody listed the cache: {list:?}");
}

#[test]
fn an_old_open_cache_is_made_private_and_one_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (chown)");
        return;
    }
    let tmp = open_tempdir();
    let layout = setuid_image(tmp.path());
    let image = ImageRef::OciLayout { dir: layout, tag: Some("v1".into()) };
    let cache_root = tmp.path().join("cache");
    let store = ImageStore::new(&cache_root);
    let first = store.prepare(&image).unwrap();
    // What an older version left: world-traversable directories around a cached rootfs.
    chmod(&cache_root, 0o755);
    chmod(&cache_root.join("rootfs"), 0o755);
    let again = store.prepare(&image).unwrap();
    assert!(again.cache_hit);
    assert_eq!(again.rootfs, first.rootfs);
    assert_eq!((mode(&cache_root), mode(&cache_root.join("rootfs"))), (0o700, 0o700));

    // A cache directory another user owns could be swapped under us: refused, not used,
    // not even for a cache hit.
    std::os::unix::fs::chown(cache_root.join("rootfs"), Some(65534), Some(65534)).unwrap();
    match store.prepare(&image).unwrap_err() {
        ImageError::UnsafeDirectory { path, reason } => {
            assert_eq!(path, cache_root.join("rootfs"));
            assert!(reason.contains("uid 65534"), "{reason}");
        }
        other => panic!("unexpected {other}"),
    }
    // A file where the cache should be.
    let file_root = tmp.path().join("not-a-dir");
    std::fs::write(&file_root, "").unwrap();
    let err = ImageStore::new(&file_root).prepare(&image).unwrap_err();
    assert!(matches!(&err, ImageError::UnsafeDirectory { path, .. } if path == &file_root), "{err}");
}

#[test]
fn bundle_config_json_is_0600_in_a_0700_directory_and_replaced_atomically() {
    let tmp = open_tempdir();
    let rootfs = tmp.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let image = ateom_image::ImageConfig {
        entrypoint: vec!["/bin/app".into()],
        env: vec![("API_TOKEN".into(), "s3cr3t".into())],
        ..Default::default()
    };
    let opts = BundleOptions { rootfs, hostname: "h".into(), netns_path: None, readonly_rootfs: true };
    let spec = runtime_spec(&image, &ProcessOverrides::default(), &opts).unwrap();
    let bundle = tmp.path().join("actors/a/work/bundle");
    write_bundle(&bundle, &spec).unwrap();
    let config = bundle.join("config.json");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&bundle), 0o700, "a bundle directory ateom creates is private");
    assert_eq!(mode(&tmp.path().join("actors/a")), 0o700, "and so are the parents it creates");
    assert!(std::fs::read_to_string(&config).unwrap().contains("API_TOKEN=s3cr3t"));

    // An existing, readable config.json (a node agent's, an older version's) is replaced
    // by a 0600 one, and nothing but config.json is left.
    std::fs::write(&config, "{}").unwrap();
    chmod(&config, 0o644);
    chmod(&bundle, 0o755);
    write_bundle(&bundle, &spec).unwrap();
    assert_eq!(mode(&config), 0o600);
    assert_eq!(tree(&bundle), ["config.json"]);
    assert!(std::fs::read_to_string(&config).unwrap().contains("s3cr3t"));
    if is_root() {
        // Even in a directory others may enter, another user cannot read it.
        for p in [tmp.path().join("actors"), tmp.path().join("actors/a"), tmp.path().join("actors/a/work")] {
            chmod(&p, 0o755);
        }
        let cat = as_nobody(&["cat", config.to_str().unwrap()]);
        assert!(!cat.status.success() && cat.stdout.is_empty(), "{cat:?}");
        assert!(String::from_utf8_lossy(&cat.stderr).contains("Permission denied"), "{cat:?}");
        let stat = as_nobody(&["stat", "-c", "%a", config.to_str().unwrap()]);
        assert_eq!(
            String::from_utf8_lossy(&stat.stdout).trim(),
            "600",
            "control: nobody reaches the file: {stat:?}"
        );
    }
}
