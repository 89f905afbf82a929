//! Packs a (static) counter binary into an OCI image layout, prepares its rootfs and writes
//! an OCI bundle for it, printing where everything went.
//!
//! ```text
//! cargo run -p ateom-image --example pack_counter -- "$(scripts/build-counter.sh)" /tmp/counter-demo
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use ateom_image::{
    BundleOptions, ImageStore, ProcessOverrides, default_counter_pack_spec, pack_layout, runtime_spec,
    write_bundle,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [binary, work] = args.as_slice() else {
        eprintln!("usage: pack_counter <counter binary> <work dir>");
        return ExitCode::from(2);
    };
    match run(binary.into(), work.into()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pack_counter: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(binary: PathBuf, work: PathBuf) -> Result<(), ateom_image::ImageError> {
    let mut spec = default_counter_pack_spec(&binary);
    spec.out_dir = work.join("layout");
    let packed = pack_layout(&spec)?;
    println!("layout:   {} ({})", packed.image_ref(), packed.manifest_digest);
    let image = ImageStore::new(work.join("cache")).prepare(&packed.image_ref())?;
    println!("rootfs:   {} (cache hit: {})", image.rootfs.display(), image.cache_hit);
    let opts = BundleOptions {
        rootfs: image.rootfs.clone(),
        hostname: "counter".into(),
        netns_path: None,
        readonly_rootfs: false,
    };
    let oci = runtime_spec(&image.config, &ProcessOverrides::default(), &opts)?;
    let bundle = work.join("bundle");
    write_bundle(&bundle, &oci)?;
    println!("bundle:   {}", bundle.display());
    Ok(())
}
