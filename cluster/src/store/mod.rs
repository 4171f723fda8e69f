//! The cluster store: state every shard must agree on (the function registry now; tenants and
//! spend later) lives here, never in a protocol of Tariff's own.
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
    /// A stored record does not decode.
    #[error("cluster store holds an unreadable record for `{name}`: {reason}")]
    Corrupt {
        /// The record's key.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// State shared by every shard of a cluster.
pub trait ClusterStore: Send + Sync {
    /// Stores `spec` under its name, replacing any older one, and returns the new version.
    fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError>;
    /// The function called `name`, if registered.
    fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError>;
    /// Every registered function, by name.
    fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError>;
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

impl ClusterStore for SqliteStore {
    fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::Corrupt {
            name: spec.name.clone(),
            reason: e.to_string(),
        })?;
        let version: i64 = self.lock().query_row(
            "INSERT INTO functions (name, version, spec) VALUES (?1, 1, ?2)
             ON CONFLICT(name) DO UPDATE SET version = version + 1, spec = excluded.spec
             RETURNING version",
            params![spec.name, json],
            |row| row.get(0),
        )?;
        Ok(version as u64)
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
        }
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
        assert_eq!(one.put_function(&spec("f", "/bin/cat")).unwrap(), 1);
        assert_eq!(one.put_function(&spec("f", "/bin/echo")).unwrap(), 2);
        let seen = two.function("f").unwrap().unwrap();
        assert_eq!(seen.version, 2);
        assert_eq!(seen.command, ["/bin/echo"]);
        assert!(two.function("g").unwrap().is_none());
        one.put_function(&spec("a", "/bin/true")).unwrap();
        let names: Vec<_> = two
            .functions()
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["a", "f"]);
    }
}
