//! Who a function process runs as and where it may write, when the dispatcher runs as root.
//!
//! Functions are untrusted code: as root they could read other instances' data, kill the
//! dispatcher or escape their cgroup. So each runs as an unprivileged user ([`function_user`])
//! in a private working directory only that user can enter ([`private_work_dir`]).

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{chown, DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::unistd::{geteuid, User};

/// The dedicated account functions run as when it exists; operators create it so that
/// function files are not shared with other `nobody` services.
pub const FUNCTION_USER_NAME: &str = "tariff-fn";
/// The uid of `nobody` and the gid of `nogroup` on Debian-like systems (and the kernel's
/// overflow id): the fallback when there is no [`FUNCTION_USER_NAME`].
pub const NOBODY_ID: u32 = 65534;
/// Owner-only access: other function users cannot enter an instance's directory.
const WORK_DIR_MODE: u32 = 0o700;

/// Why a working directory could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The instance name is not a single path component.
    #[error("invalid instance name {name:?} for a working directory")]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// A filesystem operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("creating", "emptying", ...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

impl IsolationError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> IsolationError {
        let path = path.to_owned();
        move |source| IsolationError::Io {
            action,
            path,
            source,
        }
    }
}

/// Who function processes run as: `None` when the dispatcher is not root (it cannot switch
/// users, so functions run as the dispatcher's user); as root, `tariff-fn` if that user exists,
/// else `nobody`/`nogroup` ([`NOBODY_ID`]), so that a function never runs as root.
pub fn function_user() -> Option<(u32, u32)> {
    if !geteuid().is_root() {
        return None;
    }
    match User::from_name(FUNCTION_USER_NAME) {
        Ok(Some(user)) => Some((user.uid.as_raw(), user.gid.as_raw())),
        Ok(None) | Err(_) => Some((NOBODY_ID, NOBODY_ID)),
    }
}

/// A private working directory for one instance: `<root>/<instance>`, mode 0700, owned by the
/// function user when there is one. A leftover from an earlier instance of the same name is
/// removed first, so no state leaks from one instance to the next.
pub fn private_work_dir(
    root: &Path,
    instance: &str,
    user: Option<(u32, u32)>,
) -> Result<PathBuf, IsolationError> {
    if instance.is_empty() || instance == "." || instance == ".." || instance.contains('/') {
        return Err(IsolationError::InvalidName {
            name: instance.to_owned(),
        });
    }
    fs::create_dir_all(root).map_err(IsolationError::io("creating", root))?;
    let dir = root.join(instance);
    // `remove_dir_all` does not follow symlinks: a planted link is removed, not its target.
    match fs::symlink_metadata(&dir) {
        Ok(meta) if meta.is_dir() => {
            fs::remove_dir_all(&dir).map_err(IsolationError::io("emptying", &dir))?
        }
        Ok(_) => fs::remove_file(&dir).map_err(IsolationError::io("removing", &dir))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(IsolationError::Io {
                action: "inspecting",
                path: dir,
                source,
            })
        }
    }
    DirBuilder::new()
        .mode(WORK_DIR_MODE)
        .create(&dir)
        .map_err(IsolationError::io("creating", &dir))?;
    // The umask may have narrowed the mode; 0700 is wanted exactly.
    fs::set_permissions(&dir, fs::Permissions::from_mode(WORK_DIR_MODE))
        .map_err(IsolationError::io("setting the mode of", &dir))?;
    if let Some((uid, gid)) = user {
        chown(&dir, Some(uid), Some(gid)).map_err(IsolationError::io("chowning", &dir))?;
    }
    Ok(dir)
}

/// Removes an instance's working directory and everything in it; a missing one is fine.
pub fn remove_work_dir(path: &Path) -> Result<(), IsolationError> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(IsolationError::Io {
            action: "removing",
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn function_user_is_never_root() {
        match function_user() {
            None => assert!(!geteuid().is_root()),
            Some((uid, gid)) => {
                assert_ne!(uid, 0);
                assert_ne!(gid, 0);
            }
        }
    }

    #[test]
    fn work_dir_is_private_and_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("work");
        let dir = private_work_dir(&root, "inst-1", None).unwrap();
        assert_eq!(dir, root.join("inst-1"));
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o777, WORK_DIR_MODE);

        fs::write(dir.join("left-over"), "x").unwrap();
        fs::create_dir(dir.join("sub")).unwrap();
        let again = private_work_dir(&root, "inst-1", None).unwrap();
        assert_eq!(fs::read_dir(&again).unwrap().count(), 0);

        remove_work_dir(&again).unwrap();
        assert!(!again.exists());
        remove_work_dir(&again).unwrap();
    }

    #[test]
    fn planted_symlink_is_replaced_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&target, tmp.path().join("inst")).unwrap();
        let dir = private_work_dir(tmp.path(), "inst", None).unwrap();
        assert!(fs::symlink_metadata(&dir).unwrap().is_dir());
        assert!(target.join("keep").exists());
    }

    #[test]
    fn names_must_be_one_component() {
        let tmp = tempfile::tempdir().unwrap();
        for bad in ["", ".", "..", "a/b"] {
            assert!(matches!(
                private_work_dir(tmp.path(), bad, None),
                Err(IsolationError::InvalidName { .. })
            ));
        }
    }

    #[test]
    fn work_dir_is_chowned_to_the_function_user_as_root() {
        if !geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let user = (NOBODY_ID, NOBODY_ID);
        let dir = private_work_dir(tmp.path(), "inst", Some(user)).unwrap();
        let meta = fs::metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), user);
    }
}
