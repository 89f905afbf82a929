//! A small rtnetlink client bound to one namespace.
//!
//! A netlink socket stays in the namespace it was created in, so the socket is created on a
//! thread that joined the namespace ([`Netns::run_in`]) and then driven by the caller's Tokio
//! runtime like any other socket.

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec};
use tokio::task::JoinHandle;

use crate::{NetError, Netns};

/// A netlink connection whose socket lives in one namespace.
pub(crate) struct NetlinkIn {
    handle: Handle,
    connection: JoinHandle<()>,
    namespace: String,
}

impl Drop for NetlinkIn {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

impl NetlinkIn {
    /// Opens a route-netlink socket inside `ns` and drives it on the current runtime.
    pub(crate) async fn connect(ns: &Netns) -> Result<NetlinkIn, NetError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetError::NoRuntime)?;
        let (connection, handle, _messages) = ns
            .run_in(move || {
                // Registering with the reactor needs the runtime's context, not its thread.
                let _entered = runtime.enter();
                rtnetlink::new_connection()
            })?
            .map_err(|e| NetError::sys(format!("opening a netlink socket in netns {:?}", ns.name()), e))?;
        Ok(NetlinkIn { handle, connection: tokio::spawn(connection), namespace: ns.name().to_owned() })
    }

    /// The raw rtnetlink handle.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// The link called `name`, or `None`.
    pub(crate) async fn find_link(&self, name: &str) -> Result<Option<LinkMessage>, NetError> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(e)) if e.to_io().raw_os_error() == Some(libc::ENODEV) => {
                Ok(None)
            }
            Err(e) => Err(NetError::netlink(format!("looking up {name} in netns {:?}", self.namespace), e)),
        }
    }

    /// The index of the link called `name`.
    pub(crate) async fn link_index(&self, name: &str) -> Result<u32, NetError> {
        match self.find_link(name).await? {
            Some(link) => Ok(link.header.index),
            None => Err(NetError::InterfaceNotFound {
                interface: name.to_owned(),
                namespace: self.namespace.clone(),
            }),
        }
    }

    /// `ip link set <name> up`.
    pub(crate) async fn set_up(&self, name: &str) -> Result<(), NetError> {
        let index = self.link_index(name).await?;
        self.handle
            .link()
            .change(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("setting {name} up in netns {:?}", self.namespace), e))
    }

    /// `ip addr add <ip>/<prefix_len> dev <name>`.
    pub(crate) async fn add_ipv4(&self, name: &str, ip: Ipv4Addr, prefix_len: u8) -> Result<(), NetError> {
        let index = self.link_index(name).await?;
        self.handle.address().add(index, IpAddr::V4(ip), prefix_len).execute().await.map_err(|e| {
            NetError::netlink(format!("adding {ip}/{prefix_len} to {name} in netns {:?}", self.namespace), e)
        })
    }

    /// `ip neigh replace <ip> lladdr <mac> dev <name> nud permanent`.
    pub(crate) async fn add_permanent_neighbor(
        &self,
        name: &str,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), NetError> {
        let index = self.link_index(name).await?;
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .replace()
            .execute()
            .await
            .map_err(|e| {
                NetError::netlink(format!("adding neighbour {ip} on {name} in netns {:?}", self.namespace), e)
            })
    }

    /// `ip link del <name>`; a missing link is fine.
    pub(crate) async fn delete_link(&self, name: &str) -> Result<(), NetError> {
        let Some(link) = self.find_link(name).await? else { return Ok(()) };
        self.handle
            .link()
            .del(link.header.index)
            .execute()
            .await
            .map_err(|e| NetError::netlink(format!("deleting {name} in netns {:?}", self.namespace), e))
    }

    /// Facts about a link, for checks and diagnostics.
    pub(crate) async fn link_state(&self, name: &str) -> Result<Option<LinkState>, NetError> {
        let Some(link) = self.find_link(name).await? else { return Ok(None) };
        let mut addresses_stream =
            self.handle.address().get().set_link_index_filter(link.header.index).execute();
        let mut ipv4 = Vec::new();
        while let Some(message) = addresses_stream.try_next().await.map_err(|e| {
            NetError::netlink(format!("listing addresses of {name} in netns {:?}", self.namespace), e)
        })? {
            if let Some((ip, prefix_len)) = ipv4_of(&message) {
                ipv4.push((ip, prefix_len));
            }
        }
        let mac = link.attributes.iter().find_map(|attribute| match attribute {
            LinkAttribute::Address(bytes) => <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => None,
        });
        Ok(Some(LinkState {
            name: name.to_owned(),
            index: link.header.index,
            up: link.header.flags.contains(LinkFlags::Up),
            mac,
            ipv4,
        }))
    }
}

fn ipv4_of(message: &AddressMessage) -> Option<(Ipv4Addr, u8)> {
    message.attributes.iter().find_map(|attribute| match attribute {
        AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
            Some((*ip, message.header.prefix_len))
        }
        _ => None,
    })
}

/// What [`crate::link_state`] reports about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The interface name.
    pub name: String,
    /// The interface index inside its namespace.
    pub index: u32,
    /// Whether the administrative `IFF_UP` flag is set (a tap with no reader is up but has
    /// no carrier).
    pub up: bool,
    /// The hardware address, if the link has an Ethernet-sized one.
    pub mac: Option<[u8; 6]>,
    /// IPv4 addresses with their prefix lengths.
    pub ipv4: Vec<(Ipv4Addr, u8)>,
}
