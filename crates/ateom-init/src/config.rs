//! The workload config: what `ateom-init` runs, read from [`CONFIG_PATH`] in the rootfs.
//!
//! The host writes one JSON file, `/.ateom/config.json`, into the guest's root file system
//! before boot, owned by root with mode 0600 (`env` may hold secrets and a non-root workload
//! has no business reading it; `ateom-init` reads it as root):
//!
//! ```json
//! {
//!   "version": 1,
//!   "hostname": "actor-1",
//!   "process": {
//!     "args": ["/bin/counter", "--port", "8080"],
//!     "env": ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root"],
//!     "cwd": "/",
//!     "user": { "uid": 1000, "gid": 1000, "additionalGids": [27], "umask": 18 },
//!     "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024 }],
//!     "noNewPrivileges": true
//!   }
//! }
//! ```
//!
//! An optional `"volumes": [{"label": "ateom-vol0", "mountPath": "/data"}]` names the
//! durable-directory disks: each is the ext4 file system with that label, mounted at its path
//! (`sync,dirsync`) before the workload starts; one that cannot be mounted stops the boot.
//!
//! `process` has the shape (and field names) of the OCI runtime spec's `process` object, so
//! the host can copy the one from the image's runtime spec: fields `ateom-init` does not
//! use (`terminal`, `capabilities`, `apparmorProfile`, ...) are ignored. Only `args` is
//! required; `cwd` defaults to `/`, `user` to root, `env` to empty. `hostname` is
//! overridden by `ateom.hostname` on the kernel command line.
//!
//! What `ateom-init` does with it: `args[0]` is looked up in the `PATH` of `env` when it has
//! no `/` (the default `PATH` below when `env` has none), the process starts in its own
//! session with `env` as its whole environment, in `cwd`, with the rlimits, umask and no-new-
//! privileges flag applied and then the supplementary groups, gid and uid set (in that
//! order); stdin is `/dev/null`, stdout and stderr are `/dev/console`.
//!
//! ```
//! use ateom_init::config::{WorkloadConfig, Process};
//! let mut config = WorkloadConfig::new(Process::new(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()]));
//! config.process.env.push("PATH=/bin".into());
//! let bytes = config.to_json().unwrap();
//! assert_eq!(WorkloadConfig::from_json(&bytes).unwrap(), config);
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where the workload config lives in the guest's root file system.
pub const CONFIG_PATH: &str = "/.ateom/config.json";
/// The config version this crate writes and reads.
pub const CONFIG_VERSION: u32 = 1;
/// The `PATH` used to find `args[0]` when the workload's `env` sets none (the workload's
/// environment is not changed).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Larger config files are refused before parsing.
pub const MAX_CONFIG_LEN: usize = 1 << 20;

/// Why a workload config was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Not JSON, or not the shape of a config.
    #[error("workload config is not valid JSON of the expected shape: {0}")]
    Malformed(#[source] serde_json::Error),
    /// Written for another config version.
    #[error("workload config version {found} is not supported (this ateom-init reads version {supported})")]
    UnsupportedVersion {
        /// The version in the file.
        found: u64,
        /// [`CONFIG_VERSION`].
        supported: u32,
    },
    /// No `version` field.
    #[error("workload config has no \"version\" field (expected {CONFIG_VERSION})")]
    MissingVersion,
    /// Larger than [`MAX_CONFIG_LEN`].
    #[error("workload config is {len} bytes, more than the {MAX_CONFIG_LEN} allowed")]
    TooLarge {
        /// The size given.
        len: usize,
    },
    /// A field has a value `ateom-init` cannot use. `field` is a JSON path such as
    /// `process.env[2]`.
    #[error("workload config: {field}: {reason}")]
    Invalid {
        /// Where.
        field: String,
        /// Why.
        reason: String,
    },
    /// Serialising failed (cannot happen for these types; reported rather than panicking).
    #[error("encoding the workload config: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Why `args[0]` could not be turned into an executable path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResolveError {
    /// `args` is empty.
    #[error("the workload has no args")]
    NoProgram,
    /// Not found (or not executable) in any `PATH` directory.
    #[error("workload executable {program:?} not found in PATH {path:?}")]
    NotFound {
        /// `args[0]`.
        program: String,
        /// The `PATH` searched.
        path: String,
    },
}

/// The versioned workload config file. See the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadConfig {
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// The hostname, unless `ateom.hostname` is on the kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The workload process (the OCI runtime spec's `process`).
    pub process: Process,
    /// Durable-directory volumes: ext4 disks the host attached, each found by its file-system
    /// label and mounted at its path (synchronously: every write the workload finishes is on
    /// the host's disk image) before the workload starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
}

/// A durable-directory volume in the guest: the ext4 disk labelled `label`, mounted at
/// `mount_path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// The ext4 label (1-16 characters of `[A-Za-z0-9_-]`).
    pub label: String,
    /// Absolute, without `..`.
    pub mount_path: String,
}

/// The longest ext4 volume label.
pub const MAX_LABEL_LEN: usize = 16;

/// The workload process: a subset of the OCI runtime spec's `process`, same field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    /// The command: `args[0]` is the program (looked up in `PATH` if it has no `/`).
    pub args: Vec<String>,
    /// The whole environment, `KEY=value` each.
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory, absolute.
    #[serde(default = "root_dir")]
    pub cwd: String,
    /// Who it runs as.
    #[serde(default)]
    pub user: User,
    /// Resource limits applied before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    /// Sets `PR_SET_NO_NEW_PRIVS`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_new_privileges: bool,
}

fn root_dir() -> String {
    "/".to_owned()
}

/// The OCI `process.user`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    /// The user id.
    #[serde(default)]
    pub uid: u32,
    /// The group id.
    #[serde(default)]
    pub gid: u32,
    /// Supplementary groups (none when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
    /// The umask, e.g. 18 (= 0o022). Inherited (0o022 from the kernel) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
}

/// One OCI `process.rlimits` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    /// `RLIMIT_NOFILE`, `RLIMIT_NPROC`, ... (see [`RlimitResource`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// The hard limit (`u64::MAX` is unlimited).
    pub hard: u64,
    /// The soft limit, at most `hard`.
    pub soft: u64,
}

/// The resources an [`Rlimit`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum RlimitResource {
    As,
    Core,
    Cpu,
    Data,
    Fsize,
    Locks,
    Memlock,
    Msgqueue,
    Nice,
    Nofile,
    Nproc,
    Rss,
    Rtprio,
    Rttime,
    Sigpending,
    Stack,
}

impl RlimitResource {
    /// Every resource with its OCI name.
    pub const ALL: [(RlimitResource, &'static str); 16] = [
        (RlimitResource::As, "RLIMIT_AS"),
        (RlimitResource::Core, "RLIMIT_CORE"),
        (RlimitResource::Cpu, "RLIMIT_CPU"),
        (RlimitResource::Data, "RLIMIT_DATA"),
        (RlimitResource::Fsize, "RLIMIT_FSIZE"),
        (RlimitResource::Locks, "RLIMIT_LOCKS"),
        (RlimitResource::Memlock, "RLIMIT_MEMLOCK"),
        (RlimitResource::Msgqueue, "RLIMIT_MSGQUEUE"),
        (RlimitResource::Nice, "RLIMIT_NICE"),
        (RlimitResource::Nofile, "RLIMIT_NOFILE"),
        (RlimitResource::Nproc, "RLIMIT_NPROC"),
        (RlimitResource::Rss, "RLIMIT_RSS"),
        (RlimitResource::Rtprio, "RLIMIT_RTPRIO"),
        (RlimitResource::Rttime, "RLIMIT_RTTIME"),
        (RlimitResource::Sigpending, "RLIMIT_SIGPENDING"),
        (RlimitResource::Stack, "RLIMIT_STACK"),
    ];

    /// The resource for an OCI name such as `RLIMIT_NOFILE`.
    pub fn from_oci_name(name: &str) -> Option<RlimitResource> {
        RlimitResource::ALL.iter().find(|(_, n)| *n == name).map(|(r, _)| *r)
    }

    /// The `resource` argument of `setrlimit(2)`.
    pub fn to_libc(self) -> libc::__rlimit_resource_t {
        match self {
            RlimitResource::As => libc::RLIMIT_AS,
            RlimitResource::Core => libc::RLIMIT_CORE,
            RlimitResource::Cpu => libc::RLIMIT_CPU,
            RlimitResource::Data => libc::RLIMIT_DATA,
            RlimitResource::Fsize => libc::RLIMIT_FSIZE,
            RlimitResource::Locks => libc::RLIMIT_LOCKS,
            RlimitResource::Memlock => libc::RLIMIT_MEMLOCK,
            RlimitResource::Msgqueue => libc::RLIMIT_MSGQUEUE,
            RlimitResource::Nice => libc::RLIMIT_NICE,
            RlimitResource::Nofile => libc::RLIMIT_NOFILE,
            RlimitResource::Nproc => libc::RLIMIT_NPROC,
            RlimitResource::Rss => libc::RLIMIT_RSS,
            RlimitResource::Rtprio => libc::RLIMIT_RTPRIO,
            RlimitResource::Rttime => libc::RLIMIT_RTTIME,
            RlimitResource::Sigpending => libc::RLIMIT_SIGPENDING,
            RlimitResource::Stack => libc::RLIMIT_STACK,
        }
    }
}

impl WorkloadConfig {
    /// A version-[`CONFIG_VERSION`] config running `process`, no hostname.
    pub fn new(process: Process) -> WorkloadConfig {
        WorkloadConfig { version: CONFIG_VERSION, hostname: None, process, volumes: Vec::new() }
    }

    /// Parses and [validates](Self::validate) a config file's bytes.
    pub fn from_json(bytes: &[u8]) -> Result<WorkloadConfig, ConfigError> {
        if bytes.len() > MAX_CONFIG_LEN {
            return Err(ConfigError::TooLarge { len: bytes.len() });
        }
        #[derive(Deserialize)]
        struct Probe {
            version: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(ConfigError::Malformed)?;
        match probe.version {
            None => return Err(ConfigError::MissingVersion),
            Some(v) if v.as_u64() == Some(u64::from(CONFIG_VERSION)) => {}
            Some(v) => {
                return Err(match v.as_u64() {
                    Some(found) => ConfigError::UnsupportedVersion { found, supported: CONFIG_VERSION },
                    None => ConfigError::Invalid {
                        field: "version".into(),
                        reason: format!("{v} is not a version number"),
                    },
                });
            }
        }
        let config: WorkloadConfig = serde_json::from_slice(bytes).map_err(ConfigError::Malformed)?;
        config.validate()?;
        Ok(config)
    }

    /// The config as pretty-printed JSON, what the host writes to [`CONFIG_PATH`].
    pub fn to_json(&self) -> Result<Vec<u8>, ConfigError> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(ConfigError::Encode)?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    /// Checks everything `ateom-init` relies on: the version, a non-empty `args[0]`, no NUL
    /// byte anywhere (they cannot cross `execve`), `KEY=value` env entries, an absolute
    /// `cwd`, known rlimits with `soft <= hard`, a valid hostname and a umask within 0o777.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: String, reason: &str| ConfigError::Invalid { field, reason: reason.to_owned() };
        if self.version != CONFIG_VERSION {
            return Err(ConfigError::UnsupportedVersion {
                found: u64::from(self.version),
                supported: CONFIG_VERSION,
            });
        }
        if let Some(hostname) = &self.hostname {
            crate::cmdline::validate_hostname(hostname)
                .map_err(|reason| ConfigError::Invalid { field: "hostname".into(), reason })?;
        }
        let p = &self.process;
        match p.args.first() {
            None => return Err(invalid("process.args".into(), "must name a program (it is empty)")),
            Some(a) if a.is_empty() => return Err(invalid("process.args[0]".into(), "is empty")),
            Some(_) => {}
        }
        for (i, arg) in p.args.iter().enumerate() {
            if arg.contains('\0') {
                return Err(invalid(format!("process.args[{i}]"), "contains a NUL byte"));
            }
        }
        for (i, entry) in p.env.iter().enumerate() {
            let field = || format!("process.env[{i}]");
            if entry.contains('\0') {
                return Err(invalid(field(), "contains a NUL byte"));
            }
            match entry.split_once('=') {
                Some((key, _)) if !key.is_empty() => {}
                _ => return Err(invalid(field(), "is not KEY=value")),
            }
        }
        if !p.cwd.starts_with('/') {
            return Err(invalid("process.cwd".into(), "must be an absolute path"));
        }
        if p.cwd.contains('\0') {
            return Err(invalid("process.cwd".into(), "contains a NUL byte"));
        }
        if p.user.umask.is_some_and(|m| m > 0o777) {
            return Err(invalid("process.user.umask".into(), "must be at most 0o777 (511)"));
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let label_ok = !v.label.is_empty()
                && v.label.len() <= MAX_LABEL_LEN
                && v.label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !label_ok {
                return Err(invalid(
                    format!("volumes[{i}].label"),
                    "must be 1-16 characters of [A-Za-z0-9_-]",
                ));
            }
            let m = &v.mount_path;
            if !m.starts_with('/') || m == "/" || m.split('/').any(|c| c == "..") || m.contains('\0') {
                return Err(invalid(
                    format!("volumes[{i}].mountPath"),
                    "must be an absolute path other than / without '..' or NUL",
                ));
            }
        }
        for (i, limit) in p.rlimits.iter().enumerate() {
            if RlimitResource::from_oci_name(&limit.kind).is_none() {
                return Err(invalid(format!("process.rlimits[{i}].type"), "is not a known RLIMIT_* name"));
            }
            if limit.soft > limit.hard {
                return Err(invalid(format!("process.rlimits[{i}]"), "soft is greater than hard"));
            }
        }
        Ok(())
    }
}

impl Process {
    /// `args`, as root, in `/`, empty environment.
    pub fn new(args: Vec<String>) -> Process {
        Process {
            args,
            env: Vec::new(),
            cwd: root_dir(),
            user: User::default(),
            rlimits: Vec::new(),
            no_new_privileges: false,
        }
    }

    /// `env` as `(key, value)` pairs, in order (entries without `=` are skipped; a
    /// validated config has none).
    pub fn env_pairs(&self) -> Vec<(&str, &str)> {
        self.env.iter().filter_map(|e| e.split_once('=')).filter(|(k, _)| !k.is_empty()).collect()
    }

    /// The value of `key` in `env` (the last one if repeated).
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.env_pairs().into_iter().rev().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// The executable to start: `args[0]` itself if it contains a `/` (relative ones are
    /// relative to `cwd`), otherwise the first `dir/args[0]` in the workload's `PATH` (or
    /// [`DEFAULT_PATH`]) for which `is_executable` holds. Empty `PATH` entries mean `cwd`.
    pub fn resolve_program(&self, is_executable: impl Fn(&Path) -> bool) -> Result<PathBuf, ResolveError> {
        let program = self.args.first().filter(|a| !a.is_empty()).ok_or(ResolveError::NoProgram)?;
        if program.contains('/') {
            return Ok(Path::new(&self.cwd).join(program));
        }
        let path = self.env_var("PATH").unwrap_or(DEFAULT_PATH);
        path.split(':')
            .map(|dir| {
                if dir.is_empty() { Path::new(&self.cwd).join(program) } else { Path::new(dir).join(program) }
            })
            .map(
                |candidate| {
                    if candidate.is_absolute() { candidate } else { Path::new(&self.cwd).join(candidate) }
                },
            )
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| ResolveError::NotFound { program: program.clone(), path: path.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes_are_read_and_hostile_ones_refused() {
        let ok = br#"{"version":1,"process":{"args":["/c"]},"volumes":[{"label":"ateom-vol0","mountPath":"/data"}]}"#;
        let c = WorkloadConfig::from_json(ok).unwrap();
        assert_eq!(c.volumes, [VolumeMount { label: "ateom-vol0".into(), mount_path: "/data".into() }]);
        for (label, path, field) in [
            ("", "/data", "volumes[0].label"),
            ("a-label-longer-than-16", "/data", "volumes[0].label"),
            ("../x", "/data", "volumes[0].label"),
            ("v", "data", "volumes[0].mountPath"),
            ("v", "/", "volumes[0].mountPath"),
            ("v", "/data/../../etc", "volumes[0].mountPath"),
        ] {
            let json = serde_json::json!({"version":1,"process":{"args":["/c"]},"volumes":[{"label":label,"mountPath":path}]});
            match WorkloadConfig::from_json(json.to_string().as_bytes()) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{label} {path}"),
                other => panic!("{label} {path}: {other:?}"),
            }
        }
    }

    fn sample() -> &'static str {
        r#"{
            "version": 1,
            "hostname": "actor-1",
            "process": {
                "terminal": false,
                "args": ["counter", "--port", "8080"],
                "env": ["PATH=/usr/bin:/bin", "HOME=/root", "EMPTY="],
                "cwd": "/srv",
                "user": { "uid": 1000, "gid": 1001, "additionalGids": [27, 44], "umask": 18 },
                "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024 }],
                "noNewPrivileges": true,
                "capabilities": { "bounding": ["CAP_NET_BIND_SERVICE"] },
                "apparmorProfile": "unconfined"
            }
        }"#
    }

    #[test]
    fn decodes_an_oci_style_process_and_ignores_the_fields_it_does_not_use() {
        let c = WorkloadConfig::from_json(sample().as_bytes()).unwrap();
        assert_eq!(c.hostname.as_deref(), Some("actor-1"));
        assert_eq!(c.process.args, ["counter", "--port", "8080"]);
        assert_eq!(c.process.cwd, "/srv");
        assert_eq!(
            c.process.user,
            User { uid: 1000, gid: 1001, additional_gids: vec![27, 44], umask: Some(0o022) }
        );
        assert_eq!(c.process.rlimits, [Rlimit { kind: "RLIMIT_NOFILE".into(), hard: 4096, soft: 1024 }]);
        assert!(c.process.no_new_privileges);
        assert_eq!(c.process.env_pairs(), [("PATH", "/usr/bin:/bin"), ("HOME", "/root"), ("EMPTY", "")]);
        assert_eq!(c.process.env_var("HOME"), Some("/root"));
    }

    #[test]
    fn minimal_config_gets_defaults_and_round_trips() {
        let c = WorkloadConfig::from_json(br#"{"version":1,"process":{"args":["/bin/true"]}}"#).unwrap();
        assert_eq!(c, WorkloadConfig::new(Process::new(vec!["/bin/true".into()])));
        assert_eq!(c.process.cwd, "/");
        assert_eq!(c.process.user, User::default());
        let again = WorkloadConfig::from_json(&c.to_json().unwrap()).unwrap();
        assert_eq!(again, c);
        let full = WorkloadConfig::from_json(sample().as_bytes()).unwrap();
        assert_eq!(WorkloadConfig::from_json(&full.to_json().unwrap()).unwrap(), full);
    }

    #[test]
    fn the_process_of_an_oci_spec_decodes_as_is() {
        use oci_spec::runtime::{PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, UserBuilder};
        let oci = ProcessBuilder::default()
            .args(vec!["/app/server".to_owned(), "-v".to_owned()])
            .env(vec!["PATH=/usr/bin".to_owned(), "A=b=c".to_owned()])
            .cwd("/app")
            .user(
                UserBuilder::default()
                    .uid(65534u32)
                    .gid(65534u32)
                    .additional_gids(vec![1u32])
                    .build()
                    .unwrap(),
            )
            .rlimits(vec![
                PosixRlimitBuilder::default()
                    .typ(PosixRlimitType::RlimitNofile)
                    .hard(10u64)
                    .soft(5u64)
                    .build()
                    .unwrap(),
            ])
            .no_new_privileges(true)
            .build()
            .unwrap();
        let json = serde_json::json!({ "version": 1, "process": serde_json::to_value(&oci).unwrap() });
        let c = WorkloadConfig::from_json(json.to_string().as_bytes()).unwrap();
        assert_eq!(c.process.args, ["/app/server", "-v"]);
        assert_eq!(c.process.env_var("A"), Some("b=c"));
        assert_eq!(c.process.cwd, "/app");
        assert_eq!(c.process.user.uid, 65534);
        assert_eq!(c.process.user.additional_gids, [1]);
        assert_eq!(c.process.rlimits, [Rlimit { kind: "RLIMIT_NOFILE".into(), hard: 10, soft: 5 }]);
        assert!(c.process.no_new_privileges);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases: [(&str, &str); 12] = [
            (r#"{"version":1,"process":{"args":[]}}"#, "process.args:"),
            (r#"{"version":1,"process":{"args":[""]}}"#, "process.args[0]"),
            (r#"{"version":1,"process":{"args":["a","b\u0000"]}}"#, "process.args[1]"),
            (r#"{"version":1,"process":{"args":["a"],"env":["A=1","novalue"]}}"#, "process.env[1]"),
            (r#"{"version":1,"process":{"args":["a"],"env":["=x"]}}"#, "process.env[0]"),
            (r#"{"version":1,"process":{"args":["a"],"cwd":"srv"}}"#, "process.cwd"),
            (r#"{"version":1,"process":{"args":["a"],"user":{"umask":512}}}"#, "process.user.umask"),
            (
                r#"{"version":1,"process":{"args":["a"],"rlimits":[{"type":"RLIMIT_BOGUS","hard":1,"soft":1}]}}"#,
                "process.rlimits[0].type",
            ),
            (
                r#"{"version":1,"process":{"args":["a"],"rlimits":[{"type":"RLIMIT_NOFILE","hard":1,"soft":2}]}}"#,
                "process.rlimits[0]",
            ),
            (r#"{"version":1,"hostname":"no spaces","process":{"args":["a"]}}"#, "hostname"),
            (r#"{"version":"1","process":{"args":["a"]}}"#, "version"),
            (r#"{"version":1,"process":{"args":["a"],"env":["A\u0000=1"]}}"#, "process.env[0]"),
        ];
        for (json, field) in cases {
            let err = WorkloadConfig::from_json(json.as_bytes()).unwrap_err();
            assert!(matches!(err, ConfigError::Invalid { .. }), "{json}: {err:?}");
            assert!(err.to_string().contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn version_and_shape_errors() {
        assert!(matches!(
            WorkloadConfig::from_json(br#"{"version":2,"process":{"args":["a"]}}"#),
            Err(ConfigError::UnsupportedVersion { found: 2, supported: 1 })
        ));
        assert!(matches!(
            WorkloadConfig::from_json(br#"{"process":{"args":["a"]}}"#),
            Err(ConfigError::MissingVersion)
        ));
        assert!(matches!(WorkloadConfig::from_json(br#"{"version":1}"#), Err(ConfigError::Malformed(_))));
        assert!(matches!(WorkloadConfig::from_json(b"[1,2]"), Err(ConfigError::Malformed(_))));
        assert!(matches!(WorkloadConfig::from_json(b""), Err(ConfigError::Malformed(_))));
        assert!(matches!(
            WorkloadConfig::from_json(&vec![b' '; MAX_CONFIG_LEN + 1]),
            Err(ConfigError::TooLarge { .. })
        ));
    }

    #[test]
    fn program_resolution() {
        let mut p = Process::new(vec!["sh".into()]);
        p.cwd = "/work".into();
        let exists = |set: &'static [&'static str]| move |c: &Path| set.iter().any(|s| Path::new(s) == c);

        // No PATH in env: the default PATH.
        assert_eq!(p.resolve_program(exists(&["/bin/sh", "/usr/bin/sh"])).unwrap(), Path::new("/usr/bin/sh"));
        // The workload's PATH, in order; empty entries are the cwd.
        p.env = vec!["PATH=/opt/bin::/bin".into()];
        assert_eq!(p.resolve_program(exists(&["/bin/sh", "/work/sh"])).unwrap(), Path::new("/work/sh"));
        assert_eq!(
            p.resolve_program(exists(&[])).unwrap_err(),
            ResolveError::NotFound { program: "sh".into(), path: "/opt/bin::/bin".into() }
        );
        // With a slash: as written, relative to cwd.
        p.args = vec!["./run.sh".into()];
        assert_eq!(p.resolve_program(exists(&[])).unwrap(), Path::new("/work/./run.sh"));
        p.args = vec!["/abs/prog".into()];
        assert_eq!(p.resolve_program(exists(&[])).unwrap(), Path::new("/abs/prog"));
        p.args = vec![];
        assert_eq!(p.resolve_program(exists(&[])).unwrap_err(), ResolveError::NoProgram);
    }

    #[test]
    fn rlimit_names_map_to_libc() {
        for (resource, name) in RlimitResource::ALL {
            assert_eq!(RlimitResource::from_oci_name(name), Some(resource));
        }
        assert_eq!(RlimitResource::Nofile.to_libc(), libc::RLIMIT_NOFILE);
        assert_eq!(RlimitResource::from_oci_name("nofile"), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = WorkloadConfig::from_json(&bytes);
        }

        #[test]
        fn arbitrary_process_fields_never_panic(
            args in proptest::collection::vec(".{0,8}", 0..4),
            env in proptest::collection::vec(".{0,8}", 0..4),
            cwd in ".{0,8}",
        ) {
            let json = serde_json::json!({"version": 1, "process": {"args": args, "env": env, "cwd": cwd}});
            if let Ok(c) = WorkloadConfig::from_json(json.to_string().as_bytes()) {
                let _ = c.process.resolve_program(|_| false);
            }
        }
    }
}
