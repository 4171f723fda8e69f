//! The function registry in a real etcd (Debian's `etcd-server`), as for shards on several
//! machines: two shard processes share nothing but etcd, yet see each other's deploys.
//! Built with `--features etcd` (CI does; it needs protoc).

#![cfg(feature = "etcd")]

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{invoke, request, Proc, TestCluster};
use tariff_types::wire::{ClientRequest, ClientResponse};

const ETCD: &str = "etcd";

/// A free TCP port on 127.0.0.1 (etcd cannot bind port 0 and report it back).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd in `dir` and waits (bounded) until it answers.
fn start_etcd(dir: &std::path::Path) -> (Proc, String) {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let child = Command::new(ETCD)
        .arg("--data-dir")
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
        ])
        .args([
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
        ])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("`{ETCD}` could not start ({e}): install Debian's etcd-server (.ci/run does)")
        });
    let proc = Proc {
        child,
        name: "etcd".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let port = client.rsplit(':').next().unwrap().parse::<u16>().unwrap();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "etcd did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, client)
}

/// A real etcd, two shards keeping the cluster store in it and nothing else in common, and one
/// dispatcher; etcd stops when its handle is dropped.
fn shards_on_etcd() -> (TestCluster, Proc) {
    let mut cluster = TestCluster::new();
    let (etcd, url) = start_etcd(cluster.dir.path());
    let store = format!("etcd:{url}");
    cluster.start_shard(&["--store", &store]);
    cluster.start_shard(&["--store", &store]);
    cluster.start_dispatcher("m1", 1, &[]);
    (cluster, etcd)
}

#[test]
fn shards_sharing_only_etcd_see_each_others_deploys() {
    let (cluster, _etcd) = shards_on_etcd();
    common::runtime().block_on(async {
            cluster.wait_for_machines(1).await;
            cluster.deploy_examples().await;
            let b = cluster.client(1).await;
            let listed = b.request(ClientRequest::ListFunctions).await.unwrap();
            assert!(
                matches!(&listed, ClientResponse::Functions(f) if f.len() == 5 && f.iter().all(|s| s.version == 1)),
                "{listed:?}"
            );
            let out = invoke(&b, request("echo", "critical", "via etcd")).await.unwrap();
            assert_eq!(out.run.output, b"via etcd");
            // A redeploy through shard 0 raises the version everywhere.
            cluster.deploy_examples().await;
            let listed = b.request(ClientRequest::ListFunctions).await.unwrap();
            assert!(
                matches!(&listed, ClientResponse::Functions(f) if f.iter().all(|s| s.version == 2)),
                "{listed:?}"
            );
            assert!(
                !cluster.cluster_dir().join("store.sqlite3").exists(),
                "with --store etcd the embedded store is not used"
            );
        });
}

#[test]
fn tenants_and_ownership_live_in_etcd_for_every_shard() {
    let (cluster, _etcd) = shards_on_etcd();
    common::runtime().block_on(async {
        cluster.wait_for_machines(1).await;
        cluster.deploy_examples().await;
        // Tenant `test` was added through shard 0; shard 1 knows its token from etcd.
        let b = cluster.client(1).await;
        let out = invoke(&b, request("echo", "high", "owned")).await.unwrap();
        assert_eq!(out.run.output, b"owned");
        // Another tenant, added through shard 1, may not use `test`'s functions on shard 0.
        let admin = cluster.client_as(1, Some(cluster.admin_token())).await;
        let other = tariff_cluster::tenancy::new_token().unwrap();
        let added = admin
            .request(ClientRequest::Tenants(
                tariff_types::tenant::TenantRequest::Add {
                    name: "other".into(),
                    token_hash: tariff_cluster::tenancy::hash_token(&other),
                    budget: None,
                },
            ))
            .await
            .unwrap();
        assert!(matches!(added, ClientResponse::Tenant(_)), "{added:?}");
        let a = cluster.client_as(0, Some(other)).await;
        assert!(matches!(
            invoke(&a, request("echo", "high", "x")).await,
            Err(tariff_types::InvokeError::Forbidden(_))
        ));
        // Removing `test` through shard 1 revokes its token on shard 0 within the cache's
        // lifetime (these shards are not each other's --peers, so no notice helps).
        let removed = admin
            .request(ClientRequest::Tenants(
                tariff_types::tenant::TenantRequest::Remove("test".into()),
            ))
            .await
            .unwrap();
        assert!(matches!(removed, ClientResponse::Tenant(_)), "{removed:?}");
        let a = cluster.client(0).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match invoke(&a, request("echo", "high", "x")).await {
                Err(tariff_types::InvokeError::Unauthenticated(_)) => break,
                other => assert!(Instant::now() < deadline, "still accepted: {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn idempotency_keys_behave_in_etcd_as_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (_etcd, url) = start_etcd(dir.path());
    let store = tariff_cluster::store::open(Some(&format!("etcd:{url}")), &dir.path().join("x"))
        .expect("connecting to etcd");
    tariff_cluster::store::checks::keyed_runs(store.as_ref());
}
