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

/// The ateom checkout this binary belongs to (where `scripts/build-*.sh` live): an ancestor
/// of this executable (`<repo>/target/release/ateom`), else of the current directory.
pub fn repo_root() -> Option<PathBuf> {
    let is_repo =
        |d: &Path| d.join("scripts/build-guest-kernel.sh").is_file() && d.join("Cargo.toml").is_file();
    let exe = std::env::current_exe().ok();
    let from_exe = exe.iter().flat_map(|e| e.ancestors().skip(1).take(4)).find(|d| is_repo(d));
    if let Some(d) = from_exe {
        return Some(d.to_owned());
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors().find(|d| is_repo(d)).map(Path::to_owned)
}

/// Directories a `target/<name>/...` output of the build scripts may be under: next to this
/// executable's target directory, and the checkout's own `target/` (the scripts always build
/// there, whatever CARGO_TARGET_DIR says).
fn target_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .iter()
        .flat_map(|e| e.ancestors().skip(1).take(3).map(Path::to_owned).collect::<Vec<_>>())
        .collect();
    if let Some(r) = repo_root() {
        dirs.push(r.join("target"));
    }
    dirs
}

/// The static guest init built by scripts/build-init.sh, if there is one.
pub fn default_guest_init() -> Option<PathBuf> {
    target_dirs()
        .into_iter()
        .map(|d| d.join("init-static/x86_64-unknown-linux-gnu/release/ateom-init"))
        .find(|p| p.is_file())
}

/// The newest freestanding test guest scripts/build-test-guest.sh built, if there is one.
pub fn default_test_guest() -> Option<PathBuf> {
    target_dirs().into_iter().find_map(|dir| {
        std::fs::read_dir(dir.join("test-guest"))
            .ok()?
            .flatten()
            .map(|e| e.path().join("counter.elf"))
            .filter(|p| p.is_file())
            .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
    })
}

/// Where scripts/build-guest-kernel.sh caches kernels.
pub fn kernel_cache_dir() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("ateom/kernel"))
}

/// The newest guest kernel scripts/build-guest-kernel.sh cached under ~/.cache/ateom/kernel.
pub fn default_guest_kernel() -> Option<PathBuf> {
    std::fs::read_dir(kernel_cache_dir()?)
        .ok()?
        .flatten()
        .map(|e| e.path().join("vmlinux"))
        .filter(|p| p.is_file())
        .max_by_key(|p| p.metadata().and_then(|m| m.modified()).ok())
}

/// The guest files the microVM backends boot, built by the scripts in `scripts/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestAsset {
    /// ateom's Linux guest kernel (an uncompressed vmlinux).
    Kernel,
    /// `ateom-init`, the static PID 1 put into root disks built from images.
    Init,
    /// The freestanding counter guest (firecracker demo and tests).
    TestGuest,
}

impl GuestAsset {
    /// What it is, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Self::Kernel => "guest kernel",
            Self::Init => "guest init (ateom-init)",
            Self::TestGuest => "freestanding test guest",
        }
    }

    /// The script that builds it (relative to the checkout).
    pub fn script(self) -> &'static str {
        match self {
            Self::Kernel => "scripts/build-guest-kernel.sh",
            Self::Init => "scripts/build-init.sh",
            Self::TestGuest => "scripts/build-test-guest.sh",
        }
    }

    /// The flag that names one explicitly.
    pub fn flag(self) -> &'static str {
        match self {
            Self::Kernel | Self::TestGuest => "--kernel",
            Self::Init => "--guest-init",
        }
    }

    /// How long building it takes the first time on 2 cores (measured; see the README).
    pub fn build_time(self) -> &'static str {
        match self {
            Self::Kernel => {
                "about 9-24 minutes on 2 cores the first time, then cached under ~/.cache/ateom/kernel"
            }
            Self::Init => "about 1-2 minutes",
            Self::TestGuest => "under a second",
        }
    }

    /// The built one, if any.
    pub fn find(self) -> Option<PathBuf> {
        match self {
            Self::Kernel => default_guest_kernel(),
            Self::Init => default_guest_init(),
            Self::TestGuest => default_test_guest(),
        }
    }

    /// How to get one, for a message that says it is missing.
    pub fn how_to_build(self) -> String {
        format!(
            "build it with {} ({}), or all guest files with scripts/setup.sh --all; or pass {} PATH",
            self.script(),
            self.build_time(),
            self.flag()
        )
    }
}

/// The asset: `given`, else the built one, else built now by its script (progress on
/// stderr; the scripts cache what they build) when this binary runs from an ateom checkout.
pub fn ensure_guest_asset(asset: GuestAsset, given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        if !p.is_file() {
            bail!("{} {} does not exist; {}", asset.what(), p.display(), asset.how_to_build());
        }
        return Ok(p.to_owned());
    }
    if let Some(p) = asset.find() {
        return Ok(p);
    }
    let Some(root) = repo_root() else {
        bail!("no {} found; {} (in an ateom checkout)", asset.what(), asset.how_to_build());
    };
    eprintln!(
        "ateom: no {} yet: building it with {} ({}); progress follows",
        asset.what(),
        asset.script(),
        asset.build_time()
    );
    let out = std::process::Command::new("bash")
        .arg(root.join(asset.script()))
        .current_dir(&root)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", asset.script()))?;
    if !out.status.success() {
        bail!("{} failed ({}); see its output above", asset.script(), out.status);
    }
    let path = String::from_utf8_lossy(&out.stdout).lines().last().map(|l| PathBuf::from(l.trim()));
    match path {
        Some(p) if p.is_file() => {
            eprintln!("ateom: {}: {}", asset.what(), p.display());
            Ok(p)
        }
        _ => bail!("{} printed no path of a built file", asset.script()),
    }
}
