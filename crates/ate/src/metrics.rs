//! Prometheus text exposition, by hand (a few series; no registry crate needed).
//!
//! * `ate_resume_seconds{tier="local|durable|golden"}` — histogram of resume latency (from
//!   the decision to resume to the worker's ready answer);
//! * `ate_resume_failures_total{tier}`, `ate_pauses_total`, `ate_suspends_total`,
//!   `ate_evictions_total`, `ate_reconciled_total`, `ate_lost_answers_total` (worker calls
//!   whose answer was lost, settled from the worker's state), `ate_takeovers_total` (intents of
//!   dead replicas finished here), `ate_router_requests_total{code}`;
//! * `ate_router_errors_total{reason}` — why the router answered an error itself (the
//!   details stay in the log and here, never in the client's answer);
//!   `ate_api_requests_total{code}`; `ate_http_events_total{listener,event}` — connections
//!   refused at accept, header timeouts, idle and stalled connections closed (see
//!   [`crate::http`]);
//! * `ate_actors{state}` and `ate_workers{pool,state="busy|free|unhealthy"}` — gauges read from
//!   the store at scrape time (so every replica reports the shared truth).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use ate_core::Tier;

const BUCKETS: [f64; 14] = [0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    /// Raw samples (bounded) for percentiles in demo/bench output.
    samples: Vec<f64>,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
        if self.samples.len() < 100_000 {
            self.samples.push(v);
        }
    }
}

/// Counters and histograms of one control-plane process.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    resume: BTreeMap<&'static str, Histogram>,
    resume_failures: BTreeMap<&'static str, u64>,
    counters: BTreeMap<&'static str, u64>,
    router: BTreeMap<u16, u64>,
    router_errors: BTreeMap<&'static str, u64>,
    api: BTreeMap<u16, u64>,
    http: BTreeMap<(&'static str, &'static str), u64>,
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn resumed(&self, tier: Tier, took: Duration) {
        self.lock().resume.entry(tier.as_str()).or_default().observe(took.as_secs_f64());
    }

    pub fn resume_failed(&self, tier: Tier) {
        *self.lock().resume_failures.entry(tier.as_str()).or_default() += 1;
    }

    pub fn inc(&self, name: &'static str) {
        *self.lock().counters.entry(name).or_default() += 1;
    }

    pub fn routed(&self, code: u16) {
        *self.lock().router.entry(code).or_default() += 1;
    }

    /// The router answered an error of this class itself.
    pub fn router_error(&self, reason: &'static str) {
        *self.lock().router_errors.entry(reason).or_default() += 1;
    }

    pub fn api_answered(&self, code: u16) {
        *self.lock().api.entry(code).or_default() += 1;
    }

    /// A protective event of an HTTP listener.
    pub fn http_event(&self, listener: &'static str, ev: crate::http::Event) {
        *self.lock().http.entry((listener, ev.as_str())).or_default() += 1;
    }

    /// The count of one protective event (tests).
    pub fn http_events(&self, listener: &str, ev: crate::http::Event) -> u64 {
        self.lock()
            .http
            .iter()
            .filter(|((l, e), _)| *l == listener && *e == ev.as_str())
            .map(|(_, n)| n)
            .sum()
    }

    /// Resume latencies recorded so far (seconds), by tier.
    pub fn resume_samples(&self) -> BTreeMap<&'static str, Vec<f64>> {
        self.lock().resume.iter().map(|(k, h)| (*k, h.samples.clone())).collect()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.lock().counters.get(name).copied().unwrap_or(0)
    }

    /// The exposition text; `actors` and `workers` are the store's current counts.
    pub fn render(
        &self,
        actors: &BTreeMap<String, u64>,
        workers: &BTreeMap<(String, String), u64>,
    ) -> String {
        let g = self.lock();
        let mut out = String::new();
        out.push_str("# HELP ate_resume_seconds Time from the decision to resume an actor to its worker's ready answer.\n");
        out.push_str("# TYPE ate_resume_seconds histogram\n");
        for tier in ["local", "durable", "golden"] {
            let h = g.resume.get(tier).cloned().unwrap_or_default();
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ =
                    writeln!(out, "ate_resume_seconds_bucket{{tier=\"{tier}\",le=\"{b}\"}} {}", h.counts[i]);
            }
            let _ = writeln!(out, "ate_resume_seconds_bucket{{tier=\"{tier}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "ate_resume_seconds_sum{{tier=\"{tier}\"}} {}", h.sum);
            let _ = writeln!(out, "ate_resume_seconds_count{{tier=\"{tier}\"}} {}", h.count);
        }
        out.push_str("# HELP ate_resume_failures_total Resumes that ended CRASHED.\n# TYPE ate_resume_failures_total counter\n");
        for tier in ["local", "durable", "golden"] {
            let n = g.resume_failures.get(tier).copied().unwrap_or(0);
            let _ = writeln!(out, "ate_resume_failures_total{{tier=\"{tier}\"}} {n}");
        }
        for (name, help) in [
            ("pauses", "Actors paused (LOCAL checkpoint)."),
            ("suspends", "Actors suspended (DURABLE checkpoint)."),
            ("evictions", "Running actors paused to make room for a resume."),
            ("golden_builds", "Golden snapshots built."),
            ("reconciled", "Intermediate states finished or rolled back after a restart."),
            ("lost_answers", "Worker calls whose answer was lost, settled from the worker's state."),
            ("takeovers", "Operations of dead replicas (expired liveness lease) taken over."),
        ] {
            let _ = writeln!(out, "# HELP ate_{name}_total {help}\n# TYPE ate_{name}_total counter");
            let _ = writeln!(out, "ate_{name}_total {}", g.counters.get(name).copied().unwrap_or(0));
        }
        out.push_str("# HELP ate_router_requests_total Requests answered by the router, by status code.\n# TYPE ate_router_requests_total counter\n");
        for (code, n) in &g.router {
            let _ = writeln!(out, "ate_router_requests_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP ate_router_errors_total Errors the router answered itself, by reason.\n# TYPE ate_router_errors_total counter\n");
        for (reason, n) in &g.router_errors {
            let _ = writeln!(out, "ate_router_errors_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str("# HELP ate_api_requests_total Requests answered by the admin API, by status code.\n# TYPE ate_api_requests_total counter\n");
        for (code, n) in &g.api {
            let _ = writeln!(out, "ate_api_requests_total{{code=\"{code}\"}} {n}");
        }
        out.push_str("# HELP ate_http_events_total Connections refused or closed to protect a listener, by listener and event.\n# TYPE ate_http_events_total counter\n");
        for ((listener, ev), n) in &g.http {
            let _ = writeln!(out, "ate_http_events_total{{listener=\"{listener}\",event=\"{ev}\"}} {n}");
        }
        out.push_str("# HELP ate_actors Actors per state.\n# TYPE ate_actors gauge\n");
        for s in ate_core::ActorState::ALL {
            let n = actors.get(s.as_str()).copied().unwrap_or(0);
            let _ = writeln!(out, "ate_actors{{state=\"{}\"}} {n}", s.as_str());
        }
        out.push_str("# HELP ate_workers Workers per pool and occupancy (busy: leased to an actor or a golden build).\n# TYPE ate_workers gauge\n");
        for ((pool, state), n) in workers {
            let _ = writeln!(out, "ate_workers{{pool=\"{pool}\",state=\"{state}\"}} {n}");
        }
        out
    }
}

/// The p-th percentile (0..=100) of `v`, nearest-rank; 0 for no samples.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histograms_and_gauges() {
        let m = Metrics::default();
        m.resumed(Tier::Local, Duration::from_millis(220));
        m.resumed(Tier::Golden, Duration::from_millis(600));
        m.routed(200);
        let mut actors = BTreeMap::new();
        actors.insert("RUNNING".to_owned(), 3);
        let mut workers = BTreeMap::new();
        workers.insert(("p".to_owned(), "busy".to_owned()), 3);
        let text = m.render(&actors, &workers);
        assert!(text.contains("ate_resume_seconds_bucket{tier=\"local\",le=\"0.25\"} 1"), "{text}");
        assert!(text.contains("ate_resume_seconds_bucket{tier=\"local\",le=\"0.2\"} 0"));
        assert!(text.contains("ate_resume_seconds_count{tier=\"golden\"} 1"));
        assert!(text.contains("ate_actors{state=\"RUNNING\"} 3"));
        assert!(text.contains("ate_actors{state=\"PAUSED\"} 0"));
        assert!(text.contains("ate_workers{pool=\"p\",state=\"busy\"} 3"));
        assert!(text.contains("ate_router_requests_total{code=\"200\"} 1"));
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
