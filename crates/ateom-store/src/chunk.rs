//! Per-chunk work: zero detection, compression, and the checked decode of a fetched chunk.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::ChunkFault;
use crate::index::Digest;

/// `true` when every byte of `data` is zero. ORs 4 KiB blocks (which the compiler
/// vectorizes) and stops at the first non-zero block.
pub(crate) fn is_zero(data: &[u8]) -> bool {
    data.chunks(4096).all(|block| block.iter().fold(0u8, |acc, &b| acc | b) == 0)
}

/// Compress one chunk as a single zstd frame (the frame records the content size).
pub(crate) fn compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    zstd::bulk::compress(data, level)
}

/// Decode one fetched chunk object and check it against its index entry: the decoded length
/// must be exactly `length` and its sha256 must be `expected`.
pub(crate) fn decode_verified(stored: &[u8], length: u64, expected: &Digest) -> Result<Vec<u8>, ChunkFault> {
    let cap =
        usize::try_from(length).map_err(|_| ChunkFault::Decode("chunk length exceeds memory".into()))?;
    let mut out = Vec::new();
    // `length` is bounded by MAX_CHUNK_SIZE (index validation); reserve it up front so zstd
    // decodes in place and fails if the frame is larger.
    out.try_reserve_exact(cap).map_err(|e| ChunkFault::Decode(e.to_string()))?;
    let mut dec = zstd::bulk::Decompressor::new().map_err(|e| ChunkFault::Decode(e.to_string()))?;
    dec.decompress_to_buffer(stored, &mut out).map_err(|e| ChunkFault::Decode(e.to_string()))?;
    if out.len() as u64 != length {
        return Err(ChunkFault::DecodedLength { expected: length, actual: out.len() as u64 });
    }
    let actual = Digest::of(&out);
    if actual != *expected {
        return Err(ChunkFault::Digest { expected: expected.to_hex(), actual: actual.to_hex() });
    }
    Ok(out)
}

/// sha256 of `len` zero bytes, memoized (a snapshot has at most two distinct zero-chunk
/// lengths per artifact: the chunk size and its last chunk).
#[derive(Default)]
pub(crate) struct ZeroDigests {
    cache: Mutex<HashMap<u64, Digest>>,
}

impl ZeroDigests {
    pub fn get(&self, len: u64) -> Digest {
        if let Some(d) = self.cache.lock().unwrap_or_else(|p| p.into_inner()).get(&len) {
            return *d;
        }
        let d = zero_digest(len);
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).insert(len, d);
        d
    }
}

fn zero_digest(len: u64) -> Digest {
    use sha2::{Digest as _, Sha256};
    let block = [0u8; 64 << 10];
    let mut h = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        h.update(&block[..n]);
        left -= n as u64;
    }
    Digest(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_at_every_alignment() {
        let mut buf = vec![0u8; 300];
        for start in 0..17 {
            assert!(is_zero(&buf[start..]));
            for pos in start..buf.len() {
                buf[pos] = 1;
                assert!(!is_zero(&buf[start..]), "start {start} pos {pos}");
                buf[pos] = 0;
            }
        }
        assert!(is_zero(&[]));
    }

    #[test]
    fn zero_digest_matches_direct_hash() {
        let z = ZeroDigests::default();
        for len in [0u64, 1, 4096, 100_000, 200_001] {
            assert_eq!(z.get(len), Digest::of(&vec![0u8; len as usize]));
        }
    }

    #[test]
    fn decode_checks_length_and_digest() {
        let data = b"hello hello hello".repeat(100);
        let frame = compress(&data, 1).unwrap();
        let d = Digest::of(&data);
        assert_eq!(decode_verified(&frame, data.len() as u64, &d).unwrap(), data);
        assert!(matches!(decode_verified(&frame, data.len() as u64 - 1, &d), Err(ChunkFault::Decode(_))));
        assert!(matches!(
            decode_verified(&frame, data.len() as u64 + 1, &d),
            Err(ChunkFault::DecodedLength { .. })
        ));
        assert!(matches!(
            decode_verified(&frame, data.len() as u64, &Digest::of(b"x")),
            Err(ChunkFault::Digest { .. })
        ));
        assert!(matches!(decode_verified(b"garbage", 10, &d), Err(ChunkFault::Decode(_))));
    }
}
