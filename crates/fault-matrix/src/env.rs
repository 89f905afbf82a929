//! The suite's environment: the binaries it drives, the packed counter image, a real S3
//! server (s3s-fs) and the fault-injecting proxy in front of it, and what each backend's
//! workers are started with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::sys;

pub const ACCESS_KEY: &str = "fault-matrix-access";
pub const SECRET_KEY: &str = "fault-matrix-secret-key-0123456789";
pub const BUCKET: &str = "snapshots";
/// The object store's per-request timeout for workers (object_store's `AWS_TIMEOUT`): a
/// stall longer than this is a failed attempt, retried by ateom-store's bounded policy.
pub const STORE_TIMEOUT: &str = "2s";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Backend {
    Gvisor,
    Qemu,
    Firecracker,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Gvisor, Backend::Qemu, Backend::Firecracker];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Gvisor => "gvisor",
            Backend::Qemu => "qemu",
            Backend::Firecracker => "firecracker",
        }
    }

    pub fn parse(s: &str) -> Option<Backend> {
        Backend::ALL.into_iter().find(|b| b.name() == s)
    }

    /// The worker log line written right after the backend started a sandbox (the
    /// `run-after-start` and `restore-after-sandbox` points follow it).
    pub fn started_marker(self) -> &'static str {
        match self {
            Backend::Gvisor => "sandbox starting",
            Backend::Qemu => "guest clock set and RNG reseeded",
            Backend::Firecracker => "microVM running",
        }
    }

    /// The workload answers HTTP (the counter image) or a serial console (Firecracker's
    /// freestanding test guest).
    pub fn console_counter(self) -> bool {
        self == Backend::Firecracker
    }
}

/// Paths the suite was given (by scripts/fault-matrix.sh).
#[derive(Clone, Debug, Default)]
pub struct Tools {
    pub ateom: PathBuf,
    pub counter: PathBuf,
    pub s3s_fs: Option<PathBuf>,
    pub kernel: Option<PathBuf>,
    pub guest_init: Option<PathBuf>,
    pub test_guest: Option<PathBuf>,
    pub firecracker: Option<PathBuf>,
    /// Why a backend cannot run here (from the script: a missing kernel, QEMU, ...).
    pub unavailable: Vec<(Backend, String)>,
}

/// A running s3s-fs.
pub struct S3 {
    child: Child,
    pub endpoint: String,
    pub data: PathBuf,
}

impl S3 {
    fn start(bin: &Path, root: &Path) -> Result<S3> {
        let data = root.join("s3-data");
        std::fs::create_dir_all(data.join(BUCKET))?;
        let port = sys::free_port()?;
        let log = std::fs::File::create(root.join("s3s-fs.log"))?;
        let child = Command::new(bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut s3 = S3 { child, endpoint: format!("http://127.0.0.1:{port}"), data };
        if !sys::wait_port(port, 20) {
            s3.stop();
            bail!("s3s-fs did not listen on 127.0.0.1:{port}");
        }
        Ok(s3)
    }

    fn stop(&mut self) {
        sys::sigkill(self.child.id() as i32);
        let _ = self.child.wait();
    }

    /// Where s3s-fs keeps an object (a bucket is a directory, a key a path in it).
    pub fn object(&self, key: &str) -> PathBuf {
        self.data.join(BUCKET).join(key)
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The fault proxy (in this process) in front of s3s-fs; workers use it as their endpoint.
pub struct Proxy {
    pub running: faultproxy::Running,
}

impl Proxy {
    pub fn set(&self, rules: Value) -> Result<()> {
        let specs: Vec<faultproxy::rules::RuleSpec> = serde_json::from_value(rules)?;
        self.running.state.set_rules(faultproxy::rules::compile(specs)?);
        Ok(())
    }

    pub fn clear(&self) {
        self.running.state.set_rules(Vec::new());
    }

    /// How often rule `i` was applied.
    pub fn applied(&self, i: usize) -> u64 {
        let stats: Value = serde_json::from_slice(&self.running.state.stats_json()).unwrap_or(Value::Null);
        stats["rules"][i]["applied"].as_u64().unwrap_or(0)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.running.listen)
    }
}

pub struct Env {
    pub tools: Tools,
    pub root: PathBuf,
    /// `oci-layout:<dir>:latest`, packed once.
    pub image: String,
    pub s3: Option<S3>,
    pub proxy: Option<Proxy>,
    /// Why there is no S3 server, if there is none.
    pub s3_missing: Option<String>,
}

impl Env {
    pub async fn new(tools: Tools, root: PathBuf) -> Result<Env> {
        std::fs::create_dir_all(&root)?;
        let image_dir = root.join("counter-image");
        let out = Command::new(&tools.ateom)
            .args(["image", "pack-counter", "--binary"])
            .arg(&tools.counter)
            .arg("--out")
            .arg(&image_dir)
            .stderr(Stdio::inherit())
            .output()
            .context("running ateom image pack-counter")?;
        if !out.status.success() {
            bail!("ateom image pack-counter failed");
        }
        let image = format!("oci-layout:{}:latest", image_dir.display());
        let (s3, s3_missing) = match &tools.s3s_fs {
            Some(bin) => match S3::start(bin, &root) {
                Ok(s) => (Some(s), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            },
            None => (None, Some("no s3s-fs binary (scripts/s3-server.sh install failed)".into())),
        };
        let proxy = match &s3 {
            Some(s3) => {
                let upstream = s3.endpoint.trim_start_matches("http://").parse()?;
                let running = faultproxy::start(faultproxy::Config {
                    listen: "127.0.0.1:0".parse()?,
                    control: "127.0.0.1:0".parse()?,
                    upstream,
                })
                .await?;
                Some(Proxy { running })
            }
            None => None,
        };
        Ok(Env { tools, root, image, s3, proxy, s3_missing })
    }

    /// Why `backend` cannot run here, or None.
    pub fn unavailable(&self, backend: Backend) -> Option<String> {
        if let Some((_, why)) = self.tools.unavailable.iter().find(|(b, _)| *b == backend) {
            return Some(why.clone());
        }
        match backend {
            Backend::Gvisor => None,
            Backend::Qemu => match (&self.tools.kernel, &self.tools.guest_init) {
                (None, _) => Some("no guest kernel (scripts/build-guest-kernel.sh)".into()),
                (_, None) => Some("no guest init (scripts/build-init.sh)".into()),
                _ => None,
            },
            Backend::Firecracker => match (&self.tools.firecracker, &self.tools.test_guest) {
                (None, _) => Some(
                    "no firecracker binary: set ATEOM_FIRECRACKER_BIN or put `firecracker` on PATH (it is in \
                     no package registry)"
                        .into(),
                ),
                (_, None) => Some("no freestanding test guest (scripts/build-test-guest.sh)".into()),
                _ => None,
            },
        }
    }

    /// Arguments of `ateom serve` for a backend (besides socket and state dir).
    pub fn worker_args(&self, backend: Backend) -> Vec<String> {
        let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        let mut a: Vec<String> = vec!["--backend".into(), backend.name().into()];
        match backend {
            Backend::Gvisor => {}
            Backend::Qemu => a.extend([
                "--kernel".into(),
                s(&self.tools.kernel),
                "--guest-init".into(),
                s(&self.tools.guest_init),
                "--memory-mib".into(),
                "128".into(),
                "--ready-timeout".into(),
                "60s".into(),
            ]),
            Backend::Firecracker => a.extend([
                "--firecracker".into(),
                s(&self.tools.firecracker),
                "--kernel".into(),
                s(&self.tools.test_guest),
                "--ready-console-line".into(),
                "READY".into(),
                "--memory-mib".into(),
                "64".into(),
            ]),
        }
        a
    }

    /// Environment of every worker: the object store is s3s-fs behind the fault proxy.
    pub fn worker_env(&self) -> Vec<(String, String)> {
        let Some(proxy) = &self.proxy else { return Vec::new() };
        vec![
            ("AWS_ENDPOINT_URL".into(), proxy.endpoint()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_TIMEOUT".into(), STORE_TIMEOUT.into()),
            ("AWS_CONNECT_TIMEOUT".into(), STORE_TIMEOUT.into()),
        ]
    }

    pub fn proxy(&self) -> Result<&Proxy> {
        self.proxy.as_ref().with_context(|| {
            format!("no object store: {}", self.s3_missing.clone().unwrap_or_else(|| "unknown".into()))
        })
    }

    pub fn s3(&self) -> Result<&S3> {
        self.s3.as_ref().with_context(|| {
            format!("no object store: {}", self.s3_missing.clone().unwrap_or_else(|| "unknown".into()))
        })
    }
}

/// How long a case may take at most before it is failed (and cleaned up).
pub fn case_limit(backend: Backend) -> Duration {
    match backend {
        Backend::Gvisor => Duration::from_secs(150),
        Backend::Qemu | Backend::Firecracker => Duration::from_secs(300),
    }
}
