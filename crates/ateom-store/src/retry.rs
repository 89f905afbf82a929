//! Bounded retries with exponential backoff and jitter around every remote operation.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::error::{RemoteError, StoreError};

/// How remote operations are retried. Every operation is bounded three ways: by attempts, by
/// the total time since its first attempt, and by a timeout on each attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per operation, the first included (>= 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled after each further failure.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff.
    pub max_backoff: Duration,
    /// No new attempt starts once this much time has passed since the first.
    pub max_elapsed: Duration,
    /// One attempt that takes longer than this fails (and may be retried).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(60),
            attempt_timeout: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The backoff before attempt `attempt + 1` (after `attempt` failures), with "equal jitter":
    /// half fixed, half random, so that parallel uploads do not retry in lockstep.
    fn backoff(&self, failures: u32) -> Duration {
        let exp = self.initial_backoff.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
        let cap = exp.min(self.max_backoff);
        let half = cap / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis().min(u128::from(u32::MAX)) as u64);
        half + Duration::from_millis(jitter_ms)
    }
}

/// Is this error worth another attempt? Definite answers from the store (not found, denied,
/// precondition, bad path, unsupported, any other 4xx but 408/429) are not; transport errors,
/// timeouts and 5xx are.
fn transient(e: &RemoteError) -> bool {
    match e {
        RemoteError::AttemptTimeout(_) => true,
        RemoteError::Store(e @ object_store::Error::Generic { .. }) => {
            !matches!(http_status(e), Some(s) if (400..500).contains(&s) && s != 408 && s != 429)
        }
        RemoteError::Store(object_store::Error::JoinError { .. }) => true,
        RemoteError::Store(_) => false,
    }
}

/// The HTTP status behind a `Generic` error, if any. object_store maps most statuses to
/// typed variants (403 -> PermissionDenied, …) but not on every path (a failed LIST is
/// `Generic`), and its status-carrying error type is private, so the status is read from the
/// message ("… status code: 403 Forbidden …"). If that text ever changes, a 4xx is merely
/// retried within the policy's bounds.
fn http_status(e: &(dyn std::error::Error + 'static)) -> Option<u16> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        let text = err.to_string();
        if let Some(pos) = text.find("status code: ") {
            let digits = text.get(pos + 13..pos + 16)?;
            return digits.parse().ok();
        }
        cur = err.source();
    }
    None
}

/// A failed operation, before the caller decides what it means (a missing index is
/// `NotFound`, a missing chunk is `MissingChunk`, everything else is `Remote`).
#[derive(Debug)]
pub(crate) struct Failed {
    pub op: &'static str,
    pub key: String,
    pub attempts: u32,
    pub elapsed: Duration,
    pub source: RemoteError,
}

impl Failed {
    pub fn is_not_found(&self) -> bool {
        self.source.is_not_found()
    }
}

impl From<Failed> for StoreError {
    fn from(f: Failed) -> Self {
        StoreError::Remote {
            op: f.op,
            key: f.key,
            attempts: f.attempts,
            elapsed_ms: f.elapsed.as_millis() as u64,
            source: f.source,
        }
    }
}

/// Run `attempt` until it succeeds, fails for good, or the policy's bounds are reached.
pub(crate) async fn retry<T, F, Fut>(
    policy: &RetryPolicy,
    op: &'static str,
    key: &object_store::path::Path,
    mut attempt: F,
) -> Result<T, Failed>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<T>>,
{
    let start = Instant::now();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match tokio::time::timeout(policy.attempt_timeout, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => RemoteError::Store(e),
            Err(_) => RemoteError::AttemptTimeout(policy.attempt_timeout),
        };
        let elapsed = start.elapsed();
        let backoff = policy.backoff(attempts);
        if !transient(&err) || attempts >= policy.max_attempts || elapsed + backoff > policy.max_elapsed {
            return Err(Failed { op, key: key.to_string(), attempts, elapsed, source: err });
        }
        tracing::debug!(op, %key, attempts, error = %err, ?backoff, "retrying object store operation");
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            ..RetryPolicy::default()
        };
        for _ in 0..50 {
            let b1 = p.backoff(1);
            assert!(b1 >= Duration::from_millis(50) && b1 <= Duration::from_millis(100), "{b1:?}");
            let b3 = p.backoff(3);
            assert!(b3 >= Duration::from_millis(200) && b3 <= Duration::from_millis(400), "{b3:?}");
            let b30 = p.backoff(30);
            assert!(b30 >= Duration::from_millis(500) && b30 <= Duration::from_millis(1000), "{b30:?}");
        }
    }

    #[test]
    fn client_errors_behind_generic_are_final() {
        let generic = |msg: &str| {
            RemoteError::Store(object_store::Error::Generic { store: "S3", source: msg.to_string().into() })
        };
        assert!(!transient(&generic("Error performing GET … status code: 403 Forbidden: <Error>")));
        assert!(transient(&generic("Error performing GET … status code: 503 Service Unavailable")));
        assert!(transient(&generic("Error performing GET … status code: 429 Too Many Requests")));
        assert!(transient(&generic("error sending request: Connection refused")));
        assert!(transient(&generic("status code: 4")));
        assert!(!transient(&RemoteError::Store(object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into()
        })));
    }

    #[tokio::test]
    async fn not_found_is_not_retried_and_generic_is() {
        let p = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RetryPolicy::default()
        };
        let key = object_store::path::Path::from("k");
        let mut calls = 0;
        let r: Result<(), Failed> = retry(&p, "get", &key, || {
            calls += 1;
            async { Err(object_store::Error::NotFound { path: "k".into(), source: "gone".into() }) }
        })
        .await;
        assert_eq!((calls, r.unwrap_err().attempts), (1, 1));

        let mut calls = 0;
        let r: Result<(), Failed> = retry(&p, "get", &key, || {
            calls += 1;
            async { Err(object_store::Error::Generic { store: "t", source: "boom".into() }) }
        })
        .await;
        assert_eq!((calls, r.unwrap_err().attempts), (3, 3));
    }
}
