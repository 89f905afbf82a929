//! Dialing TCP connections from inside a network namespace without a thread per connection.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::mpsc;
use std::thread;

use async_trait::async_trait;
use nix::sched::CloneFlags;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

use crate::{NetError, Netns};

/// A request to the helper thread: make one socket, send it back.
type SocketRequest = oneshot::Sender<io::Result<Socket>>;

/// Opens TCP connections to `target_ip` from inside a network namespace; implements
/// [`ateom_core::Dialer`].
///
/// One helper thread joins the namespace when the dialer is built and stays parked there.
/// Each [`dial`](ateom_core::Dialer::dial) asks it for a fresh non-blocking TCP socket (the
/// socket belongs to the namespace it was created in; creating it is the only part that
/// needs the thread), then connects that socket on the caller's Tokio runtime. The
/// returned streams have `TCP_NODELAY` set.
///
/// The helper thread keeps the namespace alive (so do open connections); it exits when the
/// dialer is dropped.
///
/// ```no_run
/// # async fn demo(gateway: &ateom_net::Netns) -> Result<(), Box<dyn std::error::Error>> {
/// use ateom_core::Dialer;
/// let dialer = ateom_net::NetnsDialer::new(gateway, "169.254.1.2".parse()?)?;
/// let stream = dialer.dial(8080).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NetnsDialer {
    target_ip: IpAddr,
    namespace: String,
    requests: mpsc::Sender<SocketRequest>,
}

impl NetnsDialer {
    /// Starts the helper thread inside `ns` and returns once it has joined the namespace.
    pub fn new(ns: &Netns, target_ip: IpAddr) -> Result<NetnsDialer, NetError> {
        let ns_file = ns.open_fd()?;
        let (requests, incoming) = mpsc::channel::<SocketRequest>();
        let (joined_tx, joined_rx) = mpsc::sync_channel::<Result<(), NetError>>(1);
        let path = ns.path().to_owned();
        let domain = Domain::for_address(SocketAddr::new(target_ip, 0));
        thread::Builder::new()
            .name(format!("ateom-dial-{}", ns.name()))
            .spawn(move || {
                let joined = nix::sched::setns(ns_file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetError::sys(format!("setns into {}", path.display()), io::Error::from(e)));
                drop(ns_file);
                let ok = joined.is_ok();
                let _ = joined_tx.send(joined);
                if !ok {
                    return;
                }
                // Ends when every sender (the dialer) is gone.
                while let Ok(reply) = incoming.recv() {
                    let _ = reply.send(new_stream_socket(domain));
                }
            })
            .map_err(|source| NetError::ThreadSpawn { namespace: ns.name().to_owned(), source })?;
        match joined_rx.recv() {
            Ok(Ok(())) => Ok(NetnsDialer { target_ip, namespace: ns.name().to_owned(), requests }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NetError::ThreadPanicked { namespace: ns.name().to_owned() }),
        }
    }

    /// The namespace the dialer's sockets are created in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A fresh, unconnected, non-blocking TCP socket created inside the namespace.
    async fn socket(&self) -> io::Result<Socket> {
        let (reply, answer) = oneshot::channel();
        let gone = || io::Error::other(format!("dialer thread for netns {:?} is gone", self.namespace));
        self.requests.send(reply).map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

fn new_stream_socket(domain: Domain) -> io::Result<Socket> {
    let socket = Socket::new(domain, Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket)
}

#[async_trait]
impl ateom_core::Dialer for NetnsDialer {
    fn ip(&self) -> IpAddr {
        self.target_ip
    }

    async fn dial(&self, port: u16) -> io::Result<TcpStream> {
        let socket = self.socket().await?;
        let socket = TcpSocket::from_std_stream(std::net::TcpStream::from(socket));
        socket.connect(SocketAddr::new(self.target_ip, port)).await
    }
}
