//! A response the gateway sends: made from a function's answer or from a [`Failure`], and
//! kept whole (not streamed) so an asynchronous invocation's result can wait in the
//! [`crate::pending::PendingBook`].

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use http_body_util::Full;
use tariff_function::http::Response as FunctionResponse;

use crate::status::Failure;

/// The header naming the invocation that produced a response (for finding it in shard logs
/// and traces).
pub const INVOCATION_HEADER: &str = "tariff-invocation";
/// The header naming the kind of refusal or failure of an error response.
pub const ERROR_HEADER: &str = "tariff-error";

/// The W3C header carrying the gateway's and the invocation's share of the time.
pub const SERVER_TIMING_HEADER: &str = "server-timing";

/// Headers that describe one connection rather than the message (RFC 9110 section 7.6.1),
/// plus `content-length`, which hyper sets from the body: a function cannot set them.
const CONNECTION_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// Whether `name` is one of [`CONNECTION_HEADERS`].
pub fn is_connection_header(name: &str) -> bool {
    CONNECTION_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// `after` in whole seconds, rounded up (the header carries no fractions, and rounding down
/// would ask the client back too soon).
pub fn whole_seconds(after: Duration) -> u64 {
    after.as_secs() + u64::from(after.subsec_nanos() > 0)
}

/// A whole HTTP response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
    /// How long the shard took to answer the invocation behind it (none for a refusal made
    /// in the gateway): what the gateway's own time is told apart from, in `Server-Timing`
    /// and the request log.
    pub invoke_time: Option<Duration>,
}

impl Reply {
    /// A function's answer as the response, with the invocation's id; `Err` says why the
    /// answer cannot be a response (the caller answers 502).
    pub fn from_function(answer: FunctionResponse, invocation: u64) -> Result<Self, String> {
        let status = StatusCode::from_u16(answer.status)
            .map_err(|_| format!("status {} is not an HTTP status", answer.status))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &answer.headers {
            if is_connection_header(name) {
                continue;
            }
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| format!("the value of `{name}` is not a header value"))?;
            headers.append(name, value);
        }
        headers.insert(INVOCATION_HEADER, HeaderValue::from(invocation));
        Ok(Self {
            status,
            headers,
            body: Bytes::from(answer.body),
            invoke_time: None,
        })
    }

    /// A refusal or failure: one text line, its kind in [`ERROR_HEADER`], `Retry-After` when
    /// the failure asks for it, and `WWW-Authenticate: Bearer` on 401.
    pub fn failure(failure: &Failure) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(ERROR_HEADER, HeaderValue::from_static(failure.kind));
        if let Some(after) = failure.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(after)));
        }
        if failure.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        Self {
            status: failure.status,
            headers,
            body: Bytes::from(format!("{}\n", failure.message)),
            invoke_time: None,
        }
    }

    /// Adds `Server-Timing` (W3C): `gateway` is `total` less the shard's answer time,
    /// `invoke` is that answer time, both in milliseconds; nothing when there was no
    /// invocation. Returns the gateway's own time.
    pub fn add_server_timing(&mut self, total: Duration) -> Option<Duration> {
        let invoke = self.invoke_time?;
        let gateway = total.saturating_sub(invoke);
        let value = format!(
            "gateway;dur={:.3}, invoke;dur={:.3}",
            gateway.as_secs_f64() * 1e3,
            invoke.as_secs_f64() * 1e3
        );
        if let Ok(value) = HeaderValue::from_str(&value) {
            self.headers.insert(SERVER_TIMING_HEADER, value);
        }
        Some(gateway)
    }

    /// The response hyper sends.
    pub fn into_response(self) -> http::Response<Full<Bytes>> {
        let mut response = http::Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_answers_keep_their_headers_but_not_connection_ones() {
        let answer = FunctionResponse::new(201)
            .with_header("Content-Type", "text/html")
            .with_header("Set-Cookie", "a=1")
            .with_header("Set-Cookie", "b=2")
            .with_header("Transfer-Encoding", "chunked")
            .with_header("Content-Length", "99")
            .with_body("hi");
        let reply = Reply::from_function(answer, 7).unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.headers.get_all("set-cookie").iter().count(), 2);
        assert!(reply.headers.get("transfer-encoding").is_none());
        assert!(reply.headers.get("content-length").is_none());
        assert_eq!(reply.headers[INVOCATION_HEADER], "7");
        assert_eq!(reply.body, "hi");
    }

    #[test]
    fn server_timing_splits_the_gateway_from_the_invocation() {
        let mut reply = Reply::from_function(FunctionResponse::new(200), 1).unwrap();
        assert_eq!(reply.add_server_timing(Duration::from_millis(5)), None);
        reply.invoke_time = Some(Duration::from_millis(3));
        let own = reply.add_server_timing(Duration::from_millis(5));
        assert_eq!(own, Some(Duration::from_millis(2)));
        assert_eq!(
            reply.headers[SERVER_TIMING_HEADER],
            "gateway;dur=2.000, invoke;dur=3.000"
        );
    }

    #[test]
    fn bad_function_headers_are_refused() {
        let answer = FunctionResponse::new(200).with_header("bad name", "x");
        assert!(Reply::from_function(answer, 1).is_err());
    }
}
