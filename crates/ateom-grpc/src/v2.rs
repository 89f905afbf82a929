//! The `ateom.Ateom` service in substrate's renumbered layout (`--wire substrate-v2`).
//!
//! Requests are validated by [`crate::convert_v2`] into the same domain requests as the
//! default layout and run by the same [`Runtime`]. Run, Checkpoint and Restore answer with
//! the default layout's response messages: the v2 response messages carry substrate's fields
//! plus ateom's at the same numbers, so the bytes are the same ([`transcode`]).
//!
//! [`Routed`] serves this service together with ateom's own RPCs that substrate's layout does
//! not define (GetCapabilities, DeleteWorkload and the snapshot RPCs), answered by the
//! default service, so the `ateom` CLI's admin verbs work on a v2 socket too.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ateom_core::ActorRef;
use ateom_proto as pb;
use ateom_proto::substrate::v2 as pb2;
use ateom_runtime::Runtime;
use tonic::codegen::{BoxFuture, Context, Poll, Service, http};
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span};

use crate::convert_v2::{self, Identity};
use crate::{AteomService, detached, status};

/// The substrate-v2 service implementation.
pub struct AteomV2Service {
    runtime: Arc<Runtime>,
    class: pb2::SandboxClass,
    /// How the last Run/Restore named its actor (the domain keeps only three of the five
    /// names), for the identity a stats sample echoes.
    named: Mutex<Option<(ActorRef, Identity)>>,
}

impl AteomV2Service {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        let class = convert_v2::sandbox_class(&runtime.info().backend);
        Self { runtime, class, named: Mutex::new(None) }
    }

    fn remember(&self, actor: &ActorRef, identity: Identity) {
        *self.named.lock().expect("identity lock") = Some((actor.clone(), identity));
    }

    fn identity_of(&self, actor: &ActorRef) -> Identity {
        match &*self.named.lock().expect("identity lock") {
            Some((a, identity)) if a == actor => identity.clone(),
            _ => Identity::fallback(actor),
        }
    }

    fn sample(&self, actor: &ActorRef, stats: &ateom_core::SandboxStats) -> pb2::WorkloadStatsSample {
        convert_v2::sample(&self.identity_of(actor), self.class, stats, SystemTime::now())
    }
}

/// Re-reads a message as another generated type with the same wire layout.
pub(crate) fn transcode<B: prost::Message + Default>(m: &impl prost::Message) -> Result<B, Status> {
    B::decode(m.encode_to_vec().as_slice()).map_err(|e| Status::internal(format!("encoding the answer: {e}")))
}

#[tonic::async_trait]
impl pb2::Ateom for AteomV2Service {
    async fn prepare_sandbox(
        &self,
        _request: Request<pb2::PrepareSandboxRequest>,
    ) -> Result<Response<pb2::PrepareSandboxResponse>, Status> {
        Err(Status::unimplemented(
            "PrepareSandbox is not implemented by ateom: call RunWorkload (it starts the sandbox itself)",
        ))
    }

    async fn discard_prepared_sandbox(
        &self,
        _request: Request<pb2::DiscardPreparedSandboxRequest>,
    ) -> Result<Response<pb2::DiscardPreparedSandboxResponse>, Status> {
        Err(Status::unimplemented(
            "DiscardPreparedSandbox is not implemented by ateom (it prepares no sandboxes: see PrepareSandbox)",
        ))
    }

    async fn run_workload(
        &self,
        request: Request<pb2::RunWorkloadRequest>,
    ) -> Result<Response<pb2::RunWorkloadResponse>, Status> {
        let (req, identity) = convert_v2::run_request(request.get_ref()).map_err(status::refused)?;
        self.remember(&req.actor, identity);
        let span = info_span!("run", actor = %req.actor);
        let rt = self.runtime.clone();
        let started = detached(async move { rt.run(req).instrument(span).await }).await?;
        Ok(Response::new(transcode(&crate::run_response(&started))?))
    }

    async fn checkpoint_workload(
        &self,
        request: Request<pb2::CheckpointWorkloadRequest>,
    ) -> Result<Response<pb2::CheckpointWorkloadResponse>, Status> {
        let req = convert_v2::checkpoint_request(request.get_ref()).map_err(status::refused)?;
        let span = info_span!("checkpoint", actor = %req.actor);
        let rt = self.runtime.clone();
        let done = detached(async move { rt.checkpoint(req).instrument(span).await }).await?;
        Ok(Response::new(transcode(&crate::checkpoint_response(&done))?))
    }

    async fn restore_workload(
        &self,
        request: Request<pb2::RestoreWorkloadRequest>,
    ) -> Result<Response<pb2::RestoreWorkloadResponse>, Status> {
        let (req, identity) = convert_v2::restore_request(request.get_ref()).map_err(status::refused)?;
        self.remember(&req.actor, identity);
        let span = info_span!("restore", actor = %req.actor);
        let rt = self.runtime.clone();
        let started = detached(async move { rt.restore(req).instrument(span).await }).await?;
        Ok(Response::new(transcode(&crate::restore_response(&started))?))
    }

    async fn get_workload_stats(
        &self,
        request: Request<pb2::GetWorkloadStatsRequest>,
    ) -> Result<Response<pb2::GetWorkloadStatsResponse>, Status> {
        let uid = convert_v2::stats_request(request.get_ref()).map_err(status::refused)?;
        if let Some((actor, stats)) = self.runtime.stats(None)
            && actor.actor_id == uid
        {
            return Ok(Response::new(pb2::GetWorkloadStatsResponse {
                sample: Some(self.sample(&actor, &stats)),
            }));
        }
        // Not running: either that actor is on its way in or out here, or it is not here.
        let info = self.runtime.info();
        match info.running {
            Some(a) if a.actor_id == uid => {
                Err(Status::failed_precondition(format!("actor {a} is {}: no sample yet", info.state)))
            }
            _ => Err(Status::not_found(format!("actor_uid {uid:?} is not running on this worker"))),
        }
    }

    async fn get_active_workload_stats(
        &self,
        _request: Request<pb2::GetActiveWorkloadStatsRequest>,
    ) -> Result<Response<pb2::GetActiveWorkloadStatsResponse>, Status> {
        use pb2::get_active_workload_stats_response::Result as R;
        let result = match self.runtime.stats(None) {
            Some((actor, stats)) => R::Sample(self.sample(&actor, &stats)),
            None if self.runtime.info().running.is_none() => {
                R::NoSampleReason(pb2::NoSampleReason::NoWorkload as i32)
            }
            None => R::NoSampleReason(pb2::NoSampleReason::NotMeasurableYet as i32),
        };
        Ok(Response::new(pb2::GetActiveWorkloadStatsResponse { result: Some(result) }))
    }

    /// Stops the actor's workload; nothing is checkpointed and its snapshots are kept (a
    /// checkpoint of it still being shipped is left to finish). Nothing to stop is success.
    async fn terminate_workload(
        &self,
        request: Request<pb2::TerminateWorkloadRequest>,
    ) -> Result<Response<pb2::TerminateWorkloadResponse>, Status> {
        let target = convert_v2::terminate_request(request.get_ref()).map_err(status::refused)?;
        let info = self.runtime.info();
        let actor = match info.running {
            Some(a) if target.matches(&a) && info.state != "pushing" => a,
            _ => return Ok(Response::new(pb2::TerminateWorkloadResponse {})),
        };
        let span = info_span!("terminate", actor = %actor);
        let rt = self.runtime.clone();
        detached(async move { rt.delete(&actor, true).instrument(span).await }).await?;
        Ok(Response::new(pb2::TerminateWorkloadResponse {}))
    }
}

/// The RPCs of the default layout that substrate's v2 layout does not define; a v2 socket
/// answers them with the default service (same messages, same paths).
pub const ATEOM_ONLY_METHODS: [&str; 5] = [
    "/ateom.Ateom/GetCapabilities",
    "/ateom.Ateom/DeleteWorkload",
    "/ateom.Ateom/ListSnapshots",
    "/ateom.Ateom/PruneSnapshots",
    "/ateom.Ateom/RecoverSnapshots",
];

/// The v2 service plus [`ATEOM_ONLY_METHODS`] from the default one, as one `ateom.Ateom`
/// service (tonic routes by service name, so the two cannot be added side by side).
#[derive(Clone)]
pub struct Routed {
    v2: pb2::AteomServer<AteomV2Service>,
    v1: pb::AteomServer<AteomService>,
}

impl Routed {
    pub fn new(v2: AteomV2Service, v1: pb::AteomServer<AteomService>) -> Self {
        Self { v2: pb2::AteomServer::new(v2), v1 }
    }
}

impl tonic::server::NamedService for Routed {
    const NAME: &'static str = pb2::ateom_server::SERVICE_NAME;
}

impl Service<http::Request<tonic::body::Body>> for Routed {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if ATEOM_ONLY_METHODS.contains(&req.uri().path()) { self.v1.call(req) } else { self.v2.call(req) }
    }
}
