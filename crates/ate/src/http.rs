//! Serving HTTP/1.1 to clients nobody vouches for: the admin API, the metrics listener and
//! the router all accept connections through [`serve`], which bounds what one client can hold.
//!
//! * **Connections**: at most [`Limits::max_connections`] at once, and at most
//!   [`Limits::max_connections_per_client`] from one peer address; more are closed at accept.
//!   The per-peer table only holds peers with a connection open.
//! * **Header read** (slowloris): once the first byte of a request has arrived, its whole
//!   head must arrive within [`Limits::header_timeout`], else the connection is closed.
//! * **Idle keep-alive**: a connection with no request in progress and no byte of a new one
//!   is closed after [`Limits::idle_timeout`].
//! * **Slow readers**: a response whose write has been blocked (the client does not read)
//!   for [`Limits::idle_timeout`] ends with the connection.
//! * **Header size**: hyper's read buffer is capped at [`Limits::max_header_bytes`] (a larger
//!   head is answered 431 by hyper), with at most 100 headers.
//!
//! Request *bodies* are the handlers' business (the API reads a bounded body within a
//! deadline; the router streams it with an idle timeout).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, warn};

/// The body every handler answers with.
pub type HttpBody = BoxBody<Bytes, hyper::Error>;

/// A request handler: the request and the peer's address in, the response out.
pub type Handler = Arc<
    dyn Fn(Request<Incoming>, SocketAddr) -> Pin<Box<dyn Future<Output = Response<HttpBody>> + Send>>
        + Send
        + Sync,
>;

/// Something [`serve`] did to protect itself (counted in the metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// A connection closed at accept: too many in total.
    RefusedTotal,
    /// A connection closed at accept: too many from that peer.
    RefusedPerClient,
    /// A request head that did not arrive within the header timeout.
    HeaderTimeout,
    /// An idle keep-alive connection closed.
    IdleClosed,
    /// A client that stopped reading its response.
    WriteStalled,
}

impl Event {
    pub const ALL: [Event; 5] = [
        Event::RefusedTotal,
        Event::RefusedPerClient,
        Event::HeaderTimeout,
        Event::IdleClosed,
        Event::WriteStalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::RefusedTotal => "refused_total",
            Event::RefusedPerClient => "refused_per_client",
            Event::HeaderTimeout => "header_timeout",
            Event::IdleClosed => "idle_closed",
            Event::WriteStalled => "write_stalled",
        }
    }
}

/// Receives [`Event`]s.
pub type OnEvent = Arc<dyn Fn(Event) + Send + Sync>;

/// Bounds of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_client: 128,
            max_header_bytes: 64 << 10,
        }
    }
}

/// What the watchdog of one connection knows.
struct ConnState {
    st: Mutex<St>,
    changed: Notify,
}

struct St {
    /// Requests whose response has not been fully written (or dropped).
    active: usize,
    /// When the last request ended (or the connection opened).
    idle_since: Instant,
    /// First byte of a new request head, while no request is active.
    head_since: Option<Instant>,
    /// A write to the client has been pending since.
    write_blocked_since: Option<Instant>,
}

impl ConnState {
    fn new() -> Arc<Self> {
        Arc::new(ConnState {
            st: Mutex::new(St {
                active: 0,
                idle_since: Instant::now(),
                head_since: None,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn on_bytes_read(&self) {
        let mut st = self.lock();
        if st.active == 0 && st.head_since.is_none() {
            st.head_since = Some(Instant::now());
            drop(st);
            self.changed.notify_one();
        }
    }

    fn on_write(&self, pending: bool) {
        let mut st = self.lock();
        match (pending, st.write_blocked_since.is_some()) {
            (true, false) => {
                st.write_blocked_since = Some(Instant::now());
                drop(st);
                self.changed.notify_one();
            }
            (false, true) => st.write_blocked_since = None,
            _ => {}
        }
    }

    /// Resolves with the reason to close the connection.
    async fn watchdog(self: Arc<Self>, limits: Limits) -> Event {
        loop {
            let now = Instant::now();
            let due = {
                let st = self.lock();
                if st.active > 0 {
                    st.write_blocked_since.map(|t| (t + limits.idle_timeout, Event::WriteStalled))
                } else if let Some(h) = st.head_since {
                    Some((h + limits.header_timeout, Event::HeaderTimeout))
                } else {
                    Some((st.idle_since + limits.idle_timeout, Event::IdleClosed))
                }
            };
            match due {
                Some((at, ev)) if at <= now => return ev,
                Some((at, _)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Counts a request as active until dropped (it travels with the response body).
struct ActiveGuard(Arc<ConnState>);

impl ActiveGuard {
    fn new(c: Arc<ConnState>) -> Self {
        {
            let mut st = c.lock();
            st.active += 1;
            st.head_since = None;
        }
        c.changed.notify_one();
        ActiveGuard(c)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        {
            let mut st = self.0.lock();
            st.active -= 1;
            if st.active == 0 {
                st.idle_since = Instant::now();
                st.head_since = None;
                st.write_blocked_since = None;
            }
        }
        self.0.changed.notify_one();
    }
}

/// A response body that holds `guard` until the body is done (or dropped): the server keeps
/// its request counted as active, the router its actor as in flight.
pub struct Guarded<B, G> {
    pub inner: B,
    pub guard: G,
}

impl<B: Body<Data = Bytes> + Unpin, G: Unpin> Body for Guarded<B, G> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The client's socket, reporting reads and blocked writes to the watchdog.
struct Watched {
    io: TcpStream,
    state: Arc<ConnState>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.on_bytes_read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.state.on_write(r.is_pending());
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.state.on_write(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.state.on_write(r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Something in progress per peer address (connections, resumes), counted; an entry exists
/// only while its count is positive, so the table never outgrows what is in progress.
#[derive(Default)]
pub struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

/// One unit counted in a [`PeerCounts`]; dropping it gives it back.
pub struct PeerSlot {
    table: Arc<PeerCounts>,
    ip: IpAddr,
}

impl PeerCounts {
    /// Takes a slot for `ip` unless it already holds `max`.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(&ip);
            }
            return None;
        }
        *n += 1;
        Some(PeerSlot { table: self.clone(), ip })
    }

    /// Peers with something in progress.
    pub fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// Serves `handler` on `listener` within `limits` until the task is dropped. `name` labels
/// the listener in logs.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    name: &'static str,
    on_event: OnEvent,
    handler: Handler,
) {
    let total = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_client = Arc::new(PeerCounts::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(listener = name, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = total.clone().try_acquire_owned() else {
            on_event(Event::RefusedTotal);
            debug!(listener = name, %peer, "too many connections; closed at accept");
            continue;
        };
        let Some(slot) = per_client.try_take(peer.ip(), limits.max_connections_per_client) else {
            on_event(Event::RefusedPerClient);
            debug!(listener = name, %peer, clients = per_client.len(), "too many connections from this peer; closed at accept");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (limits, on_event, handler) = (limits.clone(), on_event.clone(), handler.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            let state = ConnState::new();
            let io = TokioIo::new(Watched { io: stream, state: state.clone() });
            let st2 = state.clone();
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let guard = ActiveGuard::new(st2.clone());
                let handler = handler.clone();
                async move {
                    let resp = handler(req, peer).await;
                    Ok::<_, Infallible>(resp.map(|inner| Guarded { inner, guard }))
                }
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.max_buf_size(limits.max_header_bytes.max(8192)).max_headers(100).keep_alive(true);
            let conn = builder.serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(listener = name, %peer, error = %e, "connection");
                    }
                }
                ev = state.watchdog(limits) => {
                    on_event(ev);
                    debug!(listener = name, %peer, event = ev.as_str(), "connection closed");
                }
            }
        });
    }
}
