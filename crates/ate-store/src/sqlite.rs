//! The embedded default: one SQLite file, no server.
//!
//! Schema (version 1):
//!
//! ```sql
//! CREATE TABLE records (kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
//!                       body BLOB NOT NULL, PRIMARY KEY (kind, name)) WITHOUT ROWID;
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);  -- 'revision', 'schema_version'
//! CREATE TABLE replicas (name TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);  -- liveness leases
//! CREATE TABLE leaders (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL);
//! ```
//!
//! Replica and leadership leases are timestamps of this host's wall clock (every process
//! sharing the file runs on the same machine): a lease is alive while `expires_ms` is in the
//! future. The tables are additive, so databases of schema 1 written before them simply gain
//! them. A leadership step (`try_lead`) is one `BEGIN IMMEDIATE` transaction: read the row,
//! take or renew it if it is free, expired or the caller's, answer the holder.
//!
//! A write is one `BEGIN IMMEDIATE` transaction (so several processes sharing the file
//! serialize on SQLite's write lock): check every expectation, bump `revision`, apply every
//! change with the new revision as its version, commit. The database runs in WAL mode with
//! `synchronous=FULL`: a committed transition survives a crash of the process and of the
//! machine.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use ate_core::store::{Change, Expect, Kind, LeaderState, Record, Store, StoreError};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

const SCHEMA_VERSION: i64 = 1;

/// A [`Store`] in one SQLite file.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

/// Narrows an existing file that others may read or write to 0600 (logged); a missing
/// file is fine.
fn narrow_to_owner(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Backend(format!("inspecting {}: {e}", path.display()))),
    };
    if meta.file_type().is_symlink() {
        return Err(StoreError::Backend(format!(
            "{} is a symbolic link; refusing to use it",
            path.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Backend(format!("narrowing {}: {e}", path.display())))?;
        tracing::info!(path = %path.display(), old_mode = format!("{mode:o}"), "narrowed the database file to 0600");
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    ///
    /// The database holds every record (templates with their environment, worker sockets), so
    /// it is private: a missing directory is created 0700, the file is created 0600 before
    /// SQLite opens it (its `-wal` and `-shm` files then get the same mode), and an existing
    /// file, `-wal` or `-shm` readable by others is narrowed to 0600 (logged).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
            && !dir.exists()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Backend(format!("creating {}: {e}", path.display())))?;
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            narrow_to_owner(Path::new(&p))?;
        }
        let conn = Connection::open(path).map_err(backend)?;
        Self::init(conn)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS records (
                 kind TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, body BLOB NOT NULL,
                 PRIMARY KEY (kind, name)) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS replicas (name TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS leaders (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_ms INTEGER NOT NULL);
             INSERT OR IGNORE INTO meta (key, value) VALUES ('revision', 0);",
        )
        .map_err(backend)?;
        let found: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        match found {
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION])
                    .map_err(backend)?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v) => {
                return Err(StoreError::Backend(format!(
                    "database schema version {v} is not supported (this ate knows {SCHEMA_VERSION})"
                )));
            }
        }
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT version, body FROM records WHERE kind = ?1 AND name = ?2",
            params![kind.as_str(), name],
            |r| Ok(Record { version: r.get::<_, i64>(0)? as u64, body: r.get(1)? }),
        )
        .optional()
        .map_err(backend)
    }

    fn list(&self, kind: Kind) -> Result<Vec<(String, Record)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT name, version, body FROM records WHERE kind = ?1 ORDER BY name")
            .map_err(backend)?;
        let rows = stmt
            .query_map([kind.as_str()], |r| {
                Ok((r.get::<_, String>(0)?, Record { version: r.get::<_, i64>(1)? as u64, body: r.get(2)? }))
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    fn commit(&self, changes: &[Change]) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        for c in changes {
            let found: Option<i64> = tx
                .query_row(
                    "SELECT version FROM records WHERE kind = ?1 AND name = ?2",
                    params![c.kind.as_str(), c.name],
                    |r| r.get(0),
                )
                .optional()
                .map_err(backend)?;
            let found = found.map(|v| v as u64);
            let ok = match c.expect {
                Expect::Any => true,
                Expect::Absent => found.is_none(),
                Expect::Version(v) => found == Some(v),
            };
            if !ok {
                // Dropping the transaction rolls it back.
                return Err(StoreError::Conflict {
                    kind: c.kind.as_str(),
                    name: c.name.clone(),
                    expected: c.expect,
                    found,
                });
            }
        }
        let revision: i64 = tx
            .query_row("UPDATE meta SET value = value + 1 WHERE key = 'revision' RETURNING value", [], |r| {
                r.get(0)
            })
            .map_err(backend)?;
        for c in changes {
            match &c.body {
                Some(body) => tx.execute(
                    "INSERT INTO records (kind, name, version, body) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, body = excluded.body",
                    params![c.kind.as_str(), c.name, revision, body],
                ),
                None => tx.execute(
                    "DELETE FROM records WHERE kind = ?1 AND name = ?2",
                    params![c.kind.as_str(), c.name],
                ),
            }
            .map_err(backend)?;
        }
        tx.commit().map_err(backend)?;
        Ok(revision as u64)
    }

    fn heartbeat(&self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        let expires = now_ms().saturating_add(ttl.as_millis() as i64);
        self.lock()
            .execute(
                "INSERT INTO replicas (name, expires_ms) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET expires_ms = excluded.expires_ms",
                params![replica, expires],
            )
            .map_err(backend)?;
        Ok(())
    }

    fn replica_alive(&self, replica: &str) -> Result<bool, StoreError> {
        let expires: Option<i64> = self
            .lock()
            .query_row("SELECT expires_ms FROM replicas WHERE name = ?1", [replica], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        Ok(expires.is_some_and(|e| e > now_ms()))
    }

    fn release_replica(&self, replica: &str) -> Result<(), StoreError> {
        self.lock().execute("DELETE FROM replicas WHERE name = ?1", [replica]).map_err(backend)?;
        Ok(())
    }

    fn try_lead(&self, name: &str, owner: &str, ttl: Duration) -> Result<LeaderState, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(backend)?;
        let now = now_ms();
        let cur: Option<(String, i64)> = tx
            .query_row("SELECT holder, expires_ms FROM leaders WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(backend)?;
        let state = match cur {
            Some((holder, expires)) if holder != owner && expires > now => {
                LeaderState { holder, ttl_left_ms: (expires - now) as u64 }
            }
            _ => {
                let ttl_ms = (ttl.as_millis() as i64).max(1);
                tx.execute(
                    "INSERT INTO leaders (name, holder, expires_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_ms = excluded.expires_ms",
                    params![name, owner, now.saturating_add(ttl_ms)],
                )
                .map_err(backend)?;
                LeaderState { holder: owner.to_owned(), ttl_left_ms: ttl_ms as u64 }
            }
        };
        tx.commit().map_err(backend)?;
        Ok(state)
    }

    fn leader(&self, name: &str) -> Result<Option<LeaderState>, StoreError> {
        let cur: Option<(String, i64)> = self
            .lock()
            .query_row("SELECT holder, expires_ms FROM leaders WHERE name = ?1", [name], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(backend)?;
        let now = now_ms();
        Ok(cur
            .filter(|(_, e)| *e > now)
            .map(|(holder, e)| LeaderState { holder, ttl_left_ms: (e - now) as u64 }))
    }

    fn resign(&self, name: &str, owner: &str) -> Result<bool, StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM leaders WHERE name = ?1 AND holder = ?2", [name, owner])
            .map_err(backend)?;
        Ok(n > 0)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl SqliteStore {
    /// Overwrites the schema version (tests of the version check).
    #[doc(hidden)]
    pub fn set_schema_version_for_tests(path: &Path, version: i64) -> Result<(), StoreError> {
        let conn = Connection::open(path).map_err(backend)?;
        conn.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [version])
            .map_err(backend)?;
        Ok(())
    }
}
