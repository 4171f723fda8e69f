//! The cluster store in etcd, for shards on several machines.
//!
//! Functions live under [`FUNCTIONS_PREFIX`] as JSON, one key each; a function's version is
//! the etcd key's own version, which every put raises, so versions need no bookkeeping here.
//!
//! [`ClusterStore`] is synchronous (SQLite is), and etcd's client is async: the store owns a
//! thread with its own small runtime and the client, and each call is a request sent to that
//! thread and a bounded wait for its answer. Calls are rare on the hot path, because shards
//! cache specs (see `scheduler::registry`).

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{Client, GetOptions};

use super::{ClusterStore, StoreError};
use tariff_types::function::FunctionSpec;

/// Key prefix of the function registry.
pub const FUNCTIONS_PREFIX: &str = "/tariff/functions/";
/// Longest a call waits for etcd.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

enum Request {
    Put(FunctionSpec, mpsc::SyncSender<Result<u64, StoreError>>),
    Get(
        String,
        mpsc::SyncSender<Result<Option<FunctionSpec>, StoreError>>,
    ),
    List(mpsc::SyncSender<Result<Vec<FunctionSpec>, StoreError>>),
}

/// A cluster store in etcd.
pub struct EtcdStore {
    requests: Mutex<mpsc::Sender<Request>>,
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

fn decode(key: &[u8], value: &[u8], version: i64) -> Result<FunctionSpec, StoreError> {
    let name = String::from_utf8_lossy(key)
        .trim_start_matches(FUNCTIONS_PREFIX)
        .to_owned();
    let mut spec: FunctionSpec =
        serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
            name,
            reason: e.to_string(),
        })?;
    spec.version = version as u64;
    Ok(spec)
}

impl EtcdStore {
    /// Connects to etcd at `endpoints` (e.g. `http://10.0.0.1:2379`), failing fast if none
    /// answers.
    pub fn connect(endpoints: Vec<String>) -> Result<Self, StoreError> {
        let (requests, inbox) = mpsc::channel::<Request>();
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
            requests: Mutex::new(requests),
            endpoints,
        })
    }

    fn call<T>(
        &self,
        make: impl FnOnce(mpsc::SyncSender<Result<T, StoreError>>) -> Request,
    ) -> Result<T, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(make(reply))
            .map_err(|_| StoreError::Etcd("the etcd client thread has stopped".into()))?;
        answer
            .recv_timeout(CALL_TIMEOUT)
            .map_err(|_| StoreError::Etcd(format!("no answer from etcd within {CALL_TIMEOUT:?}")))?
    }
}

/// The etcd thread: connects, then answers requests until the store is dropped.
async fn serve(
    endpoints: Vec<String>,
    inbox: mpsc::Receiver<Request>,
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
    while let Ok(request) = inbox.recv() {
        match request {
            Request::Put(spec, reply) => {
                let _ = reply.send(put(&mut client, &spec).await);
            }
            Request::Get(name, reply) => {
                let _ = reply.send(get(&mut client, &name).await);
            }
            Request::List(reply) => {
                let _ = reply.send(list(&mut client).await);
            }
        }
    }
}

async fn put(client: &mut Client, spec: &FunctionSpec) -> Result<u64, StoreError> {
    let json = serde_json::to_vec(spec).map_err(|e| StoreError::Corrupt {
        name: spec.name.clone(),
        reason: e.to_string(),
    })?;
    let key = format!("{FUNCTIONS_PREFIX}{}", spec.name);
    client
        .put(key.as_str(), json, None)
        .await
        .map_err(etcd_err)?;
    let stored = get(client, &spec.name).await?;
    Ok(stored.map_or(1, |s| s.version))
}

async fn get(client: &mut Client, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
    let key = format!("{FUNCTIONS_PREFIX}{name}");
    let response = client.get(key.as_str(), None).await.map_err(etcd_err)?;
    response
        .kvs()
        .first()
        .map(|kv| decode(kv.key(), kv.value(), kv.version()))
        .transpose()
}

async fn list(client: &mut Client) -> Result<Vec<FunctionSpec>, StoreError> {
    let response = client
        .get(FUNCTIONS_PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err)?;
    let mut specs = response
        .kvs()
        .iter()
        .map(|kv| decode(kv.key(), kv.value(), kv.version()))
        .collect::<Result<Vec<_>, _>>()?;
    specs.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(specs)
}

impl ClusterStore for EtcdStore {
    fn put_function(&self, spec: &FunctionSpec) -> Result<u64, StoreError> {
        self.call(|reply| Request::Put(spec.clone(), reply))
    }

    fn function(&self, name: &str) -> Result<Option<FunctionSpec>, StoreError> {
        self.call(|reply| Request::Get(name.to_owned(), reply))
    }

    fn functions(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        self.call(Request::List)
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
