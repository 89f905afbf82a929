//! The suite's result: one JSON object (or a table and the same summary).

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
}

#[derive(Clone, Debug, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub backend: String,
    pub outcome: Outcome,
    pub detail: String,
    pub elapsed_ms: u64,
    pub wrong_resumes: u32,
    pub lost_acknowledged_state: u32,
    pub leaks: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Totals {
    pub cases: u32,
    pub passed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub wrong_resumes: u32,
    pub lost_acknowledged_state: u32,
    pub leaks: u32,
}

impl Totals {
    fn add(&mut self, r: &CaseResult) {
        self.cases += 1;
        match r.outcome {
            Outcome::Passed => self.passed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Skipped => self.skipped += 1,
        }
        self.wrong_resumes += r.wrong_resumes;
        self.lost_acknowledged_state += r.lost_acknowledged_state;
        self.leaks += r.leaks;
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    #[serde(flatten)]
    pub totals: Totals,
    pub elapsed_s: f64,
    pub by_backend: BTreeMap<String, Totals>,
    pub results: Vec<CaseResult>,
}

impl Summary {
    pub fn new(results: Vec<CaseResult>, elapsed_s: f64) -> Summary {
        let mut totals = Totals::default();
        let mut by_backend: BTreeMap<String, Totals> = BTreeMap::new();
        for r in &results {
            totals.add(r);
            by_backend.entry(r.backend.clone()).or_default().add(r);
        }
        Summary { totals, elapsed_s: (elapsed_s * 10.0).round() / 10.0, by_backend, results }
    }

    pub fn json(&self) -> String {
        // One line: scripts/test.sh reads the last line of the output as the summary.
        serde_json::to_string(self).expect("the summary serializes")
    }

    /// A human table, then the summary line.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let w = self.results.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
        out.push_str(&format!("{:<11} {:<w$} {:<8} {:>8}  detail\n", "backend", "case", "outcome", "ms"));
        for r in &self.results {
            let outcome = match r.outcome {
                Outcome::Passed => "passed",
                Outcome::Failed => "FAILED",
                Outcome::Skipped => "SKIPPED",
            };
            out.push_str(&format!(
                "{:<11} {:<w$} {:<8} {:>8}  {}\n",
                r.backend, r.name, outcome, r.elapsed_ms, r.detail
            ));
        }
        let t = &self.totals;
        out.push_str(&format!(
            "\n{} cases: {} passed, {} failed, {} skipped; wrong_resumes {}, lost_acknowledged_state {}, leaks {}; {:.1} s\n",
            t.cases, t.passed, t.failed, t.skipped, t.wrong_resumes, t.lost_acknowledged_state, t.leaks, self.elapsed_s
        ));
        for (b, t) in &self.by_backend {
            out.push_str(&format!(
                "  {b}: {} cases, {} passed, {} failed, {} skipped, wrong_resumes {}, lost_acknowledged_state {}, leaks {}\n",
                t.cases, t.passed, t.failed, t.skipped, t.wrong_resumes, t.lost_acknowledged_state, t.leaks
            ));
        }
        out
    }
}
