//! The admin API of `ate serve`: small HTTP/1.1 + JSON on a loopback port, and its client
//! (what the CLI uses).
//!
//! | method and path | what |
//! |---|---|
//! | `POST /v1/apply` (body: YAML or JSON resources) | apply pools, templates, actors |
//! | `GET /v1/actors`, `GET /v1/actors/<name>` | actor records |
//! | `POST /v1/actors` `{"name":…,"template":…}` | create an actor (SUSPENDED on the golden snapshot) |
//! | `POST /v1/actors/<name>/resume\|pause\|suspend` | explicit transitions (resume also retries a CRASHED actor; with body `{"from_snapshot": ID}` it restores exactly that snapshot, possibly older state) |
//! | `GET /v1/actors/<name>/snapshots` | the actor's snapshots that exist: local on each worker (complete or quarantined), durable, golden; newest first, with ages |
//! | `DELETE /v1/actors/<name>` | delete it and its durable snapshots |
//! | `GET /v1/workers`, `GET /v1/templates`, `GET /v1/pools` | the rest of the state |
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | `ok` |
//!
//! Errors are `{"error": "..."}` with 400 (invalid), 404 (unknown), 409 (not allowed in
//! this state), 503 (crashed / no capacity / timed out), 502 (a worker failed).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::controller::{Controller, CtlError};

/// An actor as the API shows it: the record plus its store version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ActorView {
    pub version: u64,
    #[serde(flatten)]
    pub actor: ate_core::Actor,
}

/// A worker as the API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerView {
    pub name: String,
    pub pool: String,
    pub socket: String,
    pub healthy: bool,
    /// Who holds its lease: "actor a1", "golden build of t", or null.
    pub holder: Option<String>,
    /// What the worker said runs on it.
    pub running: String,
    pub backend: Option<String>,
    pub host_id: Option<String>,
    pub endpoint: Option<String>,
    pub error: Option<String>,
}

fn json_response(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(serde_json::to_vec_pretty(v).unwrap_or_default())));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    r
}

fn err_response(e: &CtlError) -> Response<Full<Bytes>> {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &json!({ "error": e.to_string() }))
}

/// Serves the admin API (and /metrics) on `listener`.
pub async fn serve(listener: TcpListener, ctl: Arc<Controller>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "api accept");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctl = ctl.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let ctl = ctl.clone();
                async move { Ok::<_, Infallible>(handle(req, ctl).await) }
            });
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await
            {
                debug!(error = %e, "api connection");
            }
        });
    }
}

pub async fn metrics_text(ctl: &Controller) -> String {
    match ctl.gauges().await {
        Ok((actors, workers)) => ctl.metrics.render(&actors, &workers),
        Err(e) => format!(
            "# gauges unavailable: {e}\n{}",
            ctl.metrics.render(&Default::default(), &Default::default())
        ),
    }
}

async fn handle(req: Request<Incoming>, ctl: Arc<Controller>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return err_response(&CtlError::Invalid(format!("body: {e}"))),
    };
    let r: Result<(StatusCode, Value), CtlError> = async {
        match (&method, segs.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok((StatusCode::OK, json!("ok"))),
            (&Method::GET, ["metrics"]) => Err(CtlError::Invalid("metrics".into())), // handled below
            (&Method::POST, ["v1", "apply"]) => {
                let text = String::from_utf8_lossy(&body);
                let resources =
                    ate_core::parse_resources(&text).map_err(|e| CtlError::Invalid(e.to_string()))?;
                let out = ctl.apply(resources).await?;
                Ok((StatusCode::OK, json!({ "applied": out })))
            }
            (&Method::GET, ["v1", "actors"]) => {
                let v: Vec<ActorView> = ctl
                    .actors()
                    .await?
                    .into_iter()
                    .map(|a| ActorView { version: a.version, actor: a.value })
                    .collect();
                Ok((StatusCode::OK, serde_json::to_value(v).unwrap_or_default()))
            }
            (&Method::POST, ["v1", "actors"]) => {
                #[derive(Deserialize)]
                struct Create {
                    name: String,
                    template: String,
                }
                let c: Create =
                    serde_json::from_slice(&body).map_err(|e| CtlError::Invalid(format!("body: {e}")))?;
                ctl.create_actor(&c.name, &c.template, Duration::from_secs(120)).await?;
                let a = ctl.actor(&c.name).await?;
                Ok((StatusCode::CREATED, view(a)))
            }
            (&Method::GET, ["v1", "actors", name]) => Ok((StatusCode::OK, view(ctl.actor(name).await?))),
            (&Method::GET, ["v1", "actors", name, "snapshots"]) => Ok((
                StatusCode::OK,
                serde_json::to_value(ctl.actor_snapshots(name).await?).unwrap_or_default(),
            )),
            (&Method::POST, ["v1", "actors", name, verb]) => {
                #[derive(Deserialize, Default)]
                #[serde(deny_unknown_fields)]
                struct ResumeBody {
                    #[serde(default)]
                    from_snapshot: Option<String>,
                }
                let resume_body: ResumeBody = if body.iter().all(u8::is_ascii_whitespace) {
                    ResumeBody::default()
                } else if *verb == "resume" {
                    serde_json::from_slice(&body).map_err(|e| CtlError::Invalid(format!("body: {e}")))?
                } else {
                    return Err(CtlError::Invalid(format!("{verb} takes no body")));
                };
                match *verb {
                    "resume" => match resume_body.from_snapshot.as_deref() {
                        Some(id) => ctl.resume_from(name, id).await?,
                        None => ctl.resume(name).await?,
                    },
                    "pause" => ctl.pause(name).await?,
                    "suspend" => ctl.suspend(name).await?,
                    v => {
                        return Err(CtlError::Invalid(format!(
                            "unknown action {v:?} (resume, pause, suspend)"
                        )));
                    }
                };
                Ok((StatusCode::OK, view(ctl.actor(name).await?)))
            }
            (&Method::DELETE, ["v1", "actors", name]) => {
                ctl.delete(name).await?;
                Ok((StatusCode::OK, json!({ "deleted": name })))
            }
            (&Method::GET, ["v1", "workers"]) => {
                Ok((StatusCode::OK, serde_json::to_value(workers(&ctl).await?).unwrap_or_default()))
            }
            (&Method::GET, ["v1", "templates"]) => {
                let t: Vec<_> = ctl.templates().await?.into_iter().map(|t| t.value).collect();
                Ok((StatusCode::OK, serde_json::to_value(t).unwrap_or_default()))
            }
            (&Method::GET, ["v1", "pools"]) => {
                let p: Vec<_> = ctl.pools().await?.into_iter().map(|p| p.value).collect();
                Ok((StatusCode::OK, serde_json::to_value(p).unwrap_or_default()))
            }
            _ => Err(CtlError::NotFound { what: "route", name: format!("{method} {path}") }),
        }
    }
    .await;
    if method == Method::GET && segs == ["metrics"] {
        let mut r = Response::new(Full::new(Bytes::from(metrics_text(&ctl).await)));
        r.headers_mut()
            .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; version=0.0.4"));
        return r;
    }
    match r {
        Ok((status, v)) => json_response(status, &v),
        Err(e) => err_response(&e),
    }
}

fn view(a: ate_core::Versioned<ate_core::Actor>) -> Value {
    serde_json::to_value(ActorView { version: a.version, actor: a.value }).unwrap_or_default()
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
                healthy: w.healthy,
                running: w.running,
                error: w.error,
            }
        })
        .collect())
}

/// The CLI's client of the admin API.
#[derive(Clone, Debug)]
pub struct ApiClient {
    pub addr: String,
}

/// An error answer of the API.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub message: String,
}

impl ApiClient {
    pub fn new(addr: &str) -> Self {
        ApiClient { addr: addr.to_owned() }
    }

    /// One request; returns the status and the body.
    pub async fn raw(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<(u16, Bytes)> {
        let stream = tokio::net::TcpStream::connect(&self.addr).await.with_context(|| {
            format!("connecting to ate serve's API at {} (is `ate serve` running?)", self.addr)
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::CONNECTION, "close")
            .body(Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// A JSON request; non-2xx answers become [`ApiError`].
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let bytes = body.map(|b| serde_json::to_vec(&b)).transpose()?.unwrap_or_default();
        self.call_raw(method, path, bytes).await
    }

    pub async fn call_raw(&self, method: Method, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let (status, bytes) = self.raw(method, path, body).await?;
        let v: Value =
            serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        if !(200..300).contains(&status) {
            let message = v["error"].as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
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

    pub async fn workers(&self) -> anyhow::Result<Vec<WorkerView>> {
        Ok(serde_json::from_value(self.call(Method::GET, "/v1/workers", None).await?)?)
    }

    pub async fn apply(&self, text: &str) -> anyhow::Result<Value> {
        self.call_raw(Method::POST, "/v1/apply", text.as_bytes().to_vec()).await
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
