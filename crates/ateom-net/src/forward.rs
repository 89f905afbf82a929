//! A loopback listener forwarding each connection into the current workload's namespace.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ateom_core::Dialer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::NetError;

/// Where new connections go: a dialer into the workload's namespace and a port there.
pub type ForwardTarget = (Arc<dyn Dialer>, u16);

/// Size of each direction's copy buffer.
const COPY_BUFFER: usize = 16 * 1024;

/// Forwards a (loopback) listener to the current workload.
///
/// Each accepted connection is dialed through the current target's [`Dialer`] and proxied
/// in both directions until both are finished. The closing sequence keeps the workload's
/// side of every connection out of `TIME_WAIT`, which a gVisor checkpoint requires:
///
/// * client half-closes first: the forwarder shuts down its write side towards the
///   workload, so the workload sees EOF and becomes the *passive* closer (`CLOSE_WAIT` ->
///   `LAST_ACK` -> `CLOSED`); the `TIME_WAIT` ends up on the forwarder's socket.
/// * workload closes first: the forwarder passes everything on to the client, shuts down
///   the client's write side, waits for the client to finish, and then closes its socket
///   to the workload with `SO_LINGER {on, 0}`: the RST moves the workload's socket from
///   `FIN_WAIT_2` straight to `CLOSED`.
/// * errors and [`Forwarder::abort_all`]: the socket to the workload is closed with RST.
///
/// (A truly simultaneous close, where both FINs cross on the wire, still leaves both sides
/// in `TIME_WAIT`; the forwarder narrows that window by checking for the workload's FIN
/// before sending its own.)
///
/// Dropping the forwarder stops accepting and aborts its connections.
///
/// ```no_run
/// # async fn demo(dialer: std::sync::Arc<dyn ateom_core::Dialer>) -> Result<(), ateom_net::NetError> {
/// let forwarder = ateom_net::Forwarder::bind("127.0.0.1:0".parse().unwrap()).await?;
/// forwarder.set_target(Some((dialer, 8080)));
/// println!("workload reachable at {}", forwarder.local_addr());
/// // ... before a checkpoint:
/// forwarder.set_target(None);
/// forwarder.abort_all().await;
/// # Ok(()) }
/// ```
pub struct Forwarder {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: JoinHandle<()>,
}

struct Shared {
    target: Mutex<Option<ForwardTarget>>,
    /// Live connections (including those still dialing) and their abort signals.
    connections: Mutex<HashMap<u64, Arc<Notify>>>,
    /// Signalled whenever a connection ends.
    connection_ended: Notify,
    next_id: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target =
            lock(&self.shared.target).as_ref().map(|(dialer, port)| SocketAddr::new(dialer.ip(), *port));
        f.debug_struct("Forwarder")
            .field("local_addr", &self.local_addr)
            .field("target", &target)
            .field("active_connections", &self.active_connections())
            .finish()
    }
}

impl Forwarder {
    /// Binds the listener (e.g. `127.0.0.1:0`) and starts accepting. Until
    /// [`set_target`](Forwarder::set_target) is called, connections are refused (accepted and
    /// closed at once).
    pub async fn bind(addr: SocketAddr) -> Result<Forwarder, NetError> {
        let listener = TcpListener::bind(addr).await.map_err(|source| NetError::Bind { addr, source })?;
        let local_addr = listener.local_addr().map_err(|source| NetError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            target: Mutex::new(None),
            connections: Mutex::new(HashMap::new()),
            connection_ended: Notify::new(),
            next_id: AtomicU64::new(1),
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::debug!(%local_addr, "forwarder listening");
        Ok(Forwarder { local_addr, shared, accept_task })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sets where *new* connections go; `None` refuses them (accept, then close).
    /// Connections already forwarded are not affected.
    pub fn set_target(&self, target: Option<ForwardTarget>) {
        if let Some((dialer, port)) = &target {
            tracing::debug!(local_addr = %self.local_addr, target_ip = %dialer.ip(), port, "forwarder target set");
        } else {
            tracing::debug!(local_addr = %self.local_addr, "forwarder target cleared");
        }
        *lock(&self.shared.target) = target;
    }

    /// Aborts every connection that exists when called (closing its workload-side socket
    /// with RST, also those still dialing) and returns once all of them are closed.
    ///
    /// Connections accepted meanwhile are not affected: clear the target first to stop new
    /// ones.
    pub async fn abort_all(&self) {
        let ids: Vec<u64> = {
            let connections = lock(&self.shared.connections);
            for abort in connections.values() {
                abort.notify_one();
            }
            connections.keys().copied().collect()
        };
        if !ids.is_empty() {
            tracing::debug!(count = ids.len(), "aborting forwarded connections");
        }
        loop {
            let ended = self.shared.connection_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            let remaining = {
                let connections = lock(&self.shared.connections);
                ids.iter().any(|id| connections.contains_key(id))
            };
            if !remaining {
                return;
            }
            ended.await;
        }
    }

    /// Connections currently forwarded (including those still dialing).
    pub fn active_connections(&self) -> usize {
        lock(&self.shared.connections).len()
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.accept_task.abort();
        for abort in lock(&self.shared.connections).values() {
            abort.notify_one();
        }
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.shared.connections).remove(&self.id);
        self.shared.connection_ended.notify_waiters();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Per-connection failures are harmless; resource exhaustion (EMFILE, ENOBUFS)
                // would spin, so back off.
                if !matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
                    tracing::warn!(error = %e, "forwarder accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                continue;
            }
        };
        let target = lock(&shared.target).clone();
        let Some((dialer, port)) = target else {
            tracing::debug!(%peer, "no forward target, refusing connection");
            drop(client);
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let abort = Arc::new(Notify::new());
        lock(&shared.connections).insert(id, abort.clone());
        let registration = Registration { shared: shared.clone(), id };
        tokio::spawn(async move {
            let _registration = registration;
            forward_one(id, client, peer, dialer, port, abort).await;
        });
    }
}

/// How a forwarded connection ended.
enum Outcome {
    /// Both directions finished normally.
    Finished,
    /// [`Forwarder::abort_all`] or the forwarder's drop.
    Aborted,
    /// An I/O error in either direction.
    Failed(io::Error),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Finished => f.write_str("finished"),
            Outcome::Aborted => f.write_str("aborted"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

async fn forward_one(
    id: u64,
    mut client: TcpStream,
    peer: SocketAddr,
    dialer: Arc<dyn Dialer>,
    port: u16,
    abort: Arc<Notify>,
) {
    let _ = client.set_nodelay(true);
    let target = SocketAddr::new(dialer.ip(), port);
    let mut sandbox = tokio::select! {
        biased;
        _ = abort.notified() => {
            tracing::debug!(id, %peer, %target, "forwarded connection aborted while dialing");
            return;
        }
        dialed = dialer.dial(port) => match dialed {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(id, %peer, %target, error = %e, "dialing the workload failed");
                return;
            }
        },
    };
    let sandbox_fd = sandbox.as_raw_fd();
    let (mut to_sandbox, mut to_client) = (0u64, 0u64);
    let outcome = {
        let (mut client_read, mut client_write) = client.split();
        let (mut sandbox_read, mut sandbox_write) = sandbox.split();
        let upstream = async {
            pump(&mut client_read, &mut sandbox_write, &mut to_sandbox).await?;
            // Client EOF. Pass it on unless the workload has closed already: then our FIN
            // would make it the active closer and park it in TIME_WAIT.
            if !peer_has_closed(sandbox_fd) {
                sandbox_write.shutdown().await?;
            }
            Ok::<(), io::Error>(())
        };
        let downstream = async {
            pump(&mut sandbox_read, &mut client_write, &mut to_client).await?;
            client_write.shutdown().await
        };
        tokio::select! {
            biased;
            _ = abort.notified() => Outcome::Aborted,
            done = async { tokio::try_join!(upstream, downstream) } => match done {
                Ok(_) => Outcome::Finished,
                Err(e) => Outcome::Failed(e),
            },
        }
    };
    // Always close towards the workload with RST: if it closed first it sits in FIN_WAIT_2
    // and goes to CLOSED; if we already exchanged FINs the socket is closed and nothing is
    // sent.
    if let Err(e) = sandbox.set_zero_linger() {
        tracing::warn!(id, error = %e, "setting SO_LINGER 0 on the workload-side socket");
    }
    drop(sandbox);
    drop(client);
    tracing::debug!(
        id,
        %peer,
        %target,
        bytes_to_workload = to_sandbox,
        bytes_to_client = to_client,
        %outcome,
        "forwarded connection closed"
    );
}

/// Copies until EOF, counting bytes as they are written.
async fn pump<R, W>(reader: &mut R, writer: &mut W, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; COPY_BUFFER];
    loop {
        let n = reader.read(&mut buffer).await?;
        if n == 0 {
            return Ok(());
        }
        writer.write_all(&buffer[..n]).await?;
        *count += n as u64;
    }
}

/// Whether the peer of a connected TCP socket has sent FIN (or RST) already, even if data
/// before it is still unread: `POLLRDHUP` is set as soon as the kernel processed the FIN.
fn peer_has_closed(fd: RawFd) -> bool {
    let mut poll_fd = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut poll_fd, 1, 0) };
    ready > 0 && poll_fd.revents & (libc::POLLRDHUP | libc::POLLHUP) != 0
}
