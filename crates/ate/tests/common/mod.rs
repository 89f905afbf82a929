//! Test support: real `ateom serve` workers (gVisor), a real `ate serve` process (so it can
//! be SIGKILLed), a real `redis-server` when the store is Redis. Everything started here is
//! stopped by PID when dropped, also when a test fails.
//!
//! The `ateom` binary: `$ATEOM_BIN`, or `target/<profile>/ateom` next to this test's `ate`
//! binary, built with `cargo build -p ateom` once if it is missing.
#![allow(dead_code)]

pub mod fake;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ate::api::ApiClient;
use ate::cluster::WorkerProc;
use ate_store::testing::RedisServer;

/// gVisor scenarios run one at a time (2 cores).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// Why the end-to-end tests cannot run here, or None.
pub fn unavailable(redis: bool) -> Option<String> {
    if let Some(w) = ate::cluster::gvisor_unavailable() {
        return Some(w);
    }
    if redis {
        return ate_store::testing::redis_unavailable();
    }
    None
}

pub fn ateom_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ATEOM_BIN") {
            return PathBuf::from(p);
        }
        let ate = PathBuf::from(env!("CARGO_BIN_EXE_ate"));
        let candidate = ate.with_file_name("ateom");
        if !candidate.is_file() {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .args(["build", "-p", "ateom"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("running cargo build -p ateom");
            assert!(st.success(), "cargo build -p ateom failed");
        }
        assert!(candidate.is_file(), "no ateom at {}", candidate.display());
        candidate
    })
    .clone()
}

/// Which store a scenario runs on.
pub enum StoreKind {
    Sqlite,
    Redis,
}

/// A real `ate serve` child.
pub struct Serve {
    pub child: Child,
    pub router: SocketAddr,
    pub api: ApiClient,
    pub api_addr: String,
    /// The admin token's file (None: `--insecure-no-auth`).
    pub token_file: Option<PathBuf>,
    pub metrics_addr: Option<SocketAddr>,
    args: Vec<String>,
    log: PathBuf,
}

impl Serve {
    pub fn start(args: &[String], log: &Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ate"))
            .arg("serve")
            .args(args)
            .env("ATE_LOG", "info,ate=debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap())
            .spawn()
            .expect("spawning ate serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("ate serve did not start: {line:?}\n{}", std::fs::read_to_string(log).unwrap_or_default())
        });
        let api_addr = v["api"].as_str().unwrap().to_owned();
        let token_file = v["admin_token_file"].as_str().map(PathBuf::from);
        let token = token_file.as_ref().map(|f| ate::auth::read_token(f).expect("admin token file"));
        Serve {
            child,
            router: v["router"].as_str().unwrap().parse().unwrap(),
            api: ApiClient::with_token(&api_addr, token),
            api_addr,
            token_file,
            metrics_addr: v["metrics"].as_str().map(|m| m.parse().unwrap()),
            args: args.to_vec(),
            log: log.to_owned(),
        }
    }

    /// SIGKILL: a crash at an arbitrary point.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (a clean stop) and waits for the process to exit (at most 30 s).
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) on the PID of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
    }

    /// Starts the same `ate serve` again (new ports).
    pub fn restart(&mut self) {
        self.kill();
        let fresh = Serve::start(&self.args, &self.log);
        *self = fresh;
    }

    /// Starts it again with `extra` arguments added (new ports).
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.kill();
        let mut args = self.args.clone();
        args.extend(extra.iter().map(|s| s.to_string()));
        let fresh = Serve::start(&args, &self.log);
        *self = fresh;
    }

    /// Its metrics as text.
    pub async fn metrics(&self) -> String {
        let (_, body) = self.api.raw(hyper::Method::GET, "/metrics", vec![]).await.unwrap();
        String::from_utf8_lossy(&body).into_owned()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs the `ate` CLI against this server.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ate"));
        cmd.args(["--api", &self.api_addr]);
        if let Some(t) = &self.token_file {
            cmd.arg("--token-file").arg(t);
        }
        let out = cmd.args(args).output().expect("running ate");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Workers, image, bucket, store, and the control plane.
pub struct Lab {
    pub workers: Vec<WorkerProc>,
    pub serve: Serve,
    pub image: String,
    pub bucket: PathBuf,
    pub location: String,
    pub redis: Option<RedisServer>,
    /// The store arguments of `ate serve` (`--db PATH` or `--redis URL`): another replica
    /// started with them shares the store.
    pub store_args: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn start(store: StoreKind, n_workers: usize) -> Lab {
        Self::start_with(store, n_workers, &[], &[])
    }

    /// [`Lab::start`] with extra arguments for every `ateom serve` and for `ate serve`.
    pub fn start_with(
        store: StoreKind,
        n_workers: usize,
        worker_args: &[String],
        serve_args: &[String],
    ) -> Lab {
        let dir = tempfile::Builder::new().prefix("ate-test-").tempdir().unwrap();
        let ateom = ateom_bin();
        let image = ate::cluster::pack_counter(&ateom, &dir.path().join("counter-image")).unwrap();
        let workers: Vec<WorkerProc> = (1..=n_workers)
            .map(|i| {
                WorkerProc::start_with(
                    &ateom,
                    &dir.path().join(format!("w{i}")),
                    &format!("w{i}"),
                    &format!("node-{i}"),
                    worker_args,
                )
                .unwrap()
            })
            .collect();
        let bucket = dir.path().join("bucket");
        let location = format!("file://{}/counter", bucket.display());
        let data = ["--data-dir".to_owned(), dir.path().join("data").display().to_string()];
        let (redis, mut store_args) = match store {
            StoreKind::Sqlite => {
                (None, vec!["--db".to_owned(), dir.path().join("ate.db").display().to_string()])
            }
            StoreKind::Redis => {
                let r = RedisServer::start().expect("redis-server");
                let args = vec!["--redis".to_owned(), r.url.clone()];
                (Some(r), args)
            }
        };
        // Replicas share the data directory, so the same tokens.
        store_args.extend(data);
        let mut args = store_args.clone();
        args.extend(
            ["--router", "127.0.0.1:0", "--replica-id", "test", "--resume-timeout", "60s"].map(str::to_owned),
        );
        args.extend(["--api".to_owned(), "127.0.0.1:0".to_owned()]);
        args.extend(serve_args.iter().cloned());
        let serve = Serve::start(&args, &dir.path().join("ate.log"));
        Lab { workers, serve, image, bucket, location, redis, store_args, dir }
    }

    /// Another replica on the same store (its own replica id, ports and log), with `extra`
    /// arguments.
    pub fn replica(&self, id: &str, extra: &[&str]) -> Serve {
        let mut args = self.store_args.clone();
        args.extend(
            [
                "--router",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--replica-id",
                id,
                "--resume-timeout",
                "60s",
            ]
            .map(str::to_owned),
        );
        args.extend(extra.iter().map(|s| s.to_string()));
        Serve::start(&args, &self.dir.path().join(format!("ate-{id}.log")))
    }

    pub fn worker_mut(&mut self, name: &str) -> &mut WorkerProc {
        self.workers.iter_mut().find(|w| w.name == name).unwrap()
    }

    /// The actor's local snapshots on a worker, as the worker lists them (gRPC).
    pub async fn local_snapshots(&self, worker: &str, actor: &str) -> Vec<ateom_proto::LocalSnapshotInfo> {
        let mut c = ate::worker::connect_lazy(&self.worker(worker).socket);
        c.list_snapshots(ateom_proto::ListSnapshotsRequest {
            actor_template_namespace: "default".into(),
            actor_template_name: "counter".into(),
            actor_id: actor.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .snapshots
    }

    pub fn worker(&self, name: &str) -> &WorkerProc {
        self.workers.iter().find(|w| w.name == name).unwrap()
    }

    /// Applies the pool (these workers) and the counter template.
    pub fn apply_counter(&self, idle: Option<(f64, f64)>) {
        let refs: Vec<&WorkerProc> = self.workers.iter().collect();
        let yaml =
            ate::cluster::counter_resources("gvisor", &refs, "counter", &self.image, &self.location, idle);
        let path = self.dir.path().join("resources.yaml");
        std::fs::write(&path, yaml).unwrap();
        let (ok, out, err) = self.serve.cli(&["apply", "-f", path.to_str().unwrap()]);
        assert!(ok, "ate apply failed: {out}\n{err}");
        assert!(out.contains("actortemplate/counter "), "{out}");
    }

    /// Creates actors a00.. through `ate apply` (Actor documents).
    pub fn create_actors(&self, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("a{i:02}")).collect();
        let docs: Vec<String> = names
            .iter()
            .map(|n| format!("kind: Actor\nmetadata: {{ name: {n} }}\nspec: {{ template: counter }}\n"))
            .collect();
        let path = self.dir.path().join("actors.yaml");
        std::fs::write(&path, docs.join("---\n")).unwrap();
        let (ok, out, err) = self.serve.cli(&["apply", "-f", path.to_str().unwrap()]);
        assert!(ok, "creating actors failed: {out}\n{err}\n{}", self.serve.log_text());
        names
    }
}

/// GET / through the router for `actor`.
pub async fn get(router: SocketAddr, actor: &str) -> anyhow::Result<(u16, String)> {
    ate::demo::get(router, actor, ate::demo::SUFFIX).await
}

pub fn deadline(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// An `ate serve` with its own SQLite store and data directory under `dir`, no workers,
/// loopback router/API/metrics on free ports, and `extra` arguments.
pub fn serve_in(dir: &Path, extra: &[&str]) -> Serve {
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        dir.join("data").display().to_string(),
        "--db".into(),
        dir.join("ate.db").display().to_string(),
        "--router".into(),
        "127.0.0.1:0".into(),
        "--api".into(),
        "127.0.0.1:0".into(),
        "--metrics".into(),
        "127.0.0.1:0".into(),
        "--replica-id".into(),
        "t".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    Serve::start(&args, &dir.join("ate.log"))
}

/// Polls `f` every 100 ms until it gives Some, for at most `secs` seconds.
pub async fn wait_for<T, F, Fut>(secs: u64, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A pool of one worker at `socket` and a template on it (golden snapshots under
/// `location`), as YAML.
pub fn pool_and_template(
    pool: &str,
    worker: &str,
    socket: &Path,
    template: &str,
    location: &str,
    extra: &str,
) -> String {
    format!(
        "kind: WorkerPool\nmetadata: {{ name: {pool} }}\nspec:\n  workers:\n    - {{ name: {worker}, socket: \"{}\" }}\n---\nkind: ActorTemplate\nmetadata: {{ name: {template} }}\nspec:\n  pool: {pool}\n  containers:\n    - name: c\n      image: \"oci-layout:/nonexistent:latest\"\n  snapshot: {{ location: \"{location}\" }}\n{extra}",
        socket.display()
    )
}

/// The template's golden status once it is no longer pending/building (or after `secs`).
pub async fn golden_settled(serve: &Serve, template: &str, secs: u64) -> serde_json::Value {
    let api = serve.api.clone();
    wait_for(secs, || {
        let api = api.clone();
        async move {
            let ts = api.call(hyper::Method::GET, "/v1/templates", None).await.ok()?;
            let t = ts.as_array()?.iter().find(|t| t["name"] == template)?.clone();
            matches!(t["golden"]["status"].as_str(), Some("READY" | "FAILED")).then_some(t)
        }
    })
    .await
    .unwrap_or(serde_json::Value::Null)
}
