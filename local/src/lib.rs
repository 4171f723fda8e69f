//! An embedded Tariff cluster in one process, for `tariff local` and for the load harness:
//! the same shard and dispatcher types the standalone commands run, over real QUIC on
//! loopback, running real processes; only the process boundary is missing.
//!
//! [`embedded`] starts and stops one; [`examples`] finds and describes the example functions
//! it deploys. The harness depends on this crate, never the other way round.

pub mod embedded;
pub mod examples;

pub use embedded::{LocalCluster, LocalClusterConfig};

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// File name of the load harness's executable, which `tariff bench` and `tariff local --demo`
/// run.
pub const HARNESS_BINARY: &str = "tariff-bench";

/// Where this workspace's binaries are: beside the running executable (`cargo build` puts
/// every binary of the workspace in one directory).
pub fn binaries_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe
        .parent()
        .context("the executable has no directory")?
        .to_owned();
    // Tests and benches run from target/<profile>/deps; the binaries are one level up.
    if dir.ends_with("deps") {
        return Ok(dir.parent().map(Path::to_owned).unwrap_or(dir));
    }
    Ok(dir)
}

/// The load harness's executable, refusing clearly if it was not built.
pub fn harness_binary() -> anyhow::Result<PathBuf> {
    let path = binaries_dir()?.join(HARNESS_BINARY);
    if !path.exists() {
        bail!(
            "the load harness {} is missing: build it with `cargo build --release` at the \
             workspace root (package tariff-bench)",
            path.display()
        );
    }
    Ok(path)
}
