//! The two sandbox topologies: a veth pair between a sandbox and a gateway namespace
//! (gVisor), and a persistent tap inside one namespace (microVMs).

use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{LinkUnspec, LinkVeth};

use crate::netlink::{LinkState, NetlinkIn};
use crate::{NetError, Netns};

/// Longest interface name the kernel accepts (`IFNAMSIZ - 1`).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;

/// How many `/30` pairs [`link_local_pair`] can hand out (indices `0..LINK_LOCAL_PAIRS`).
pub const LINK_LOCAL_PAIRS: u16 = 253 * 64;

/// Picks the `/30` for instance `index` deterministically:
/// `169.254.(1 + index / 64).(index % 64 * 4 + 1)` for the host (gateway / tap) side and
/// `... + 2` for the sandbox (guest) side.
///
/// The third octet skips `169` (so `169.254.169.254`, the cloud metadata address, and its
/// /24 are never used) and never reaches `0` or `255` (reserved by RFC 3927). Indices at or
/// beyond [`LINK_LOCAL_PAIRS`] fail with [`NetError::IndexOutOfRange`].
///
/// ```
/// use std::net::Ipv4Addr;
/// let (host, sandbox) = ateom_net::link_local_pair(0).unwrap();
/// assert_eq!((host, sandbox), (Ipv4Addr::new(169, 254, 1, 1), Ipv4Addr::new(169, 254, 1, 2)));
/// let (host, _) = ateom_net::link_local_pair(65).unwrap();
/// assert_eq!(host, Ipv4Addr::new(169, 254, 2, 5));
/// ```
pub fn link_local_pair(index: u16) -> Result<(Ipv4Addr, Ipv4Addr), NetError> {
    if index >= LINK_LOCAL_PAIRS {
        return Err(NetError::IndexOutOfRange { index, max: LINK_LOCAL_PAIRS - 1 });
    }
    // index < 253 * 64, so 1 + index / 64 <= 253 and, after skipping 169, <= 254.
    let mut third = 1 + (index / 64) as u8;
    if third >= 169 {
        third += 1;
    }
    let fourth = (index % 64) as u8 * 4;
    Ok((Ipv4Addr::new(169, 254, third, fourth + 1), Ipv4Addr::new(169, 254, third, fourth + 2)))
}

/// The gVisor topology: a veth pair with one end in the sandbox namespace and the other in
/// a gateway namespace where ateom's own sockets live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPlan {
    /// Address of the sandbox end (`sandbox_if`), e.g. `169.254.1.2`.
    pub sandbox_ip: Ipv4Addr,
    /// Address of the gateway end (`gateway_if`), e.g. `169.254.1.1`.
    pub gateway_ip: Ipv4Addr,
    /// Prefix length of both addresses, normally 30.
    pub prefix_len: u8,
    /// Name of the sandbox end, normally `eth0`.
    pub sandbox_if: String,
    /// Name of the gateway end, normally `gw0`.
    pub gateway_if: String,
    /// A fixed MAC for the sandbox end (useful when a restored sandbox must see the same
    /// hardware address); `None` lets the kernel pick a random one.
    pub sandbox_mac: Option<[u8; 6]>,
}

impl VethPlan {
    /// The usual plan for instance `index`: `eth0` / `gw0`, the `/30` of
    /// [`link_local_pair`], a kernel-chosen MAC.
    pub fn for_index(index: u16) -> Result<VethPlan, NetError> {
        let (gateway_ip, sandbox_ip) = link_local_pair(index)?;
        Ok(VethPlan {
            sandbox_ip,
            gateway_ip,
            prefix_len: 30,
            sandbox_if: "eth0".into(),
            gateway_if: "gw0".into(),
            sandbox_mac: None,
        })
    }

    fn validate(&self) -> Result<(), NetError> {
        validate_interface_name(&self.sandbox_if)?;
        validate_interface_name(&self.gateway_if)?;
        validate_pair(self.gateway_ip, self.sandbox_ip, self.prefix_len)?;
        if let Some(mac) = self.sandbox_mac
            && (mac[0] & 1 == 1 || mac == [0; 6])
        {
            return Err(NetError::InvalidPlan {
                field: "sandbox_mac",
                reason: "must be a non-zero unicast address".into(),
            });
        }
        Ok(())
    }
}

/// The microVM topology: a persistent tap device inside one namespace, opened later by the
/// VMM process running in that namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapPlan {
    /// Name of the tap device, e.g. `tap0`.
    pub name: String,
    /// Host-side address on the tap, e.g. `169.254.1.1`; the guest uses the other address
    /// of the same subnet.
    pub host_ip: Ipv4Addr,
    /// Prefix length of `host_ip`, normally 30.
    pub prefix_len: u8,
    /// Create the tap with `IFF_VNET_HDR` (Firecracker and QEMU's vhost/virtio-net use it).
    pub vnet_hdr: bool,
    /// The uid allowed to attach to the tap (a VMM that dropped privileges, e.g. under
    /// Firecracker's jailer); root when `None`.
    pub owner: Option<u32>,
}

impl TapPlan {
    /// The usual plan for instance `index`: `tap0`, the host side of [`link_local_pair`],
    /// `/30`, with `IFF_VNET_HDR`.
    pub fn for_index(index: u16) -> Result<TapPlan, NetError> {
        let (host_ip, _guest_ip) = link_local_pair(index)?;
        Ok(TapPlan { name: "tap0".into(), host_ip, prefix_len: 30, vnet_hdr: true, owner: None })
    }
}

/// Creates the veth pair of `plan` with `gateway_if` in `gateway` and `sandbox_if` in
/// `sandbox`, assigns both addresses, sets both ends and `lo` in both namespaces up.
///
/// The pair is created directly with its ends in the two namespaces (one netlink request
/// from inside `gateway`, the peer placed with `IFLA_NET_NS_FD`), so no interface ever
/// appears in the caller's namespace. If a later step fails the pair is deleted again.
/// `sandbox` and `gateway` may be the same namespace if the interface names differ.
pub async fn setup_veth(sandbox: &Netns, gateway: &Netns, plan: &VethPlan) -> Result<(), NetError> {
    plan.validate()?;
    let gw = NetlinkIn::connect(gateway).await?;
    if gw.find_link(&plan.gateway_if).await?.is_some() {
        return Err(NetError::InterfaceExists {
            interface: plan.gateway_if.clone(),
            namespace: gateway.name().to_owned(),
        });
    }
    let sandbox_file = sandbox.open_fd()?;
    let mut peer = LinkUnspec::new_with_name(&plan.sandbox_if).setns_by_fd(sandbox_file.as_raw_fd());
    if let Some(mac) = plan.sandbox_mac {
        peer = peer.address(mac.to_vec());
    }
    let message = LinkVeth::new(&plan.gateway_if, &plan.sandbox_if)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())))
        .build();
    gw.handle().link().add(message).execute().await.map_err(|e| {
        NetError::netlink(
            format!(
                "creating veth {}@{} <-> {}@{}",
                plan.gateway_if,
                gateway.name(),
                plan.sandbox_if,
                sandbox.name()
            ),
            e,
        )
    })?;
    drop(sandbox_file);

    let configure = async {
        gw.add_ipv4(&plan.gateway_if, plan.gateway_ip, plan.prefix_len).await?;
        gw.set_up(&plan.gateway_if).await?;
        gw.set_up("lo").await?;
        if let Some(mac) = plan.sandbox_mac {
            // A known MAC becomes a permanent neighbour entry: the first SYN to a sandbox
            // that is still restoring is not held up by ARP (whose retry is a full second).
            gw.add_permanent_neighbor(&plan.gateway_if, plan.sandbox_ip, mac).await?;
        }
        let sb = NetlinkIn::connect(sandbox).await?;
        sb.add_ipv4(&plan.sandbox_if, plan.sandbox_ip, plan.prefix_len).await?;
        sb.set_up(&plan.sandbox_if).await?;
        sb.set_up("lo").await
    };
    if let Err(e) = configure.await {
        // Deleting one end deletes the pair.
        if let Err(cleanup) = gw.delete_link(&plan.gateway_if).await {
            tracing::warn!(error = %cleanup, "removing half-configured veth pair");
        }
        return Err(e);
    }
    tracing::debug!(
        sandbox = sandbox.name(),
        gateway = gateway.name(),
        sandbox_ip = %plan.sandbox_ip,
        gateway_ip = %plan.gateway_ip,
        "veth pair ready"
    );
    Ok(())
}

/// Creates a persistent tap (`IFF_TAP | IFF_NO_PI`, plus `IFF_VNET_HDR` if asked) owned by
/// root inside `ns`, gives it `host_ip/prefix_len`, sets it and `lo` up.
///
/// The tap survives this call (it has no reader until the VMM opens it by name from inside
/// `ns`) and disappears when the namespace does. Fails with [`NetError::InterfaceExists`] if
/// the name is taken in `ns`; if a later step fails the tap is deleted again.
pub async fn setup_tap(ns: &Netns, plan: &TapPlan) -> Result<(), NetError> {
    validate_interface_name(&plan.name)?;
    validate_prefix_len(plan.prefix_len)?;
    let nl = NetlinkIn::connect(ns).await?;
    if nl.find_link(&plan.name).await?.is_some() {
        return Err(NetError::InterfaceExists {
            interface: plan.name.clone(),
            namespace: ns.name().to_owned(),
        });
    }
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if plan.vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    // The device is created in the namespace of the thread that opens /dev/net/tun.
    ns.run_in(|| create_persistent_tap(&plan.name, flags, plan.owner.unwrap_or(0)))??;

    let configure = async {
        nl.add_ipv4(&plan.name, plan.host_ip, plan.prefix_len).await?;
        nl.set_up(&plan.name).await?;
        nl.set_up("lo").await
    };
    if let Err(e) = configure.await {
        if let Err(cleanup) = nl.delete_link(&plan.name).await {
            tracing::warn!(error = %cleanup, "removing half-configured tap");
        }
        return Err(e);
    }
    tracing::debug!(netns = ns.name(), tap = plan.name, host_ip = %plan.host_ip, "tap ready");
    Ok(())
}

/// Reports an interface's index, flags, MAC and IPv4 addresses inside `ns` (`None` if it
/// does not exist). Meant for checks and diagnostics.
pub async fn link_state(ns: &Netns, interface: &str) -> Result<Option<LinkState>, NetError> {
    validate_interface_name(interface)?;
    NetlinkIn::connect(ns).await?.link_state(interface).await
}

/// Checks an interface name: 1 to 15 bytes, no `/`, `:`, whitespace or control characters,
/// not `.` or `..`.
pub fn validate_interface_name(name: &str) -> Result<(), NetError> {
    let reject = |reason| Err(NetError::InvalidInterfaceName { name: name.to_owned(), reason });
    if name.is_empty() {
        return reject("empty");
    }
    if name.len() > MAX_INTERFACE_NAME_LEN {
        return reject("longer than 15 bytes");
    }
    if name == "." || name == ".." {
        return reject("reserved");
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control() || b >= 0x80)
    {
        return reject("contains '/', ':', whitespace, control or non-ASCII characters");
    }
    Ok(())
}

fn validate_prefix_len(prefix_len: u8) -> Result<(), NetError> {
    if !(1..=30).contains(&prefix_len) {
        return Err(NetError::InvalidPlan {
            field: "prefix_len",
            reason: format!("{prefix_len} is not in 1..=30 (two hosts need at least a /30)"),
        });
    }
    Ok(())
}

fn validate_pair(gateway_ip: Ipv4Addr, sandbox_ip: Ipv4Addr, prefix_len: u8) -> Result<(), NetError> {
    validate_prefix_len(prefix_len)?;
    let mask = u32::MAX << (32 - u32::from(prefix_len));
    let (gw, sb) = (u32::from(gateway_ip), u32::from(sandbox_ip));
    if gw == sb {
        return Err(NetError::InvalidPlan { field: "sandbox_ip", reason: "equals gateway_ip".into() });
    }
    if gw & mask != sb & mask {
        return Err(NetError::InvalidPlan {
            field: "sandbox_ip",
            reason: format!("{sandbox_ip} is not in {gateway_ip}/{prefix_len}"),
        });
    }
    for (field, ip) in [("gateway_ip", gw), ("sandbox_ip", sb)] {
        if ip & !mask == 0 || ip & !mask == !mask {
            return Err(NetError::InvalidPlan {
                field,
                reason: format!("{} is the network or broadcast address", Ipv4Addr::from(ip)),
            });
        }
    }
    Ok(())
}

/// Creates the tap on the calling thread's namespace and makes it persistent.
fn create_persistent_tap(name: &str, flags: libc::c_int, owner: u32) -> Result<(), NetError> {
    let tun = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| NetError::sys("opening /dev/net/tun", e))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
        *slot = byte as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = flags as libc::c_short;
    let ioctl = |op: &str, request_code, arg: libc::c_ulong| -> Result<(), NetError> {
        // SAFETY: `tun` is open; the argument is what the ioctl expects (pointer or integer).
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), request_code, arg) };
        if rc < 0 {
            return Err(NetError::sys(format!("{op} for tap {name}"), io::Error::last_os_error()));
        }
        Ok(())
    };
    ioctl("TUNSETIFF", libc::TUNSETIFF, &mut request as *mut libc::ifreq as libc::c_ulong)?;
    ioctl("TUNSETOWNER", libc::TUNSETOWNER, libc::c_ulong::from(owner))?;
    ioctl("TUNSETPERSIST", libc::TUNSETPERSIST, 1)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_pairs_are_distinct_and_avoid_metadata() {
        let mut seen = std::collections::HashSet::new();
        for index in 0..LINK_LOCAL_PAIRS {
            let (host, sandbox) = link_local_pair(index).unwrap();
            let [a, b, c, d] = host.octets();
            assert_eq!((a, b), (169, 254));
            assert!((1..=254).contains(&c) && c != 169, "{host}");
            assert_eq!(d % 4, 1);
            assert_eq!(u32::from(sandbox), u32::from(host) + 1);
            assert!(seen.insert(host));
            validate_pair(host, sandbox, 30).unwrap();
        }
        assert!(matches!(link_local_pair(LINK_LOCAL_PAIRS), Err(NetError::IndexOutOfRange { .. })));
        assert!(matches!(link_local_pair(u16::MAX), Err(NetError::IndexOutOfRange { .. })));
        assert_eq!(link_local_pair(168 * 64).unwrap().0, Ipv4Addr::new(169, 254, 170, 1));
    }

    #[test]
    fn plans_are_validated() {
        let good = VethPlan::for_index(3).unwrap();
        good.validate().unwrap();
        let mut bad = good.clone();
        bad.sandbox_ip = Ipv4Addr::new(169, 254, 9, 2);
        assert!(matches!(bad.validate(), Err(NetError::InvalidPlan { field: "sandbox_ip", .. })));
        let mut bad = good.clone();
        bad.prefix_len = 31;
        assert!(matches!(bad.validate(), Err(NetError::InvalidPlan { field: "prefix_len", .. })));
        let mut bad = good.clone();
        bad.sandbox_if = "a-name-that-is-too-long".into();
        assert!(matches!(bad.validate(), Err(NetError::InvalidInterfaceName { .. })));
        let mut bad = good.clone();
        bad.sandbox_mac = Some([0x03, 0, 0, 0, 0, 1]);
        assert!(matches!(bad.validate(), Err(NetError::InvalidPlan { field: "sandbox_mac", .. })));
        let mut bad = good;
        bad.gateway_ip = Ipv4Addr::new(169, 254, 1, 12);
        bad.sandbox_ip = Ipv4Addr::new(169, 254, 1, 15);
        assert!(matches!(bad.validate(), Err(NetError::InvalidPlan { .. })));
        for bad in ["", "a/b", "a b", "a:b", "..", "abcdefghijklmnop"] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?}");
        }
    }
}
