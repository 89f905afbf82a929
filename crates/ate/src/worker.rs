//! Talking to `ateom` workers: the `ateom.Ateom` gRPC contract and nothing else (the control
//! plane never learns a backend's specifics), over a unix socket for a worker on this host or
//! over TCP with mutual TLS for a worker on another host.
//!
//! A worker on another host is named by `address` (its `--listen-tcp`) and `forward` (its
//! `--forward-tls` front). `ate` presents its client certificate and checks the worker's
//! against the pool's CA and the host it dialled. The loopback endpoint such a worker reports
//! is never dialled: its actors' endpoint is `tls://<forward>` ([`front_endpoint`]), which the
//! router reaches through [`Front`] (TLS with the same client certificate). A TLS failure is
//! kept per worker and named in the call's error, so the health check records it (`ate get
//! workers` shows the reason).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ate_core::resource::{RemoteWorker, WorkerTarget};
use ate_core::store::TemplateRecord;
use ate_core::{Host, WorkerInfo};
use ateom_proto as pb;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

pub type Client = pb::AteomClient<Channel>;

/// A refused or failed worker call, with the gRPC code kept for decisions.
#[derive(Debug, Clone, thiserror::Error)]
#[error("worker {worker}: {op}: {code:?}: {message}")]
pub struct WorkerError {
    pub worker: String,
    pub op: &'static str,
    pub code: tonic::Code,
    pub message: String,
}

/// What a failed worker call means for the actor, from the gRPC code and ateom's messages
/// (`ateom-grpc::status` maps each runtime error to one code; the messages below are
/// `ateom_runtime::RuntimeError`'s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No verdict arrived (transport error, our own deadline): the operation may have
    /// completed, may still be running, or never started; only the worker's state says which.
    LostAnswer,
    /// A checkpoint refused or undone: "the workload keeps running" / "was resumed and keeps
    /// running" (a full disk before the freeze, a commit that failed and was taken back).
    WorkloadKeepsRunning,
    /// A capture could not be committed and is "kept whole in quarantine": `ateom snapshots
    /// recover` on that worker commits it under the same id once there is space.
    Quarantined,
    /// A DURABLE checkpoint committed locally but was not shipped ("kept on this node").
    KeptLocal,
    /// The worker is busy with another operation (refused before doing anything).
    Busy,
    /// The call never reached the worker: nothing listens where it should (its daemon or
    /// its host is gone). Certain not to have started anything.
    NotReached,
    /// The snapshot asked for does not exist there.
    SnapshotMissing,
    /// The snapshot exists but does not fit this host, or its bytes are damaged.
    SnapshotRefused,
    /// Any other verdict (readiness timeout, sandbox failure, ...).
    Failed,
}

impl WorkerError {
    /// What this failure means (see [`Failure`]).
    pub fn failure(&self) -> Failure {
        use tonic::Code;
        if self.not_reached() {
            return Failure::NotReached;
        }
        if self.lost_in_transit() {
            return Failure::LostAnswer;
        }
        let m = &self.message;
        if m.contains("kept whole in quarantine") {
            Failure::Quarantined
        } else if m.contains("keeps running") {
            Failure::WorkloadKeepsRunning
        } else if m.contains("kept on this node") {
            Failure::KeptLocal
        } else if self.code == Code::FailedPrecondition && m.starts_with("worker is busy") {
            Failure::Busy
        } else if self.code == Code::NotFound {
            Failure::SnapshotMissing
        } else if matches!(self.code, Code::FailedPrecondition | Code::DataLoss) {
            Failure::SnapshotRefused
        } else {
            Failure::Failed
        }
    }

    /// The connection was refused, or the worker's socket is gone: the request was never
    /// sent.
    pub fn not_reached(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        self.code == tonic::Code::Unavailable
            && (m.contains("connection refused") || m.contains("no such file or directory"))
    }

    /// The call failed on the way (connection reset, HTTP/2 error, cancelled), not with the
    /// worker's verdict: the operation may well have completed there.
    pub fn lost_in_transit(&self) -> bool {
        let m = self.message.to_ascii_lowercase();
        matches!(self.code, tonic::Code::Unknown | tonic::Code::Cancelled)
            || m.contains("h2 protocol error")
            || m.contains("transport error")
            || m.contains("connection reset")
            || m.contains("broken pipe")
            || m.contains("connection closed")
    }
}

/// Why an endpoint a worker reported is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} is not an IP address and port")]
    NotAnAddress(String),
    #[error("{0} is not a loopback address (a worker forwards its workload on its own loopback)")]
    NotLoopback(std::net::SocketAddr),
    #[error("{0} is the TLS front of no worker in the pools")]
    UnknownFront(String),
}

/// Where the router sends an actor's requests.
#[derive(Clone, Debug)]
pub enum Upstream {
    /// A worker on this host: its loopback forwarder, plain HTTP.
    Loopback(std::net::SocketAddr),
    /// A worker on another host: its TLS front, with `ate`'s client certificate.
    Tls(Arc<Front>),
}

/// The address of an endpoint a worker reported, if it is on this host's loopback
/// (127.0.0.0/8 or ::1, port not 0). Today's workers forward every workload on their own
/// loopback; anything else would make the router a proxy to wherever a worker points it.
pub fn loopback_endpoint(s: &str) -> Result<std::net::SocketAddr, EndpointError> {
    let a: std::net::SocketAddr =
        s.parse().map_err(|_| EndpointError::NotAnAddress(s.chars().take(128).collect()))?;
    if a.ip().is_loopback() && a.port() != 0 { Ok(a) } else { Err(EndpointError::NotLoopback(a)) }
}

/// A worker call whose answer named an endpoint that is not the worker's own.
fn endpoint_refused(worker: &str, op: &'static str, e: EndpointError) -> WorkerError {
    WorkerError {
        worker: worker.to_owned(),
        op,
        code: tonic::Code::PermissionDenied,
        message: format!("reported endpoint refused: {e}"),
    }
}

/// The template's limits as the wire's `Resources` (None: the worker's defaults).
pub fn resources(t: &TemplateRecord) -> Option<pb::Resources> {
    let l = t.spec.resources.limits().ok()?;
    (l != ate_core::resource::Limits::default()).then(|| pb::Resources {
        cpu_milli: l.cpu_milli.unwrap_or(0),
        memory_bytes: l.memory_bytes.unwrap_or(0),
        pids: l.pids.unwrap_or(0),
    })
}

/// Connects to a worker's socket (the same connector as `ateom_grpc::connect_unix`, without
/// depending on the worker's server crates). The channel reconnects by itself.
pub fn connect_lazy(path: &Path) -> Client {
    let path = path.to_owned();
    let channel = Endpoint::from_static("http://ateom.local")
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }));
    pb::AteomClient::new(channel).max_decoding_message_size(64 << 20)
}

/// The endpoint recorded for an actor running on a worker on another host: the worker's TLS
/// front, never the loopback endpoint that worker reports.
pub fn front_endpoint(forward: &str) -> String {
    format!("tls://{forward}")
}

/// Why a worker on another host cannot be reached with the TLS material given.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RemoteError {
    #[error("TLS material of {address}: {detail}")]
    Material { address: String, detail: String },
    #[error("{0}")]
    Address(String),
}

/// The last connection failure to one worker on another host (connect, TLS handshake, or a
/// TLS alert the worker sent after it: a client certificate it refused).
type LastError = Arc<Mutex<Option<String>>>;

fn tls_files(r: &RemoteWorker) -> ateom_grpc::tls::TlsFiles {
    ateom_grpc::tls::TlsFiles {
        cert: PathBuf::from(&r.tls.cert),
        key: PathBuf::from(&r.tls.key),
        ca: PathBuf::from(&r.tls.ca),
    }
}

/// `host:port` for dialling, and the name the worker's certificate must carry.
fn dial(hostport: &str) -> Result<(String, ServerName<'static>), RemoteError> {
    let (host, port) = ate_core::resource::split_host_port(hostport).map_err(RemoteError::Address)?;
    let name = ServerName::try_from(host.clone())
        .map_err(|e| RemoteError::Address(format!("{host:?} is not a host name or address: {e}")))?;
    let dial = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    Ok((dial, name))
}

/// A TLS stream that records the first read or write failure (a worker refusing our client
/// certificate answers with an alert after the handshake, in TLS 1.3), and clears the
/// worker's last error once bytes arrive.
struct Recorded<S> {
    inner: S,
    last: LastError,
    peer: String,
    answered: bool,
}

impl<S> Recorded<S> {
    fn note<T>(&mut self, r: &Poll<std::io::Result<T>>) {
        if let Poll::Ready(Err(e)) = r {
            let why = if self.answered {
                format!("TLS with {}: {e}", self.peer)
            } else {
                // TLS 1.3: the worker checks our certificate after the handshake; its alert is
                // usually lost in the reset that follows.
                format!(
                    "TLS with {}: the worker ended the connection right after the handshake ({e}): it refuses this client certificate (not signed by its --tls-ca, or expired), or it is not an ateom worker",
                    self.peer
                )
            };
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(&r);
        if !self.answered && matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.answered = true;
            *self.last.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&r);
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&r);
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A gRPC client of a worker on another host (mutual TLS, HTTP/2 by ALPN), connecting lazily
/// and reconnecting by itself; connection failures are recorded in the returned slot.
pub fn connect_remote(r: &RemoteWorker) -> Result<(Client, LastError), RemoteError> {
    let config = ateom_grpc::tls::client_config(&tls_files(r))
        .map_err(|e| RemoteError::Material { address: r.address.clone(), detail: e.to_string() })?;
    let hostport = r.address.trim_start_matches("https://").trim_end_matches('/');
    let (hostport, name) = dial(hostport)?;
    let last: LastError = Arc::default();
    let connector = TlsConnector::from(config);
    let slot = last.clone();
    let channel = Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| RemoteError::Address(format!("{:?}: {e}", r.address)))?
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let (connector, name, hostport, last) =
                (connector.clone(), name.clone(), hostport.clone(), slot.clone());
            async move {
                let record = |m: String| *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(m);
                let tcp = TcpStream::connect(&hostport).await.inspect_err(|e| {
                    record(format!("connecting {hostport}: {e}"));
                })?;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(name, tcp).await.inspect_err(|e| {
                    record(format!("TLS handshake with {hostport} failed: {e}"));
                })?;
                let s = Recorded { inner: tls, last: last.clone(), peer: hostport, answered: false };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }));
    Ok((pb::AteomClient::new(channel).max_decoding_message_size(64 << 20), last))
}

/// The TLS front of a worker on another host: where the router sends an actor's requests.
pub struct Front {
    pub worker: String,
    /// `host:port` dialled.
    pub addr: String,
    name: ServerName<'static>,
    connector: TlsConnector,
}

impl std::fmt::Debug for Front {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Front").field("worker", &self.worker).field("addr", &self.addr).finish()
    }
}

impl Front {
    /// The front of `r` (TLS without ALPN, with `ate`'s client certificate; the worker's
    /// certificate must name the front's host).
    pub fn new(worker: &str, r: &RemoteWorker) -> Result<Front, RemoteError> {
        let config = ateom_grpc::tls::client_config_plain(&tls_files(r))
            .map_err(|e| RemoteError::Material { address: r.address.clone(), detail: e.to_string() })?;
        let (addr, name) = dial(&r.forward)?;
        Ok(Front { worker: worker.to_owned(), addr, name, connector: TlsConnector::from(config) })
    }

    /// A fresh connection through the front: TCP, then the TLS handshake.
    pub async fn connect(&self) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
        let tcp =
            TcpStream::connect(&self.addr).await.map_err(|e| format!("connecting {}: {e}", self.addr))?;
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|e| format!("TLS handshake with {} (worker {}) failed: {e}", self.addr, self.worker))
    }
}

/// A cached client of one worker.
struct Cached {
    target: WorkerTarget,
    client: Client,
    /// Workers on other hosts: their last connection failure.
    last: Option<LastError>,
}

/// Clients of every known worker, by name, and the TLS fronts of those on other hosts.
#[derive(Default)]
pub struct Workers {
    clients: Mutex<HashMap<String, Cached>>,
    /// By [`front_endpoint`].
    fronts: Mutex<HashMap<String, Arc<Front>>>,
}

/// What a successful restore reported.
#[derive(Clone, Debug)]
pub struct Restored {
    pub endpoint: String,
    pub snapshot_id: String,
    pub pulled_bytes: u64,
}

/// What a successful checkpoint reported.
#[derive(Clone, Debug)]
pub struct Checkpointed {
    pub snapshot_id: String,
    pub location: String,
}

/// An actor whose workload a restarted worker found dead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lost {
    /// "namespace/template/actor"
    pub actor: String,
    pub reason: String,
    /// RFC 3339.
    pub at: String,
}

/// One local snapshot as ListSnapshots reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalSnapshot {
    pub id: String,
    /// From the manifest (None when unknown, e.g. quarantined).
    pub created_ms: Option<u64>,
    pub bytes: u64,
    pub pinned: bool,
    /// Captured whole but not committed (`ateom snapshots recover` commits it).
    pub quarantined: bool,
}

/// What GetCapabilities reported.
#[derive(Clone, Debug)]
pub struct Caps {
    pub info: WorkerInfo,
    /// "namespace/template/actor" or empty.
    pub running: String,
    /// The worker's slot: `idle`, `starting`, `restoring`, `running`, `checkpointing`,
    /// `pushing`, `deleting` (empty from workers that predate the field).
    pub state: String,
    /// Free bytes on the snapshot file system (None from workers that predate the field).
    pub snapshot_bytes_free: Option<u64>,
    pub snapshot_bytes_used: u64,
    /// Actors found dead by a restarted worker, newest last.
    pub lost: Vec<Lost>,
    /// The snapshot a checkpoint (or push) under way writes.
    pub checkpoint_snapshot_id: String,
}

impl Caps {
    /// Why the worker says `name` was lost (the newest entry), if it does.
    pub fn lost_reason(&self, name: &str) -> Option<&str> {
        self.lost.iter().rev().find(|l| l.actor == name).map(|l| l.reason.as_str())
    }

    /// The actor `name` ("namespace/template/actor") is running there, ready for traffic.
    pub fn runs(&self, name: &str) -> bool {
        self.running == name && (self.state == "running" || self.state.is_empty())
    }

    /// An operation on `name` (a restore, a checkpoint, ...) is still under way there.
    pub fn busy_with(&self, name: &str) -> bool {
        self.running == name && !self.runs(name)
    }
}

/// The `actor_template_namespace`, `actor_template_name`, `actor_id` triple.
pub fn actor_ref(t: &TemplateRecord, actor: &str) -> (String, String, String) {
    (t.namespace.clone(), t.name.clone(), actor.to_owned())
}

/// The worker's `running_actor` string for an actor.
pub fn running_name(t: &TemplateRecord, actor: &str) -> String {
    format!("{}/{}/{actor}", t.namespace, t.name)
}

/// The template's workload as the wire spec.
pub fn spec(t: &TemplateRecord) -> pb::WorkloadSpec {
    pb::WorkloadSpec {
        containers: t
            .spec
            .containers
            .iter()
            .map(|c| pb::Container {
                name: c.name.clone(),
                readyz: c.readyz.as_ref().map(|r| pb::Readyz {
                    http_get: Some(pb::HttpGetAction {
                        path: r.http_get.path.clone(),
                        port: i32::from(r.http_get.port),
                    }),
                    timeout_seconds: 0,
                }),
                durable_dir_volumes: c.durable_dir_volumes.clone(),
                image: c.image.clone().unwrap_or_default(),
                command: c.command.clone(),
                args: c.args.clone(),
                env: c.env.clone().into_iter().collect(),
            })
            .collect(),
    }
}

fn scope(t: &TemplateRecord) -> i32 {
    match t.spec.snapshot.scope {
        ate_core::resource::Scope::Full => pb::SnapshotScope::Full as i32,
        ate_core::resource::Scope::Data => pb::SnapshotScope::Data as i32,
    }
}

impl Workers {
    /// The client of worker `name` at `target` (cached; replaced when the target changes). A
    /// worker on another host whose TLS material cannot be read is an error (Unavailable).
    pub fn client(&self, name: &str, target: &WorkerTarget) -> Result<Client, WorkerError> {
        let mut m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get(name)
            && &c.target == target
        {
            return Ok(c.client.clone());
        }
        // A worker whose target changed (a pool applied again): its old front is no longer
        // one of ours.
        if let Some(Cached { target: WorkerTarget::Tls(old), .. }) = m.get(name) {
            self.fronts.lock().unwrap_or_else(|p| p.into_inner()).remove(&front_endpoint(&old.forward));
        }
        let (client, last) = match target {
            WorkerTarget::Socket(socket) => (connect_lazy(Path::new(socket)), None),
            WorkerTarget::Tls(r) => {
                let refused = |e: RemoteError| WorkerError {
                    worker: name.to_owned(),
                    op: "connect",
                    code: tonic::Code::Unavailable,
                    message: e.to_string(),
                };
                let (client, last) = connect_remote(r).map_err(refused)?;
                let front = Front::new(name, r).map_err(refused)?;
                self.fronts
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(front_endpoint(&r.forward), Arc::new(front));
                (client, Some(last))
            }
        };
        m.insert(name.to_owned(), Cached { target: target.clone(), client: client.clone(), last });
        Ok(client)
    }

    /// The TLS front an actor endpoint `tls://host:port` names, if a worker of ours has it.
    pub fn front(&self, endpoint: &str) -> Option<Arc<Front>> {
        self.fronts.lock().unwrap_or_else(|p| p.into_inner()).get(endpoint).cloned()
    }

    fn err(&self, worker: &str, op: &'static str, s: tonic::Status) -> WorkerError {
        let mut message = s.message().to_owned();
        if let Some(why) = self.last_error(worker) {
            if why.contains(&message) {
                message = why;
            } else if !message.contains(&why) {
                message = format!("{message}: {why}");
            }
        }
        WorkerError { worker: worker.to_owned(), op, code: s.code(), message }
    }

    /// The last connection failure to a worker on another host (TLS or TCP), if any.
    fn last_error(&self, worker: &str) -> Option<String> {
        let m = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let last = m.get(worker)?.last.as_ref()?;
        last.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A call that got no answer within `timeout`.
    fn no_answer(&self, worker: &str, op: &'static str, timeout: Duration) -> WorkerError {
        let mut message = format!("no answer within {timeout:?}");
        if let Some(why) = self.last_error(worker) {
            message = format!("{message}: {why}");
        }
        WorkerError { worker: worker.into(), op, code: tonic::Code::DeadlineExceeded, message }
    }

    /// The endpoint an actor's requests go to, from what the worker reported: its loopback
    /// endpoint (checked) for a worker on this host; its TLS front for a worker on another
    /// host (what it reported is not used).
    fn endpoint(
        worker: &str,
        op: &'static str,
        target: &WorkerTarget,
        reported: &str,
    ) -> Result<String, WorkerError> {
        match target {
            WorkerTarget::Socket(_) => {
                loopback_endpoint(reported).map_err(|e| endpoint_refused(worker, op, e))?;
                Ok(reported.to_owned())
            }
            WorkerTarget::Tls(r) => Ok(front_endpoint(&r.forward)),
        }
    }

    pub async fn caps(
        &self,
        name: &str,
        target: &WorkerTarget,
        timeout: Duration,
    ) -> Result<Caps, WorkerError> {
        let mut c = self.client(name, target)?;
        let mut req = tonic::Request::new(pb::GetCapabilitiesRequest {});
        req.set_timeout(timeout);
        let mut r = match tokio::time::timeout(timeout, c.get_capabilities(req)).await {
            Ok(r) => r.map_err(|s| self.err(name, "GetCapabilities", s))?.into_inner(),
            Err(_) => return Err(self.no_answer(name, "GetCapabilities", timeout)),
        };
        if !r.host_endpoint.is_empty() {
            r.host_endpoint = Self::endpoint(name, "GetCapabilities", target, &r.host_endpoint)?;
        }
        let caps = r.capabilities.unwrap_or_default();
        let host = r.host.unwrap_or_default();
        Ok(Caps {
            info: WorkerInfo {
                backend: r.backend,
                runtime_version: r.runtime_version,
                snapshot_portability_class: caps.snapshot_portability_class,
                restore_requires_same_host: caps.restore_requires_same_host,
                supports_local_pause: caps.supports_local_pause,
                accelerator: caps.accelerator,
                host: Host {
                    cpu_vendor: host.cpu_vendor,
                    cpu_model: host.cpu_model,
                    cpu_flags_digest: host.cpu_flags_digest,
                    host_kernel: host.host_kernel,
                    host_id: host.host_id,
                },
                host_endpoint: r.host_endpoint,
            },
            running: r.running_actor,
            state: r.state,
            // 0 free and 0 used: a worker that does not report disk usage.
            snapshot_bytes_free: (r.snapshot_bytes_free > 0 || r.snapshot_bytes_used > 0)
                .then_some(r.snapshot_bytes_free),
            snapshot_bytes_used: r.snapshot_bytes_used,
            lost: r
                .lost_actors
                .into_iter()
                .map(|l| Lost { actor: l.actor, reason: l.reason, at: l.at })
                .collect(),
            checkpoint_snapshot_id: r.checkpoint_snapshot_id,
        })
    }

    /// RunWorkload (golden builds).
    pub async fn run(
        &self,
        name: &str,
        target: &WorkerTarget,
        t: &TemplateRecord,
        actor: &str,
        timeout: Duration,
    ) -> Result<String, WorkerError> {
        let (ns, tpl, id) = actor_ref(t, actor);
        let mut req = tonic::Request::new(pb::RunWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            spec: Some(spec(t)),
            resources: resources(t),
            ..Default::default()
        });
        req.set_timeout(timeout);
        let r = self
            .client(name, target)?
            .run_workload(req)
            .await
            .map_err(|s| self.err(name, "RunWorkload", s))?;
        Self::endpoint(name, "RunWorkload", target, &r.into_inner().host_endpoint)
    }

    /// RestoreWorkload of exactly `snapshot_id`: `prefix` None restores a LOCAL snapshot.
    /// `keep`: every snapshot of the actor the control plane references (retention keeps them).
    #[allow(clippy::too_many_arguments)]
    pub async fn restore(
        &self,
        name: &str,
        target: &WorkerTarget,
        t: &TemplateRecord,
        actor: &str,
        prefix: Option<&str>,
        snapshot_id: &str,
        keep: &[String],
        timeout: Duration,
    ) -> Result<Restored, WorkerError> {
        let (ns, tpl, id) = actor_ref(t, actor);
        let mut req = tonic::Request::new(pb::RestoreWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            spec: Some(spec(t)),
            snapshot_uri_prefix: prefix.unwrap_or_default().to_owned(),
            snapshot_id: snapshot_id.to_owned(),
            keep_snapshot_ids: keep.to_vec(),
            scope: scope(t),
            resources: resources(t),
            ..Default::default()
        });
        req.set_timeout(timeout);
        let r = self
            .client(name, target)?
            .restore_workload(req)
            .await
            .map_err(|s| self.err(name, "RestoreWorkload", s))?
            .into_inner();
        let endpoint = Self::endpoint(name, "RestoreWorkload", target, &r.host_endpoint)?;
        Ok(Restored { endpoint, snapshot_id: r.snapshot_id, pulled_bytes: r.pulled_bytes })
    }

    /// CheckpointWorkload: `prefix` Some → DURABLE there, None → LOCAL; into exactly
    /// `snapshot_id` when given (the id an intent recorded), else the worker picks one.
    /// `keep`: every snapshot of the actor the control plane references.
    #[allow(clippy::too_many_arguments)]
    pub async fn checkpoint(
        &self,
        name: &str,
        target: &WorkerTarget,
        t: &TemplateRecord,
        actor: &str,
        prefix: Option<&str>,
        snapshot_id: Option<&str>,
        keep: &[String],
        timeout: Duration,
    ) -> Result<Checkpointed, WorkerError> {
        let (ns, tpl, id) = actor_ref(t, actor);
        let destination =
            if prefix.is_some() { pb::SnapshotDestination::Durable } else { pb::SnapshotDestination::Local };
        let mut req = tonic::Request::new(pb::CheckpointWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            snapshot_uri_prefix: prefix.unwrap_or_default().to_owned(),
            scope: scope(t),
            destination: destination as i32,
            snapshot_id: snapshot_id.unwrap_or_default().to_owned(),
            keep_snapshot_ids: keep.to_vec(),
            ..Default::default()
        });
        req.set_timeout(timeout);
        let r = self
            .client(name, target)?
            .checkpoint_workload(req)
            .await
            .map_err(|s| self.err(name, "CheckpointWorkload", s))?
            .into_inner();
        let snapshot_id = r.manifest.map(|m| m.snapshot_id).unwrap_or_default();
        Ok(Checkpointed { snapshot_id, location: r.location })
    }

    /// ListSnapshots: the actor's local snapshots on that worker (complete and quarantined).
    pub async fn list_snapshots(
        &self,
        name: &str,
        target: &WorkerTarget,
        t: &TemplateRecord,
        actor: &str,
        timeout: Duration,
    ) -> Result<Vec<LocalSnapshot>, WorkerError> {
        let (ns, tpl, id) = actor_ref(t, actor);
        let mut req = tonic::Request::new(pb::ListSnapshotsRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
        });
        req.set_timeout(timeout);
        let r = match tokio::time::timeout(timeout, self.client(name, target)?.list_snapshots(req)).await {
            Ok(r) => r.map_err(|s| self.err(name, "ListSnapshots", s))?.into_inner(),
            Err(_) => {
                return Err(WorkerError {
                    worker: name.into(),
                    op: "ListSnapshots",
                    code: tonic::Code::DeadlineExceeded,
                    message: format!("no answer within {timeout:?}"),
                });
            }
        };
        Ok(r.snapshots
            .into_iter()
            .map(|s| LocalSnapshot {
                created_ms: ate_core::snapshot::parse_rfc3339_ms(&s.created_at),
                quarantined: s.state == "quarantined",
                id: s.snapshot_id,
                bytes: s.bytes,
                pinned: s.pinned,
            })
            .collect())
    }

    /// DeleteWorkload: stops the actor if it runs on `name` (state discarded) and deletes its
    /// local snapshots there. Returns whether it was running and how many snapshots went.
    pub async fn delete(
        &self,
        name: &str,
        target: &WorkerTarget,
        t: &TemplateRecord,
        actor: &str,
        timeout: Duration,
    ) -> Result<(bool, usize), WorkerError> {
        let (ns, tpl, id) = actor_ref(t, actor);
        let mut req = tonic::Request::new(pb::DeleteWorkloadRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            keep_snapshots: false,
        });
        req.set_timeout(timeout);
        let r = self
            .client(name, target)?
            .delete_workload(req)
            .await
            .map_err(|s| self.err(name, "DeleteWorkload", s))?
            .into_inner();
        Ok((r.stopped, r.deleted_snapshot_ids.len()))
    }

    /// Copies the actor's local snapshot `snapshot_id` to object storage under `prefix`
    /// (`PushSnapshot`; the worker is not held meanwhile). Returns the bytes written (0: it
    /// was stored already).
    #[allow(clippy::too_many_arguments)]
    pub async fn push_snapshot(
        &self,
        name: &str,
        target: &WorkerTarget,
        t: &TemplateRecord,
        actor: &str,
        snapshot_id: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<u64, WorkerError> {
        let (ns, tpl, id) = actor_ref(t, actor);
        let mut req = tonic::Request::new(pb::PushSnapshotRequest {
            actor_template_namespace: ns,
            actor_template_name: tpl,
            actor_id: id,
            snapshot_id: snapshot_id.to_owned(),
            snapshot_uri_prefix: prefix.to_owned(),
        });
        req.set_timeout(timeout);
        let r = self
            .client(name, target)?
            .push_snapshot(req)
            .await
            .map_err(|s| self.err(name, "PushSnapshot", s))?
            .into_inner();
        Ok(r.stored_bytes)
    }
}

#[cfg(test)]
mod transit_tests {
    use super::WorkerError;

    fn err(code: tonic::Code, message: &str) -> WorkerError {
        WorkerError { worker: "w1".into(), op: "CheckpointWorkload", code, message: message.into() }
    }

    #[test]
    fn only_loopback_endpoints_are_accepted() {
        use super::{EndpointError, loopback_endpoint};
        assert!(loopback_endpoint("127.0.0.1:8080").is_ok());
        assert!(loopback_endpoint("127.3.4.5:1").is_ok());
        assert!(loopback_endpoint("[::1]:80").is_ok());
        for bad in
            ["0.0.0.0:80", "10.0.0.1:80", "169.254.1.1:80", "[::ffff:127.0.0.1]:80", "[::]:80", "127.0.0.1:0"]
        {
            assert!(matches!(loopback_endpoint(bad), Err(EndpointError::NotLoopback(_))), "{bad}");
        }
        for bad in ["localhost:80", "", "127.0.0.1", "http://127.0.0.1:80/", "127.0.0.1:80\0"] {
            assert!(matches!(loopback_endpoint(bad), Err(EndpointError::NotAnAddress(_))), "{bad}");
        }
    }

    #[test]
    fn transport_failures_are_not_verdicts() {
        assert!(err(tonic::Code::Internal, "h2 protocol error: http2 error").lost_in_transit());
        assert!(err(tonic::Code::Unknown, "transport error").lost_in_transit());
        assert!(err(tonic::Code::Cancelled, "operation was canceled").lost_in_transit());
        assert!(!err(tonic::Code::Internal, "runsc checkpoint failed: exit status 128").lost_in_transit());
        assert!(!err(tonic::Code::DataLoss, "artifact memory is corrupt").lost_in_transit());
        assert!(
            !err(tonic::Code::Unavailable, "snapshot x is kept on this node at /d, but shipping it failed")
                .lost_in_transit()
        );
    }

    /// The messages are `ateom_runtime::RuntimeError`'s, the codes `ateom_grpc::status`'s.
    #[test]
    fn failures_are_classified_from_the_workers_verdicts() {
        use super::Failure::*;
        use tonic::Code;
        let cases = [
            (Code::Cancelled, "Timeout expired", LostAnswer),
            (
                Code::ResourceExhausted,
                "not enough free space for a snapshot of a/b/c in /s: 1 bytes free, the checkpoint needs about 9 (expected size + the reserve of --min-free); the workload keeps running",
                WorkloadKeepsRunning,
            ),
            (
                Code::ResourceExhausted,
                "committing snapshot s1 failed (No space left on device); the workload was resumed and keeps running",
                WorkloadKeepsRunning,
            ),
            (
                Code::ResourceExhausted,
                "snapshot s1 was captured but could not be committed (No space left on device); it is kept whole in quarantine at /s/.quarantine-s1: free space, then run `ateom snapshots recover`",
                Quarantined,
            ),
            (
                Code::Unavailable,
                "snapshot s1 is kept on this node at /d, but shipping it failed: x",
                KeptLocal,
            ),
            (Code::FailedPrecondition, "worker is busy: actor a/b/c is restoring", Busy),
            (Code::NotFound, "snapshot s1 of actor a/b/c not found", SnapshotMissing),
            (Code::DataLoss, "artifact memory is corrupt", SnapshotRefused),
            (Code::FailedPrecondition, "snapshot s1 cannot be restored on this host: x", SnapshotRefused),
            (Code::DeadlineExceeded, "workload not ready within 30s", Failed),
            (Code::Unavailable, "Connection refused (os error 111)", NotReached),
            (Code::Unavailable, "transport error: No such file or directory (os error 2)", NotReached),
        ];
        for (code, message, want) in cases {
            assert_eq!(err(code, message).failure(), want, "{code:?} {message}");
        }
    }
}
