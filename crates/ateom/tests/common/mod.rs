//! Test support: real `ateom serve` processes on temporary state dirs, driven over their
//! unix sockets with the real gRPC client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ateom_proto as pb;
use serde_json::Value;

pub type Client = pb::AteomClient<tonic::transport::Channel>;

/// Why a test cannot run here, or None. Tests print it loudly and return.
pub fn gvisor_unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, runsc)".into());
    }
    if !Path::new("/usr/bin/runsc").exists() && std::env::var_os("ATEOM_RUNSC").is_none() {
        return Some("runsc is not installed (apt install runsc)".into());
    }
    None
}

#[macro_export]
macro_rules! require_gvisor {
    () => {
        if let Some(why) = common::gvisor_unavailable() {
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// The static counter binary: $ATEOM_COUNTER_BIN, or built with scripts/build-counter.sh.
pub fn counter_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ATEOM_COUNTER_BIN") {
            return PathBuf::from(p);
        }
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/build-counter.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("running scripts/build-counter.sh");
        assert!(out.status.success(), "scripts/build-counter.sh failed");
        PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
    })
    .clone()
}

/// Packs the counter into `<dir>/counter` and returns the image reference.
pub fn counter_image(dir: &Path) -> String {
    let out_dir = dir.join("counter-image");
    let st = Command::new(env!("CARGO_BIN_EXE_ateom"))
        .args(["image", "pack-counter", "--binary"])
        .arg(counter_bin())
        .arg("--out")
        .arg(&out_dir)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    format!("oci-layout:{}:latest", out_dir.display())
}

pub fn counter_spec(image: &str) -> pb::WorkloadSpec {
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

/// Plays substrate's node agent: unpacks `image` into
/// `<state>/actors/test:counter:<actor>/bundles/<container>/` (rootfs + config.json with the
/// given environment, root path relative as node agents write it). Returns the bundle dir.
pub fn agent_bundle(
    scratch: &Path,
    state: &Path,
    actor: &str,
    container: &str,
    image: &str,
    env: &[(&str, &str)],
) -> PathBuf {
    agent_bundle_for(scratch, state, &format!("test:counter:{actor}"), container, image, env)
}

/// [`agent_bundle`] for the actor directory `key` (`namespace:template:id`).
pub fn agent_bundle_for(
    scratch: &Path,
    state: &Path,
    key: &str,
    container: &str,
    image: &str,
    env: &[(&str, &str)],
) -> PathBuf {
    let bundle = state.join("actors").join(key).join("bundles").join(container);
    std::fs::create_dir_all(&bundle).unwrap();
    let store = ateom_image::ImageStore::new(scratch.join("agent-cache"));
    let prepared = store.prepare(&ateom_core::ImageRef::parse("image", image).unwrap()).unwrap();
    let st = Command::new("cp").arg("-a").arg(&prepared.rootfs).arg(bundle.join("rootfs")).status();
    assert!(st.unwrap().success());
    let hostname = key.rsplit(':').next().unwrap_or("agent").chars().take(60).collect();
    let opts = ateom_image::BundleOptions {
        rootfs: bundle.join("rootfs"),
        hostname,
        netns_path: None,
        readonly_rootfs: false,
    };
    let overrides = ateom_image::ProcessOverrides {
        env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        ..Default::default()
    };
    let mut spec = ateom_image::runtime_spec(&prepared.config, &overrides, &opts).unwrap();
    let mut root = spec.root().clone().unwrap();
    root.set_path("rootfs".into());
    spec.set_root(Some(root));
    ateom_image::write_bundle(&bundle, &spec).unwrap();
    bundle
}

/// A real `ateom serve` child process.
pub struct Worker {
    pub child: Child,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

impl Worker {
    pub fn start(state_dir: &Path, extra: &[&str]) -> Worker {
        Self::start_env(state_dir, extra, &[])
    }

    /// With extra environment (e.g. AWS_* for an S3 store).
    pub fn start_env(state_dir: &Path, extra: &[&str], env: &[(&str, String)]) -> Worker {
        std::fs::create_dir_all(state_dir).unwrap();
        let socket = state_dir.join("ateom.sock");
        let log = state_dir.join("worker.log");
        let _ = std::fs::remove_file(&socket);
        let child = Command::new(env!("CARGO_BIN_EXE_ateom"))
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state_dir)
            .args(extra)
            .env("ATEOM_LOG", "info,ateom_runtime=debug,ateom_gvisor=debug")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning ateom serve");
        let w = Worker { child, socket, state_dir: state_dir.to_owned(), log };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !w.socket.exists() {
            assert!(Instant::now() < deadline, "worker did not start; log:\n{}", w.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn client(&self) -> Client {
        ateom_grpc::connect_unix(&self.socket).await.expect("connect")
    }

    /// SIGKILL, like a crash.
    pub fn crash(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a clean shutdown.
    pub fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.crash();
    }

    /// Network namespaces of this worker (its instance prefix).
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
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Ok(c) = std::fs::read(e.path().join("cmdline"))
                && c.split(|b| *b == 0).any(|a| a == needle.as_bytes())
            {
                pids.push(pid);
            }
        }
        pids
    }

    /// PIDs of VMM processes (QEMU, Firecracker) working in this worker's state dir.
    pub fn vmm_processes(&self) -> Vec<i32> {
        let state = self.state_dir.canonicalize().unwrap_or_else(|_| self.state_dir.clone());
        let mut pids = vec![];
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid as u32 != std::process::id()
                && std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(&state))
            {
                pids.push(pid);
            }
        }
        pids
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A stopped worker leaves its workload running for the next one to adopt: tests end
        // with nothing of theirs left behind, whatever happened.
        self.stop();
        for pid in self.runsc_processes().into_iter().chain(self.vmm_processes()) {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        for ns in self.namespaces() {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).status();
        }
    }
}

pub fn instance_id(state_dir: &Path) -> String {
    use sha2::Digest;
    let canonical = state_dir.canonicalize().unwrap_or_else(|_| state_dir.to_owned());
    hex::encode(sha2::Sha256::digest(canonical.as_os_str().as_encoded_bytes()))[..8].to_owned()
}

pub fn actor(id: &str) -> (String, String, String) {
    ("test".into(), "counter".into(), id.into())
}

pub fn run_req(id: &str, image: &str) -> pb::RunWorkloadRequest {
    let (a, b, c) = actor(id);
    pb::RunWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        spec: Some(counter_spec(image)),
        ..Default::default()
    }
}

/// A LOCAL checkpoint, asked for explicitly (a request with none of ateom's fields follows
/// substrate's node-agent convention instead: see tests/node_agent.rs).
pub fn checkpoint_req(id: &str) -> pb::CheckpointWorkloadRequest {
    let (a, b, c) = actor(id);
    pb::CheckpointWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        destination: pb::SnapshotDestination::Local as i32,
        ..Default::default()
    }
}

pub fn restore_req(id: &str) -> pb::RestoreWorkloadRequest {
    let (a, b, c) = actor(id);
    pb::RestoreWorkloadRequest {
        actor_template_namespace: a,
        actor_template_name: b,
        actor_id: c,
        ..Default::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub memory: u64,
    pub file: u64,
    pub sha: String,
}

pub async fn hit(endpoint: &str) -> Count {
    let addr: SocketAddr = endpoint.parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (status, body) = ateom_runtime::probe::http_get(&mut s, endpoint, "/").await.unwrap();
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    Count {
        memory: v["memory_count"].as_u64().unwrap(),
        file: v["file_count"].as_u64().unwrap(),
        sha: v["file_sha256"].as_str().unwrap().to_owned(),
    }
}

/// `GET path` on the workload through its loopback endpoint; the body as text (status 200).
pub async fn get_text(endpoint: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let (status, body) = ateom_runtime::probe::http_get(&mut s, endpoint, path).await.unwrap();
    assert_eq!(status, 200, "{path}");
    String::from_utf8(body).unwrap()
}

/// Sends one byte per count to a serial console (`unix://...`) and returns the counters the
/// guest answers, one line each.
pub async fn drive(console: &str, n: usize) -> Vec<u64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = ateom_microvm::console::connect(console).await.expect("the console hub answers");
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let mut out = vec![];
    for _ in 0..n {
        w.write_all(b"x").await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the guest answers")
            .unwrap()
            .unwrap();
        out.push(line.trim().parse().unwrap_or_else(|_| panic!("not a counter: {line:?}")));
    }
    out
}
