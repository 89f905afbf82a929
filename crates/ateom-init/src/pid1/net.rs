//! Guest network over rtnetlink: `lo` up; the interface of `ateom.iface` (eth0) with
//! `ateom.mac`, up, `ateom.ip`, default route via `ateom.gw`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use ateom_init::cmdline::BootParams;
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::error::InitError;

/// How long to wait for the interface to appear (virtio-net probes before init runs, so
/// this only matters on unusual kernels).
const IFACE_WAIT: Duration = Duration::from_secs(2);

/// What got configured.
#[derive(Debug, Default)]
pub struct NetState {
    /// The guest address, if it was assigned.
    pub ip: Option<Ipv4Addr>,
}

/// Configures the network; every failure is logged (the workload still runs without
/// network) and the state says what worked.
pub async fn configure(params: &BootParams) -> NetState {
    let (connection, handle, _messages) = match rtnetlink::new_connection() {
        Ok(c) => c,
        Err(e) => {
            say!("error: opening a netlink socket: {e}; the network stays unconfigured");
            return NetState::default();
        }
    };
    let connection = tokio::spawn(connection);
    let state = configure_with(&handle, params).await;
    connection.abort();
    state
}

async fn configure_with(handle: &Handle, params: &BootParams) -> NetState {
    let mut state = NetState::default();
    if let Err(e) = set_up(handle, "lo").await {
        say!("error: {e}");
    }
    let iface = params.iface.as_str();
    let wanted = params.ip.is_some() || params.gateway.is_some() || params.mac.is_some();
    // Wait for the interface only when the command line configures it.
    let index = match wait_for_link(handle, iface, if wanted { IFACE_WAIT } else { Duration::ZERO }).await {
        Ok(Some(index)) => index,
        Ok(None) if wanted => {
            say!("error: {}; no guest network", InitError::NoInterface(iface.to_owned()));
            return state;
        }
        Ok(None) => return state,
        Err(e) => {
            say!("error: {e}");
            return state;
        }
    };
    if let Some(mac) = params.mac {
        let message = LinkUnspec::new_with_index(index).address(mac.0.to_vec()).build();
        if let Err(e) = handle.link().change(message).execute().await {
            say!("error: {}", InitError::netlink(format!("setting the MAC of {iface} to {mac}"), e));
        }
    }
    if let Err(e) = set_up(handle, iface).await {
        say!("error: {e}");
        return state;
    }
    if let Some(ip) = params.ip {
        match handle.address().add(index, IpAddr::V4(ip.addr), ip.prefix_len).execute().await {
            Ok(()) => state.ip = Some(ip.addr),
            Err(e) if is_errno(&e, libc::EEXIST) => state.ip = Some(ip.addr),
            Err(e) => say!("error: {}", InitError::netlink(format!("adding {ip} to {iface}"), e)),
        }
    }
    if let Some(gw) = params.gateway {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(index);
        if !params.ip.is_some_and(|ip| ip.contains(gw)) {
            // A gateway outside the interface's subnet is still reachable on the link.
            route = route.onlink();
        }
        match handle.route().add(route.build()).execute().await {
            Ok(()) => {}
            Err(e) if is_errno(&e, libc::EEXIST) => {}
            Err(e) => say!(
                "error: {}",
                InitError::netlink(format!("adding the default route via {gw} dev {iface}"), e)
            ),
        }
    }
    let ip = params.ip.map_or("no address".to_owned(), |ip| ip.to_string());
    let gw = params.gateway.map_or("no default route".to_owned(), |gw| format!("default via {gw}"));
    say!("network: lo up, {iface} up, {ip}, {gw}");
    state
}

async fn set_up(handle: &Handle, name: &str) -> Result<(), InitError> {
    let index = link_index(handle, name).await?.ok_or_else(|| InitError::NoInterface(name.to_owned()))?;
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(|e| InitError::netlink(format!("setting {name} up"), e))
}

async fn wait_for_link(handle: &Handle, name: &str, wait: Duration) -> Result<Option<u32>, InitError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(index) = link_index(handle, name).await? {
            return Ok(Some(index));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, InitError> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(InitError::netlink(format!("looking up interface {name}"), e)),
    }
}

fn is_errno(error: &rtnetlink::Error, errno: i32) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(m) if m.to_io().raw_os_error() == Some(errno))
}
