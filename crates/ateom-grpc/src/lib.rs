//! # ateom-grpc
//!
//! The `ateom.Ateom` gRPC service on a unix socket. This crate translates and validates
//! wire messages ([`convert`]), maps runtime errors to gRPC status codes ([`status`]) and
//! serves/connects over unix sockets. It knows no backend: everything backend-specific sits
//! behind [`ateom_runtime::Runtime`].
//!
//! A socket speaks one [`Wire`] layout: the default (`proto/ateom.proto`, substrate's original
//! layout plus ateom's fields), served by [`AteomService`], or substrate's renumbered one
//! ([`convert_v2`], [`v2::AteomV2Service`]). Both lead into the same domain requests.

pub mod convert;
pub mod convert_v2;
pub mod status;
pub mod tls;
pub mod v2;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ateom_proto as pb;
use ateom_runtime::Runtime;
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span};

/// The service implementation.
pub struct AteomService {
    runtime: Arc<Runtime>,
}

impl AteomService {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }
}

fn endpoint_str(a: std::net::SocketAddr) -> String {
    a.to_string()
}

/// The answer to a Run.
pub(crate) fn run_response(started: &ateom_runtime::Started) -> pb::RunWorkloadResponse {
    pb::RunWorkloadResponse {
        ready: true,
        workload_address: started.workload_address.map(endpoint_str).unwrap_or_default(),
        host_endpoint: endpoint_str(started.host_endpoint),
        console: started.console.clone().unwrap_or_default(),
        ready_ms: started.ready.as_millis() as u64,
    }
}

/// The answer to a Checkpoint.
pub(crate) fn checkpoint_response(done: &ateom_runtime::Checkpointed) -> pb::CheckpointWorkloadResponse {
    pb::CheckpointWorkloadResponse {
        snapshot_files: done.files.iter().map(|p| p.display().to_string()).collect(),
        manifest: Some(convert::manifest(&done.manifest)),
        location: done.location.clone(),
        destination: match done.destination {
            ateom_core::Destination::Local => pb::SnapshotDestination::Local,
            ateom_core::Destination::Durable => pb::SnapshotDestination::Durable,
        } as i32,
        checkpoint_ms: done.elapsed.as_millis() as u64,
        stored_bytes: done.pushed.map_or(0, |p| p.0),
        push_ms: done.pushed.map_or(0, |p| p.1.as_millis() as u64),
    }
}

/// The answer to a Restore.
pub(crate) fn restore_response(started: &ateom_runtime::Started) -> pb::RestoreWorkloadResponse {
    pb::RestoreWorkloadResponse {
        ready: true,
        workload_address: started.workload_address.map(endpoint_str).unwrap_or_default(),
        host_endpoint: endpoint_str(started.host_endpoint),
        console: started.console.clone().unwrap_or_default(),
        ready_ms: started.ready.as_millis() as u64,
        snapshot_id: started.snapshot_id.as_ref().map(|s| s.to_string()).unwrap_or_default(),
        pulled_bytes: started.pulled.map_or(0, |p| p.0),
        pull_ms: started.pulled.map_or(0, |p| p.1.as_millis() as u64),
    }
}

#[tonic::async_trait]
impl pb::Ateom for AteomService {
    async fn run_workload(
        &self,
        request: Request<pb::RunWorkloadRequest>,
    ) -> Result<Response<pb::RunWorkloadResponse>, Status> {
        let req =
            convert::run_request(request.get_ref()).map_err(|e| status::invalid_on(Wire::SubstrateV1, e))?;
        let span = info_span!("run", actor = %req.actor);
        let rt = self.runtime.clone();
        let started = detached(async move { rt.run(req).instrument(span).await }).await?;
        Ok(Response::new(run_response(&started)))
    }

    async fn checkpoint_workload(
        &self,
        request: Request<pb::CheckpointWorkloadRequest>,
    ) -> Result<Response<pb::CheckpointWorkloadResponse>, Status> {
        let req = convert::checkpoint_request(request.get_ref())
            .map_err(|e| status::invalid_on(Wire::SubstrateV1, e))?;
        let span = info_span!("checkpoint", actor = %req.actor);
        let rt = self.runtime.clone();
        let done = detached(async move { rt.checkpoint(req).instrument(span).await }).await?;
        Ok(Response::new(checkpoint_response(&done)))
    }

    async fn restore_workload(
        &self,
        request: Request<pb::RestoreWorkloadRequest>,
    ) -> Result<Response<pb::RestoreWorkloadResponse>, Status> {
        let req = convert::restore_request(request.get_ref())
            .map_err(|e| status::invalid_on(Wire::SubstrateV1, e))?;
        let span = info_span!("restore", actor = %req.actor);
        let rt = self.runtime.clone();
        let started = detached(async move { rt.restore(req).instrument(span).await }).await?;
        Ok(Response::new(restore_response(&started)))
    }

    async fn delete_workload(
        &self,
        request: Request<pb::DeleteWorkloadRequest>,
    ) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let r = request.get_ref();
        let actor =
            ateom_core::ActorRef::parse(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)
                .map_err(status::invalid)?;
        let keep = r.keep_snapshots;
        let span = info_span!("delete", actor = %actor);
        let rt = self.runtime.clone();
        let done = detached(async move { rt.delete(&actor, keep).instrument(span).await }).await?;
        Ok(Response::new(pb::DeleteWorkloadResponse {
            stopped: done.stopped,
            deleted_snapshot_ids: done.snapshots.iter().map(ToString::to_string).collect(),
            freed_bytes: done.freed_bytes,
        }))
    }

    async fn get_capabilities(
        &self,
        _request: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        let info = self.runtime.info();
        Ok(Response::new(pb::GetCapabilitiesResponse {
            capabilities: Some(convert::capabilities(&info.capabilities)),
            backend: info.backend,
            runtime_version: info.runtime_version,
            host: Some(convert::host(&info.host)),
            running_actor: info.running.map(|a| a.to_string()).unwrap_or_default(),
            host_endpoint: endpoint_str(info.host_endpoint),
            console: info.console.unwrap_or_default(),
            state: info.state.into(),
            snapshot_bytes_used: info.snapshot_bytes_used,
            snapshot_bytes_free: info.snapshot_bytes_free,
            lost_actors: info
                .lost
                .iter()
                .map(|l| pb::LostActor {
                    actor: l.actor.to_string(),
                    reason: l.reason.clone(),
                    at: l.at.clone(),
                })
                .collect(),
            checkpoint_snapshot_id: info.checkpoint_snapshot.map(|s| s.to_string()).unwrap_or_default(),
        }))
    }

    async fn list_snapshots(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let r = request.get_ref();
        let actor =
            ateom_core::ActorRef::parse(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)
                .map_err(status::invalid)?;
        let rt = self.runtime.clone();
        let list = detached(async move {
            tokio::task::spawn_blocking(move || rt.list_snapshots(&actor)).await.map_err(|e| {
                ateom_runtime::RuntimeError::Io {
                    context: "listing snapshots".into(),
                    source: std::io::Error::other(e.to_string()),
                }
            })?
        })
        .await?;
        Ok(Response::new(pb::ListSnapshotsResponse {
            snapshots: list
                .into_iter()
                .map(|s| pb::LocalSnapshotInfo {
                    snapshot_id: s.id.to_string(),
                    created_at: s.created_at,
                    bytes: s.bytes,
                    pinned: s.pinned,
                    state: s.state.into(),
                })
                .collect(),
        }))
    }

    async fn prune_snapshots(
        &self,
        request: Request<pb::PruneSnapshotsRequest>,
    ) -> Result<Response<pb::PruneSnapshotsResponse>, Status> {
        let r = request.get_ref();
        let actor = convert::optional_actor(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id)
            .map_err(status::invalid)?;
        let keep = (r.keep > 0).then_some(r.keep as usize);
        let dry_run = r.dry_run;
        let rt = self.runtime.clone();
        let pruned = detached(async move { rt.prune(actor.as_ref(), keep, dry_run).await }).await?;
        Ok(Response::new(pb::PruneSnapshotsResponse {
            deleted: pruned.deleted.iter().map(|(a, id)| format!("{a}/{id}")).collect(),
            freed_bytes: pruned.freed_bytes,
        }))
    }

    async fn recover_snapshots(
        &self,
        _request: Request<pb::RecoverSnapshotsRequest>,
    ) -> Result<Response<pb::RecoverSnapshotsResponse>, Status> {
        let rt = self.runtime.clone();
        let done = detached(async move { rt.recover_snapshots().await }).await?;
        let name = |key: &str, id: &ateom_core::SnapshotId| {
            let actor = ateom_core::ActorRef::parse_key(key).map(|a| a.to_string()).unwrap_or(key.to_owned());
            format!("{actor}/{id}")
        };
        Ok(Response::new(pb::RecoverSnapshotsResponse {
            recovered: done.committed.iter().map(|(k, id)| name(k, id)).collect(),
            still_quarantined: done
                .still_quarantined
                .iter()
                .map(|(k, id, why)| format!("{}: {why}", name(k, id)))
                .collect(),
        }))
    }

    async fn push_snapshot(
        &self,
        request: Request<pb::PushSnapshotRequest>,
    ) -> Result<Response<pb::PushSnapshotResponse>, Status> {
        let (actor, id, prefix) = convert::push_request(request.get_ref()).map_err(status::invalid)?;
        let rt = self.runtime.clone();
        let span = info_span!("push", %actor, snapshot = %id);
        let done =
            detached(async move { rt.push_snapshot(&actor, &id, &prefix).await }.instrument(span)).await?;
        Ok(Response::new(pb::PushSnapshotResponse {
            location: done.location,
            stored_bytes: done.stored_bytes,
            push_ms: done.elapsed.as_millis() as u64,
            already_stored: done.already_stored,
        }))
    }
}

/// Runs a state-changing runtime operation in its own task, so that a client that goes
/// away (a control plane killed mid-call) cannot cancel it halfway: tonic drops a handler's
/// future when its client disconnects, and a Run/Checkpoint/Restore cut at an arbitrary
/// await point would leak a sandbox or lose a workload. The operation always finishes; the
/// client, if still there, gets its answer.
pub(crate) async fn detached<T: Send + 'static>(
    op: impl std::future::Future<Output = Result<T, ateom_runtime::RuntimeError>> + Send + 'static,
) -> Result<T, Status> {
    match tokio::spawn(op).await {
        Ok(r) => r.map_err(status::from_runtime),
        Err(e) => Err(Status::internal(format!("worker operation panicked: {e}"))),
    }
}

/// Errors of serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Listens on the unix socket `path`, mode 0600, replacing a stale socket file. The file
/// appears only once it accepts connections.
pub fn bind_unix(path: &Path) -> Result<UnixListener, ServeError> {
    use std::os::unix::fs::PermissionsExt;
    let sock_err = |source| ServeError::Socket { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(sock_err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(sock_err(e)),
    }
    // Bind and listen under a temporary name, restrict the mode, then rename into place: the
    // socket file appears only once it accepts connections (a client that sees the file never
    // gets ECONNREFUSED from the bind→listen gap) and never with a wider mode. The restrictive
    // umask closes the gap between bind and chmod on the temporary name too.
    let staging = staging_path(path);
    let _ = std::fs::remove_file(&staging);
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(&staging);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(sock_err)?;
    let placed = std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&staging, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&staging);
        return Err(sock_err(e));
    }
    Ok(listener)
}

/// Which layout of the `ateom.Ateom` service a socket speaks. Both share the package and
/// service name (and so every method path) but not the field numbers: a client of the other
/// layout is refused (see `crates/ateom/tests/substrate_wire.rs` for what it sees).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Wire {
    /// `proto/ateom.proto`: substrate's original layout (fields 1-8) plus ateom's fields and
    /// RPCs. What `ate`, the `ateom` CLI and unmodified substrate clients of that layout speak.
    #[default]
    SubstrateV1,
    /// `proto/substrate/v2/ateom.proto`: substrate's renumbered layout, plus ateom's own RPCs
    /// that it does not define (GetCapabilities, DeleteWorkload, the snapshot RPCs) with
    /// `proto/ateom.proto`'s messages.
    SubstrateV2,
}

impl Wire {
    pub fn name(self) -> &'static str {
        match self {
            Wire::SubstrateV1 => "substrate-v1",
            Wire::SubstrateV2 => "substrate-v2",
        }
    }
}

/// Binds `path` (mode 0600, replacing a stale socket file) and serves the default layout
/// until `shutdown` resolves.
pub async fn serve_unix(
    path: &Path,
    runtime: Arc<Runtime>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_unix_with(path, runtime, Wire::SubstrateV1, shutdown).await
}

/// [`serve_unix`] in the given layout.
pub async fn serve_unix_with(
    path: &Path,
    runtime: Arc<Runtime>,
    wire: Wire,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = bind_unix(path)?;
    info!(socket = %path.display(), wire = wire.name(), "serving ateom.Ateom");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    serve_incoming(runtime, wire, incoming, shutdown).await?;
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// Serves `wire`'s service on the connections `incoming` yields (a unix socket's, or TLS
/// connections accepted by [`tls::serve_tcp`]) until `shutdown`.
pub(crate) async fn serve_incoming<IO, IE>(
    runtime: Arc<Runtime>,
    wire: Wire,
    incoming: impl tokio_stream::Stream<Item = Result<IO, IE>> + Send,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = tonic::transport::Server::builder();
    let v1 = pb::AteomServer::new(AteomService::new(runtime.clone()));
    match wire {
        Wire::SubstrateV1 => {
            builder
                .add_service(Hinted { inner: v1, wire })
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
        Wire::SubstrateV2 => {
            let routed = v2::Routed::new(v2::AteomV2Service::new(runtime), v1);
            builder
                .add_service(Hinted { inner: routed, wire })
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    }
}

/// Adds [`status::other_layout_hint`] to the status of a request that does not even decode
/// (tonic answers INTERNAL "failed to decode Protobuf message: ..." before any handler runs),
/// which is what a client of the other layout usually gets: same method, same message names,
/// field numbers whose wire types differ.
#[derive(Clone)]
struct Hinted<S> {
    inner: S,
    wire: Wire,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Hinted<S> {
    const NAME: &'static str = S::NAME;
}

type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for Hinted<S>
where
    S: tonic::codegen::Service<
            tonic::codegen::http::Request<tonic::body::Body>,
            Response = HttpResponse,
            Error = std::convert::Infallible,
            Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>,
        >,
{
    type Response = HttpResponse;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<HttpResponse, std::convert::Infallible>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let wire = self.wire;
        let method = req.uri().path().to_owned();
        let answer = self.inner.call(req);
        Box::pin(async move {
            let mut response = answer.await?;
            let Some(s) = Status::from_header_map(response.headers()) else { return Ok(response) };
            let hint = status::other_layout_hint(wire);
            let hinted = match s.code() {
                tonic::Code::Internal if s.message().starts_with("failed to decode Protobuf message") => {
                    Some(Status::internal(format!("{} ({hint})", s.message())))
                }
                // tonic's answer to a method the service does not have.
                tonic::Code::Unimplemented if s.message().is_empty() => {
                    Some(Status::unimplemented(format!("{method} is not a method of this worker ({hint})")))
                }
                _ => None,
            };
            if let Some(hinted) = hinted {
                let headers = response.headers_mut();
                for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
                    headers.remove(h);
                }
                if let Err(e) = hinted.add_header(headers) {
                    return Ok(e.into_http());
                }
            }
            Ok(response)
        })
    }
}

/// A sibling of `path` to bind before renaming into place (short, so long socket paths stay
/// within the kernel's limit for as long as `path` itself does).
fn staging_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let short: String = name.chars().take(8).collect();
    path.with_file_name(format!(".{short}.{}", std::process::id()))
}

/// A channel to a worker's unix socket, for a client of any layout (e.g.
/// `ateom_proto::substrate::v2::AteomClient::new(channel)`).
pub async fn channel_unix(path: &Path) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by tonic but unused: the connector always dials the socket.
    tonic::transport::Endpoint::from_static("http://ateom.local")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Connects a client of the default layout to a worker's unix socket.
pub async fn connect_unix(
    path: &Path,
) -> Result<pb::AteomClient<tonic::transport::Channel>, tonic::transport::Error> {
    Ok(pb::AteomClient::new(channel_unix(path).await?).max_decoding_message_size(64 << 20))
}

#[cfg(test)]
mod socket_tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};

    #[tokio::test]
    async fn the_socket_appears_listening_private_and_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("run/ateom.sock");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"stale").unwrap();
        for _ in 0..20 {
            let listener = bind_unix(&path).unwrap();
            let md = std::fs::metadata(&path).unwrap();
            assert!(md.file_type().is_socket(), "a stale file is replaced by the socket");
            assert_eq!(md.permissions().mode() & 0o777, 0o600);
            // Listening by the time the file exists: a connect cannot be refused.
            let client = tokio::net::UnixStream::connect(&path).await.expect("connect right away");
            let (_server_side, _) = listener.accept().await.unwrap();
            drop(client);
            let names: Vec<_> =
                std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, [std::ffi::OsString::from("ateom.sock")], "no staging name left behind");
        }
        let err = bind_unix(Path::new("/proc/no-such-dir/ateom.sock")).unwrap_err();
        assert!(err.to_string().contains("/proc/no-such-dir/ateom.sock"), "{err}");
    }
}
