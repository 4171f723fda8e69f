//! Client requests: invoke, deploy, remove, list, status, tenant management; and notices
//! from peer shards.
//!
//! Every request is first tied to its caller by the token it carries (`access`): a tenant, or
//! the administrator. A tenant uses its own functions and those shared with it; the
//! administrator manages tenants only. An invocation is then checked (class, size, function,
//! owner) before it is queued, so a bad request is
//! answered at once and never occupies a queue. Once queued, its one answer comes from the
//! shard state ([`crate::state`], which keeps the one-answer rule); the handler waits for it
//! until the caller's deadline, and at the deadline abandons the invocation, which answers it
//! with a timeout unless a result got there first. The handler then writes that answer on the
//! stream the request came on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tariff_cluster::codec;
use tariff_cluster::store::{Expect, StoreError};
use tariff_types::billing::{validate_budget, Month, Throttle};
use tariff_types::tenant::{
    validate_tenant_name, AccessError, Principal, Tenant, TenantInfo, TenantRequest, Token,
};
use tariff_types::wire::{
    context_env, Chain, ClientRequest, ClientResponse, InvocationId, InvokeError, InvokeRequest,
    PeerNotice, SessionRequest, SessionResponse, StreamOpen,
};
use tariff_types::FunctionSpec;
use tracing::{debug, info, warn, Instrument};

use crate::access::tenant_of;
use crate::chains::{ChainContext, MAX_CHAIN_DEPTH};
use crate::charge;
use crate::config::PROTOCOL_VIOLATION;
use crate::keys::{self, Claim};
use crate::service::Service;
use crate::state::{Answer, ShardState, Submission};

/// Attempts at a deploy or removal that races another writer of the same function.
const WRITE_ATTEMPTS: usize = 3;

/// Handles one client request from the holder of `token` and returns the response to write.
pub(crate) async fn handle(
    service: &Arc<Service>,
    token: Option<&Token>,
    request: ClientRequest,
) -> ClientResponse {
    // A running invocation's token: its function calling another (`chains`).
    // Hashed once, for both lookups.
    let hash = token.map(tariff_cluster::tenancy::hash_token);
    if let Some(parent) = hash
        .as_deref()
        .and_then(|h| service.chains().lookup_hash(h))
    {
        return match request {
            ClientRequest::Invoke(request) => {
                let principal = Principal::Tenant(parent.tenant.clone());
                ClientResponse::Invoked(invoke(service, &principal, Some(parent), request).await)
            }
            _ => ClientResponse::Denied(AccessError::Forbidden(
                "an invocation's token only invokes functions; other requests need the \
                 tenant's token"
                    .into(),
            )),
        };
    }
    let principal = match service.access().authenticate_hash(hash.as_deref()) {
        Ok(principal) => principal,
        Err(denied) => {
            debug!(%denied, "unauthenticated request");
            return match request {
                ClientRequest::Invoke(_) => ClientResponse::Invoked(Err(denied.into())),
                _ => ClientResponse::Denied(denied),
            };
        }
    };
    match request {
        ClientRequest::Invoke(request) => {
            ClientResponse::Invoked(invoke(service, &principal, None, request).await)
        }
        ClientRequest::Deploy(spec) => {
            denied_or(tenant_of(&principal), |t| deploy(service, t, spec))
        }
        ClientRequest::RemoveFunction(name) => {
            denied_or(tenant_of(&principal), |t| remove(service, t, &name))
        }
        ClientRequest::ListFunctions => match service.registry().all() {
            Ok(specs) => ClientResponse::Functions(match &principal {
                Principal::Admin => specs,
                Principal::Tenant(t) => specs.into_iter().filter(|s| s.usable_by(t)).collect(),
            }),
            Err(e) => ClientResponse::Refused(e.to_string()),
        },
        ClientRequest::Status => ClientResponse::Status(service.state().status()),
        ClientRequest::Bill { tenant, month } => {
            bill_request(service, &principal, tenant, month).await
        }
        ClientRequest::Tenants(request) => match principal {
            Principal::Admin => tenants(service, request),
            Principal::Tenant(t) => ClientResponse::Denied(AccessError::Forbidden(format!(
                "tenant `{t}` may not manage tenants: that needs the administrator's token"
            ))),
        },
    }
}

/// This shard's part of a bill: a tenant's own, or any tenant's for the administrator.
async fn bill_request(
    service: &Arc<Service>,
    principal: &Principal,
    tenant: Option<String>,
    month: Option<String>,
) -> ClientResponse {
    let tenant = match (principal, tenant) {
        (Principal::Tenant(me), None) => me.clone(),
        (Principal::Tenant(me), Some(asked)) if asked == *me => asked,
        (Principal::Tenant(me), Some(asked)) => {
            return ClientResponse::Denied(AccessError::Forbidden(format!(
                "tenant `{me}` may not see tenant `{asked}`'s bill"
            )))
        }
        (Principal::Admin, Some(asked)) => asked,
        (Principal::Admin, None) => {
            return ClientResponse::Refused("the administrator must name a tenant".into())
        }
    };
    let month = match month {
        Some(text) => match Month::parse(&text) {
            Some(month) => month,
            None => return ClientResponse::Refused(format!("`{text}` is not a month (YYYY-MM)")),
        },
        None => Month::of_unix_us(tariff_types::wire::unix_micros()),
    };
    match service.ledger().bill(&tenant, &month.to_string()).await {
        Ok(bill) => ClientResponse::Bill(bill),
        Err(e) => ClientResponse::Refused(e.to_string()),
    }
}

/// `then(tenant)`, or the refusal if the caller is not a tenant.
fn denied_or(
    tenant: Result<&str, AccessError>,
    then: impl FnOnce(&str) -> ClientResponse,
) -> ClientResponse {
    match tenant {
        Ok(tenant) => then(tenant),
        Err(denied) => ClientResponse::Denied(denied),
    }
}

/// Handles one invocation request, counts it in the shard's metrics and logs it if it failed,
/// was slow or is sampled (`trace`), whatever its answer: every invocation, refused or run,
/// passes through here exactly once, inside a span naming its id, class, tenant and function.
async fn invoke(
    service: &Arc<Service>,
    principal: &Principal,
    parent: Option<ChainContext>,
    request: InvokeRequest,
) -> Answer {
    let arrived = Instant::now();
    let state = service.state();
    let id = state.next_id();
    let tenant = match principal {
        Principal::Tenant(name) => name.as_str(),
        Principal::Admin => "(admin)",
    };
    let span = tracing::info_span!(
        "invocation",
        id = %id,
        class = %request.class,
        tenant = %tenant,
        function = %request.function
    );
    async move {
        let class = service.options().classes.resolve(&request.class).ok();
        let answer = match tenant_of(principal) {
            Ok(tenant) => queue_and_wait(service, id, tenant, parent, request).await,
            Err(denied) => Err(denied.into()),
        };
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
    tenant: &str,
    parent: Option<ChainContext>,
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
    if !function.usable_by(tenant) {
        return Err(InvokeError::Forbidden(format!(
            "function `{}` belongs to another tenant and is not shared with `{tenant}`",
            function.name
        )));
    }
    service.crashes().check(&function)?;
    let limits = request.limits.over(function.limits);
    let chain = match &parent {
        None => Chain {
            root: Some(id),
            parent: None,
            depth: 0,
        },
        Some(parent) => {
            let depth = parent.depth + 1;
            if depth > MAX_CHAIN_DEPTH {
                return Err(InvokeError::ChainTooDeep {
                    depth,
                    limit: MAX_CHAIN_DEPTH,
                });
            }
            Chain {
                root: Some(parent.root),
                parent: Some(parent.id),
                depth,
            }
        }
    };
    let (throttle, spend) = service.spend().throttle(tenant);
    if throttle == Throttle::Exhausted {
        return Err(InvokeError::OverBudget(crate::spend::exhausted_message(
            tenant, &spend,
        )));
    }
    let class = tariff_policy::budget::run_class(
        class,
        parent.as_ref().map(|p| p.class),
        throttle,
        options.classes.lowest(),
    );
    let function_name = function.name.clone();
    let spec = function.clone();
    let (token, _revoked_when_answered) = service
        .chains()
        .mint(ChainContext {
            tenant: tenant.to_owned(),
            id,
            root: chain.root.unwrap_or(id),
            depth: chain.depth,
            class,
        })
        .map_err(|e| InvokeError::StartFailed(e.to_string()))?;
    let env = vec![
        (
            context_env::INVOCATION.to_owned(),
            token.expose_secret().to_owned(),
        ),
        (
            context_env::CLASS.to_owned(),
            options.classes.get(class).name.clone(),
        ),
    ];
    let timeout = match request.timeout_ms {
        0 => options.default_timeout,
        ms => Duration::from_millis(ms),
    };
    let deadline = Instant::now() + timeout;
    let keyed = match &request.idempotency_key {
        None => None,
        Some(key) => {
            let key = keys::store_key(tenant, key)?;
            match keys::claim(service.store_arc(), key, id, deadline, timeout).await? {
                Claim::Answered(answer) => return *answer,
                Claim::Run(key) => Some(key),
            }
        }
    };
    let submission = Submission {
        id,
        class,
        tenant: tenant.to_owned(),
        function,
        payload: request.payload,
        timeout,
        deadline,
        env,
        nested_in: parent.map(|p| p.id),
        limits,
        idempotency_key: keyed.clone(),
    };
    let answer = submit_and_wait(state, submission).await;
    service.crashes().answered(&spec, &answer);
    let answer = match answer {
        Ok(mut outcome) => {
            outcome.cost = charge::bill(service, tenant, &function_name, class, &outcome).await;
            outcome.chain = chain;
            Ok(outcome)
        }
        Err(error) => Err(error),
    };
    if let Some(key) = keyed {
        // Kept before the caller hears it, so a resubmission anywhere finds it.
        keys::settle(service.store_arc(), key, id, &answer).await;
    }
    answer
}

/// Queues a checked invocation and waits for its answer: the machine's, or a timeout of the
/// caller's or of a stage the shard keeps.
async fn submit_and_wait(state: &ShardState, submission: Submission) -> Answer {
    let (id, timeout, deadline) = (submission.id, submission.timeout, submission.deadline);
    // Most invocations have no limit the shard keeps: they skip the state's lock below.
    let limits = submission.limits;
    let shard_limits = limits.queue_ms > 0 || limits.placement_ms > 0;
    let mut result = state
        .submit(submission)
        .map_err(|overloaded| InvokeError::Overloaded {
            queued: overloaded.queued as u64,
            limit: overloaded.limit as u64,
            retry_after_ms: overloaded.retry_after.as_millis() as u64,
        })?;
    debug!("queued");
    let received = loop {
        // Wakes for the caller's deadline, or the limit of the stage the shard keeps now.
        let stage = shard_limits
            .then(|| state.stage_deadline(id))
            .flatten()
            .filter(|stage| stage.at < deadline);
        let until = stage.map_or(deadline, |stage| stage.at);
        match tokio::time::timeout_at(until.into(), &mut result).await {
            Ok(received) => break received,
            Err(_) => match stage {
                // Answers with the stage's timeout if it is still in that stage; if it moved
                // on, the loop waits for what comes next.
                Some(stage) => state.stage_expired(id, stage),
                None => {
                    // Answers with the timeout unless a result got there first; either way
                    // the answer is now in the channel.
                    state.abandon(id, InvokeError::TimedOut(timeout.as_millis() as u64));
                    break result.await;
                }
            },
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
    token: Option<Token>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let token = Arc::new(token);
    let (answers, outbox) = tokio::sync::mpsc::unbounded_channel::<SessionResponse>();
    let writer = tokio::spawn(codec::forward(outbox, send).in_current_span());
    loop {
        match codec::read_message::<SessionRequest, _>(&mut recv).await {
            Ok(Some(SessionRequest { id, request })) => {
                let service = service.clone();
                let answers = answers.clone();
                let token = token.clone();
                tokio::spawn(
                    async move {
                        let response = handle(&service, token.as_ref().as_ref(), request).await;
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

/// Deploys `spec` for `tenant`: a new function becomes the tenant's; an existing one may be
/// replaced by its owner or a tenant it is shared with, and keeps its owner (and, unless the
/// owner deploys, its sharing). The owner check and the write are one conditional write on the
/// version read, so a racing deploy cannot slip in between.
fn deploy(service: &Arc<Service>, tenant: &str, mut spec: FunctionSpec) -> ClientResponse {
    if let Err(e) = spec.validate() {
        return ClientResponse::Refused(e.to_string());
    }
    for _ in 0..WRITE_ATTEMPTS {
        let current = match service.registry().refresh(&spec.name) {
            Ok(current) => current,
            Err(e) => return ClientResponse::Refused(e.to_string()),
        };
        let expect = match &current {
            None => {
                spec.owner = tenant.to_owned();
                Expect::Absent
            }
            // Deployed before tenants existed: whoever redeploys it first owns it.
            Some(current) if current.owner.is_empty() => {
                spec.owner = tenant.to_owned();
                Expect::Version(current.version)
            }
            Some(current) if current.usable_by(tenant) => {
                spec.owner = current.owner.clone();
                if current.owner != tenant {
                    spec.shared_with = current.shared_with.clone();
                }
                Expect::Version(current.version)
            }
            Some(_) => {
                return ClientResponse::Denied(AccessError::Forbidden(format!(
                    "function `{}` belongs to another tenant and is not shared with `{tenant}`",
                    spec.name
                )))
            }
        };
        match service.registry().deploy(&spec, expect) {
            Ok(version) => {
                info!(function = %spec.name, version, %tenant, "deployed");
                tell_peers(
                    service,
                    PeerNotice::FunctionChanged {
                        name: spec.name.clone(),
                        version,
                    },
                );
                return ClientResponse::Deployed {
                    name: spec.name,
                    version,
                };
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return ClientResponse::Refused(e.to_string()),
        }
    }
    ClientResponse::Refused(format!(
        "function `{}` kept changing while it was deployed; try again",
        spec.name
    ))
}

/// Removes `name` for `tenant`, who must own it.
fn remove(service: &Arc<Service>, tenant: &str, name: &str) -> ClientResponse {
    for _ in 0..WRITE_ATTEMPTS {
        let current = match service.registry().refresh(name) {
            Ok(Some(current)) => current,
            Ok(None) => return ClientResponse::Refused(format!("unknown function `{name}`")),
            Err(e) => return ClientResponse::Refused(e.to_string()),
        };
        if current.owner != tenant {
            return ClientResponse::Denied(AccessError::Forbidden(format!(
                "function `{name}` belongs to another tenant; only its owner may remove it"
            )));
        }
        match service.registry().remove(name, current.version) {
            Ok(_) => {
                info!(function = %name, %tenant, "removed");
                tell_peers(
                    service,
                    PeerNotice::FunctionRemoved {
                        name: name.to_owned(),
                    },
                );
                return ClientResponse::Removed(name.to_owned());
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return ClientResponse::Refused(e.to_string()),
        }
    }
    ClientResponse::Refused(format!("function `{name}` kept changing; try again"))
}

/// The administrator's tenant requests. Each change empties this shard's credential cache and
/// tells the peers to empty theirs.
fn tenants(service: &Arc<Service>, request: TenantRequest) -> ClientResponse {
    let store = service.store();
    // A tenant as `show` and `list` print it; `functions` is every function, read once.
    let info = |tenant: Tenant, functions: &[FunctionSpec]| TenantInfo {
        functions: functions
            .iter()
            .filter(|f| f.owner == tenant.name)
            .map(|f| f.name.clone())
            .collect(),
        spend: service.spend().info(&tenant.name),
        tenant,
    };
    let unknown = |name: &str| ClientResponse::Refused(format!("unknown tenant `{name}`"));
    // The tenant as it is now, after whatever the request changed.
    let show = |name: &str| match store.tenant(name)? {
        Some(tenant) => Ok(ClientResponse::Tenant(info(
            tenant,
            &service.registry().all()?,
        ))),
        None => Ok(unknown(name)),
    };
    let changed = |what: &str, name: &str| {
        info!(tenant = %name, "{what}");
        service.access().invalidate();
        service.registry().forget_all();
        service.spend().refresh(store);
        tell_peers(service, PeerNotice::CredentialsChanged);
    };
    let result: Result<ClientResponse, StoreError> = match request {
        TenantRequest::Add {
            name,
            token_hash,
            budget,
        } => {
            if let Err(e) = validate_tenant_name(&name) {
                return ClientResponse::Refused(e.to_string());
            }
            if let Err(e) = validate_budget(budget) {
                return ClientResponse::Refused(e.to_string());
            }
            let tenant = Tenant {
                name,
                created_at_us: tariff_types::wire::unix_micros(),
                budget,
            };
            store.add_tenant(&tenant, &token_hash).and_then(|()| {
                changed("tenant added", &tenant.name);
                show(&tenant.name)
            })
        }
        TenantRequest::List => store.tenants().and_then(|all| {
            let functions = service.registry().all()?;
            Ok(ClientResponse::TenantList(
                all.into_iter().map(|t| info(t, &functions)).collect(),
            ))
        }),
        TenantRequest::Show(name) => show(&name),
        TenantRequest::Remove(name) => show(&name).and_then(|before| {
            if matches!(before, ClientResponse::Tenant(_)) {
                store.remove_tenant(&name)?;
                changed("tenant removed", &name);
            }
            Ok(before)
        }),
        TenantRequest::SetBudget { name, budget } => {
            if let Err(e) = validate_budget(budget) {
                return ClientResponse::Refused(e.to_string());
            }
            match store.set_tenant_budget(&name, budget) {
                Ok(true) => {
                    changed("budget set", &name);
                    show(&name)
                }
                Ok(false) => Ok(unknown(&name)),
                Err(e) => Err(e),
            }
        }
        TenantRequest::RotateToken { name, token_hash } => {
            match store.set_tenant_token(&name, &token_hash) {
                Ok(true) => {
                    changed("token rotated", &name);
                    show(&name)
                }
                Ok(false) => Ok(unknown(&name)),
                Err(e) => Err(e),
            }
        }
    };
    result.unwrap_or_else(|e| ClientResponse::Refused(e.to_string()))
}

/// Passes a change on to every peer shard, each in its own task.
fn tell_peers(service: &Arc<Service>, notice: PeerNotice) {
    for &peer in &service.options().peers {
        tokio::spawn(tell_peer(service.clone(), peer, notice.clone()).in_current_span());
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
        PeerNotice::FunctionRemoved { name } => {
            debug!(function = %name, "peer removed a function");
            service.registry().forget(&name);
        }
        PeerNotice::CredentialsChanged => {
            debug!("peer changed credentials or budgets");
            service.access().invalidate();
            service.registry().forget_all();
            service.spend().refresh(service.store());
        }
    }
}
