//! Authenticated snapshots: HMAC-SHA256 over every index and `LATEST` pointer, with keys
//! kept outside the store.
//!
//! Anyone who can write a bucket could otherwise choose the bytes a worker restores — the
//! memory image, the vmstate a root-run VMM parses. With [`SigningKeys`] in the
//! [`StoreConfig`](crate::StoreConfig), a push signs the index (which names every artifact's
//! size, whole-file sha256 and chunk table, and carries the caller's manifest) and the
//! `LATEST` pointer; a read refuses an index or pointer that is unsigned
//! ([`StoreError::Unsigned`](crate::StoreError::Unsigned)) or whose signature does not verify
//! with any configured key ([`StoreError::BadSignature`](crate::StoreError::BadSignature))
//! before anything else is read. Chunks need no signature of their own: every chunk is checked
//! against the signed index's chunk table, and every file against its signed sha256.
//!
//! What is signed binds the object to where it is stored: the MAC covers a domain tag
//! (`ateom-index-v1` / `ateom-latest-v1`), the store's URI (`s3://bucket/prefix`), and the
//! object's canonical bytes without the signature. So a validly signed snapshot copied to
//! another prefix (another actor's) does not verify there.
//!
//! Several keys may be configured: the first signs, any verifies (key rotation). A key is a
//! file of at least 32 random bytes, raw or as hex (`ateom snapshots keygen` writes one, mode
//! 0600); its id is the first 16 hex digits of its sha256.
//!
//! A signature cannot tell an old `LATEST` from a new one: a bucket writer can replay an
//! older signed pointer. Callers that must never roll back name snapshots by id (as `ate`
//! does) rather than by `LATEST`.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// A signature as stored next to what it signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Always `hmac-sha256`.
    pub alg: String,
    /// Which key signed (first 16 hex digits of the key's sha256).
    pub key_id: String,
    /// The MAC, hex.
    pub mac: String,
}

/// Keys that sign (the first) and verify (any) snapshot indexes and pointers.
#[derive(Clone)]
pub struct SigningKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl PartialEq for SigningKeys {
    fn eq(&self, other: &Self) -> bool {
        self.key_ids() == other.key_ids()
    }
}

impl Eq for SigningKeys {}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material itself.
        f.debug_struct("SigningKeys").field("key_ids", &self.key_ids()).finish()
    }
}

/// Shortest key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

impl SigningKeys {
    /// Keys from their file contents (raw bytes, or hex text of at least 64 digits).
    pub fn from_bytes(keys: &[Vec<u8>]) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("no signing key given".into());
        }
        let mut out = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let text = String::from_utf8_lossy(k);
            let trimmed = text.trim();
            let secret =
                if trimmed.len() >= 2 * MIN_KEY_BYTES && trimmed.chars().all(|c| c.is_ascii_hexdigit()) {
                    hex::decode(trimmed).map_err(|e| format!("key {i}: {e}"))?
                } else {
                    k.clone()
                };
            if secret.len() < MIN_KEY_BYTES {
                return Err(format!(
                    "key {i} has {} bytes; a signing key needs at least {MIN_KEY_BYTES} random bytes",
                    secret.len()
                ));
            }
            let id = hex::encode(Sha256::digest(&secret))[..16].to_owned();
            out.push((id, secret));
        }
        Ok(SigningKeys { keys: out })
    }

    /// Keys from files (the first signs). The error names the file.
    pub fn from_files(paths: &[std::path::PathBuf]) -> Result<Self, String> {
        let mut contents = Vec::new();
        for p in paths {
            contents.push(std::fs::read(p).map_err(|e| format!("reading signing key {}: {e}", p.display()))?);
        }
        Self::from_bytes(&contents)
    }

    /// Ids of the configured keys, the signing one first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|(id, _)| id.clone()).collect()
    }

    fn mac(secret: &[u8], domain: &str, location: &str, data: &[u8]) -> Hmac<Sha256> {
        let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
        for part in [domain.as_bytes(), b"\n", location.as_bytes(), b"\n"] {
            m.update(part);
        }
        m.update(data);
        m
    }

    /// Signs `data` stored at `location` (a store URI) in `domain`.
    pub fn sign(&self, domain: &str, location: &str, data: &[u8]) -> Signature {
        let (id, secret) = &self.keys[0];
        let mac = Self::mac(secret, domain, location, data).finalize().into_bytes();
        Signature { alg: "hmac-sha256".into(), key_id: id.clone(), mac: hex::encode(mac) }
    }

    /// True when `sig` is a valid signature of `data` at `location` by one of the keys
    /// (compared in constant time).
    pub fn verify(&self, sig: &Signature, domain: &str, location: &str, data: &[u8]) -> bool {
        if sig.alg != "hmac-sha256" {
            return false;
        }
        let Ok(mac) = hex::decode(&sig.mac) else { return false };
        self.keys
            .iter()
            .filter(|(id, _)| *id == sig.key_id)
            .any(|(_, secret)| Self::mac(secret, domain, location, data).verify_slice(&mac).is_ok())
    }
}

/// Domain tag of index signatures.
pub const INDEX_DOMAIN: &str = "ateom-index-v1";
/// Domain tag of `LATEST` signatures.
pub const LATEST_DOMAIN: &str = "ateom-latest-v1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sign_verify_and_bind_the_location() {
        let k = SigningKeys::from_bytes(&[vec![7u8; 32]]).unwrap();
        let s = k.sign(INDEX_DOMAIN, "s3://b/actors/a1", b"index");
        assert!(k.verify(&s, INDEX_DOMAIN, "s3://b/actors/a1", b"index"));
        assert!(!k.verify(&s, INDEX_DOMAIN, "s3://b/actors/a2", b"index"), "another prefix");
        assert!(!k.verify(&s, LATEST_DOMAIN, "s3://b/actors/a1", b"index"), "another kind of object");
        assert!(!k.verify(&s, INDEX_DOMAIN, "s3://b/actors/a1", b"indeX"), "other bytes");
        let other = SigningKeys::from_bytes(&[vec![8u8; 32]]).unwrap();
        assert!(!other.verify(&s, INDEX_DOMAIN, "s3://b/actors/a1", b"index"), "another key");
        // Rotation: a new first key signs, the old one still verifies.
        let rotated = SigningKeys::from_bytes(&[vec![8u8; 32], vec![7u8; 32]]).unwrap();
        assert!(rotated.verify(&s, INDEX_DOMAIN, "s3://b/actors/a1", b"index"));
        assert_ne!(rotated.sign(INDEX_DOMAIN, "x", b"y").key_id, s.key_id);
        let mut forged = s.clone();
        forged.mac.replace_range(0..2, if &s.mac[0..2] == "00" { "11" } else { "00" });
        assert!(!k.verify(&forged, INDEX_DOMAIN, "s3://b/actors/a1", b"index"));
    }

    #[test]
    fn keys_are_hex_or_raw_and_long_enough() {
        let hex_key = "ab".repeat(32);
        let a = SigningKeys::from_bytes(&[format!("{hex_key}\n").into_bytes()]).unwrap();
        let b = SigningKeys::from_bytes(&[vec![0xab; 32]]).unwrap();
        assert_eq!(a.key_ids(), b.key_ids(), "hex text and raw bytes are the same key");
        assert!(SigningKeys::from_bytes(&[b"short".to_vec()]).unwrap_err().contains("at least 32"));
        assert!(SigningKeys::from_bytes(&[]).is_err());
        assert!(!format!("{a:?}").contains("abab"), "Debug never shows key material");
    }
}
