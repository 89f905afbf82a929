//! Identifiers that end up in paths, namespace names and log lines.
//!
//! Every identifier a request carries is validated here before it touches the file system:
//! a valid [`Name`] can be joined onto a directory without escaping it.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidArgument;

/// Longest accepted identifier, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// A validated identifier: 1..=128 bytes of `[A-Za-z0-9._-]`, starting with an alphanumeric
/// character. It cannot contain `/`, `:` or NUL, cannot be `.` or `..`, and so is safe as a
/// single path component and as part of the `namespace:template:actor` key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

impl Name {
    /// Validates `value`; `field` names the request field in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self, InvalidArgument> {
        if value.is_empty() {
            return Err(InvalidArgument::new(field, "must not be empty"));
        }
        if value.len() > MAX_NAME_LEN {
            return Err(InvalidArgument::new(
                field,
                format!("is {} bytes long, at most {MAX_NAME_LEN} allowed", value.len()),
            ));
        }
        let first = value.as_bytes()[0];
        if !first.is_ascii_alphanumeric() {
            return Err(InvalidArgument::new(field, format!("{value:?} must start with a letter or digit")));
        }
        if let Some(bad) =
            value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(InvalidArgument::new(
                field,
                format!("{value:?} contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = InvalidArgument;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse("name", &value)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> Self {
        n.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The actor a request is about: substrate's `(namespace, template, actor_id)` triple.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ActorRef {
    pub namespace: Name,
    pub template: Name,
    pub actor_id: Name,
}

impl ActorRef {
    /// Validates the three request fields, naming the offending one on error.
    pub fn parse(namespace: &str, template: &str, actor_id: &str) -> Result<Self, InvalidArgument> {
        Ok(Self {
            namespace: Name::parse("actor_template_namespace", namespace)?,
            template: Name::parse("actor_template_name", template)?,
            actor_id: Name::parse("actor_id", actor_id)?,
        })
    }

    /// The directory name substrate's node agent uses: `namespace:template:actor_id`.
    pub fn key(&self) -> String {
        format!("{}:{}:{}", self.namespace, self.template, self.actor_id)
    }

    /// Parses [`key`](Self::key)'s `namespace:template:actor_id` form.
    pub fn parse_key(key: &str) -> Result<Self, InvalidArgument> {
        let mut parts = key.splitn(3, ':');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(ns), Some(t), Some(id)) => Self::parse(ns, t, id),
            _ => Err(InvalidArgument::new("actor", format!("{key:?} is not namespace:template:actor_id"))),
        }
    }
}

impl fmt::Display for ActorRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.namespace, self.template, self.actor_id)
    }
}

/// Identifier of one snapshot of an actor. Generated ids sort by creation time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SnapshotId(Name);

impl SnapshotId {
    pub fn parse(field: &str, value: &str) -> Result<Self, InvalidArgument> {
        Name::parse(field, value).map(Self)
    }

    /// A new id: `<UTC yyyymmddThhmmss.mmm>-<8 hex>` so that ids of one actor sort by age.
    pub fn generate(now: std::time::SystemTime, entropy: u32) -> Self {
        let stamp = crate::time::format_compact_utc(now);
        Self(Name(format!("{stamp}-{entropy:08x}")))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_directory_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "a:b", "a\0b", "-x", ".hidden", "a b"] {
            let err = Name::parse("actor_id", bad).unwrap_err();
            assert_eq!(err.field, "actor_id", "{bad:?}");
        }
        assert!(Name::parse("actor_id", &"a".repeat(MAX_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn ordinary_names_are_accepted() {
        for good in ["a", "counter", "actor-1", "A.b_c-9", "0123", &"z".repeat(MAX_NAME_LEN)] {
            Name::parse("actor_id", good).unwrap();
        }
    }

    #[test]
    fn actor_key_matches_the_node_agent_layout() {
        let a = ActorRef::parse("ns", "tpl", "id-1").unwrap();
        assert_eq!(a.key(), "ns:tpl:id-1");
        assert_eq!(a.to_string(), "ns/tpl/id-1");
    }

    #[test]
    fn actor_errors_name_the_field() {
        assert_eq!(ActorRef::parse("", "t", "a").unwrap_err().field, "actor_template_namespace");
        assert_eq!(ActorRef::parse("n", "t/..", "a").unwrap_err().field, "actor_template_name");
        assert_eq!(ActorRef::parse("n", "t", "..").unwrap_err().field, "actor_id");
    }

    #[test]
    fn generated_snapshot_ids_are_valid_and_sort_by_time() {
        let t0 = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_123);
        let t1 = t0 + std::time::Duration::from_millis(1);
        let a = SnapshotId::generate(t0, u32::MAX);
        let b = SnapshotId::generate(t1, 0);
        assert!(a < b);
        SnapshotId::parse("snapshot_id", a.as_str()).unwrap();
    }
}
