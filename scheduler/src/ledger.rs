//! The shard's ledger: one durable line per billed invocation, written before its answer
//! leaves the shard.
//!
//! SQLite, in the shard's data directory (`ledger.sqlite3`), in WAL mode with
//! `synchronous = NORMAL`: a committed transaction is in the WAL file before the commit
//! returns, so it survives `kill -9` of the shard (the kernel holds the page), without an
//! fsync per commit; it can be lost only if the machine itself crashes before the next
//! checkpoint's fsync (`docs/billing.md`). SQLite rather than a new store because the cluster
//! already embeds it, and a bill is a `GROUP BY`.
//!
//! One thread owns the connection. Entries queue on a channel; the thread commits everything
//! queued in one transaction (group commit) and only then releases each entry's waiter, so a
//! burst costs one commit, and an invocation is answered only once its line is durable.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::params;
use tariff_thread::ThreadScheduling;
use tariff_types::billing::{Bill, BillLine, Cost};
use tokio::sync::oneshot;

/// The ledger's file in the shard's data directory.
pub const LEDGER_FILE: &str = "ledger.sqlite3";

/// Why the ledger could not record or answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The database failed.
    #[error("ledger {path}: {reason}")]
    Database {
        /// The ledger's file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The ledger's thread has stopped.
    #[error("the ledger has stopped")]
    Stopped,
}

/// One billed invocation.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The invocation's id, as text.
    pub(crate) invocation: String,
    /// Who pays.
    pub(crate) tenant: String,
    /// What ran.
    pub(crate) function: String,
    /// When it was answered, µs since the epoch.
    pub(crate) at_us: u64,
    /// The month it is billed in, `YYYY-MM`.
    pub(crate) month: String,
    /// What it cost.
    pub(crate) cost: Cost,
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

enum Job {
    Record(Entry, Reply<()>),
    Bill(String, String, Reply<Bill>),
    Totals(String, Reply<Vec<(String, f64)>>),
}

/// The handle the shard's tasks use; the thread stops when the last handle goes.
pub(crate) struct Ledger {
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
}

impl Ledger {
    /// Opens (creating) the ledger in `data_dir` and starts its thread.
    pub(crate) fn open(data_dir: &Path) -> Result<Self, LedgerError> {
        let path = data_dir.join(LEDGER_FILE);
        let err = |e: rusqlite::Error| LedgerError::Database {
            path: path.clone(),
            reason: e.to_string(),
        };
        let conn = rusqlite::Connection::open(&path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS entries (
                 seq           INTEGER PRIMARY KEY,
                 invocation    TEXT NOT NULL,
                 tenant        TEXT NOT NULL,
                 function      TEXT NOT NULL,
                 class         TEXT NOT NULL,
                 month         TEXT NOT NULL,
                 at_us         INTEGER NOT NULL,
                 cpu_seconds   REAL NOT NULL,
                 gb_seconds    REAL NOT NULL,
                 cpu_charge    REAL NOT NULL,
                 memory_charge REAL NOT NULL,
                 total         REAL NOT NULL
             );
             CREATE INDEX IF NOT EXISTS entries_by_month ON entries(month, tenant);",
        )
        .map_err(err)?;
        let (jobs, inbox) = mpsc::channel();
        // The ledger thread runs as the thread that opened the ledger does. Every answer waits
        // for its line, so the thread that commits it is on every call's path and must run as
        // the shard's own threads do. A process that also runs functions (`tariff local`, the
        // load harness) raises its runtime threads above every function with reset-on-fork, so
        // a new thread would start as a normal task, sharing the CPUs with the cheapest class's
        // functions and waiting behind them for each commit (measured on web-vs-batch: the top
        // class's answers waited up to tens of milliseconds between the function's end and the
        // client). A shard alone runs as a normal process and changes nothing here.
        let scheduling = ThreadScheduling::current();
        std::thread::Builder::new()
            .name("tariff-ledger".into())
            .spawn(move || {
                scheduling.apply();
                serve(conn, path, inbox)
            })
            .map_err(|e| LedgerError::Database {
                path: data_dir.join(LEDGER_FILE),
                reason: e.to_string(),
            })?;
        Ok(Self {
            jobs: std::sync::Mutex::new(jobs),
        })
    }

    fn send(&self, job: Job) -> Result<(), LedgerError> {
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| LedgerError::Stopped)
    }

    /// Records `entry`; resolves once it is committed.
    pub(crate) async fn record(&self, entry: Entry) -> Result<(), LedgerError> {
        let (reply, done) = oneshot::channel();
        self.send(Job::Record(entry, reply))?;
        done.await.map_err(|_| LedgerError::Stopped)?
    }

    /// `tenant`'s lines for `month`, by function and class.
    pub(crate) async fn bill(&self, tenant: &str, month: &str) -> Result<Bill, LedgerError> {
        let (reply, done) = oneshot::channel();
        self.send(Job::Bill(tenant.to_owned(), month.to_owned(), reply))?;
        done.await.map_err(|_| LedgerError::Stopped)?
    }

    /// Every tenant's total for `month` in this ledger.
    pub(crate) async fn totals(&self, month: &str) -> Result<Vec<(String, f64)>, LedgerError> {
        let (reply, done) = oneshot::channel();
        self.send(Job::Totals(month.to_owned(), reply))?;
        done.await.map_err(|_| LedgerError::Stopped)?
    }
}

/// The ledger thread: blocks for a job, then commits every entry queued by then in one
/// transaction.
fn serve(mut conn: rusqlite::Connection, path: PathBuf, inbox: mpsc::Receiver<Job>) {
    let err = |e: rusqlite::Error| LedgerError::Database {
        path: path.clone(),
        reason: e.to_string(),
    };
    while let Ok(first) = inbox.recv() {
        let mut records = Vec::new();
        let mut queries = Vec::new();
        for job in std::iter::once(first).chain(inbox.try_iter()) {
            match job {
                Job::Record(entry, reply) => records.push((entry, reply)),
                other => queries.push(other),
            }
        }
        if !records.is_empty() {
            let result = commit(&mut conn, records.iter().map(|(e, _)| e)).map_err(err);
            for (_, reply) in records {
                let _ = reply.send(result.clone());
            }
        }
        for job in queries {
            match job {
                Job::Bill(tenant, month, reply) => {
                    let _ = reply.send(bill(&conn, &tenant, &month).map_err(err));
                }
                Job::Totals(month, reply) => {
                    let _ = reply.send(totals(&conn, &month).map_err(err));
                }
                Job::Record(..) => unreachable!("records were taken out above"),
            }
        }
    }
}

fn commit<'a>(
    conn: &mut rusqlite::Connection,
    entries: impl Iterator<Item = &'a Entry>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO entries (invocation, tenant, function, class, month, at_us,
                 cpu_seconds, gb_seconds, cpu_charge, memory_charge, total)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        for e in entries {
            insert.execute(params![
                e.invocation,
                e.tenant,
                e.function,
                e.cost.class,
                e.month,
                e.at_us as i64,
                e.cost.cpu_seconds,
                e.cost.gb_seconds,
                e.cost.cpu_charge,
                e.cost.memory_charge,
                e.cost.total,
            ])?;
        }
    }
    tx.commit()
}

fn bill(conn: &rusqlite::Connection, tenant: &str, month: &str) -> rusqlite::Result<Bill> {
    let mut stmt = conn.prepare_cached(
        "SELECT function, class, COUNT(*), SUM(cpu_seconds), SUM(gb_seconds), SUM(total)
         FROM entries WHERE tenant = ?1 AND month = ?2
         GROUP BY function, class ORDER BY function, class",
    )?;
    let lines = stmt
        .query_map(params![tenant, month], |row| {
            Ok(BillLine {
                function: row.get(0)?,
                class: row.get(1)?,
                invocations: row.get::<_, i64>(2)? as u64,
                cpu_seconds: row.get(3)?,
                gb_seconds: row.get(4)?,
                total: row.get(5)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(Bill {
        tenant: tenant.to_owned(),
        month: month.to_owned(),
        lines,
    })
}

fn totals(conn: &rusqlite::Connection, month: &str) -> rusqlite::Result<Vec<(String, f64)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT tenant, SUM(total) FROM entries WHERE month = ?1 GROUP BY tenant",
    )?;
    let rows = stmt.query_map(params![month], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tenant: &str, function: &str, class: &str, total: f64) -> Entry {
        Entry {
            invocation: "0001-000000000001".into(),
            tenant: tenant.into(),
            function: function.into(),
            at_us: 1,
            month: "2026-12".into(),
            cost: Cost {
                class: class.into(),
                total,
                cpu_charge: total,
                ..Cost::default()
            },
        }
    }

    #[tokio::test]
    async fn entries_make_bills_and_totals_and_outlive_the_handle() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        for i in 0..50 {
            let class = ["critical", "batch"][i % 2];
            ledger.record(entry("acme", "f", class, 0.5)).await.unwrap();
        }
        ledger
            .record(entry("zeta", "g", "high", 2.0))
            .await
            .unwrap();
        drop(ledger);
        let reopened = Ledger::open(dir.path()).unwrap();
        let bill = reopened.bill("acme", "2026-12").await.unwrap();
        assert_eq!(bill.lines.len(), 2);
        assert_eq!(bill.lines.iter().map(|l| l.invocations).sum::<u64>(), 50);
        assert!((bill.total() - 25.0).abs() < 1e-9);
        let mut totals = reopened.totals("2026-12").await.unwrap();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(totals, vec![("acme".into(), 25.0), ("zeta".into(), 2.0)]);
        assert!(reopened
            .bill("acme", "2026-11")
            .await
            .unwrap()
            .lines
            .is_empty());
    }
}
