//! Artifact digests: the whole-file sha256 and the chunked digest, computed in one pass at
//! commit (which also punches holes where the file is zero), and the fast, parallel,
//! hole-skipping check of the chunked digest before a restore.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use ateom_core::ChunkDigest;
use sha2::{Digest, Sha256};

/// Zero runs at least this long (and aligned to it) become holes at commit.
const PUNCH_GRANULE: usize = 64 << 10;

fn zeros() -> &'static [u8] {
    static Z: OnceLock<Vec<u8>> = OnceLock::new();
    Z.get_or_init(|| vec![0u8; ateom_core::DIGEST_CHUNK_SIZE as usize])
}

fn is_zero(buf: &[u8]) -> bool {
    let z = zeros();
    buf.chunks(z.len()).all(|c| c == &z[..c.len()])
}

/// sha256 of `len` zero bytes (memoised for the full chunk size).
fn zero_digest(len: usize) -> [u8; 32] {
    static FULL: OnceLock<[u8; 32]> = OnceLock::new();
    let compute = |len: usize| -> [u8; 32] {
        let mut h = Sha256::new();
        let z = zeros();
        let mut left = len;
        while left > 0 {
            let n = left.min(z.len());
            h.update(&z[..n]);
            left -= n;
        }
        h.finalize().into()
    };
    if len == ateom_core::DIGEST_CHUNK_SIZE as usize {
        *FULL.get_or_init(|| compute(len))
    } else {
        compute(len)
    }
}

fn read_full(f: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "file shrank while being read"));
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn punch_hole(f: &File, offset: u64, len: u64) {
    // SAFETY: fallocate on an fd we own; a failure (unsupported file system) only means
    // the zeros stay allocated.
    unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
}

/// The first data offset at or after `from` (`SEEK_DATA`), or `size` if only a hole follows.
fn next_data(f: &File, from: u64, size: u64) -> u64 {
    // SAFETY: lseek on an fd we own.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    if r < 0 {
        if io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) { size } else { from }
    } else {
        r as u64
    }
}

/// What commit records for one artifact.
pub struct FileDigests {
    pub size: u64,
    pub sha256: String,
    pub chunk_digest: ChunkDigest,
    /// The sha256 of every chunk (what `chunk_digest.root` is made of), in order.
    pub chunks: Vec<[u8; 32]>,
}

/// One sequential pass over the file: chunk digests, and holes punched into zero runs
/// (64 KiB aligned) so a mostly-zero memory image takes little disk and is cheap to verify.
/// The whole-file sha256 runs on a second thread, fed in order.
pub fn digest_and_sparsify(path: &Path) -> io::Result<FileDigests> {
    enum Msg {
        Data(Vec<u8>),
        Zeros(usize),
    }
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
    let size = f.metadata()?.len();
    let cs = ateom_core::DIGEST_CHUNK_SIZE;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Msg>(4);
    let whole = std::thread::spawn(move || {
        let mut h = Sha256::new();
        while let Ok(m) = rx.recv() {
            match m {
                Msg::Data(b) => h.update(&b),
                Msg::Zeros(mut n) => {
                    while n > 0 {
                        let k = n.min(zeros().len());
                        h.update(&zeros()[..k]);
                        n -= k;
                    }
                }
            }
        }
        hex::encode(h.finalize())
    });
    let mut chunks: Vec<[u8; 32]> = Vec::with_capacity(size.div_ceil(cs) as usize);
    let mut off = 0u64;
    let result = (|| -> io::Result<()> {
        while off < size {
            let len = (size - off).min(cs) as usize;
            if next_data(&f, off, size) >= off + len as u64 {
                // Already a hole.
                chunks.push(zero_digest(len));
                let _ = tx.send(Msg::Zeros(len));
            } else {
                let mut chunk = vec![0u8; len];
                read_full(&f, &mut chunk, off)?;
                if is_zero(&chunk) {
                    chunks.push(zero_digest(len));
                    punch_hole(&f, off, len as u64);
                    let _ = tx.send(Msg::Zeros(len));
                } else {
                    chunks.push(Sha256::digest(&chunk).into());
                    for (i, g) in chunk.chunks(PUNCH_GRANULE).enumerate() {
                        if g.len() == PUNCH_GRANULE && is_zero(g) {
                            punch_hole(&f, off + (i * PUNCH_GRANULE) as u64, g.len() as u64);
                        }
                    }
                    let _ = tx.send(Msg::Data(chunk));
                }
            }
            off += len as u64;
        }
        Ok(())
    })();
    drop(tx);
    let sha256 = whole.join().expect("hash thread does not panic");
    result?;
    Ok(FileDigests {
        size,
        sha256,
        chunk_digest: ChunkDigest { chunk_size: cs, root: root_of(chunks.iter().copied()) },
        chunks,
    })
}

/// Recomputes an artifact's chunked digest root: chunks spread over the cores, holes never
/// read, zero chunks never hashed.
pub fn chunk_root(path: &Path, chunk_size: u64) -> io::Result<String> {
    Ok(root_of(chunk_digests(path, chunk_size)?))
}

/// The sha256 of every `chunk_size` chunk of a file, computed as [`chunk_root`] does.
pub fn chunk_digests(path: &Path, chunk_size: u64) -> io::Result<Vec<[u8; 32]>> {
    let f = File::open(path)?;
    let size = f.metadata()?.len();
    let n = size.div_ceil(chunk_size) as usize;
    let workers = std::thread::available_parallelism().map_or(2, |p| p.get()).clamp(1, n.max(1));
    let per = n.div_ceil(workers).max(1);
    let mut digests = vec![[0u8; 32]; n];
    std::thread::scope(|s| -> io::Result<()> {
        let handles: Vec<_> = digests
            .chunks_mut(per)
            .enumerate()
            .map(|(w, out)| {
                let f = &f;
                s.spawn(move || -> io::Result<()> {
                    let mut buf = vec![0u8; chunk_size as usize];
                    for (j, slot) in out.iter_mut().enumerate() {
                        let off = (w * per + j) as u64 * chunk_size;
                        let len = (size - off).min(chunk_size) as usize;
                        *slot = if next_data(f, off, size) >= off + len as u64 {
                            zero_digest(len)
                        } else {
                            read_full(f, &mut buf[..len], off)?;
                            if is_zero(&buf[..len]) {
                                zero_digest(len)
                            } else {
                                Sha256::digest(&buf[..len]).into()
                            }
                        };
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().expect("digest thread does not panic")?;
        }
        Ok(())
    })?;
    Ok(digests)
}

/// The root a list of chunk digests (e.g. a snapshot store's chunk table) adds up to.
pub fn root_of(chunk_digests: impl IntoIterator<Item = [u8; 32]>) -> String {
    let mut root = Sha256::new();
    for d in chunk_digests {
        root.update(d);
    }
    hex::encode(root.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn one_pass_digests_match_and_zeros_become_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("memory");
        let cs = ateom_core::DIGEST_CHUNK_SIZE as usize;
        let mut content = vec![0u8; 5 * cs + 12345];
        content[cs + 7] = 1; // chunk 1: one byte of data
        for b in &mut content[3 * cs..3 * cs + 200_000] {
            *b = 0xab;
        }
        content[5 * cs + 12344] = 9; // the short last chunk
        File::create(&p).unwrap().write_all(&content).unwrap(); // dense: zeros written out
        let d = digest_and_sparsify(&p).unwrap();
        assert_eq!(d.size, content.len() as u64);
        assert_eq!(d.sha256, hex::encode(Sha256::digest(&content)));
        let expect = root_of(content.chunks(cs).map(|c| Sha256::digest(c).into()));
        assert_eq!(d.chunk_digest.root, expect);
        assert_eq!(std::fs::read(&p).unwrap(), content, "punching holes never changes content");
        let allocated = std::fs::metadata(&p).unwrap().blocks() * 512;
        assert!(
            allocated < (content.len() as u64) / 2,
            "zeros were punched out: {allocated} bytes allocated"
        );
        assert_eq!(chunk_root(&p, cs as u64).unwrap(), expect, "the parallel hole-skipping check agrees");

        // One flipped bit anywhere changes the root.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_at(&[1], 4 * cs as u64 + 5).unwrap();
        assert_ne!(chunk_root(&p, cs as u64).unwrap(), expect);
    }

    #[test]
    fn empty_and_tiny_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("e");
        File::create(&p).unwrap();
        let d = digest_and_sparsify(&p).unwrap();
        assert_eq!(d.size, 0);
        assert_eq!(d.chunk_digest.root, root_of([]));
        assert_eq!(chunk_root(&p, d.chunk_digest.chunk_size).unwrap(), d.chunk_digest.root);
        std::fs::write(&p, b"xyz").unwrap();
        let d = digest_and_sparsify(&p).unwrap();
        assert_eq!(chunk_root(&p, d.chunk_digest.chunk_size).unwrap(), d.chunk_digest.root);
    }
}
