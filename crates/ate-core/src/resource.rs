//! Declared resources: actor templates, worker pools and actors, as the YAML files that
//! `ate apply -f` reads (shaped like the Kubernetes resources they will map onto).
//!
//! ```yaml
//! apiVersion: ate.dev/v1
//! kind: WorkerPool
//! metadata: { name: gvisor }
//! spec:
//!   backend: gvisor
//!   workers:
//!     - { name: w1, socket: /run/ateom/w1.sock }
//! ---
//! apiVersion: ate.dev/v1
//! kind: ActorTemplate
//! metadata: { name: counter, namespace: default }
//! spec:
//!   pool: gvisor
//!   containers:
//!     - name: counter
//!       image: oci-layout:/srv/images/counter:latest
//!       readyz: { httpGet: { path: /readyz, port: 8080 } }
//!   resources: { cpu: "1", memory: 256Mi }
//!   snapshot: { location: file:///var/lib/ate/snapshots/counter, scope: full }
//!   idlePolicy: { pauseAfterSeconds: 30, suspendAfterSeconds: 300 }
//! ```
//!
//! Parsing validates every name (a safe identifier without dots, since an actor's name is
//! the first label of its host name) and every field the control plane relies on, and names
//! the offending document and field on error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a resource document was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("document {doc}: not valid YAML for a resource: {detail}")]
    Yaml { doc: usize, detail: String },
    #[error("document {doc} ({kind} {name}): {field} {problem}")]
    Invalid { doc: usize, kind: &'static str, name: String, field: String, problem: String },
}

/// Longest accepted name, in bytes.
pub const MAX_NAME_LEN: usize = 63;

/// Checks a resource name: 1..=63 bytes of `[a-z0-9-]` (upper case allowed too), starting
/// with a letter or digit. No dots: an actor's name is a DNS label in `Host:` headers, and
/// the control plane reserves dotted names (`golden.<n>`) for itself.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("is {} bytes long, at most {MAX_NAME_LEN} allowed", name.len()));
    }
    if !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    if let Some(bad) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))) {
        return Err(format!("{name:?} contains {bad:?}; only letters, digits, '-' and '_' are allowed"));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

pub fn default_namespace() -> String {
    "default".into()
}

/// `HTTPGetAction` of a readiness probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default = "default_readyz_path")]
    pub path: String,
    pub port: u16,
}

fn default_readyz_path() -> String {
    "/readyz".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Readyz {
    pub http_get: HttpGet,
}

/// One container of a template.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerSpec {
    pub name: String,
    /// Image reference the worker prepares itself (`oci-layout:<dir>[:<tag>]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readyz: Option<Readyz>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub durable_dir_volumes: Vec<String>,
}

/// Requested resources (recorded and shown; enforcement is the worker pool's shape).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
}

/// What a snapshot captures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Memory, processes and file system.
    #[default]
    Full,
    /// Only the durable data directories.
    Data,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Object-store URI prefix (`file:///dir`, `s3://bucket/prefix`, ...). The golden
    /// snapshot goes under `<location>/golden`, each actor's under `<location>/actors/<actor>`.
    pub location: String,
    #[serde(default)]
    pub scope: Scope,
}

/// When the control plane pauses and suspends an idle actor on its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdlePolicy {
    /// RUNNING with no request for this long -> PAUSED (LOCAL snapshot). None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_after_seconds: Option<f64>,
    /// PAUSED for this long -> SUSPENDED (DURABLE snapshot). None: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    /// The worker pool whose workers run this template's actors.
    pub pool: String,
    /// Backend the pool must have (checked against the workers' reported backend).
    #[serde(default = "default_backend")]
    pub backend: String,
    pub containers: Vec<ContainerSpec>,
    #[serde(default)]
    pub resources: Resources,
    pub snapshot: SnapshotSpec,
    #[serde(default)]
    pub idle_policy: IdlePolicy,
}

fn default_backend() -> String {
    "gvisor".into()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// Unique among all pools.
    pub name: String,
    /// The worker's `ateom serve --socket`.
    pub socket: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    #[serde(default = "default_backend")]
    pub backend: String,
    pub workers: Vec<WorkerSpec>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorSpec {
    pub template: String,
}

/// One YAML document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Resource {
    ActorTemplate {
        #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        metadata: Metadata,
        spec: TemplateSpec,
    },
    WorkerPool {
        #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        metadata: Metadata,
        spec: PoolSpec,
    },
    Actor {
        #[serde(default, rename = "apiVersion", skip_serializing_if = "Option::is_none")]
        api_version: Option<String>,
        metadata: Metadata,
        spec: ActorSpec,
    },
}

impl Resource {
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::ActorTemplate { .. } => "ActorTemplate",
            Resource::WorkerPool { .. } => "WorkerPool",
            Resource::Actor { .. } => "Actor",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Resource::ActorTemplate { metadata, .. }
            | Resource::WorkerPool { metadata, .. }
            | Resource::Actor { metadata, .. } => &metadata.name,
        }
    }

    fn validate(&self, doc: usize) -> Result<(), ResourceError> {
        let kind = self.kind();
        let name = self.name().to_owned();
        let invalid = |field: &str, problem: String| ResourceError::Invalid {
            doc,
            kind,
            name: name.clone(),
            field: field.to_owned(),
            problem,
        };
        check_name(&name).map_err(|p| invalid("metadata.name", p))?;
        match self {
            Resource::ActorTemplate { metadata, spec, .. } => {
                check_name(&metadata.namespace).map_err(|p| invalid("metadata.namespace", p))?;
                check_name(&spec.pool).map_err(|p| invalid("spec.pool", p))?;
                if spec.containers.is_empty() {
                    return Err(invalid("spec.containers", "must list at least one container".into()));
                }
                for (i, c) in spec.containers.iter().enumerate() {
                    check_name(&c.name).map_err(|p| invalid(&format!("spec.containers[{i}].name"), p))?;
                    if let Some(r) = &c.readyz
                        && r.http_get.port == 0
                    {
                        return Err(invalid(
                            &format!("spec.containers[{i}].readyz.httpGet.port"),
                            "must be 1..=65535".into(),
                        ));
                    }
                }
                let loc = &spec.snapshot.location;
                if !["file:///", "s3://", "gs://", "az://"].iter().any(|s| loc.starts_with(s)) {
                    return Err(invalid(
                        "spec.snapshot.location",
                        format!("{loc:?} is not an object-store URI (file:///abs, s3://, gs://, az://)"),
                    ));
                }
                for (field, v) in [
                    ("spec.idlePolicy.pauseAfterSeconds", spec.idle_policy.pause_after_seconds),
                    ("spec.idlePolicy.suspendAfterSeconds", spec.idle_policy.suspend_after_seconds),
                ] {
                    if let Some(v) = v
                        && !(v.is_finite() && v >= 0.0)
                    {
                        return Err(invalid(field, format!("{v} is not a number of seconds >= 0")));
                    }
                }
            }
            Resource::WorkerPool { spec, .. } => {
                if spec.workers.is_empty() {
                    return Err(invalid("spec.workers", "must list at least one worker".into()));
                }
                let mut seen = std::collections::BTreeSet::new();
                for (i, w) in spec.workers.iter().enumerate() {
                    check_name(&w.name).map_err(|p| invalid(&format!("spec.workers[{i}].name"), p))?;
                    if !seen.insert(&w.name) {
                        return Err(invalid(&format!("spec.workers[{i}].name"), "is listed twice".into()));
                    }
                    if !w.socket.starts_with('/') {
                        return Err(invalid(
                            &format!("spec.workers[{i}].socket"),
                            format!("{:?} must be an absolute path", w.socket),
                        ));
                    }
                }
            }
            Resource::Actor { spec, .. } => {
                check_name(&spec.template).map_err(|p| invalid("spec.template", p))?;
            }
        }
        Ok(())
    }
}

/// Parses a multi-document YAML file (or a JSON array / object) into validated resources.
pub fn parse_resources(text: &str) -> Result<Vec<Resource>, ResourceError> {
    if let Ok(list) = serde_json::from_str::<Vec<Resource>>(text) {
        for (i, r) in list.iter().enumerate() {
            r.validate(i)?;
        }
        return Ok(list);
    }
    let mut out = Vec::new();
    for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = serde_yaml::Value::deserialize(de)
            .map_err(|e| ResourceError::Yaml { doc, detail: e.to_string() })?;
        if value.is_null() {
            continue; // an empty document (e.g. a trailing `---`)
        }
        let r: Resource =
            serde_yaml::from_value(value).map_err(|e| ResourceError::Yaml { doc, detail: e.to_string() })?;
        r.validate(doc)?;
        out.push(r);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
apiVersion: ate.dev/v1
kind: WorkerPool
metadata: { name: gvisor }
spec:
  backend: gvisor
  workers:
    - { name: w1, socket: /run/ateom/w1.sock }
    - { name: w2, socket: /run/ateom/w2.sock }
---
apiVersion: ate.dev/v1
kind: ActorTemplate
metadata: { name: counter }
spec:
  pool: gvisor
  containers:
    - name: counter
      image: oci-layout:/srv/images/counter:latest
      readyz: { httpGet: { port: 8080 } }
  resources: { cpu: "1", memory: 256Mi }
  snapshot: { location: "file:///var/lib/ate/snapshots/counter" }
  idlePolicy: { pauseAfterSeconds: 30, suspendAfterSeconds: 300 }
---
kind: Actor
metadata: { name: a1 }
spec: { template: counter }
"#;

    #[test]
    fn parses_the_documented_example() {
        let rs = parse_resources(EXAMPLE).unwrap();
        assert_eq!(rs.len(), 3);
        let Resource::ActorTemplate { metadata, spec, .. } = &rs[1] else { panic!("{rs:?}") };
        assert_eq!(metadata.namespace, "default");
        assert_eq!(spec.backend, "gvisor");
        assert_eq!(spec.containers[0].readyz.as_ref().unwrap().http_get.path, "/readyz");
        assert_eq!(spec.snapshot.scope, Scope::Full);
        assert_eq!(spec.idle_policy.pause_after_seconds, Some(30.0));
        assert_eq!(rs[2].kind(), "Actor");
        // And the JSON form of the same resources parses back identically.
        let json = serde_json::to_string(&rs).unwrap();
        assert_eq!(parse_resources(&json).unwrap(), rs);
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let bad = EXAMPLE.replace("name: a1", "name: a.1");
        let err = parse_resources(&bad).unwrap_err();
        assert!(
            matches!(&err, ResourceError::Invalid { doc: 2, field, .. } if field == "metadata.name"),
            "{err}"
        );
        let bad = EXAMPLE.replace("file:///var/lib", "/var/lib");
        let err = parse_resources(&bad).unwrap_err();
        assert!(err.to_string().contains("spec.snapshot.location"), "{err}");
        let bad = EXAMPLE.replace("socket: /run/ateom/w2.sock", "socket: w2.sock");
        assert!(parse_resources(&bad).unwrap_err().to_string().contains("spec.workers[1].socket"));
        let bad = EXAMPLE.replace("kind: Actor\n", "kind: Robot\n");
        assert!(matches!(parse_resources(&bad).unwrap_err(), ResourceError::Yaml { doc: 2, .. }));
    }

    #[test]
    fn names_are_dns_labels_without_dots() {
        for good in ["a", "actor-1", "A_b", "0"] {
            check_name(good).unwrap();
        }
        for bad in ["", "a.b", "-a", "a/b", "a b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
