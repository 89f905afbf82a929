//! A real S3-compatible server (s3s-fs, installed from crates.io by scripts/s3-server.sh)
//! started per test on a free loopback port with its own data dir, credentials and bucket.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use ateom_store::Store;

pub const ACCESS_KEY: &str = "ateom-test-access";
pub const SECRET_KEY: &str = "ateom-test-secret-key-0123456789";
pub const BUCKET: &str = "snapshots";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/s3-server.sh")
}

/// Install s3s-fs once per test process; `Err` says why it cannot be had.
fn installed() -> Result<(), String> {
    static ONCE: OnceLock<Result<(), String>> = OnceLock::new();
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    ONCE.get_or_init(|| {
        let out = Command::new("bash")
            .arg(script())
            .arg("install")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{} install exited with {}", script().display(), out.status))
        }
    })
    .clone()
}

impl S3Server {
    /// Start a server, or print LOUDLY why not and return `None` (the caller then skips).
    pub fn start(test: &str) -> Option<S3Server> {
        if let Err(why) = installed() {
            // Written to the real stderr, not through eprintln!, which the test harness
            // captures for passing tests: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "\nSKIPPED {test}: no S3 server available: {why}\n");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let port = free_port();
        let child = Command::new("bash")
            .arg(script())
            .args(["run", "--port", &port.to_string(), "--data"])
            .arg(&data)
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn s3-server.sh run");
        let endpoint = format!("http://127.0.0.1:{port}");
        let server = S3Server { child, endpoint, data, _dir: dir };
        wait_listening(port, 20, "s3s-fs");
        // Create the bucket through the S3 API (SigV4-signed CreateBucket).
        let status = Command::new("bash")
            .arg(script())
            .args(["create-bucket", "--endpoint", &server.endpoint, "--bucket", BUCKET])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .status()
            .unwrap();
        assert!(status.success(), "CreateBucket failed");
        Some(server)
    }

    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint.clone()),
            ("aws_access_key_id", ACCESS_KEY.into()),
            ("aws_secret_access_key", SECRET_KEY.into()),
            ("aws_region", "us-east-1".into()),
            ("aws_allow_http", "true".into()),
        ]
    }

    pub fn store(&self, prefix: &str) -> Store {
        Store::open_with_options(&format!("s3://{BUCKET}/{prefix}"), self.options()).unwrap()
    }

    /// Where s3s-fs keeps an object's bytes (a bucket is a directory, a key a path in it).
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.data.join(BUCKET).join(key)
    }
}

/// A loopback port that was free a moment ago (for a server a test starts).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until something listens on loopback `port`; panics naming `what` after `secs`.
pub fn wait_listening(port: u16, secs: u64, what: &str) {
    use std::time::{Duration, Instant};
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {addr}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
