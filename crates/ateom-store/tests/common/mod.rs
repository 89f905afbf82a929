//! Helpers shared by the integration tests: building sparse files, comparing trees.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::Duration;

use ateom_store::{Digest, RetryPolicy, Store, StoreConfig};

/// A run of a test file: `len` zero bytes (left as a hole) or `len` bytes from `seed`.
#[derive(Debug, Clone, Copy)]
pub enum Run {
    Zero(u64),
    Data(u64, u64),
}

/// Deterministic, poorly compressible bytes (xorshift), so chunks are really stored.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write `runs` into `path` as a sparse file: zero runs are holes (never written).
pub fn write_runs(path: &Path, runs: &[Run]) -> u64 {
    let f = OpenOptions::new().create(true).truncate(true).write(true).open(path).unwrap();
    let mut off = 0u64;
    for r in runs {
        match *r {
            Run::Zero(len) => off += len,
            Run::Data(len, seed) => {
                f.write_all_at(&noise(seed, len as usize), off).unwrap();
                off += len;
            }
        }
    }
    f.set_len(off).unwrap();
    off
}

pub fn sha256_file(path: &Path) -> Digest {
    let mut data = Vec::new();
    File::open(path).unwrap().read_to_end(&mut data).unwrap();
    Digest::of(&data)
}

/// Bytes actually allocated on disk.
pub fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn file_uri(dir: &Path) -> String {
    format!("file://{}", dir.display())
}

/// Quick retries so that fault tests finish fast.
pub fn fast_retry() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        max_elapsed: Duration::from_secs(10),
        attempt_timeout: Duration::from_secs(10),
    }
}

pub fn small_chunks(store: &Store, chunk_size: u64) -> Store {
    store.with_config(StoreConfig { chunk_size, retry: fast_retry(), ..StoreConfig::default() }).unwrap()
}

/// Every file under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

// Also compiled alone by other crates' tests (`#[path]`), so the server helpers live there.
#[allow(unused_imports)] // used by some test binaries only
pub use s3server::{free_port, wait_listening};

pub mod faulty;
pub mod s3server;
