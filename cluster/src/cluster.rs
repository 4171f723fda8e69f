//! The cluster directory: where every process finds the cluster's credentials and store.
//!
//! The first process to find the directory without credentials creates a self-signed cluster
//! certificate there; every process presents that certificate and trusts only it, both as a
//! server and as a client. Processes on one machine therefore need no TLS flags, and a second
//! machine joins with a copy of the directory. There is no way to skip verification.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use tariff_types::wire::ALPN;

/// Environment variable naming the cluster directory when `--cluster` is not given.
pub const CLUSTER_ENV: &str = "TARIFF_CLUSTER";
/// The name every cluster certificate is issued for and every client checks.
pub const CLUSTER_SERVER_NAME: &str = "tariff.cluster";
/// Sub-directory holding the credentials; created by an atomic rename.
const TLS_DIR: &str = "tls";
const CERT_FILE: &str = "cluster.crt";
const KEY_FILE: &str = "cluster.key";
/// The embedded store's file inside the cluster directory.
const STORE_FILE: &str = "store.sqlite3";
/// Streams a peer may have open at once on one connection. quinn's default of 100 is too few
/// for a client with many invocations in flight.
pub const MAX_CONCURRENT_STREAMS: u32 = 4096;
/// A connection with no traffic for this long is dead: its machine is declared lost.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Keep-alives keep healthy but quiet connections from reaching [`IDLE_TIMEOUT`].
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// Why the cluster's credentials or endpoints could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A file in the cluster directory could not be read or written.
    #[error("cluster directory {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("generating the cluster certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The stored credentials are not usable.
    #[error("cluster credentials in {path} are not valid: {reason}")]
    BadCredentials {
        /// Where they are.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// TLS configuration failed.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// A QUIC endpoint could not be created.
    #[error("QUIC endpoint on {addr}: {source}")]
    Endpoint {
        /// Address to bind.
        addr: std::net::SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ClusterError + '_ {
    move |source| ClusterError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A cluster directory with its credentials loaded.
#[derive(Clone)]
pub struct Cluster {
    dir: PathBuf,
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("dir", &self.dir).finish()
    }
}

/// The directory used when neither `--cluster` nor `TARIFF_CLUSTER` says otherwise: per user,
/// under `$XDG_STATE_HOME` or `~/.local/state`, else in the temporary directory.
pub fn default_cluster_dir() -> PathBuf {
    if let Some(state) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(state).join("tariff/cluster");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".local/state/tariff/cluster");
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    std::env::temp_dir().join(format!("tariff-cluster-{uid}"))
}

impl Cluster {
    /// Opens the cluster directory, creating it and its credentials if this is the first
    /// process to use it. Safe against several processes starting at once: credentials are
    /// written to a private directory and renamed into place, so exactly one set wins.
    pub fn open(dir: &Path) -> Result<Self, ClusterError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let tls = dir.join(TLS_DIR);
        if !tls.join(KEY_FILE).exists() {
            Self::create_credentials(dir, &tls)?;
        }
        let cert_path = tls.join(CERT_FILE);
        let key_path = tls.join(KEY_FILE);
        let cert = CertificateDer::from_pem_file(&cert_path).map_err(|e| {
            ClusterError::BadCredentials {
                path: cert_path.clone(),
                reason: e.to_string(),
            }
        })?;
        let key =
            PrivateKeyDer::from_pem_file(&key_path).map_err(|e| ClusterError::BadCredentials {
                path: key_path.clone(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            dir: dir.to_owned(),
            cert,
            key: Arc::new(key),
        })
    }

    fn create_credentials(dir: &Path, tls: &Path) -> Result<(), ClusterError> {
        let mut params = rcgen::CertificateParams::new(vec![CLUSTER_SERVER_NAME.to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tariff cluster");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        // Unique per process and per attempt, so racing threads never share a staging dir.
        static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let staging = dir.join(format!(
            ".tls-{}-{attempt}-{}",
            std::process::id(),
            tariff_types::wire::unix_micros()
        ));
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        let write = |name: &str, text: &str, mode: u32| -> Result<(), ClusterError> {
            let path = staging.join(name);
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(io_err(&path))?;
            file.write_all(text.as_bytes()).map_err(io_err(&path))?;
            file.sync_all().map_err(io_err(&path))
        };
        write(CERT_FILE, &cert.pem(), 0o644)?;
        write(KEY_FILE, &key.serialize_pem(), 0o600)?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&staging))?;
        if fs::rename(&staging, tls).is_err() {
            // Another process won the race; its credentials are the cluster's.
            let _ = fs::remove_dir_all(&staging);
        }
        if !tls.join(KEY_FILE).exists() {
            return Err(ClusterError::BadCredentials {
                path: tls.to_owned(),
                reason: "credentials are missing after creation".into(),
            });
        }
        tracing::info!(dir = %dir.display(), "created cluster credentials");
        Ok(())
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the embedded store lives.
    pub fn store_path(&self) -> PathBuf {
        self.dir.join(STORE_FILE)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, ClusterError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.cert.clone())
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        Ok(Arc::new(roots))
    }

    fn transport() -> Arc<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(MAX_CONCURRENT_STREAMS.into())
            .max_concurrent_uni_streams(0u8.into())
            .keep_alive_interval(Some(KEEP_ALIVE))
            .max_idle_timeout(Some(
                IDLE_TIMEOUT
                    .try_into()
                    .expect("idle timeout fits QUIC's range"),
            ));
        Arc::new(transport)
    }

    /// QUIC server configuration: presents the cluster certificate, demands one from clients.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, ClusterError> {
        let tls_err = |e: rustls::Error| ClusterError::Tls(e.to_string());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        )
        .build()
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    /// QUIC client configuration: trusts only the cluster certificate and presents it.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, ClusterError> {
        let tls_err = |e: rustls::Error| ClusterError::Tls(e.to_string());
        let mut tls = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    /// A server endpoint on `addr` that can also dial out as a client.
    pub fn server_endpoint(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<quinn::Endpoint, ClusterError> {
        let mut endpoint = quinn::Endpoint::server(self.server_config()?, addr)
            .map_err(|source| ClusterError::Endpoint { addr, source })?;
        endpoint.set_default_client_config(self.client_config()?);
        Ok(endpoint)
    }

    /// A client-only endpoint suited to reach `target`.
    pub fn client_endpoint(
        &self,
        target: std::net::SocketAddr,
    ) -> Result<quinn::Endpoint, ClusterError> {
        let addr: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(addr)
            .map_err(|source| ClusterError::Endpoint { addr, source })?;
        endpoint.set_default_client_config(self.client_config()?);
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_open_creates_credentials_and_later_opens_reuse_them() {
        let dir = tempfile::tempdir().unwrap();
        let first = Cluster::open(dir.path()).unwrap();
        let second = Cluster::open(dir.path()).unwrap();
        assert_eq!(first.cert, second.cert);
        let mode = fs::metadata(dir.path().join(TLS_DIR).join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "key must be private");
    }

    #[test]
    fn concurrent_first_opens_agree() {
        let dir = tempfile::tempdir().unwrap();
        let certs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Cluster::open(dir.path()).unwrap().cert))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(certs.windows(2).all(|w| w[0] == w[1]));
    }

    #[tokio::test]
    async fn peers_of_one_cluster_connect_and_strangers_do_not() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let cluster = Cluster::open(ours.path()).unwrap();
        let stranger = Cluster::open(theirs.path()).unwrap();
        let server = cluster.server_endpoint(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            while let Some(incoming) = server.accept().await {
                if let Ok(conn) = incoming.await {
                    let (mut send, _recv) = conn.accept_bi().await.unwrap();
                    send.write_all(b"ok").await.unwrap();
                    send.finish().unwrap();
                    let _ = conn.closed().await;
                }
            }
        });
        let good = cluster.client_endpoint(addr).unwrap();
        let conn = good
            .connect(addr, CLUSTER_SERVER_NAME)
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hi").await.unwrap();
        assert_eq!(recv.read_to_end(10).await.unwrap(), b"ok");
        let bad = stranger.client_endpoint(addr).unwrap();
        let refused = bad.connect(addr, CLUSTER_SERVER_NAME).unwrap().await;
        assert!(
            refused.is_err(),
            "a client of another cluster must be refused"
        );
        accept.abort();
    }
}
