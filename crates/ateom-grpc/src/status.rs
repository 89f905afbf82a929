//! Runtime errors -> gRPC status codes.
//!
//! * bad input: `INVALID_ARGUMENT` naming the field; a field or RPC ateom does not implement
//!   (substrate-v2 layout): `UNIMPLEMENTED` naming it;
//! * the worker's state forbids it (busy, nothing running, wrong actor, snapshot does not
//!   fit this host): `FAILED_PRECONDITION` — the control plane treats a refused restore as
//!   a CRASHED actor;
//! * no such snapshot: `NOT_FOUND`; damaged snapshot bytes (local or in the bucket):
//!   `DATA_LOSS`; object store unreachable: `UNAVAILABLE`;
//! * never ready: `DEADLINE_EXCEEDED` (or `INTERNAL` when the sandbox died while starting);
//!   missing binaries/devices: `UNAVAILABLE`;
//! * a full disk (refused before freezing, or a capture that could not be committed and was
//!   taken back or quarantined): `RESOURCE_EXHAUSTED`; a push stopped by a delete: `ABORTED`.

use ateom_core::{BackendError, InvalidArgument};
use ateom_runtime::RuntimeError;
use ateom_snapshot::SnapshotError;
use ateom_store::StoreError;
use tonic::{Code, Status};

use crate::Wire;

pub fn invalid(e: InvalidArgument) -> Status {
    Status::invalid_argument(e.to_string())
}

/// INVALID_ARGUMENT for a Run/Checkpoint/Restore of `wire`. When the field is one where a
/// client of the other layout puts something else (e.g. a v2 client's
/// `actor_template_atespace` lands in the default layout's `runsc_path`), the message says
/// which layout this worker speaks.
pub fn invalid_on(wire: Wire, e: InvalidArgument) -> Status {
    let fields: &[&str] = match wire {
        Wire::SubstrateV1 => &["runsc_path", "snapshot_uri_prefix"],
        Wire::SubstrateV2 => &["actor_template_atespace", "actor_template_name", "runsc_path"],
    };
    if fields.contains(&e.field.as_str()) {
        Status::invalid_argument(format!("{e} ({})", other_layout_hint(wire)))
    } else {
        invalid(e)
    }
}

/// What a client of the other layout needs to know: which layout this worker speaks.
pub fn other_layout_hint(wire: Wire) -> &'static str {
    match wire {
        Wire::SubstrateV1 => {
            "this worker speaks the default layout, proto/ateom.proto (`--wire substrate-v1`); a \
             client of substrate's renumbered layout needs a worker started with --wire substrate-v2"
        }
        Wire::SubstrateV2 => {
            "this worker speaks substrate's renumbered layout (`--wire substrate-v2`); a client of \
             proto/ateom.proto or of substrate's original layout needs a worker started with \
             --wire substrate-v1"
        }
    }
}

/// A refused request of substrate's v2 layout: INVALID_ARGUMENT (see [`invalid_on`]), or
/// UNIMPLEMENTED naming the field ateom does not implement.
pub fn refused(r: crate::convert_v2::Refused) -> Status {
    match r {
        crate::convert_v2::Refused::Invalid(e) => invalid_on(Wire::SubstrateV2, e),
        r @ crate::convert_v2::Refused::Unimplemented { .. } => Status::unimplemented(r.to_string()),
    }
}

pub fn code_of(e: &RuntimeError) -> Code {
    if e.is_no_space() {
        return Code::ResourceExhausted;
    }
    match e {
        RuntimeError::Invalid(_) => Code::InvalidArgument,
        RuntimeError::Busy { .. }
        | RuntimeError::NothingRunning { .. }
        | RuntimeError::WrongActor { .. }
        | RuntimeError::WrongGolden { .. }
        | RuntimeError::Incompatible { .. } => Code::FailedPrecondition,
        RuntimeError::Snapshot(s) => match s {
            SnapshotError::NotFound { .. } | SnapshotError::NoneForActor { .. } => Code::NotFound,
            SnapshotError::Corrupt { .. } | SnapshotError::BadManifest { .. } => Code::DataLoss,
            SnapshotError::Exists { .. } => Code::AlreadyExists,
            SnapshotError::Io { .. } | SnapshotError::NoIntent { .. } => Code::Internal,
        },
        RuntimeError::NotReady(ateom_runtime::probe::NotReady::Timeout { .. }) => Code::DeadlineExceeded,
        RuntimeError::NotReady(ateom_runtime::probe::NotReady::Exited(_)) => Code::Internal,
        RuntimeError::Backend(b) => match b {
            BackendError::InvalidConfig { .. } => Code::InvalidArgument,
            BackendError::Unavailable { .. } => Code::Unavailable,
            BackendError::Snapshot(_) => Code::FailedPrecondition,
            BackendError::Image { .. } => Code::FailedPrecondition,
            BackendError::Unverified => Code::DataLoss,
            _ => Code::Internal,
        },
        RuntimeError::Unsupported { .. } => Code::Unimplemented,
        RuntimeError::Store(e) => store_code(e),
        RuntimeError::DurableManifest { .. } => Code::DataLoss,
        RuntimeError::PushFailed { source, .. } => code_of(source),
        RuntimeError::WithDiagnostics { source, .. } => code_of(source),
        RuntimeError::NoSpace { .. } => Code::ResourceExhausted,
        RuntimeError::CommitFailedResumed { .. } | RuntimeError::Quarantined { .. } => Code::Internal,
        RuntimeError::PushCancelled { .. } => Code::Aborted,
        RuntimeError::Journal(_) | RuntimeError::Locked(_) => Code::Internal,
        RuntimeError::Io { .. } => Code::Internal,
    }
}

fn store_code(e: &StoreError) -> Code {
    match e {
        StoreError::NotFound { .. } => Code::NotFound,
        StoreError::CorruptIndex { .. }
        | StoreError::CorruptLatest { .. }
        | StoreError::MissingChunk { .. }
        | StoreError::CorruptChunk { .. }
        | StoreError::ArtifactDigestMismatch { .. }
        | StoreError::InconsistentChunk { .. }
        | StoreError::ObjectTooLarge { .. } => Code::DataLoss,
        StoreError::SymlinkInStore { .. } | StoreError::Unsigned { .. } => Code::FailedPrecondition,
        StoreError::BadSignature { .. } => Code::DataLoss,
        StoreError::Remote { .. } => Code::Unavailable,
        StoreError::InvalidLocation { .. }
        | StoreError::UnsupportedScheme { .. }
        | StoreError::InvalidOption { .. }
        | StoreError::InvalidConfig(_)
        | StoreError::InvalidSnapshotId { .. }
        | StoreError::InvalidArtifactName { .. } => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

pub fn from_runtime(e: RuntimeError) -> Status {
    let code = code_of(&e);
    match code {
        Code::Internal | Code::Unavailable => tracing::error!(error = %e, "request failed"),
        _ => tracing::warn!(error = %e, ?code, "request refused"),
    }
    Status::new(code, e.to_string())
}
