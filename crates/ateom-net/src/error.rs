//! The one error type of this crate.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong while setting up or using ateom's network plumbing.
///
/// Variants name the failed operation and carry the object it was applied to, so a message
/// such as `bind-mounting /proc/thread-self/ns/net on /run/netns/x: Operation not permitted`
/// is enough to act on without a backtrace.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A namespace name was rejected before touching the system.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidNamespaceName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// An interface name was rejected before touching the system.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidInterfaceName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// [`crate::Netns::create`] found the name already taken.
    #[error("network namespace {name:?} already exists")]
    NamespaceExists {
        /// The taken name.
        name: String,
    },
    /// [`crate::Netns::open`] found nothing under the name.
    #[error("network namespace {name:?} does not exist")]
    NamespaceNotFound {
        /// The missing name.
        name: String,
    },
    /// The file under `/run/netns` exists but no namespace is bound on it (a leftover of a
    /// crashed creator, or a namespace bound in a mount namespace we cannot see).
    #[error("{path} is not a bound network namespace")]
    NotANamespace {
        /// The file that was expected to be an `nsfs` mount.
        path: PathBuf,
    },
    /// A system call failed. `op` says what was being done, to what.
    #[error("{op}: {source}")]
    Sys {
        /// The operation, e.g. `opening /dev/net/tun`.
        op: String,
        /// The error the kernel returned.
        #[source]
        source: io::Error,
    },
    /// A netlink request failed. `op` says what was being done, in which namespace.
    #[error("{op}: {source}")]
    Netlink {
        /// The operation, e.g. `adding 169.254.1.1/30 to gw0 in ns ateom-1-gw`.
        op: String,
        /// The error from the netlink layer (for kernel refusals it contains the errno).
        #[source]
        source: rtnetlink::Error,
    },
    /// An interface that had to exist in a namespace was not there.
    #[error("interface {interface:?} not found in network namespace {namespace:?}")]
    InterfaceNotFound {
        /// The interface name.
        interface: String,
        /// The namespace that was searched.
        namespace: String,
    },
    /// An interface that must be new already exists in the namespace.
    #[error("interface {interface:?} already exists in network namespace {namespace:?}")]
    InterfaceExists {
        /// The interface name.
        interface: String,
        /// The namespace it exists in.
        namespace: String,
    },
    /// A [`crate::VethPlan`] or [`crate::TapPlan`] is inconsistent.
    #[error("invalid network plan: {field}: {reason}")]
    InvalidPlan {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// [`crate::link_local_pair`] was asked for an index beyond the address plan.
    #[error("link-local pair index {index} out of range (at most {max})")]
    IndexOutOfRange {
        /// The requested index.
        index: u16,
        /// The largest valid index.
        max: u16,
    },
    /// A worker thread (one that joins a namespace) could not be started.
    #[error("starting a thread for network namespace {namespace:?}: {source}")]
    ThreadSpawn {
        /// The namespace the thread was meant to join.
        namespace: String,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
    /// A closure given to [`crate::Netns::run_in`] panicked.
    #[error("a task running in network namespace {namespace:?} panicked")]
    ThreadPanicked {
        /// The namespace the task ran in.
        namespace: String,
    },
    /// An async function of this crate was polled outside a Tokio runtime.
    #[error("ateom-net's async functions must run inside a Tokio runtime")]
    NoRuntime,
    /// The forwarder's listener could not be bound.
    #[error("binding forwarder listener on {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The error from the operating system.
        #[source]
        source: io::Error,
    },
}

impl NetError {
    /// Builds a [`NetError::Sys`] for a failed operation.
    pub(crate) fn sys(op: impl Into<String>, source: io::Error) -> NetError {
        NetError::Sys { op: op.into(), source }
    }

    /// Builds a [`NetError::Netlink`].
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> NetError {
        NetError::Netlink { op: op.into(), source }
    }
}
