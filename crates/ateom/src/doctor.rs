//! `ateom doctor`: what this host can run, one line per capability.
//!
//! Every check says `ok`, `degraded` (works, with a limitation the detail names) or `missing`
//! (absent or unusable as configured), and why. A check can *block* backends: those cannot
//! start here, and `ateom serve` refuses them with the check's reason ([`Report::refusal`]).
//! The worker logs the same summary at start ([`Report::log`]).
//!
//! The probes reuse what the backends themselves use (`ateom_gvisor::Runsc::probe`,
//! `ateom_microvm::kvm`, `ateom_net::Netns`, the store's own client), so the doctor and the
//! backends cannot disagree about what they see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::{Value, json};

use crate::images::GuestAsset;
use crate::{BackendKind, WorkerArgs};

const ALL_BACKENDS: [BackendKind; 3] = [BackendKind::Gvisor, BackendKind::Qemu, BackendKind::Firecracker];
const MICROVMS: [BackendKind; 2] = [BackendKind::Qemu, BackendKind::Firecracker];

/// The backends a check is about (what a worker of another backend need not worry about).
fn concerns(check: &str) -> &'static [BackendKind] {
    match check {
        "runsc" => &[BackendKind::Gvisor],
        "qemu" => &[BackendKind::Qemu],
        "firecracker" | "jailer" | "test-guest" => &[BackendKind::Firecracker],
        "kvm" | "mkfs.ext4" | "guest-kernel" | "guest-init" => &MICROVMS,
        _ => &ALL_BACKENDS,
    }
}

/// How long the store check waits for the store (per operation).
const STORE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct DoctorArgs {
    /// Print one JSON object: `{"checks":[{"name","status","detail","blocks"}],"backends":{..},"ok":bool}`.
    #[arg(long)]
    json: bool,
    /// The worker's state directory (free disk is measured there, or at its nearest existing
    /// parent).
    #[arg(long, env = "ATEOM_STATE_DIR", default_value = "/var/lib/ateom")]
    state_dir: PathBuf,
    /// Also check this object-store URI prefix: list it and read its LATEST, with a short
    /// timeout (credentials and endpoint from the environment, as the worker takes them).
    #[arg(long)]
    store: Option<String>,
    /// Every `ateom serve` worker flag is accepted: the doctor checks what a worker started
    /// with the same flags would use. `ok` is whether the --backend (default gvisor) can run.
    #[command(flatten)]
    worker: WorkerArgs,
}

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Degraded,
    Missing,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Degraded => "degraded",
            Status::Missing => "missing",
        }
    }
}

/// One capability of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// Backends that cannot start because of this.
    pub blocks: Vec<BackendKind>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, status: Status::Ok, detail: detail.into(), blocks: vec![] }
    }
    fn degraded(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, status: Status::Degraded, detail: detail.into(), blocks: vec![] }
    }
    fn missing(name: &'static str, detail: impl Into<String>) -> Check {
        Check { name, status: Status::Missing, detail: detail.into(), blocks: vec![] }
    }
    fn blocking(mut self, backends: &[BackendKind]) -> Check {
        self.blocks = backends.to_vec();
        self
    }
}

/// Every check's outcome.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    /// Why `backend` cannot run here (every blocking check, `name: detail`), or `None`.
    pub fn refusal(&self, backend: BackendKind) -> Option<String> {
        let reasons: Vec<String> = self
            .checks
            .iter()
            .filter(|c| c.blocks.contains(&backend))
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }

    /// `backend` can run, and a store that was checked is usable.
    pub fn ok(&self, backend: BackendKind) -> bool {
        self.refusal(backend).is_none()
            && !self.checks.iter().any(|c| c.name == "store" && c.status == Status::Missing)
    }

    pub fn to_json(&self, backend: BackendKind) -> Value {
        let checks: Vec<Value> = self
            .checks
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "status": c.status.name(),
                    "detail": c.detail,
                    "blocks": c.blocks.iter().map(|b| b.name()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let backends: serde_json::Map<String, Value> = ALL_BACKENDS
            .iter()
            .map(|b| {
                let why = self.refusal(*b);
                (b.name().to_owned(), json!({"runs": why.is_none(), "reason": why}))
            })
            .collect();
        json!({"checks": checks, "backends": backends, "backend": backend.name(), "ok": self.ok(backend)})
    }

    /// The human report: one line per check, then which backends can run.
    pub fn to_text(&self, backend: BackendKind) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("{:<9}{:<13}{}\n", c.status.name(), c.name, c.detail));
        }
        out.push('\n');
        for b in ALL_BACKENDS {
            match self.refusal(b) {
                None => out.push_str(&format!("{:<13}can run\n", b.name())),
                Some(why) => out.push_str(&format!("{:<13}cannot run: {why}\n", b.name())),
            }
        }
        out.push_str(&if self.ok(backend) {
            format!("ok: the {} backend can run on this host\n", backend.name())
        } else if let Some(why) = self.refusal(backend) {
            format!("not ok: the {} backend cannot run on this host: {why}\n", backend.name())
        } else {
            "not ok: the store is not usable (see `store` above)\n".to_owned()
        });
        out
    }

    /// One log line per check, as `ateom serve` starts: a warning for what is not ok and
    /// concerns `backend`, information for the rest.
    pub fn log(&self, backend: BackendKind) {
        for c in &self.checks {
            if c.status != Status::Ok && concerns(c.name).contains(&backend) {
                tracing::warn!(target: "ateom::doctor", "{} {}: {}", c.name, c.status.name(), c.detail);
            } else {
                tracing::info!(target: "ateom::doctor", "{} {}: {}", c.name, c.status.name(), c.detail);
            }
        }
    }

    /// Runs every check for a worker with these flags (and `store`, if given).
    pub async fn gather(worker: &WorkerArgs, state_dir: &Path, store: Option<&str>) -> Report {
        let kvm = ateom_microvm::kvm();
        let (runsc, qemu, (firecracker, jailer), netns, store) = tokio::join!(
            check_runsc(&worker.runsc, &worker.platform, kvm),
            check_qemu(worker, kvm),
            check_firecracker(worker, kvm),
            check_netns(),
            async {
                match store {
                    Some(uri) => Some(check_store(uri).await),
                    None => None,
                }
            },
        );
        let mut checks = vec![
            runsc,
            check_kvm(kvm),
            qemu,
            firecracker,
            jailer,
            netns,
            check_cgroups(),
            check_userfaultfd(),
            check_disk(state_dir, worker.min_free_mib),
            check_mkfs_ext4(),
            check_guest_asset(GuestAsset::Kernel, worker.kernel.as_deref()),
            check_guest_asset(GuestAsset::Init, worker.guest_init.as_deref()),
            check_guest_asset(GuestAsset::TestGuest, None),
        ];
        checks.extend(store);
        Report { checks }
    }
}

pub async fn main(a: DoctorArgs) -> Result<()> {
    let report = Report::gather(&a.worker, &a.state_dir, a.store.as_deref()).await;
    if a.json {
        println!("{}", report.to_json(a.worker.backend));
    } else {
        print!("{}", report.to_text(a.worker.backend));
    }
    if !report.ok(a.worker.backend) {
        // The report said why; the exit status tells scripts.
        std::process::exit(1);
    }
    Ok(())
}

// ---- the checks ---------------------------------------------------------------------------

async fn check_runsc(path: &Path, platform: &str, kvm: ateom_microvm::Kvm) -> Check {
    const NAME: &str = "runsc";
    let block = [BackendKind::Gvisor];
    if !path.exists() {
        return Check::missing(
            NAME,
            format!("no runsc at {}: apt-get install runsc (or pass --runsc PATH)", path.display()),
        )
        .blocking(&block);
    }
    let r = match ateom_gvisor::Runsc::probe(path).await {
        Ok(r) => r,
        Err(e) => return Check::missing(NAME, e.to_string()).blocking(&block),
    };
    let f = &r.features;
    let platforms = if f.platforms.is_empty() { "unknown".to_owned() } else { f.platforms.join(", ") };
    let overlay = if f.overlay2 {
        "--overlay2"
    } else if f.overlay_legacy {
        "--overlay (legacy spelling)"
    } else {
        "no overlay flag"
    };
    let summary = format!(
        "runsc {} at {}; platforms {platforms}; using {platform}; {overlay}",
        r.version,
        path.display()
    );
    if !f.platforms.is_empty() && !f.platforms.iter().any(|p| p == platform) {
        return Check::missing(
            NAME,
            format!("{summary}: this runsc has no platform {platform:?} (pass --platform ptrace)"),
        )
        .blocking(&block);
    }
    if platform == "kvm" && !kvm.boots_linux() {
        return Check::missing(
            NAME,
            format!(
                "{summary}: the kvm platform needs hardware virtualisation and /dev/kvm here is {} \
                 (pass --platform ptrace)",
                kvm.name()
            ),
        )
        .blocking(&block);
    }
    Check::ok(NAME, summary)
}

fn cpu_virt_flag() -> Option<&'static str> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let flags = info.lines().find(|l| l.starts_with("flags"))?;
    let words: Vec<&str> = flags.split_whitespace().collect();
    ["vmx", "svm"].into_iter().find(|f| words.contains(f))
}

fn check_kvm(kvm: ateom_microvm::Kvm) -> Check {
    use ateom_microvm::Kvm;
    const NAME: &str = "kvm";
    match kvm {
        Kvm::Hardware => Check::ok(
            NAME,
            format!(
                "/dev/kvm is hardware virtualisation ({}): any guest kernel boots",
                cpu_virt_flag().unwrap_or("no vmx/svm flag seen, but not kvm-pvm")
            ),
        ),
        Kvm::Pvm => Check::degraded(
            NAME,
            "/dev/kvm is kvm-pvm (software nested virtualisation, module kvm_pvm): stock Linux guests \
             cannot boot under KVM here; qemu runs them with TCG, firecracker runs freestanding guests only",
        ),
        Kvm::Absent => {
            let why = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no /dev/kvm".to_owned(),
                Err(e) => format!("cannot open /dev/kvm read-write: {e}"),
                Ok(_) => "/dev/kvm is not usable".to_owned(),
            };
            Check::missing(
                NAME,
                format!("{why}: firecracker cannot run; qemu runs guests with TCG (software emulation)"),
            )
            .blocking(&[BackendKind::Firecracker])
        }
    }
}

/// `7.2.22` -> (7, 2).
pub fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The accelerators `qemu-system-x86_64 -accel help` lists.
pub fn parse_accels(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Accelerators supported"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

async fn output_of(bin: &Path, args: &[&str]) -> std::io::Result<String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(bin).args(args).stdin(std::process::Stdio::null()).output(),
    )
    .await
    .map_err(|_| std::io::Error::other(format!("{} {} took over 10 s", bin.display(), args.join(" "))))??;
    let mut s = String::from_utf8_lossy(&out.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(s)
}

async fn check_qemu(w: &WorkerArgs, kvm: ateom_microvm::Kvm) -> Check {
    const NAME: &str = "qemu";
    let block = [BackendKind::Qemu];
    let bin = if w.qemu.is_absolute() {
        Some(w.qemu.clone()).filter(|p| p.is_file())
    } else {
        crate::backends::find_on_path(&w.qemu.to_string_lossy())
    };
    let Some(bin) = bin else {
        return Check::missing(
            NAME,
            format!("no {}: apt-get install qemu-system-x86 (or pass --qemu PATH)", w.qemu.display()),
        )
        .blocking(&block);
    };
    let version = match output_of(&bin, &["--version"]).await {
        Ok(text) => match ateom_qemu::parse_version(&text) {
            Some(v) => v,
            None => {
                return Check::missing(NAME, format!("{}: unexpected --version output", bin.display()))
                    .blocking(&block);
            }
        },
        Err(e) => return Check::missing(NAME, format!("{}: {e}", bin.display())).blocking(&block),
    };
    let accels = parse_accels(&output_of(&bin, &["-accel", "help"]).await.unwrap_or_default());
    let machines = output_of(&bin, &["-machine", "help"]).await.unwrap_or_default();
    let summary = format!("QEMU {version} at {}; accelerators {}", bin.display(), accels.join(", "));
    if !machines.lines().any(|l| l.split_whitespace().next() == Some("microvm")) {
        return Check::missing(NAME, format!("{summary}: no microvm machine type (needs QEMU >= 4.2)"))
            .blocking(&block);
    }
    let has = |a: &str| accels.iter().any(|x| x == a);
    let accel = match w.accel.as_str() {
        "auto" if kvm.boots_linux() && has("kvm") => "kvm",
        "auto" | "tcg" => "tcg",
        "kvm" if kvm == ateom_microvm::Kvm::Absent || !has("kvm") => {
            return Check::missing(NAME, format!("{summary}: --accel kvm, but KVM is not usable here"))
                .blocking(&block);
        }
        "kvm" => "kvm",
        other => {
            return Check::missing(
                NAME,
                format!("{summary}: --accel {other:?} is not one of auto, kvm, tcg"),
            )
            .blocking(&block);
        }
    };
    if !w.qemu_unconfined && major_minor(&version).is_some_and(|v| v >= (9, 0)) {
        return Check::missing(
            NAME,
            format!(
                "{summary}: QEMU 9.0 removed -chroot, which ateom's QEMU confinement passes, so the qemu \
                 backend cannot start a VM with it; install Debian 12's qemu-system-x86 (7.2), or run \
                 with --qemu-unconfined (QEMU then runs as root without seccomp, uid drop or chroot)"
            ),
        )
        .blocking(&block);
    }
    let how = if accel == "tcg" && w.accel == "auto" {
        format!("guests run with TCG (software emulation: /dev/kvm is {})", kvm.name())
    } else {
        format!("guests run with {accel}")
    };
    let confined = if w.qemu_unconfined { "unconfined (--qemu-unconfined)" } else { "confined" };
    Check::ok(NAME, format!("{summary}; {how}; {confined}"))
}

async fn check_firecracker(w: &WorkerArgs, kvm: ateom_microvm::Kvm) -> (Check, Check) {
    const NAME: &str = "firecracker";
    const JAILER: &str = "jailer";
    let block = [BackendKind::Firecracker];
    let bin = match &w.firecracker {
        Some(p) => Some(p.clone()),
        None => crate::backends::find_on_path("firecracker"),
    };
    let Some(bin) = bin else {
        return (
            Check::missing(
                NAME,
                "no firecracker binary (it is in no package registry): pass --firecracker PATH or set \
                 ATEOM_FIRECRACKER_BIN, or put it on PATH",
            )
            .blocking(&block),
            Check::missing(JAILER, "no firecracker binary, so no jailer next to it"),
        );
    };
    let version = match output_of(&bin, &["--version"]).await {
        Ok(text) => ateom_firecracker::parse_version(&text),
        Err(e) => {
            return (
                Check::missing(NAME, format!("{}: {e}", bin.display())).blocking(&block),
                Check::missing(JAILER, "firecracker does not run"),
            );
        }
    };
    let Some(version) = version else {
        return (
            Check::missing(NAME, format!("{}: unexpected --version output", bin.display())).blocking(&block),
            Check::missing(JAILER, "firecracker does not run"),
        );
    };
    let is_static = ateom_firecracker::vmm::is_static_elf(&bin);
    let linked = if is_static { "static" } else { "dynamically linked" };
    let guests = match kvm {
        ateom_microvm::Kvm::Hardware => "Linux and freestanding guests",
        ateom_microvm::Kvm::Pvm => "freestanding guests only (kvm-pvm)",
        ateom_microvm::Kvm::Absent => "nothing: no usable /dev/kvm",
    };
    let fc = Check::ok(NAME, format!("firecracker {version} at {} ({linked}); runs {guests}", bin.display()));
    let jailer = if w.no_jailer {
        Check::degraded(JAILER, "--no-jailer: VMMs run as root, unconfined")
    } else if let Some(j) = &w.jailer {
        if !j.is_file() {
            Check::missing(JAILER, format!("--jailer {} does not exist", j.display())).blocking(&block)
        } else if !is_static {
            Check::degraded(
                JAILER,
                format!(
                    "{} given, but the jailer needs a static firecracker and this one is not",
                    j.display()
                ),
            )
        } else {
            Check::ok(JAILER, format!("{} (--jailer): VMMs run jailed", j.display()))
        }
    } else {
        let next = bin.parent().map(|d| d.join("jailer")).filter(|j| j.is_file());
        match next {
            Some(j) if is_static => {
                Check::ok(JAILER, format!("{} next to a static firecracker: VMMs run jailed", j.display()))
            }
            Some(j) => Check::degraded(
                JAILER,
                format!(
                    "{} is there, but firecracker is dynamically linked, so it is not used: VMMs run \
                     unjailed, as root",
                    j.display()
                ),
            ),
            None => Check::degraded(
                JAILER,
                "no jailer next to firecracker: VMMs run unjailed, as root (put Firecracker's jailer next \
                 to a static firecracker, or pass --jailer)",
            ),
        }
    };
    (fc, jailer)
}

async fn check_netns() -> Check {
    const NAME: &str = "netns";
    let all = ALL_BACKENDS;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Check::missing(NAME, "not root: ateom creates network namespaces (run it as root)")
            .blocking(&all);
    }
    let name = format!("ateom-doctor-{}", std::process::id());
    let n = name.clone();
    let result = tokio::task::spawn_blocking(move || -> Result<(), String> {
        // A doctor killed between create and delete leaves its namespace: remove those of
        // processes that are gone.
        for old in ateom_net::Netns::list_with_prefix("ateom-doctor-").unwrap_or_default() {
            let pid = old.trim_start_matches("ateom-doctor-");
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = ateom_net::Netns::delete_by_name(&old);
            }
        }
        let ns = ateom_net::Netns::create(&n).map_err(|e| format!("creating {n}: {e}"))?;
        ns.delete().map_err(|e| format!("deleting {n}: {e}"))
    })
    .await
    .unwrap_or_else(|e| Err(format!("probe panicked: {e}")));
    match result {
        Ok(()) => Check::ok(NAME, format!("created and deleted network namespace {name}")),
        Err(e) => Check::missing(NAME, e).blocking(&all),
    }
}

/// The cgroup hierarchy: `(description, controllers)` from `/proc/self/mounts` and the v2
/// root's `cgroup.controllers` (when `/sys/fs/cgroup` is cgroup2).
pub fn parse_cgroups(mounts: &str, v2_root_controllers: Option<&str>) -> Option<(String, Vec<String>)> {
    const KNOWN: [&str; 12] = [
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "io",
        "pids",
        "hugetlb",
        "net_cls",
        "perf_event",
    ];
    if let Some(c) = v2_root_controllers {
        return Some(("v2 (unified)".to_owned(), c.split_whitespace().map(str::to_owned).collect()));
    }
    let mut v1 = Vec::new();
    let mut unified = None;
    for l in mounts.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        let (Some(dir), Some(fstype), Some(opts)) = (f.get(1), f.get(2), f.get(3)) else { continue };
        match *fstype {
            "cgroup" => {
                for o in opts.split(',') {
                    if KNOWN.contains(&o) && !v1.iter().any(|c| c == o) {
                        v1.push(o.to_owned());
                    }
                }
            }
            "cgroup2" => unified = Some(dir.to_string()),
            _ => {}
        }
    }
    if v1.is_empty() {
        return unified.map(|d| (format!("v2 at {d} (no controllers delegated)"), vec![]));
    }
    let what = match unified {
        Some(d) => format!("v1 (hybrid: cgroup2 at {d} without controllers)"),
        None => "v1".to_owned(),
    };
    Some((what, v1))
}

fn check_cgroups() -> Check {
    const NAME: &str = "cgroups";
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let v2 = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").ok();
    let Some((what, controllers)) = parse_cgroups(&mounts, v2.as_deref()) else {
        return Check::missing(NAME, "no cgroup file system is mounted: gVisor's limits cannot be enforced");
    };
    let lacking: Vec<&str> =
        ["cpu", "memory", "pids"].into_iter().filter(|c| !controllers.iter().any(|x| x == c)).collect();
    let detail = format!("{what}; controllers {}", controllers.join(" "));
    if lacking.is_empty() {
        Check::ok(NAME, detail)
    } else {
        Check::degraded(
            NAME,
            format!(
                "{detail}: no {} controller, so those sandbox limits are not enforced",
                lacking.join(", ")
            ),
        )
    }
}

fn check_userfaultfd() -> Check {
    const NAME: &str = "userfaultfd";
    const USE: &str = "for on-demand memory restores; nothing in ateom needs it yet";
    // SAFETY: userfaultfd(2) takes flags only; the descriptor it returns is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if fd >= 0 {
        // SAFETY: closing the descriptor we just got.
        unsafe { libc::close(fd as i32) };
        return Check::ok(NAME, format!("userfaultfd(2) works ({USE})"));
    }
    let syscall_err = std::io::Error::last_os_error();
    match std::fs::OpenOptions::new().read(true).write(true).open("/dev/userfaultfd") {
        Ok(_) => Check::ok(NAME, format!("/dev/userfaultfd opens (userfaultfd(2): {syscall_err}) ({USE})")),
        Err(dev_err) => Check::missing(
            NAME,
            format!("userfaultfd(2): {syscall_err}; /dev/userfaultfd: {dev_err} ({USE})"),
        ),
    }
}

fn check_disk(state_dir: &Path, min_free_mib: u64) -> Check {
    const NAME: &str = "disk";
    let Some(at) = state_dir.ancestors().find(|d| d.exists()) else {
        return Check::missing(NAME, format!("no existing directory above {}", state_dir.display()));
    };
    let space = match ateom_sys::space(at) {
        Ok(s) => s,
        Err(e) => return Check::missing(NAME, format!("statvfs {}: {e}", at.display())),
    };
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let detail = format!(
        "{:.1} GiB free of {:.1} GiB at {}{}",
        gib(space.available),
        gib(space.total),
        at.display(),
        if at == state_dir {
            String::new()
        } else {
            format!(" (state dir {} not created yet)", state_dir.display())
        }
    );
    if space.available < min_free_mib << 20 {
        Check::missing(
            NAME,
            format!("{detail}: below --min-free-mib {min_free_mib}, so every checkpoint would be refused"),
        )
    } else if space.available < 2 << 30 {
        Check::degraded(
            NAME,
            format!("{detail}: under 2 GiB; a microVM snapshot holds all guest RAM and the root disk"),
        )
    } else {
        Check::ok(NAME, detail)
    }
}

fn check_mkfs_ext4() -> Check {
    const NAME: &str = "mkfs.ext4";
    let bin = crate::backends::find_on_path("mkfs.ext4")
        .or_else(|| Some(PathBuf::from("/sbin/mkfs.ext4")).filter(|p| p.is_file()));
    let Some(bin) = bin else {
        return Check::missing(
            NAME,
            "no mkfs.ext4: microVM root disks cannot be built from images (apt-get install e2fsprogs)",
        );
    };
    let out = std::process::Command::new(&bin).arg("-V").stdin(std::process::Stdio::null()).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned()).unwrap_or_default();
    // "mke2fs 1.47.0 (5-Feb-2023)"
    let version = text.lines().next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("unknown");
    match major_minor(version) {
        Some(v) if v < (1, 43) => Check::missing(
            NAME,
            format!("e2fsprogs {version} at {}: ateom needs >= 1.43 (mkfs.ext4 -d)", bin.display()),
        ),
        _ => Check::ok(NAME, format!("e2fsprogs {version} at {} (microVM root disks)", bin.display())),
    }
}

fn check_guest_asset(asset: GuestAsset, given: Option<&Path>) -> Check {
    let name = match asset {
        GuestAsset::Kernel => "guest-kernel",
        GuestAsset::Init => "guest-init",
        GuestAsset::TestGuest => "test-guest",
    };
    if let Some(p) = given {
        return if p.is_file() {
            Check::ok(name, format!("{} ({})", p.display(), asset.flag()))
        } else {
            Check::missing(name, format!("{} {} does not exist", asset.flag(), p.display()))
                .blocking(&MICROVMS)
        };
    }
    match asset.find() {
        Some(p) => Check::ok(name, format!("{} (built)", p.display())),
        None => Check::missing(name, format!("not built: {}", asset.how_to_build())),
    }
}

/// What a failed store probe most likely means, for the detail line.
pub fn store_reason(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("nosuchbucket") || e.contains("bucket does not exist") || e.contains("containernotfound") {
        "the bucket does not exist"
    } else if e.contains("invalidaccesskeyid")
        || e.contains("signaturedoesnotmatch")
        || e.contains("accessdenied")
        || e.contains("authorization")
        || e.contains("forbidden")
        || e.contains("unauthorized")
    {
        "the credentials were refused"
    } else if e.contains("missing") && (e.contains("credential") || e.contains("access key")) {
        "no credentials were found in the environment"
    } else if e.contains("connection refused")
        || e.contains("dns error")
        || e.contains("error sending request")
    {
        "the endpoint cannot be reached"
    } else if e.contains("timed out") || e.contains("timeout") {
        "the store did not answer in time"
    } else if e.contains("not found") {
        "the bucket or prefix was not found"
    } else {
        "the store cannot be used"
    }
}

async fn check_store(uri: &str) -> Check {
    const NAME: &str = "store";
    // A file:// directory is created by the store at its first push: check without creating.
    if let Some(path) = uri.strip_prefix("file://") {
        let p = Path::new(path);
        if !p.is_absolute() {
            return Check::missing(NAME, format!("{uri}: a file:// store needs an absolute path"));
        }
        if !p.exists() {
            let parent = p.ancestors().find(|d| d.exists()).unwrap_or(Path::new("/"));
            let c = std::ffi::CString::new(parent.as_os_str().as_encoded_bytes()).unwrap_or_default();
            // SAFETY: access(2) on a NUL-terminated path we own.
            let writable = unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0;
            return if writable {
                Check::ok(NAME, format!("{uri}: does not exist yet; created at the first push"))
            } else {
                Check::missing(
                    NAME,
                    format!("{uri}: does not exist and {} is not writable", parent.display()),
                )
            };
        }
    }
    let store = match ateom_store::Store::open(uri) {
        Ok(s) => s,
        Err(e) => return Check::missing(NAME, format!("{uri}: {e}")),
    };
    let mut config = store.config().clone();
    config.retry.max_attempts = 1;
    config.retry.attempt_timeout = STORE_TIMEOUT;
    config.retry.max_elapsed = STORE_TIMEOUT;
    let store = match store.with_config(config) {
        Ok(s) => s,
        Err(e) => return Check::missing(NAME, format!("{uri}: {e}")),
    };
    let listed = match tokio::time::timeout(STORE_TIMEOUT * 2, store.list()).await {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            let e = format!("{e:#}");
            return Check::missing(NAME, format!("{uri}: {} (listing failed: {e})", store_reason(&e)));
        }
        Err(_) => {
            return Check::missing(
                NAME,
                format!("{uri}: the store did not answer a list within {} s", (STORE_TIMEOUT * 2).as_secs()),
            );
        }
    };
    let n = listed.len();
    match tokio::time::timeout(STORE_TIMEOUT * 2, store.latest()).await {
        Ok(Ok(id)) => Check::ok(NAME, format!("{uri}: listed {n} snapshot(s); LATEST is {id}")),
        Ok(Err(e)) if e.is_not_found() => {
            Check::ok(NAME, format!("{uri}: listed {n} snapshot(s); no LATEST yet"))
        }
        Ok(Err(e)) => {
            Check::degraded(NAME, format!("{uri}: listed {n} snapshot(s), but reading LATEST failed: {e}"))
        }
        Err(_) => {
            Check::degraded(NAME, format!("{uri}: listed {n} snapshot(s), but LATEST did not arrive in time"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        Report {
            checks: vec![
                Check::ok("runsc", "runsc 1 at /usr/bin/runsc"),
                Check::degraded("kvm", "/dev/kvm is kvm-pvm"),
                Check::missing("firecracker", "no firecracker binary").blocking(&[BackendKind::Firecracker]),
                Check::missing("guest-kernel", "not built"),
            ],
        }
    }

    #[test]
    fn a_blocking_check_refuses_only_its_backends() {
        let r = report();
        assert_eq!(r.refusal(BackendKind::Gvisor), None);
        assert_eq!(r.refusal(BackendKind::Firecracker).unwrap(), "firecracker: no firecracker binary");
        assert!(r.ok(BackendKind::Gvisor));
        assert!(!r.ok(BackendKind::Firecracker));
        let mut r = r;
        r.checks.push(Check::missing("store", "s3://x: the bucket does not exist"));
        assert!(!r.ok(BackendKind::Gvisor), "an unusable --store makes the report not ok");
    }

    #[test]
    fn json_has_one_entry_per_check_and_a_verdict_per_backend() {
        let v = report().to_json(BackendKind::Gvisor);
        assert_eq!(v["ok"], true);
        assert_eq!(v["checks"].as_array().unwrap().len(), 4);
        assert_eq!(
            v["checks"][1],
            json!({"name": "kvm", "status": "degraded", "detail": "/dev/kvm is kvm-pvm", "blocks": []})
        );
        assert_eq!(v["checks"][2]["blocks"], json!(["firecracker"]));
        assert_eq!(v["backends"]["gvisor"], json!({"runs": true, "reason": null}));
        assert_eq!(v["backends"]["firecracker"]["runs"], false);
    }

    #[test]
    fn text_has_one_line_per_check_then_the_backends() {
        let t = report().to_text(BackendKind::Firecracker);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ok       runsc        runsc 1 at /usr/bin/runsc");
        assert_eq!(lines[1], "degraded kvm          /dev/kvm is kvm-pvm");
        assert!(lines[2].starts_with("missing  firecracker  no firecracker binary"));
        assert!(t.contains("gvisor       can run\n"));
        assert!(t.contains("firecracker  cannot run: firecracker: no firecracker binary\n"));
        assert!(t.ends_with(
            "not ok: the firecracker backend cannot run on this host: firecracker: no firecracker binary\n"
        ));
    }

    #[test]
    fn qemu_versions_and_accelerators_parse() {
        assert_eq!(major_minor("7.2.22"), Some((7, 2)));
        assert_eq!(major_minor("10.0.2"), Some((10, 0)));
        assert_eq!(major_minor("1.47.0"), Some((1, 47)));
        assert_eq!(major_minor("x"), None);
        assert_eq!(parse_accels("Accelerators supported in QEMU binary:\ntcg\nkvm\n"), ["tcg", "kvm"]);
        assert!(parse_accels("garbage").is_empty());
    }

    #[test]
    fn cgroup_hierarchies_are_told_apart() {
        let hybrid = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
                      cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
                      cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0\n\
                      cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        let (what, c) = parse_cgroups(hybrid, None).unwrap();
        assert_eq!(what, "v1 (hybrid: cgroup2 at /sys/fs/cgroup/unified without controllers)");
        assert_eq!(c, ["cpu", "memory", "pids"]);
        let (what, c) =
            parse_cgroups("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", Some("cpuset cpu io memory pids\n"))
                .unwrap();
        assert_eq!(what, "v2 (unified)");
        assert_eq!(c, ["cpuset", "cpu", "io", "memory", "pids"]);
        assert_eq!(parse_cgroups("proc /proc proc rw 0 0\n", None), None);
    }

    #[test]
    fn store_failures_are_explained() {
        assert_eq!(store_reason("... Error { code: NoSuchBucket ..."), "the bucket does not exist");
        assert_eq!(store_reason("InvalidAccessKeyId"), "the credentials were refused");
        assert_eq!(
            store_reason("error sending request: Connection refused (os error 111)"),
            "the endpoint cannot be reached"
        );
        assert_eq!(store_reason("something odd"), "the store cannot be used");
    }
}
