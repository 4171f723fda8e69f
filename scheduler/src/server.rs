//! The shard service: a QUIC endpoint around the pure [`ShardCore`].
//!
//! Shape borrowed from mini-redis: [`Shard::run`] accepts connections until shutdown, each
//! connection accepts streams, and each stream is routed by its first frame to the client
//! handlers ([`crate::client`]), the machine sessions ([`crate::machines`]) or peer notices.
//! A stream whose first frame does not decode gets a protocol error and is closed; nothing
//! else on the connection or the shard notices.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tariff_cluster::cluster::{Cluster, ClusterError};
use tariff_cluster::codec::{self, CodecError};
use tariff_cluster::store::ClusterStore;
use tariff_types::wire::{ClientResponse, InvocationId, StreamOpen};
use tariff_types::PriceClasses;
use tokio::sync::Notify;
use tracing::{debug, info, warn, Instrument};

use crate::client::Pending;
use crate::machines::{InFlight, Machines};
use crate::registry::Registry;
use tariff_policy::shard::{ShardConfig, ShardCore};

/// Default largest payload accepted: 1 MiB, like the request limits of common FaaS platforms.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Default time a caller waits for an answer when it names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// A stream must deliver its first frame within this time or it is dropped, so idle streams
/// cannot pin memory.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How often queued invocations whose callers stopped waiting are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// QUIC application error code for closing a connection that broke the protocol.
pub const PROTOCOL_VIOLATION: u32 = 1;

/// Everything a shard is configured with.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Directory for this shard's own files (its bound address in `shard.addr`).
    pub data_dir: PathBuf,
    /// This shard's id; the high bits of every invocation id it issues.
    pub shard_id: u16,
    /// The cluster's price classes.
    pub classes: PriceClasses,
    /// Policy tunables.
    pub policy: ShardConfig,
    /// Other shards told about deploys so they refresh at once.
    pub peers: Vec<SocketAddr>,
    /// Largest payload accepted.
    pub max_payload_bytes: usize,
    /// Timeout for invocations that name none.
    pub default_timeout: Duration,
}

/// Why a shard could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Credentials or endpoint.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Writing the data directory failed.
    #[error("shard data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// State shared by every task of one shard.
pub(crate) struct Shared {
    pub(crate) options: ShardOptions,
    /// Zero of the core's clock.
    started: Instant,
    core: Mutex<ShardCore<Pending>>,
    /// Wakes the placement pump.
    pub(crate) wake: Notify,
    pub(crate) registry: Registry,
    pub(crate) machines: Mutex<Machines>,
    pub(crate) in_flight: DashMap<InvocationId, InFlight>,
    next_invocation: AtomicU64,
    pub(crate) endpoint: quinn::Endpoint,
}

impl Shared {
    /// The core, locked. Held only for pure, short calls; never across an await.
    pub(crate) fn core(&self) -> MutexGuard<'_, ShardCore<Pending>> {
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The machine table, locked; same rule as [`Shared::core`].
    pub(crate) fn machines(&self) -> MutexGuard<'_, Machines> {
        self.machines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The core's notion of now.
    pub(crate) fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A fresh invocation id.
    pub(crate) fn next_id(&self) -> InvocationId {
        let n = self.next_invocation.fetch_add(1, Ordering::Relaxed);
        InvocationId((u64::from(self.options.shard_id) << 48) | (n & 0xffff_ffff_ffff))
    }
}

/// A bound, not yet running shard.
pub struct Shard {
    shared: Arc<Shared>,
}

impl Shard {
    /// Binds the endpoint and writes the bound address to `data_dir/shard.addr`.
    pub fn bind(
        cluster: &Cluster,
        store: Arc<dyn ClusterStore>,
        options: ShardOptions,
    ) -> Result<Self, ShardError> {
        let endpoint = cluster.server_endpoint(options.listen)?;
        let local = endpoint
            .local_addr()
            .map_err(|source| ShardError::DataDir {
                path: options.data_dir.clone(),
                source,
            })?;
        let data_err = |source| ShardError::DataDir {
            path: options.data_dir.clone(),
            source,
        };
        std::fs::create_dir_all(&options.data_dir).map_err(data_err)?;
        std::fs::write(options.data_dir.join("shard.addr"), local.to_string()).map_err(data_err)?;
        let core = ShardCore::new(
            options.classes.prices(),
            options.policy.clone(),
            u64::from(options.shard_id),
        );
        let shared = Arc::new(Shared {
            started: Instant::now(),
            core: Mutex::new(core),
            wake: Notify::new(),
            registry: Registry::new(store),
            machines: Mutex::new(Machines::default()),
            in_flight: DashMap::new(),
            next_invocation: AtomicU64::new(1),
            endpoint,
            options,
        });
        Ok(Self { shared })
    }

    /// The address the shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared
            .endpoint
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Serves until `shutdown` completes, then answers every queued invocation with a
    /// shutting-down error and closes the endpoint.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared;
        info!(
            addr = %shared.endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            shard = shared.options.shard_id,
            classes = %shared.options.classes,
            "shard listening"
        );
        let pump = tokio::spawn(crate::pump::run(shared.clone()));
        let sweeper = tokio::spawn(sweep(shared.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                incoming = shared.endpoint.accept() => {
                    let Some(incoming) = incoming else { break };
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        match incoming.await {
                            Ok(conn) => serve_connection(shared, conn).await,
                            Err(e) => debug!(error = %e, "handshake failed"),
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }
        info!("shard shutting down");
        pump.abort();
        sweeper.abort();
        crate::client::fail_all_queued(&shared);
        shared.endpoint.close(0u32.into(), b"shutdown");
        shared.endpoint.wait_idle().await;
    }
}

/// Drops queued invocations whose callers have already been answered (timed out).
async fn sweep(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tick.tick().await;
        let dropped = shared.core().expire(|p| p.is_abandoned()).len();
        if dropped > 0 {
            debug!(dropped, "swept abandoned invocations from the queues");
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    debug!(%remote, "connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let conn = conn.clone();
                tokio::spawn(
                    serve_stream(shared, conn, send, recv)
                        .instrument(tracing::debug_span!("stream", %remote)),
                );
            }
            Err(e) => {
                debug!(%remote, reason = %e, "connection ended");
                return;
            }
        }
    }
}

async fn serve_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let first = tokio::time::timeout(
        FIRST_FRAME_TIMEOUT,
        codec::read_message::<StreamOpen, _>(&mut recv),
    )
    .await;
    let open = match first {
        Ok(Ok(Some(open))) => open,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return refuse_stream(send, recv, &e).await,
        Err(_) => {
            let _ = recv.stop(PROTOCOL_VIOLATION.into());
            return;
        }
    };
    match open {
        StreamOpen::Client(request) => {
            let response = crate::client::handle(&shared, &conn, request).await;
            if let Err(e) = codec::write_message(&mut send, &response).await {
                debug!(error = %e, "client went away before its answer");
            }
            let _ = send.finish();
        }
        StreamOpen::DispatcherControl(hello) => {
            crate::machines::control_session(shared, conn, hello, send, recv).await;
        }
        StreamOpen::ClassLane { machine, class } => {
            crate::machines::lane_session(shared, conn, machine, class, send, recv).await;
        }
        StreamOpen::PeerNotice(notice) => crate::client::peer_notice(&shared, notice),
        StreamOpen::ClientSession => crate::client::session(shared, conn, send, recv).await,
    }
}

/// Answers a stream whose first frame is not a valid message, then closes only that stream.
async fn refuse_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    error: &CodecError,
) {
    if error.is_protocol_violation() {
        warn!(%error, "refusing a malformed stream");
        let answer = ClientResponse::ProtocolError(error.to_string());
        let _ = codec::write_message(&mut send, &answer).await;
        let _ = send.finish();
    }
    let _ = recv.stop(PROTOCOL_VIOLATION.into());
}
