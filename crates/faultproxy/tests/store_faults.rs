//! The fault matrix of the snapshot store: pushes and pulls of `ateom-store` against a real
//! s3s-fs server through `ateom-faultproxy`, for every action at the reads and writes of the
//! index, `LATEST` and chunks. For each: a transient fault (first occurrence only) is retried
//! and the operation succeeds byte for byte; a persistent one ends after the bounded retries in
//! a precise error naming the operation, leaves no snapshot that looks complete (and no
//! partial files on a pull), and a rerun once the fault clears succeeds. A truncated answer
//! whose length is rewritten (a clean but short body) is never accepted: it is refused as
//! corrupt, naming the object.
//!
//! Skips LOUDLY only when s3s-fs cannot be installed.

#[allow(dead_code)] // shared with ateom-store's tests, which use all of it
#[path = "../../ateom-store/tests/common/s3server.rs"]
mod s3server;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ateom_store::{ChunkFault, RetryPolicy, Store, StoreConfig, StoreError};
use s3server::{ACCESS_KEY, BUCKET, S3Server, SECRET_KEY};
use serde_json::{Value, json};

const CS: u64 = 64 << 10;
const ATTEMPTS: u32 = 3;

/// The proxy binary, started on free ports in front of `upstream`.
struct Proxy {
    child: Child,
    listen: String,
    control: String,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ateom-faultproxy"))
            .args(["--upstream", upstream])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn ateom-faultproxy");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut field = |name: &str| {
            let line = lines.next().expect("proxy output").unwrap();
            line.strip_prefix(name).unwrap_or_else(|| panic!("expected {name}…, got {line}")).to_string()
        };
        let (listen, control) = (field("LISTEN="), field("CONTROL="));
        Proxy { child, listen, control }
    }

    /// One request to the control endpoint (HTTP/1.1, connection closed after it).
    fn control(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut s = std::net::TcpStream::connect(&self.control).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.control,
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let json = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("null");
        (status, serde_json::from_str(json).unwrap_or(Value::Null))
    }

    fn set_rules(&self, rules: Value) {
        let (status, body) = self.control("PUT", "/rules", &rules.to_string());
        assert_eq!(status, 200, "{body}");
    }

    fn clear(&self) {
        assert_eq!(self.control("DELETE", "/rules", "").0, 200);
    }

    /// (matches, applied) of the first rule.
    fn applied(&self) -> (u64, u64) {
        let (_, stats) = self.control("GET", "/stats", "");
        let r = &stats["rules"][0];
        (r["matches"].as_u64().unwrap(), r["applied"].as_u64().unwrap())
    }
}

struct Rig {
    server: S3Server,
    proxy: Proxy,
    tmp: tempfile::TempDir,
    src: PathBuf,
    names: Vec<String>,
}

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: ATTEMPTS,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
        max_elapsed: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(1),
    }
}

impl Rig {
    fn start(test: &str) -> Option<Rig> {
        let server = S3Server::start(test)?;
        let proxy = Proxy::start(&server.endpoint);
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        // 4 chunks: data, zero, data, a short data chunk (3 chunk objects).
        let mut data = noise(1, CS as usize);
        data.extend(vec![0u8; CS as usize]);
        data.extend(noise(2, CS as usize + 10_000));
        std::fs::write(src.join("memory"), &data).unwrap();
        Some(Rig { server, proxy, tmp, src, names: vec!["memory".into()] })
    }

    fn open(&self, endpoint: &str, prefix: &str) -> Store {
        let opts = [
            ("aws_endpoint", endpoint.to_string()),
            ("aws_access_key_id", ACCESS_KEY.into()),
            ("aws_secret_access_key", SECRET_KEY.into()),
            ("aws_region", "us-east-1".into()),
            ("aws_allow_http", "true".into()),
        ];
        let store = Store::open_with_options(&format!("s3://{BUCKET}/{prefix}"), opts).unwrap();
        store.with_config(StoreConfig { chunk_size: CS, retry: policy(), ..StoreConfig::default() }).unwrap()
    }

    /// Through the proxy.
    fn proxied(&self, prefix: &str) -> Store {
        self.open(&format!("http://{}", self.proxy.listen), prefix)
    }

    /// Straight to the server, to look at what is really stored.
    fn direct(&self, prefix: &str) -> Store {
        self.open(&self.server.endpoint, prefix)
    }

    fn dst(&self, name: &str) -> PathBuf {
        self.tmp.path().join("dst").join(name)
    }

    fn same(&self, dst: &Path) -> bool {
        std::fs::read(self.src.join("memory")).unwrap() == std::fs::read(dst.join("memory")).unwrap()
    }
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tree(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Chunk,
    Index,
    Latest,
}

impl Target {
    fn path(self) -> &'static str {
        match self {
            Target::Chunk => "/chunks/",
            Target::Index => "/index.json",
            Target::Latest => "/LATEST",
        }
    }
    fn op(self, write: bool) -> &'static str {
        match (self, write) {
            (Target::Chunk, true) => "put chunk",
            (Target::Index, true) => "put index",
            (Target::Latest, true) => "put LATEST",
            (Target::Chunk, false) => "get chunk",
            (Target::Index, false) => "get index",
            (Target::Latest, false) => "get LATEST",
        }
    }
    /// A truncation point inside the object's body.
    fn cut(self) -> u64 {
        match self {
            Target::Chunk => 1000,
            Target::Index => 100,
            Target::Latest => 10,
        }
    }
}

fn actions(target: Target, write: bool) -> Vec<(&'static str, Value)> {
    let mut a = vec![
        ("status-500", json!({"type": "status", "status": 500})),
        ("status-503", json!({"type": "status", "status": 503})),
        ("status-429", json!({"type": "status", "status": 429, "retry_after_secs": 1})),
        ("stall", json!({"type": "stall", "ms": 2500})),
        ("reset", json!({"type": "reset"})),
    ];
    if write {
        a.push(("drop-body", json!({"type": "drop_request_body", "after_bytes": target.cut() / 2})));
    } else {
        a.push(("truncate", json!({"type": "truncate", "after_bytes": target.cut()})));
    }
    a
}

fn say(msg: String) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

async fn write_faults(rig: &Rig, target: Target) {
    for (name, action) in actions(target, true) {
        for transient in [true, false] {
            let prefix = format!("w-{name}-{}", if transient { "t" } else { "p" });
            let (store, direct) = (rig.proxied(&prefix), rig.direct(&prefix));
            let occurrence = if transient { json!({"first": 1}) } else { json!("every") };
            rig.proxy.set_rules(
                json!([{"method": "PUT", "path_contains": target.path(), "occurrence": occurrence, "action": action}]),
            );
            let what =
                format!("{target:?} write, {name}, {}", if transient { "transient" } else { "persistent" });
            let r = store.push_dir(&rig.src, &rig.names, "snap", json!({})).await;
            let (matches, applied) = rig.proxy.applied();
            assert!(applied >= 1, "{what}: the fault never fired");
            if transient {
                let r = r.unwrap_or_else(|e| panic!("{what}: not retried: {e}"));
                assert_eq!(applied, 1, "{what}");
                assert!(matches >= 2, "{what}: the faulted request was not retried");
                assert!(r.latest_moved, "{what}: {r:?}");
            } else {
                let e =
                    r.err().unwrap_or_else(|| panic!("{what}: push succeeded through a persistent fault"));
                match &e {
                    StoreError::Remote { op, attempts, key, .. } => {
                        assert_eq!((*op, *attempts), (target.op(true), ATTEMPTS), "{what}: {e}");
                        assert!(key.contains(target.path().trim_start_matches('/')), "{what}: {key}");
                    }
                    other => panic!("{what}: expected a Remote error, got {other}"),
                }
                assert!(applied >= u64::from(ATTEMPTS), "{what}: {applied} faults");
                say(format!("{what}: {e}"));
                // What is really stored: no snapshot unless its index was written.
                let dst = rig.dst(&format!("{prefix}-after"));
                match target {
                    Target::Chunk | Target::Index => {
                        let e = direct.pull(Some("snap"), &dst).await.unwrap_err();
                        assert!(e.is_not_found(), "{what}: the failed push left {e}");
                    }
                    Target::Latest => {
                        // Committed (the index is written) but not the latest: the push said so.
                        direct.pull(Some("snap"), &dst).await.unwrap();
                        assert!(rig.same(&dst), "{what}");
                    }
                }
                assert!(direct.latest().await.unwrap_err().is_not_found(), "{what}: LATEST moved");
                rig.proxy.clear();
                let r = store.push_dir(&rig.src, &rig.names, "snap", json!({})).await;
                r.unwrap_or_else(|e| panic!("{what}: rerun after the fault cleared failed: {e}"));
            }
            rig.proxy.clear();
            let dst = rig.dst(&prefix);
            let pulled = direct.pull(None, &dst).await.unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(pulled.snapshot_id, "snap");
            assert!(rig.same(&dst), "{what}: pulled bytes differ");
        }
    }
}

async fn read_faults(rig: &Rig, target: Target) {
    for (name, action) in actions(target, false) {
        for transient in [true, false] {
            let prefix = format!("r-{name}-{}", if transient { "t" } else { "p" });
            let (store, direct) = (rig.proxied(&prefix), rig.direct(&prefix));
            direct.push_dir(&rig.src, &rig.names, "snap", json!({})).await.unwrap();
            let occurrence = if transient { json!({"first": 1}) } else { json!("every") };
            rig.proxy.set_rules(
                json!([{"method": "GET", "path_contains": target.path(), "occurrence": occurrence, "action": action}]),
            );
            let what =
                format!("{target:?} read, {name}, {}", if transient { "transient" } else { "persistent" });
            let dst = rig.dst(&prefix);
            let r = store.pull(None, &dst).await;
            let (matches, applied) = rig.proxy.applied();
            assert!(applied >= 1, "{what}: the fault never fired");
            if transient {
                r.unwrap_or_else(|e| panic!("{what}: not retried: {e}"));
                assert_eq!(applied, 1, "{what}");
                assert!(matches >= 2, "{what}: the faulted request was not retried");
            } else {
                let e =
                    r.err().unwrap_or_else(|| panic!("{what}: pull succeeded through a persistent fault"));
                match &e {
                    StoreError::Remote { op, attempts, .. } => {
                        assert_eq!((*op, *attempts), (target.op(false), ATTEMPTS), "{what}: {e}")
                    }
                    other => panic!("{what}: expected a Remote error, got {other}"),
                }
                say(format!("{what}: {e}"));
                assert!(tree(&dst).is_empty(), "{what}: left behind {:?}", tree(&dst));
                rig.proxy.clear();
                store.pull(None, &dst).await.unwrap_or_else(|e| panic!("{what}: rerun failed: {e}"));
            }
            assert!(rig.same(&dst), "{what}: pulled bytes differ");
        }
    }

    // A clean but short answer (Content-Length rewritten): never accepted, refused as corrupt.
    let prefix = "r-short";
    let (store, direct) = (rig.proxied(prefix), rig.direct(prefix));
    direct.push_dir(&rig.src, &rig.names, "snap", json!({})).await.unwrap();
    let action = json!({"type": "truncate", "after_bytes": target.cut(), "rewrite_length": true});
    rig.proxy.set_rules(json!([{"method": "GET", "path_contains": target.path(), "action": action}]));
    let dst = rig.dst(prefix);
    let e = store.pull(None, &dst).await.unwrap_err();
    let what = format!("{target:?} read, short answer");
    match (&e, target) {
        (StoreError::CorruptChunk { fault, key, .. }, Target::Chunk) => {
            assert!(matches!(**fault, ChunkFault::StoredLength { actual: 1000, .. }), "{what}: {e}");
            assert!(key.contains("/chunks/"), "{key}");
        }
        (StoreError::CorruptIndex { id, .. }, Target::Index) => assert_eq!(id, "snap"),
        (StoreError::CorruptLatest { .. }, Target::Latest) => {}
        _ => panic!("{what}: expected it refused as corrupt, got {e}"),
    }
    say(format!("{what}: {e}"));
    assert!(tree(&dst).is_empty(), "{what}: left behind {:?}", tree(&dst));
    rig.proxy.clear();
    store.pull(None, &dst).await.unwrap();
    assert!(rig.same(&dst), "{what}");
}

async fn matrix(test: &str, target: Target) {
    let Some(rig) = Rig::start(test) else { return };
    write_faults(&rig, target).await;
    read_faults(&rig, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_chunk_reads_and_writes() {
    matrix("faults_on_chunk_reads_and_writes", Target::Chunk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_index_reads_and_writes() {
    matrix("faults_on_index_reads_and_writes", Target::Index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_latest_reads_and_writes() {
    matrix("faults_on_latest_reads_and_writes", Target::Latest).await;
}

/// Without rules the proxy is transparent: SigV4 requests signed for the proxy's address are
/// accepted by s3s-fs, every request is forwarded, and a write whose answer is lost after it
/// landed (503 after forwarding) is retried into the same result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_is_faithful_and_lost_answers_are_retried() {
    let Some(rig) = Rig::start("passthrough_is_faithful_and_lost_answers_are_retried") else { return };
    let store = rig.proxied("plain");
    let pushed = store.push_dir(&rig.src, &rig.names, "snap", json!({"k": "v"})).await.unwrap();
    assert_eq!((pushed.chunks_total, pushed.chunks_zero), (4, 1));
    let dst = rig.dst("plain");
    store.pull(None, &dst).await.unwrap();
    assert!(rig.same(&dst));
    let (_, stats) = rig.proxy.control("GET", "/stats", "");
    assert_eq!(stats["requests"], stats["forwarded"], "{stats}");
    assert!(stats["requests"].as_u64().unwrap() >= 8, "{stats}");

    let store = rig.proxied("lost");
    let action = json!({"type": "status", "status": 503, "after_forward": true});
    rig.proxy.set_rules(
        json!([{"method": "PUT", "path_contains": "/index.json", "occurrence": "every", "action": action}]),
    );
    let e = store.push_dir(&rig.src, &rig.names, "snap", json!({})).await.unwrap_err();
    assert!(matches!(e, StoreError::Remote { op: "put index", .. }), "{e}");
    // The index did land (complete and valid); LATEST was not written since the push failed.
    let direct = rig.direct("lost");
    direct.pull(Some("snap"), &rig.dst("lost")).await.unwrap();
    assert!(rig.same(&rig.dst("lost")));
    assert!(direct.latest().await.unwrap_err().is_not_found());

    let (status, body) = rig.proxy.control("PUT", "/rules", r#"[{"action":{"type":"status","status":9}}]"#);
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("status 9"), "{body}");
}
