//! What a shard is configured with, and the constants every part of the service shares.
//!
//! A leaf module: it imports nothing from this crate, so the session modules and the server
//! can all read it without importing one another. [`crate::server`] re-exports its public
//! items, which is where other crates find them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tariff_policy::shard::ShardConfig;
use tariff_types::PriceClasses;

/// Default largest payload accepted: 1 MiB, like the request limits of common FaaS platforms.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 1 << 20;
/// Default time a caller waits for an answer when it names none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// Default silence on a dispatcher's control stream after which its machine is lost (and the
/// dispatcher takes the shard for lost). Heartbeats go four times within it.
pub const DEFAULT_LIVENESS: Duration = Duration::from_secs(1);
/// Default crash budget: a function version that fails more often than this within
/// [`CRASH_WINDOW`] is suspended (docs/failures.md).
pub const DEFAULT_CRASH_BUDGET: u32 = 60;
/// The window crashes are counted over, and how long a suspension lasts.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
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
    /// Price of one GB-second of memory actually used, in the unit of class prices.
    pub memory_price: f64,
    /// Timeout for invocations that name none.
    pub default_timeout: Duration,
    /// Where to serve Prometheus metrics (`GET /metrics`); none when `None`.
    pub metrics: Option<SocketAddr>,
    /// Successful invocations at least this slow are logged with their stage timings.
    pub slow_threshold: Duration,
    /// At most one other successful invocation is logged per this interval; none if `None`.
    pub sample_every: Option<Duration>,
    /// Silence on a machine's control stream after which it is lost; also what the shard
    /// tells dispatchers to expect of it.
    pub liveness: Duration,
    /// Failures of one function version allowed per [`CRASH_WINDOW`] before it is suspended;
    /// 0 never suspends.
    pub crash_budget: u32,
}
