//! `ateom image`: building OCI image layouts without Docker.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pack the static `counter` demo binary into an OCI image layout.
    ///
    /// Build the binary first with scripts/build-counter.sh (it must be statically linked:
    /// the image has nothing else in it).
    PackCounter {
        /// The static counter binary (default: the one scripts/build-counter.sh builds).
        #[arg(long, env = "ATEOM_COUNTER_BIN")]
        binary: Option<PathBuf>,
        /// Layout directory to create or add to.
        #[arg(long)]
        out: PathBuf,
        /// Tag to give the image in the layout.
        #[arg(long, default_value = "latest")]
        tag: String,
    },
}

pub fn main(cmd: ImageCommand) -> Result<()> {
    match cmd {
        ImageCommand::PackCounter { binary, out, tag } => {
            let bin = find_counter(binary)?;
            let packed = pack_counter(&bin, &out, &tag)?;
            println!("oci-layout:{}:{tag}", out.display());
            eprintln!("packed {} as {}", bin.display(), packed);
            Ok(())
        }
    }
}

/// The counter binary: the given path, or the one scripts/build-counter.sh builds next to
/// this executable's target directory.
pub fn find_counter(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("counter binary {} does not exist", p.display());
        }
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("counter-static/x86_64-unknown-linux-gnu/release/counter"))
        .collect();
    candidates.iter().find(|p| p.is_file()).cloned().with_context(|| {
        format!(
            "no static counter binary found (looked at {}); build it with scripts/build-counter.sh \
             or pass --counter-bin / ATEOM_COUNTER_BIN",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Packs the counter into `<out>` under `tag`; returns the manifest digest.
pub fn pack_counter(bin: &Path, out: &Path, tag: &str) -> Result<String> {
    let mut spec = ateom_image::default_counter_pack_spec(bin);
    spec.out_dir = out.to_owned();
    spec.tag = tag.to_owned();
    let packed = ateom_image::pack_layout(&spec).with_context(|| format!("packing {}", bin.display()))?;
    Ok(packed.manifest_digest)
}

/// Packs the counter into `<dir>` and returns its image reference.
pub fn counter_image(dir: &Path, counter_bin: Option<PathBuf>) -> Result<String> {
    let bin = find_counter(counter_bin)?;
    pack_counter(&bin, dir, "latest")?;
    Ok(format!("oci-layout:{}:latest", dir.display()))
}

/// The static guest init built by scripts/build-init.sh next to this executable's target
/// directory, if there is one.
pub fn default_guest_init() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("init-static/x86_64-unknown-linux-gnu/release/ateom-init"))
        .find(|p| p.is_file())
}

/// The newest guest kernel scripts/build-guest-kernel.sh cached under ~/.cache/ateom/kernel.
pub fn default_guest_kernel() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    std::fs::read_dir(cache.join("ateom/kernel"))
        .ok()?
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}
