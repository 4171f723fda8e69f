//! The HTTP front door (`tariff gateway`): HTTP/1.1 and HTTP/2 requests become invocations
//! of functions at the price class their route names, and the functions' answers become the
//! responses, so a web application can run entirely on Tariff functions with its page views
//! ahead of its batch work.
//!
//! One concept per module: the route table ([`routes`]), the HTTP envelope is the SDK's
//! (`tariff_function::http`, shared with functions so both ends read one format), shard
//! clients per token ([`clients`]), rate limits per route and caller ([`rate`]), the status-code contract ([`status`]), responses
//! ([`reply`]), asynchronous invocations ([`pending`]) and the server ([`server`]). The format
//! and the contract are documented in `docs/gateway.md`.

pub mod clients;
pub mod pending;
pub mod rate;
pub mod reply;
pub mod routes;
pub mod server;
pub mod status;

pub use server::{Gateway, GatewayError, GatewayHandle, GatewayOptions};
