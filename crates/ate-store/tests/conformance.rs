//! The same store suite against SQLite (a file shared by two connections) and a real
//! Redis (`redis-server` started here on a free loopback port, killed at the end).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use ate_store::{RedisStore, SqliteStore, Store, conformance, testing};

#[test]
fn sqlite_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let n = AtomicU32::new(0);
    conformance::run_all(&|| {
        let path = dir.path().join(format!("ate-{}.db", n.fetch_add(1, Ordering::SeqCst)));
        let a: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        let b: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).unwrap());
        (a, b)
    });
}

#[test]
fn redis_passes_the_store_suite() {
    if let Some(why) = testing::redis_unavailable() {
        eprintln!("SKIPPED redis_passes_the_store_suite: {why}");
        return;
    }
    let server = testing::RedisServer::start().unwrap();
    let n = AtomicU32::new(0);
    conformance::run_all(&|| {
        let prefix = format!("t{}:", n.fetch_add(1, Ordering::SeqCst));
        let a: Arc<dyn Store> = Arc::new(RedisStore::open(&server.url, &prefix).unwrap());
        let b: Arc<dyn Store> = Arc::new(RedisStore::open(&server.url, &prefix).unwrap());
        (a, b)
    });
}

#[test]
fn sqlite_survives_reopening_and_refuses_unknown_schemas() {
    use ate_core::store::{Expect, Kind, put};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/ate.db");
    let rev = {
        let s = SqliteStore::open(&path).unwrap();
        s.commit(&[put(Kind::Actor, "a1", Expect::Absent, &"x")]).unwrap()
    };
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(s.get(Kind::Actor, "a1").unwrap().unwrap().version, rev);
    let next = s.commit(&[put(Kind::Actor, "a2", Expect::Absent, &"y")]).unwrap();
    assert!(next > rev, "the revision counter persists");
    drop(s);
    let conn = rusqlite_free_update(&path);
    assert!(conn, "could bump the schema version");
    let err = SqliteStore::open(&path).err().expect("schema 99 refused");
    assert!(err.to_string().contains("schema version 99"), "{err}");
}

fn rusqlite_free_update(path: &std::path::Path) -> bool {
    ate_store::SqliteStore::set_schema_version_for_tests(path, 99).is_ok()
}

#[test]
fn unreachable_redis_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = RedisStore::open(&format!("redis://127.0.0.1:{port}/0"), "x:").err().expect("nobody listens");
    assert!(err.to_string().contains("redis"), "{err}");
}

/// The database is private: created 0600 (with its -wal and -shm) in a 0700 directory it
/// creates, and an existing file readable by others is narrowed when opened.
#[test]
fn sqlite_files_are_private() {
    use ate_core::store::{Expect, Kind, put};
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("ate.db");
    let s = SqliteStore::open(&path).unwrap();
    s.commit(&[put(Kind::Actor, "a1", Expect::Absent, &"x")]).unwrap();
    assert_eq!(mode(path.parent().unwrap()), 0o700);
    for f in ["ate.db", "ate.db-wal", "ate.db-shm"] {
        let p = path.with_file_name(f);
        assert!(p.exists(), "{f} missing");
        assert_eq!(mode(&p), 0o600, "{f}");
    }
    drop(s);
    for f in ["ate.db", "ate.db-wal", "ate.db-shm"] {
        let p = path.with_file_name(f);
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.get(Kind::Actor, "a1").unwrap().is_some());
    for f in ["ate.db", "ate.db-wal", "ate.db-shm"] {
        let p = path.with_file_name(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f} not narrowed");
        }
    }
    // A symbolic link in place of the database is refused.
    let link = dir.path().join("link.db");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(SqliteStore::open(&link).is_err());
}
