//! # ate-store
//!
//! The two implementations of `ate_core::Store`:
//!
//! * [`SqliteStore`]: embedded SQLite (`rusqlite`, bundled — no system library, no server),
//!   the default: one file, `BEGIN IMMEDIATE` transactions;
//! * [`RedisStore`]: Redis or Valkey, for several control-plane replicas sharing one store;
//!   every write is one atomic Lua script.
//!
//! Both pass the same [`conformance`] suite (`tests/conformance.rs` runs it against an
//! in-memory and a file SQLite, and against a real `redis-server` the test starts itself).
//!
//! ```
//! use ate_core::store::{Expect, Kind, Store, put};
//! let store = ate_store::SqliteStore::in_memory().unwrap();
//! let rev = store.commit(&[put(Kind::Actor, "a1", Expect::Absent, &"hello")]).unwrap();
//! assert_eq!(store.get(Kind::Actor, "a1").unwrap().unwrap().version, rev);
//! assert!(store.commit(&[put(Kind::Actor, "a1", Expect::Absent, &"again")]).unwrap_err().is_conflict());
//! ```

pub mod conformance;
mod redis_store;
mod sqlite;
pub mod testing;

use std::path::PathBuf;
use std::sync::Arc;

pub use ate_core::store::{Store, StoreError};
pub use redis_store::RedisStore;
pub use sqlite::SqliteStore;

/// Which store to open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    Sqlite(PathBuf),
    Redis { url: String, prefix: String },
}

impl std::fmt::Display for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreConfig::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            StoreConfig::Redis { url, prefix } => write!(f, "{} (keys {prefix}*)", redact_url(url)),
        }
    }
}

/// `redis://user:secret@host/0` -> `redis://user:***@host/0`: a URL as it may be logged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let Some((userinfo, host)) = authority.rsplit_once('@') else { return url.to_owned() };
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let shown = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
    match path {
        Some(p) => format!("{scheme}://{shown}@{host}/{p}"),
        None => format!("{scheme}://{shown}@{host}"),
    }
}

/// Opens the configured store.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite(p) => Arc::new(SqliteStore::open(p)?),
        StoreConfig::Redis { url, prefix } => Arc::new(RedisStore::open(url, prefix)?),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls_are_logged_without_secrets() {
        use super::redact_url;
        assert_eq!(redact_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://:hunter2@127.0.0.1:6379/0"), "redis://:***@127.0.0.1:6379/0");
        assert_eq!(redact_url("redis://u:p@h"), "redis://u:***@h");
        assert_eq!(redact_url("rediss://token@h:1/2"), "rediss://***@h:1/2");
        let shown =
            super::StoreConfig::Redis { url: "redis://:pw@h:1/0".into(), prefix: "ate:".into() }.to_string();
        assert!(!shown.contains("pw"), "{shown}");
    }
}
