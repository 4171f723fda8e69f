//! The status-code contract: which HTTP status each refusal and failure becomes. This module
//! is the one place that decides it; the table in `docs/gateway.md` is its documentation.
//!
//! The reasoning behind the less obvious rows:
//! * `MachineLost` is **502**, not 503: the function had started, so its effects are unknown,
//!   and 503 tells clients and proxies that nothing happened and a retry is safe.
//! * `UnknownFunction` and `BadClass` are **500**: the route exists, so the site's route table
//!   names a function or class the cluster does not have. That is the operator's mistake, not
//!   the client's (404 would tell it the page does not exist) nor the function's (502).
//! * `Overloaded` is **503** with `Retry-After` from the shard's own estimate (rounded up to
//!   whole seconds): the shard sheds the cheapest class first, so a 503 on a `batch` route
//!   while `critical` routes still answer is the design working.
//! * `ChainTooDeep` is **508 Loop Detected** (RFC 5842): the function called functions
//!   deeper than the cluster allows, which is most often a loop.
//! * `OverBudget` is **429** with `Retry-After`: the caller (its tenant) must slow down.
//!   So is a route's rate limit (`rate_limited`, [`crate::rate`]), with `Retry-After` the
//!   wait until the caller's next request would pass, rounded up to whole seconds.
//! * No answer from any shard is **503** (nothing was queued); a connection that broke with
//!   the request in flight is **502** (it may have run).
//!
//! Error bodies say what kind of refusal it was (`Tariff-Error` header, one text line), never
//! a function's stderr (a web client must not read the site's internals; the gateway logs it)
//! and never a token.

use std::time::Duration;

use http::StatusCode;
use tariff_cluster::client::ClientError;
use tariff_types::tenant::AccessError;
use tariff_types::wire::InvokeError;

use crate::rate::{Limited, RateSpec};

/// `Retry-After` on 429 and 503 when the shard gives no estimate of its own: one second is a
/// few hundred invocations' worth of queue draining at the rates in docs/bench.md, and is
/// the smallest value the header can carry.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A refusal or failure, ready to become a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The status code.
    pub status: StatusCode,
    /// A stable kind name, sent as the `Tariff-Error` header.
    pub kind: &'static str,
    /// One line for the client.
    pub message: String,
    /// `Retry-After`, if it is sent.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure without `Retry-After`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// This failure with `Retry-After: 1` ([`RETRY_AFTER`]).
    pub fn with_retry(self) -> Self {
        self.retry_after_by(RETRY_AFTER)
    }

    /// This failure with `Retry-After` of `after`.
    pub fn retry_after_by(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }
}

/// The response to a request over its route's rate limit: 429, `Retry-After` the wait until
/// the caller's next request would pass (at least [`RETRY_AFTER`]).
pub fn for_rate_limit(spec: RateSpec, limited: Limited) -> Failure {
    let burst = spec.burst.unwrap_or(spec.per_second);
    Failure::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "this route takes {} requests per second per caller (bursts of {burst}); slow down",
            spec.per_second
        ),
    )
    .retry_after_by(limited.retry_after.max(RETRY_AFTER))
}

/// The response to the shard's refusal or failure of an invocation.
pub fn for_invoke_error(error: &InvokeError) -> Failure {
    use InvokeError as E;
    let kind = error.kind();
    let f = |status: StatusCode, message: String| Failure::new(status, kind, message);
    match error {
        E::Unauthenticated(_) => f(StatusCode::UNAUTHORIZED, error.to_string()),
        E::Forbidden(_) => f(StatusCode::FORBIDDEN, error.to_string()),
        E::PayloadTooLarge { .. } => f(StatusCode::PAYLOAD_TOO_LARGE, error.to_string()),
        E::OverBudget(_) => f(StatusCode::TOO_MANY_REQUESTS, error.to_string()).with_retry(),
        E::Overloaded { retry_after_ms, .. } => f(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster is shedding load; retry later".into(),
        )
        .retry_after_by(Duration::from_millis(*retry_after_ms).max(RETRY_AFTER)),
        E::ShuttingDown => f(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).with_retry(),
        E::ChainTooDeep { .. } => f(StatusCode::LOOP_DETECTED, error.to_string()),
        E::TimedOut(_) | E::StageTimedOut { .. } | E::Cancelled => {
            f(StatusCode::GATEWAY_TIMEOUT, error.to_string())
        }
        E::Suspended { retry_after_ms, .. } => f(
            StatusCode::SERVICE_UNAVAILABLE,
            "the function crashed too often and is suspended".into(),
        )
        .retry_after_by(Duration::from_millis(*retry_after_ms).max(RETRY_AFTER)),
        E::UnknownFunction(_) | E::BadClass(_) => f(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the route names a function or class the cluster does not have".into(),
        ),
        E::FunctionFailed { .. } | E::StartFailed(_) => {
            f(StatusCode::BAD_GATEWAY, "the function failed".into())
        }
        E::MachineLost(_) => f(
            StatusCode::BAD_GATEWAY,
            "the machine running the function was lost".into(),
        ),
        // The function had started; the machine stopped it to free memory. Retrying later may
        // succeed once the pressure is gone.
        E::KilledUnderMemoryPressure => {
            f(StatusCode::SERVICE_UNAVAILABLE, error.to_string()).with_retry()
        }
        E::Protocol(_) => f(StatusCode::BAD_GATEWAY, error.to_string()),
    }
}

/// The response when the shard gave no answer (or refused the caller before invoking).
pub fn for_client_error(error: &ClientError) -> Failure {
    match error {
        ClientError::Denied(AccessError::Unauthenticated(_)) => Failure::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            error.to_string(),
        ),
        ClientError::Denied(AccessError::Forbidden(_)) => {
            Failure::new(StatusCode::FORBIDDEN, "forbidden", error.to_string())
        }
        ClientError::Unreachable { .. } | ClientError::NoneReachable { .. } => Failure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unreachable",
            "no shard reachable",
        )
        .with_retry(),
        ClientError::TimedOut(_) => Failure::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timed_out",
            "no answer from the shard in time",
        ),
        _ => Failure::new(
            StatusCode::BAD_GATEWAY,
            "connection",
            "the connection to the shard failed",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shedding_passes_on_the_shards_retry_estimate() {
        let overloaded = |retry_after_ms| InvokeError::Overloaded {
            queued: 9,
            limit: 8,
            retry_after_ms,
        };
        let retry = |ms| for_invoke_error(&overloaded(ms)).retry_after;
        assert_eq!(retry(2_500), Some(Duration::from_millis(2_500)));
        assert_eq!(retry(0), Some(RETRY_AFTER));
    }

    #[test]
    fn every_invoke_error_has_its_documented_status() {
        use InvokeError as E;
        let cases = [
            (E::Unauthenticated("x".into()), 401, false),
            (E::Forbidden("x".into()), 403, false),
            (E::PayloadTooLarge { size: 2, limit: 1 }, 413, false),
            (E::OverBudget("t".into()), 429, true),
            (
                E::Overloaded {
                    queued: 2,
                    limit: 1,
                    retry_after_ms: 2_500,
                },
                503,
                true,
            ),
            (E::ChainTooDeep { depth: 9, limit: 8 }, 508, false),
            (E::ShuttingDown, 503, true),
            (E::TimedOut(5), 504, false),
            (E::Cancelled, 504, false),
            (E::UnknownFunction("f".into()), 500, false),
            (E::BadClass("c".into()), 500, false),
            (
                E::FunctionFailed {
                    status: "exit status 1".into(),
                    stderr_tail: "secret detail".into(),
                },
                502,
                false,
            ),
            (E::StartFailed("x".into()), 502, false),
            (E::MachineLost("m".into()), 502, false),
            (E::Protocol("p".into()), 502, false),
        ];
        for (error, status, retry) in cases {
            let failure = for_invoke_error(&error);
            assert_eq!(failure.status.as_u16(), status, "{error:?}");
            assert_eq!(failure.retry_after.is_some(), retry, "{error:?}");
            assert_eq!(failure.kind, error.kind());
            assert!(!failure.message.contains("secret detail"));
        }
    }
}
