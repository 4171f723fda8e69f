//! `tariff gateway`: the HTTP front door as its own process (the logic is the
//! `tariff-gateway` crate; this is its flags, signals and start-up line).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tariff_gateway::server::defaults;
use tariff_gateway::{Gateway, GatewayHandle, GatewayOptions};

use crate::{parse_duration, Global};

/// Flags of `tariff gateway`.
#[derive(Args, Debug)]
pub struct GatewayArgs {
    /// Address to serve HTTP/1.1 and HTTP/2 on (port 0: any free port, printed at start).
    #[arg(long)]
    listen: SocketAddr,
    /// Shards to invoke through. Default: the shards recorded in the cluster directory.
    #[arg(long, value_delimiter = ',')]
    shards: Vec<SocketAddr>,
    /// The route table (TOML, docs/gateway.md). Reloaded on SIGHUP.
    #[arg(long)]
    routes: PathBuf,
    /// Where public routes' owner tokens are (a file per tenant). Default: CLUSTER/tokens.
    #[arg(long)]
    token_dir: Option<PathBuf>,
    /// Shard clients kept, one per distinct bearer token.
    #[arg(long, default_value_t = defaults::MAX_CLIENTS)]
    max_clients: usize,
    /// Connections open at once.
    #[arg(long, default_value_t = defaults::MAX_CONNECTIONS)]
    max_connections: usize,
    /// Time for a request's head to arrive.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    header_timeout: Duration,
    /// Asynchronous invocations (`Prefer: respond-async`) held until fetched.
    #[arg(long, default_value_t = defaults::PENDING)]
    pending: usize,
}

/// Runs `tariff gateway` until SIGTERM or Ctrl-C.
pub async fn run(global: &Global, args: GatewayArgs) -> anyhow::Result<()> {
    let cluster = global.open_cluster()?;
    let mut options = GatewayOptions::new(args.listen, args.routes);
    options.shards = args.shards;
    options.token_dir = args.token_dir;
    options.max_clients = args.max_clients;
    options.max_connections = args.max_connections;
    options.header_timeout = args.header_timeout;
    options.pending = args.pending;
    let gateway = Gateway::bind(cluster, options)
        .await
        .context("starting the gateway")?;
    let stop = crate::shutdown_signal();
    reload_on_sighup(gateway.handle())?;
    // The one line a script or test waits for: the bound address (port 0 picks one).
    println!("gateway listening on http://{}", gateway.local_addr());
    gateway.run(stop).await;
    Ok(())
}

/// Reloads the route table on every SIGHUP (a bad table is logged and the old one kept).
pub fn reload_on_sighup(handle: GatewayHandle) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let _ = handle.reload();
        }
    });
    Ok(())
}
