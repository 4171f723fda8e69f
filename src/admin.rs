//! The administrator's commands: `tariff tenant` (tenants and their tokens, through a shard,
//! with the administrator's token) and `tariff cluster` (the authority, on the machine that
//! holds it).
//!
//! A new token is made here, on the administrator's machine, and only its hash is sent: the
//! token itself never crosses the network. It is written to this machine's token file for the
//! tenant and printed on the last line of the output, once.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use tariff_cluster::cluster::Role;
use tariff_cluster::tenancy::{
    admin_token_file, hash_token, new_token, token_file, write_token_file,
};
use tariff_types::tenant::{TenantInfo, TenantRequest};
use tariff_types::wire::{ClientRequest, ClientResponse};

use crate::commands::{connect_with, ShardAddr};
use crate::Global;

/// `tariff tenant`.
#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Add a tenant; prints its token on the last line and keeps it in CLUSTER/tokens/NAME.
    Add {
        #[command(flatten)]
        shard: ShardAddr,
        /// The tenant's name (a-z 0-9 _ -, starting with a letter).
        name: String,
        /// Monthly budget, in the unit class prices are quoted in (default: none).
        #[arg(long)]
        budget: Option<f64>,
    },
    /// Set or lift a tenant's monthly budget, with immediate effect.
    SetBudget {
        #[command(flatten)]
        shard: ShardAddr,
        /// The tenant.
        name: String,
        /// The new budget, or `none` for no limit.
        budget: String,
    },
    /// List every tenant.
    List {
        #[command(flatten)]
        shard: ShardAddr,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show one tenant.
    Show {
        #[command(flatten)]
        shard: ShardAddr,
        /// The tenant.
        name: String,
        /// One JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Remove a tenant, its tokens and its functions.
    Remove {
        #[command(flatten)]
        shard: ShardAddr,
        /// The tenant.
        name: String,
    },
    /// Replace a tenant's token: the old one stops working; prints the new one on the last
    /// line and keeps it in CLUSTER/tokens/NAME.
    RotateToken {
        #[command(flatten)]
        shard: ShardAddr,
        /// The tenant.
        name: String,
    },
}

/// `tariff cluster`.
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Issue a shard's or a dispatcher's certificate as a cluster directory for another
    /// machine (the CA certificate and the role's certificate and key; never the CA key).
    Issue {
        /// The role the certificate allows.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Directory to write; copy it to the other machine and pass it as --cluster there.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make a new administrator token, replacing the old one, by writing the store directly
    /// (for when the admin token file is lost). Needs write access to the store.
    ResetAdmin {
        /// The store, as `tariff shard --store` takes it. Default: the cluster directory's.
        #[arg(long)]
        store: Option<String>,
    },
}

/// `--role` values.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum RoleArg {
    /// A scheduler shard.
    Shard,
    /// A dispatcher.
    Dispatcher,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Shard => Role::Shard,
            RoleArg::Dispatcher => Role::Dispatcher,
        }
    }
}

/// Runs `tariff cluster`.
pub fn cluster(global: &Global, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Issue { role, out } => {
            let cluster = global.open_cluster()?;
            let role = Role::from(role);
            let pki = cluster
                .issue(role, &out)
                .with_context(|| format!("issuing a {role} certificate"))?;
            println!("issued a {role} certificate in {}", pki.display());
            println!(
                "copy {} to the other machine and run `tariff --cluster DIR {role} ...` there",
                out.display()
            );
            Ok(())
        }
        ClusterCommand::ResetAdmin { store } => {
            let cluster = global.open_cluster()?;
            let store = tariff_cluster::store::open(store.as_deref(), &cluster.store_path())
                .context("opening the cluster store")?;
            let token = new_token()?;
            store.reset_admin(&hash_token(&token))?;
            let path = admin_token_file(cluster.dir());
            write_token_file(&path, &token)?;
            println!(
                "the administrator's token is replaced; the new one is in {} (running shards \
                 accept it at once and drop the old one within seconds)",
                path.display()
            );
            Ok(())
        }
    }
}

/// Runs `tariff tenant`.
pub async fn tenant(global: &Global, command: TenantCommand) -> anyhow::Result<()> {
    let (shard, request, made) = match command {
        TenantCommand::Add {
            shard,
            name,
            budget,
        } => {
            let token = new_token()?;
            let token_hash = hash_token(&token);
            let request = TenantRequest::Add {
                name,
                token_hash,
                budget,
            };
            (shard, request, Some(token))
        }
        TenantCommand::SetBudget {
            shard,
            name,
            budget,
        } => {
            let budget = match budget.as_str() {
                "none" => None,
                text => Some(
                    text.parse::<f64>()
                        .with_context(|| format!("`{text}` is not an amount or `none`"))?,
                ),
            };
            let client = connect_with(global, &shard.shard, global.admin_token()?).await?;
            let answer = client
                .request(ClientRequest::Tenants(TenantRequest::SetBudget {
                    name,
                    budget,
                }))
                .await?;
            let ClientResponse::Tenant(info) = refusal(answer)? else {
                bail!("unexpected answer to a budget change");
            };
            return print_tenant(&info, false);
        }
        TenantCommand::RotateToken { shard, name } => {
            let token = new_token()?;
            let token_hash = hash_token(&token);
            (
                shard,
                TenantRequest::RotateToken { name, token_hash },
                Some(token),
            )
        }
        TenantCommand::List { shard, json } => {
            let client = connect_with(global, &shard.shard, global.admin_token()?).await?;
            let answer = client
                .request(ClientRequest::Tenants(TenantRequest::List))
                .await?;
            let ClientResponse::TenantList(tenants) = refusal(answer)? else {
                bail!("unexpected answer to a tenant list");
            };
            for info in &tenants {
                print_tenant(info, json)?;
            }
            return Ok(());
        }
        TenantCommand::Show { shard, name, json } => {
            let client = connect_with(global, &shard.shard, global.admin_token()?).await?;
            let answer = client
                .request(ClientRequest::Tenants(TenantRequest::Show(name)))
                .await?;
            let ClientResponse::Tenant(info) = refusal(answer)? else {
                bail!("unexpected answer to a tenant show");
            };
            return print_tenant(&info, json);
        }
        TenantCommand::Remove { shard, name } => {
            let client = connect_with(global, &shard.shard, global.admin_token()?).await?;
            let answer = client
                .request(ClientRequest::Tenants(TenantRequest::Remove(name.clone())))
                .await?;
            let ClientResponse::Tenant(info) = refusal(answer)? else {
                bail!("unexpected answer to a tenant removal");
            };
            let _ = std::fs::remove_file(token_file(&global.cluster_dir(), &name));
            println!(
                "removed tenant {} and its {} function(s)",
                info.tenant.name,
                info.functions.len()
            );
            return Ok(());
        }
    };
    let client = connect_with(global, &shard.shard, global.admin_token()?).await?;
    let answer = client.request(ClientRequest::Tenants(request)).await?;
    let ClientResponse::Tenant(info) = refusal(answer)? else {
        bail!("unexpected answer to a tenant change");
    };
    let token = made.expect("add and rotate make a token");
    let path = token_file(&global.cluster_dir(), &info.tenant.name);
    write_token_file(&path, &token)?;
    println!(
        "tenant {}: token saved in {}",
        info.tenant.name,
        path.display()
    );
    println!(
        "use it here with `--tenant {}`, elsewhere with --token or TARIFF_TOKEN:",
        info.tenant.name
    );
    println!("{}", token.expose_secret());
    Ok(())
}

/// The answer, or the refusal in it as an error (with its exit code).
fn refusal(answer: ClientResponse) -> anyhow::Result<ClientResponse> {
    match answer {
        ClientResponse::Denied(denied) => Err(denied.into()),
        ClientResponse::Refused(reason) => bail!("refused: {reason}"),
        other => Ok(other),
    }
}

fn print_tenant(info: &TenantInfo, json: bool) -> anyhow::Result<()> {
    let spend = &info.spend;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "name": info.tenant.name,
                "created_at_us": info.tenant.created_at_us,
                "functions": info.functions,
                "month": spend.month,
                "spent": spend.spent,
                "budget": spend.budget,
                "rate_per_s": spend.rate_per_s,
                "pace": spend.pace,
                "throttle": spend.throttle.name(),
            })
        );
    } else {
        let budget = spend
            .budget
            .map_or_else(|| "none".to_owned(), |b| format!("{b:.6}"));
        let pace = spend
            .pace
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.2}"));
        println!(
            "{}\tspent {:.6} of budget {budget} in {} (pace {pace}, {:.6}/s lately)\t{}\tfunctions: {}",
            info.tenant.name,
            spend.spent,
            spend.month,
            spend.rate_per_s,
            spend.throttle.name(),
            if info.functions.is_empty() {
                "-".to_owned()
            } else {
                info.functions.join(", ")
            }
        );
    }
    Ok(())
}
