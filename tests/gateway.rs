//! The HTTP front door with real parts: a real `tariff gateway` process in front of real
//! shard and dispatcher processes, spoken to by curl (HTTP/1.1 and HTTP/2) and by raw TCP for
//! the slow client (issue 13, "HTTP front door"). Needs `curl` built with HTTP/2 (Debian's
//! `curl` is).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{example, runtime, Proc, TestCluster, START_TIMEOUT};
use tariff_types::function::Runtime;
use tariff_types::tenant::Token;
use tariff_types::FunctionSpec;

/// Longest any one HTTP request of these tests may take (curl's `--max-time`).
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

/// An exec function in `/bin/sh` that answers the envelope it was given as its body: the
/// stdin/stdout form of docs/gateway.md, and the envelope round trip's mirror.
const MIRROR_SCRIPT: &str =
    "printf 'Status: 200\\r\\nContent-Type: application/octet-stream\\r\\n\\r\\n'; cat";
/// An exec function that reads the request line and answers with a status of the test's
/// choosing (from the path) and a repeated header.
const SCRIPT_SCRIPT: &str = "read -r method target version; \
    printf 'Status: 201\\r\\nX-Method: %s\\r\\nSet-Cookie: a=1\\r\\nSet-Cookie: b=2\\r\\n\\r\\nyou asked for %s' \"$method\" \"$target\"";
/// An exec function slower than the route that calls it allows.
const SLOW_SCRIPT: &str = "sleep 3; printf 'Status: 200\\r\\n\\r\\nslow'";

fn shell(name: &str, script: &str) -> FunctionSpec {
    spec(
        name,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
        Runtime::Exec,
    )
}

fn spec(name: &str, command: Vec<String>, runtime: Runtime) -> FunctionSpec {
    FunctionSpec {
        name: name.into(),
        command,
        env: vec![],
        version: 0,
        runtime,
        ..Default::default()
    }
}

fn web(name: &str, role: &str, persistent: bool) -> FunctionSpec {
    let runtime = if persistent {
        Runtime::Persistent {
            keep_alive_ms: 60_000,
        }
    } else {
        Runtime::Exec
    };
    spec(
        name,
        vec![example("web").to_string_lossy().into_owned(), role.into()],
        runtime,
    )
}

/// The route table of these tests; every function belongs to tenant `test`.
const ROUTES: &str = r#"
[[route]]
method = "GET"
path = "/"
function = "home"
class = "critical"
tenant = "test"
public = true

[[route]]
method = "GET"
path = "/profile/{id}"
function = "profile"
class = "high"

[[route]]
method = "*"
path = "/mirror/{*rest}"
function = "mirror"
class = "standard"
body_limit = 4096

[[route]]
method = "PUT"
path = "/upload"
function = "mirror"
class = "batch"
tenant = "test"
public = true
timeout = "1s"

[[route]]
method = "POST"
path = "/images"
function = "resize"
class = "batch"

[[route]]
method = "GET"
path = "/script/{x}"
function = "script"
class = "high"

[[route]]
method = "GET"
path = "/slow"
function = "slow"
class = "standard"
timeout = "500ms"

[[route]]
method = "GET"
path = "/fail"
function = "fail"
class = "standard"

[[route]]
method = "GET"
path = "/not-http"
function = "echo"
class = "standard"

[[route]]
method = "GET"
path = "/missing"
function = "never-deployed"
class = "standard"
"#;

/// A running gateway process and where it listens.
struct GatewayProc {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

impl GatewayProc {
    /// Starts `tariff gateway` on 127.0.0.1:0 with `routes`, logging at debug to a file in
    /// the cluster's temp dir, and reads the address from its first line.
    fn start(cluster: &TestCluster, routes: &Path, extra: &[&str]) -> Self {
        let log = cluster.dir.path().join("gateway.log");
        let mut child = cluster
            .command()
            .env("RUST_LOG", "debug")
            .args(["gateway", "--listen", "127.0.0.1:0", "--routes"])
            .arg(routes)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("gateway log"))
            .spawn()
            .expect("spawning tariff gateway");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(START_TIMEOUT)
            .expect("the gateway prints its address");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in `{line}`"));
        Self {
            proc: Proc {
                child,
                name: "gateway".into(),
            },
            addr,
            log,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

/// One HTTP response as curl got it.
#[derive(Debug)]
struct Http {
    version: String,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Http {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl with `args` (plus `-i`, no `Expect: 100-continue`, bounded time) and parses
/// its answer.
fn curl(args: &[&str]) -> Http {
    let output = Command::new("curl")
        .args(["-sS", "-i", "-H", "Expect:", "--max-time"])
        .arg(REQUEST_LIMIT.as_secs().to_string())
        .args(args)
        .output()
        .expect("running curl (install Debian's `curl`)");
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let raw = output.stdout;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default().to_owned();
    let mut parts = status_line.split(' ');
    let version = parts.next().unwrap_or_default().to_owned();
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line `{status_line}`"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Http {
        version,
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn bearer(token: &Token) -> String {
    format!("Authorization: Bearer {}", token.expose_secret())
}

/// One shard (with `shard_args`), one dispatcher, the test functions deployed as tenant
/// `test`, and the route table written to a file.
async fn site(shard_args: &[&str]) -> (TestCluster, PathBuf) {
    let mut cluster = TestCluster::new();
    cluster.start_shard(shard_args);
    cluster.start_dispatcher("m1", 1, &[]);
    cluster.wait_for_machines(1).await;
    for function in [
        web("home", "home", true),
        web("profile", "profile", true),
        web("resize", "resize", false),
        shell("mirror", MIRROR_SCRIPT),
        shell("script", SCRIPT_SCRIPT),
        shell("slow", SLOW_SCRIPT),
        spec(
            "fail",
            vec![example("fail").to_string_lossy().into_owned()],
            Runtime::Exec,
        ),
        spec(
            "echo",
            vec![example("echo").to_string_lossy().into_owned()],
            Runtime::Exec,
        ),
    ] {
        cluster.deploy(function).await;
    }
    let routes = cluster.dir.path().join("routes.toml");
    std::fs::write(&routes, ROUTES).unwrap();
    (cluster, routes)
}

/// A 4×2 PPM whose left half is black and right half white.
fn ppm() -> Vec<u8> {
    let mut image = b"P6\n4 2\n255\n".to_vec();
    for _row in 0..2 {
        image.extend_from_slice(&[0; 6]);
        image.extend_from_slice(&[255; 6]);
    }
    image
}

#[test]
fn routes_envelope_and_the_status_contract() {
    runtime().block_on(async {
        let (cluster, routes) = site(&[]).await;
        let token = cluster.token().await;
        let other = cluster.add_tenant("other").await;
        let gateway = GatewayProc::start(&cluster, &routes, &[]);
        let auth = bearer(&token);

        // Routing to the example web app: a public page, a page with a parameter, a resize.
        let home = curl(&[&gateway.url("/")]);
        assert_eq!(home.status, 200, "{home:?}");
        assert!(home.text().contains("<h1>Home</h1>"), "{}", home.text());
        assert!(home.header("tariff-invocation").is_some());
        let timing = home.header("server-timing").unwrap_or_default();
        assert!(
            timing.starts_with("gateway;dur=") && timing.contains(", invoke;dur="),
            "{timing}"
        );
        assert_eq!(
            home.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        let profile = curl(&["-H", &auth, &gateway.url("/profile/42")]);
        assert_eq!(profile.status, 200, "{profile:?}");
        assert!(profile.text().contains("Profile 42"), "{}", profile.text());
        let image_file = cluster.dir.path().join("image.ppm");
        std::fs::write(&image_file, ppm()).unwrap();
        let resized = curl(&[
            "-H",
            &auth,
            "--data-binary",
            &format!("@{}", image_file.display()),
            &gateway.url("/images?passes=1"),
        ]);
        assert_eq!(resized.status, 200, "{resized:?}");
        assert_eq!(resized.header("x-image-size"), Some("2x1"));
        assert_eq!(resized.body, b"P6\n2 1\n255\n\0\0\0\xff\xff\xff");

        // The envelope round trip: the mirror answers the payload it got as its body.
        let body = "line one\r\n\r\nline two \u{1F600}";
        let mirrored = curl(&[
            "-X",
            "PUT",
            "-H",
            &auth,
            "-H",
            "X-Custom: kept",
            "-H",
            "Tariff-Param-Rest: forged",
            "--data-binary",
            body,
            &gateway.url("/mirror/a/b?q=1&r=two"),
        ]);
        assert_eq!(mirrored.status, 200, "{mirrored:?}");
        let envelope = tariff_function::http::Request::decode(&mirrored.body).unwrap();
        assert_eq!(envelope.method, "PUT");
        assert_eq!(envelope.target, "/mirror/a/b?q=1&r=two");
        assert_eq!(envelope.body, body.as_bytes());
        assert_eq!(envelope.header("x-custom"), Some("kept"));
        assert_eq!(envelope.header("tariff-param-rest"), Some("a/b"));
        assert_eq!(envelope.header("x-forwarded-for"), Some("127.0.0.1"));
        assert!(envelope.header("host").is_some());
        assert!(envelope.header("authorization").is_none(), "{envelope:?}");
        assert!(!String::from_utf8_lossy(&mirrored.body).contains(token.expose_secret()));

        // The stdin/stdout form in a shell script: status, repeated headers, body.
        let script = curl(&["-H", &auth, &gateway.url("/script/x?y")]);
        assert_eq!(script.status, 201, "{script:?}");
        assert_eq!(script.header("x-method"), Some("GET"));
        let cookies = script
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"));
        assert_eq!(cookies.count(), 2);
        assert_eq!(script.text(), "you asked for /script/x?y");

        // HTTP/2 by prior knowledge on the same port.
        let h2 = curl(&[
            "--http2-prior-knowledge",
            "-H",
            &auth,
            &gateway.url("/profile/7"),
        ]);
        assert_eq!((h2.version.as_str(), h2.status), ("HTTP/2", 200), "{h2:?}");
        assert!(h2.text().contains("Profile 7"));
        let h2_mirror = curl(&[
            "--http2-prior-knowledge",
            "-H",
            &auth,
            &gateway.url("/mirror/"),
        ]);
        let envelope = tariff_function::http::Request::decode(&h2_mirror.body).unwrap();
        assert!(envelope.header("host").is_some(), "{envelope:?}");

        // The contract, row by row.
        let status = |args: &[&str]| {
            let reply = curl(args);
            (
                reply.status,
                reply.header("tariff-error").map(str::to_owned),
                reply,
            )
        };
        let (code, kind, reply) = status(&[&gateway.url("/profile/1")]);
        assert_eq!(
            (code, kind.as_deref()),
            (401, Some("unauthenticated")),
            "{reply:?}"
        );
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        let wrong = Token::new(format!("tariff_{}", "0".repeat(64)));
        let (code, kind, _) = status(&["-H", &bearer(&wrong), &gateway.url("/profile/1")]);
        assert_eq!((code, kind.as_deref()), (401, Some("unauthenticated")));
        let (code, kind, _) = status(&["-H", &bearer(&other), &gateway.url("/profile/1")]);
        assert_eq!((code, kind.as_deref()), (403, Some("forbidden")));
        let (code, kind, _) = status(&["-H", &auth, &gateway.url("/nowhere")]);
        assert_eq!((code, kind.as_deref()), (404, Some("no_route")));
        let (code, _, reply) = status(&["-X", "DELETE", "-H", &auth, &gateway.url("/images")]);
        assert_eq!(code, 405);
        assert_eq!(reply.header("allow"), Some("POST"));
        let big = "x".repeat(5000);
        let (code, kind, _) =
            status(&["-H", &auth, "--data-binary", &big, &gateway.url("/mirror/")]);
        assert_eq!((code, kind.as_deref()), (413, Some("body_too_large")));
        let (code, kind, reply) = status(&["-H", &auth, &gateway.url("/fail")]);
        assert_eq!(
            (code, kind.as_deref()),
            (502, Some("function_failed")),
            "{reply:?}"
        );
        let (code, kind, _) = status(&["-H", &auth, &gateway.url("/not-http")]);
        assert_eq!((code, kind.as_deref()), (502, Some("bad_answer")));
        let (code, kind, _) = status(&["-H", &auth, &gateway.url("/missing")]);
        assert_eq!((code, kind.as_deref()), (500, Some("unknown_function")));
        let started = Instant::now();
        let (code, kind, reply) = status(&["-H", &auth, &gateway.url("/slow")]);
        assert_eq!(
            (code, kind.as_deref()),
            (504, Some("timed_out")),
            "{reply:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered at the route's timeout"
        );

        // Asynchronous: 202 with a Location, polled until the page arrives, then gone.
        let accepted = curl(&[
            "-H",
            &auth,
            "-H",
            "Prefer: respond-async",
            &gateway.url("/profile/9"),
        ]);
        assert_eq!(accepted.status, 202, "{accepted:?}");
        let location = accepted.header("location").expect("a Location").to_owned();
        assert!(location.starts_with("/_tariff/invocations/"), "{location}");
        let deadline = Instant::now() + REQUEST_LIMIT;
        let done = loop {
            let polled = curl(&["-H", &auth, &gateway.url(&location)]);
            if polled.status != 202 {
                break polled;
            }
            assert!(Instant::now() < deadline, "the invocation never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(done.status, 200, "{done:?}");
        assert!(done.text().contains("Profile 9"));
        assert_eq!(curl(&["-H", &auth, &gateway.url(&location)]).status, 404);
        let accepted = curl(&[
            "-H",
            &auth,
            "-H",
            "Prefer: respond-async",
            &gateway.url("/profile/9"),
        ]);
        let location = accepted.header("location").expect("a Location").to_owned();
        let mut polled = curl(&["-H", &bearer(&other), &gateway.url(&location)]);
        for _ in 0..100 {
            if polled.status != 202 {
                break;
            }
            polled = curl(&["-H", &bearer(&other), &gateway.url(&location)]);
        }
        assert_eq!(polled.status, 404, "another tenant cannot read the result");

        // Reload on SIGHUP: a broken table keeps the old one; a good one replaces it.
        std::fs::write(&routes, "[[route]]\nmethod = \"GET\"\n").unwrap();
        hangup(&gateway);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            curl(&[&gateway.url("/")]).status,
            200,
            "the old table stays"
        );
        let renamed = ROUTES.replace("path = \"/\"\n", "path = \"/welcome\"\n");
        std::fs::write(&routes, renamed).unwrap();
        hangup(&gateway);
        let deadline = Instant::now() + REQUEST_LIMIT;
        while curl(&[&gateway.url("/welcome")]).status != 200 {
            assert!(Instant::now() < deadline, "the new table was never used");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(curl(&[&gateway.url("/")]).status, 404);

        // No token in the gateway's debug log.
        let log = std::fs::read_to_string(&gateway.log).unwrap();
        for secret in [&token, &other, &wrong] {
            assert!(
                !log.contains(&secret.expose_secret()[7..31]),
                "a token is in the log"
            );
        }
        drop(gateway);
    });
}

fn hangup(gateway: &GatewayProc) {
    // SAFETY: kill with a valid signal on our own child's pid has no memory effects.
    unsafe {
        libc::kill(gateway.proc.child.id() as i32, libc::SIGHUP);
    }
}

/// Slow calls started to fill the machine and the queue in the shedding test.
const SLOW_CALLS: usize = 5;
/// Further calls the shedding test makes until one is shed.
const PROBES: usize = 10;
/// How long the shedding test waits for the slow calls beyond the machine and the queue to
/// be shed before it probes (they are answered at once when they reach the shard).
const SLOW_CALLS_SHED_WITHIN: Duration = Duration::from_secs(2);

#[test]
fn shedding_is_503_with_retry_after() {
    runtime().block_on(async {
        // One queued invocation at most: a slow call runs, one waits, the next is shed.
        let (cluster, routes) = site(&["--max-queued", "1"]).await;
        let token = cluster.token().await;
        // The slow function behind a second route that waits for it, in the table the
        // gateway starts with: a reload could still be under way when the calls go out on a
        // busy machine, and they would all be 404s (seen once in CI).
        let slow_routes = format!(
            "{ROUTES}\n[[route]]\nmethod = \"GET\"\npath = \"/slow-long\"\nfunction = \"slow\"\n\
             class = \"standard\"\ntimeout = \"20s\"\n"
        );
        std::fs::write(&routes, slow_routes).unwrap();
        let gateway = GatewayProc::start(&cluster, &routes, &[]);
        let auth = bearer(&token);
        // More slow calls than the one machine runs and the queue holds.
        let mut running = Vec::new();
        for _ in 0..SLOW_CALLS {
            let mut child = Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "-H", &auth, "--max-time", "20"])
                .arg(gateway.url("/slow-long"))
                .spawn()
                .unwrap();
            running.push(std::thread::spawn(move || child.wait()));
        }
        // Wait until the shard has shed the slow calls beyond the one running and the one
        // queued (their curls end at once): a probe sent earlier could take the queue's one
        // place itself, have the slow calls shed instead, and then find the queue empty at
        // every try (504 after 500 ms, seen in CI on a busy machine).
        let deadline = Instant::now() + SLOW_CALLS_SHED_WITHIN;
        while running.iter().filter(|c| c.is_finished()).count() < SLOW_CALLS - 2
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // While they hold the machine (3 s each), a further call is shed. Probed a few times
        // on the route that gives up after 500 ms (504 when queued rather than shed), since
        // the calls above reach the shard in their own time on a busy machine.
        let mut shed = curl(&["-H", &auth, &gateway.url("/slow")]);
        for _ in 0..PROBES {
            if shed.status == 503 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            shed = curl(&["-H", &auth, &gateway.url("/slow")]);
        }
        assert_eq!(shed.status, 503, "{shed:?}");
        assert_eq!(shed.header("tariff-error"), Some("overloaded"));
        let retry_after: u64 = shed
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in whole seconds");
        assert!(retry_after >= 1, "{shed:?}");
        for handle in running {
            let _ = handle.join();
        }
    });
}

/// Calls the over-budget test makes before its tenant's first spend is on the books.
const BUDGET_PROBES: usize = 20;

#[test]
fn over_budget_is_429_with_retry_after() {
    runtime().block_on(async {
        let (cluster, routes) = site(&[]).await;
        // A tenant whose budget its first call spends, on the profile page shared with it.
        let mut profile = web("profile", "profile", true);
        profile.shared_with = vec!["thrifty".into()];
        cluster.deploy(profile).await;
        let thrifty = cluster.add_tenant_with_budget("thrifty", Some(1e-12)).await;
        let gateway = GatewayProc::start(&cluster, &routes, &[]);
        let auth = bearer(&thrifty);
        // `/profile/{id}` is not public, so the caller's token decides who pays.
        let mut answer = curl(&["-H", &auth, &gateway.url("/profile/7")]);
        let mut calls = 1;
        while answer.status != 429 && calls < BUDGET_PROBES {
            assert_eq!(answer.status, 200, "before the budget runs out: {answer:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            answer = curl(&["-H", &auth, &gateway.url("/profile/7")]);
            calls += 1;
        }
        assert_eq!(answer.status, 429, "after {calls} calls: {answer:?}");
        assert_eq!(answer.header("tariff-error"), Some("over_budget"));
        let retry_after: u64 = answer
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in whole seconds");
        assert!(retry_after >= 1, "{answer:?}");
        assert!(
            answer.text().contains("budget"),
            "the body says why: {answer:?}"
        );
        // Another tenant is still served.
        let token = cluster.token().await;
        let other = curl(&["-H", &bearer(&token), &gateway.url("/profile/7")]);
        assert_eq!(other.status, 200, "{other:?}");
    });
}

/// Concurrent requests the rate-limit test sends each caller: more than the route's burst.
const RATE_CALLS: usize = 6;

/// Sends `RATE_CALLS` requests at once (curl processes started together, so they arrive well
/// within the limit's one-second interval however busy the machine) and returns their answers.
fn at_once(url: &str, auth: Option<&str>) -> Vec<Http> {
    let calls: Vec<_> = (0..RATE_CALLS)
        .map(|_| {
            let url = url.to_owned();
            let auth = auth.map(str::to_owned);
            std::thread::spawn(move || match &auth {
                Some(auth) => curl(&["-H", auth, &url]),
                None => curl(&[&url]),
            })
        })
        .collect();
    calls.into_iter().map(|c| c.join().unwrap()).collect()
}

#[test]
fn a_route_over_its_rate_limit_is_429_with_retry_after() {
    runtime().block_on(async {
        let (cluster, routes) = site(&[]).await;
        let token = cluster.token().await;
        let other = cluster.add_tenant("other").await;
        let mut mirror = shell("mirror", MIRROR_SCRIPT);
        mirror.shared_with = vec!["other".into()];
        cluster.deploy(mirror).await;
        // Two limited routes: one counted per bearer token, one public (per client address).
        let limited = format!(
            "{ROUTES}\n[[route]]\nmethod = \"GET\"\npath = \"/limited\"\nfunction = \"mirror\"\n\
             class = \"high\"\nrate = {{ per_second = 1, burst = 2 }}\n\
             \n[[route]]\nmethod = \"GET\"\npath = \"/limited-public\"\nfunction = \"mirror\"\n\
             class = \"high\"\ntenant = \"test\"\npublic = true\nrate = {{ per_second = 1 }}\n"
        );
        std::fs::write(&routes, limited).unwrap();
        let gateway = GatewayProc::start(&cluster, &routes, &[]);

        let answers = at_once(&gateway.url("/limited"), Some(&bearer(&token)));
        let ok = answers.iter().filter(|a| a.status == 200).count();
        let refused: Vec<&Http> = answers.iter().filter(|a| a.status == 429).collect();
        assert_eq!(
            ok + refused.len(),
            RATE_CALLS,
            "only 200s and 429s: {answers:?}"
        );
        assert!(
            (1..=3).contains(&ok),
            "a burst of 2 (3 if a second passed): {answers:?}"
        );
        for answer in &refused {
            assert_eq!(answer.header("tariff-error"), Some("rate_limited"));
            let retry_after: u64 = answer
                .header("retry-after")
                .and_then(|v| v.parse().ok())
                .expect("Retry-After in whole seconds");
            assert!(retry_after >= 1, "{answer:?}");
            assert!(answer.text().contains("per second"), "says why: {answer:?}");
        }
        // Another caller's token has its own allowance on the same route.
        let theirs = curl(&["-H", &bearer(&other), &gateway.url("/limited")]);
        assert_eq!(theirs.status, 200, "{theirs:?}");
        // A public route counts the client's address: one at once, the rest refused.
        let public = at_once(&gateway.url("/limited-public"), None);
        let ok = public.iter().filter(|a| a.status == 200).count();
        assert!((1..=2).contains(&ok), "{public:?}");
        assert!(
            public.iter().all(|a| a.status == 200 || a.status == 429),
            "{public:?}"
        );
        // The limit recovers: after its interval the caller is served again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let again = curl(&["-H", &bearer(&token), &gateway.url("/limited")]);
        assert_eq!(again.status, 200, "{again:?}");
    });
}

#[test]
fn a_slow_client_cannot_hold_the_gateway() {
    runtime().block_on(async {
        let (cluster, routes) = site(&[]).await;
        let gateway = GatewayProc::start(&cluster, &routes, &["--header-timeout", "1s"]);
        // Slow clients: half a request head each, then nothing.
        let mut slow: Vec<TcpStream> = (0..20)
            .map(|_| {
                let mut stream = TcpStream::connect(gateway.addr).unwrap();
                stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
                stream
            })
            .collect();
        // A slow body: the head is complete, the body never arrives.
        let mut body = TcpStream::connect(gateway.addr).unwrap();
        body.write_all(b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .unwrap();
        // Others are served meanwhile.
        let started = Instant::now();
        let home = curl(&[&gateway.url("/")]);
        assert_eq!(home.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "served while slow clients wait"
        );
        // The trickling heads are cut off at the header timeout (hyper closes, maybe with 408).
        for stream in &mut slow {
            stream.set_read_timeout(Some(REQUEST_LIMIT)).unwrap();
            let mut answer = Vec::new();
            let _ = stream.read_to_end(&mut answer);
            let text = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || text.starts_with("HTTP/1.1 408"),
                "{text}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cut off at the header timeout"
        );
        // The body that never arrives is refused at the route's timeout (1 s).
        body.set_read_timeout(Some(REQUEST_LIMIT)).unwrap();
        let mut answer = [0u8; 12];
        body.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"HTTP/1.1 408");
    });
}

#[test]
fn tariff_local_serves_the_example_web_app() {
    let cluster = TestCluster::new();
    let routes = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web/routes.toml");
    let log = std::fs::File::create(cluster.dir.path().join("local.log")).unwrap();
    let child = cluster
        .command()
        .args([
            "local",
            "--shards",
            "1",
            "--dispatchers",
            "1",
            "--no-rt",
            "--gateway",
        ])
        .arg(&routes)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .expect("spawning tariff local");
    let mut local = Proc {
        child,
        name: "local".into(),
    };
    let stdout = local.child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut gateway = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.trim().strip_prefix("gateway:") {
                gateway = rest
                    .split_whitespace()
                    .next()
                    .and_then(|url| url.strip_prefix("http://"))
                    .and_then(|addr| addr.parse::<SocketAddr>().ok());
            }
            if line.starts_with("running") {
                let _ = tx.send(gateway);
            }
        }
    });
    let addr = rx
        .recv_timeout(START_TIMEOUT)
        .expect("tariff local did not come up in time")
        .expect("tariff local prints the gateway's address");
    let url = |path: &str| format!("http://{addr}{path}");
    let home = curl(&[&url("/")]);
    assert_eq!(home.status, 200, "{home:?}");
    assert!(home.text().contains("critical"));
    let profile = curl(&["--http2-prior-knowledge", &url("/profile/5")]);
    assert_eq!(profile.status, 200, "{profile:?}");
    assert!(profile.text().contains("Profile 5"));
    assert_eq!(curl(&["--data-binary", "x", &url("/images")]).status, 401);
    let token = tariff_cluster::tenancy::read_token_file(&tariff_cluster::tenancy::token_file(
        &cluster.cluster_dir(),
        "default",
    ))
    .unwrap()
    .expect("tariff local leaves the default tenant's token");
    let image = cluster.dir.path().join("image.ppm");
    std::fs::write(&image, ppm()).unwrap();
    let resized = curl(&[
        "-H",
        &bearer(&token),
        "--data-binary",
        &format!("@{}", image.display()),
        &url("/images"),
    ]);
    assert_eq!(resized.status, 200, "{resized:?}");
    assert_eq!(resized.header("x-image-size"), Some("2x1"));
    local.stop();
    assert!(
        local.child.try_wait().unwrap().is_some_and(|s| s.success()),
        "tariff local with a gateway exits cleanly on SIGTERM"
    );
}
