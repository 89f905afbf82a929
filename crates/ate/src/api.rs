//! The admin API of `ate serve`: small HTTP/1.1 + JSON, and its client (what the CLI uses).
//!
//! Every request is authenticated first ([`crate::auth`]): `Authorization: Bearer <token>`,
//! 401 without or with a wrong token; the read token may call the `GET` routes, the admin
//! token everything (403 otherwise). Then, before any route runs: a body is refused unless the
//! route takes one (400), it is at most [`ApiLimits::max_body`] (413), of an accepted
//! Content-Type (415: resources as `application/yaml`, `application/x-yaml`, `text/yaml` or
//! `application/json`; the other bodies `application/json`; so a web page cannot post
//! `text/plain` forms here), and it arrives within [`ApiLimits::body_timeout`] (408).
//! Connections are bounded by [`crate::http`]. These refusals name nothing internal.
//!
//! | method and path | role | what |
//! |---|---|---|
//! | `POST /v1/apply` (body: YAML or JSON resources) | admin | apply pools, templates, actors |
//! | `GET /v1/actors`, `GET /v1/actors/<name>` | read | actor records |
//! | `POST /v1/actors` `{"name":…,"template":…}` | admin | create an actor (SUSPENDED on the golden snapshot) |
//! | `POST /v1/actors/<name>/resume\|pause\|suspend` | admin | explicit transitions (resume also retries a CRASHED actor; with body `{"from_snapshot": ID}` it restores exactly that snapshot, possibly older state) |
//! | `GET /v1/actors/<name>/snapshots` | read | the actor's snapshots that exist: local on each worker (complete or quarantined), durable, golden; newest first, with ages |
//! | `DELETE /v1/actors/<name>` | admin | delete it and its durable snapshots |
//! | `GET /v1/workers`, `GET /v1/templates`, `GET /v1/pools` | read | the rest of the state (environment values of templates only for the admin token) |
//! | `GET /v1/status` | read | the replica that answered, the store, and which replica leads (the leadership lease's holder and how long it lasts) |
//! | `GET /metrics` | read | Prometheus text (also served without a token, and nothing else, on `--metrics ADDR`) |
//! | `GET /healthz` | read | `ok` |
//!
//! The table is [`routes`]; dispatch goes through it. Errors of the routes themselves are
//! `{"error": "..."}` with 400 (invalid), 404 (unknown), 409 (not allowed in this state), 503
//! (crashed / no capacity / timed out), 502 (a worker failed).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::debug;

use crate::auth::{Auth, AuthError, Role};
use crate::controller::{Controller, CtlError};
use crate::http::{Handler, HttpBody, Limits as HttpLimits, OnEvent};

/// An actor as the API shows it: the record plus its store version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorView {
    pub version: u64,
    #[serde(flatten)]
    pub actor: ate_core::Actor,
    /// Set when the actor's newest state is on a worker that does not answer: which worker
    /// and host, for how long, and its newest durable snapshot with its age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

/// A worker as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerView {
    pub name: String,
    pub pool: String,
    /// Its unix socket (a worker on this host; empty for one on another host).
    pub socket: String,
    /// `https://host:port` of a worker on another host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `host:port` of its TLS front (where the router reaches its workload).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward: Option<String>,
    pub healthy: bool,
    /// Who holds its lease: "actor a1", "golden build of t", or null.
    pub holder: Option<String>,
    /// What the worker said runs on it.
    pub running: String,
    pub backend: Option<String>,
    pub host_id: Option<String>,
    pub endpoint: Option<String>,
    pub error: Option<String>,
    /// Not answering: since when (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_since_ms: Option<u64>,
}

fn json_response(status: StatusCode, v: &Value) -> Response<HttpBody> {
    let mut r = Response::new(full(Bytes::from(serde_json::to_vec_pretty(v).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn full(b: Bytes) -> HttpBody {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn err_response(e: &CtlError) -> Response<HttpBody> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &json!({ "error": e.to_string() }))
}

/// What a route takes as its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (a non-empty one is refused).
    None,
    /// JSON (`application/json`).
    Json,
    /// Optional JSON (`resume`'s `{"from_snapshot": ID}`).
    OptionalJson,
    /// Resources: YAML or JSON (`application/yaml`, `application/x-yaml`, `text/yaml`,
    /// `application/json`).
    Resources,
}

/// Every route of the admin API. Dispatch goes through this table (so a route cannot exist
/// without its role), and the hostile-input suite enumerates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteId {
    Healthz,
    Metrics,
    Apply,
    ListActors,
    CreateActor,
    GetActor,
    ActorSnapshots,
    Resume,
    Pause,
    Suspend,
    DeleteActor,
    Workers,
    Templates,
    Pools,
    Status,
}

/// One route: method, path pattern (`{name}` is one path segment), body.
#[derive(Clone, Debug)]
pub struct Route {
    pub method: Method,
    pub pattern: &'static str,
    pub id: RouteId,
    pub body: BodyKind,
}

impl Route {
    /// Who may call it: `GET` routes need the read role, everything else admin.
    pub fn role(&self) -> Role {
        if self.method == Method::GET { Role::Read } else { Role::Admin }
    }

    /// The path with `{name}` replaced.
    pub fn path_for(&self, name: &str) -> String {
        self.pattern.replace("{name}", name)
    }

    fn matches<'a>(&self, segs: &[&'a str]) -> Option<Option<&'a str>> {
        let pat: Vec<&str> = self.pattern.split('/').filter(|s| !s.is_empty()).collect();
        if pat.len() != segs.len() {
            return None;
        }
        let mut name = None;
        for (p, s) in pat.iter().zip(segs) {
            if *p == "{name}" {
                name = Some(*s);
            } else if p != s {
                return None;
            }
        }
        Some(name)
    }
}

macro_rules! route {
    ($m:ident $p:literal $id:ident $b:ident) => {
        Route { method: Method::$m, pattern: $p, id: RouteId::$id, body: BodyKind::$b }
    };
}

/// The table.
pub fn routes() -> Vec<Route> {
    vec![
        route!(GET "/healthz" Healthz None),
        route!(GET "/metrics" Metrics None),
        route!(POST "/v1/apply" Apply Resources),
        route!(GET "/v1/actors" ListActors None),
        route!(POST "/v1/actors" CreateActor Json),
        route!(GET "/v1/actors/{name}" GetActor None),
        route!(GET "/v1/actors/{name}/snapshots" ActorSnapshots None),
        route!(POST "/v1/actors/{name}/resume" Resume OptionalJson),
        route!(POST "/v1/actors/{name}/pause" Pause None),
        route!(POST "/v1/actors/{name}/suspend" Suspend None),
        route!(DELETE "/v1/actors/{name}" DeleteActor None),
        route!(GET "/v1/workers" Workers None),
        route!(GET "/v1/templates" Templates None),
        route!(GET "/v1/pools" Pools None),
        route!(GET "/v1/status" Status None),
    ]
}

/// Bounds of the admin API's requests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request body (`--max-body`); larger ones answer 413.
    pub max_body: usize,
    /// A request body must arrive within this long (else 408).
    pub body_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits { max_body: 1 << 20, body_timeout: Duration::from_secs(30) }
    }
}

/// Why the API refused a request before any route ran. The messages name nothing internal.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("this token may only read (GET); {method} needs the admin token")]
    Forbidden { method: Method },
    #[error("no such route")]
    NoRoute,
    #[error("request body larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("unsupported Content-Type {found:?}: this route takes {accepted}")]
    UnsupportedType { found: String, accepted: &'static str },
    #[error("this route takes no request body")]
    UnexpectedBody,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("reading the request body failed")]
    BodyRead,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden { .. } => StatusCode::FORBIDDEN,
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UnsupportedType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::UnexpectedBody | Refusal::BodyRead => StatusCode::BAD_REQUEST,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    fn response(&self) -> Response<HttpBody> {
        let mut r = json_response(self.status(), &json!({ "error": self.to_string() }));
        if matches!(self, Refusal::Unauthenticated(_)) {
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer realm=\"ate\""));
        }
        if matches!(self, Refusal::TooLarge { .. } | Refusal::BodyTimeout) {
            // The rest of the body is not read: the connection cannot be reused.
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        r
    }
}

const RESOURCE_TYPES: &[&str] = &["application/yaml", "application/x-yaml", "text/yaml", "application/json"];

/// The media type of a Content-Type header, lower case, without parameters.
fn media_type(headers: &hyper::HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

/// Whether the request announces a body (a positive Content-Length, or chunked).
fn has_body(req: &Request<Incoming>) -> bool {
    match req.body().size_hint().exact() {
        Some(n) => n > 0,
        None => true,
    }
}

/// Reads the body of a request that passed the checks, bounded in size and time.
async fn read_body(body: Incoming, limits: &ApiLimits) -> Result<Bytes, Refusal> {
    let limited = http_body_util::Limited::new(body, limits.max_body);
    match tokio::time::timeout(limits.body_timeout, limited.collect()).await {
        Err(_) => Err(Refusal::BodyTimeout),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(Refusal::TooLarge { max: limits.max_body })
        }
        Ok(Err(_)) => Err(Refusal::BodyRead),
    }
}

/// Authentication, route, role, body checks (in that order: nothing about the routes or
/// the body is revealed to a caller without a token), then the route.
async fn handle(
    req: Request<Incoming>,
    ctl: Arc<Controller>,
    auth: Arc<Auth>,
    limits: ApiLimits,
) -> Response<HttpBody> {
    let r = match check(req, &auth, &limits).await {
        Ok((route, role, name, body)) => dispatch(route, role, name, body, &ctl).await,
        Err(refusal) => {
            debug!(error = %refusal, "API request refused");
            refusal.response()
        }
    };
    ctl.metrics.api_answered(r.status().as_u16());
    r
}

async fn check(
    req: Request<Incoming>,
    auth: &Auth,
    limits: &ApiLimits,
) -> Result<(RouteId, Role, String, Bytes), Refusal> {
    let role = auth.authenticate(req.headers())?;
    let path = req.uri().path().to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let table = routes();
    let (route, name) = table
        .iter()
        .filter(|r| r.method == req.method())
        .find_map(|r| r.matches(&segs).map(|n| (r, n.unwrap_or_default().to_owned())))
        .ok_or(Refusal::NoRoute)?;
    if role < route.role() {
        return Err(Refusal::Forbidden { method: req.method().clone() });
    }
    if !has_body(&req) {
        return Ok((route.id, role, name, Bytes::new()));
    }
    if let Some(n) = req.body().size_hint().exact()
        && n > limits.max_body as u64
    {
        return Err(Refusal::TooLarge { max: limits.max_body });
    }
    let accepted: &[&str] = match route.body {
        BodyKind::None => return Err(Refusal::UnexpectedBody),
        BodyKind::Json | BodyKind::OptionalJson => &["application/json"],
        BodyKind::Resources => RESOURCE_TYPES,
    };
    let found = media_type(req.headers()).unwrap_or_default();
    if !accepted.contains(&found.as_str()) {
        return Err(Refusal::UnsupportedType {
            found: found.chars().take(64).collect(),
            accepted: if route.body == BodyKind::Resources {
                "application/yaml, application/x-yaml, text/yaml or application/json"
            } else {
                "application/json"
            },
        });
    }
    let body = read_body(req.into_body(), limits).await?;
    Ok((route.id, role, name, body))
}

async fn dispatch(
    route: RouteId,
    role: Role,
    name: String,
    body: Bytes,
    ctl: &Arc<Controller>,
) -> Response<HttpBody> {
    let name = name.as_str();
    let r: Result<(StatusCode, Value), CtlError> = async {
        match route {
            RouteId::Healthz => Ok((StatusCode::OK, json!("ok"))),
            RouteId::Metrics => Err(CtlError::Invalid("metrics".into())), // answered below
            RouteId::Apply => {
                let text = std::str::from_utf8(&body)
                    .map_err(|_| CtlError::Invalid("resources must be UTF-8 text".into()))?;
                let resources =
                    ate_core::parse_resources(text).map_err(|e| CtlError::Invalid(e.to_string()))?;
                let out = ctl.apply(resources).await?;
                Ok((StatusCode::OK, json!({ "applied": out })))
            }
            RouteId::ListActors => {
                let all = ctl.actors().await?;
                let notes = ctl.unavailable_notes(all.iter().map(|a| &a.value)).await;
                let v: Vec<ActorView> = all
                    .into_iter()
                    .zip(notes)
                    .map(|(a, unavailable)| ActorView { version: a.version, actor: a.value, unavailable })
                    .collect();
                Ok((StatusCode::OK, serde_json::to_value(v).unwrap_or_default()))
            }
            RouteId::CreateActor => {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Create {
                    name: String,
                    template: String,
                }
                let c: Create =
                    serde_json::from_slice(&body).map_err(|e| CtlError::Invalid(format!("body: {e}")))?;
                ate_core::resource::check_name(&c.template)
                    .map_err(|p| CtlError::Invalid(format!("template name {p}")))?;
                ctl.create_actor(&c.name, &c.template, Duration::from_secs(120)).await?;
                let a = ctl.actor(&c.name).await?;
                Ok((StatusCode::CREATED, view(ctl, a).await))
            }
            RouteId::GetActor => Ok((StatusCode::OK, view(ctl, ctl.actor(name).await?).await)),
            RouteId::ActorSnapshots => Ok((
                StatusCode::OK,
                serde_json::to_value(ctl.actor_snapshots(name).await?).unwrap_or_default(),
            )),
            RouteId::Resume => {
                #[derive(Deserialize, Default)]
                #[serde(deny_unknown_fields)]
                struct ResumeBody {
                    #[serde(default)]
                    from_snapshot: Option<String>,
                }
                let resume_body: ResumeBody = if body.iter().all(u8::is_ascii_whitespace) {
                    ResumeBody::default()
                } else {
                    serde_json::from_slice(&body).map_err(|e| CtlError::Invalid(format!("body: {e}")))?
                };
                match resume_body.from_snapshot.as_deref() {
                    Some(id) => ctl.resume_from(name, id).await?,
                    None => ctl.resume(name).await?,
                };
                Ok((StatusCode::OK, view(ctl, ctl.actor(name).await?).await))
            }
            RouteId::Pause => {
                ctl.pause(name).await?;
                Ok((StatusCode::OK, view(ctl, ctl.actor(name).await?).await))
            }
            RouteId::Suspend => {
                ctl.suspend(name).await?;
                Ok((StatusCode::OK, view(ctl, ctl.actor(name).await?).await))
            }
            RouteId::DeleteActor => {
                ctl.delete(name).await?;
                Ok((StatusCode::OK, json!({ "deleted": name })))
            }
            RouteId::Workers => {
                Ok((StatusCode::OK, serde_json::to_value(workers(ctl).await?).unwrap_or_default()))
            }
            RouteId::Templates => {
                let mut t: Vec<_> = ctl.templates().await?.into_iter().map(|t| t.value).collect();
                if role < Role::Admin {
                    // Environment values may be secrets: only the admin token sees them.
                    for c in t.iter_mut().flat_map(|t| t.spec.containers.iter_mut()) {
                        c.env.values_mut().for_each(|v| *v = "<redacted>".into());
                    }
                }
                Ok((StatusCode::OK, serde_json::to_value(t).unwrap_or_default()))
            }
            RouteId::Pools => {
                let p: Vec<_> = ctl.pools().await?.into_iter().map(|p| p.value).collect();
                Ok((StatusCode::OK, serde_json::to_value(p).unwrap_or_default()))
            }
            RouteId::Status => {
                Ok((StatusCode::OK, serde_json::to_value(ctl.status().await?).unwrap_or_default()))
            }
        }
    }
    .await;
    if route == RouteId::Metrics {
        return metrics_response(ctl).await;
    }
    match r {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => err_response(&e),
    }
}

async fn metrics_response(ctl: &Controller) -> Response<HttpBody> {
    let mut r = Response::new(full(Bytes::from(metrics_text(ctl).await)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
    r
}

/// Serves the admin API on `listener`.
pub async fn serve(
    listener: TcpListener,
    ctl: Arc<Controller>,
    auth: Auth,
    limits: ApiLimits,
    http: HttpLimits,
) {
    let auth = Arc::new(auth);
    let c2 = ctl.clone();
    let on_event: OnEvent = Arc::new(move |ev| c2.metrics.http_event("api", ev));
    let handler: Handler = Arc::new(move |req, _peer| {
        let (ctl, auth, limits) = (ctl.clone(), auth.clone(), limits.clone());
        Box::pin(handle(req, ctl, auth, limits))
    });
    crate::http::serve(listener, http, "api", on_event, handler).await
}

/// Serves only `GET /metrics` (unauthenticated, for scrapers); everything else is 404.
pub async fn serve_metrics(listener: TcpListener, ctl: Arc<Controller>, http: HttpLimits) {
    let c2 = ctl.clone();
    let on_event: OnEvent = Arc::new(move |ev| c2.metrics.http_event("metrics", ev));
    let handler: Handler = Arc::new(move |req: Request<Incoming>, _peer| {
        let ctl = ctl.clone();
        Box::pin(async move {
            if req.method() == Method::GET && req.uri().path() == "/metrics" {
                metrics_response(&ctl).await
            } else {
                Refusal::NoRoute.response()
            }
        })
    });
    crate::http::serve(listener, http, "metrics", on_event, handler).await
}

pub async fn metrics_text(ctl: &Controller) -> String {
    let mut text = match ctl.gauges().await {
        Ok((actors, workers)) => ctl.metrics.render(&actors, &workers),
        Err(e) => format!(
            "# gauges unavailable: {e}\n{}",
            ctl.metrics.render(&Default::default(), &Default::default())
        ),
    };
    text.push_str(&leader_metrics(ctl));
    text.push_str(&format!(
        "# HELP ate_actor_gates Per-actor gates held by this process (bounded by the actors that exist).\n# TYPE ate_actor_gates gauge\nate_actor_gates {}\n",
        ctl.gate_count()
    ));
    text
}

/// `ate_leader` (this replica leads: 1, else 0), the gains and losses of the leadership and
/// the rounds of leader-only work this replica ran.
fn leader_metrics(ctl: &Controller) -> String {
    use std::fmt::Write;
    let m = &ctl.metrics;
    let replica = ctl.cfg.owner.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP ate_leader Whether this replica holds the leadership lease (reconciles others' intents, idle policies, golden builds, worker repairs).\n# TYPE ate_leader gauge\nate_leader{{replica=\"{replica}\"}} {}",
        u8::from(ctl.leading())
    );
    let _ = writeln!(
        out,
        "# HELP ate_leader_changes_total Leadership gained or lost by this replica.\n# TYPE ate_leader_changes_total counter\nate_leader_changes_total{{event=\"gained\"}} {}\nate_leader_changes_total{{event=\"lost\"}} {}",
        m.counter("leader_gained"),
        m.counter("leader_lost")
    );
    out.push_str("# HELP ate_leader_rounds_total Rounds of leader-only work this replica ran, by loop.\n# TYPE ate_leader_rounds_total counter\n");
    for l in ["reconcile", "idle", "golden", "health"] {
        let n = match l {
            "reconcile" => m.counter("round_reconcile"),
            "idle" => m.counter("round_idle"),
            "golden" => m.counter("round_golden"),
            _ => m.counter("round_health"),
        };
        let _ = writeln!(out, "ate_leader_rounds_total{{loop=\"{l}\"}} {n}");
    }
    out
}

async fn view(ctl: &Controller, a: ate_core::Versioned<ate_core::Actor>) -> Value {
    let unavailable = ctl.unavailable_note(&a.value).await;
    serde_json::to_value(ActorView { version: a.version, actor: a.value, unavailable }).unwrap_or_default()
}

pub async fn workers(ctl: &Controller) -> Result<Vec<WorkerView>, CtlError> {
    let leases = ctl.leases().await?;
    Ok(ctl
        .worker_records()
        .await?
        .into_iter()
        .map(|w| {
            let w = w.value;
            WorkerView {
                holder: leases.get(&w.name).and_then(|l| l.value.holder.as_ref().map(ToString::to_string)),
                backend: w.info.as_ref().map(|i| i.backend.clone()),
                host_id: w.info.as_ref().map(|i| i.host.host_id.clone()),
                endpoint: w.info.as_ref().map(|i| i.host_endpoint.clone()),
                name: w.name,
                pool: w.pool,
                socket: w.socket,
                address: w.remote.as_ref().map(|r| r.address.clone()),
                forward: w.remote.as_ref().map(|r| r.forward.clone()),
                healthy: w.healthy,
                running: w.running,
                error: w.error,
                unhealthy_since_ms: w.unhealthy_since_ms,
            }
        })
        .collect())
}

/// The CLI's client of the admin API.
#[derive(Clone)]
pub struct ApiClient {
    pub addr: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("addr", &self.addr)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiClient {
    /// A client without a token (an `--insecure-no-auth` server).
    pub fn new(addr: &str) -> Self {
        ApiClient { addr: addr.to_owned(), token: None }
    }

    pub fn with_token(addr: &str, token: Option<String>) -> Self {
        ApiClient { addr: addr.to_owned(), token }
    }

    /// One request; returns the status and the body. A non-empty body is sent as
    /// `content_type`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await.with_context(|| {
            format!("connecting to ate serve's API at {} (is `ate serve` running?)", self.addr)
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::CONNECTION, "close");
        if !body.is_empty() {
            req = req.header(header::CONTENT_TYPE, content_type);
        }
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let resp = sender.send_request(req.body(Full::new(Bytes::from(body)))?).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// One request with a JSON body (if any).
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Bytes)> {
        self.send(method, path, "application/json", body).await
    }

    /// A JSON request; non-2xx answers become [`ApiError`].
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?.unwrap_or_default();
        self.call_raw(method, path, bytes).await
    }

    pub async fn call_raw(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        self.call_typed(method, path, "application/json", body).await
    }

    async fn call_typed(
        &self,
        method: Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<Value> {
        let (status, bytes) = self.send(method, path, content_type, body).await?;
        let v: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        if !(200..300).contains(&status) {
            let mut message = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
            if status == 401 {
                message.push_str(if self.token.is_some() {
                    " (the token given is not one of this server's; see --token-file / ATE_TOKEN)"
                } else {
                    " (no token: give --token-file, set ATE_TOKEN, or use `ate serve`'s <data dir>/tokens/admin)"
                });
            }
            return Err(anyhow!(ApiError { status, message }));
        }
        Ok(v)
    }

    pub async fn actor(&self, name: &str) -> anyhow::Result<ActorView> {
        Ok(serde_json::from_value(self.call(Method::GET, &format!("/v1/actors/{name}"), None).await?)?)
    }

    pub async fn actors(&self) -> anyhow::Result<Vec<ActorView>> {
        Ok(serde_json::from_value(self.call(Method::GET, "/v1/actors", None).await?)?)
    }

    /// `GET /v1/status`: this replica, the store, who leads.
    pub async fn status(&self) -> anyhow::Result<crate::controller::LeaderStatus> {
        Ok(serde_json::from_value(self.call(Method::GET, "/v1/status", None).await?)?)
    }

    pub async fn workers(&self) -> anyhow::Result<Vec<WorkerView>> {
        Ok(serde_json::from_value(self.call(Method::GET, "/v1/workers", None).await?)?)
    }

    pub async fn apply(&self, text: &str) -> anyhow::Result<Value> {
        self.call_typed(Method::POST, "/v1/apply", "application/yaml", text.as_bytes().to_vec()).await
    }

    /// `ate resume actor NAME --from-snapshot ID`.
    pub async fn resume_from(&self, name: &str, snapshot_id: &str) -> anyhow::Result<ActorView> {
        Ok(serde_json::from_value(
            self.call(
                Method::POST,
                &format!("/v1/actors/{name}/resume"),
                Some(json!({ "from_snapshot": snapshot_id })),
            )
            .await?,
        )?)
    }

    /// The actor's snapshots that exist, newest first.
    pub async fn snapshots(&self, name: &str) -> anyhow::Result<crate::controller::ActorSnapshots> {
        Ok(serde_json::from_value(
            self.call(Method::GET, &format!("/v1/actors/{name}/snapshots"), None).await?,
        )?)
    }

    pub async fn action(&self, name: &str, verb: &str) -> anyhow::Result<ActorView> {
        Ok(serde_json::from_value(
            self.call(Method::POST, &format!("/v1/actors/{name}/{verb}"), None).await?,
        )?)
    }
}
