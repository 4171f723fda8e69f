//! Tenants and roles with real processes: tokens checked by real shards over real QUIC, role
//! certificates issued by the cluster's CA, the CLI's exit codes, and logs searched for
//! tokens (issue "Tenants and security").

mod common;

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use common::{example, invoke, request, runtime, Proc, TestCluster, START_TIMEOUT};
use tariff_cluster::cluster::{Cluster, Role, CLUSTER_SERVER_NAME};
use tariff_cluster::codec;
use tariff_cluster::tenancy::new_token;
use tariff_types::tenant::Token;
use tariff_types::wire::{
    ClientRequest, ClientResponse, DispatcherHello, InvokeError, PeerNotice, StreamOpen,
};
use tariff_types::AccessError;

/// Exit statuses of the CLI (see `src/main.rs`).
const EXIT_UNAUTHENTICATED: i32 = 12;
const EXIT_FORBIDDEN: i32 = 13;

/// One shard (logging at debug, to search its log for tokens), one dispatcher, the examples
/// deployed as tenant `test`.
async fn cluster() -> TestCluster {
    let mut cluster = TestCluster::new();
    cluster.start_shard_logging(&[], "debug");
    cluster.start_dispatcher("m1", 1, &[]);
    cluster.wait_for_machines(1).await;
    cluster.deploy_examples().await;
    cluster
}

/// `tariff ARGS` against the cluster with the given token in `TARIFF_TOKEN` (none: no token
/// at all, since `--tenant nobody` names no token file).
fn cli(cluster: &TestCluster, token: Option<&Token>, args: &[&str]) -> Output {
    let mut command = cluster.command_as("nobody");
    if let Some(token) = token {
        command.env(tariff_cluster::tenancy::TOKEN_ENV, token.expose_secret());
    }
    command.args(args).output().expect("running tariff")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The token `tariff tenant add` or `rotate-token` printed on its last line.
fn printed_token(out: &Output) -> Token {
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    Token::new(text.lines().last().expect("a last line"))
}

fn invoke_echo(cluster: &TestCluster, token: Option<&Token>, function: &str) -> Output {
    cli(
        cluster,
        token,
        &[
            "invoke",
            "--function",
            function,
            "--class",
            "critical",
            "--payload",
            "hi",
        ],
    )
}

#[test]
fn missing_wrong_rotated_and_revoked_tokens_are_refused() {
    runtime().block_on(async {
        let cluster = cluster().await;
        let out = invoke_echo(&cluster, None, "echo");
        assert_eq!(out.status.code(), Some(EXIT_UNAUTHENTICATED), "{out:?}");
        assert!(stderr(&out).contains("no token given"), "{}", stderr(&out));

        let wrong = new_token().unwrap();
        let out = invoke_echo(&cluster, Some(&wrong), "echo");
        assert_eq!(out.status.code(), Some(EXIT_UNAUTHENTICATED), "{out:?}");
        assert!(stderr(&out).contains("not valid"), "{}", stderr(&out));

        // A tenant made by the administrator's command gets its token on the last line.
        let alice = printed_token(
            &cluster
                .command()
                .args(["tenant", "add", "alice"])
                .output()
                .unwrap(),
        );
        let echo = example("echo").to_string_lossy().into_owned();
        let deploy = cli(
            &cluster,
            Some(&alice),
            &["deploy", "--name", "a-echo", "--command", &echo],
        );
        assert!(deploy.status.success(), "{deploy:?}");
        let out = invoke_echo(&cluster, Some(&alice), "a-echo");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(out.stdout, b"hi");

        // Rotation: the old token stops at once (same shard), the new one works.
        let rotated = printed_token(
            &cluster
                .command()
                .args(["tenant", "rotate-token", "alice"])
                .output()
                .unwrap(),
        );
        assert_ne!(rotated, alice);
        let out = invoke_echo(&cluster, Some(&alice), "a-echo");
        assert_eq!(out.status.code(), Some(EXIT_UNAUTHENTICATED), "{out:?}");
        assert!(invoke_echo(&cluster, Some(&rotated), "a-echo")
            .status
            .success());

        // A session opened before the revocation is checked again on every request.
        let session = cluster
            .client_as(0, Some(rotated.clone()))
            .await
            .with_session()
            .await
            .unwrap();
        assert!(invoke(&session, request("a-echo", "batch", "x"))
            .await
            .is_ok());
        let removed = cluster
            .command()
            .args(["tenant", "remove", "alice"])
            .output()
            .unwrap();
        assert!(removed.status.success(), "{removed:?}");
        assert!(matches!(
            invoke(&session, request("a-echo", "batch", "x")).await,
            Err(InvokeError::Unauthenticated(_))
        ));
        let out = invoke_echo(&cluster, Some(&rotated), "a-echo");
        assert_eq!(out.status.code(), Some(EXIT_UNAUTHENTICATED), "{out:?}");

        // Without the administrator's token, tenant commands are refused; a tenant's token
        // is not enough.
        let out = cluster
            .command()
            .args(["tenant", "list", "--admin-token"])
            .arg(cluster.token().await.expose_secret())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN), "{out:?}");
    });
}

#[test]
fn a_tenant_cannot_use_another_tenants_function_until_it_is_shared() {
    runtime().block_on(async {
        let cluster = cluster().await;
        let a = cluster.add_tenant("a").await;
        let b = cluster.add_tenant("b").await;
        let echo = example("echo").to_string_lossy().into_owned();
        let deploy = |token: &Token, extra: &[&str]| {
            let mut args = vec!["deploy", "--name", "b-fn", "--command", &echo];
            args.extend_from_slice(extra);
            cli(&cluster, Some(token), &args)
        };
        assert!(deploy(&b, &[]).status.success());

        let out = invoke_echo(&cluster, Some(&a), "b-fn");
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN), "{out:?}");
        assert!(stderr(&out).contains("another tenant"), "{}", stderr(&out));
        let out = deploy(&a, &[]);
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN), "{out:?}");
        let listed = cli(&cluster, Some(&a), &["functions"]);
        assert!(listed.status.success(), "{listed:?}");
        assert!(!String::from_utf8_lossy(&listed.stdout).contains("b-fn"));
        let out = cli(&cluster, Some(&a), &["remove", "b-fn"]);
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN), "{out:?}");
        // The administrator manages tenants and runs nothing.
        let admin = cluster.admin_token();
        let out = invoke_echo(&cluster, Some(&admin), "b-fn");
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN), "{out:?}");

        // Shared: a may invoke, list and replace it; it stays b's, and only b removes it.
        assert!(deploy(&b, &["--share-with", "a"]).status.success());
        let out = invoke_echo(&cluster, Some(&a), "b-fn");
        assert!(out.status.success(), "{out:?}");
        let listed = cli(&cluster, Some(&a), &["functions"]);
        let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
        assert!(
            listed.contains("b-fn") && listed.contains("owner b"),
            "{listed}"
        );
        assert!(deploy(&a, &["--share-with", "c"]).status.success());
        let client = cluster.client_as(0, Some(b.clone())).await;
        let ClientResponse::Functions(specs) =
            client.request(ClientRequest::ListFunctions).await.unwrap()
        else {
            panic!("no function list");
        };
        let spec = specs.iter().find(|s| s.name == "b-fn").unwrap();
        assert_eq!(spec.owner, "b");
        assert_eq!(
            spec.shared_with,
            ["a"],
            "a sharee cannot change the sharing"
        );
        assert_eq!(spec.version, 3);
        let out = cli(&cluster, Some(&a), &["remove", "b-fn"]);
        assert_eq!(out.status.code(), Some(EXIT_FORBIDDEN), "{out:?}");
        assert!(cli(&cluster, Some(&b), &["remove", "b-fn"])
            .status
            .success());
        let out = invoke_echo(&cluster, Some(&b), "b-fn");
        assert_eq!(out.status.code(), Some(3), "removed: unknown function");
    });
}

/// Opens a raw stream to `addr` as a peer with `identity` (none: a client), sends `open`, and
/// returns the shard's answer on it.
async fn raw_open(
    cluster: &Cluster,
    identity: Option<Role>,
    addr: std::net::SocketAddr,
    open: &StreamOpen,
) -> ClientResponse {
    let identity = identity.map(|role| cluster.identity(role).unwrap());
    let endpoint = cluster.client_endpoint(addr, identity.as_ref()).unwrap();
    let conn = endpoint
        .connect(addr, CLUSTER_SERVER_NAME)
        .unwrap()
        .await
        .expect("a CA-signed peer is let in");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    codec::write_message(&mut send, open).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), codec::read_message(&mut recv))
        .await
        .expect("an answer in time")
        .expect("a well-formed answer")
        .expect("an answer, not a closed stream");
    conn.close(0u32.into(), b"done");
    answer
}

#[test]
fn each_certificate_and_token_acts_only_in_its_role() {
    runtime().block_on(async {
        let cluster = cluster().await;
        let addr = cluster.shard_addrs[0];
        let hello = StreamOpen::DispatcherControl(DispatcherHello {
            machine: "intruder".into(),
            cores: 64,
            memory_bytes: 1 << 40,
            slots: 64,
        });
        // A client (no certificate, even with a valid tenant token) cannot register a machine,
        // and neither can a shard's certificate.
        for role in [None, Some(Role::Shard)] {
            let answer = raw_open(&cluster.cluster, role, addr, &hello).await;
            assert!(
                matches!(answer, ClientResponse::Denied(AccessError::Forbidden(ref m)) if m.contains("dispatcher certificate")),
                "{answer:?}"
            );
        }
        // A dispatcher's certificate cannot send a shard's notices.
        let notice = StreamOpen::PeerNotice(PeerNotice::CredentialsChanged);
        let answer = raw_open(&cluster.cluster, Some(Role::Dispatcher), addr, &notice).await;
        assert!(
            matches!(answer, ClientResponse::Denied(AccessError::Forbidden(ref m)) if m.contains("shard certificate")),
            "{answer:?}"
        );
        let status = cluster.client(0).await.request(ClientRequest::Status).await.unwrap();
        let ClientResponse::Status(status) = status else { panic!("no status") };
        assert_eq!(status.machines, ["m1"], "no intruder registered");

        // A directory issued for a dispatcher cannot run a shard: no certificate for it, no
        // CA key to make one.
        let issued = cluster.dir.path().join("issued-dispatcher");
        let out = cluster
            .command()
            .args(["cluster", "issue", "--role", "dispatcher", "--out"])
            .arg(&issued)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!issued.join("pki/ca.key").exists(), "the CA key never leaves");
        let out = common::tariff_command()
            .arg("--cluster")
            .arg(&issued)
            .args(["shard", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(cluster.dir.path().join("rogue-shard"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(stderr(&out).contains("no shard certificate"), "{}", stderr(&out));

        // ... but it does serve as a dispatcher on "another machine".
        let child = common::tariff_command()
            .arg("--cluster")
            .arg(&issued)
            .args(["dispatcher", "--shards", &addr.to_string(), "--memory", "1G"])
            .args(["--cores", "1", "--name", "m2", "--data-dir"])
            .arg(cluster.dir.path().join("dispatcher-m2"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _m2 = Proc {
            child,
            name: "m2".into(),
        };
        cluster.wait_for_machines(2).await;
    });
}

/// A client of shard 0 invoking `echo` `n` times at `class` in the background; the task
/// fails if any answer is wrong.
async fn steady_client(
    cluster: &TestCluster,
    n: usize,
    class: &'static str,
) -> tokio::task::JoinHandle<()> {
    let client = cluster.client(0).await;
    tokio::spawn(async move {
        for i in 0..n {
            let payload = format!("steady-{i}");
            let out = invoke(&client, request("echo", class, &payload))
                .await
                .expect("the steady client is undisturbed");
            assert_eq!(out.run.output, payload.as_bytes());
        }
    })
}

/// A connection to shard 0 as a tenant's client makes it (no certificate), for frames the
/// test writes itself on [`Client::connection`]; the client keeps its endpoint alive.
async fn token_holder_connection(cluster: &TestCluster) -> tariff_cluster::client::Client {
    cluster.client_as(0, None).await
}

#[test]
fn garbage_and_oversized_frames_from_a_token_holder_disturb_no_one() {
    runtime().block_on(async {
        let cluster = cluster().await;
        let steady = steady_client(&cluster, 40, "standard").await;
        let token = cluster.token().await;
        let holder = token_holder_connection(&cluster).await;
        let conn = holder.connection();
        let frames: [&[u8]; 3] = [
            // Length far past the frame limit: refused before anything is allocated.
            &[0xff, 0xff, 0xff, 0xf0, 1, 0, 0],
            // A valid length with bytes that decode to nothing.
            &[0, 0, 0, 6, 1, 0xff, 0xfe, 0xfd, 0xfc, 0xfb],
            // A wrong protocol version.
            &[0, 0, 0, 2, 77, 0],
        ];
        for bytes in frames {
            // After a valid session opening with a valid token.
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let open = StreamOpen::ClientSession {
                token: Some(token.clone()),
            };
            codec::write_message(&mut send, &open).await.unwrap();
            send.write_all(bytes).await.unwrap();
            let _ = send.finish();
            let answer: tariff_types::wire::SessionResponse =
                codec::read_message(&mut recv).await.unwrap().unwrap();
            assert!(
                matches!(answer.response, ClientResponse::ProtocolError(_)),
                "{answer:?}"
            );
        }
        // An invocation whose payload is over the shard's limit gets its own error.
        let big = tariff_types::wire::InvokeRequest {
            payload: vec![7; 2 << 20],
            ..request("echo", "batch", "")
        };
        let client = cluster.client(0).await;
        assert!(matches!(
            invoke(&client, big).await,
            Err(InvokeError::PayloadTooLarge { .. })
        ));
        steady.await.unwrap();
    });
}

#[test]
fn tokens_never_appear_in_logs_or_answers() {
    runtime().block_on(async {
        let cluster = cluster().await;
        let mut secrets = vec![cluster.token().await, cluster.admin_token()];
        let added = cluster
            .command()
            .args(["tenant", "add", "carol"])
            .output()
            .unwrap();
        let carol = printed_token(&added);
        secrets.push(carol.clone());
        let wrong = new_token().unwrap();
        secrets.push(wrong.clone());
        let mut outputs = vec![
            invoke_echo(&cluster, Some(&wrong), "echo"),
            invoke_echo(&cluster, Some(&carol), "echo"),
            cli(&cluster, Some(&carol), &["functions"]),
            cluster.command().args(["tenant", "list"]).output().unwrap(),
            cluster
                .command()
                .args(["tenant", "show", "carol"])
                .output()
                .unwrap(),
            cluster.command().args(["status"]).output().unwrap(),
        ];
        let rotated = cluster
            .command()
            .args(["tenant", "rotate-token", "carol"])
            .output()
            .unwrap();
        secrets.push(printed_token(&rotated));
        outputs.push(invoke_echo(&cluster, Some(&carol), "echo"));
        // Let the shard flush its log lines.
        let deadline = Instant::now() + START_TIMEOUT;
        while std::fs::metadata(cluster.shard_log(0)).map_or(0, |m| m.len()) == 0 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut logs = std::fs::read_to_string(cluster.shard_log(0)).unwrap();
        logs += &std::fs::read_to_string(cluster.dispatcher_log("m1")).unwrap();
        assert!(logs.contains("unauthenticated"), "the refusals are logged");
        for out in &outputs {
            logs += &String::from_utf8_lossy(&out.stdout);
            logs += &String::from_utf8_lossy(&out.stderr);
        }
        for secret in &secrets {
            let text = secret.expose_secret();
            assert!(text.len() > 20);
            assert!(!logs.contains(text), "a token leaked into logs or answers");
            // Nor a recognisable part of one.
            assert!(!logs.contains(&text[..24]), "part of a token leaked");
        }
    });
}

/// Mutated frames from a token holder, many of them, on a real shard: each stream gets an
/// error or an answer, the shard stays up, and a client beside them notices nothing
/// (bounded: 300 streams from a fixed seed).
#[test]
fn a_shard_survives_hundreds_of_mutated_frames() {
    use rand::{Rng, SeedableRng};
    runtime().block_on(async {
        let cluster = cluster().await;
        let token = cluster.token().await;
        let steady = steady_client(&cluster, 60, "critical").await;
        let holder = token_holder_connection(&cluster).await;
        let conn = holder.connection();
        let mut fuzzed = common::example_spec("echo");
        fuzzed.name = "fuzzed".into();
        let valid = [
            StreamOpen::Client {
                token: Some(token.clone()),
                request: ClientRequest::Invoke(request("echo", "batch", "fuzz")),
            },
            StreamOpen::Client {
                token: Some(token.clone()),
                request: ClientRequest::Deploy(fuzzed),
            },
            StreamOpen::ClientSession {
                token: Some(token.clone()),
            },
        ];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let mut answered = 0;
        for _ in 0..300 {
            let mut bytes = codec::encode(&valid[rng.gen_range(0..valid.len())]).unwrap();
            for _ in 0..rng.gen_range(1..6) {
                let at = rng.gen_range(0..bytes.len());
                match rng.gen_range(0..3) {
                    0 => bytes[at] = rng.gen(),
                    1 => bytes.insert(at, rng.gen()),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            let Ok((mut send, mut recv)) = conn.open_bi().await else {
                panic!("the shard closed a client's connection over a malformed stream");
            };
            let _ = send.write_all(&bytes).await;
            let _ = send.finish();
            let read =
                tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20)).await;
            if let Ok(Ok(reply)) = read {
                answered += usize::from(!reply.is_empty());
            }
        }
        steady.await.unwrap();
        assert!(
            answered > 0,
            "some mutated frames are answered with an error"
        );
        let status = cluster.client(0).await.request(ClientRequest::Status).await;
        assert!(
            matches!(status, Ok(ClientResponse::Status(_))),
            "{status:?}"
        );
    });
}
