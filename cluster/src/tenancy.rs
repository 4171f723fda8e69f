//! Tenant tokens: making them, hashing them, keeping them in their holders' token files, and
//! the administrator's credential.
//!
//! A token is 32 bytes from the operating system's random source, written as `tariff_` and 64
//! hex digits. With that much entropy a plain SHA-256 is the right way to store it (a slow
//! password hash protects guessable secrets; this one cannot be guessed), and it is cheap
//! enough to check on every request. The store keeps only hashes; the token itself exists in
//! its holder's token file (mode 0600) or environment, and in the request frames.
//!
//! Token files live in the cluster directory: `tokens/NAME` for each tenant this machine
//! added, and `admin.token` for the administrator, written by whichever first shard made the
//! credential. The CLI reads them when given no `--token` (see `docs/security.md`).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tariff_types::tenant::{Principal, Tenant, Token};

use crate::store::{ClusterStore, StoreError};

/// Environment variable a client's tenant token is read from when `--token` is not given.
pub const TOKEN_ENV: &str = "TARIFF_TOKEN";
/// Environment variable the administrator's token is read from when `--admin-token` is not
/// given.
pub const ADMIN_TOKEN_ENV: &str = "TARIFF_ADMIN_TOKEN";
/// Sub-directory of the cluster directory with one token file per tenant.
pub const TOKENS_DIR: &str = "tokens";
/// The administrator's token file in the cluster directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// The tenant `tariff local` creates, and whose token the CLI uses by default.
pub const DEFAULT_TENANT: &str = "default";
/// What every token starts with, so a leaked one is recognisable (for secret scanners).
pub const TOKEN_PREFIX: &str = "tariff_";

/// Why a token could not be made, stored or read.
#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    /// A token file could not be read or written.
    #[error("token file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The cluster store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TenancyError + '_ {
    move |source| TenancyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Lower-case hex, as tokens and token hashes are written (once per request on a shard's
/// hot path, so not through `fmt`).
fn hex(bytes: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(bytes)
}

/// A new random token.
pub fn new_token() -> Result<Token, TenancyError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TenancyError::Random)?;
    Ok(Token::new(format!("{TOKEN_PREFIX}{}", hex(&bytes))))
}

/// The hash under which a token is stored: hex SHA-256 of its text.
pub fn hash_token(token: &Token) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, token.expose_secret().as_bytes()).as_ref())
}

/// Where this machine keeps tenant `name`'s token for the cluster in `cluster_dir`.
pub fn token_file(cluster_dir: &Path, name: &str) -> PathBuf {
    cluster_dir.join(TOKENS_DIR).join(name)
}

/// Where the administrator's token is kept.
pub fn admin_token_file(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join(ADMIN_TOKEN_FILE)
}

/// Writes `token` to `path`, readable by its owner only, replacing any older file atomically.
pub fn write_token_file(path: &Path, token: &Token) -> Result<(), TenancyError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        if dir.file_name().is_some_and(|n| n == TOKENS_DIR) {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
        }
    }
    let staging = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staging)
        .map_err(io_err(&staging))?;
    file.write_all(format!("{}\n", token.expose_secret()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_err(&staging))?;
    fs::rename(&staging, path).map_err(io_err(path))
}

/// The token in `path`, or `None` if there is no such file.
pub fn read_token_file(path: &Path) -> Result<Option<Token>, TenancyError> {
    match fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => Ok(Some(Token::new(text))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TenancyError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The token a client presents: `flag` (`--token`), else the [`TOKEN_ENV`] environment
/// variable, else this machine's token file for `tenant` in `cluster_dir`; `None` if none of
/// them has one (the shard then says how to get one).
pub fn resolve_token(
    flag: Option<Token>,
    cluster_dir: &Path,
    tenant: &str,
) -> Result<Option<Token>, TenancyError> {
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(text) = std::env::var_os(TOKEN_ENV) {
        let token = Token::new(text.to_string_lossy());
        if !token.expose_secret().is_empty() {
            return Ok(Some(token));
        }
    }
    read_token_file(&token_file(cluster_dir, tenant))
}

/// The administrator's token: `flag`, else [`ADMIN_TOKEN_ENV`], else [`admin_token_file`].
pub fn resolve_admin_token(
    flag: Option<Token>,
    cluster_dir: &Path,
) -> Result<Option<Token>, TenancyError> {
    if flag.is_some() {
        return Ok(flag);
    }
    if let Some(text) = std::env::var_os(ADMIN_TOKEN_ENV) {
        let token = Token::new(text.to_string_lossy());
        if !token.expose_secret().is_empty() {
            return Ok(Some(token));
        }
    }
    read_token_file(&admin_token_file(cluster_dir))
}

/// Makes the cluster's administrator credential if the store has none, writing its token to
/// [`admin_token_file`]; exactly one of several racing first shards does. Returns whether
/// this call made it.
pub fn ensure_admin(cluster_dir: &Path, store: &dyn ClusterStore) -> Result<bool, TenancyError> {
    let path = admin_token_file(cluster_dir);
    if let Some(token) = read_token_file(&path)? {
        if store.credential(&hash_token(&token))? == Some(Principal::Admin) {
            return Ok(false);
        }
    }
    let token = new_token()?;
    // Written first under a private name, so the winner's token is on disk before its hash
    // is live; a loser removes its file and leaves the winner's.
    let staging = path.with_extension(format!("new-{}", std::process::id()));
    write_token_file(&staging, &token)?;
    if store.bootstrap_admin(&hash_token(&token))? {
        fs::rename(&staging, &path).map_err(io_err(&path))?;
        tracing::info!(file = %path.display(), "created the cluster administrator's credential");
        Ok(true)
    } else {
        let _ = fs::remove_file(&staging);
        Ok(false)
    }
}

/// Makes sure tenant `name` exists and this machine holds a working token for it in
/// [`token_file`] (adding the tenant, or rotating its token if the file is missing or stale),
/// and returns that token. What `tariff local` does for the default tenant.
pub fn ensure_tenant(
    cluster_dir: &Path,
    store: &dyn ClusterStore,
    name: &str,
) -> Result<Token, TenancyError> {
    let path = token_file(cluster_dir, name);
    let held = read_token_file(&path)?;
    if let Some(token) = &held {
        if store.credential(&hash_token(token))? == Some(Principal::Tenant(name.to_owned())) {
            return Ok(token.clone());
        }
    }
    let token = new_token()?;
    let hash = hash_token(&token);
    if store.tenant(name)?.is_none() {
        let tenant = Tenant {
            name: name.to_owned(),
            created_at_us: tariff_types::wire::unix_micros(),
            budget: None,
        };
        match store.add_tenant(&tenant, &hash) {
            Ok(()) => {}
            // Made meanwhile by another process: take over its token below.
            Err(StoreError::Conflict(_)) => {
                store.set_tenant_token(name, &hash)?;
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        store.set_tenant_token(name, &hash)?;
    }
    write_token_file(&path, &token)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    #[test]
    fn tokens_are_random_and_hashes_stable() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.expose_secret().starts_with(TOKEN_PREFIX));
        assert_eq!(a.expose_secret().len(), TOKEN_PREFIX.len() + 64);
        assert_eq!(hash_token(&a), hash_token(&a.clone()));
        assert_ne!(hash_token(&a), hash_token(&b));
        assert!(!hash_token(&a).contains(a.expose_secret()));
    }

    #[test]
    fn token_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = token_file(dir.path(), "acme");
        assert_eq!(read_token_file(&path).unwrap(), None);
        let token = new_token().unwrap();
        write_token_file(&path, &token).unwrap();
        assert_eq!(read_token_file(&path).unwrap(), Some(token));
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0);
    }

    #[test]
    fn admin_and_default_tenant_bootstrap_once_and_heal() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("s.sqlite3")).unwrap();
        assert!(ensure_admin(dir.path(), &store).unwrap());
        assert!(!ensure_admin(dir.path(), &store).unwrap());
        let admin = read_token_file(&admin_token_file(dir.path()))
            .unwrap()
            .unwrap();
        assert_eq!(
            store.credential(&hash_token(&admin)).unwrap(),
            Some(Principal::Admin)
        );

        let first = ensure_tenant(dir.path(), &store, DEFAULT_TENANT).unwrap();
        assert_eq!(
            ensure_tenant(dir.path(), &store, DEFAULT_TENANT).unwrap(),
            first
        );
        fs::remove_file(token_file(dir.path(), DEFAULT_TENANT)).unwrap();
        let second = ensure_tenant(dir.path(), &store, DEFAULT_TENANT).unwrap();
        assert_ne!(first, second);
        assert_eq!(store.credential(&hash_token(&first)).unwrap(), None);
        assert_eq!(
            store.credential(&hash_token(&second)).unwrap(),
            Some(Principal::Tenant(DEFAULT_TENANT.into()))
        );
    }
}
