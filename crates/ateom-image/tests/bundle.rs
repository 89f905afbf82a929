//! `runtime_spec`, `write_bundle` and `load_bundle`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ateom_image::oci_spec::runtime::{LinuxNamespaceType, Spec};
use ateom_image::{
    BundleOptions, DEFAULT_PATH, ImageConfig, ImageError, ProcessOverrides, load_bundle, runtime_spec,
    write_bundle,
};

/// A rootfs with an /etc/passwd and /etc/group.
fn rootfs(tmp: &Path) -> PathBuf {
    let root = tmp.join("rootfs");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n\
         # a comment\n\
         app:x:1000:1001:App:/home/app:/bin/sh\n\
         nohome:x:1002:1002::relative:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1001:\nstaff:x:50:app,other\nvideo:x:44:app\n")
        .unwrap();
    root
}

fn image() -> ImageConfig {
    ImageConfig {
        entrypoint: vec!["/bin/server".into(), "--flag".into()],
        cmd: vec!["serve".into()],
        env: vec![
            ("PATH".into(), "/opt/bin".into()),
            ("A".into(), "image".into()),
            ("B".into(), "image".into()),
        ],
        working_dir: Some("/srv".into()),
        user: None,
        exposed_ports: vec!["8080/tcp".into()],
    }
}

fn opts(root: &Path) -> BundleOptions {
    BundleOptions {
        rootfs: root.to_owned(),
        hostname: "actor-1".into(),
        netns_path: None,
        readonly_rootfs: false,
    }
}

fn args(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

fn env(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

fn ov(command: &[&str], args: &[&str]) -> ProcessOverrides {
    ProcessOverrides {
        command: command.iter().map(|s| (*s).to_owned()).collect(),
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        env: BTreeMap::new(),
    }
}

#[test]
fn command_and_args_follow_kubernetes_semantics() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(&rootfs(tmp.path()));
    let img = image();
    let run = |c: &[&str], a: &[&str]| args(&runtime_spec(&img, &ov(c, a), &o).unwrap());
    assert_eq!(run(&[], &[]), ["/bin/server", "--flag", "serve"]);
    assert_eq!(run(&[], &["migrate", "-v"]), ["/bin/server", "--flag", "migrate", "-v"]);
    assert_eq!(run(&["/bin/sh", "-c"], &[]), ["/bin/sh", "-c"], "command without args drops CMD");
    assert_eq!(run(&["/bin/sh", "-c"], &["echo hi"]), ["/bin/sh", "-c", "echo hi"]);

    let mut bare = image();
    bare.entrypoint.clear();
    bare.cmd.clear();
    assert!(matches!(runtime_spec(&bare, &ProcessOverrides::default(), &o), Err(ImageError::NoCommand)));
    // Args alone, with no entrypoint, become the command line.
    assert_eq!(args(&runtime_spec(&bare, &ov(&[], &["/bin/true"]), &o).unwrap()), ["/bin/true"]);
    assert!(matches!(runtime_spec(&bare, &ov(&[""], &[]), &o), Err(ImageError::InvalidOverride { .. })));
}

#[test]
fn env_is_image_env_overridden() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(&rootfs(tmp.path()));
    let mut overrides = ov(&[], &[]);
    overrides.env.insert("B".into(), "override".into());
    overrides.env.insert("C".into(), "new".into());
    let spec = runtime_spec(&image(), &overrides, &o).unwrap();
    assert_eq!(
        env(&spec),
        ["PATH=/opt/bin", "A=image", "B=override", "C=new", "HOSTNAME=actor-1", "HOME=/root"]
    );

    // Without PATH in the image, the default one is added.
    let mut img = image();
    img.env.retain(|(k, _)| k != "PATH");
    let spec = runtime_spec(&img, &ProcessOverrides::default(), &o).unwrap();
    assert!(env(&spec).contains(&format!("PATH={DEFAULT_PATH}")));

    let mut bad = ov(&[], &[]);
    bad.env.insert("X=Y".into(), "v".into());
    assert!(matches!(runtime_spec(&image(), &bad, &o), Err(ImageError::InvalidOverride { .. })));
}

#[test]
fn users_resolve_numerically_or_through_passwd_and_group() {
    let tmp = tempfile::tempdir().unwrap();
    let o = opts(&rootfs(tmp.path()));
    let user_of = |u: Option<&str>| {
        let mut img = image();
        img.user = u.map(str::to_owned);
        runtime_spec(&img, &ProcessOverrides::default(), &o).map(|s| {
            let p = s.process().clone().unwrap();
            let home = p.env().clone().unwrap().into_iter().find(|e| e.starts_with("HOME=")).unwrap();
            (p.user().uid(), p.user().gid(), p.user().additional_gids().clone().unwrap_or_default(), home)
        })
    };
    assert_eq!(user_of(None).unwrap(), (0, 0, vec![], "HOME=/root".into()));
    assert_eq!(user_of(Some("app")).unwrap(), (1000, 1001, vec![50, 44], "HOME=/home/app".into()));
    assert_eq!(user_of(Some("1000")).unwrap(), (1000, 1001, vec![50, 44], "HOME=/home/app".into()));
    assert_eq!(user_of(Some("app:staff")).unwrap(), (1000, 50, vec![44], "HOME=/home/app".into()));
    assert_eq!(user_of(Some("app:7")).unwrap().1, 7);
    // Unknown numeric ids are fine (gid 0, HOME /); a bad home falls back to /.
    assert_eq!(user_of(Some("4242")).unwrap(), (4242, 0, vec![], "HOME=/".into()));
    assert_eq!(user_of(Some("4242:4343")).unwrap(), (4242, 4343, vec![], "HOME=/".into()));
    assert_eq!(user_of(Some("nohome")).unwrap().3, "HOME=/");
    for bad in ["ghost", "app:ghosts", "app:"] {
        match user_of(Some(bad)) {
            Err(ImageError::UnknownUser { user, .. }) => assert_eq!(user, bad),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn passwd_is_read_inside_the_rootfs_even_through_an_absolute_symlink() {
    let tmp = tempfile::tempdir().unwrap();
    let root = rootfs(tmp.path());
    // /etc/passwd -> /etc/passwd.image (absolute): must resolve in the rootfs, not on the host.
    std::fs::rename(root.join("etc/passwd"), root.join("etc/passwd.image")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd.image", root.join("etc/passwd")).unwrap();
    let mut img = image();
    img.user = Some("app".into());
    let spec = runtime_spec(&img, &ProcessOverrides::default(), &opts(&root)).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().user().uid(), 1000);

    // A passwd symlinked out of the rootfs is an error, not a read of the host's file.
    std::fs::remove_file(root.join("etc/passwd")).unwrap();
    std::os::unix::fs::symlink("../../../../../../../etc/passwd", root.join("etc/passwd")).unwrap();
    let err = runtime_spec(&img, &ProcessOverrides::default(), &opts(&root)).unwrap_err();
    assert!(matches!(err, ImageError::UnknownUser { .. }), "{err}");

    // No passwd at all: names cannot resolve, numbers can.
    std::fs::remove_file(root.join("etc/passwd")).unwrap();
    assert!(runtime_spec(&img, &ProcessOverrides::default(), &opts(&root)).is_err());
    img.user = Some("12:34".into());
    let spec = runtime_spec(&img, &ProcessOverrides::default(), &opts(&root)).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().user().gid(), 34);
}

#[test]
fn the_spec_has_namespaces_mounts_and_sane_defaults() {
    let tmp = tempfile::tempdir().unwrap();
    let root = rootfs(tmp.path());
    let mut o = opts(&root);
    let spec = runtime_spec(&image(), &ProcessOverrides::default(), &o).unwrap();
    assert_eq!(spec.hostname().as_deref(), Some("actor-1"));
    assert_eq!(spec.root().as_ref().unwrap().path(), &root);
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(false));
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.terminal(), Some(false));
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!(p.no_new_privileges(), Some(true));
    let caps = p.capabilities().as_ref().unwrap();
    assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
    assert!(caps.ambient().as_ref().is_none_or(|a| a.is_empty()));

    let linux = spec.linux().as_ref().unwrap();
    let ns: Vec<(LinuxNamespaceType, Option<PathBuf>)> =
        linux.namespaces().clone().unwrap().iter().map(|n| (n.typ(), n.path().clone())).collect();
    assert_eq!(
        ns,
        [
            (LinuxNamespaceType::Pid, None),
            (LinuxNamespaceType::Ipc, None),
            (LinuxNamespaceType::Uts, None),
            (LinuxNamespaceType::Mount, None),
            (LinuxNamespaceType::Network, None),
        ]
    );
    let dests: Vec<String> =
        spec.mounts().clone().unwrap().iter().map(|m| m.destination().display().to_string()).collect();
    assert_eq!(dests, ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]);
    assert!(linux.masked_paths().as_ref().unwrap().iter().any(|p| p == "/proc/kcore"));

    o.netns_path = Some("/var/run/netns/ateom-1".into());
    o.readonly_rootfs = true;
    let mut img = image();
    img.working_dir = Some("relative/dir".into());
    let spec = runtime_spec(&img, &ProcessOverrides::default(), &o).unwrap();
    let net = spec
        .linux()
        .as_ref()
        .unwrap()
        .namespaces()
        .clone()
        .unwrap()
        .into_iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)
        .unwrap();
    assert_eq!(net.path().as_deref(), Some(Path::new("/var/run/netns/ateom-1")));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/relative/dir"));

    o.hostname = String::new();
    assert!(matches!(
        runtime_spec(&image(), &ProcessOverrides::default(), &o),
        Err(ImageError::InvalidOverride { .. })
    ));
}

#[test]
fn bundles_round_trip_and_relative_roots_become_absolute() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = tmp.path().join("bundle");
    let root = bundle.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    let mut o = opts(&root);
    let spec = runtime_spec(&image(), &ProcessOverrides::default(), &o).unwrap();
    write_bundle(&bundle, &spec).unwrap();
    let loaded = load_bundle(&bundle).unwrap();
    assert_eq!(loaded, spec);

    // A node agent's bundle says `"root": {"path": "rootfs"}`.
    o.rootfs = "rootfs".into();
    write_bundle(&bundle, &runtime_spec(&image(), &ProcessOverrides::default(), &o).unwrap()).unwrap();
    let loaded = load_bundle(&bundle).unwrap();
    assert_eq!(loaded.root().as_ref().unwrap().path(), &root);
    assert_eq!(args(&loaded), ["/bin/server", "--flag", "serve"]);

    // Missing pieces are clear errors.
    std::fs::remove_dir(&root).unwrap();
    let err = load_bundle(&bundle).unwrap_err();
    assert!(
        matches!(&err, ImageError::InvalidBundle { reason, .. } if reason.contains("not a directory")),
        "{err}"
    );
    let err = load_bundle(&tmp.path().join("nope")).unwrap_err();
    assert!(
        matches!(&err, ImageError::InvalidBundle { reason, .. } if reason.contains("config.json")),
        "{err}"
    );
    std::fs::write(bundle.join("config.json"), "{not json").unwrap();
    assert!(matches!(load_bundle(&bundle), Err(ImageError::InvalidBundle { .. })));
}
