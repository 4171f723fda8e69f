//! The invocation context of a persistent instance's current call, in a file.
//!
//! A one-shot function gets its invocation's context (`TARIFF_INVOCATION`, `TARIFF_SHARD`,
//! ...) in its environment. A persistent instance's environment is fixed when it starts, and
//! changing the frame format would break functions written against it in other languages, so
//! the context of the call it is serving is written to a file in its private working
//! directory before the call and removed after it; the instance is started with
//! [`CONTEXT_FILE_ENV`] naming that file. An instance serves one call at a time, so the file
//! always describes the current call. The SDK and `tariff invoke` read it when the
//! environment has no `TARIFF_INVOCATION`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Environment variable naming a persistent instance's context file.
pub const CONTEXT_FILE_ENV: &str = tariff_function::context::CONTEXT_FILE_ENV;
/// The file's name in the instance's working directory.
const CONTEXT_FILE: &str = ".tariff-invocation";

/// Where the context file of the instance working in `work_dir` is.
pub fn path(work_dir: &Path) -> PathBuf {
    work_dir.join(CONTEXT_FILE)
}

/// Writes `context` in the SDK's file form (`tariff_function::context::encode`), replacing
/// the file atomically. Readable by the function's user through its private directory only.
pub fn write(work_dir: &Path, context: &[(String, String)]) -> std::io::Result<()> {
    let text = tariff_function::context::encode(context);
    let staging = work_dir.join(".tariff-invocation.new");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(&staging)?;
    file.write_all(text.as_bytes())?;
    std::fs::rename(staging, path(work_dir))
}

/// Removes the file after the call (its token is revoked anyway).
pub fn remove(work_dir: &Path) {
    let _ = std::fs::remove_file(path(work_dir));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_and_the_sdk_name_the_context_alike() {
        use tariff_function::context as sdk;
        use tariff_types::wire::context_env as wire;
        assert_eq!(wire::INVOCATION, sdk::INVOCATION_ENV);
        assert_eq!(wire::SHARD, sdk::SHARD_ENV);
        assert_eq!(wire::CLASS, sdk::CLASS_ENV);
        assert_eq!(wire::CA, sdk::CA_ENV);
    }

    #[test]
    fn the_context_file_is_written_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let context = vec![("TARIFF_INVOCATION".to_owned(), "tariff_abc".to_owned())];
        write(dir.path(), &context).unwrap();
        let read =
            tariff_function::context::parse(&std::fs::read_to_string(path(dir.path())).unwrap());
        assert_eq!(read, context);
        remove(dir.path());
        assert!(!path(dir.path()).exists());
    }
}
