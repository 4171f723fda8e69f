//! The example functions an embedded cluster deploys: where their binaries are and the specs
//! they are registered with.
//!
//! The binaries (package `tariff-example-functions`) carry a `tariff-` prefix so installing
//! them never shadows `echo` or `sleep`; they are deployed under their short names.

use std::path::{Path, PathBuf};

use crate::binaries_dir;

use anyhow::bail;
use tariff_types::function::Runtime;
use tariff_types::FunctionSpec;

/// The example functions, by the name they are deployed as.
pub const EXAMPLE_FUNCTIONS: [&str; 6] = ["echo", "sleep", "spin", "alloc", "fail", "counter"];
/// Prefix of the example binaries' file names.
pub const BINARY_PREFIX: &str = "tariff-";
/// The one persistent example.
const PERSISTENT_EXAMPLE: &str = "counter";
/// How long the persistent example stays warm when idle.
const COUNTER_KEEP_ALIVE_MS: u64 = 60_000;

/// The example web application's functions (examples/web/, served through `tariff gateway`):
/// (deployed name, `tariff-web` role, persistent). The pages are persistent so a page view
/// finds a warm instance; the resize is one process per image.
pub const WEB_FUNCTIONS: [(&str, &str, bool); 3] = [
    ("home", "home", true),
    ("profile", "profile", true),
    ("resize", "resize", false),
];
/// The binary of the web example, deployed once per role.
const WEB_BINARY: &str = "web";
/// How long the web example's pages stay warm when idle.
const WEB_KEEP_ALIVE_MS: u64 = 300_000;

/// Specs for the example web application's functions, refusing clearly if it was not built.
pub fn web_specs() -> anyhow::Result<Vec<FunctionSpec>> {
    let path = example_binary(&binaries_dir()?, WEB_BINARY);
    if !path.exists() {
        bail!(
            "the web example {} is missing: build it with `cargo build --release` at the \
             workspace root (package tariff-example-functions)",
            path.display()
        );
    }
    Ok(WEB_FUNCTIONS
        .iter()
        .map(|&(name, role, persistent)| FunctionSpec {
            name: name.to_owned(),
            command: vec![path.to_string_lossy().into_owned(), role.to_owned()],
            env: Vec::new(),
            version: 0,
            runtime: if persistent {
                Runtime::Persistent {
                    keep_alive_ms: WEB_KEEP_ALIVE_MS,
                }
            } else {
                Runtime::Exec
            },
            ..Default::default()
        })
        .collect())
}

/// The path of the example function deployed as `name`, in `dir`.
pub fn example_binary(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{BINARY_PREFIX}{name}"))
}

/// Specs for the example functions, refusing clearly if they were not built.
pub fn example_specs() -> anyhow::Result<Vec<FunctionSpec>> {
    let dir = binaries_dir()?;
    EXAMPLE_FUNCTIONS
        .iter()
        .map(|&name| {
            let path = example_binary(&dir, name);
            if !path.exists() {
                bail!(
                    "example function {} is missing: build it with `cargo build --release` at the \
                     workspace root (package tariff-example-functions)",
                    path.display()
                );
            }
            let runtime = if name == PERSISTENT_EXAMPLE {
                Runtime::Persistent {
                    keep_alive_ms: COUNTER_KEEP_ALIVE_MS,
                }
            } else {
                Runtime::Exec
            };
            Ok(FunctionSpec {
                name: name.to_owned(),
                command: vec![path.to_string_lossy().into_owned()],
                env: Vec::new(),
                version: 0,
                runtime,
                ..Default::default()
            })
        })
        .collect()
}
