//! The cluster store in etcd, for shards on several machines.
//!
//! Functions live under [`FUNCTIONS_PREFIX`] as JSON, one key each; a function's version is
//! the etcd key's own version, which every put raises, so versions need no bookkeeping here.
//! Tenants live under [`TENANTS_PREFIX`], token hashes under [`TOKENS_PREFIX`] (the value says
//! whose), and [`ADMIN_KEY`] holds the administrator's token hash. Conditional writes are etcd
//! transactions comparing a key's version, so racing shards cannot both win.
//!
//! [`ClusterStore`] is synchronous (SQLite is), and etcd's client is async: the store owns a
//! thread with its own small runtime and the client, and each call is a job sent to that
//! thread and a bounded wait for its answer. Calls are rare on the hot path, because shards
//! cache specs and credentials (see `scheduler::registry` and `scheduler::access`).

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

use super::{ClusterStore, Expect, KeyedRun, StoreError};
use tariff_types::function::FunctionSpec;
use tariff_types::tenant::{Principal, Tenant};

/// Key prefix of the function registry.
pub const FUNCTIONS_PREFIX: &str = "/tariff/functions/";
/// Key prefix of the tenants.
pub const TENANTS_PREFIX: &str = "/tariff/tenants/";
/// Key prefix of the token hashes.
pub const TOKENS_PREFIX: &str = "/tariff/tokens/";
/// The administrator's token hash.
pub const ADMIN_KEY: &str = "/tariff/admin";
/// Key prefix of each shard's published spend: `PREFIX/MONTH/TENANT/SHARD`.
pub const SPEND_PREFIX: &str = "/tariff/spend/";
/// Key prefix of idempotency keys: `PREFIX/TENANT/KEY`, a [`KeyedRun`] in the codec's
/// encoding (an answer's output would triple in JSON).
pub const KEYED_RUNS_PREFIX: &str = "/tariff/keyed/";
/// Times a conditional write is tried again when a racing writer changed the key first.
const WRITE_ATTEMPTS: usize = 3;
/// Longest a call waits for etcd.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Work for the etcd thread: given a handle to the client, answers on its own channel.
type Job = Box<dyn FnOnce(Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A cluster store in etcd.
pub struct EtcdStore {
    jobs: Mutex<mpsc::Sender<Job>>,
    endpoints: Vec<String>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.endpoints)
            .finish()
    }
}

fn etcd_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Etcd(e.to_string())
}

fn corrupt(key: &[u8], e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        name: String::from_utf8_lossy(key).into_owned(),
        reason: e.to_string(),
    }
}

fn decode(key: &[u8], value: &[u8], version: i64) -> Result<FunctionSpec, StoreError> {
    let mut spec: FunctionSpec = serde_json::from_slice(value).map_err(|e| corrupt(key, e))?;
    spec.version = version as u64;
    Ok(spec)
}

fn json<T: serde::Serialize>(name: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Corrupt {
        name: name.to_owned(),
        reason: e.to_string(),
    })
}

fn function_key(name: &str) -> String {
    format!("{FUNCTIONS_PREFIX}{name}")
}

fn tenant_key(name: &str) -> String {
    format!("{TENANTS_PREFIX}{name}")
}

fn token_key(hash: &str) -> String {
    format!("{TOKENS_PREFIX}{hash}")
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://10.0.0.1:2379`), failing fast if none
    /// answers.
    pub fn connect(endpoints: Vec<String>) -> Result<Self, StoreError> {
        let (jobs, inbox) = mpsc::channel::<Job>();
        let (ready, started) = mpsc::sync_channel::<Result<(), StoreError>>(1);
        let targets = endpoints.clone();
        std::thread::Builder::new()
            .name("tariff-etcd".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(etcd_err(e)));
                        return;
                    }
                };
                runtime.block_on(serve(targets, inbox, ready));
            })
            .map_err(etcd_err)?;
        started.recv_timeout(CALL_TIMEOUT).map_err(|_| {
            StoreError::Etcd(format!(
                "no answer from etcd at {endpoints:?} within {CALL_TIMEOUT:?}"
            ))
        })??;
        Ok(Self {
            jobs: Mutex::new(jobs),
            endpoints,
        })
    }

    /// Runs `op` on the etcd thread and waits (bounded) for its result.
    fn call<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = reply.send(op(client).await);
            })
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| StoreError::Etcd("the etcd client thread has stopped".into()))?;
        answer
            .recv_timeout(CALL_TIMEOUT)
            .map_err(|_| StoreError::Etcd(format!("no answer from etcd within {CALL_TIMEOUT:?}")))?
    }
}

/// The etcd thread: connects, then runs jobs until the store is dropped.
async fn serve(
    endpoints: Vec<String>,
    inbox: mpsc::Receiver<Job>,
    ready: mpsc::SyncSender<Result<(), StoreError>>,
) {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        .with_timeout(CALL_TIMEOUT);
    let mut client = match Client::connect(&endpoints, Some(options)).await {
        Ok(client) => client,
        Err(e) => {
            let _ = ready.send(Err(etcd_err(e)));
            return;
        }
    };
    if let Err(e) = client.status().await {
        let _ = ready.send(Err(etcd_err(e)));
        return;
    }
    let _ = ready.send(Ok(()));
    // A blocking receive is right here: this thread does nothing else.
    while let Ok(job) = inbox.recv() {
        job(client.clone()).await;
    }
}

async fn get_function(client: &mut Client, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
    let response = client
        .get(function_key(name), None)
        .await
        .map_err(etcd_err)?;
    response
        .kvs()
        .first()
        .map(|kv| decode(kv.key(), kv.value(), kv.version()))
        .transpose()
}

/// Every value under `prefix`, as (key, value, version).
async fn scan(
    client: &mut Client,
    prefix: &str,
) -> Result<Vec<(Vec<u8>, Vec<u8>, i64)>, StoreError> {
    let response = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err)?;
    Ok(response
        .kvs()
        .iter()
        .map(|kv| (kv.key().to_vec(), kv.value().to_vec(), kv.version()))
        .collect())
}

/// The keys of every token held by tenant `name`.
async fn token_keys_of(client: &mut Client, name: &str) -> Result<Vec<Vec<u8>>, StoreError> {
    let mut keys = Vec::new();
    for (key, value, _) in scan(client, TOKENS_PREFIX).await? {
        let principal: Principal = serde_json::from_slice(&value).map_err(|e| corrupt(&key, e))?;
        if principal == Principal::Tenant(name.to_owned()) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn keyed_key(key: &str) -> String {
    format!("{KEYED_RUNS_PREFIX}{key}")
}

fn encode_run(run: &KeyedRun) -> Result<Vec<u8>, StoreError> {
    crate::codec::encode_body(run).map_err(|e| StoreError::Corrupt {
        name: "keyed run".into(),
        reason: e.to_string(),
    })
}

fn decode_run(key: &[u8], value: &[u8]) -> Result<KeyedRun, StoreError> {
    crate::codec::decode(value).map_err(|e| corrupt(key, e))
}

/// The run held under `key` with the key's modification revision, if any.
async fn get_run(client: &mut Client, key: &str) -> Result<Option<(KeyedRun, i64)>, StoreError> {
    let response = client.get(key, None).await.map_err(etcd_err)?;
    response
        .kvs()
        .first()
        .map(|kv| Ok((decode_run(kv.key(), kv.value())?, kv.mod_revision())))
        .transpose()
}

async fn commit(client: &mut Client, txn: Txn) -> Result<bool, StoreError> {
    Ok(client.txn(txn).await.map_err(etcd_err)?.succeeded())
}

impl ClusterStore for EtcdStore {
    fn put_function(&self, spec: &FunctionSpec, expect: Expect) -> Result<u64, StoreError> {
        let value = json(&spec.name, spec)?;
        let name = spec.name.clone();
        self.call(move |mut client| async move {
            let key = function_key(&name);
            let put = TxnOp::put(key.as_str(), value, None);
            let when = match expect {
                Expect::Any => vec![],
                Expect::Absent => vec![Compare::version(key.as_str(), CompareOp::Equal, 0)],
                Expect::Version(v) => {
                    vec![Compare::version(key.as_str(), CompareOp::Equal, v as i64)]
                }
            };
            let txn = Txn::new().when(when).and_then(vec![put]);
            if !commit(&mut client, txn).await? {
                return Err(StoreError::Conflict(format!(
                    "function `{name}` changed meanwhile"
                )));
            }
            let stored = get_function(&mut client, &name).await?;
            Ok(stored.map_or(1, |s| s.version))
        })
    }

    fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
        let name = name.to_owned();
        self.call(move |mut client| async move { get_function(&mut client, &name).await })
    }

    fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        self.call(|mut client| async move {
            let mut specs = scan(&mut client, FUNCTIONS_PREFIX)
                .await?
                .into_iter()
                .map(|(k, v, version)| decode(&k, &v, version))
                .collect::<Result<Vec<_>, _>>()?;
            specs.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(specs)
        })
    }

    fn remove_function(&self, name: &str, version: u64) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(move |mut client| async move {
            let key = function_key(&name);
            let txn = Txn::new()
                .when(vec![Compare::version(
                    key.as_str(),
                    CompareOp::Equal,
                    version as i64,
                )])
                .and_then(vec![TxnOp::delete(key.as_str(), None)]);
            if commit(&mut client, txn).await? {
                return Ok(true);
            }
            match get_function(&mut client, &name).await? {
                Some(_) => Err(StoreError::Conflict(format!(
                    "function `{name}` changed meanwhile"
                ))),
                None => Ok(false),
            }
        })
    }

    fn add_tenant(&self, tenant: &Tenant, token_hash: &str) -> Result<(), StoreError> {
        let value = json(&tenant.name, tenant)?;
        let principal = json(&tenant.name, &Principal::Tenant(tenant.name.clone()))?;
        let (name, hash) = (tenant.name.clone(), token_hash.to_owned());
        self.call(move |mut client| async move {
            let key = tenant_key(&name);
            let txn = Txn::new()
                .when(vec![Compare::version(key.as_str(), CompareOp::Equal, 0)])
                .and_then(vec![
                    TxnOp::put(key.as_str(), value, None),
                    TxnOp::put(token_key(&hash), principal, None),
                ]);
            if commit(&mut client, txn).await? {
                Ok(())
            } else {
                Err(StoreError::Conflict(format!(
                    "tenant `{name}` already exists"
                )))
            }
        })
    }

    fn tenant(&self, name: &str) -> Result<Option<Tenant>, StoreError> {
        let name = name.to_owned();
        self.call(move |mut client| async move {
            let response = client
                .get(tenant_key(&name), None)
                .await
                .map_err(etcd_err)?;
            response
                .kvs()
                .first()
                .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e)))
                .transpose()
        })
    }

    fn tenants(&self) -> Result<Vec<Tenant>, StoreError> {
        self.call(|mut client| async move {
            let mut tenants = scan(&mut client, TENANTS_PREFIX)
                .await?
                .into_iter()
                .map(|(k, v, _)| serde_json::from_slice::<Tenant>(&v).map_err(|e| corrupt(&k, e)))
                .collect::<Result<Vec<_>, _>>()?;
            tenants.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(tenants)
        })
    }

    fn remove_tenant(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(move |mut client| async move {
            let key = tenant_key(&name);
            let mut deletes = vec![TxnOp::delete(key.as_str(), None)];
            for token in token_keys_of(&mut client, &name).await? {
                deletes.push(TxnOp::delete(token, None));
            }
            for (k, v, version) in scan(&mut client, FUNCTIONS_PREFIX).await? {
                if decode(&k, &v, version)?.owner == name {
                    deletes.push(TxnOp::delete(k, None));
                }
            }
            let txn = Txn::new()
                .when(vec![Compare::version(key.as_str(), CompareOp::Greater, 0)])
                .and_then(deletes);
            commit(&mut client, txn).await
        })
    }

    fn set_tenant_token(&self, name: &str, token_hash: &str) -> Result<bool, StoreError> {
        let principal = json(name, &Principal::Tenant(name.to_owned()))?;
        let (name, hash) = (name.to_owned(), token_hash.to_owned());
        self.call(move |mut client| async move {
            let key = tenant_key(&name);
            let mut ops: Vec<TxnOp> = token_keys_of(&mut client, &name)
                .await?
                .into_iter()
                .map(|k| TxnOp::delete(k, None))
                .collect();
            ops.push(TxnOp::put(token_key(&hash), principal, None));
            let txn = Txn::new()
                .when(vec![Compare::version(key.as_str(), CompareOp::Greater, 0)])
                .and_then(ops);
            commit(&mut client, txn).await
        })
    }

    fn credential(&self, token_hash: &str) -> Result<Option<Principal>, StoreError> {
        let hash = token_hash.to_owned();
        self.call(move |mut client| async move {
            let response = client.get(token_key(&hash), None).await.map_err(etcd_err)?;
            response
                .kvs()
                .first()
                .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e)))
                .transpose()
        })
    }

    fn bootstrap_admin(&self, token_hash: &str) -> Result<bool, StoreError> {
        let principal = json("admin", &Principal::Admin)?;
        let hash = token_hash.to_owned();
        self.call(move |mut client| async move {
            let txn = Txn::new()
                .when(vec![Compare::version(ADMIN_KEY, CompareOp::Equal, 0)])
                .and_then(vec![
                    TxnOp::put(ADMIN_KEY, hash.as_str(), None),
                    TxnOp::put(token_key(&hash), principal, None),
                ]);
            commit(&mut client, txn).await
        })
    }

    fn reset_admin(&self, token_hash: &str) -> Result<(), StoreError> {
        let principal = json("admin", &Principal::Admin)?;
        let hash = token_hash.to_owned();
        self.call(move |mut client| async move {
            let response = client.get(ADMIN_KEY, None).await.map_err(etcd_err)?;
            let mut ops = Vec::new();
            if let Some(old) = response.kvs().first() {
                ops.push(TxnOp::delete(
                    token_key(&String::from_utf8_lossy(old.value())),
                    None,
                ));
            }
            ops.push(TxnOp::put(ADMIN_KEY, hash.as_str(), None));
            ops.push(TxnOp::put(token_key(&hash), principal, None));
            commit(&mut client, Txn::new().and_then(ops)).await?;
            Ok(())
        })
    }

    fn set_tenant_budget(&self, name: &str, budget: Option<f64>) -> Result<bool, StoreError> {
        let name = name.to_owned();
        self.call(move |mut client| async move {
            let key = tenant_key(&name);
            let response = client.get(key.as_str(), None).await.map_err(etcd_err)?;
            let Some(kv) = response.kvs().first() else {
                return Ok(false);
            };
            let mut tenant: Tenant =
                serde_json::from_slice(kv.value()).map_err(|e| corrupt(kv.key(), e))?;
            tenant.budget = budget;
            let value = json(&name, &tenant)?;
            let txn = Txn::new()
                .when(vec![Compare::version(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.version(),
                )])
                .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
            if commit(&mut client, txn).await? {
                Ok(true)
            } else {
                Err(StoreError::Conflict(format!(
                    "tenant `{name}` changed meanwhile"
                )))
            }
        })
    }

    fn publish_spend(
        &self,
        month: &str,
        shard: u16,
        totals: &[(String, f64)],
    ) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = totals
            .iter()
            .map(|(tenant, amount)| {
                TxnOp::put(
                    format!("{SPEND_PREFIX}{month}/{tenant}/{shard}"),
                    amount.to_string(),
                    None,
                )
            })
            .collect();
        self.call(move |mut client| async move {
            commit(&mut client, Txn::new().and_then(ops)).await?;
            Ok(())
        })
    }

    fn clear_spend(&self, shard: u16) -> Result<(), StoreError> {
        self.call(move |mut client| async move {
            let deletes: Vec<TxnOp> = scan(&mut client, SPEND_PREFIX)
                .await?
                .into_iter()
                .filter(|(key, _, _)| {
                    String::from_utf8_lossy(key).rsplit('/').next() == Some(&shard.to_string())
                })
                .map(|(key, _, _)| TxnOp::delete(key, None))
                .collect();
            commit(&mut client, Txn::new().and_then(deletes)).await?;
            Ok(())
        })
    }

    fn claim_key(
        &self,
        key: &str,
        run: &KeyedRun,
        now_us: u64,
    ) -> Result<Option<KeyedRun>, StoreError> {
        let key = keyed_key(key);
        let value = encode_run(run)?;
        self.call(move |mut client| async move {
            for _ in 0..WRITE_ATTEMPTS {
                let held = get_run(&mut client, &key).await?;
                let when = match &held {
                    Some((held, _)) if held.until_us >= now_us => return Ok(Some(held.clone())),
                    Some((_, revision)) => {
                        Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision)
                    }
                    None => Compare::version(key.as_str(), CompareOp::Equal, 0),
                };
                let txn = Txn::new().when(vec![when]).and_then(vec![TxnOp::put(
                    key.as_str(),
                    value.clone(),
                    None,
                )]);
                if commit(&mut client, txn).await? {
                    return Ok(None);
                }
            }
            Err(StoreError::Conflict(format!(
                "idempotency key {key} keeps changing"
            )))
        })
    }

    fn settle_key(
        &self,
        key: &str,
        invocation: u64,
        answer: &[u8],
        until_us: u64,
    ) -> Result<bool, StoreError> {
        let key = keyed_key(key);
        let settled = KeyedRun {
            invocation,
            until_us,
            answer: Some(answer.to_vec()),
        };
        let value = encode_run(&settled)?;
        self.call(move |mut client| async move {
            let Some((held, revision)) = get_run(&mut client, &key).await? else {
                return Ok(false);
            };
            if held.invocation != invocation {
                return Ok(false);
            }
            let txn = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then(vec![TxnOp::put(key.as_str(), value, None)]);
            commit(&mut client, txn).await
        })
    }

    fn keyed_run(&self, key: &str) -> Result<Option<KeyedRun>, StoreError> {
        let key = keyed_key(key);
        self.call(move |mut client| async move {
            Ok(get_run(&mut client, &key).await?.map(|(run, _)| run))
        })
    }

    fn purge_keyed_runs(&self, now_us: u64) -> Result<usize, StoreError> {
        self.call(move |mut client| async move {
            let mut purged = 0;
            for (key, value, _) in scan(&mut client, KEYED_RUNS_PREFIX).await? {
                if decode_run(&key, &value)?.until_us < now_us {
                    client.delete(key, None).await.map_err(etcd_err)?;
                    purged += 1;
                }
            }
            Ok(purged)
        })
    }

    fn spend(&self, month: &str) -> Result<Vec<(String, u16, f64)>, StoreError> {
        let prefix = format!("{SPEND_PREFIX}{month}/");
        self.call(move |mut client| async move {
            let mut rows = Vec::new();
            for (key, value, _) in scan(&mut client, &prefix).await? {
                let text = String::from_utf8_lossy(&key);
                let rest = text.trim_start_matches(prefix.as_str());
                let parsed = rest.rsplit_once('/').and_then(|(tenant, shard)| {
                    let amount = String::from_utf8_lossy(&value).parse::<f64>().ok()?;
                    Some((tenant.to_owned(), shard.parse::<u16>().ok()?, amount))
                });
                rows.push(parsed.ok_or_else(|| corrupt(&key, "not a spend record"))?);
            }
            Ok(rows)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_etcd_is_a_clear_error_not_a_hang() {
        let started = std::time::Instant::now();
        let err = EtcdStore::connect(vec!["http://127.0.0.1:9".into()]).unwrap_err();
        assert!(err.to_string().contains("etcd"), "{err}");
        assert!(started.elapsed() < CALL_TIMEOUT * 3);
    }
}
