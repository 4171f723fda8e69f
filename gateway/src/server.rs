//! The gateway's server: accept loop, connection limits, drain on shutdown, and the one
//! request handler (route lookup, token, body, envelope, invocation, response).
//!
//! Shaped like mini-redis's server: `run(shutdown)` accepts in a `select!` against shutdown,
//! a semaphore caps open connections, and shutdown stops accepting and then drains the open
//! connections for a bounded time. hyper-util's `auto` builder answers HTTP/1.1 and HTTP/2
//! (prior knowledge, as `curl --http2-prior-knowledge` and load generators speak it over
//! cleartext) on the same port.
//!
//! A slow client holds only its own connection task: the request head must arrive within
//! [`GatewayOptions::header_timeout`] (hyper enforces it), the body within the route's
//! timeout (else 408), and at most [`GatewayOptions::max_connections`] connections are open
//! at once, so neither trickling bytes nor opening many connections ties the gateway up.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tariff_cluster::cluster::Cluster;
use tariff_cluster::tenancy::hash_token;
use tariff_function::http::{Request as Envelope, Response as FunctionResponse};
use tariff_types::tenant::Token;
use tariff_types::wire::{InvokeError, InvokeRequest};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::clients::ClientPool;
use crate::pending::{PendingBook, Poll};
use crate::rate::Caller;
use crate::reply::{is_connection_header, Reply};
use crate::routes::{Lookup, Route, RouteTable, RoutesError};
use crate::status::{for_client_error, for_invoke_error, for_rate_limit, Failure};

/// Where asynchronous invocations are polled: `GET /_tariff/invocations/{id}`. The
/// underscore prefix keeps it out of the way of a site's own paths.
pub const POLL_PREFIX: &str = "/_tariff/invocations/";
/// Headers a client may not pass to a function: its credentials (the function must never
/// see a token) and the gateway's own `tariff-*` headers (so route parameters cannot be
/// forged).
const PRIVATE_HEADERS: [&str; 2] = ["authorization", "proxy-authorization"];
/// Prefix of the headers the gateway adds to the envelope.
const GATEWAY_HEADER_PREFIX: &str = "tariff-";
/// Prefix of the header carrying a captured path segment: `tariff-param-id` for `{id}`.
pub const PARAM_HEADER_PREFIX: &str = "tariff-param-";
/// Longest bearer token accepted before asking a shard: real ones are `tariff_` and 64 hex
/// digits; anything far longer is refused without a connection.
const MAX_TOKEN_BYTES: usize = 256;
/// Pause after a failed `accept` (out of file descriptors, say) before trying again, so the
/// loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Defaults for [`GatewayOptions`].
pub mod defaults {
    use std::time::Duration;
    /// Shard clients kept (distinct tokens): one per tenant of a large site, with room.
    pub const MAX_CLIENTS: usize = 1024;
    /// Open connections at once; each costs a task and two buffers (a few KiB).
    pub const MAX_CONNECTIONS: usize = 10_000;
    /// Time for a request head to arrive. Browsers send it in one packet; ten seconds
    /// allows a slow mobile link and cuts a trickling attacker off soon.
    pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
    /// Asynchronous invocations held, running or finished and not yet fetched.
    pub const PENDING: usize = 4096;
    /// Time open connections get to finish on shutdown.
    pub const DRAIN: Duration = Duration::from_secs(10);
}

/// Why the gateway could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The route table is invalid.
    #[error(transparent)]
    Routes(#[from] RoutesError),
    /// The listening address could not be bound.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// No shard was given and none is recorded in the cluster directory.
    #[error("no shards: pass --shards or start a shard that records itself in {0}")]
    NoShards(PathBuf),
    /// The cluster directory's shard records could not be read.
    #[error(transparent)]
    Directory(#[from] tariff_cluster::directory::DirectoryError),
}

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// Address to listen on (port 0: any free port; see [`Gateway::local_addr`]).
    pub listen: SocketAddr,
    /// The route table file, read at start and on [`GatewayHandle::reload`].
    pub routes: PathBuf,
    /// The shards; empty means those recorded in the cluster directory.
    pub shards: Vec<SocketAddr>,
    /// Where public routes' owner tokens are (`TENANT` files); `None` means the cluster
    /// directory's `tokens/`.
    pub token_dir: Option<PathBuf>,
    /// At most this many shard clients (distinct tokens) are kept.
    pub max_clients: usize,
    /// At most this many connections are open at once.
    pub max_connections: usize,
    /// A request head must arrive within this.
    pub header_timeout: Duration,
    /// At most this many asynchronous invocations are held.
    pub pending: usize,
    /// Open connections get this long to finish on shutdown.
    pub drain: Duration,
}

impl GatewayOptions {
    /// Options with every limit at its default.
    pub fn new(listen: SocketAddr, routes: PathBuf) -> Self {
        Self {
            listen,
            routes,
            shards: Vec::new(),
            token_dir: None,
            max_clients: defaults::MAX_CLIENTS,
            max_connections: defaults::MAX_CONNECTIONS,
            header_timeout: defaults::HEADER_TIMEOUT,
            pending: defaults::PENDING,
            drain: defaults::DRAIN,
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    routes: RwLock<Arc<RouteTable>>,
    routes_file: PathBuf,
    token_dir: PathBuf,
    clients: ClientPool,
    pending: PendingBook,
}

/// A bound, not yet running gateway.
#[derive(Debug)]
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    options: GatewayOptions,
}

/// Reloads a running gateway's route table (what SIGHUP does in `tariff gateway`).
#[derive(Debug, Clone)]
pub struct GatewayHandle {
    shared: Arc<Shared>,
}

impl GatewayHandle {
    /// Reads the route table file again and uses it for every later request; on error the
    /// old table stays and the error is returned (and logged). Returns the number of routes.
    pub fn reload(&self) -> Result<usize, RoutesError> {
        let shared = &self.shared;
        match RouteTable::load(&shared.routes_file, &shared.token_dir) {
            Ok(table) => {
                let count = table.len();
                *shared.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
                tracing::info!(routes = count, file = %shared.routes_file.display(), "route table reloaded");
                Ok(count)
            }
            Err(error) => {
                tracing::error!(%error, "route table not reloaded; the previous one stays");
                Err(error)
            }
        }
    }
}

impl Gateway {
    /// Reads the route table, finds the shards and binds the listening address.
    pub async fn bind(cluster: Cluster, options: GatewayOptions) -> Result<Self, GatewayError> {
        let token_dir = options
            .token_dir
            .clone()
            .unwrap_or_else(|| cluster.dir().join(tariff_cluster::tenancy::TOKENS_DIR));
        let table = RouteTable::load(&options.routes, &token_dir)?;
        let shards = if options.shards.is_empty() {
            tariff_cluster::directory::recorded_shards(cluster.dir())?
        } else {
            options.shards.clone()
        };
        if shards.is_empty() {
            return Err(GatewayError::NoShards(cluster.dir().to_owned()));
        }
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    addr: options.listen,
                    source,
                })?;
        tracing::info!(routes = table.len(), shards = ?shards, "gateway ready");
        let shared = Arc::new(Shared {
            routes: RwLock::new(Arc::new(table)),
            routes_file: options.routes.clone(),
            token_dir,
            clients: ClientPool::new(cluster, shards, options.max_clients),
            pending: PendingBook::new(options.pending),
        });
        Ok(Self {
            shared,
            listener,
            options,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.options.listen)
    }

    /// A handle to reload the route table while it runs.
    pub fn handle(&self) -> GatewayHandle {
        GatewayHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains open connections
    /// for at most [`GatewayOptions::drain`].
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let Self {
            shared,
            listener,
            options,
        } = self;
        let connections = Arc::new(Semaphore::new(options.max_connections.max(1)));
        let graceful = GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_timeout);
        builder.http2().timer(TokioTimer::new());
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = connections.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let shared = shared.clone();
            let service = service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(shared.handle(request, peer).await) }
            });
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            let connection = graceful.watch(connection);
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                drop(permit);
            });
        }
        drop(listener);
        tracing::info!("gateway stopping; draining open connections");
        if tokio::time::timeout(options.drain, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(drain = ?options.drain, "connections still open after the drain time");
        }
    }
}

impl Shared {
    fn routes(&self) -> Arc<RouteTable> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One request, start to finish.
    async fn handle(
        self: Arc<Self>,
        request: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> http::Response<Full<Bytes>> {
        let started = Instant::now();
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let mut reply = match self.clone().serve(request, peer).await {
            Ok(reply) => reply,
            Err(failure) => Reply::failure(&failure),
        };
        let elapsed = started.elapsed();
        let own = reply.add_server_timing(elapsed);
        tracing::debug!(
            %method,
            %path,
            status = reply.status.as_u16(),
            elapsed_us = elapsed.as_micros(),
            gateway_us = own.map(|d| d.as_micros()),
            "request"
        );
        reply.into_response()
    }

    async fn serve(
        self: Arc<Self>,
        request: http::Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Reply, Failure> {
        if let Some(id) = request.uri().path().strip_prefix(POLL_PREFIX) {
            return self.poll(id, &request);
        }
        let routes = self.routes();
        let (route, params) = match routes.lookup(request.method().as_str(), request.uri().path()) {
            Lookup::Found(route, params) => (route.clone(), params),
            Lookup::MethodNotAllowed(methods) => {
                let mut reply = Reply::failure(&Failure::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("this path answers {}", methods.join(", ")),
                ));
                if let Ok(allow) = HeaderValue::from_str(&methods.join(", ")) {
                    reply.headers.insert(header::ALLOW, allow);
                }
                return Ok(reply);
            }
            Lookup::NotFound => {
                return Err(Failure::new(
                    StatusCode::NOT_FOUND,
                    "no_route",
                    "no route for this path",
                ))
            }
        };
        drop(routes);
        let token = match &route.public_token {
            Some(token) => token.clone(),
            None => bearer(request.headers())?,
        };
        if let Some(limit) = &route.rate_limit {
            let caller = match &route.public_token {
                Some(_) => Caller::Address(peer.ip()),
                None => Caller::Token(hash_token(&token)),
            };
            limit
                .check(&caller)
                .map_err(|limited| for_rate_limit(limit.spec(), limited))?;
        }
        let respond_async = prefers_async(request.headers());
        let (parts, body) = request.into_parts();
        let body = read_body(&route, &parts.headers, body).await?;
        let payload = envelope(&parts, &params, peer, body).encode();
        if !respond_async {
            return Ok(self.invoke(&route, &token, payload).await);
        }
        let owner = route.public_token.is_none().then(|| hash_token(&token));
        let id = self.pending.start(owner).map_err(|full| {
            Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "pending_full",
                full.to_string(),
            )
            .with_retry()
        })?;
        let shared = self.clone();
        let task_id = id.clone();
        tokio::spawn(async move {
            let mut reply = shared.invoke(&route, &token, payload).await;
            // Timed against the poll that fetches it, the split would mean nothing.
            reply.invoke_time = None;
            shared.pending.finish(&task_id, reply);
        });
        Ok(accepted(&id, StatusCode::ACCEPTED))
    }

    /// `GET /_tariff/invocations/{id}`: 202 while running, the response once finished.
    fn poll(&self, id: &str, request: &http::Request<Incoming>) -> Result<Reply, Failure> {
        if request.method() != Method::GET {
            return Err(Failure::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "poll with GET",
            ));
        }
        let owner = bearer(request.headers()).ok().map(|t| hash_token(&t));
        match self.pending.poll(id, owner.as_deref()) {
            Poll::Done(reply) => Ok(reply),
            Poll::Running => {
                let mut reply = accepted(id, StatusCode::ACCEPTED);
                reply.headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(crate::reply::whole_seconds(crate::status::RETRY_AFTER)),
                );
                Ok(reply)
            }
            Poll::Unknown => Err(Failure::new(
                StatusCode::NOT_FOUND,
                "unknown_invocation",
                "no such invocation (or its result was already fetched)",
            )),
        }
    }

    /// Invokes `route`'s function with `token` and turns the outcome into the response.
    async fn invoke(&self, route: &Route, token: &Token, payload: Vec<u8>) -> Reply {
        let client = match self.clients.get(token).await {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%error, function = %route.function, "no shard client");
                return Reply::failure(&for_client_error(&error));
            }
        };
        let request = InvokeRequest {
            function: route.function.clone(),
            class: route.class.clone(),
            payload,
            timeout_ms: u64::try_from(route.timeout.as_millis()).unwrap_or(u64::MAX),
            limits: Default::default(),
            idempotency_key: None,
        };
        let invoke_started = Instant::now();
        let answer = client.invoke(request).await;
        let invoke_time = invoke_started.elapsed();
        let mut reply = match answer {
            Ok(Ok(outcome)) => match FunctionResponse::decode(&outcome.run.output)
                .map_err(|e| e.to_string())
                .and_then(|answer| Reply::from_function(answer, outcome.id.0))
            {
                Ok(reply) => reply,
                Err(reason) => {
                    tracing::warn!(function = %route.function, invocation = %outcome.id, %reason, "the function's answer is not an HTTP response");
                    Reply::failure(&Failure::new(
                        StatusCode::BAD_GATEWAY,
                        "bad_answer",
                        "the function's answer is not an HTTP response",
                    ))
                }
            },
            Ok(Err(error)) => {
                if matches!(error, InvokeError::Unauthenticated(_)) {
                    self.clients.forget(token);
                }
                tracing::info!(function = %route.function, class = %route.class, %error, "invocation refused or failed");
                Reply::failure(&for_invoke_error(&error))
            }
            Err(error) => {
                self.clients.forget(token);
                tracing::warn!(function = %route.function, %error, "no answer from the shard");
                Reply::failure(&for_client_error(&error))
            }
        };
        reply.invoke_time = Some(invoke_time);
        reply
    }
}

/// 202 (or a poll's 202) pointing at the poll URL.
fn accepted(id: &str, status: StatusCode) -> Reply {
    let location = format!("{POLL_PREFIX}{id}");
    let mut reply = Reply::failure(&Failure::new(status, "accepted", location.clone()));
    reply.headers.remove(crate::reply::ERROR_HEADER);
    if let Ok(value) = HeaderValue::from_str(&location) {
        reply.headers.insert(header::LOCATION, value);
    }
    reply.headers.insert(
        "preference-applied",
        HeaderValue::from_static("respond-async"),
    );
    reply
}

/// The caller's token from `Authorization: Bearer TOKEN`; 401 without one.
fn bearer(headers: &http::HeaderMap) -> Result<Token, Failure> {
    let unauthenticated = |message: &str| {
        Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            message.to_owned(),
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthenticated("this route needs an `Authorization: Bearer` token"))?;
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty() && token.len() <= MAX_TOKEN_BYTES)
        .ok_or_else(|| unauthenticated("the Authorization header is not `Bearer TOKEN`"))?;
    Ok(Token::new(text))
}

/// Whether the request carries `Prefer: respond-async` (RFC 7240), among other preferences.
fn prefers_async(headers: &http::HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("respond-async"))
}

/// The body, within the route's size (413) and time (408) limits.
async fn read_body(
    route: &Route,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Bytes, Failure> {
    let too_large = || {
        Failure::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!(
                "the body is larger than this route's {} bytes",
                route.body_limit
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > route.body_limit) {
        return Err(too_large());
    }
    let limit = usize::try_from(route.body_limit).unwrap_or(usize::MAX);
    match tokio::time::timeout(route.timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(Failure::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the body did not arrive in time",
        )),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(Failure::new(
            StatusCode::BAD_REQUEST,
            "body_error",
            "the body could not be read",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// The request as the function's payload: its own headers minus connection and private ones
/// and any `tariff-*`, then the captured path segments, the host (HTTP/2 sends it as the
/// authority) and the client's address.
fn envelope(
    parts: &http::request::Parts,
    params: &[(String, String)],
    peer: SocketAddr,
    body: Bytes,
) -> Envelope {
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !is_connection_header(name)
                && !PRIVATE_HEADERS.contains(&name)
                && !name.starts_with(GATEWAY_HEADER_PREFIX)
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    if !parts.headers.contains_key(header::HOST) {
        if let Some(authority) = parts.uri.authority() {
            headers.push(("host".into(), authority.to_string()));
        }
    }
    for (name, value) in params {
        headers.push((format!("{PARAM_HEADER_PREFIX}{name}"), value.clone()));
    }
    headers.push(("x-forwarded-for".into(), peer.ip().to_string()));
    Envelope {
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |pq| pq.as_str().to_owned()),
        headers,
        body: body.to_vec(),
    }
}
