//! The cluster store: state every shard must agree on (the function registry, tenants and the
//! hashes of their tokens; spend later) lives here, never in a protocol of Tariff's own.
//!
//! Writes that depend on what is there are conditional in the store itself (a version to
//! match, a key that must be absent), so two shards racing cannot both win: a deploy over a
//! function checks its owner against the version it read, and fails with
//! [`StoreError::Conflict`] if someone wrote in between.
//!
//! [`ClusterStore`] is the seam. [`SqliteStore`] is the embedded default: one SQLite file in
//! the cluster directory, shared safely by every process on the machine (WAL mode, a busy
//! timeout). A cluster whose shards span machines uses [`etcd::EtcdStore`] instead, as
//! OpenWhisk's scheduler does; [`open`] picks one from a `--store` value.

#[cfg(feature = "etcd")]
pub mod etcd;

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use tariff_types::function::FunctionSpec;
use tariff_types::tenant::{Principal, Tenant};

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd failed or could not be reached.
    #[error("etcd store: {0}")]
    Etcd(String),
    /// A `--store` value that names no known store.
    #[error(
        "`{0}` is not a store: use sqlite:PATH or etcd:http://HOST:PORT[,http://HOST:PORT...]"
    )]
    BadLocation(String),
    /// The database failed.
    #[error("cluster store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A conditional write found the store changed since it was read (or a record it must
    /// create already there).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored record does not decode.
    #[error("cluster store holds an unreadable record for `{name}`: {reason}")]
    Corrupt {
        /// The record's key.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Whatever is there (for bootstrapping, where one writer owns the cluster).
    Any,
    /// Nothing under the name.
    Absent,
    /// The record at exactly this version.
    Version(u64),
}

/// What the store keeps for one idempotency key: which invocation it is bound to, until
/// when, and its answer once there is one.
///
/// Shards must agree on it (a caller resubmits to another shard after losing one), so it lives
/// here. While the invocation runs, the key binds until the caller's deadline: a shard lost
/// with the invocation running cannot release it, and another may take the key over only once
/// nobody can be waiting for the first run. Once answered, it binds for the window the shard
/// chooses (docs/failures.md), then [`ClusterStore::purge_keyed_runs`] forgets it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyedRun {
    /// The invocation the key is bound to.
    pub invocation: u64,
    /// The key binds until then, µs since the epoch.
    pub until_us: u64,
    /// The answer, as the shard encoded it, once there is one.
    pub answer: Option<Vec<u8>>,
}

/// State shared by every shard of a cluster.
pub trait ClusterStore: Send + Sync {
    /// Stores `spec` under its name if the store holds what `expect` says, and returns the
    /// new version; [`StoreError::Conflict`] otherwise.
    fn put_function(&self, spec: &FunctionSpec, expect: Expect) -> Result<u64, StoreError>;
    /// The function called `name`, if registered.
    fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError>;
    /// Every registered function, by name.
    fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError>;
    /// Removes the function `name` if it is at `version`; [`StoreError::Conflict`] if it has
    /// changed, `false` if it is gone.
    fn remove_function(&self, name: &str, version: u64) -> Result<bool, StoreError>;

    /// Adds a tenant with its first token's hash; [`StoreError::Conflict`] if it exists.
    fn add_tenant(&self, tenant: &Tenant, token_hash: &str) -> Result<(), StoreError>;
    /// The tenant called `name`.
    fn tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError>;
    /// Every tenant, by name.
    fn tenants(&self) -> Result<Vec<Tenant>, StoreError>;
    /// Removes a tenant, its tokens and its functions; `false` if there was none.
    fn remove_tenant(&self, name: &str) -> Result<bool, StoreError>;
    /// Replaces every token of tenant `name` with one hashing to `token_hash`; `false` if
    /// there is no such tenant.
    fn set_tenant_token(&self, name: &str, token_hash: &str) -> Result<bool, StoreError>;
    /// Who holds the token hashing to `token_hash`, if anyone.
    fn credential(&self, token_hash: &str) -> Result<Option<Principal>, StoreError>;
    /// Makes `token_hash` the administrator's credential if the cluster has none yet, and
    /// says whether it did: exactly one of several racing first shards wins.
    fn bootstrap_admin(&self, token_hash: &str) -> Result<bool, StoreError>;
    /// Replaces the administrator's credential (recovery, by whoever can write the store).
    fn reset_admin(&self, token_hash: &str) -> Result<(), StoreError>;
    /// Sets or lifts tenant `name`'s monthly budget; `false` if there is no such tenant.
    fn set_tenant_budget(&self, name: &str, budget: Option<f64>) -> Result<bool, StoreError>;

    /// Records shard `shard`'s running totals of this month's spend per tenant (each replaces
    /// that shard's last figure for the tenant).
    fn publish_spend(
        &self,
        month: &str,
        shard: u16,
        totals: &[(String, f64)],
    ) -> Result<(), StoreError>;
    /// Every shard's last published figure for `month`, as (tenant, shard, amount).
    fn spend(&self, month: &str) -> Result<Vec<(String, u16, f64)>, StoreError>;
    /// Forgets everything shard `shard` published (an embedded cluster starting afresh).
    fn clear_spend(&self, shard: u16) -> Result<(), StoreError>;

    /// Binds idempotency key `key` to `run` if it is free (never bound, or bound until before
    /// `now_us`), and returns `None`; otherwise leaves it and returns what holds it. One of
    /// several racing callers wins.
    fn claim_key(
        &self,
        key: &str,
        run: &KeyedRun,
        now_us: u64,
    ) -> Result<Option<KeyedRun>, StoreError>;
    /// Records the answer of `invocation` under `key` and binds the key until `until_us`, if
    /// the key is still bound to that invocation; says whether it was.
    fn settle_key(
        &self,
        key: &str,
        invocation: u64,
        answer: &[u8],
        until_us: u64,
    ) -> Result<bool, StoreError>;
    /// What holds `key`, if anything (expired or not).
    fn keyed_run(&self, key: &str) -> Result<Option<KeyedRun>, StoreError>;
    /// Forgets keys bound until before `now_us`; returns how many.
    fn purge_keyed_runs(&self, now_us: u64) -> Result<usize, StoreError>;
}

/// The embedded store: a SQLite database file.
pub struct SqliteStore {
    conn: Mutex<rusqlite::Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = rusqlite::Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS functions (
                 name    TEXT PRIMARY KEY,
                 version INTEGER NOT NULL,
                 spec    TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS tenants (
                 name          TEXT PRIMARY KEY,
                 created_at_us INTEGER NOT NULL,
                 budget        REAL
             );
             -- Each shard's running total of a tenant's spend in a month.
             CREATE TABLE IF NOT EXISTS spend (
                 month  TEXT NOT NULL,
                 tenant TEXT NOT NULL,
                 shard  INTEGER NOT NULL,
                 amount REAL NOT NULL,
                 PRIMARY KEY (month, tenant, shard)
             );
             -- One row per token hash; tenant NULL is the administrator.
             CREATE TABLE IF NOT EXISTS credentials (
                 hash   TEXT PRIMARY KEY,
                 tenant TEXT
             );
             CREATE INDEX IF NOT EXISTS credentials_by_tenant ON credentials(tenant);
             -- Idempotency keys: the invocation each is bound to, until when, its answer.
             CREATE TABLE IF NOT EXISTS keyed_runs (
                 key        TEXT PRIMARY KEY,
                 invocation INTEGER NOT NULL,
                 until_us   INTEGER NOT NULL,
                 answer     BLOB
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn decode(name: String, version: i64, json: String) -> Result<FunctionSpec, StoreError> {
        let mut spec: FunctionSpec =
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        spec.version = version as u64;
        Ok(spec)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn tenant_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        name: row.get(0)?,
        created_at_us: row.get::<_, i64>(1)? as u64,
        budget: row.get(2)?,
    })
}

fn keyed_run_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<KeyedRun> {
    Ok(KeyedRun {
        invocation: row.get::<_, i64>(0)? as u64,
        until_us: row.get::<_, i64>(1)? as u64,
        answer: row.get(2)?,
    })
}

fn conflict(what: impl Into<String>) -> StoreError {
    StoreError::Conflict(what.into())
}

impl ClusterStore for SqliteStore {
    fn put_function(&self, spec: &FunctionSpec, expect: Expect) -> Result<u64, StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            name: spec.name.clone(),
            reason: e.to_string(),
        })?;
        let conn = self.lock();
        let version: Option<i64> = match expect {
            Expect::Any => Some(conn.query_row(
                "INSERT INTO functions (name, version, spec) VALUES (?1, 1, ?2)
                 ON CONFLICT(name) DO UPDATE SET version = version + 1, spec = excluded.spec
                 RETURNING version",
                params![spec.name, json],
                |row| row.get(0),
            )?),
            Expect::Absent => conn
                .query_row(
                    "INSERT INTO functions (name, version, spec) VALUES (?1, 1, ?2)
                     ON CONFLICT(name) DO NOTHING RETURNING version",
                    params![spec.name, json],
                    |row| row.get(0),
                )
                .optional()?,
            Expect::Version(v) => conn
                .query_row(
                    "UPDATE functions SET version = version + 1, spec = ?2
                     WHERE name = ?1 AND version = ?3 RETURNING version",
                    params![spec.name, json, v as i64],
                    |row| row.get(0),
                )
                .optional()?,
        };
        version
            .map(|v| v as u64)
            .ok_or_else(|| conflict(format!("function `{}` changed meanwhile", spec.name)))
    }

    fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
        let row = self
            .lock()
            .query_row(
                "SELECT name, version, spec FROM functions WHERE name = ?1",
                params![name],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        row.map(|(n, v, s)| Self::decode(n, v, s)).transpose()
    }

    fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT name, version, spec FROM functions ORDER BY name")?;
        let rows = stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
        let mut specs = Vec::new();
        for row in rows {
            let (n, v, s) = row?;
            specs.push(Self::decode(n, v, s)?);
        }
        Ok(specs)
    }

    fn remove_function(&self, name: &str, version: u64) -> Result<bool, StoreError> {
        let conn = self.lock();
        let removed = conn.execute(
            "DELETE FROM functions WHERE name = ?1 AND version = ?2",
            params![name, version as i64],
        )?;
        if removed == 1 {
            return Ok(true);
        }
        let exists: bool = conn.query_row(
            "SELECT EXISTS(SELECT 1 FROM functions WHERE name = ?1)",
            params![name],
            |row| row.get(0),
        )?;
        if exists {
            Err(conflict(format!("function `{name}` changed meanwhile")))
        } else {
            Ok(false)
        }
    }

    fn add_tenant(&self, tenant: &Tenant, token_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let added = tx.execute(
            "INSERT INTO tenants (name, created_at_us, budget) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
            params![tenant.name, tenant.created_at_us as i64, tenant.budget],
        )?;
        if added == 0 {
            return Err(conflict(format!("tenant `{}` already exists", tenant.name)));
        }
        tx.execute(
            "INSERT INTO credentials (hash, tenant) VALUES (?1, ?2)",
            params![token_hash, tenant.name],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT name, created_at_us, budget FROM tenants WHERE name = ?1",
                params![name],
                tenant_row,
            )
            .optional()?)
    }

    fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT name, created_at_us, budget FROM tenants ORDER BY name")?;
        let rows = stmt.query_map([], tenant_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn remove_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let removed = tx.execute("DELETE FROM tenants WHERE name = ?1", params![name])?;
        tx.execute("DELETE FROM credentials WHERE tenant = ?1", params![name])?;
        tx.execute(
            "DELETE FROM functions WHERE json_extract(spec, '$.owner') = ?1",
            params![name],
        )?;
        tx.commit()?;
        Ok(removed == 1)
    }

    fn set_tenant_token(&self, name: &str, token_hash: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM tenants WHERE name = ?1)",
            params![name],
            |row| row.get(0),
        )?;
        if !exists {
            return Ok(false);
        }
        tx.execute("DELETE FROM credentials WHERE tenant = ?1", params![name])?;
        tx.execute(
            "INSERT INTO credentials (hash, tenant) VALUES (?1, ?2)",
            params![token_hash, name],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn credential(&self, token_hash: &str) -> Result<Option<Principal>, StoreError> {
        let row: Option<Option<String>> = self
            .lock()
            .query_row(
                "SELECT tenant FROM credentials WHERE hash = ?1",
                params![token_hash],
                |row| row.get(0),
            )
            .optional()?;
        Ok(row.map(|tenant| tenant.map_or(Principal::Admin, Principal::Tenant)))
    }

    fn bootstrap_admin(&self, token_hash: &str) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM credentials WHERE tenant IS NULL)",
            [],
            |row| row.get(0),
        )?;
        if exists {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO credentials (hash, tenant) VALUES (?1, NULL)",
            params![token_hash],
        )?;
        tx.commit()?;
        Ok(true)
    }

    fn reset_admin(&self, token_hash: &str) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM credentials WHERE tenant IS NULL", [])?;
        tx.execute(
            "INSERT INTO credentials (hash, tenant) VALUES (?1, NULL)",
            params![token_hash],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn set_tenant_budget(&self, name: &str, budget: Option<f64>) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "UPDATE tenants SET budget = ?2 WHERE name = ?1",
            params![name, budget],
        )?;
        Ok(changed == 1)
    }

    fn publish_spend(
        &self,
        month: &str,
        shard: u16,
        totals: &[(String, f64)],
    ) -> Result<(), StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        for (tenant, amount) in totals {
            tx.execute(
                "INSERT INTO spend (month, tenant, shard, amount) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(month, tenant, shard) DO UPDATE SET amount = excluded.amount",
                params![month, tenant, shard, amount],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn clear_spend(&self, shard: u16) -> Result<(), StoreError> {
        self.lock()
            .execute("DELETE FROM spend WHERE shard = ?1", params![shard])?;
        Ok(())
    }

    fn claim_key(
        &self,
        key: &str,
        run: &KeyedRun,
        now_us: u64,
    ) -> Result<Option<KeyedRun>, StoreError> {
        let mut conn = self.lock();
        // IMMEDIATE takes the write lock at once, so two processes cannot both read "free".
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let held = tx
            .query_row(
                "SELECT invocation, until_us, answer FROM keyed_runs WHERE key = ?1",
                params![key],
                keyed_run_row,
            )
            .optional()?;
        if let Some(held) = held.filter(|held| held.until_us >= now_us) {
            return Ok(Some(held));
        }
        tx.execute(
            "INSERT INTO keyed_runs (key, invocation, until_us, answer) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(key) DO UPDATE SET invocation = excluded.invocation,
                 until_us = excluded.until_us, answer = excluded.answer",
            params![key, run.invocation as i64, run.until_us as i64, run.answer],
        )?;
        tx.commit()?;
        Ok(None)
    }

    fn settle_key(
        &self,
        key: &str,
        invocation: u64,
        answer: &[u8],
        until_us: u64,
    ) -> Result<bool, StoreError> {
        let changed = self.lock().execute(
            "UPDATE keyed_runs SET answer = ?3, until_us = ?4 WHERE key = ?1 AND invocation = ?2",
            params![key, invocation as i64, answer, until_us as i64],
        )?;
        Ok(changed == 1)
    }

    fn keyed_run(&self, key: &str) -> Result<Option<KeyedRun>, StoreError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT invocation, until_us, answer FROM keyed_runs WHERE key = ?1",
                params![key],
                keyed_run_row,
            )
            .optional()?)
    }

    fn purge_keyed_runs(&self, now_us: u64) -> Result<usize, StoreError> {
        Ok(self.lock().execute(
            "DELETE FROM keyed_runs WHERE until_us < ?1",
            params![now_us as i64],
        )?)
    }

    fn spend(&self, month: &str) -> Result<Vec<(String, u16, f64)>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT tenant, shard, amount FROM spend WHERE month = ?1")?;
        let rows = stmt.query_map(params![month], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(feature = "etcd")]
fn connect_etcd(endpoints: Vec<String>) -> Result<std::sync::Arc<dyn ClusterStore>, StoreError> {
    Ok(std::sync::Arc::new(etcd::EtcdStore::connect(endpoints)?))
}

#[cfg(not(feature = "etcd"))]
fn connect_etcd(endpoints: Vec<String>) -> Result<std::sync::Arc<dyn ClusterStore>, StoreError> {
    Err(StoreError::Etcd(format!(
        "this build of tariff has no etcd support (asked for {endpoints:?}): build it with \
         `cargo build --release --features etcd` (needs protoc, Debian's protobuf-compiler)"
    )))
}

/// Opens the store a `--store` value names: `sqlite:PATH`, `etcd:URL[,URL...]`, or, when
/// `None`, the embedded SQLite file `default_sqlite` (in the cluster directory).
pub fn open(
    location: Option<&str>,
    default_sqlite: &Path,
) -> Result<std::sync::Arc<dyn ClusterStore>, StoreError> {
    match location {
        None => Ok(std::sync::Arc::new(SqliteStore::open(default_sqlite)?)),
        Some(text) => {
            if let Some(path) = text.strip_prefix("sqlite:") {
                Ok(std::sync::Arc::new(SqliteStore::open(Path::new(path))?))
            } else if let Some(urls) = text.strip_prefix("etcd:") {
                let endpoints: Vec<String> = urls
                    .split(',')
                    .map(str::trim)
                    .filter(|u| !u.is_empty())
                    .map(str::to_owned)
                    .collect();
                if endpoints.is_empty() {
                    return Err(StoreError::BadLocation(text.to_owned()));
                }
                connect_etcd(endpoints)
            } else {
                Err(StoreError::BadLocation(text.to_owned()))
            }
        }
    }
}

/// Behaviour every [`ClusterStore`] must show, as functions that panic on a violation: the
/// unit tests run them against SQLite, `tests/etcd.rs` against a real etcd.
pub mod checks {
    use super::{ClusterStore, KeyedRun};

    /// Idempotency keys: one claimer wins, the loser sees the holder; only the bound
    /// invocation settles; an expired key can be claimed again and is purged.
    pub fn keyed_runs(store: &dyn ClusterStore) {
        let now = 1_000_000;
        let first = KeyedRun {
            invocation: 7,
            until_us: now + 500,
            answer: None,
        };
        assert_eq!(store.claim_key("t/k", &first, now).unwrap(), None);
        let second = KeyedRun {
            invocation: 8,
            ..first.clone()
        };
        assert_eq!(
            store.claim_key("t/k", &second, now + 10).unwrap(),
            Some(first.clone()),
            "a bound key stays with its first invocation"
        );
        assert!(!store.settle_key("t/k", 8, b"no", now + 900).unwrap());
        assert!(store.settle_key("t/k", 7, b"yes", now + 900).unwrap());
        let settled = store.keyed_run("t/k").unwrap().unwrap();
        assert_eq!(settled.answer.as_deref(), Some(&b"yes"[..]));
        assert_eq!(settled.until_us, now + 900);
        assert_eq!(store.keyed_run("t/other").unwrap(), None);
        // Past its window the key is free again, and purged.
        assert_eq!(store.claim_key("t/k", &second, now + 901).unwrap(), None);
        assert_eq!(store.keyed_run("t/k").unwrap().unwrap().invocation, 8);
        assert_eq!(store.purge_keyed_runs(now + 400).unwrap(), 0);
        assert_eq!(store.purge_keyed_runs(now + 2_000).unwrap(), 1);
        assert_eq!(store.keyed_run("t/k").unwrap(), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, program: &str) -> FunctionSpec {
        FunctionSpec {
            name: name.into(),
            command: vec![program.into()],
            env: vec![("A".into(), "1".into())],
            version: 0,
            runtime: tariff_types::function::Runtime::Exec,
            owner: "acme".into(),
            ..Default::default()
        }
    }

    #[test]
    fn idempotency_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        checks::keyed_runs(&store);
    }

    #[test]
    fn bad_store_locations_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("s.sqlite3");
        assert!(matches!(
            open(Some("redis://x"), &default),
            Err(StoreError::BadLocation(_))
        ));
        assert!(matches!(
            open(Some("etcd:"), &default),
            Err(StoreError::BadLocation(_))
        ));
        assert!(open(None, &default).is_ok());
        assert!(open(Some(&format!("sqlite:{}", default.display())), &default).is_ok());
    }

    #[test]
    fn deploys_are_versioned_and_shared_between_handles() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sqlite3");
        let one = SqliteStore::open(&path).unwrap();
        let two = SqliteStore::open(&path).unwrap();
        assert_eq!(
            one.put_function(&spec("f", "/bin/cat"), Expect::Absent)
                .unwrap(),
            1
        );
        assert!(matches!(
            two.put_function(&spec("f", "/bin/ls"), Expect::Absent),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            one.put_function(&spec("f", "/bin/echo"), Expect::Version(1))
                .unwrap(),
            2
        );
        assert!(matches!(
            two.put_function(&spec("f", "/bin/ls"), Expect::Version(1)),
            Err(StoreError::Conflict(_))
        ));
        let seen = two.function("f").unwrap().unwrap();
        assert_eq!(seen.version, 2);
        assert_eq!(seen.command, ["/bin/echo"]);
        assert!(two.function("g").unwrap().is_none());
        one.put_function(&spec("a", "/bin/true"), Expect::Any)
            .unwrap();
        let names: Vec<_> = two
            .functions()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "f"]);
    }

    #[test]
    fn removal_is_conditional_on_the_version_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        store
            .put_function(&spec("f", "/bin/cat"), Expect::Absent)
            .unwrap();
        store
            .put_function(&spec("f", "/bin/cat"), Expect::Version(1))
            .unwrap();
        assert!(matches!(
            store.remove_function("f", 1),
            Err(StoreError::Conflict(_))
        ));
        assert!(store.remove_function("f", 2).unwrap());
        assert!(!store.remove_function("f", 2).unwrap());
    }

    #[test]
    fn tenants_tokens_and_the_admin() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        let acme = Tenant {
            name: "acme".into(),
            created_at_us: 7,
            budget: None,
        };
        store.add_tenant(&acme, "h1").unwrap();
        assert!(matches!(
            store.add_tenant(&acme, "h9"),
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(
            store.credential("h1").unwrap(),
            Some(Principal::Tenant("acme".into()))
        );
        assert_eq!(store.credential("h9").unwrap(), None);
        assert_eq!(store.tenant("acme").unwrap(), Some(acme.clone()));
        assert_eq!(store.tenants().unwrap(), vec![acme]);

        assert!(store.set_tenant_token("acme", "h2").unwrap());
        assert_eq!(
            store.credential("h1").unwrap(),
            None,
            "rotation revokes the old token"
        );
        assert!(store.credential("h2").unwrap().is_some());
        assert!(!store.set_tenant_token("nobody", "h3").unwrap());

        assert!(store.bootstrap_admin("a1").unwrap());
        assert!(
            !store.bootstrap_admin("a2").unwrap(),
            "only the first admin is made"
        );
        assert_eq!(store.credential("a1").unwrap(), Some(Principal::Admin));
        store.reset_admin("a3").unwrap();
        assert_eq!(store.credential("a1").unwrap(), None);
        assert_eq!(store.credential("a3").unwrap(), Some(Principal::Admin));

        store
            .put_function(&spec("f", "/bin/cat"), Expect::Absent)
            .unwrap();
        let mut other = spec("g", "/bin/cat");
        other.owner = "zeta".into();
        store.put_function(&other, Expect::Absent).unwrap();
        assert!(store.remove_tenant("acme").unwrap());
        assert_eq!(store.credential("h2").unwrap(), None);
        assert!(
            store.function("f").unwrap().is_none(),
            "its functions go with it"
        );
        assert!(store.function("g").unwrap().is_some(), "others' stay");
        assert!(!store.remove_tenant("acme").unwrap());
    }

    #[test]
    fn budgets_and_spend_per_shard() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        let acme = Tenant {
            name: "acme".into(),
            created_at_us: 0,
            budget: Some(5.0),
        };
        store.add_tenant(&acme, "h").unwrap();
        assert_eq!(store.tenant("acme").unwrap().unwrap().budget, Some(5.0));
        assert!(store.set_tenant_budget("acme", None).unwrap());
        assert_eq!(store.tenant("acme").unwrap().unwrap().budget, None);
        assert!(!store.set_tenant_budget("nobody", Some(1.0)).unwrap());
        store
            .publish_spend("2026-12", 1, &[("acme".into(), 1.5)])
            .unwrap();
        store
            .publish_spend("2026-12", 2, &[("acme".into(), 0.5)])
            .unwrap();
        store
            .publish_spend("2026-12", 1, &[("acme".into(), 2.0)])
            .unwrap();
        store
            .publish_spend("2026-11", 1, &[("acme".into(), 9.0)])
            .unwrap();
        let mut seen = store.spend("2026-12").unwrap();
        seen.sort_by_key(|(_, shard, _)| *shard);
        assert_eq!(seen, vec![("acme".into(), 1, 2.0), ("acme".into(), 2, 0.5)]);
    }
}
