//! The router: an HTTP/1.1 reverse proxy.
//!
//! `Host: <actor>.<suffix>` → [`Controller::acquire`] (resume if needed — one resume per
//! actor however many requests arrive; the others wait, bounded) → forward to the worker's
//! `host_endpoint`, which must be a loopback address for a worker on this host, or to the
//! `forward` TLS front of a worker on another host (with `ate`'s client certificate; see
//! [`Controller::upstream`]). Anything else is refused, so the router never becomes a proxy
//! to anywhere, and never speaks plain HTTP off this host.
//!
//! Upstream connections are never reused: each request gets a fresh connection and is sent
//! with `Connection: close`. gVisor cannot checkpoint while a TCP connection into the sandbox
//! is open, so an idle keep-alive connection held by the router would make every pause
//! fail. The request counts as in flight until its response body is fully sent (or
//! dropped), and a pause waits for that.
//!
//! What a client can make the router hold is bounded ([`RouterConfig`]):
//!
//! * connections, header read, idle keep-alive and stalled readers: [`crate::http`];
//! * request bodies: at most [`RouterConfig::max_body`] (413); bodies up to
//!   [`RouterConfig::buffer_limit`] are buffered (so a request the workload's forwarder was
//!   not ready for can be re-sent), larger ones are streamed (re-sent only if the upstream
//!   connection could not be opened), and a body that stalls for
//!   [`RouterConfig::body_idle_timeout`] ends the request;
//! * upstream: connect within [`RouterConfig::upstream_connect_timeout`], response head
//!   within [`RouterConfig::upstream_timeout`] (504);
//! * resumes: one peer address waits for at most [`RouterConfig::max_resumes_per_client`]
//!   actors to resume at once (429 with `Retry-After` for another actor; more requests for
//!   an actor it already waits on join that wait);
//! * per-Host state: a Host that names no actor allocates nothing (no gate, no map entry).
//!
//! Errors the router answers itself have fixed bodies naming nothing internal (no worker,
//! path, store URI or reason text); the reason is counted in `ate_router_errors_total` and
//! logged.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::controller::{Controller, CtlError};
use crate::http::{Guarded, Handler, HttpBody, Limits as HttpLimits, OnEvent};
use crate::worker::Upstream;

pub type RouterBody = HttpBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bounds of the router.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterConfig {
    /// Actors are reached as `<actor>.<suffix>`.
    pub suffix: String,
    pub http: HttpLimits,
    pub upstream_connect_timeout: Duration,
    /// Until the workload's response head.
    pub upstream_timeout: Duration,
    /// Longest pause between two pieces of a request body.
    pub body_idle_timeout: Duration,
    /// Largest request body.
    pub max_body: u64,
    /// Bodies up to this size are buffered (and can be re-sent).
    pub buffer_limit: u64,
    /// Actors one peer address waits on to resume at once.
    pub max_resumes_per_client: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            suffix: "actors.local".into(),
            http: HttpLimits::default(),
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_timeout: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            max_body: 64 << 20,
            buffer_limit: 64 << 10,
            max_resumes_per_client: 8,
        }
    }
}

/// Why the router answered an error itself.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("bad Host header")]
    BadHost,
    #[error("no such actor")]
    NoActor,
    #[error("request body too large")]
    TooLarge,
    #[error("too many requests waiting for resumes from this client")]
    TooManyResumes,
    #[error("the request body stalled or failed")]
    BadBody,
    #[error("actor crashed: {0}")]
    Crashed(String),
    #[error("actor unavailable: {0}")]
    Unavailable(CtlError),
    #[error("upstream endpoint {0:?} is neither loopback nor the TLS front of a worker; refused")]
    EndpointRefused(String),
    #[error("upstream failed: {0}")]
    Upstream(String),
    #[error("upstream did not answer in time")]
    UpstreamTimeout,
}

impl RouteError {
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::BadHost | RouteError::BadBody => StatusCode::BAD_REQUEST,
            RouteError::NoActor => StatusCode::NOT_FOUND,
            RouteError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RouteError::TooManyResumes => StatusCode::TOO_MANY_REQUESTS,
            RouteError::Crashed(_) | RouteError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::EndpointRefused(_) | RouteError::Upstream(_) => StatusCode::BAD_GATEWAY,
            RouteError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            RouteError::BadHost => "bad_host",
            RouteError::NoActor => "no_actor",
            RouteError::TooLarge => "too_large",
            RouteError::TooManyResumes => "too_many_resumes",
            RouteError::BadBody => "bad_body",
            RouteError::Crashed(_) => "crashed",
            RouteError::Unavailable(CtlError::Worker(_)) => "worker",
            RouteError::Unavailable(CtlError::Store(_)) => "store",
            RouteError::Unavailable(_) => "unavailable",
            RouteError::EndpointRefused(_) => "endpoint_refused",
            RouteError::Upstream(_) => "upstream",
            RouteError::UpstreamTimeout => "upstream_timeout",
        }
    }

    /// The fixed text the client sees.
    fn public(&self) -> &'static str {
        match self {
            RouteError::BadHost => "bad Host header\n",
            RouteError::NoActor => "no such actor\n",
            RouteError::TooLarge => "request body too large\n",
            RouteError::TooManyResumes => "too many requests waiting for actors to resume; retry later\n",
            RouteError::BadBody => "request body incomplete\n",
            RouteError::Crashed(_) => "actor unavailable (crashed)\n",
            RouteError::Unavailable(_) => "actor unavailable; retry later\n",
            RouteError::EndpointRefused(_) | RouteError::Upstream(_) => {
                "the actor's workload did not answer\n"
            }
            RouteError::UpstreamTimeout => "the actor's workload did not answer in time\n",
        }
    }
}

impl From<CtlError> for RouteError {
    fn from(e: CtlError) -> Self {
        match e {
            CtlError::NotFound { .. } => RouteError::NoActor,
            CtlError::Crashed { reason, .. } => RouteError::Crashed(reason),
            e => RouteError::Unavailable(e),
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<RouterBody> {
    let mut r =
        Response::new(Full::new(Bytes::from_static(body.as_bytes())).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Longest Host header looked at (a DNS name is at most 253 bytes, plus a port).
const MAX_HOST_LEN: usize = 260;

/// The actor named by a `Host` header (`<actor>.<suffix>[:port]`), if any.
pub fn actor_of_host(host: &str, suffix: &str) -> Option<String> {
    if host.len() > MAX_HOST_LEN {
        return None;
    }
    let host =
        host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h);
    let host = host.trim_end_matches('.');
    let actor = host.strip_suffix(suffix)?.strip_suffix('.')?;
    (!actor.is_empty() && !actor.contains('.') && ate_core::resource::check_name(actor).is_ok())
        .then(|| actor.to_owned())
}

/// Actors each peer address is waiting on to resume. Requests for an actor the peer already
/// waits on join that wait (one resume however many requests); a new actor counts against
/// [`RouterConfig::max_resumes_per_client`]. An entry lives only while a request waits.
#[derive(Default)]
pub struct ResumeSlots(std::sync::Mutex<HashMap<IpAddr, HashMap<String, usize>>>);

/// One request waiting for a resume; dropping it ends the wait.
pub struct ResumeSlot {
    table: Arc<ResumeSlots>,
    ip: IpAddr,
    actor: String,
}

impl ResumeSlots {
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, actor: &str, max: usize) -> Option<ResumeSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let actors = m.entry(ip).or_default();
        if !actors.contains_key(actor) && actors.len() >= max {
            if actors.is_empty() {
                m.remove(&ip);
            }
            return None;
        }
        *actors.entry(actor.to_owned()).or_default() += 1;
        Some(ResumeSlot { table: self.clone(), ip, actor: actor.to_owned() })
    }

    /// Peer addresses with a request waiting.
    pub fn peers(&self) -> usize {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Drop for ResumeSlot {
    fn drop(&mut self) {
        let mut m = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(actors) = m.get_mut(&self.ip) {
            if let Some(n) = actors.get_mut(&self.actor) {
                *n -= 1;
                if *n == 0 {
                    actors.remove(&self.actor);
                }
            }
            if actors.is_empty() {
                m.remove(&self.ip);
            }
        }
    }
}

/// The router's shared state.
struct Ctx {
    ctl: Arc<Controller>,
    cfg: RouterConfig,
    resumes: Arc<ResumeSlots>,
}

/// Serves the router on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ctl: Arc<Controller>, cfg: RouterConfig) {
    let ctx = Arc::new(Ctx { ctl: ctl.clone(), cfg: cfg.clone(), resumes: Arc::new(ResumeSlots::default()) });
    let on_event: OnEvent = Arc::new(move |ev| ctl.metrics.http_event("router", ev));
    let handler: Handler = Arc::new(move |req, peer| {
        let ctx = ctx.clone();
        Box::pin(async move { handle(req, peer, &ctx).await })
    });
    crate::http::serve(listener, cfg.http.clone(), "router", on_event, handler).await
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, ctx: &Ctx) -> Response<RouterBody> {
    let resp = match route(req, peer, ctx).await {
        Ok(r) => r,
        Err(e) => {
            ctx.ctl.metrics.router_error(e.reason());
            match &e {
                RouteError::NoActor | RouteError::BadHost | RouteError::TooManyResumes => {
                    debug!(%peer, error = %e, "router")
                }
                _ => warn!(%peer, error = %e, "router"),
            }
            let mut r = text(e.status(), e.public());
            if matches!(e, RouteError::TooManyResumes | RouteError::Unavailable(_)) {
                r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            }
            if matches!(e, RouteError::TooLarge | RouteError::BadBody) {
                r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            }
            r
        }
    };
    ctx.ctl.metrics.routed(resp.status().as_u16());
    resp
}

/// The request's Host (header, or the authority of an absolute-form URI).
fn host_of(req: &Request<Incoming>) -> Result<String, RouteError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h.to_str().map_err(|_| RouteError::BadHost)?.to_owned(),
        (Some(_), Some(_)) => return Err(RouteError::BadHost),
        (None, _) => req.uri().host().ok_or(RouteError::BadHost)?.to_owned(),
    };
    if host.len() > MAX_HOST_LEN {
        return Err(RouteError::BadHost);
    }
    Ok(host)
}

/// A request body on its way upstream.
enum UpBody {
    /// Read whole (small): can be sent again.
    Buffered(Bytes),
    /// Streamed: sent once.
    Streaming(Option<Incoming>),
}

async fn route(
    req: Request<Incoming>,
    peer: SocketAddr,
    ctx: &Ctx,
) -> Result<Response<RouterBody>, RouteError> {
    let cfg = &ctx.cfg;
    let size = req.body().size_hint().exact();
    if size.is_some_and(|n| n > cfg.max_body) {
        return Err(RouteError::TooLarge);
    }
    let host = host_of(&req)?;
    let actor = actor_of_host(&host, &cfg.suffix).ok_or(RouteError::NoActor)?;
    // RUNNING already: no resume, nothing counted against the client.
    let mut inflight = match ctx.ctl.enter_running(&actor).await {
        Some(i) => Some(i),
        None => {
            let _slot = ctx
                .resumes
                .try_take(peer.ip(), &actor, cfg.max_resumes_per_client)
                .ok_or(RouteError::TooManyResumes)?;
            Some(ctx.ctl.acquire(&actor).await?)
        }
    };
    let (mut parts, body) = req.into_parts();
    let mut body = if body.is_end_stream() {
        UpBody::Buffered(Bytes::new())
    } else if size.is_some_and(|n| n <= cfg.buffer_limit) {
        let limited = http_body_util::Limited::new(body, cfg.buffer_limit as usize);
        match tokio::time::timeout(cfg.body_idle_timeout, limited.collect()).await {
            Ok(Ok(b)) => UpBody::Buffered(b.to_bytes()),
            _ => return Err(RouteError::BadBody),
        }
    } else {
        UpBody::Streaming(Some(body))
    };
    parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    let path = parts.uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
    parts.uri = path.parse().map_err(|_| RouteError::BadHost)?;
    // A few attempts: right after a resume (or a reconciliation) the worker's forwarder may
    // refuse a connection it cannot forward yet. Only requests that never reached the
    // workload are retried (a streamed body only before it was sent).
    let mut last = String::new();
    for attempt in 0..4u32 {
        let inf = match inflight.take() {
            Some(i) => i,
            None => ctx.ctl.acquire(&actor).await?,
        };
        let upstream = ctx
            .ctl
            .upstream(&inf.endpoint)
            .await
            .map_err(|_| RouteError::EndpointRefused(inf.endpoint.clone()))?;
        match forward(&parts, &mut body, &upstream, cfg).await {
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                let body = Guarded { inner: b, guard: inf }.boxed();
                return Ok(Response::from_parts(p, body));
            }
            Err(Attempt::Final(e)) => return Err(e),
            Err(Attempt::Retry(e)) => {
                debug!(actor, attempt, error = %e, "upstream attempt failed");
                last = e;
                let endpoint = inf.endpoint.clone();
                drop(inf);
                ctx.ctl.revalidate(&actor, &endpoint).await;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    Err(RouteError::Upstream(last))
}

/// How one upstream attempt failed.
enum Attempt {
    /// Nothing reached the workload: try again.
    Retry(String),
    Final(RouteError),
}

/// An HTTP/1.1 connection over `io`, driven by a task of its own.
async fn http1<T>(io: T) -> Result<hyper::client::conn::http1::SendRequest<BoxBody<Bytes, BoxError>>, Attempt>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Attempt::Retry(format!("handshake: {e}")))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

async fn forward(
    parts: &hyper::http::request::Parts,
    body: &mut UpBody,
    upstream: &Upstream,
    cfg: &RouterConfig,
) -> Result<Response<Incoming>, Attempt> {
    let mut sender = match upstream {
        Upstream::Loopback(addr) => {
            let stream = match tokio::time::timeout(
                cfg.upstream_connect_timeout,
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(Attempt::Retry(format!("connecting {addr}: {e}"))),
                Err(_) => return Err(Attempt::Retry(format!("connecting {addr}: timed out"))),
            };
            let _ = stream.set_nodelay(true);
            http1(stream).await?
        }
        // Another host: TCP + TLS (our client certificate, the worker's checked against the
        // pool's CA and the front's host) within the same connect deadline.
        Upstream::Tls(front) => {
            let tls = match tokio::time::timeout(cfg.upstream_connect_timeout, front.connect()).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(Attempt::Retry(e)),
                Err(_) => return Err(Attempt::Retry(format!("connecting {}: timed out", front.addr))),
            };
            http1(tls).await?
        }
    };
    let (up, retryable): (BoxBody<Bytes, BoxError>, bool) = match body {
        UpBody::Buffered(b) => (Full::new(b.clone()).map_err(|never| match never {}).boxed(), true),
        UpBody::Streaming(s) => {
            let Some(incoming) = s.take() else {
                return Err(Attempt::Final(RouteError::Upstream("streamed body already sent".into())));
            };
            let limited = http_body_util::Limited::new(incoming, cfg.max_body as usize);
            (IdleTimeoutBody::new(limited, cfg.body_idle_timeout).boxed(), false)
        }
    };
    let mut req = Request::from_parts(parts.clone(), up);
    *req.version_mut() = hyper::Version::HTTP_11;
    match tokio::time::timeout(cfg.upstream_timeout, sender.send_request(req)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) if retryable => Err(Attempt::Retry(format!("{e}"))),
        Ok(Err(e)) => Err(Attempt::Final(RouteError::Upstream(format!("{e}")))),
        Err(_) => Err(Attempt::Final(RouteError::UpstreamTimeout)),
    }
}

/// A request body that fails when no piece arrives for `timeout`.
struct IdleTimeoutBody<B> {
    inner: B,
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleTimeoutBody<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        IdleTimeoutBody { inner, timeout, sleep: Box::pin(tokio::time::sleep(timeout)) }
    }
}

/// The request body stalled.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled")]
struct BodyStalled;

impl<B> Body for IdleTimeoutBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                let next = tokio::time::Instant::now() + self.timeout;
                self.sleep.as_mut().reset(next);
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => match self.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled)))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_slots_count_distinct_actors_per_peer_and_forget_them() {
        let slots = Arc::new(ResumeSlots::default());
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let s1 = slots.try_take(a, "x", 2).unwrap();
        let same: Vec<_> = (0..10).map(|_| slots.try_take(a, "x", 2).unwrap()).collect();
        let s2 = slots.try_take(a, "y", 2).unwrap();
        assert!(slots.try_take(a, "z", 2).is_none(), "a third actor for the same peer");
        let other = slots.try_take(b, "z", 2).unwrap();
        drop((s1, same));
        let s3 = slots.try_take(a, "z", 2).unwrap();
        assert_eq!(slots.peers(), 2);
        drop((s2, s3, other));
        assert_eq!(slots.peers(), 0, "nothing kept once no request waits");
    }

    #[test]
    fn hosts_name_actors() {
        assert_eq!(actor_of_host("a1.actors.local", "actors.local").as_deref(), Some("a1"));
        assert_eq!(actor_of_host("a1.actors.local:8080", "actors.local").as_deref(), Some("a1"));
        assert_eq!(actor_of_host("a1.actors.local.", "actors.local").as_deref(), Some("a1"));
        assert_eq!(actor_of_host("x.a1.actors.local", "actors.local"), None);
        assert_eq!(actor_of_host("actors.local", "actors.local"), None);
        assert_eq!(actor_of_host("a1.other.local", "actors.local"), None);
        assert_eq!(actor_of_host("", "actors.local"), None);
        assert_eq!(actor_of_host("a%2f.actors.local", "actors.local"), None);
        assert_eq!(actor_of_host(&format!("{}.actors.local", "a".repeat(64)), "actors.local"), None);
        assert_eq!(actor_of_host(&format!("{}.actors.local", "a".repeat(300)), "actors.local"), None);
        assert_eq!(actor_of_host("a1.actors.local/x", "actors.local"), None);
    }
}
