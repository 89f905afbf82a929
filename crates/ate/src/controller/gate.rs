//! Per-actor concurrency inside one process: the operation lock (one resume, pause,
//! suspend or delete of an actor at a time) and the requests in flight through the router.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::CtlError;

#[derive(Debug)]
pub(super) struct GateState {
    /// RUNNING here: the worker endpoint requests go to.
    pub(super) endpoint: Option<String>,
    /// A pause/suspend/delete is draining: no new request may enter.
    draining: bool,
    pub(super) inflight: usize,
    last_active: Instant,
}

/// Per-actor concurrency control inside one process.
pub struct Gate {
    pub(super) op: Arc<tokio::sync::Mutex<()>>,
    st: Mutex<GateState>,
    idle: Notify,
}

impl Gate {
    pub(super) fn new() -> Self {
        Gate {
            op: Arc::new(tokio::sync::Mutex::new(())),
            st: Mutex::new(GateState {
                endpoint: None,
                draining: false,
                inflight: 0,
                last_active: Instant::now(),
            }),
            idle: Notify::new(),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn try_enter(self: &Arc<Self>) -> Option<Inflight> {
        let mut st = self.lock();
        let endpoint = st.endpoint.clone()?;
        if st.draining {
            return None;
        }
        st.inflight += 1;
        st.last_active = Instant::now();
        Some(Inflight { gate: self.clone(), endpoint })
    }

    pub(super) fn set_endpoint(&self, endpoint: Option<String>) {
        let mut st = self.lock();
        st.endpoint = endpoint;
        st.last_active = Instant::now();
    }

    /// Stops new requests and waits for those in flight (bounded).
    pub(super) async fn drain(&self, timeout: Duration) -> Result<(), CtlError> {
        self.lock().draining = true;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.idle.notified();
            if self.lock().inflight == 0 {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.undrain();
                return Err(CtlError::Unavailable(format!(
                    "requests still in flight after {timeout:?}; not interrupting them"
                )));
            }
        }
    }

    pub(super) fn undrain(&self) {
        self.lock().draining = false;
    }

    pub(super) fn evictable(&self) -> Option<Instant> {
        let st = self.lock();
        (st.inflight == 0 && !st.draining).then_some(st.last_active)
    }
}

/// A request in flight to a RUNNING actor; dropping it ends the request.
pub struct Inflight {
    gate: Arc<Gate>,
    pub endpoint: String,
}

impl Drop for Inflight {
    fn drop(&mut self) {
        let mut st = self.gate.lock();
        st.inflight -= 1;
        st.last_active = Instant::now();
        if st.inflight == 0 {
            self.gate.idle.notify_waiters();
        }
    }
}
