//! The index decoder never panics: thousands of random and mutated inputs (the same property
//! the `index_decode` fuzz target checks, kept in the normal test suite).

use ateom_store::SnapshotIndex;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn valid_index() -> Vec<u8> {
    let chunk = |off: u64, zero: bool, d: &str| {
        if zero {
            serde_json::json!({"offset": off, "length": 4096, "zero": true, "sha256": d})
        } else {
            serde_json::json!({"offset": off, "length": 4096, "zero": false, "sha256": d,
                               "key": format!("chunks/{d}"), "compressed_length": 100})
        }
    };
    let d = "ab".repeat(32);
    serde_json::to_vec(&serde_json::json!({
        "format": "ateom-snapshot-index", "version": 1, "snapshot_id": "s-1",
        "created_unix_ms": 1_700_000_000_000u64, "chunk_size": 4096,
        "compression": {"codec": "zstd", "level": 1},
        "artifacts": [
            {"name": "memory", "size": 12288, "sha256": d,
             "chunks": [chunk(0, false, &d), chunk(4096, true, &d), chunk(8192, false, &d)]},
            {"name": "dir/cp.img", "size": 0, "sha256": d, "chunks": []}
        ],
        "meta": {"backend": "gvisor", "nested": [1, 2, {"x": null}]}
    }))
    .unwrap()
}

/// JSON-ish fragments that make mutations hit interesting parser and validator paths.
const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "-1",
    "0",
    "1e999",
    "18446744073709551615",
    "18446744073709551616",
    "4096",
    "1.5",
    "\"..\"",
    "\"/etc\"",
    "\"chunks/../x\"",
    "\\u0000",
    "\"zero\"",
    "\"version\"",
    "2",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
];

fn mutate(rng: &mut StdRng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..rng.random_range(1..6) {
        let pos = if v.is_empty() { 0 } else { rng.random_range(0..v.len()) };
        match rng.random_range(0..6) {
            0 if !v.is_empty() => v[pos] ^= 1 << rng.random_range(0..8),
            1 if !v.is_empty() => v[pos] = rng.random(),
            2 => v.truncate(pos),
            3 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                v.splice(pos..pos, t.iter().copied());
            }
            4 if !v.is_empty() => {
                let end = (pos + rng.random_range(1..40)).min(v.len());
                v.drain(pos..end);
            }
            _ => {
                // Replace a number with a token (numbers are offsets, lengths, sizes, versions).
                if let Some(start) = (pos..v.len()).find(|&i| v[i].is_ascii_digit()) {
                    let end = (start..v.len()).find(|&i| !v[i].is_ascii_digit()).unwrap_or(v.len());
                    let t = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                    v.splice(start..end, t.iter().copied());
                }
            }
        }
    }
    v
}

#[test]
fn decoder_never_panics_on_random_or_mutated_input() {
    let base = valid_index();
    let decoded = SnapshotIndex::decode(&base).expect("the seed index is valid");
    assert_eq!(SnapshotIndex::decode(&decoded.encode().unwrap()).unwrap(), decoded);

    let mut rng = StdRng::seed_from_u64(0xA7E0_5EED);
    let (mut ok, mut rejected) = (0, 0);
    for i in 0..6000 {
        let input: Vec<u8> = match i % 3 {
            0 => (0..rng.random_range(0..512)).map(|_| rng.random()).collect(),
            _ => mutate(&mut rng, &base),
        };
        match SnapshotIndex::decode(&input) {
            Ok(idx) => {
                ok += 1;
                // Anything accepted re-encodes to something that decodes to the same index.
                let again = SnapshotIndex::decode(&idx.encode().unwrap()).unwrap();
                assert_eq!(again, idx);
            }
            Err(e) => {
                rejected += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    eprintln!("decoder: {ok} accepted, {rejected} rejected, no panic");
    assert!(rejected > 5000);
}
