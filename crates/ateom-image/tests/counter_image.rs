//! The counter demo's image spec packs and prepares into the expected rootfs.

use std::os::unix::fs::PermissionsExt;

use ateom_image::{
    BundleOptions, ImageError, ImageStore, ProcessOverrides, default_counter_pack_spec, pack_layout,
    runtime_spec,
};

#[test]
fn counter_image_packs_and_prepares() {
    let tmp = tempfile::tempdir().unwrap();
    let binary = tmp.path().join("counter-bin");
    std::fs::write(&binary, b"\x7fELF not really").unwrap();
    let mut spec = default_counter_pack_spec(&binary);
    assert_eq!(spec.tag, "latest");
    // The output directory has no default.
    assert!(matches!(pack_layout(&spec), Err(ImageError::InvalidPackSpec(_))));
    spec.out_dir = tmp.path().join("layout");
    let packed = pack_layout(&spec).unwrap();
    assert_eq!(packed.tag, "latest");
    assert!(packed.manifest_digest.starts_with("sha256:"));

    let img = ImageStore::new(tmp.path().join("cache")).prepare(&packed.image_ref()).unwrap();
    let r = &img.rootfs;
    let mode = |p: &str| std::fs::symlink_metadata(r.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(std::fs::read(r.join("counter")).unwrap(), b"\x7fELF not really");
    assert_eq!(mode("counter"), 0o755);
    assert_eq!(mode("tmp"), 0o1777);
    assert!(r.join("var/lib/counter").is_dir());
    assert_eq!(std::fs::read_dir(r.join("var/lib/counter")).unwrap().count(), 0);
    assert_eq!(img.config.entrypoint, ["/counter"]);
    assert!(img.config.cmd.is_empty());
    assert_eq!(
        img.config.env,
        [("COUNTER_DIR".to_owned(), "/var/lib/counter".to_owned()), ("PORT".to_owned(), "8080".to_owned())]
    );
    assert_eq!(img.config.tcp_ports(), [8080]);

    let oci = runtime_spec(
        &img.config,
        &ProcessOverrides::default(),
        &BundleOptions {
            rootfs: r.clone(),
            hostname: "counter".into(),
            netns_path: None,
            readonly_rootfs: false,
        },
    )
    .unwrap();
    assert_eq!(oci.process().as_ref().unwrap().args().as_deref(), Some(&["/counter".to_owned()][..]));

    // The image layout itself is well formed for other tools: oci-layout and a tagged index.
    let layout: serde_json::Value =
        serde_json::from_slice(&std::fs::read(packed.dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(packed.dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"], "latest");
    assert_eq!(index["manifests"][0]["digest"], packed.manifest_digest.as_str());
}
