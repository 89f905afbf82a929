//! The snapshot manifest: what a snapshot holds and where it came from.
//!
//! A manifest is written **last**, after every artifact is complete and its digest known, so
//! a snapshot directory (or object-store prefix) without one does not exist. Restores read
//! it first, check its provenance against the host ([`check_compatibility`]) and verify the
//! bytes of every artifact they use against the digests listed here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{ActorRef, Capabilities, HostFingerprint, SnapshotId};

/// Version of the manifest layout below. Readers refuse versions they do not know.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside a snapshot directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Chunk size of [`ChunkDigest`]s written by this version (the snapshot store's default
/// chunk size too, so a pull can check a chunk table against the manifest without hashing).
pub const DIGEST_CHUNK_SIZE: u64 = 1 << 20;

/// A second digest of an artifact that can be checked in parallel and without reading
/// holes: `root` is the sha256 of the concatenated (32-byte) sha256 digests of its
/// `chunk_size` chunks, the last one possibly shorter. An all-zero chunk's digest is a
/// constant, so verifying a mostly-zero memory image costs what its data costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkDigest {
    pub chunk_size: u64,
    pub root: String,
}

/// One file of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    /// Path relative to the snapshot directory (`checkpoint.img`, `memory`, `disk/rootfs.ext4`).
    pub name: String,
    pub size: u64,
    /// Lower-case hex sha256 of the whole file.
    pub sha256: String,
    /// The chunked digest restores verify with (absent in manifests of older writers: then
    /// the whole-file sha256 is checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_digest: Option<ChunkDigest>,
}

/// Everything a backend knows about the snapshot it just wrote (the runtime adds the rest).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendProvenance {
    pub runtime_version: String,
    /// sha256 of the guest kernel, for VM backends.
    pub kernel_id: String,
    pub cpu_template: String,
    /// Free-form facts (platform, machine type, accelerator, guest memory size, ...).
    pub extra: BTreeMap<String, String>,
}

/// The manifest of one snapshot, stored as `manifest.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotManifest {
    pub format_version: u32,
    pub snapshot_id: SnapshotId,
    pub actor: ActorRef,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub backend: String,
    pub runtime_version: String,
    pub kernel_id: String,
    pub cpu_template: String,
    pub host: HostFingerprint,
    /// The capabilities of the backend that wrote it: decide where it may be restored.
    pub capabilities: Capabilities,
    /// Container name -> image manifest digest (`sha256:...`).
    pub image_digests: BTreeMap<String, String>,
    /// The workload it was taken from, so a restore can be started from the snapshot alone.
    pub workload: crate::WorkloadSpec,
    pub provenance: BTreeMap<String, String>,
    pub artifacts: Vec<Artifact>,
    /// What it captured: everything (`full`), or only the durable-directory volumes
    /// (`data`: a restore starts the workload fresh and puts the volumes back).
    #[serde(default)]
    pub scope: crate::Scope,
}

/// Why a manifest was refused when decoding.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for format {MANIFEST_FORMAT_VERSION}: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("manifest format version {found} is not supported (this ateom reads {MANIFEST_FORMAT_VERSION})")]
    UnsupportedVersion { found: u32 },
    #[error("manifest lists artifact {0:?} which is not a plain relative path")]
    BadArtifactName(String),
    #[error("manifest lists artifact {0:?} twice")]
    DuplicateArtifact(String),
    #[error("manifest artifact {name:?} has a malformed sha256 {sha256:?}")]
    BadDigest { name: String, sha256: String },
}

impl SnapshotManifest {
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("manifest serializes");
        v.push(b'\n');
        v
    }

    /// Decodes and sanity-checks a manifest. Never panics on any input.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        struct Probe {
            format_version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)?;
        if probe.format_version != MANIFEST_FORMAT_VERSION {
            return Err(ManifestError::UnsupportedVersion { found: probe.format_version });
        }
        let m: Self = serde_json::from_slice(bytes)?;
        let mut seen = std::collections::BTreeSet::new();
        for a in &m.artifacts {
            if !is_safe_relative_path(&a.name) {
                return Err(ManifestError::BadArtifactName(a.name.clone()));
            }
            if !seen.insert(a.name.as_str()) {
                return Err(ManifestError::DuplicateArtifact(a.name.clone()));
            }
            if a.sha256.len() != 64
                || !a.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(ManifestError::BadDigest { name: a.name.clone(), sha256: a.sha256.clone() });
            }
        }
        Ok(m)
    }

    pub fn artifact(&self, name: &str) -> Option<&Artifact> {
        self.artifacts.iter().find(|a| a.name == name)
    }

    pub fn total_bytes(&self) -> u64 {
        self.artifacts.iter().map(|a| a.size).sum()
    }
}

/// A relative path made of normal components only (no `..`, no leading `/`, no empty parts).
pub fn is_safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 1024
        && !p.starts_with('/')
        && p.split('/').all(|seg| !seg.is_empty() && seg != "." && seg != ".." && !seg.contains('\0'))
}

/// One reason a snapshot cannot be restored on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub field: &'static str,
    pub snapshot: String,
    pub host: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: snapshot has {:?}, this host has {:?}", self.field, self.snapshot, self.host)
    }
}

/// What this host offers a restore: the local backend's identity and the host fingerprint.
#[derive(Clone, Debug)]
pub struct RestoreTarget<'a> {
    pub backend: &'a str,
    pub runtime_version: &'a str,
    pub capabilities: &'a Capabilities,
    pub host: &'a HostFingerprint,
}

/// Compares a snapshot's provenance with the host that would restore it.
///
/// Always required: same backend and same runtime/VMM version (no backend promises state
/// compatibility across versions) and the same portability class. When the snapshot's
/// backend says restores need the same host, CPU vendor, model, flags and host kernel must
/// match as well. Returns every mismatch, not just the first, so the refusal explains itself.
pub fn check_compatibility(m: &SnapshotManifest, target: &RestoreTarget<'_>) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut cmp = |field: &'static str, snapshot: &str, host: &str| {
        if snapshot != host {
            out.push(Mismatch { field, snapshot: snapshot.to_owned(), host: host.to_owned() });
        }
    };
    cmp("backend", &m.backend, target.backend);
    cmp("runtime_version", &m.runtime_version, target.runtime_version);
    cmp(
        "snapshot_portability_class",
        &m.capabilities.snapshot_portability_class,
        &target.capabilities.snapshot_portability_class,
    );
    if m.capabilities.restore_requires_same_host {
        cmp("host.cpu_vendor", &m.host.cpu_vendor, &target.host.cpu_vendor);
        cmp("host.cpu_model", &m.host.cpu_model, &target.host.cpu_model);
        cmp("host.cpu_flags_digest", &m.host.cpu_flags_digest, &target.host.cpu_flags_digest);
        cmp("host.host_kernel", &m.host.host_kernel, &target.host.host_kernel);
    } else {
        // Portable snapshots still need the same instruction set family.
        cmp("host.cpu_vendor", &m.host.cpu_vendor, &target.host.cpu_vendor);
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{ActorRef, WorkloadSpec};

    pub(crate) fn sample() -> SnapshotManifest {
        SnapshotManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            snapshot_id: SnapshotId::parse("id", "20261128T000000.000-00000001").unwrap(),
            actor: ActorRef::parse("ns", "tpl", "a1").unwrap(),
            created_at: "2026-11-28T00:00:00.000Z".into(),
            backend: "gvisor".into(),
            runtime_version: "runsc 1".into(),
            kernel_id: String::new(),
            cpu_template: String::new(),
            host: HostFingerprint {
                cpu_vendor: "AuthenticAMD".into(),
                cpu_model: "AMD EPYC".into(),
                cpu_flags_digest: "abc".into(),
                host_kernel: "6.1".into(),
                host_id: "node-a".into(),
            },
            capabilities: Capabilities {
                supports_local_pause: true,
                supports_incremental: false,
                supports_memory_snapshot: true,
                restore_requires_same_host: false,
                snapshot_portability_class: "gvisor/runsc 1/x86_64".into(),
                accelerator: "ptrace".into(),
            },
            image_digests: BTreeMap::new(),
            workload: WorkloadSpec { containers: vec![] },
            provenance: BTreeMap::new(),
            artifacts: vec![Artifact {
                name: "checkpoint.img".into(),
                size: 3,
                sha256: "a".repeat(64),
                chunk_digest: Some(ChunkDigest { chunk_size: DIGEST_CHUNK_SIZE, root: "b".repeat(64) }),
            }],
            scope: crate::Scope::Full,
        }
    }

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let m = sample();
        assert_eq!(SnapshotManifest::from_json(&m.to_json()).unwrap(), m);
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        v["format_version"] = 99.into();
        let err = SnapshotManifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, ManifestError::UnsupportedVersion { found: 99 }));
    }

    #[test]
    fn refuses_escaping_or_duplicate_artifacts() {
        for name in ["../x", "/etc/passwd", "a//b", "a/./b", ""] {
            let mut m = sample();
            m.artifacts[0].name = name.into();
            assert!(SnapshotManifest::from_json(&m.to_json()).is_err(), "{name}");
        }
        let mut m = sample();
        m.artifacts.push(m.artifacts[0].clone());
        assert!(matches!(
            SnapshotManifest::from_json(&m.to_json()),
            Err(ManifestError::DuplicateArtifact(_))
        ));
        let mut m = sample();
        m.artifacts[0].sha256 = "Z".repeat(64);
        assert!(matches!(SnapshotManifest::from_json(&m.to_json()), Err(ManifestError::BadDigest { .. })));
    }

    #[test]
    fn garbage_never_panics() {
        for input in [&b""[..], b"{", b"null", b"{\"format_version\":1}", b"\xff\xfe", b"[1,2]"] {
            assert!(SnapshotManifest::from_json(input).is_err());
        }
    }

    #[test]
    fn compatibility_lists_every_mismatch() {
        let m = sample();
        let mut caps = m.capabilities.clone();
        let mut host = m.host.clone();
        host.host_id = "node-b".into();
        let ok =
            RestoreTarget { backend: "gvisor", runtime_version: "runsc 1", capabilities: &caps, host: &host };
        assert!(check_compatibility(&m, &ok).is_empty(), "another node is fine for a portable snapshot");

        let bad =
            RestoreTarget { backend: "qemu", runtime_version: "runsc 2", capabilities: &caps, host: &host };
        let fields: Vec<_> = check_compatibility(&m, &bad).iter().map(|x| x.field).collect();
        assert_eq!(fields, ["backend", "runtime_version"]);

        let mut pinned = m.clone();
        pinned.capabilities.restore_requires_same_host = true;
        host.host_kernel = "6.18".into();
        host.cpu_model = "Other".into();
        caps.restore_requires_same_host = true;
        let t =
            RestoreTarget { backend: "gvisor", runtime_version: "runsc 1", capabilities: &caps, host: &host };
        let fields: Vec<_> = check_compatibility(&pinned, &t).iter().map(|x| x.field).collect();
        assert_eq!(fields, ["host.cpu_model", "host.host_kernel"]);
    }
}
