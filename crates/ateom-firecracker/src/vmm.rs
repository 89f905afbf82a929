//! One supervised `firecracker` process: spawned in the workload's network namespace with its
//! working directory in the sandbox's work dir, its serial console on ateom's console hub,
//! its logger and metrics (FIFOs) routed into ateom's logs, and its exit recorded.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ateom_core::BackendError;
use ateom_microvm::Console;
use ateom_net::Netns;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::api::Client;

const LOG_TAIL: usize = 40;

/// How to start a VMM.
pub struct SpawnOptions<'a> {
    pub binary: &'a Path,
    /// The VMM's working directory: relative paths in API calls (and snapshots) resolve here.
    pub work_dir: &'a Path,
    pub netns: Option<&'a Netns>,
    /// Firecracker's `--id` (shows in its log lines).
    pub id: &'a str,
}

/// A running (or exited) firecracker process.
pub struct Vmm {
    pub api: Client,
    pub console: Console,
    pid: Option<u32>,
    exited: Arc<Mutex<Option<String>>>,
    waiter: Option<JoinHandle<()>>,
    log_tasks: Vec<JoinHandle<()>>,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if self.exited().is_none()
            && let Some(pid) = self.pid
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for t in &self.log_tasks {
            t.abort();
        }
    }
}

fn failed(detail: impl Into<String>) -> BackendError {
    BackendError::failed("starting firecracker", detail)
}

/// Routes one source of Firecracker lines (logger FIFO, metrics FIFO, stderr) into tracing.
fn route_lines<R>(
    reader: R,
    source: &'static str,
    id: String,
    tail: Arc<Mutex<VecDeque<String>>>,
) -> JoinHandle<()>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if source == "metrics" {
                debug!(target: "firecracker::metrics", vm = %id, "{line}");
                continue;
            }
            {
                let mut t = tail.lock().expect("log tail");
                t.push_back(line.clone());
                while t.len() > LOG_TAIL {
                    t.pop_front();
                }
            }
            if line.contains(":ERROR]") || line.contains("KVM_EXIT_INTERNAL_ERROR") {
                error!(target: "firecracker", vm = %id, "{line}");
            } else if line.contains(":WARN]") {
                warn!(target: "firecracker", vm = %id, "{line}");
            } else {
                info!(target: "firecracker", vm = %id, "{line}");
            }
        }
    })
}

fn make_fifo(path: &Path) -> Result<tokio::net::unix::pipe::Receiver, BackendError> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| failed(format!("creating fifo {}: {e}", path.display())))?;
    // Opened for reading before firecracker opens it for writing (which would block otherwise).
    tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| failed(format!("opening fifo {}: {e}", path.display())))
}

impl Vmm {
    /// Starts firecracker and waits until its API answers.
    pub async fn spawn(opts: SpawnOptions<'_>) -> Result<Vmm, BackendError> {
        let sock = opts.work_dir.join("firecracker.sock");
        let _ = std::fs::remove_file(&sock);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let log_fifo = make_fifo(&opts.work_dir.join("firecracker.log"))?;
        let metrics_fifo = make_fifo(&opts.work_dir.join("firecracker.metrics"))?;
        let mut cmd = Command::new(opts.binary);
        cmd.arg("--api-sock")
            .arg("firecracker.sock")
            .args(["--id", opts.id])
            .args(["--log-path", "firecracker.log", "--level", "Info", "--show-level"])
            .args(["--metrics-path", "firecracker.metrics"])
            .current_dir(opts.work_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(false);
        if let Some(ns) = opts.netns {
            ateom_net::join_netns_before_exec(&mut cmd, ns, false)
                .map_err(|e| BackendError::Network(e.to_string()))?;
        }
        let mut child = cmd.spawn().map_err(|e| BackendError::Unavailable {
            what: format!("firecracker at {}", opts.binary.display()),
            detail: e.to_string(),
        })?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let id = opts.id.to_owned();
        let log_tasks = vec![
            route_lines(log_fifo, "log", id.clone(), tail.clone()),
            route_lines(metrics_fifo, "metrics", id.clone(), tail.clone()),
            route_lines(stderr, "stderr", id.clone(), tail.clone()),
        ];
        let console = Console::start(stdout, stdin, id.clone())
            .await
            .map_err(|e| failed(format!("console listener: {e}")))?;
        let exited = Arc::new(Mutex::new(None));
        let record = exited.clone();
        let tail2 = tail.clone();
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            // Let the log routers catch the last lines before summarising.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let last: Vec<String> =
                tail2.lock().expect("log tail").iter().rev().take(5).rev().cloned().collect();
            let reason = match status {
                Ok(s) => format!("firecracker exited ({s}); last log lines: {}", last.join(" | ")),
                Err(e) => format!("waiting for firecracker: {e}"),
            };
            debug!(%reason, "vmm supervisor");
            *record.lock().expect("exit lock") = Some(reason);
        });
        let mut vmm = Vmm {
            api: Client::new(&sock),
            console,
            pid,
            exited,
            waiter: Some(waiter),
            log_tasks,
            log_tail: tail,
        };
        // Wait for the API socket (a few ms), noticing an early exit.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(why) = vmm.exited() {
                return Err(failed(why));
            }
            if sock.exists() && vmm.api.instance_info().await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                vmm.kill().await;
                return Err(failed(format!("its API socket {} never answered", sock.display())));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(vmm)
    }

    /// Why the process exited, or `None` while it runs.
    pub fn exited(&self) -> Option<String> {
        self.exited.lock().expect("exit lock").clone()
    }

    /// The last log lines, for error messages.
    pub fn log_tail(&self) -> String {
        self.log_tail.lock().expect("log tail").iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// SIGKILL and wait until it is gone (bounded).
    pub async fn kill(&mut self) {
        if self.exited().is_none()
            && let Some(pid) = self.pid
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if let Some(w) = self.waiter.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.api.socket().to_owned()
    }
}
