//! One supervised `firecracker` process: spawned in the workload's network namespace with its
//! working directory in the sandbox's work dir, its serial console on ateom's console hub,
//! its logger and metrics (FIFOs) routed into ateom's logs, and its exit recorded.
//!
//! Nothing ties the process to this worker's: its serial console is a pair of FIFOs in the
//! work directory (`console.in` as its stdin, `console.out` as its stdout, both opened
//! read-write for it, so it never sees end-of-file or a broken pipe, and its output is
//! non-blocking: with no hub reading, the guest's output is dropped, never stalls the guest),
//! its logger and metrics are FIFOs too, and it runs in its own process group. A restarted
//! worker reopens all of them ([`Vmm::adopt`]) and watches the process through a pidfd.

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
    /// Under the jailer the chroot is made inside it and becomes [`Vmm::root`].
    pub work_dir: &'a Path,
    pub netns: Option<&'a Netns>,
    /// Firecracker's `--id` (shows in its log lines).
    pub id: &'a str,
    /// Run firecracker under Firecracker's jailer (the production shape).
    pub jailer: Option<&'a Jailer>,
}

/// The uid/gid jailed VMMs run as unless configured otherwise (an unprivileged id no
/// account on the host uses).
pub const DEFAULT_JAIL_UID: u32 = 64_900;

/// Firecracker's jailer: chroot, device nodes, privilege drop, network namespace, cgroups.
#[derive(Clone, Debug)]
pub struct Jailer {
    pub binary: PathBuf,
    /// The unprivileged uid/gid firecracker runs as.
    pub uid: u32,
    pub gid: u32,
    /// `--cgroup-version` (1 or 2), when cgroups are set.
    pub cgroup_version: Option<u8>,
    /// `--cgroup <file>=<value>` settings, e.g. `cpu.shares=512`.
    pub cgroups: Vec<String>,
}

/// The jail root the jailer chroots into: `<base>/<exec file name>/<id>/root`.
pub fn jail_root(work_dir: &Path, binary: &Path, id: &str) -> PathBuf {
    let exec_name =
        binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "firecracker".into());
    work_dir.join("jail").join(exec_name).join(id).join("root")
}

/// A running (or exited) firecracker process.
pub struct Vmm {
    pub api: Client,
    pub console: Console,
    /// Where firecracker's relative paths resolve (its working directory, or its chroot).
    pub root: PathBuf,
    /// The uid/gid files it must write belong to (the jailer's, or root's).
    pub owner: Option<(u32, u32)>,
    /// The sandbox's work directory (console FIFOs, the jail).
    pub work_dir: PathBuf,
    /// Firecracker's `--id`.
    pub id: String,
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

fn make_fifo(
    path: &Path,
    owner: Option<(u32, u32)>,
) -> Result<tokio::net::unix::pipe::Receiver, BackendError> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| failed(format!("creating fifo {}: {e}", path.display())))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|e| failed(format!("chown fifo {}: {e}", path.display())))?;
    }
    // Opened for reading before firecracker opens it for writing (which would block otherwise).
    tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| failed(format!("opening fifo {}: {e}", path.display())))
}

impl Vmm {
    /// Puts `src` at `name` inside the VMM's root (a hard link, else a copy), owned by the
    /// VMM's user when `writable`; returns the path the VMM uses for it.
    pub fn place(&self, src: &Path, name: &str, writable: bool) -> Result<String, BackendError> {
        let dst = self.root.join(name);
        let _ = std::fs::remove_file(&dst);
        if writable {
            ateom_microvm::copy_sparse(src, &dst).map_err(|e| failed(e.to_string()))?;
        } else if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst)
                .map_err(|e| failed(format!("copying {} into the jail: {e}", src.display())))?;
        }
        if let (true, Some((uid, gid))) = (writable, self.owner) {
            std::os::unix::fs::chown(&dst, Some(uid), Some(gid))
                .map_err(|e| failed(format!("chown {name}: {e}")))?;
        }
        Ok(name.to_owned())
    }

    /// Starts firecracker and waits until its API answers.
    pub async fn spawn(opts: SpawnOptions<'_>) -> Result<Vmm, BackendError> {
        let root = match opts.jailer {
            None => opts.work_dir.to_owned(),
            Some(_) => jail_root(opts.work_dir, opts.binary, opts.id),
        };
        std::fs::create_dir_all(&root).map_err(|e| failed(format!("creating {}: {e}", root.display())))?;
        let owner = opts.jailer.map(|j| (j.uid, j.gid));
        let sock = root.join("firecracker.sock");
        let _ = std::fs::remove_file(&sock);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let log_fifo = make_fifo(&root.join("firecracker.log"), owner)?;
        let metrics_fifo = make_fifo(&root.join("firecracker.metrics"), owner)?;
        let (vmm_stdin, vmm_stdout) = console_fifos(opts.work_dir)?;
        let fc_args = [
            "--api-sock",
            "firecracker.sock",
            "--log-path",
            "firecracker.log",
            "--level",
            "Info",
            "--show-level",
            "--metrics-path",
            "firecracker.metrics",
        ];
        let mut cmd = match opts.jailer {
            None => {
                let mut cmd = Command::new(opts.binary);
                cmd.args(["--id", opts.id]).args(fc_args).current_dir(&root);
                if let Some(ns) = opts.netns {
                    ateom_net::join_netns_before_exec(&mut cmd, ns, false)
                        .map_err(|e| BackendError::Network(e.to_string()))?;
                }
                cmd
            }
            Some(j) => {
                // The jailer adds `--id` itself, joins the namespace, chroots and drops to uid/gid.
                let mut cmd = Command::new(&j.binary);
                cmd.args(["--id", opts.id])
                    .arg("--exec-file")
                    .arg(opts.binary)
                    .args(["--uid", &j.uid.to_string(), "--gid", &j.gid.to_string()])
                    .arg("--chroot-base-dir")
                    .arg(opts.work_dir.join("jail"));
                if let Some(ns) = opts.netns {
                    cmd.arg("--netns").arg(ns.path());
                }
                if let Some(v) = j.cgroup_version {
                    cmd.args(["--cgroup-version", &v.to_string()]);
                }
                for c in &j.cgroups {
                    cmd.args(["--cgroup", c]);
                }
                cmd.arg("--").args(fc_args).current_dir(opts.work_dir);
                cmd
            }
        };
        cmd.stdin(vmm_stdin)
            .stdout(vmm_stdout)
            .stderr(Stdio::piped())
            .kill_on_drop(false)
            // Its own process group: it outlives this worker process (a restarted worker adopts
            // it), and a terminal's Ctrl-C for the worker does not reach it.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| BackendError::Unavailable {
            what: format!(
                "firecracker at {}",
                opts.jailer.map_or(opts.binary, |j| j.binary.as_path()).display()
            ),
            detail: e.to_string(),
        })?;
        let pid = child.id();
        let stderr = child.stderr.take().expect("piped stderr");
        let id = opts.id.to_owned();
        let log_tasks = vec![
            route_lines(log_fifo, "log", id.clone(), tail.clone()),
            route_lines(metrics_fifo, "metrics", id.clone(), tail.clone()),
            route_lines(stderr, "stderr", id.clone(), tail.clone()),
        ];
        let console = console_hub(opts.work_dir, &id).await?;
        let exited = Arc::new(Mutex::new(None));
        let record = exited.clone();
        let tail2 = tail.clone();
        let waiter = tokio::spawn(async move {
            let status = child.wait().await;
            // Let the log routers catch the last lines before summarising.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let all: Vec<String> = tail2.lock().expect("log tail").iter().cloned().collect();
            // The last lines, and any KVM failure further up (it explains the rest).
            let mut last: Vec<String> = all.iter().filter(|l| l.contains("KVM")).cloned().collect();
            last.extend(all.iter().rev().take(5).rev().cloned());
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
            root,
            owner,
            work_dir: opts.work_dir.to_owned(),
            id: id.clone(),
            pid,
            exited,
            waiter: Some(waiter),
            log_tasks,
            log_tail: tail,
        };
        // Wait for the API socket (a few ms), noticing an early exit. The file's appearance is
        // watched at 100 µs steps on a blocking thread (tokio's timers tick in whole
        // milliseconds, and this wait is on every run's and restore's critical path); then
        // the API is asked until it answers.
        let (watched, gone) = (sock.clone(), vmm.exited.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while !watched.exists() && std::time::Instant::now() < until {
                if gone.lock().map_or(true, |g| g.is_some()) {
                    return;
                }
                std::thread::sleep(Duration::from_micros(100));
            }
        })
        .await;
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
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(vmm)
    }

    /// Takes over a firecracker a previous worker process started: its API socket, console,
    /// logger and metrics FIFOs are reopened and its exit is watched through a pidfd (it is
    /// not our child). `root` and `owner` are what [`Vmm::spawn`] made of the jail.
    pub async fn adopt(
        pid: u32,
        work_dir: &Path,
        root: &Path,
        owner: Option<(u32, u32)>,
        id: &str,
    ) -> Result<Vmm, BackendError> {
        let adopt_err = |detail: String| BackendError::failed("adopting firecracker", detail);
        let watch =
            ateom_sys::ProcessWatch::new(pid).map_err(|e| adopt_err(format!("process {pid}: {e}")))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let open_fifo = |name: &str| {
            tokio::net::unix::pipe::OpenOptions::new()
                .open_receiver(root.join(name))
                .map_err(|e| adopt_err(format!("reopening {name}: {e}")))
        };
        let log_tasks = vec![
            route_lines(open_fifo("firecracker.log")?, "log", id.to_owned(), tail.clone()),
            route_lines(open_fifo("firecracker.metrics")?, "metrics", id.to_owned(), tail.clone()),
        ];
        let console = console_hub(work_dir, id).await?;
        let exited = Arc::new(Mutex::new(None));
        let record = exited.clone();
        let waiter = tokio::spawn(async move {
            watch.wait().await;
            *record.lock().expect("exit lock") = Some(format!("firecracker (process {pid}) exited"));
        });
        let vmm = Vmm {
            api: Client::new(root.join("firecracker.sock")),
            console,
            root: root.to_owned(),
            owner,
            work_dir: work_dir.to_owned(),
            id: id.to_owned(),
            pid: Some(pid),
            exited,
            waiter: Some(waiter),
            log_tasks,
            log_tail: tail,
        };
        vmm.api.instance_info().await.map_err(|e| adopt_err(format!("its API does not answer: {e}")))?;
        Ok(vmm)
    }

    /// Why the process exited, or `None` while it runs.
    pub fn exited(&self) -> Option<String> {
        if let Some(why) = self.exited.lock().expect("exit lock").clone() {
            return Some(why);
        }
        // The watcher records the exit a moment later; the process table knows at once.
        match self.pid {
            Some(pid) if !ateom_sys::process_running(pid) => {
                Some(format!("firecracker (process {pid}) exited"))
            }
            _ => None,
        }
    }

    /// The last log lines, for error messages.
    pub fn log_tail(&self) -> String {
        self.log_tail.lock().expect("log tail").iter().cloned().collect::<Vec<_>>().join(" | ")
    }

    /// SIGKILL, wait until it is gone (bounded), and remove the cgroups the jailer made for it.
    pub async fn kill(&mut self) {
        self.kill_process().await;
        for dir in jail_cgroups(&self.id) {
            if let Err(e) = std::fs::remove_dir(&dir) {
                debug!(cgroup = %dir.display(), error = %e, "removing the VMM's cgroup");
            }
        }
    }

    async fn kill_process(&mut self) {
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

    /// The firecracker (or jailer) process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn socket(&self) -> PathBuf {
        self.api.socket().to_owned()
    }
}

/// The serial console FIFOs in the work directory, as the VMM's stdin and stdout: both opened
/// read-write (so the VMM never sees end-of-file on its input nor a broken pipe on its
/// output, whoever reads or writes the other side), the output non-blocking (with nobody
/// reading, the guest's output is dropped instead of stalling the vCPU).
fn console_fifos(work_dir: &Path) -> Result<(std::fs::File, std::fs::File), BackendError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut files = Vec::new();
    for (name, flags) in [(CONSOLE_IN, 0), (CONSOLE_OUT, libc::O_NONBLOCK)] {
        let path = work_dir.join(name);
        let _ = std::fs::remove_file(&path);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| failed(format!("creating fifo {}: {e}", path.display())))?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(&path)
            .map_err(|e| failed(format!("opening fifo {}: {e}", path.display())))?;
        files.push(f);
    }
    let out = files.pop().expect("two");
    let input = files.pop().expect("two");
    Ok((input, out))
}

/// The console hub on the console FIFOs (this worker's side of them).
async fn console_hub(work_dir: &Path, id: &str) -> Result<Console, BackendError> {
    let from_guest = tokio::net::unix::pipe::OpenOptions::new()
        .open_receiver(work_dir.join(CONSOLE_OUT))
        .map_err(|e| failed(format!("opening {CONSOLE_OUT}: {e}")))?;
    let to_guest = tokio::net::unix::pipe::OpenOptions::new()
        .open_sender(work_dir.join(CONSOLE_IN))
        .map_err(|e| failed(format!("opening {CONSOLE_IN}: {e}")))?;
    Console::start(from_guest, to_guest, id.to_owned(), &work_dir.join("serial.sock"))
        .await
        .map_err(|e| failed(format!("console listener: {e}")))
}

/// The VMM's serial input and output FIFOs, in the work directory.
pub const CONSOLE_IN: &str = "console.in";
pub const CONSOLE_OUT: &str = "console.out";

/// The cgroup directories the jailer made for VMMs whose id starts with `prefix` (under its
/// default parent cgroup `firecracker`, in any hierarchy).
pub fn jail_cgroups(prefix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let roots = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(std::iter::once(PathBuf::from("/sys/fs/cgroup")));
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root.join("firecracker")) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(prefix) && e.path().is_dir() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// True when `binary` is a statically linked ELF (no program interpreter): what the jailer's
/// chroot, which holds no libraries, needs.
pub fn is_static_elf(binary: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(binary) else { return false };
    let mut head = vec![0u8; 64];
    if f.read_exact(&mut head).is_err() || &head[..4] != b"\x7fELF" || head[4] != 2 {
        return false; // not a 64-bit ELF
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(&head, 54), u16_at(&head, 56));
    let mut table = vec![0u8; phentsize * phnum];
    use std::io::Seek;
    if phentsize < 4
        || f.seek(std::io::SeekFrom::Start(phoff as u64)).is_err()
        || f.read_exact(&mut table).is_err()
    {
        return false;
    }
    const PT_INTERP: u32 = 3;
    !table.chunks(phentsize).any(|ph| u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == PT_INTERP)
}
