//! The shard service: a QUIC endpoint around the pure [`ShardCore`](tariff_policy::ShardCore).
//!
//! Shape borrowed from mini-redis: [`Shard::run`] accepts connections until shutdown, each
//! connection accepts streams, and each stream is routed by its first frame to the client
//! handlers (`client`), the machine sessions (`machines`) or peer notices.
//! A stream whose first frame does not decode gets a protocol error and is closed; nothing
//! else on the connection or the shard notices. This module wires the others together and
//! holds no state of its own: [`Shard::bind`] builds the shard's `state::ShardState` and
//! [`Shard::run`] starts the pump and the sweeper beside the accept loop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tariff_cluster::cluster::{peer_role, Cluster, ClusterError, Role};
use tariff_cluster::codec::{self, CodecError};
use tariff_cluster::directory::{DirectoryError, ShardRecord};
use tariff_cluster::metrics::{MetricsError, MetricsServer};
use tariff_cluster::store::ClusterStore;
use tariff_cluster::tenancy::TenancyError;
use tariff_types::wire::{ClientResponse, StreamOpen};
use tracing::{debug, info, warn, Instrument};

pub use crate::config::{
    ShardOptions, CRASH_WINDOW, DEFAULT_CRASH_BUDGET, DEFAULT_LIVENESS, DEFAULT_MAX_PAYLOAD_BYTES,
    DEFAULT_TIMEOUT, PROTOCOL_VIOLATION,
};
use crate::service::Service;
use crate::state::ShardState;

/// File in the data directory holding the bound metrics address (when `--metrics` is given),
/// for scripts and tests that asked for port 0.
pub const METRICS_ADDR_FILE: &str = "metrics.addr";
/// A stream must deliver its first frame within this time or it is dropped, so idle streams
/// cannot pin memory.
const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How often queued invocations answered while queued (timed out) are swept out.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);
/// Every this many sweeps, a full scan of the queues also finds invocations whose caller went
/// away without an answer (rare: a handler task dropped). Spaced out because it costs O(queued)
/// under the state's lock: at a 100 ms cadence it took a quarter of a saturated shard's CPU.
const FULL_SWEEP_EVERY: u32 = 50;

/// Why a shard could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Credentials or endpoint.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The metrics endpoint could not be bound.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Recording the shard's address in the cluster directory failed.
    #[error(transparent)]
    Record(#[from] DirectoryError),
    /// The shard's ledger could not be opened.
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    /// The administrator's credential could not be made.
    #[error("setting up the cluster administrator: {0}")]
    Tenancy(#[from] TenancyError),
    /// Writing the data directory failed.
    #[error("shard data directory {path}: {source}")]
    DataDir {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// A bound, not yet running shard.
pub struct Shard {
    service: Arc<Service>,
    /// The shard's address in the cluster directory, so clients find it without `--shard`;
    /// removed when the shard stops (or is dropped unrun).
    record: ShardRecord,
    /// The bound `--metrics` endpoint, if one was asked for.
    metrics: Option<MetricsServer>,
}

impl Shard {
    /// Binds the endpoint with the cluster's shard certificate, makes the administrator's
    /// credential if the cluster has none yet, writes the bound address to
    /// `data_dir/shard.addr` and records it in the cluster directory's `shards/` (see
    /// [`tariff_cluster::directory`]).
    pub fn bind(
        cluster: &Cluster,
        store: Arc<dyn ClusterStore>,
        options: ShardOptions,
    ) -> Result<Self, ShardError> {
        let identity = cluster.identity(Role::Shard)?;
        tariff_cluster::tenancy::ensure_admin(cluster.dir(), store.as_ref())?;
        let endpoint = cluster.server_endpoint(&identity, options.listen)?;
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
        let metrics = options.metrics.map(MetricsServer::bind_std).transpose()?;
        if let Some(server) = &metrics {
            let file = options.data_dir.join(METRICS_ADDR_FILE);
            std::fs::write(file, server.local_addr().to_string()).map_err(data_err)?;
        }
        let record = ShardRecord::write(cluster.dir(), local)?;
        let state = ShardState::new(
            options.shard_id,
            options.classes.clone(),
            options.policy.clone(),
        );
        let ledger = crate::ledger::Ledger::open(&options.data_dir)?;
        let service = Service::new(options, store, ledger, endpoint, Arc::new(state));
        Ok(Self {
            service: Arc::new(service),
            record,
            metrics,
        })
    }

    /// The address the shard listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.service
            .endpoint()
            .local_addr()
            .expect("a bound endpoint has an address")
    }

    /// Where the shard serves its metrics, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::local_addr)
    }

    /// Serves until `shutdown` completes, then answers every queued invocation with a
    /// shutting-down error, closes the endpoint and removes the shard's record.
    ///
    /// Everything the shard logs is inside a `shard{id=N}` span, so the lines of several
    /// shards in one process (`tariff local`) can be told apart.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let span = tracing::info_span!("shard", id = self.service.options().shard_id);
        let record = self.record;
        let metrics = self.metrics.map(|server| {
            let exposition = crate::metrics::ShardExposition {
                metrics: self.service.metrics().clone(),
                state: self.service.state().clone(),
            };
            tokio::spawn(server.serve(Arc::new(exposition)))
        });
        serve(self.service, shutdown).instrument(span).await;
        if let Some(task) = metrics {
            task.abort();
        }
        drop(record);
    }
}

/// The body of [`Shard::run`], inside the shard's span.
async fn serve(service: Arc<Service>, shutdown: impl std::future::Future<Output = ()>) {
    let endpoint = service.endpoint();
    let options = service.options();
    info!(
        addr = %endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        metrics = ?options.metrics,
        shard = options.shard_id,
        classes = %options.classes,
        "shard listening"
    );
    if let Err(e) = service.spend().load(service.ledger()).await {
        warn!(error = %e, "reading this month's spend from the ledger");
    }
    let spend = tokio::spawn(
        crate::spend::run(service.spend().clone(), service.store_arc().clone()).in_current_span(),
    );
    let pump = tokio::spawn(crate::pump::run(service.state().clone()).in_current_span());
    let sweeper = tokio::spawn(sweep(service.state().clone()).in_current_span());
    let keys =
        tokio::spawn(crate::keys::purge_forever(service.store_arc().clone()).in_current_span());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let service = service.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(service, conn).await,
                        Err(e) => debug!(error = %e, "handshake failed"),
                    }
                }.in_current_span());
            }
            () = &mut shutdown => break,
        }
    }
    info!("shard shutting down");
    pump.abort();
    sweeper.abort();
    keys.abort();
    spend.abort();
    service.state().fail_all_queued();
    endpoint.close(0u32.into(), b"shutdown");
    endpoint.wait_idle().await;
}

/// Drops queued invocations whose callers have already been answered (timed out) or left.
async fn sweep(state: Arc<ShardState>) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    let mut round = 0u32;
    loop {
        tick.tick().await;
        round = round.wrapping_add(1);
        if round.is_multiple_of(FULL_SWEEP_EVERY) {
            state.sweep_all();
        } else {
            state.sweep();
        }
    }
}

/// Serves one connection's streams. The peer's role is read once from its certificate (none
/// for a client) and decides which kinds of stream it may open.
async fn serve_connection(service: Arc<Service>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    let role = peer_role(&conn);
    debug!(%remote, role = role.map_or("client", Role::name), "connection");
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let service = service.clone();
                let conn = conn.clone();
                tokio::spawn(
                    serve_stream(service, conn, role, send, recv)
                        .instrument(tracing::debug_span!("stream", %remote))
                        .in_current_span(),
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
    service: Arc<Service>,
    conn: quinn::Connection,
    role: Option<Role>,
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
    if let Err(denied) = crate::access::stream_allowed(role, &open) {
        warn!(remote = %conn.remote_address(), %denied, "refusing a stream outside the peer's role");
        let _ = codec::write_message(&mut send, &ClientResponse::Denied(denied)).await;
        let _ = send.finish();
        let _ = recv.stop(PROTOCOL_VIOLATION.into());
        return;
    }
    match open {
        StreamOpen::Client { token, request } => {
            let response = crate::client::handle(&service, token.as_ref(), request).await;
            if let Err(e) = codec::write_message(&mut send, &response).await {
                debug!(error = %e, "client went away before its answer");
            }
            let _ = send.finish();
        }
        StreamOpen::DispatcherControl(hello) => {
            crate::machines::control_session(service, conn, hello, send, recv).await;
        }
        StreamOpen::ClassLane { machine, class } => {
            crate::machines::lane_session(service, conn, machine, class, send, recv).await;
        }
        StreamOpen::PeerNotice(notice) => crate::client::peer_notice(&service, notice),
        StreamOpen::ClientSession { token } => {
            crate::client::session(service, token, send, recv).await
        }
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
