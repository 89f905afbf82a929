//! Redis / Valkey: the shared store for several control-plane replicas.
//!
//! Layout under a key prefix (default `ate:`):
//!
//! ```text
//! <prefix>rec:<kind>:<name>   hash { v: <version>, b: <body> }
//! <prefix>idx:<kind>          set of names of that kind
//! <prefix>rev                 the store-wide revision counter
//! <prefix>replica:<name>      a replica's liveness lease (SET ... PX <ttl>: Redis expires it)
//! <prefix>leader:<name>       a leadership lease: the holder's replica name, PX expiry
//! ```
//!
//! A leadership step is one Lua script (`LEAD`): take the lease if the key is absent (free
//! or expired: Redis removed it), renew it if it names the caller, else answer its holder
//! and `PTTL`. A resignation deletes it only if it still names the caller (`RESIGN`).
//!
//! A write is one Lua script (`COMMIT` below), which Redis runs atomically: it checks every
//! expectation, `INCR`s the revision and applies every change, or returns the first conflict
//! having written nothing. A listing is a script too, so it reads one consistent state.
//! Durability is Redis's: run it with `appendonly yes` (and `appendfsync always` to survive a
//! machine crash) when it is the source of truth.

use std::sync::Mutex;
use std::time::Duration;

use ate_core::store::{Change, Expect, Kind, LeaderState, Record, Store, StoreError};

const COMMIT: &str = r#"
local n = tonumber(ARGV[1])
for i = 1, n do
  local exp = ARGV[1 + (i - 1) * 4 + 1]
  local cur = redis.call('HGET', KEYS[i], 'v')
  if exp == 'absent' then
    if cur then return 'conflict:' .. i .. ':' .. cur end
  elseif exp ~= 'any' then
    if (not cur) or cur ~= exp then return 'conflict:' .. i .. ':' .. (cur or '') end
  end
end
local rev = redis.call('INCR', KEYS[2 * n + 1])
for i = 1, n do
  local base = 1 + (i - 1) * 4
  if ARGV[base + 2] == 'put' then
    redis.call('HSET', KEYS[i], 'v', rev, 'b', ARGV[base + 3])
    redis.call('SADD', KEYS[n + i], ARGV[base + 4])
  else
    redis.call('DEL', KEYS[i])
    redis.call('SREM', KEYS[n + i], ARGV[base + 4])
  end
end
return 'ok:' .. rev
"#;

const LIST: &str = r#"
local names = redis.call('SMEMBERS', KEYS[1])
table.sort(names)
local out = {}
for _, name in ipairs(names) do
  local r = redis.call('HMGET', ARGV[1] .. name, 'v', 'b')
  if r[1] then
    table.insert(out, name)
    table.insert(out, r[1])
    table.insert(out, r[2])
  end
end
return out
"#;

const LEAD: &str = r#"
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {ARGV[1], tonumber(ARGV[2])}
end
return {cur, redis.call('PTTL', KEYS[1])}
"#;

const RESIGN: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// A [`Store`] in Redis or Valkey.
pub struct RedisStore {
    client: redis::Client,
    prefix: String,
    pool: Mutex<Vec<redis::Connection>>,
    commit: redis::Script,
    list: redis::Script,
    lead: redis::Script,
    resign: redis::Script,
}

fn backend(e: redis::RedisError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379/0`); every key starts with `prefix`.
    pub fn open(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(backend)?;
        let s = Self {
            client,
            prefix: prefix.to_owned(),
            pool: Mutex::new(Vec::new()),
            commit: redis::Script::new(COMMIT),
            list: redis::Script::new(LIST),
            lead: redis::Script::new(LEAD),
            resign: redis::Script::new(RESIGN),
        };
        // Fail now, clearly, rather than on the first transition.
        s.with_conn(|c| redis::cmd("PING").query::<String>(c))?;
        Ok(s)
    }

    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let c = self.client.get_connection_with_timeout(Duration::from_secs(5)).map_err(backend)?;
                c.set_read_timeout(Some(Duration::from_secs(10))).map_err(backend)?;
                c.set_write_timeout(Some(Duration::from_secs(10))).map_err(backend)?;
                c
            }
        };
        let out = f(&mut conn);
        match &out {
            // A connection that failed at the transport level is dropped, not reused.
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {}
            _ => self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(conn),
        }
        out.map_err(backend)
    }

    fn rec_key(&self, kind: Kind, name: &str) -> String {
        format!("{}rec:{}:{name}", self.prefix, kind.as_str())
    }

    fn replica_key(&self, replica: &str) -> String {
        format!("{}replica:{replica}", self.prefix)
    }

    fn leader_key(&self, name: &str) -> String {
        format!("{}leader:{name}", self.prefix)
    }

    fn idx_key(&self, kind: Kind) -> String {
        format!("{}idx:{}", self.prefix, kind.as_str())
    }
}

fn parse_version(kind: Kind, name: &str, v: &[u8]) -> Result<u64, StoreError> {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).ok_or_else(|| StoreError::Decode {
        kind: kind.as_str(),
        name: name.to_owned(),
        detail: format!("version {:?} is not a number", String::from_utf8_lossy(v)),
    })
}

impl Store for RedisStore {
    fn backend(&self) -> &'static str {
        "redis"
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError> {
        let key = self.rec_key(kind, name);
        let (v, b): (Option<Vec<u8>>, Option<Vec<u8>>) =
            self.with_conn(|c| redis::cmd("HMGET").arg(&key).arg("v").arg("b").query(c))?;
        match (v, b) {
            (Some(v), Some(body)) => Ok(Some(Record { version: parse_version(kind, name, &v)?, body })),
            _ => Ok(None),
        }
    }

    fn list(&self, kind: Kind) -> Result<Vec<(String, Record)>, StoreError> {
        let rec_prefix = format!("{}rec:{}:", self.prefix, kind.as_str());
        let flat: Vec<Vec<u8>> =
            self.with_conn(|c| self.list.key(self.idx_key(kind)).arg(&rec_prefix).invoke(c))?;
        let mut out = Vec::with_capacity(flat.len() / 3);
        for triple in flat.chunks(3) {
            let [name, v, body] = triple else {
                return Err(StoreError::Backend("redis: list script returned a ragged answer".into()));
            };
            let name = String::from_utf8_lossy(name).into_owned();
            let version = parse_version(kind, &name, v)?;
            out.push((name, Record { version, body: body.clone() }));
        }
        Ok(out)
    }

    fn commit(&self, changes: &[Change]) -> Result<u64, StoreError> {
        if changes.is_empty() {
            return Err(StoreError::Backend("an empty write".into()));
        }
        let mut inv = self.commit.prepare_invoke();
        for c in changes {
            inv.key(self.rec_key(c.kind, &c.name));
        }
        for c in changes {
            inv.key(self.idx_key(c.kind));
        }
        inv.key(format!("{}rev", self.prefix));
        inv.arg(changes.len());
        for c in changes {
            match c.expect {
                Expect::Any => inv.arg("any"),
                Expect::Absent => inv.arg("absent"),
                Expect::Version(v) => inv.arg(v.to_string()),
            };
            match &c.body {
                Some(b) => inv.arg("put").arg(b.as_slice()),
                None => inv.arg("del").arg(""),
            };
            inv.arg(&c.name);
        }
        let answer: String = self.with_conn(|conn| inv.invoke(conn))?;
        if let Some(rev) = answer.strip_prefix("ok:") {
            return rev
                .parse()
                .map_err(|_| StoreError::Backend(format!("redis: bad commit answer {answer:?}")));
        }
        let mut parts = answer.splitn(3, ':');
        let (Some("conflict"), Some(i), Some(found)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(StoreError::Backend(format!("redis: bad commit answer {answer:?}")));
        };
        let i: usize =
            i.parse().map_err(|_| StoreError::Backend(format!("redis: bad commit answer {answer:?}")))?;
        let c = &changes[i.saturating_sub(1).min(changes.len() - 1)];
        Err(StoreError::Conflict {
            kind: c.kind.as_str(),
            name: c.name.clone(),
            expected: c.expect,
            found: found.parse().ok(),
        })
    }

    fn heartbeat(&self, replica: &str, ttl: Duration) -> Result<(), StoreError> {
        let key = self.replica_key(replica);
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        self.with_conn(|c| redis::cmd("SET").arg(&key).arg("alive").arg("PX").arg(ttl_ms).query::<()>(c))
    }

    fn replica_alive(&self, replica: &str) -> Result<bool, StoreError> {
        let key = self.replica_key(replica);
        self.with_conn(|c| redis::cmd("EXISTS").arg(&key).query::<bool>(c))
    }

    fn release_replica(&self, replica: &str) -> Result<(), StoreError> {
        let key = self.replica_key(replica);
        self.with_conn(|c| redis::cmd("DEL").arg(&key).query::<()>(c))
    }

    fn try_lead(&self, name: &str, owner: &str, ttl: Duration) -> Result<LeaderState, StoreError> {
        let key = self.leader_key(name);
        let ttl_ms = (ttl.as_millis() as u64).max(1);
        let (holder, left): (String, i64) =
            self.with_conn(|c| self.lead.key(&key).arg(owner).arg(ttl_ms).invoke(c))?;
        // PTTL is -1 for a key without expiry (never written so by ate) and -2 for one
        // that vanished in between (impossible inside the script): both read as "expiring".
        Ok(LeaderState { holder, ttl_left_ms: left.max(0) as u64 })
    }

    fn leader(&self, name: &str) -> Result<Option<LeaderState>, StoreError> {
        let key = self.leader_key(name);
        let (holder, left): (Option<String>, i64) =
            self.with_conn(|c| redis::pipe().atomic().cmd("GET").arg(&key).cmd("PTTL").arg(&key).query(c))?;
        Ok(holder.map(|holder| LeaderState { holder, ttl_left_ms: left.max(0) as u64 }))
    }

    fn resign(&self, name: &str, owner: &str) -> Result<bool, StoreError> {
        let key = self.leader_key(name);
        let n: i64 = self.with_conn(|c| self.resign.key(&key).arg(owner).invoke(c))?;
        Ok(n > 0)
    }
}
