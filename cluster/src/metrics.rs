//! The `--metrics ADDR` endpoint every shard and dispatcher can serve: `GET /metrics` over
//! plain HTTP/1.1, for Prometheus to scrape.
//!
//! The metrics themselves are `prometheus-client` registries owned by the services; this
//! module only serves what an [`Exposition`] encodes. Two formats, by the scraper's `Accept`
//! header, as the official exporters do:
//!
//! * OpenMetrics text (what `prometheus-client` encodes) when the scraper asks for
//!   `application/openmetrics-text` — Prometheus itself does;
//! * otherwise the classic Prometheus text format 0.0.4, which `curl`, older scrapers and
//!   `promtool check metrics` read. The two differ only in that OpenMetrics names a counter's
//!   family without its `_total` suffix and ends with `# EOF`; [`to_prometheus_text`] does
//!   that translation.
//!
//! The server is deliberately tiny (one route, one request per connection, bounded reads)
//! rather than an HTTP framework: a scrape every few seconds needs no more, and the shard and
//! dispatcher gain no large dependency tree for it. The endpoint is off unless `--metrics` is
//! given, and it exposes counts and timings only — no payloads, no credentials.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The path scrapers ask for.
pub const METRICS_PATH: &str = "/metrics";
/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request head read; a scrape's is a few hundred bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A connection must send its request within this time, so idle sockets cannot pile up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Smallest latency bucket: 100 µs, about a warm placement's round trip on one host.
const FIRST_BUCKET_SECONDS: f64 = 0.000_1;
/// Latency buckets double 21 times, so the largest finite one is about 105 s, past the
/// default one-minute timeout. Shards and dispatchers share the layout so their histograms
/// can be compared bucket for bucket.
const BUCKETS: u16 = 21;

/// A latency histogram with the buckets every Tariff process uses.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(FIRST_BUCKET_SECONDS, 2.0, BUCKETS))
}

/// A family of latency histograms, one per label set.
pub type LatencyFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// An empty [`LatencyFamily`].
pub fn latency_family<L: Clone + std::hash::Hash + Eq>() -> LatencyFamily<L> {
    Family::new_with_constructor(latency_histogram)
}

/// Labels of a series split by price class. Class names are few and fixed when a shard
/// starts, so the label is bounded.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabel {
    /// The class's name.
    pub class: String,
}

/// Labels of an invocation counter: its class and how it ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The class's name.
    pub class: String,
    /// `ok`, or the error's kind (`InvokeError::kind`, a fixed set).
    pub outcome: String,
}

/// Labels of a start counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StartLabels {
    /// The class's name.
    pub class: String,
    /// `cold` (a process was started) or `warm` (a warm instance served it).
    pub start: String,
}

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint on {addr}: {source}")]
pub struct MetricsError {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The cause.
    pub source: std::io::Error,
}

/// What a service exposes: the current metrics, encoded as OpenMetrics text. Called once per
/// scrape, so it is the place to refresh gauges read from the service's state.
pub trait Exposition: Send + Sync + 'static {
    /// The metrics as OpenMetrics text.
    fn encode(&self) -> String;
}

/// A bound metrics endpoint, not yet serving.
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks one).
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MetricsError { addr, source })?;
        Ok(Self { listener })
    }

    /// Binds `addr` from synchronous code that runs inside a tokio runtime (a service's
    /// constructor).
    pub fn bind_std(addr: SocketAddr) -> Result<Self, MetricsError> {
        let err = |source| MetricsError { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let listener = TcpListener::from_std(listener).map_err(err)?;
        Ok(Self { listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves scrapes until the task is dropped or aborted.
    pub async fn serve(self, exposition: Arc<dyn Exposition>) {
        loop {
            let Ok((stream, _)) = self.listener.accept().await else {
                // Out of descriptors or similar: back off rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let exposition = exposition.clone();
            tokio::spawn(async move {
                if let Err(error) = answer(stream, &*exposition).await {
                    tracing::debug!(%error, "metrics scrape failed");
                }
            });
        }
    }
}

/// Reads one request and writes one response.
async fn answer(mut stream: TcpStream, exposition: &dyn Exposition) -> std::io::Result<()> {
    let head = tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no request in time"))??;
    let head = String::from_utf8_lossy(&head);
    let mut request_line = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (request_line.next(), request_line.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let response = match (method, path) {
        (Some("GET"), Some(METRICS_PATH)) => {
            let openmetrics = head.lines().any(|line| {
                let lower = line.to_ascii_lowercase();
                lower.starts_with("accept:") && lower.contains("application/openmetrics-text")
            });
            let text = exposition.encode();
            let (body, content_type) = if openmetrics {
                (text, OPENMETRICS_CONTENT_TYPE)
            } else {
                (to_prometheus_text(&text), PROMETHEUS_CONTENT_TYPE)
            };
            http_response("200 OK", content_type, &body)
        }
        (Some(_), Some(_)) => http_response(
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n",
        ),
        _ => http_response(
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n",
        ),
    };
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Reads up to the blank line that ends an HTTP request head (bounded).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_BYTES {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

fn http_response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Translates OpenMetrics text (as `prometheus-client` writes it) to the classic Prometheus
/// text format: counter families are named with their `_total` suffix, as their samples are,
/// and the `# EOF` and `# UNIT` lines, which the classic format does not have, are dropped.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(line) => out.push_str(line.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_take_their_total_suffix_and_eof_goes() {
        let om = "# HELP tariff_x Things.\n# TYPE tariff_x counter\ntariff_x_total{a=\"b\"} 3\n\
                  # HELP tariff_g A gauge.\n# TYPE tariff_g gauge\ntariff_g 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP tariff_x_total Things.\n# TYPE tariff_x_total counter\n\
             tariff_x_total{a=\"b\"} 3\n# HELP tariff_g A gauge.\n# TYPE tariff_g gauge\n\
             tariff_g 1\n"
        );
    }

    struct Fixed;
    impl Exposition for Fixed {
        fn encode(&self) -> String {
            "# HELP t_c C.\n# TYPE t_c counter\nt_c_total 1\n# EOF\n".into()
        }
    }

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_both_formats_and_nothing_else() {
        let server = MetricsServer::bind(([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let addr = server.local_addr();
        let task = tokio::spawn(server.serve(Arc::new(Fixed)));
        let plain = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(plain.starts_with("HTTP/1.1 200 OK"), "{plain}");
        assert!(plain.contains(PROMETHEUS_CONTENT_TYPE));
        assert!(plain.contains("# TYPE t_c_total counter"));
        assert!(!plain.contains("# EOF"));
        let om = get(
            addr,
            "GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        )
        .await;
        assert!(om.contains(OPENMETRICS_CONTENT_TYPE), "{om}");
        assert!(om.ends_with("# EOF\n"));
        let missing = get(addr, "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        task.abort();
    }
}
