//! Errors of the PID 1. Each names what failed.

use std::io;

use ateom_init::config::{ConfigError, ResolveError};
use thiserror::Error;

/// Something PID 1 tried failed.
#[derive(Debug, Error)]
pub enum InitError {
    /// `mount(2)` failed.
    #[error("mounting {fstype} on {target}: {source}")]
    Mount {
        /// The file system type.
        fstype: &'static str,
        /// The mount point.
        target: &'static str,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The workload config is not usable.
    #[error("{path}: {source}")]
    Config {
        /// The config file.
        path: &'static str,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// The workload's program was not found.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The workload could not be started.
    #[error("starting the workload {program} (cwd {cwd}, uid {uid}, gid {gid}): {source}")]
    Spawn {
        /// The resolved executable.
        program: String,
        /// Its working directory.
        cwd: String,
        /// Its uid.
        uid: u32,
        /// Its gid.
        gid: u32,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed.
    #[error("{op}: {source}")]
    Netlink {
        /// What was being done (`"setting eth0 up"`).
        op: String,
        /// The error.
        #[source]
        source: rtnetlink::Error,
    },
    /// An interface the command line names is not there.
    #[error("network interface {0} not found")]
    NoInterface(String),
    /// Any other system call.
    #[error("{op}: {source}")]
    Sys {
        /// What was being done.
        op: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

impl InitError {
    /// `op` failed with `source`.
    pub fn sys(op: impl Into<String>, source: impl Into<io::Error>) -> InitError {
        InitError::Sys { op: op.into(), source: source.into() }
    }

    /// A netlink request `op` failed.
    pub fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> InitError {
        InitError::Netlink { op: op.into(), source }
    }
}
