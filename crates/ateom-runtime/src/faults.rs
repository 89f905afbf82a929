//! Crash points for the fault matrix (`scripts/fault-matrix.sh`).
//!
//! With the `failpoints` feature, `FAILPOINTS="<name>=return"` in the worker's environment
//! makes it SIGKILL itself when it reaches `<name>` — no destructor, no clean-up, exactly like
//! a crash — and `<name>=sleep(<ms>)` stalls it there (so a test can kill the sandbox at that
//! moment). Built on the `fail` crate's scenario syntax. Without the feature every point
//! compiles to nothing.
//!
//! The points, in the order a checkpoint or restore passes them: `run-after-start`,
//! `go-live-after-journal`, `checkpoint-before-freeze`, `checkpoint-after-freeze`,
//! `checkpoint-after-commit`, `push-before`, `pull-before`,
//! `restore-before-sandbox`, `restore-after-sandbox`.

/// Reaches the crash point `name`.
#[inline]
pub fn point(name: &'static str) {
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!(name, |_| die(name));
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Logs, then dies at once the way a crash does.
#[cfg(feature = "failpoints")]
fn die(name: &str) -> ! {
    tracing::error!(point = name, "fault injection: the worker kills itself here");
    // SAFETY: plain system calls; SIGKILL cannot be caught, so nothing after runs.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// Reads `FAILPOINTS` (call once at start; a no-op without the feature).
pub fn setup() {
    #[cfg(feature = "failpoints")]
    {
        let scenario = fail::FailScenario::setup();
        // The points stay configured for the life of the process.
        std::mem::forget(scenario);
        if let Ok(v) = std::env::var("FAILPOINTS") {
            tracing::warn!(failpoints = %v, "fault injection is on");
        }
    }
}
