//! Where a cluster's shards can be found: `CLUSTER_DIR/shards/`, one file per running shard
//! holding its address.
//!
//! `tariff local` binds its shards on random ports, so a newcomer's next command cannot guess
//! them. Every shard therefore records its bound address here when it binds and removes the
//! record when it stops cleanly; clients that are given no `--shard` read the directory and
//! try what they find. A shard killed without a clean stop leaves its record behind: readers
//! must expect addresses that no longer answer, which is why clients try every recorded
//! address at once with a short timeout rather than one after another.
//!
//! Each record is written to a hidden temporary file and renamed into place, so a reader never
//! sees half an address. The file is named after the address, which is unique on a host, so
//! two shards never write the same record.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-directory of the cluster directory holding one record per running shard.
pub const SHARDS_DIR: &str = "shards";
/// Suffix of a shard record's file name.
const RECORD_SUFFIX: &str = ".addr";

/// Why a shard record could not be written or the records read.
#[derive(Debug, thiserror::Error)]
#[error("shard records in {path}: {source}")]
pub struct DirectoryError {
    /// The file or directory.
    pub path: PathBuf,
    /// The cause.
    pub source: std::io::Error,
}

/// The directory of shard records inside a cluster directory.
pub fn shards_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join(SHARDS_DIR)
}

/// A shard's record in the cluster directory; removed when dropped, so a shard that stops
/// cleanly (or fails after binding) leaves no stale address behind.
#[derive(Debug)]
pub struct ShardRecord {
    path: PathBuf,
}

impl ShardRecord {
    /// Records `addr` as a running shard of the cluster in `cluster_dir`, atomically.
    pub fn write(cluster_dir: &Path, addr: SocketAddr) -> Result<Self, DirectoryError> {
        let dir = shards_dir(cluster_dir);
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| DirectoryError { path, source }
        };
        fs::create_dir_all(&dir).map_err(err(&dir))?;
        // ':' separates the port (and IPv6 groups); keep file names free of it.
        let name = format!("{}{RECORD_SUFFIX}", addr.to_string().replace(':', "_"));
        let path = dir.join(name);
        static ATTEMPTS: AtomicU64 = AtomicU64::new(0);
        let staging = dir.join(format!(
            ".staging-{}-{}",
            std::process::id(),
            ATTEMPTS.fetch_add(1, Ordering::Relaxed)
        ));
        fs::write(&staging, format!("{addr}\n")).map_err(err(&staging))?;
        fs::rename(&staging, &path).map_err(err(&path))?;
        Ok(Self { path })
    }

    /// The record's file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ShardRecord {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!(path = %self.path.display(), error = %e, "could not remove the shard record");
            }
        }
    }
}

/// The addresses of the shards recorded in `cluster_dir`, sorted; empty if there are none.
/// Files that do not hold an address (foreign or half-written files) are skipped.
pub fn recorded_shards(cluster_dir: &Path) -> Result<Vec<SocketAddr>, DirectoryError> {
    let dir = shards_dir(cluster_dir);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(DirectoryError { path: dir, source }),
    };
    let mut addrs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(RECORD_SUFFIX) {
            continue;
        }
        if let Ok(text) = fs::read_to_string(entry.path()) {
            if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                addrs.push(addr);
            }
        }
    }
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_listed_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        assert!(recorded_shards(dir.path()).unwrap().is_empty());
        let a: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        let b: SocketAddr = "[::1]:7402".parse().unwrap();
        let ra = ShardRecord::write(dir.path(), a).unwrap();
        let rb = ShardRecord::write(dir.path(), b).unwrap();
        fs::write(shards_dir(dir.path()).join("junk.addr"), "not an address").unwrap();
        fs::write(shards_dir(dir.path()).join(".staging-1-1"), "127.0.0.1:1").unwrap();
        assert_eq!(recorded_shards(dir.path()).unwrap(), vec![a, b]);
        drop(ra);
        assert_eq!(recorded_shards(dir.path()).unwrap(), vec![b]);
        assert!(rb.path().exists());
        drop(rb);
        assert!(recorded_shards(dir.path()).unwrap().is_empty());
    }
}
