//! Local `ateom` workers for the demo, the benchmark and the tests: real `ateom serve`
//! processes with their own state directories and host ids, cleaned up (by PID, and their
//! sandboxes and namespaces) when dropped.
//!
//! The `ateom` binary is `$ATEOM_BIN`, or the one next to this executable (both are built
//! into the same target directory by `cargo build`; test binaries live one level deeper, in
//! `deps/`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Finds the `ateom` worker binary.
pub fn ateom_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ATEOM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let p = dir.join("ateom");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no ateom binary next to {} (build it: cargo build -p ateom; or set ATEOM_BIN)", exe.display())
}

/// Packs the static counter into `out` with `ateom image pack-counter`; returns the image
/// reference.
pub fn pack_counter(ateom: &Path, out: &Path) -> Result<String> {
    let mut cmd = Command::new(ateom);
    cmd.args(["image", "pack-counter", "--out"]).arg(out).stdout(Stdio::null());
    let st = cmd.status().with_context(|| format!("running {}", ateom.display()))?;
    if !st.success() {
        bail!(
            "ateom image pack-counter failed ({st}); build the counter with scripts/build-counter.sh or set ATEOM_COUNTER_BIN"
        );
    }
    Ok(format!("oci-layout:{}:latest", out.display()))
}

/// Why gVisor workers cannot run here, or None.
pub fn gvisor_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces, runsc)".into());
    }
    if !Path::new("/usr/bin/runsc").exists() && std::env::var_os("ATEOM_RUNSC").is_none() {
        return Some("runsc is not installed (apt install runsc)".into());
    }
    None
}

/// A real `ateom serve` child.
pub struct WorkerProc {
    pub name: String,
    pub child: Child,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub host_id: String,
    /// Extra `ateom serve` arguments (kept across restarts).
    pub extra_args: Vec<String>,
}

impl WorkerProc {
    /// Starts `ateom serve --socket <dir>/ateom.sock --state-dir <dir> --host-id <host_id>`
    /// and waits for its socket.
    pub fn start(ateom: &Path, state_dir: &Path, name: &str, host_id: &str) -> Result<WorkerProc> {
        Self::start_with(ateom, state_dir, name, host_id, &[])
    }

    /// [`Self::start`] with extra `ateom serve` arguments (e.g. `--snapshot-key-file K`).
    pub fn start_with(
        ateom: &Path,
        state_dir: &Path,
        name: &str,
        host_id: &str,
        extra_args: &[String],
    ) -> Result<WorkerProc> {
        std::fs::create_dir_all(state_dir)?;
        let socket = state_dir.join("ateom.sock");
        let log = state_dir.join("worker.log");
        let child = spawn(ateom, state_dir, &socket, host_id, extra_args, std::fs::File::create(&log)?)?;
        let mut w = WorkerProc {
            name: name.into(),
            child,
            socket,
            state_dir: state_dir.to_owned(),
            log,
            host_id: host_id.into(),
            extra_args: extra_args.to_vec(),
        };
        if let Err(e) = w.wait_ready() {
            w.stop();
            return Err(e);
        }
        Ok(w)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket.exists() {
            if let Ok(Some(st)) = self.child.try_wait() {
                bail!("worker {} exited at start ({st}): {}", self.name, self.log_text());
            }
            if Instant::now() > deadline {
                bail!("worker {} did not start: {}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL of the `ateom` process only (a crash of the daemon): its sandbox keeps
    /// running, as it does when a worker process dies.
    pub fn kill_daemon(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts `ateom serve` again on the same state directory, socket and host id (after
    /// [`Self::kill_daemon`], or killing it now): the new process adopts what the old one
    /// left running. Its log is appended to the same file.
    pub fn restart(&mut self, ateom: &Path) -> Result<()> {
        self.kill_daemon();
        let log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        self.child = spawn(ateom, &self.state_dir, &self.socket, &self.host_id, &self.extra_args, log)?;
        self.wait_ready()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, wait (bounded), SIGKILL; then remove what a killed worker leaves behind.
    pub fn stop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.runsc_processes() {
            // SAFETY: killing runsc processes of this worker's own state dir.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
    }

    /// Network namespaces of this worker (named `ateom-<instance>-*`).
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("ateom-{}-", instance_id(&self.state_dir));
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// PIDs of runsc processes working for this worker's state dir.
    pub fn runsc_processes(&self) -> Vec<i32> {
        let needle = format!("--root={}", self.state_dir.join("runsc").display());
        let mut pids = vec![];
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Ok(c) = std::fs::read(e.path().join("cmdline"))
                && c.split(|b| *b == 0).any(|a| a == needle.as_bytes())
            {
                pids.push(pid);
            }
        }
        pids
    }
}

/// `ateom serve --socket <socket> --state-dir <dir> --host-id <id>`, logging to `log`.
fn spawn(
    ateom: &Path,
    state_dir: &Path,
    socket: &Path,
    host_id: &str,
    extra_args: &[String],
    log: std::fs::File,
) -> Result<Child> {
    let _ = std::fs::remove_file(socket);
    Command::new(ateom)
        .arg("serve")
        .arg("--socket")
        .arg(socket)
        .arg("--state-dir")
        .arg(state_dir)
        .args(["--host-id", host_id])
        .args(extra_args)
        .env("ATEOM_LOG", std::env::var("ATEOM_LOG").unwrap_or_else(|_| "info".into()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("spawning {}", ateom.display()))
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The worker's instance id (how ateom names its namespaces): a hash of the state dir.
pub fn instance_id(state_dir: &Path) -> String {
    use sha2::Digest;
    let canonical = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
    hex::encode(sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..8].to_owned()
}

/// The YAML of a pool of these workers and a counter template.
pub fn counter_resources(
    pool: &str,
    workers: &[&WorkerProc],
    template: &str,
    image: &str,
    snapshot_location: &str,
    idle: Option<(f64, f64)>,
) -> String {
    let mut y = format!(
        "apiVersion: ate.dev/v1\nkind: WorkerPool\nmetadata: {{ name: {pool} }}\nspec:\n  backend: gvisor\n  workers:\n"
    );
    for w in workers {
        y.push_str(&format!("    - {{ name: {}, socket: \"{}\" }}\n", w.name, w.socket.display()));
    }
    y.push_str(&format!(
        "---\napiVersion: ate.dev/v1\nkind: ActorTemplate\nmetadata: {{ name: {template} }}\nspec:\n  pool: {pool}\n  backend: gvisor\n  containers:\n    - name: counter\n      image: \"{image}\"\n      readyz: {{ httpGet: {{ path: /readyz, port: 8080 }} }}\n  resources: {{ cpu: \"1\", memory: 256Mi }}\n  snapshot: {{ location: \"{snapshot_location}\" }}\n"
    ));
    if let Some((pause, suspend)) = idle {
        y.push_str(&format!(
            "  idlePolicy: {{ pauseAfterSeconds: {pause}, suspendAfterSeconds: {suspend} }}\n"
        ));
    }
    y
}
