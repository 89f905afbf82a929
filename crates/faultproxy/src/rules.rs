//! Fault rules: what to match, which occurrences, and what to do. Rules are set as JSON through
//! the control endpoint and replaced as a whole; each keeps its own counters.
//!
//! ```json
//! [
//!   {"method": "GET", "path_contains": "/LATEST", "occurrence": {"first": 2},
//!    "action": {"type": "status", "status": 503, "retry_after_secs": 1}},
//!   {"path_regex": "/chunks/[0-9a-f]{64}$", "occurrence": {"nth": 3},
//!    "action": {"type": "truncate", "after_bytes": 100}},
//!   {"method": "PUT", "path_contains": "index.json", "occurrence": "every",
//!    "action": {"type": "drop_request_body", "after_bytes": 10}}
//! ]
//! ```
//!
//! For each request every rule whose matcher matches counts the request (its *n*-th match);
//! the first of those whose occurrence filter selects *n* is applied. Matching is against the
//! request target (path and query, as sent by the client).

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Which of a rule's matching requests it applies to (counted from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Occurrence {
    /// Only the n-th match.
    Nth(u64),
    /// The first n matches.
    First(u64),
    /// Every match.
    Every,
}

impl Occurrence {
    pub fn selects(self, n: u64) -> bool {
        match self {
            Occurrence::Nth(k) => n == k,
            Occurrence::First(k) => n <= k,
            Occurrence::Every => true,
        }
    }
}

fn every() -> Occurrence {
    Occurrence::Every
}

/// What to do with a selected request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Answer with this status (an S3-style XML error body), without forwarding — or, with
    /// `after_forward`, after the upstream has handled the request (a write that landed but
    /// whose answer was lost). `retry_after_secs` adds a `Retry-After` header.
    Status {
        status: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
        #[serde(default)]
        after_forward: bool,
    },
    /// Wait this long before forwarding (longer than the client's timeout, typically).
    Stall { ms: u64 },
    /// Forward, then send only the first `after_bytes` of the response body and close the
    /// connection. The headers are left as they are (so the client can see the body is short),
    /// unless `rewrite_length` sets `Content-Length` to what is sent (a clean, short answer).
    Truncate {
        after_bytes: u64,
        #[serde(default)]
        rewrite_length: bool,
    },
    /// Close the client connection with a TCP reset, without any response.
    Reset,
    /// Forward only the first `after_bytes` of the request body, then abort the upstream
    /// request and reset the client connection (an upload dying midway).
    DropRequestBody { after_bytes: u64 },
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Status { .. } => "status",
            Action::Stall { .. } => "stall",
            Action::Truncate { .. } => "truncate",
            Action::Reset => "reset",
            Action::DropRequestBody { .. } => "drop_request_body",
        }
    }
}

/// One rule as written in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// HTTP method (any when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// A substring of the request target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_contains: Option<String>,
    /// A regular expression searched in the request target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default = "every")]
    pub occurrence: Occurrence,
    pub action: Action,
}

/// Why a rule set was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rule {index}: invalid path_regex: {source}")]
    Regex {
        index: usize,
        #[source]
        source: regex::Error,
    },
    #[error("rule {index}: status {status} is not an HTTP status (100..=599)")]
    Status { index: usize, status: u16 },
    #[error("rule {index}: occurrence {occurrence:?} selects nothing (occurrences count from 1)")]
    Occurrence { index: usize, occurrence: Occurrence },
    #[error("not a rule list: {0}")]
    Json(#[from] serde_json::Error),
}

/// A rule ready to match, with its counters.
#[derive(Debug)]
pub struct Rule {
    pub spec: RuleSpec,
    regex: Option<Regex>,
    /// Requests that matched.
    pub matches: u64,
    /// Requests the action was applied to.
    pub applied: u64,
}

impl Rule {
    fn matches(&self, method: &str, target: &str) -> bool {
        self.spec.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.spec.path_contains.as_deref().is_none_or(|p| target.contains(p))
            && self.regex.as_ref().is_none_or(|r| r.is_match(target))
    }
}

/// Parse a rule list: a JSON array of rules, or `{"rules": [...]}`.
pub fn parse(json: &[u8]) -> Result<Vec<Rule>, RuleError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Doc {
        List(Vec<RuleSpec>),
        Wrapped { rules: Vec<RuleSpec> },
    }
    let specs = match serde_json::from_slice::<Doc>(json) {
        Ok(Doc::List(r) | Doc::Wrapped { rules: r }) => r,
        // Untagged errors say nothing useful: report the plain list's error.
        Err(_) => serde_json::from_slice::<Vec<RuleSpec>>(json)?,
    };
    compile(specs)
}

/// Check and compile rule specs.
pub fn compile(specs: Vec<RuleSpec>) -> Result<Vec<Rule>, RuleError> {
    specs
        .into_iter()
        .enumerate()
        .map(|(index, spec)| {
            if let Action::Status { status, .. } = spec.action
                && !(100..=599).contains(&status)
            {
                return Err(RuleError::Status { index, status });
            }
            if matches!(spec.occurrence, Occurrence::Nth(0) | Occurrence::First(0)) {
                return Err(RuleError::Occurrence { index, occurrence: spec.occurrence });
            }
            let regex = match &spec.path_regex {
                Some(r) => Some(Regex::new(r).map_err(|source| RuleError::Regex { index, source })?),
                None => None,
            };
            Ok(Rule { spec, regex, matches: 0, applied: 0 })
        })
        .collect()
}

/// Count the request against every matching rule; return the first selected rule's index and
/// action.
pub fn decide(rules: &mut [Rule], method: &str, target: &str) -> Option<(usize, Action)> {
    let mut chosen = None;
    for (i, r) in rules.iter_mut().enumerate() {
        if !r.matches(method, target) {
            continue;
        }
        r.matches += 1;
        if chosen.is_none() && r.spec.occurrence.selects(r.matches) {
            r.applied += 1;
            chosen = Some((i, r.spec.action.clone()));
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurrences_select_what_they_say() {
        let sel = |o: Occurrence| (1..=5).filter(|&n| o.selects(n)).collect::<Vec<_>>();
        assert_eq!(sel(Occurrence::Nth(3)), [3]);
        assert_eq!(sel(Occurrence::First(2)), [1, 2]);
        assert_eq!(sel(Occurrence::Every), [1, 2, 3, 4, 5]);
    }

    #[test]
    fn parses_both_forms_and_refuses_nonsense() {
        let list = br#"[{"method":"GET","path_contains":"/LATEST","occurrence":{"first":2},
                         "action":{"type":"status","status":503,"retry_after_secs":1}}]"#;
        let rules = parse(list).unwrap();
        assert_eq!(rules[0].spec.occurrence, Occurrence::First(2));
        assert_eq!(
            rules[0].spec.action,
            Action::Status { status: 503, retry_after_secs: Some(1), after_forward: false }
        );
        let wrapped = br#"{"rules":[{"path_regex":"/chunks/","action":{"type":"reset"}}]}"#;
        assert_eq!(parse(wrapped).unwrap()[0].spec.occurrence, Occurrence::Every);
        assert!(matches!(
            parse(br#"[{"action":{"type":"status","status":42}}]"#),
            Err(RuleError::Status { .. })
        ));
        assert!(matches!(
            parse(br#"[{"path_regex":"(","action":{"type":"reset"}}]"#),
            Err(RuleError::Regex { .. })
        ));
        assert!(matches!(
            parse(br#"[{"occurrence":{"nth":0},"action":{"type":"reset"}}]"#),
            Err(RuleError::Occurrence { .. })
        ));
        assert!(matches!(parse(br#"[{"pth":"/x","action":{"type":"reset"}}]"#), Err(RuleError::Json(_))));
        assert!(matches!(parse(br#"[{"action":{"type":"explode"}}]"#), Err(RuleError::Json(_))));
    }

    #[test]
    fn every_matching_rule_counts_and_the_first_selected_applies() {
        let mut rules = parse(
            br#"[{"method":"PUT","path_contains":"index.json","occurrence":{"nth":2},"action":{"type":"reset"}},
                 {"path_regex":"index\\.json$","occurrence":{"first":1},"action":{"type":"stall","ms":5}}]"#,
        )
        .unwrap();
        assert_eq!(decide(&mut rules, "GET", "/b/p/LATEST"), None);
        assert_eq!(decide(&mut rules, "PUT", "/b/s/index.json").map(|d| d.0), Some(1));
        assert_eq!(decide(&mut rules, "put", "/b/s/index.json").map(|d| d.0), Some(0));
        assert_eq!(decide(&mut rules, "PUT", "/b/s/index.json"), None);
        assert_eq!((rules[0].matches, rules[0].applied, rules[1].matches, rules[1].applied), (3, 1, 3, 1));
    }
}
