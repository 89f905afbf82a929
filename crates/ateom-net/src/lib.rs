//! ateom's network plumbing: every workload lives in a network namespace that ateom
//! creates, and the host reaches it only through a loopback port that ateom forwards into
//! that namespace.
//!
//! * [`Netns`]: named namespaces bound at `/run/netns/<name>` (the `ip netns` convention),
//!   created without shelling out, and [`Netns::run_in`] to do something from inside one.
//! * Topologies, configured over rtnetlink from inside the namespaces:
//!   * gVisor, [`setup_veth`]: runsc's netstack takes over every up interface with an IPv4
//!     address in the sandbox namespace, so ateom's own sockets live in a second,
//!     "gateway" namespace holding the other end of a veth pair;
//!   * microVMs, [`setup_tap`]: one namespace with a persistent tap that the VMM (started
//!     inside the namespace) opens.
//! * [`link_local_pair`]: the deterministic `169.254.x.y/30` of an instance.
//! * [`NetnsDialer`]: TCP connections created inside a namespace, an
//!   [`ateom_core::Dialer`].
//! * [`Forwarder`]: a loopback listener proxying into the current workload and closing in
//!   a way that leaves no connection state (not even `TIME_WAIT`) in the sandbox, so it can
//!   be checkpointed.
//! * [`join_netns_before_exec`]: start runsc or a VMM inside a namespace.
//!
//! All names (namespaces, interfaces) come from the caller, who prefixes them with the
//! daemon instance so that several daemons can share a machine. Everything here needs root
//! (`CAP_SYS_ADMIN`, `CAP_NET_ADMIN`).

#![warn(missing_docs)]

mod dialer;
mod error;
mod exec;
mod forward;
mod netlink;
mod netns;
pub mod tls_front;
mod topology;

pub use dialer::NetnsDialer;
pub use error::NetError;
pub use exec::{join_netns_before_exec, join_netns_before_exec_std, kernel_shows_core_sysctls_in_netns};
pub use forward::{ForwardTarget, Forwarder};
pub use netlink::LinkState;
pub use netns::{MAX_NAMESPACE_NAME_LEN, NETNS_RUN_DIR, Netns, validate_namespace_name};
pub use topology::{
    LINK_LOCAL_PAIRS, MAX_INTERFACE_NAME_LEN, TapPlan, VethPlan, link_local_pair, link_state, setup_tap,
    setup_veth, validate_interface_name,
};
