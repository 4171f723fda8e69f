//! Client requests: invoke, deploy, list, status; and notices from peer shards.
//!
//! An invocation is checked (class, size, function) before it is queued, so a bad request is
//! answered at once and never occupies a queue. Once queued, exactly one answer goes back on
//! the stream it came on: the result a machine reports, or an error. The handler alone writes
//! that answer, after waiting for a result or the caller's deadline, whichever comes first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tariff_cluster::codec;
use tariff_types::wire::{
    unix_micros, ClientRequest, ClientResponse, InvocationId, InvocationOutcome, InvokeError,
    InvokeRequest, PeerNotice, SessionRequest, SessionResponse, ShardStatus, ShardToDispatcher,
    StreamOpen,
};
use tariff_types::FunctionSpec;
use tokio::sync::oneshot;
use tracing::{debug, info, warn, Instrument};

use crate::server::Shared;
use tariff_policy::FunctionKey;

/// The answer to one invocation.
pub(crate) type Answer = Result<InvocationOutcome, InvokeError>;

/// A queued invocation: everything needed to place it and to answer its caller.
pub(crate) struct Pending {
    pub(crate) id: InvocationId,
    pub(crate) tenant: String,
    pub(crate) function: Arc<FunctionSpec>,
    pub(crate) payload: Vec<u8>,
    pub(crate) deadline: Instant,
    /// The caller's timeout.
    pub(crate) timeout: Duration,
    pub(crate) queued_at_us: u64,
    pub(crate) answer: oneshot::Sender<Answer>,
}

impl Pending {
    /// True once the caller has been answered (it timed out) and placing this is pointless.
    pub(crate) fn is_abandoned(&self) -> bool {
        self.answer.is_closed()
    }
}

/// Handles one client request and returns the response to write.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    _conn: &quinn::Connection,
    request: ClientRequest,
) -> ClientResponse {
    match request {
        ClientRequest::Invoke(request) => ClientResponse::Invoked(invoke(shared, request).await),
        ClientRequest::Deploy(spec) => deploy(shared, spec),
        ClientRequest::ListFunctions => match shared.registry.all() {
            Ok(specs) => ClientResponse::Functions(specs),
            Err(e) => ClientResponse::Refused(e.to_string()),
        },
        ClientRequest::Status => ClientResponse::Status(status(shared)),
    }
}

async fn invoke(shared: &Arc<Shared>, request: InvokeRequest) -> Answer {
    let id = shared.next_id();
    let span = tracing::info_span!(
        "invocation",
        id = %id,
        class = %request.class,
        tenant = %request.tenant,
        function = %request.function
    );
    async move {
        let options = &shared.options;
        let class = options
            .classes
            .resolve(&request.class)
            .map_err(|e| InvokeError::BadClass(e.to_string()))?;
        if request.payload.len() > options.max_payload_bytes {
            return Err(InvokeError::PayloadTooLarge {
                size: request.payload.len() as u64,
                limit: options.max_payload_bytes as u64,
            });
        }
        let function = shared
            .registry
            .lookup(&request.function)
            .map_err(|e| InvokeError::StartFailed(e.to_string()))?
            .ok_or_else(|| InvokeError::UnknownFunction(request.function.clone()))?;
        let timeout = match request.timeout_ms {
            0 => options.default_timeout,
            ms => Duration::from_millis(ms),
        };
        let deadline = Instant::now() + timeout;
        let (answer, result) = oneshot::channel();
        let pending = Pending {
            id,
            tenant: request.tenant,
            function,
            payload: request.payload,
            deadline,
            timeout,
            queued_at_us: unix_micros(),
            answer,
        };
        let key = FunctionKey::of(&pending.function.name);
        let submitted = shared.core().submit(class, key, pending, shared.now());
        if let Err((_, overloaded)) = submitted {
            return Err(InvokeError::Overloaded {
                queued: overloaded.queued as u64,
                limit: overloaded.limit as u64,
            });
        }
        shared.wake.notify_one();
        debug!("queued");
        let answer = match tokio::time::timeout_at(deadline.into(), result).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(InvokeError::ShuttingDown),
            Err(_) => {
                abandon(shared, id);
                Err(InvokeError::TimedOut(timeout.as_millis() as u64))
            }
        };
        match &answer {
            Ok(outcome) => debug!(machine = %outcome.machine, "answered"),
            Err(e) => info!(error = %e, "failed"),
        }
        answer
    }
    .instrument(span)
    .await
}

/// Serves a client's session stream: each request is handled in its own task and its
/// response written when ready, so a slow invocation never holds up the others. A frame
/// that does not decode ends the session with a protocol error (id 0); the connection and
/// other streams carry on.
pub(crate) async fn session(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (answers, outbox) = tokio::sync::mpsc::unbounded_channel::<SessionResponse>();
    let writer = tokio::spawn(codec::forward(outbox, send));
    loop {
        match codec::read_message::<SessionRequest, _>(&mut recv).await {
            Ok(Some(SessionRequest { id, request })) => {
                let shared = shared.clone();
                let conn = conn.clone();
                let answers = answers.clone();
                tokio::spawn(async move {
                    let response = handle(&shared, &conn, request).await;
                    let _ = answers.send(SessionResponse { id, response });
                });
            }
            Ok(None) => break,
            Err(e) => {
                if e.is_protocol_violation() {
                    warn!(error = %e, "malformed session frame; ending the session");
                    let _ = answers.send(SessionResponse {
                        id: 0,
                        response: ClientResponse::ProtocolError(e.to_string()),
                    });
                }
                let _ = recv.stop(crate::server::PROTOCOL_VIOLATION.into());
                break;
            }
        }
    }
    // Requests still running keep their clones of `answers`; the writer ends after the last.
    drop(answers);
    let _ = writer.await;
}

/// The caller stopped waiting: if the invocation is running, tell its machine to stop it.
/// (If it is still queued, dropping the answer channel marks it abandoned for the sweeper.)
fn abandon(shared: &Shared, id: InvocationId) {
    if let Some((_, in_flight)) = shared.in_flight.remove(&id) {
        if let Some(link) = shared.machines().get(in_flight.machine) {
            let _ = link.control.send(ShardToDispatcher::Cancel(id));
        }
        shared.core().completed(in_flight.machine);
        shared.wake.notify_one();
    }
}

fn deploy(shared: &Arc<Shared>, spec: FunctionSpec) -> ClientResponse {
    if let Err(e) = spec.validate() {
        return ClientResponse::Refused(e.to_string());
    }
    match shared.registry.deploy(&spec) {
        Ok(version) => {
            info!(function = %spec.name, version, "deployed");
            let notice = PeerNotice::FunctionChanged {
                name: spec.name.clone(),
                version,
            };
            for &peer in &shared.options.peers {
                tokio::spawn(tell_peer(shared.clone(), peer, notice.clone()));
            }
            ClientResponse::Deployed {
                name: spec.name,
                version,
            }
        }
        Err(e) => ClientResponse::Refused(e.to_string()),
    }
}

/// Passes a change on to a peer shard. Best effort: the store has the change already, and
/// the peer's cache expires on its own.
async fn tell_peer(shared: Arc<Shared>, peer: std::net::SocketAddr, notice: PeerNotice) {
    let attempt = async {
        let conn = shared
            .endpoint
            .connect(peer, tariff_cluster::cluster::CLUSTER_SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        codec::write_message(&mut send, &StreamOpen::PeerNotice(notice))
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let _ = send.stopped().await;
        conn.close(0u32.into(), b"done");
        Ok::<_, String>(())
    };
    if let Err(error) = attempt.await {
        warn!(%peer, %error, "could not pass a change on to a peer shard");
    }
}

/// A peer shard changed the store: read the change now.
pub(crate) fn peer_notice(shared: &Shared, notice: PeerNotice) {
    match notice {
        PeerNotice::FunctionChanged { name, version } => {
            debug!(function = %name, version, "peer changed a function");
            if let Err(e) = shared.registry.refresh(&name) {
                warn!(error = %e, "reading a changed function from the store");
            }
        }
    }
}

fn status(shared: &Shared) -> ShardStatus {
    let (queued, idle) = {
        let core = shared.core();
        let queued = core
            .queued_per_class()
            .into_iter()
            .map(|n| n as u64)
            .collect();
        let idle: Vec<_> = core.idle_machines().collect();
        (queued, idle)
    };
    let machines = shared.machines();
    ShardStatus {
        shard_id: shared.options.shard_id,
        classes: shared.options.classes.names().map(str::to_owned).collect(),
        queued,
        machines: machines.names(),
        idle_list: idle
            .into_iter()
            .filter_map(|m| machines.get(m).map(|l| l.name.to_string()))
            .collect(),
        in_flight: shared.in_flight.len() as u64,
    }
}

/// At shutdown: every queued invocation is answered rather than silently dropped.
pub(crate) fn fail_all_queued(shared: &Shared) {
    for pending in shared.core().drain() {
        let _ = pending.answer.send(Err(InvokeError::ShuttingDown));
    }
}
