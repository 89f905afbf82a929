//! Shared test scaffolding: unique names, namespace guards, kernel-state readers.
//!
//! Every namespace a test creates is named `ateomt-<pid>-<tag>-<n>` and owned by a
//! [`Scenario`], whose drop deletes it even when the test panics.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ateom_net::{Netns, VethPlan};

/// Prefix of every namespace any test of this crate creates.
pub const TEST_PREFIX: &str = "ateomt-";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A test's namespaces; deleted on drop, also during a panic.
pub struct Scenario {
    prefix: String,
    names: Vec<String>,
}

impl Scenario {
    /// A scenario whose namespaces are named `ateomt-<pid>-<tag>-<n>-...`.
    pub fn new(tag: &str) -> Scenario {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Scenario { prefix: format!("{TEST_PREFIX}{}-{tag}-{n}-", std::process::id()), names: Vec::new() }
    }

    /// The prefix shared by this scenario's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A name under this scenario's prefix that will be deleted with it.
    pub fn name(&mut self, role: &str) -> String {
        let name = format!("{}{role}", self.prefix);
        self.names.push(name.clone());
        name
    }

    /// Creates a namespace that will be deleted with the scenario.
    pub fn netns(&mut self, role: &str) -> Netns {
        let name = self.name(role);
        Netns::create(&name).unwrap_or_else(|e| panic!("creating netns {name}: {e}"))
    }

    /// Deletes everything and checks that nothing with this scenario's prefix is left, in
    /// our own listing and in `ip netns list`.
    pub fn finish(mut self) {
        self.cleanup();
        assert_eq!(Netns::list_with_prefix(&self.prefix).unwrap(), Vec::<String>::new());
        let leftovers: Vec<String> =
            ip_netns_list().into_iter().filter(|name| name.starts_with(&self.prefix)).collect();
        assert!(leftovers.is_empty(), "ip netns list still shows {leftovers:?}");
    }

    fn cleanup(&mut self) {
        for name in self.names.drain(..) {
            if let Err(e) = Netns::delete_by_name(&name) {
                eprintln!("cleanup: deleting {name}: {e}");
            }
        }
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Names printed by `ip netns list`.
pub fn ip_netns_list() -> Vec<String> {
    let output =
        std::process::Command::new("ip").args(["netns", "list"]).output().expect("running ip netns list");
    assert!(output.status.success(), "ip netns list: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// A sandbox and a gateway namespace joined by a veth pair, as for gVisor.
pub struct VethTopology {
    pub sandbox: Netns,
    pub gateway: Netns,
    pub plan: VethPlan,
}

/// Creates the two namespaces in `scenario` and wires them with instance `index`'s plan.
pub async fn veth_topology(scenario: &mut Scenario, index: u16) -> VethTopology {
    let sandbox = scenario.netns("sb");
    let gateway = scenario.netns("gw");
    let plan = VethPlan::for_index(index).unwrap();
    ateom_net::setup_veth(&sandbox, &gateway, &plan).await.expect("setup_veth");
    VethTopology { sandbox, gateway, plan }
}

/// Binds a Tokio listener on `ip:0` inside `ns`.
pub fn listen_in(ns: &Netns, ip: Ipv4Addr) -> tokio::net::TcpListener {
    let std_listener = ns
        .run_in(|| {
            let listener = std::net::TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            listener.set_nonblocking(true)?;
            Ok::<_, std::io::Error>(listener)
        })
        .expect("run_in")
        .expect("binding the test server in the sandbox namespace");
    tokio::net::TcpListener::from_std(std_listener).expect("registering listener")
}

/// One row of `/proc/net/tcp`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpRow {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: TcpState,
}

/// The states of `include/net/tcp_states.h` a test cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    Established,
    FinWait1,
    FinWait2,
    TimeWait,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    Other(u8),
}

impl TcpState {
    fn from_code(code: u8) -> TcpState {
        match code {
            0x01 => TcpState::Established,
            0x04 => TcpState::FinWait1,
            0x05 => TcpState::FinWait2,
            0x06 => TcpState::TimeWait,
            0x08 => TcpState::CloseWait,
            0x09 => TcpState::LastAck,
            0x0A => TcpState::Listen,
            0x0B => TcpState::Closing,
            other => TcpState::Other(other),
        }
    }
}

/// IPv4 TCP sockets of `ns`, read from `/proc/thread-self/net/tcp` on a thread inside it
/// (`/proc/self/net` would show the namespace of the test process's main thread).
pub fn tcp_table(ns: &Netns) -> Vec<TcpRow> {
    let text = ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/tcp")).unwrap().unwrap();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = |field: &str| u16::from_str_radix(field.rsplit(':').next()?, 16).ok();
            Some(TcpRow {
                local_port: port(fields.get(1)?)?,
                remote_port: port(fields.get(2)?)?,
                state: TcpState::from_code(u8::from_str_radix(fields.get(3)?, 16).ok()?),
            })
        })
        .collect()
}

/// Non-listening sockets of `ns` on `port`.
pub fn connections_on(ns: &Netns, port: u16) -> Vec<TcpRow> {
    tcp_table(ns).into_iter().filter(|row| row.local_port == port && row.state != TcpState::Listen).collect()
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
