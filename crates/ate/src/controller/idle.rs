//! The templates' idle policies: pause actors idle longer than `pauseAfterSeconds`, suspend
//! actors paused longer than `suspendAfterSeconds`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ate_core::ActorState;
use ate_core::store::TemplateRecord;
use tracing::{Instrument, debug, info_span, warn};

use super::{Controller, CtlError, now_ms};

impl Controller {
    /// Pauses actors idle longer than their template's `pauseAfterSeconds`, suspends actors
    /// paused longer than `suspendAfterSeconds`. Only while this replica leads
    /// ([`super::leader`]): the idle time it sees is that of requests through its own router.
    pub async fn idle_loop(self: Arc<Self>) {
        loop {
            if self.leading() {
                self.metrics.inc("round_idle");
                if let Err(e) = self.idle_once().await {
                    warn!(error = %e, "idle policy");
                }
            }
            tokio::time::sleep(self.cfg.idle_interval).await;
        }
    }

    async fn idle_once(self: &Arc<Self>) -> Result<(), CtlError> {
        let templates: HashMap<String, TemplateRecord> =
            self.templates().await?.into_iter().map(|t| (t.value.name.clone(), t.value)).collect();
        let now = now_ms();
        let actors = self.actors().await?;
        self.prune_gates(&actors.iter().map(|a| a.value.name.as_str()).collect());
        for a in actors {
            let Some(t) = templates.get(&a.value.template) else { continue };
            let policy = &t.spec.idle_policy;
            let gate = self.gate(&a.value.name);
            let (pause, suspend) = match a.value.state {
                ActorState::Running => {
                    let Some(after) = policy.pause_after_seconds else { continue };
                    let Some(last) = gate.evictable() else { continue };
                    let since_state = Duration::from_millis(now.saturating_sub(a.value.state_since_ms));
                    let idle = last.elapsed().min(since_state);
                    (idle.as_secs_f64() >= after, false)
                }
                ActorState::Paused => {
                    let Some(after) = policy.suspend_after_seconds else { continue };
                    (false, now.saturating_sub(a.value.state_since_ms) as f64 >= after * 1000.0)
                }
                _ => continue,
            };
            if !(pause || suspend) {
                continue;
            }
            let Ok(lock) = gate.op.clone().try_lock_owned() else { continue };
            let ctl = self.clone();
            let name = a.value.name.clone();
            tokio::spawn(
                async move {
                    let _lock = lock;
                    let r = if pause {
                        ctl.pause_locked(&name, &gate).await
                    } else {
                        ctl.suspend_locked(&name, &gate, false).await
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "idle policy skipped");
                    }
                }
                .instrument(info_span!("actor", actor = %a.value.name)),
            );
        }
        Ok(())
    }
}
