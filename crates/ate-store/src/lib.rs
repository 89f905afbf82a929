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
            StoreConfig::Redis { url, prefix } => write!(f, "{url} (keys {prefix}*)"),
        }
    }
}

/// Opens the configured store.
pub fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match config {
        StoreConfig::Sqlite(p) => Arc::new(SqliteStore::open(p)?),
        StoreConfig::Redis { url, prefix } => Arc::new(RedisStore::open(url, prefix)?),
    })
}
