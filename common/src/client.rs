//! A client of the shards: what the CLI, the bench harness and the tests use to invoke,
//! deploy and ask for status.
//!
//! One QUIC connection per shard, one stream per request: a request is a frame out and a frame
//! back, and a slow invocation never holds up another on the same connection.

use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster::{Cluster, ClusterError, CLUSTER_SERVER_NAME};
use crate::codec::{self, CodecError};
use crate::wire::{
    ClientRequest, ClientResponse, InvocationOutcome, InvokeError, InvokeRequest, StreamOpen,
};

/// How long to wait for a shard to accept the connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no answer from the shard (as opposed to an answer that is an error).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Credentials or endpoint.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The shard could not be reached.
    #[error("no shard reachable at {addr}: {reason}")]
    Unreachable {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection broke mid-request.
    #[error("connection to the shard failed: {0}")]
    Connection(String),
    /// A frame could not be written or read.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The shard closed the stream without answering.
    #[error("the shard closed the stream without answering")]
    NoAnswer,
    /// The shard answered with something else than the request calls for.
    #[error("unexpected answer from the shard: {0}")]
    Unexpected(String),
    /// The shard refused the request.
    #[error("refused: {0}")]
    Refused(String),
    /// The client's own deadline passed.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// A connection to one shard.
#[derive(Debug, Clone)]
pub struct Client {
    connection: quinn::Connection,
    // Kept so the endpoint lives as long as the client.
    _endpoint: quinn::Endpoint,
}

impl Client {
    /// Connects to the shard at `addr` with the cluster's credentials.
    pub async fn connect(cluster: &Cluster, addr: SocketAddr) -> Result<Self, ClientError> {
        let endpoint = cluster.client_endpoint(addr)?;
        let unreachable = |reason: String| ClientError::Unreachable { addr, reason };
        let connecting = endpoint
            .connect(addr, CLUSTER_SERVER_NAME)
            .map_err(|e| unreachable(e.to_string()))?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| unreachable(format!("no handshake within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(Self {
            connection,
            _endpoint: endpoint,
        })
    }

    /// Sends one request and reads its one response.
    pub async fn request(&self, request: ClientRequest) -> Result<ClientResponse, ClientError> {
        let connection_err = |e: &dyn std::fmt::Display| ClientError::Connection(e.to_string());
        let (mut send, mut recv) = self
            .connection
            .open_bi()
            .await
            .map_err(|e| connection_err(&e))?;
        codec::write_message(&mut send, &StreamOpen::Client(request)).await?;
        send.finish().map_err(|e| connection_err(&e))?;
        match codec::read_message::<ClientResponse, _>(&mut recv).await? {
            Some(ClientResponse::ProtocolError(reason)) => Err(ClientError::Refused(reason)),
            Some(response) => Ok(response),
            None => Err(ClientError::NoAnswer),
        }
    }

    /// Invokes a function. The outer error means no answer; the inner one is the shard's.
    /// The client waits a little longer than the request's own timeout so that the shard,
    /// which enforces it, gets to answer.
    pub async fn invoke(
        &self,
        request: InvokeRequest,
    ) -> Result<Result<InvocationOutcome, InvokeError>, ClientError> {
        let wait = match request.timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms) + CONNECT_TIMEOUT),
        };
        let call = self.request(ClientRequest::Invoke(request));
        let response = match wait {
            Some(wait) => tokio::time::timeout(wait, call)
                .await
                .map_err(|_| ClientError::TimedOut(wait))??,
            None => call.await?,
        };
        match response {
            ClientResponse::Invoked(answer) => Ok(answer),
            other => Err(ClientError::Unexpected(format!("{other:?}"))),
        }
    }

    /// The underlying connection (for tests that speak raw frames).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }
}
