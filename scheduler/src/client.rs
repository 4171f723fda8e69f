//! Client requests: invoke, deploy, list, status; and notices from peer shards.
//!
//! An invocation is checked (class, size, function) before it is queued, so a bad request is
//! answered at once and never occupies a queue. Once queued, its one answer comes from the
//! shard state ([`crate::state`], which keeps the one-answer rule); the handler waits for it
//! until the caller's deadline, and at the deadline abandons the invocation, which answers it
//! with a timeout unless a result got there first. The handler then writes that answer on the
//! stream the request came on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tariff_cluster::codec;
use tariff_types::wire::{
    ClientRequest, ClientResponse, InvocationId, InvokeError, InvokeRequest, PeerNotice,
    SessionRequest, SessionResponse, StreamOpen,
};
use tariff_types::FunctionSpec;
use tracing::{debug, info, warn, Instrument};

use crate::config::PROTOCOL_VIOLATION;
use crate::service::Service;
use crate::state::{Answer, Submission};

/// Handles one client request and returns the response to write.
pub(crate) async fn handle(service: &Arc<Service>, request: ClientRequest) -> ClientResponse {
    match request {
        ClientRequest::Invoke(request) => ClientResponse::Invoked(invoke(service, request).await),
        ClientRequest::Deploy(spec) => deploy(service, spec),
        ClientRequest::ListFunctions => match service.registry().all() {
            Ok(specs) => ClientResponse::Functions(specs),
            Err(e) => ClientResponse::Refused(e.to_string()),
        },
        ClientRequest::Status => ClientResponse::Status(service.state().status()),
    }
}

/// Handles one invocation request, counts it in the shard's metrics and logs it if it failed,
/// was slow or is sampled (`trace`), whatever its answer: every invocation, refused or run,
/// passes through here exactly once, inside a span naming its id, class, tenant and function.
async fn invoke(service: &Arc<Service>, request: InvokeRequest) -> Answer {
    let arrived = Instant::now();
    let state = service.state();
    let id = state.next_id();
    let span = tracing::info_span!(
        "invocation",
        id = %id,
        class = %request.class,
        tenant = %request.tenant,
        function = %request.function
    );
    async move {
        let class = service.options().classes.resolve(&request.class).ok();
        let answer = queue_and_wait(service, id, request).await;
        let elapsed = arrived.elapsed();
        service.metrics().answered(class, &answer, elapsed);
        service.invocation_log().answered(&answer, elapsed);
        answer
    }
    .instrument(span)
    .await
}

/// Checks, queues and waits for one invocation's answer.
async fn queue_and_wait(
    service: &Arc<Service>,
    id: InvocationId,
    request: InvokeRequest,
) -> Answer {
    let state = service.state();
    let options = service.options();
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
    let function = service
        .registry()
        .lookup(&request.function)
        .map_err(|e| InvokeError::StartFailed(e.to_string()))?
        .ok_or_else(|| InvokeError::UnknownFunction(request.function.clone()))?;
    let timeout = match request.timeout_ms {
        0 => options.default_timeout,
        ms => Duration::from_millis(ms),
    };
    let deadline = Instant::now() + timeout;
    let mut result = state
        .submit(Submission {
            id,
            class,
            tenant: request.tenant,
            function,
            payload: request.payload,
            timeout,
            deadline,
        })
        .map_err(|overloaded| InvokeError::Overloaded {
            queued: overloaded.queued as u64,
            limit: overloaded.limit as u64,
        })?;
    debug!("queued");
    let received = match tokio::time::timeout_at(deadline.into(), &mut result).await {
        Ok(received) => received,
        Err(_) => {
            // Answers with the timeout unless a result got there first; either way the
            // answer is now in the channel.
            state.abandon(id, InvokeError::TimedOut(timeout.as_millis() as u64));
            result.await
        }
    };
    // The sender is dropped unanswered only when the shard itself is torn down.
    received.unwrap_or(Err(InvokeError::ShuttingDown))
}

/// Serves a client's session stream: each request is handled in its own task and its
/// response written when ready, so a slow invocation never holds up the others. A frame
/// that does not decode ends the session with a protocol error (id 0); the connection and
/// other streams carry on.
pub(crate) async fn session(
    service: Arc<Service>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let (answers, outbox) = tokio::sync::mpsc::unbounded_channel::<SessionResponse>();
    let writer = tokio::spawn(codec::forward(outbox, send).in_current_span());
    loop {
        match codec::read_message::<SessionRequest, _>(&mut recv).await {
            Ok(Some(SessionRequest { id, request })) => {
                let service = service.clone();
                let answers = answers.clone();
                tokio::spawn(
                    async move {
                        let response = handle(&service, request).await;
                        let _ = answers.send(SessionResponse { id, response });
                    }
                    .in_current_span(),
                );
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
                let _ = recv.stop(PROTOCOL_VIOLATION.into());
                break;
            }
        }
    }
    // Requests still running keep their clones of `answers`; the writer ends after the last.
    drop(answers);
    let _ = writer.await;
}

fn deploy(service: &Arc<Service>, spec: FunctionSpec) -> ClientResponse {
    if let Err(e) = spec.validate() {
        return ClientResponse::Refused(e.to_string());
    }
    match service.registry().deploy(&spec) {
        Ok(version) => {
            info!(function = %spec.name, version, "deployed");
            let notice = PeerNotice::FunctionChanged {
                name: spec.name.clone(),
                version,
            };
            for &peer in &service.options().peers {
                tokio::spawn(tell_peer(service.clone(), peer, notice.clone()).in_current_span());
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
async fn tell_peer(service: Arc<Service>, peer: std::net::SocketAddr, notice: PeerNotice) {
    let attempt = async {
        let conn = service
            .endpoint()
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
pub(crate) fn peer_notice(service: &Service, notice: PeerNotice) {
    match notice {
        PeerNotice::FunctionChanged { name, version } => {
            debug!(function = %name, version, "peer changed a function");
            if let Err(e) = service.registry().refresh(&name) {
                warn!(error = %e, "reading a changed function from the store");
            }
        }
    }
}
