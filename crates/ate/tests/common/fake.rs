//! A fake `ateom` worker: the real gRPC contract on a unix socket, no sandbox. It answers
//! what a test tells it to (endpoints, delays), pushes tiny real snapshots into the object
//! store (signed or not) so that ate's placement reads real indexes, and records what it was
//! asked (the resources of every run and restore).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ateom_proto as pb;
use tonic::{Request, Response, Status};

/// What the fake answers, changeable while it runs.
#[derive(Clone, Debug, Default)]
pub struct Script {
    /// `host_endpoint` in GetCapabilities while something runs (and always, if `caps_always`).
    pub caps_endpoint: String,
    pub caps_always: bool,
    /// `host_endpoint` of RunWorkload.
    pub run_endpoint: String,
    /// `host_endpoint` of RestoreWorkload.
    pub restore_endpoint: String,
    /// RestoreWorkload takes this long.
    pub restore_delay: Duration,
    /// Durable checkpoints are signed with this key file's key (None: unsigned).
    pub sign_with: Option<PathBuf>,
}

/// What the fake saw.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    pub runs: Vec<Option<pb::Resources>>,
    pub restores: Vec<(String, Option<pb::Resources>)>,
    pub caps_calls: u64,
}

#[derive(Default)]
struct State {
    script: Script,
    seen: Seen,
    running: String,
    endpoint: String,
    next_id: u64,
}

/// A running fake worker; stopped when dropped.
pub struct FakeWorker {
    pub socket: PathBuf,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeWorker {
    pub async fn start(dir: &Path, script: Script) -> FakeWorker {
        std::fs::create_dir_all(dir).unwrap();
        let socket = dir.join("fake.sock");
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let state = Arc::new(Mutex::new(State { script, ..Default::default() }));
        let svc = Svc { state: state.clone() };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(pb::AteomServer::new(svc))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        });
        FakeWorker { socket, state, task }
    }

    pub fn seen(&self) -> Seen {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn set_script(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.state.lock().unwrap().script);
    }
}

struct Svc {
    state: Arc<Mutex<State>>,
}

fn actor(ns: &str, t: &str, id: &str) -> String {
    format!("{ns}/{t}/{id}")
}

/// The manifest (index meta) of the fake's snapshots: what placement compares with its caps.
fn meta(actor: &str) -> serde_json::Value {
    serde_json::json!({
        "backend": "gvisor",
        "runtime_version": "fake-1",
        "capabilities": { "snapshot_portability_class": "fake", "restore_requires_same_host": false },
        "host": { "cpu_vendor": "fake", "cpu_model": "fake", "cpu_flags_digest": "", "host_kernel": "fake", "host_id": "fake-host" },
        "actor": actor,
    })
}

#[tonic::async_trait]
impl pb::Ateom for Svc {
    async fn run_workload(
        &self,
        r: Request<pb::RunWorkloadRequest>,
    ) -> Result<Response<pb::RunWorkloadResponse>, Status> {
        let r = r.into_inner();
        let mut st = self.state.lock().unwrap();
        st.seen.runs.push(r.resources);
        st.running = actor(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id);
        st.endpoint = st.script.run_endpoint.clone();
        Ok(Response::new(pb::RunWorkloadResponse {
            ready: true,
            host_endpoint: st.script.run_endpoint.clone(),
            ..Default::default()
        }))
    }

    async fn checkpoint_workload(
        &self,
        r: Request<pb::CheckpointWorkloadRequest>,
    ) -> Result<Response<pb::CheckpointWorkloadResponse>, Status> {
        let r = r.into_inner();
        let name = actor(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id);
        let (id, sign_with) = {
            let mut st = self.state.lock().unwrap();
            st.next_id += 1;
            let id = if r.snapshot_id.is_empty() {
                format!("fake-{:04}", st.next_id)
            } else {
                r.snapshot_id.clone()
            };
            (id, st.script.sign_with.clone())
        };
        if !r.snapshot_uri_prefix.is_empty() {
            push(&r.snapshot_uri_prefix, &id, &name, sign_with.as_deref())
                .await
                .map_err(|e| Status::internal(format!("fake push: {e}")))?;
        }
        let mut st = self.state.lock().unwrap();
        st.running.clear();
        st.endpoint.clear();
        Ok(Response::new(pb::CheckpointWorkloadResponse {
            manifest: Some(pb::SnapshotManifest { snapshot_id: id, ..Default::default() }),
            location: r.snapshot_uri_prefix,
            ..Default::default()
        }))
    }

    async fn restore_workload(
        &self,
        r: Request<pb::RestoreWorkloadRequest>,
    ) -> Result<Response<pb::RestoreWorkloadResponse>, Status> {
        let r = r.into_inner();
        let delay = self.state.lock().unwrap().script.restore_delay;
        tokio::time::sleep(delay).await;
        let mut st = self.state.lock().unwrap();
        st.seen.restores.push((r.snapshot_id.clone(), r.resources));
        st.running = actor(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id);
        st.endpoint = st.script.restore_endpoint.clone();
        Ok(Response::new(pb::RestoreWorkloadResponse {
            ready: true,
            host_endpoint: st.script.restore_endpoint.clone(),
            snapshot_id: r.snapshot_id,
            ..Default::default()
        }))
    }

    async fn get_capabilities(
        &self,
        _r: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        let mut st = self.state.lock().unwrap();
        st.seen.caps_calls += 1;
        let endpoint = if st.script.caps_always {
            st.script.caps_endpoint.clone()
        } else if st.running.is_empty() {
            String::new()
        } else {
            st.endpoint.clone()
        };
        Ok(Response::new(pb::GetCapabilitiesResponse {
            capabilities: Some(pb::Capabilities {
                supports_local_pause: true,
                snapshot_portability_class: "fake".into(),
                ..Default::default()
            }),
            backend: "gvisor".into(),
            runtime_version: "fake-1".into(),
            host: Some(pb::HostFingerprint {
                cpu_vendor: "fake".into(),
                cpu_model: "fake".into(),
                host_kernel: "fake".into(),
                host_id: "fake-host".into(),
                ..Default::default()
            }),
            running_actor: st.running.clone(),
            host_endpoint: endpoint,
            state: if st.running.is_empty() { "idle".into() } else { "running".into() },
            snapshot_bytes_free: 1 << 40,
            snapshot_bytes_used: 1,
            ..Default::default()
        }))
    }

    async fn delete_workload(
        &self,
        r: Request<pb::DeleteWorkloadRequest>,
    ) -> Result<Response<pb::DeleteWorkloadResponse>, Status> {
        let r = r.into_inner();
        let mut st = self.state.lock().unwrap();
        let stopped = st.running == actor(&r.actor_template_namespace, &r.actor_template_name, &r.actor_id);
        if stopped {
            st.running.clear();
        }
        Ok(Response::new(pb::DeleteWorkloadResponse { stopped, ..Default::default() }))
    }

    async fn list_snapshots(
        &self,
        _r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(pb::ListSnapshotsResponse::default()))
    }

    async fn prune_snapshots(
        &self,
        _r: Request<pb::PruneSnapshotsRequest>,
    ) -> Result<Response<pb::PruneSnapshotsResponse>, Status> {
        Ok(Response::new(pb::PruneSnapshotsResponse::default()))
    }

    async fn recover_snapshots(
        &self,
        _r: Request<pb::RecoverSnapshotsRequest>,
    ) -> Result<Response<pb::RecoverSnapshotsResponse>, Status> {
        Ok(Response::new(pb::RecoverSnapshotsResponse::default()))
    }

    async fn push_snapshot(
        &self,
        _r: Request<pb::PushSnapshotRequest>,
    ) -> Result<Response<pb::PushSnapshotResponse>, Status> {
        Err(Status::unimplemented("the fake worker does not copy snapshots"))
    }
}

/// Pushes a one-file snapshot `id` under `prefix`, signed with the key in `key_file` if given.
pub async fn push(prefix: &str, id: &str, actor: &str, key_file: Option<&Path>) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    std::fs::write(dir.path().join("memory"), vec![7u8; 8192]).map_err(|e| e.to_string())?;
    let mut store = ateom_store::Store::open(prefix).map_err(|e| e.to_string())?;
    if let Some(k) = key_file {
        let keys = ateom_store::SigningKeys::from_files(&[k.to_owned()])?;
        let cfg = ateom_store::StoreConfig { signing: Some(keys), ..store.config().clone() };
        store = store.with_config(cfg).map_err(|e| e.to_string())?;
    }
    store.push_dir(dir.path(), &["memory".to_owned()], id, meta(actor)).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Writes a signing key file (hex of 32 random bytes), mode 0600.
pub fn keygen(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, ate::auth::generate_token()).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// What a test upstream (a workload stand-in on loopback) saw.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub connections: std::sync::atomic::AtomicU64,
    pub requests: std::sync::atomic::AtomicU64,
    /// Request bodies that ended with an error (the router cut them).
    pub bodies_cut: std::sync::atomic::AtomicU64,
    /// Bytes of request bodies received.
    pub body_bytes: std::sync::atomic::AtomicU64,
}

/// A loopback HTTP server standing in for a workload: `GET /` answers `hello`, `POST /echo`
/// reads the body and answers its length, `/slow` never answers. Counts every connection.
pub struct Upstream {
    pub addr: std::net::SocketAddr,
    pub stats: Arc<UpstreamStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        use http_body_util::BodyExt;
        use std::sync::atomic::Ordering::SeqCst;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(UpstreamStats::default());
        let st = stats.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else { continue };
                st.connections.fetch_add(1, SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let st = st.clone();
                            async move {
                                st.requests.fetch_add(1, SeqCst);
                                let path = req.uri().path().to_owned();
                                let text = match path.as_str() {
                                    "/slow" => {
                                        tokio::time::sleep(Duration::from_secs(3600)).await;
                                        String::new()
                                    }
                                    "/echo" => {
                                        let mut body = req.into_body();
                                        let mut n = 0u64;
                                        loop {
                                            match body.frame().await {
                                                None => break,
                                                Some(Ok(f)) => {
                                                    let len = f.data_ref().map_or(0, |d| d.len() as u64);
                                                    n += len;
                                                    st.body_bytes.fetch_add(len, SeqCst);
                                                }
                                                Some(Err(_)) => {
                                                    st.bodies_cut.fetch_add(1, SeqCst);
                                                    break;
                                                }
                                            }
                                        }
                                        format!("{n}")
                                    }
                                    _ => "hello".to_owned(),
                                };
                                Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                    http_body_util::Full::new(bytes::Bytes::from(text)),
                                ))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        Upstream { addr, stats, task }
    }
}
