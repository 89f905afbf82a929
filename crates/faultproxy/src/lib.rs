//! # faultproxy: a fault-injecting HTTP/1.1 proxy for tests
//!
//! Listens on a loopback port, forwards every request to one loopback upstream (an S3 server
//! such as s3s-fs, a GCS or Azure emulator) and applies [fault rules](rules) that tests set at
//! runtime through a control endpoint on a second port:
//!
//! * `PUT /rules` — replace the rules (a JSON list, see [`rules`]); counters start at zero;
//! * `GET /rules` — the rules in force; `DELETE /rules` — no rules (plain forwarding);
//! * `GET /stats` — requests seen and forwarded, per-rule `matches` / `applied`, and the
//!   last requests (`method`, `target`, the rule applied, if any).
//!
//! Requests are forwarded **faithfully**: method, request target, every header (the `Host`
//! included) and the body go upstream unchanged, one upstream connection per request, so
//! signatures computed by the client for the proxy's address (SigV4 signs `Host`) stay valid.
//! The client is simply pointed at the proxy as its endpoint.
//!
//! Actions ([`rules::Action`]): answer with a status (500, 503, 429 with `Retry-After`; before
//! or after forwarding), stall before forwarding, truncate the response body (keeping or
//! rewriting `Content-Length`), reset the connection without an answer, or cut the request
//! body midway. Everything listens and connects on loopback addresses only.

pub mod rules;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};

use crate::rules::{Action, Rule, RuleSpec};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// How many recent requests `GET /stats` reports.
const LOG_LEN: usize = 4096;

/// Where the proxy listens and where it forwards.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy address (port 0: any free port).
    pub listen: SocketAddr,
    /// Control endpoint address (port 0: any free port).
    pub control: SocketAddr,
    /// The upstream server.
    pub upstream: SocketAddr,
}

/// Errors starting the proxy.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "{what} address {addr} is not a loopback address (faultproxy only serves and forwards on loopback)"
    )]
    NotLoopback { what: &'static str, addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// One request as `GET /stats` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Index of the rule applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<&'static str>,
}

#[derive(Default)]
struct Inner {
    rules: Vec<Rule>,
    requests: u64,
    forwarded: u64,
    log: VecDeque<Seen>,
}

/// The proxy's shared state: rules and counters.
#[derive(Default)]
pub struct State {
    inner: Mutex<Inner>,
}

#[derive(Serialize)]
struct RuleStats<'a> {
    #[serde(flatten)]
    spec: &'a RuleSpec,
    matches: u64,
    applied: u64,
}

#[derive(Serialize)]
struct Stats<'a> {
    requests: u64,
    forwarded: u64,
    rules: Vec<RuleStats<'a>>,
    recent: &'a VecDeque<Seen>,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replace the rules.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.lock().rules = rules;
    }

    fn decide(&self, method: &Method, target: &str) -> Option<(usize, Action)> {
        let mut g = self.lock();
        g.requests += 1;
        let d = rules::decide(&mut g.rules, method.as_str(), target);
        if g.log.len() == LOG_LEN {
            g.log.pop_front();
        }
        g.log.push_back(Seen {
            method: method.to_string(),
            target: target.to_string(),
            rule: d.as_ref().map(|d| d.0),
            action: d.as_ref().map(|d| d.1.name()),
        });
        d
    }

    fn count_forwarded(&self) {
        self.lock().forwarded += 1;
    }

    /// `GET /stats` as JSON.
    pub fn stats_json(&self) -> Vec<u8> {
        let g = self.lock();
        let stats = Stats {
            requests: g.requests,
            forwarded: g.forwarded,
            rules: g
                .rules
                .iter()
                .map(|r| RuleStats { spec: &r.spec, matches: r.matches, applied: r.applied })
                .collect(),
            recent: &g.log,
        };
        serde_json::to_vec(&stats).unwrap_or_default()
    }

    fn rules_json(&self) -> Vec<u8> {
        let g = self.lock();
        serde_json::to_vec(&g.rules.iter().map(|r| &r.spec).collect::<Vec<_>>()).unwrap_or_default()
    }
}

/// A started proxy.
pub struct Running {
    pub listen: SocketAddr,
    pub control: SocketAddr,
    pub state: Arc<State>,
}

/// Bind both listeners and serve them on the current tokio runtime.
pub async fn start(cfg: Config) -> Result<Running, StartError> {
    for (what, addr) in [("listen", cfg.listen), ("control", cfg.control), ("upstream", cfg.upstream)] {
        if !addr.ip().is_loopback() {
            return Err(StartError::NotLoopback { what, addr });
        }
    }
    let bind = |addr| async move {
        TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
    };
    let (proxy, control) = (bind(cfg.listen).await?, bind(cfg.control).await?);
    let running = Running {
        listen: proxy.local_addr().map_err(|source| StartError::Bind { addr: cfg.listen, source })?,
        control: control.local_addr().map_err(|source| StartError::Bind { addr: cfg.control, source })?,
        state: Arc::new(State::default()),
    };
    let state = running.state.clone();
    let upstream = cfg.upstream;
    tokio::spawn(async move {
        loop {
            match proxy.accept().await {
                Ok((tcp, _)) => {
                    tokio::spawn(proxy_connection(tcp, upstream, state.clone()));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            }
        }
    });
    let state = running.state.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = control.accept().await else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| control_request(req, state.clone()));
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    Ok(running)
}

/// Serve one client connection. A duplicate of its socket is kept so that a reset can set
/// `SO_LINGER` to zero: the close that follows then sends RST instead of FIN.
async fn proxy_connection(tcp: TcpStream, upstream: SocketAddr, state: Arc<State>) {
    let dup = match tcp.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
        Ok((dup, s)) => match TcpStream::from_std(s) {
            Ok(tcp) => (Arc::new(dup), tcp),
            Err(e) => return tracing::warn!(error = %e, "cannot serve connection"),
        },
        Err(e) => return tracing::warn!(error = %e, "cannot serve connection"),
    };
    let (sock, tcp) = dup;
    let svc = service_fn(move |req| {
        let (state, sock) = (state.clone(), sock.clone());
        async move { proxy_request(req, upstream, &state, &sock).await }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await
    {
        tracing::debug!(error = %e, "client connection ended");
    }
}

/// The error that makes hyper drop a client connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("faultproxy: {0}")]
struct Injected(&'static str);

fn reset(sock: &std::net::TcpStream) {
    let _ = socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO));
}

fn incoming(b: Incoming) -> ProxyBody {
    b.map_err(|e| Box::new(e) as BoxError).boxed_unsync()
}

fn full(b: impl Into<Bytes>) -> ProxyBody {
    Full::new(b.into()).map_err(|never: Infallible| match never {}).boxed_unsync()
}

async fn proxy_request(
    req: Request<Incoming>,
    upstream: SocketAddr,
    state: &State,
    sock: &std::net::TcpStream,
) -> Result<Response<ProxyBody>, Injected> {
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str()).to_string();
    let decision = state.decide(req.method(), &target);
    let Some((_, action)) = decision else {
        return Ok(forward_or_502(upstream, req, state).await);
    };
    match action {
        Action::Status { status, retry_after_secs, after_forward } => {
            if after_forward {
                let resp = forward_or_502(upstream, req, state).await;
                let _ = resp.into_body().collect().await; // let the upstream finish
            } else {
                let _ = req.into_body().collect().await;
            }
            Ok(status_response(status, retry_after_secs))
        }
        Action::Stall { ms } => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(forward_or_502(upstream, req, state).await)
        }
        Action::Truncate { after_bytes, rewrite_length } => {
            let resp = forward_or_502(upstream, req, state).await;
            let (mut parts, body) = resp.into_parts();
            if rewrite_length {
                let declared = parts
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(u64::MAX);
                parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(after_bytes.min(declared)));
            }
            Ok(Response::from_parts(parts, truncated(body, after_bytes, !rewrite_length)))
        }
        Action::Reset => {
            reset(sock);
            Err(Injected("connection reset"))
        }
        Action::DropRequestBody { after_bytes } => {
            let req = req.map(|b| truncated(incoming(b), after_bytes, true));
            let _ = forward(upstream, req).await; // fails: its body errs midway
            reset(sock);
            Err(Injected("request body dropped midway"))
        }
    }
}

/// `body` cut after `limit` bytes: the body then ends with an error (`fail`, so the peer sees
/// a broken transfer) or cleanly. A body no longer than `limit` passes unchanged.
fn truncated(body: ProxyBody, limit: u64, fail: bool) -> ProxyBody {
    Truncated { inner: body, left: limit, fail, done: false }.boxed_unsync()
}

struct Truncated {
    inner: ProxyBody,
    left: u64,
    fail: bool,
    done: bool,
}

impl hyper::body::Body for Truncated {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let frame = match std::pin::Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => {
                this.done = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => {
                this.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(_) if this.left == 0 => {
                this.done = true;
                let e: BoxError = Box::new(Injected("body truncated"));
                Poll::Ready(this.fail.then_some(Err(e)))
            }
            Ok(mut data) => {
                let n = data.len() as u64;
                data.truncate(n.min(this.left) as usize);
                this.left = this.left.saturating_sub(n);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(other) => Poll::Ready(Some(Ok(other))),
        }
    }
}

async fn forward_or_502(upstream: SocketAddr, req: Request<Incoming>, state: &State) -> Response<ProxyBody> {
    match forward(upstream, req.map(incoming)).await {
        Ok(r) => {
            state.count_forwarded();
            r.map(incoming)
        }
        Err(e) => {
            let mut r = Response::new(full(format!("faultproxy: upstream {upstream}: {e}")));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

/// Send `req` unchanged over a fresh connection to `upstream`.
async fn forward(upstream: SocketAddr, req: Request<ProxyBody>) -> Result<Response<Incoming>, BoxError> {
    let tcp = TcpStream::connect(upstream).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended");
        }
    });
    Ok(sender.send_request(req).await?)
}

fn status_response(status: u16, retry_after_secs: Option<u64>) -> Response<ProxyBody> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let s3_code = match status {
        503 => "SlowDown",
        429 => "TooManyRequests",
        500 => "InternalError",
        _ => "InjectedFault",
    };
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{s3_code}</Code>\
         <Message>fault injected by ateom-faultproxy</Message></Error>"
    );
    let mut r = Response::new(full(body));
    *r.status_mut() = code;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/xml"));
    if let Some(secs) = retry_after_secs {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    r
}

async fn control_request(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: Vec<u8>| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    };
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    Ok(match (method, path.as_str()) {
        (Method::PUT, "/rules") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        format!("{{\"error\":{:?}}}", e.to_string()).into_bytes(),
                    ));
                }
            };
            match rules::parse(&body) {
                Ok(rules) => {
                    let n = rules.len();
                    state.set_rules(rules);
                    tracing::info!(rules = n, "rules replaced");
                    reply(StatusCode::OK, format!("{{\"rules\":{n}}}").into_bytes())
                }
                Err(e) => reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::to_vec(&serde_json::json!({"error": e.to_string()})).unwrap_or_default(),
                ),
            }
        }
        (Method::DELETE, "/rules") => {
            state.set_rules(Vec::new());
            reply(StatusCode::OK, b"{\"rules\":0}".to_vec())
        }
        (Method::GET, "/rules") => reply(StatusCode::OK, state.rules_json()),
        (Method::GET, "/stats") => reply(StatusCode::OK, state.stats_json()),
        _ => reply(StatusCode::NOT_FOUND, b"{\"error\":\"PUT|GET|DELETE /rules, GET /stats\"}".to_vec()),
    })
}
