//! The router: an HTTP/1.1 reverse proxy on a loopback port.
//!
//! `Host: <actor>.<suffix>` → [`Controller::acquire`] (resume if needed — one resume per
//! actor however many requests arrive; the others wait, bounded) → forward to the worker's
//! `host_endpoint`. Unknown actor: 404. Failed resume: 503 with the reason (a CRASHED
//! actor's reason) as the body.
//!
//! Upstream connections are never reused: each request gets a fresh connection and is sent
//! with `Connection: close`. gVisor cannot checkpoint while a TCP connection into the sandbox
//! is open, so an idle keep-alive connection held by the router would make every pause
//! fail. The request counts as in flight until its response body is fully sent (or
//! dropped), and a pause waits for that.

use std::convert::Infallible;
use std::net::SocketAddr;
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

use crate::controller::{Controller, CtlError, Inflight};

pub type RouterBody = BoxBody<Bytes, hyper::Error>;

/// Largest request body the router buffers (it must be able to re-send a request whose
/// first upstream attempt was refused).
const MAX_BODY: usize = 16 << 20;

fn text(status: StatusCode, body: String) -> Response<RouterBody> {
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// The actor named by a `Host` header (`<actor>.<suffix>[:port]`), if any.
pub fn actor_of_host(host: &str, suffix: &str) -> Option<String> {
    let host =
        host.rsplit_once(':').filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit())).map_or(host, |(h, _)| h);
    let host = host.trim_end_matches('.');
    let actor = host.strip_suffix(suffix)?.strip_suffix('.')?;
    (!actor.is_empty() && !actor.contains('.')).then(|| actor.to_owned())
}

/// Serves the router on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, ctl: Arc<Controller>, suffix: String) {
    let suffix = Arc::new(suffix);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "router accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (ctl, suffix) = (ctl.clone(), suffix.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let (ctl, suffix) = (ctl.clone(), suffix.clone());
                async move { Ok::<_, Infallible>(handle(req, ctl, &suffix).await) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
            {
                debug!(error = %e, "router connection");
            }
        });
    }
}

async fn handle(req: Request<Incoming>, ctl: Arc<Controller>, suffix: &str) -> Response<RouterBody> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().host().map(str::to_owned))
        .unwrap_or_default();
    let Some(actor) = actor_of_host(&host, suffix) else {
        ctl.metrics.routed(404);
        return text(
            StatusCode::NOT_FOUND,
            format!("no actor for host {host:?} (expected <actor>.{suffix})\n"),
        );
    };
    let resp = match route(req, &ctl, &actor).await {
        Ok(r) => r,
        Err(e) => {
            let status = match &e {
                CtlError::NotFound { .. } => StatusCode::NOT_FOUND,
                CtlError::Invalid(_) => StatusCode::BAD_REQUEST,
                CtlError::Worker(_) => StatusCode::BAD_GATEWAY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            text(status, format!("{e}\n"))
        }
    };
    ctl.metrics.routed(resp.status().as_u16());
    resp
}

async fn route(
    req: Request<Incoming>,
    ctl: &Arc<Controller>,
    actor: &str,
) -> Result<Response<RouterBody>, CtlError> {
    let (mut parts, body) = req.into_parts();
    let body = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| CtlError::Invalid(format!("request body: {e}")))?
        .to_bytes();
    parts.headers.insert(header::CONNECTION, header::HeaderValue::from_static("close"));
    let path = parts.uri.path_and_query().map_or("/".to_owned(), |p| p.as_str().to_owned());
    parts.uri = path.parse().map_err(|e| CtlError::Invalid(format!("uri: {e}")))?;
    // A few attempts: right after a resume (or a reconciliation) the worker's forwarder may
    // refuse a connection it cannot forward yet. Only requests that never reached the
    // workload are retried.
    let mut last = String::new();
    for attempt in 0..4 {
        let inflight = ctl.acquire(actor).await?;
        match forward(&parts, body.clone(), &inflight.endpoint).await {
            Ok(resp) => {
                let (p, b) = resp.into_parts();
                let body = GuardedBody { inner: b, _inflight: inflight }.boxed();
                return Ok(Response::from_parts(p, body));
            }
            Err(e) => {
                debug!(actor, attempt, error = %e, "upstream attempt failed");
                last = e;
                let endpoint = inflight.endpoint.clone();
                drop(inflight);
                ctl.revalidate(actor, &endpoint).await;
                tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
            }
        }
    }
    Err(CtlError::Unavailable(format!("actor {actor}'s workload did not answer: {last}")))
}

async fn forward(
    parts: &hyper::http::request::Parts,
    body: Bytes,
    endpoint: &str,
) -> Result<Response<Incoming>, String> {
    let addr: SocketAddr = endpoint.parse().map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::from_parts(parts.clone(), Full::new(body));
    *req.version_mut() = hyper::Version::HTTP_11;
    sender.send_request(req).await.map_err(|e| format!("{e}"))
}

/// A response body that keeps its request counted as in flight until it is done.
struct GuardedBody {
    inner: Incoming,
    _inflight: Inflight,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
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
    fn hosts_name_actors() {
        assert_eq!(actor_of_host("a1.actors.local", "actors.local").as_deref(), Some("a1"));
        assert_eq!(actor_of_host("a1.actors.local:8080", "actors.local").as_deref(), Some("a1"));
        assert_eq!(actor_of_host("a1.actors.local.", "actors.local").as_deref(), Some("a1"));
        assert_eq!(actor_of_host("x.a1.actors.local", "actors.local"), None);
        assert_eq!(actor_of_host("actors.local", "actors.local"), None);
        assert_eq!(actor_of_host("a1.other.local", "actors.local"), None);
        assert_eq!(actor_of_host("", "actors.local"), None);
    }
}
