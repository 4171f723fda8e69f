//! The cluster directory and its authority: who may be a shard, who a dispatcher.
//!
//! The first server process to find a directory without credentials makes the cluster's
//! certificate authority there (`pki/ca.crt`, and its key `pki/ca.key`, private). Shards and
//! dispatchers present certificates the CA signed that name their [`Role`] (a URI subject
//! alternative name, `urn:tariff:role:shard` or `...:dispatcher`); a shard reads the role of
//! every peer and lets each stream do only what that role may (see `docs/security.md`). Only a
//! shard's certificate is valid for the cluster's server name and for server authentication,
//! so nothing else can pose as a shard to a client or a dispatcher.
//!
//! On the machine that holds the CA key, a process issues its own role certificate the first
//! time it needs one, so one machine needs no TLS flags. Another machine gets a directory made
//! by `tariff cluster issue --role R --out DIR` (the CA certificate and one role certificate;
//! never the CA key). Clients (the CLI, the harness, functions) hold no key at all: they
//! verify the shard against `ca.crt` and prove who they are with a tenant token. There is no
//! way to skip verification.

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
/// The name every shard certificate is issued for and every client checks.
pub const CLUSTER_SERVER_NAME: &str = "tariff.cluster";
/// Sub-directory holding the credentials.
pub const PKI_DIR: &str = "pki";
const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
/// Prefix of the URI subject alternative name that names a certificate's role.
const ROLE_URI_PREFIX: &str = "urn:tariff:role:";
/// The embedded store's file inside the cluster directory.
const STORE_FILE: &str = "store.sqlite3";
/// Streams a peer may have open at once on one connection. quinn's default of 100 is too few
/// for a client with many invocations in flight.
pub const MAX_CONCURRENT_STREAMS: u32 = 4096;
/// A connection with no traffic for this long is dead. This is how a client learns its shard
/// is gone (and fails over, docs/failures.md); machines and shards learn of each other sooner,
/// from the control stream's heartbeats.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);
/// Keep-alives keep healthy but quiet connections from reaching [`IDLE_TIMEOUT`]: five within
/// it, so a few lost packets on a healthy network do not end a connection.
pub const KEEP_ALIVE: Duration = Duration::from_millis(400);

/// What a cluster member's certificate lets it be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A scheduler shard: serves clients and dispatchers, tells peer shards of changes.
    Shard,
    /// A dispatcher: registers its machine with shards and runs what they place on it.
    Dispatcher,
}

impl Role {
    /// The role's name, as in certificates, file names and `--role`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Shard => "shard",
            Self::Dispatcher => "dispatcher",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "shard" => Some(Self::Shard),
            "dispatcher" => Some(Self::Dispatcher),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

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
    /// The directory holds no cluster: clients need the CA certificate to trust a shard.
    #[error(
        "no cluster in {dir} (no {PKI_DIR}/{CA_CERT_FILE}): start one there with `tariff local` \
         or `tariff shard`, or copy the directory `tariff cluster issue` made for this machine"
    )]
    NoCluster {
        /// The directory.
        dir: PathBuf,
    },
    /// A role certificate is needed and neither it nor the CA key is here.
    #[error(
        "no {role} certificate in {dir}/{PKI_DIR}, and no CA key to issue one: on the machine \
         holding the cluster's CA run `tariff cluster issue --role {role} --out DIR` and use DIR \
         as this machine's cluster directory"
    )]
    NoIdentity {
        /// The role asked for.
        role: Role,
        /// The cluster directory.
        dir: PathBuf,
    },
    /// Issuing needs the CA key, which only the first machine holds.
    #[error("{dir} holds no CA key ({PKI_DIR}/{CA_KEY_FILE}): issue certificates on the machine that created the cluster")]
    NotAuthority {
        /// The cluster directory.
        dir: PathBuf,
    },
    /// Certificate generation failed.
    #[error("generating a certificate: {0}")]
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

fn bad(path: &Path, reason: impl std::fmt::Display) -> ClusterError {
    ClusterError::BadCredentials {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// A cluster directory with its CA certificate loaded: enough to verify shards.
#[derive(Clone)]
pub struct Cluster {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    /// The same certificate as PEM text, as read.
    ca_pem: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("dir", &self.dir).finish()
    }
}

/// A role certificate and its key: what a shard or a dispatcher presents.
#[derive(Clone)]
pub struct Identity {
    role: Role,
    cert: CertificateDer<'static>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("role", &self.role)
            .finish()
    }
}

impl Identity {
    /// The role the certificate names.
    pub fn role(&self) -> Role {
        self.role
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

/// Writes `text` to a new file `name` in `dir` with `mode`, synced.
fn write_new(dir: &Path, name: &str, text: &str, mode: u32) -> Result<(), ClusterError> {
    let path = dir.join(name);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(io_err(&path))?;
    file.write_all(text.as_bytes()).map_err(io_err(&path))?;
    file.sync_all().map_err(io_err(&path))
}

/// A staging directory name unique per process and per attempt, so racing threads and
/// processes never share one.
fn staging_name(what: &str) -> String {
    static ATTEMPTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let attempt = ATTEMPTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        ".{what}-{}-{attempt}-{}",
        std::process::id(),
        tariff_types::wire::unix_micros()
    )
}

impl Cluster {
    /// Opens a cluster directory that holds a cluster (its CA certificate). What clients use:
    /// they never create a cluster.
    pub fn open(dir: &Path) -> Result<Self, ClusterError> {
        let path = dir.join(PKI_DIR).join(CA_CERT_FILE);
        if !path.exists() {
            return Err(ClusterError::NoCluster {
                dir: dir.to_owned(),
            });
        }
        let ca_pem = fs::read_to_string(&path).map_err(io_err(&path))?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| bad(&path, e))?;
        Ok(Self {
            dir: dir.to_owned(),
            ca,
            ca_pem,
        })
    }

    /// Opens the cluster directory, creating it and the cluster's CA if this is the first
    /// server process to use it. Safe against several processes starting at once: the CA is
    /// written to a private directory and renamed into place, so exactly one wins.
    pub fn init(dir: &Path) -> Result<Self, ClusterError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let pki = dir.join(PKI_DIR);
        if !pki.join(CA_CERT_FILE).exists() {
            Self::create_authority(dir, &pki)?;
        }
        Self::open(dir)
    }

    fn ca_params() -> Result<rcgen::CertificateParams, ClusterError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "tariff cluster CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    fn create_authority(dir: &Path, pki: &Path) -> Result<(), ClusterError> {
        let key = rcgen::KeyPair::generate()?;
        let cert = Self::ca_params()?.self_signed(&key)?;
        let staging = dir.join(staging_name("pki"));
        fs::create_dir(&staging).map_err(io_err(&staging))?;
        write_new(&staging, CA_CERT_FILE, &cert.pem(), 0o644)?;
        write_new(&staging, CA_KEY_FILE, &key.serialize_pem(), 0o600)?;
        fs::set_permissions(&staging, fs::Permissions::from_mode(0o755))
            .map_err(io_err(&staging))?;
        if fs::rename(&staging, pki).is_err() {
            // Another process won the race; its authority is the cluster's.
            let _ = fs::remove_dir_all(&staging);
        }
        if !pki.join(CA_CERT_FILE).exists() {
            return Err(bad(pki, "the CA certificate is missing after creation"));
        }
        tracing::info!(dir = %dir.display(), "created the cluster's certificate authority");
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

    /// The CA certificate as PEM text, for a process that must verify shards without the
    /// cluster directory (a function calling a function gets it in its environment).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A cluster known only by its CA certificate in PEM (no directory): what a function
    /// calling a function uses. Its directory is the current one.
    pub fn from_ca_pem(pem: &str) -> Result<Self, ClusterError> {
        let ca = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| bad(Path::new("TARIFF_CA"), e))?;
        Ok(Self {
            dir: PathBuf::from("."),
            ca,
            ca_pem: pem.to_owned(),
        })
    }

    /// Whether this directory holds the CA key, and so can issue role certificates.
    pub fn is_authority(&self) -> bool {
        self.dir.join(PKI_DIR).join(CA_KEY_FILE).exists()
    }

    /// This machine's certificate for `role`: `pki/ROLE.pem` (the certificate and its key in
    /// one file, so no reader ever pairs one process's certificate with another's key),
    /// issued now and kept if it is missing and this directory holds the CA key.
    pub fn identity(&self, role: Role) -> Result<Identity, ClusterError> {
        let path = self.dir.join(PKI_DIR).join(format!("{role}.pem"));
        if !path.exists() {
            if !self.is_authority() {
                return Err(ClusterError::NoIdentity {
                    role,
                    dir: self.dir.clone(),
                });
            }
            self.issue_into(role, &self.dir.join(PKI_DIR))?;
        }
        let cert = CertificateDer::from_pem_file(&path).map_err(|e| bad(&path, e))?;
        let key = PrivateKeyDer::from_pem_file(&path).map_err(|e| bad(&path, e))?;
        if certificate_role(&cert) != Some(role) {
            return Err(bad(&path, format!("it is not a {role} certificate")));
        }
        Ok(Identity {
            role,
            cert,
            key: Arc::new(key),
        })
    }

    /// Issues a certificate for `role` into `out` as a cluster directory another machine can
    /// use: `out/pki/ca.crt` and `out/pki/ROLE.pem`; never the CA key. Needs the CA key.
    /// An older certificate for the role in `out` is replaced.
    pub fn issue(&self, role: Role, out: &Path) -> Result<PathBuf, ClusterError> {
        if !self.is_authority() {
            return Err(ClusterError::NotAuthority {
                dir: self.dir.clone(),
            });
        }
        let pki = out.join(PKI_DIR);
        fs::create_dir_all(&pki).map_err(io_err(&pki))?;
        let ca_src = self.dir.join(PKI_DIR).join(CA_CERT_FILE);
        let ca_dst = pki.join(CA_CERT_FILE);
        if ca_src != ca_dst {
            fs::copy(&ca_src, &ca_dst).map_err(io_err(&ca_dst))?;
        }
        let old = pki.join(format!("{role}.pem"));
        if old.exists() {
            fs::remove_file(&old).map_err(io_err(&old))?;
        }
        self.issue_into(role, &pki)?;
        Ok(pki)
    }

    /// Signs a new `role` certificate with the CA key and writes it with its key into
    /// `pki/ROLE.pem`, unless one appeared there meanwhile; a reader never sees half a file.
    fn issue_into(&self, role: Role, pki: &Path) -> Result<(), ClusterError> {
        let ca_dir = self.dir.join(PKI_DIR);
        let ca_key_path = ca_dir.join(CA_KEY_FILE);
        let ca_cert_path = ca_dir.join(CA_CERT_FILE);
        let ca_key_pem = fs::read_to_string(&ca_key_path).map_err(io_err(&ca_key_path))?;
        let ca_cert_pem = fs::read_to_string(&ca_cert_path).map_err(io_err(&ca_cert_path))?;
        let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(|e| bad(&ca_key_path, e))?;
        let ca_params = rcgen::CertificateParams::from_ca_cert_pem(&ca_cert_pem)
            .map_err(|e| bad(&ca_cert_path, e))?;
        let ca = ca_params.self_signed(&ca_key)?;

        let names = match role {
            Role::Shard => vec![CLUSTER_SERVER_NAME.to_owned()],
            Role::Dispatcher => Vec::new(),
        };
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("tariff {role}"));
        let uri = format!("{ROLE_URI_PREFIX}{role}")
            .try_into()
            .map_err(|e: rcgen::Error| ClusterError::Generate(e))?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
        params.extended_key_usages = match role {
            // A shard serves clients and dispatchers, and dials peer shards.
            Role::Shard => vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ],
            // A dispatcher only dials: it cannot serve as anything.
            Role::Dispatcher => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let staging_dir = pki.join(staging_name(role.name()));
        fs::create_dir(&staging_dir).map_err(io_err(&staging_dir))?;
        let text = format!("{}{}", cert.pem(), key.serialize_pem());
        write_new(&staging_dir, "pem", &text, 0o600)?;
        // A hard link creates the name only if it is free: of several processes issuing at
        // once, the first one's file stays and the others use it.
        let path = pki.join(format!("{role}.pem"));
        let linked = fs::hard_link(staging_dir.join("pem"), &path);
        let _ = fs::remove_dir_all(&staging_dir);
        match linked {
            Ok(()) => {
                tracing::info!(%role, dir = %pki.display(), "issued a role certificate");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, ClusterError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
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

    /// QUIC server configuration for a shard: presents its certificate; accepts clients
    /// without one (tenants, who prove themselves with tokens) and, from peers that present
    /// one, only certificates the cluster's CA signed. What a peer may do is decided per
    /// stream from [`peer_role`].
    pub fn server_config(&self, identity: &Identity) -> Result<quinn::ServerConfig, ClusterError> {
        let tls_err = |e: rustls::Error| ClusterError::Tls(e.to_string());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            Self::provider(),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(tls_err)?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    /// QUIC client configuration: trusts only shards the cluster's CA certified, and presents
    /// `identity` if given (shards and dispatchers) or nothing (tenants' clients).
    pub fn client_config(
        &self,
        identity: Option<&Identity>,
    ) -> Result<quinn::ClientConfig, ClusterError> {
        let tls_err = |e: rustls::Error| ClusterError::Tls(e.to_string());
        let builder = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_root_certificates(self.roots()?);
        let mut tls = match identity {
            Some(identity) => builder
                .with_client_auth_cert(vec![identity.cert.clone()], identity.key.clone_key())
                .map_err(tls_err)?,
            None => builder.with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ClusterError::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Self::transport());
        Ok(config)
    }

    /// A shard's endpoint on `addr`, which can also dial peer shards as a shard.
    pub fn server_endpoint(
        &self,
        identity: &Identity,
        addr: std::net::SocketAddr,
    ) -> Result<quinn::Endpoint, ClusterError> {
        let mut endpoint = quinn::Endpoint::server(self.server_config(identity)?, addr)
            .map_err(|source| ClusterError::Endpoint { addr, source })?;
        endpoint.set_default_client_config(self.client_config(Some(identity))?);
        Ok(endpoint)
    }

    /// A client-only endpoint suited to reach `target`, presenting `identity` if given.
    pub fn client_endpoint(
        &self,
        target: std::net::SocketAddr,
        identity: Option<&Identity>,
    ) -> Result<quinn::Endpoint, ClusterError> {
        let addr: std::net::SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let mut endpoint = quinn::Endpoint::client(addr)
            .map_err(|source| ClusterError::Endpoint { addr, source })?;
        endpoint.set_default_client_config(self.client_config(identity)?);
        Ok(endpoint)
    }
}

/// The role a certificate names, if it names exactly one Tariff knows.
fn certificate_role(cert: &CertificateDer<'_>) -> Option<Role> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let san = parsed.subject_alternative_name().ok()??;
    let mut roles = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => uri.strip_prefix(ROLE_URI_PREFIX).and_then(Role::from_name),
            _ => None,
        });
    let role = roles.next()?;
    roles.next().is_none().then_some(role)
}

/// The role the peer of `conn` proved with a certificate the cluster's CA signed (the TLS
/// handshake has checked the signature), or `None` for a peer without one: a client, which
/// must prove itself with a token.
pub fn peer_role(conn: &quinn::Connection) -> Option<Role> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certificate_role(chain.first()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_init_creates_the_authority_and_later_opens_reuse_it() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Cluster::open(dir.path()),
            Err(ClusterError::NoCluster { .. })
        ));
        let first = Cluster::init(dir.path()).unwrap();
        let second = Cluster::open(dir.path()).unwrap();
        assert_eq!(first.ca, second.ca);
        let mode = fs::metadata(dir.path().join(PKI_DIR).join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key must be private");
    }

    #[test]
    fn concurrent_first_inits_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cas: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Cluster::init(dir.path()).unwrap().ca))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(cas.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn concurrent_first_identities_agree() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::init(dir.path()).unwrap();
        let certs: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| cluster.identity(Role::Dispatcher).unwrap().cert))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(certs.windows(2).all(|w| w[0] == w[1]));
        let mode = fs::metadata(dir.path().join(PKI_DIR).join("dispatcher.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the role key must be private");
    }

    #[test]
    fn issued_certificates_name_their_role_and_carry_no_ca_key() {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let cluster = Cluster::init(dir.path()).unwrap();
        for role in [Role::Shard, Role::Dispatcher] {
            assert_eq!(cluster.identity(role).unwrap().role(), role);
        }
        cluster.issue(Role::Dispatcher, out.path()).unwrap();
        assert!(!out.path().join(PKI_DIR).join(CA_KEY_FILE).exists());
        let remote = Cluster::open(out.path()).unwrap();
        assert!(!remote.is_authority());
        assert_eq!(
            remote.identity(Role::Dispatcher).unwrap().role(),
            Role::Dispatcher
        );
        assert!(matches!(
            remote.identity(Role::Shard),
            Err(ClusterError::NoIdentity {
                role: Role::Shard,
                ..
            })
        ));
        assert!(matches!(
            remote.issue(Role::Shard, dir.path()),
            Err(ClusterError::NotAuthority { .. })
        ));
    }

    /// A server that answers `ok` on every stream and reports each peer's role.
    fn serve(
        endpoint: quinn::Endpoint,
    ) -> (
        tokio::task::JoinHandle<()>,
        tokio::sync::mpsc::UnboundedReceiver<Option<Role>>,
    ) {
        let (roles, seen) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let roles = roles.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        let _ = roles.send(peer_role(&conn));
                        if let Ok((mut send, _recv)) = conn.accept_bi().await {
                            let _ = send.write_all(b"ok").await;
                            let _ = send.finish();
                        }
                        let _ = conn.closed().await;
                    }
                });
            }
        });
        (task, seen)
    }

    async fn talk(endpoint: &quinn::Endpoint, addr: std::net::SocketAddr) -> Result<(), String> {
        let conn = endpoint
            .connect(addr, CLUSTER_SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(b"hi").await.map_err(|e| e.to_string())?;
        let got = recv.read_to_end(10).await.map_err(|e| e.to_string())?;
        (got == b"ok")
            .then_some(())
            .ok_or_else(|| "no answer".to_owned())
    }

    #[tokio::test]
    async fn shards_see_each_peer_role_and_strangers_are_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let cluster = Cluster::init(ours.path()).unwrap();
        let stranger = Cluster::init(theirs.path()).unwrap();
        let shard = cluster.identity(Role::Shard).unwrap();
        let dispatcher = cluster.identity(Role::Dispatcher).unwrap();
        let server = cluster
            .server_endpoint(&shard, ([127, 0, 0, 1], 0).into())
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (task, mut seen) = serve(server);

        for (identity, role) in [
            (Some(&dispatcher), Some(Role::Dispatcher)),
            (Some(&shard), Some(Role::Shard)),
            (None, None),
        ] {
            let client = cluster.client_endpoint(addr, identity).unwrap();
            talk(&client, addr).await.unwrap();
            assert_eq!(seen.recv().await.unwrap(), role);
        }
        // A certificate of another cluster is refused; so is a server of another cluster.
        let foreign = stranger.identity(Role::Dispatcher).unwrap();
        let client = stranger.client_endpoint(addr, Some(&foreign)).unwrap();
        assert!(talk(&client, addr).await.is_err());
        task.abort();
    }

    #[tokio::test]
    async fn a_dispatcher_certificate_cannot_pose_as_a_shard() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = Cluster::init(dir.path()).unwrap();
        let dispatcher = cluster.identity(Role::Dispatcher).unwrap();
        let server = cluster
            .server_endpoint(&dispatcher, ([127, 0, 0, 1], 0).into())
            .unwrap();
        let addr = server.local_addr().unwrap();
        let (task, _seen) = serve(server);
        let client = cluster.client_endpoint(addr, None).unwrap();
        let refused = talk(&client, addr).await;
        assert!(
            refused.is_err(),
            "a client must not trust a dispatcher as a shard"
        );
        task.abort();
    }
}
