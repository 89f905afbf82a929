//! Real `ateom serve` processes, their gRPC client with a deadline on every call, and the
//! workload's counter as a client sees it.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ateom_proto as pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tonic::Status;

use crate::env::Backend;
use crate::sys;

pub type Client = pb::AteomClient<tonic::transport::Channel>;

/// What the worker logs (the fault points are found by the lines before them).
const LOG_FILTER: &str =
    "info,ateom_runtime=debug,ateom_gvisor=debug,ateom_qemu=debug,ateom_firecracker=debug";
/// No gRPC call may take longer (a hung worker fails the case instead of the suite).
pub const RPC_TIMEOUT: Duration = Duration::from_secs(120);

/// One `ateom serve` process.
pub struct Worker {
    child: Option<Child>,
    pub pid: i32,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Worker {
    /// Starts `ateom serve` and waits until its socket accepts connections. `--on-exit stop`:
    /// a SIGTERM makes the worker delete its workload itself (its own teardown).
    pub fn start(
        ateom: &Path,
        args: &[String],
        env: &[(String, String)],
        state: &Path,
        socket: &Path,
        log: &Path,
        failpoints: Option<&str>,
    ) -> Result<Worker> {
        std::fs::create_dir_all(state)?;
        let _ = std::fs::remove_file(socket);
        let logf = std::fs::File::create(log)?;
        let mut cmd = Command::new(ateom);
        cmd.arg("serve")
            .arg("--socket")
            .arg(socket)
            .arg("--state-dir")
            .arg(state)
            .args(["--on-exit", "stop"])
            .args(args)
            .env("ATEOM_LOG", LOG_FILTER)
            .env_remove("FAILPOINTS")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf);
        if let Some(fp) = failpoints {
            cmd.env("FAILPOINTS", fp);
        }
        let child = cmd.spawn().with_context(|| format!("spawning {} serve", ateom.display()))?;
        let mut w = Worker {
            pid: child.id() as i32,
            child: Some(child),
            state: state.to_owned(),
            socket: socket.to_owned(),
            log: log.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !w.socket.exists() {
            if let Some(st) = w.try_wait() {
                bail!("the worker exited at start ({st}): {}", w.log_tail(1500));
            }
            if Instant::now() > deadline {
                w.kill();
                bail!("the worker did not serve within 60 s: {}", w.log_tail(1500));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(w)
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn alive(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// SIGKILL (a crash) and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            sys::sigkill(self.pid);
            let _ = c.wait();
        }
    }

    /// Waits for the process to end by itself (a fault point kills it).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for the worker to die of the SIGKILL a `<point>=return` fault gives it.
    pub async fn expect_fault_death(&mut self, point: &str) -> Result<()> {
        match self.wait_exit(Duration::from_secs(30)).await {
            Some(st) if st.signal() == Some(libc::SIGKILL) => Ok(()),
            Some(st) => {
                bail!("the worker ended with {st} instead of dying at {point}: {}", self.log_tail(800))
            }
            None => {
                self.kill();
                bail!("the fault point {point} never fired (the worker kept running)")
            }
        }
    }

    /// SIGTERM, then wait: the worker's own clean stop. True if it exited within `limit`;
    /// otherwise it is SIGKILLed.
    pub async fn stop(&mut self, limit: Duration) -> bool {
        if self.child.is_none() {
            return true;
        }
        let _ =
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), nix::sys::signal::Signal::SIGTERM);
        if self.wait_exit(limit).await.is_some() {
            return true;
        }
        self.kill();
        false
    }

    pub async fn client(&self) -> Result<Client> {
        let path = self.socket.clone();
        let channel = tonic::transport::Endpoint::from_static("http://ateom.local")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .with_context(|| format!("connecting to {}", self.socket.display()))?;
        Ok(pb::AteomClient::new(channel).max_decoding_message_size(64 << 20))
    }

    pub fn log_len(&self) -> u64 {
        std::fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0)
    }

    pub fn log_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or_default()).into_owned()
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_since(0);
        let start = text.len().saturating_sub(n);
        let start = (start..text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text[start..].replace('\n', " | ")
    }

    /// Waits until the log, from `offset` on, contains `needle`.
    pub async fn wait_log(&self, offset: u64, needle: &str, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.log_since(offset).contains(needle) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the worker never logged {needle:?} within {limit:?}")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The actor of the suite: `fm/counter/<id>`.
pub fn actor_ref(id: &str) -> String {
    format!("fm/counter/{id}")
}

/// Where the worker keeps an actor's snapshots.
pub fn snapshots_dir(state: &Path, actor: &str) -> PathBuf {
    state.join("actors").join(format!("fm:counter:{actor}")).join("snapshots")
}

/// Entries of an actor's snapshot directory that are not complete snapshots (`.partial-`,
/// `.quarantine-`) or whose id is `id`.
pub fn snapshot_entries(state: &Path, actor: &str) -> Vec<String> {
    std::fs::read_dir(snapshots_dir(state, actor))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".pins.json")
                .collect()
        })
        .unwrap_or_default()
}

async fn call<T>(
    fut: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("no answer within {RPC_TIMEOUT:?}"))),
    }
}

/// Where a started workload is reached.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub endpoint: String,
    pub console: String,
}

fn spec(backend: Backend, image: &str) -> pb::WorkloadSpec {
    if backend.console_counter() {
        return pb::WorkloadSpec {
            containers: vec![pb::Container { name: "guest".into(), ..Default::default() }],
        };
    }
    pb::WorkloadSpec {
        containers: vec![pb::Container {
            name: "counter".into(),
            readyz: Some(pb::Readyz {
                http_get: Some(pb::HttpGetAction { path: "/readyz".into(), port: 8080 }),
                timeout_seconds: 0,
            }),
            image: image.into(),
            ..Default::default()
        }],
    }
}

pub async fn run(c: &mut Client, backend: Backend, image: &str, actor: &str) -> Result<Live, Status> {
    let req = pb::RunWorkloadRequest {
        actor_template_namespace: "fm".into(),
        actor_template_name: "counter".into(),
        actor_id: actor.into(),
        spec: Some(spec(backend, image)),
        ..Default::default()
    };
    let r = call(c.run_workload(req)).await?;
    Ok(Live { endpoint: r.host_endpoint, console: r.console })
}

pub async fn checkpoint(
    c: &mut Client,
    actor: &str,
    id: &str,
    prefix: Option<&str>,
    keep: &[String],
) -> Result<pb::CheckpointWorkloadResponse, Status> {
    let req = pb::CheckpointWorkloadRequest {
        actor_template_namespace: "fm".into(),
        actor_template_name: "counter".into(),
        actor_id: actor.into(),
        snapshot_uri_prefix: prefix.unwrap_or_default().into(),
        snapshot_id: id.into(),
        keep_snapshot_ids: keep.to_vec(),
        ..Default::default()
    };
    call(c.checkpoint_workload(req)).await
}

pub async fn restore(
    c: &mut Client,
    actor: &str,
    id: Option<&str>,
    prefix: Option<&str>,
    keep: &[String],
) -> Result<(Live, pb::RestoreWorkloadResponse), Status> {
    let req = pb::RestoreWorkloadRequest {
        actor_template_namespace: "fm".into(),
        actor_template_name: "counter".into(),
        actor_id: actor.into(),
        snapshot_uri_prefix: prefix.unwrap_or_default().into(),
        snapshot_id: id.unwrap_or_default().into(),
        keep_snapshot_ids: keep.to_vec(),
        ..Default::default()
    };
    let r = call(c.restore_workload(req)).await?;
    Ok((Live { endpoint: r.host_endpoint.clone(), console: r.console.clone() }, r))
}

/// `PushSnapshot`: copies a committed local snapshot to the store (the worker is not held).
pub async fn push(
    c: &mut Client,
    actor: &str,
    id: &str,
    prefix: &str,
) -> Result<pb::PushSnapshotResponse, Status> {
    let req = pb::PushSnapshotRequest {
        actor_template_namespace: "fm".into(),
        actor_template_name: "counter".into(),
        actor_id: actor.into(),
        snapshot_id: id.into(),
        snapshot_uri_prefix: prefix.into(),
    };
    call(c.push_snapshot(req)).await
}

pub async fn caps(c: &mut Client) -> Result<pb::GetCapabilitiesResponse, Status> {
    call(c.get_capabilities(pb::GetCapabilitiesRequest {})).await
}

pub async fn list(c: &mut Client, actor: &str) -> Result<Vec<pb::LocalSnapshotInfo>, Status> {
    let req = pb::ListSnapshotsRequest {
        actor_template_namespace: "fm".into(),
        actor_template_name: "counter".into(),
        actor_id: actor.into(),
    };
    Ok(call(c.list_snapshots(req)).await?.snapshots)
}

pub async fn recover(c: &mut Client) -> Result<pb::RecoverSnapshotsResponse, Status> {
    call(c.recover_snapshots(pb::RecoverSnapshotsRequest {})).await
}

pub async fn delete(
    c: &mut Client,
    actor: &str,
    keep_snapshots: bool,
) -> Result<pb::DeleteWorkloadResponse, Status> {
    let req = pb::DeleteWorkloadRequest {
        actor_template_namespace: "fm".into(),
        actor_template_name: "counter".into(),
        actor_id: actor.into(),
        keep_snapshots,
    };
    call(c.delete_workload(req)).await
}

/// One answer of the counter: its in-memory and on-disk counts (the HTTP counter keeps both;
/// the console guest only RAM, reported as both).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Count {
    pub memory: u64,
    pub file: u64,
}

/// Increments the counter once and returns what it answered.
pub async fn poke(backend: Backend, live: &Live) -> Result<Count> {
    poke_within(backend, live, Duration::from_secs(15)).await
}

/// Pokes a workload that should be dead: a short wait (a forwarder dialing a dead sandbox's
/// address may hold the connection until its own dial times out).
pub async fn poke_dead(backend: Backend, live: &Live) -> Result<Count> {
    poke_within(backend, live, Duration::from_secs(3)).await
}

async fn poke_within(backend: Backend, live: &Live, limit: Duration) -> Result<Count> {
    let r = tokio::time::timeout(limit, async {
        if backend.console_counter() {
            console_poke(&live.console).await
        } else {
            http_hit(&live.endpoint).await
        }
    })
    .await;
    match r {
        Ok(r) => r,
        Err(_) => bail!("no answer within {limit:?}"),
    }
}

async fn http_hit(endpoint: &str) -> Result<Count> {
    let mut s = tokio::net::TcpStream::connect(endpoint)
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.context("reading the answer")?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").and_then(|v| v.trim().parse::<usize>().ok()));
            if let Some(len) = len
                && buf.len() >= pos + 4 + len
            {
                buf.truncate(pos + 4 + len);
                break;
            }
        }
    }
    drop(s); // the client closes first: no TIME_WAIT inside the sandbox
    let pos = buf.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP answer")?;
    let status_line = String::from_utf8_lossy(&buf[..pos]).lines().next().unwrap_or_default().to_owned();
    if !status_line.contains(" 200 ") {
        bail!("the counter answered {status_line:?}");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&buf[pos + 4..]).context("the counter's answer is not JSON")?;
    Ok(Count {
        memory: v["memory_count"].as_u64().context("no memory_count")?,
        file: v["file_count"].as_u64().context("no file_count")?,
    })
}

async fn console_poke(console: &str) -> Result<Count> {
    let stream = ateom_microvm::console::connect(console)
        .await
        .with_context(|| format!("connecting to the console {console:?}"))?;
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    w.write_all(b"x").await?;
    for _ in 0..8 {
        let line = lines.next_line().await?.context("the console closed")?;
        if let Ok(n) = line.trim().parse::<u64>() {
            return Ok(Count { memory: n, file: n });
        }
    }
    bail!("the guest answered no counter")
}
