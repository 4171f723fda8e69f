//! The crate boundaries that keep policy pure, checked on the real dependency graph
//! (`cargo tree`), so a new dependency that breaks them fails CI instead of drifting in:
//!
//! * `tariff-types` (the vocabulary) and `tariff-policy` (every decision the simulator shares)
//!   pull in no async runtime, network stack, kernel interface or database;
//! * the simulator (`tariff-sim`) depends on the policy, never on the service crates;
//! * the product (`tariff`) never depends on its load harness (`tariff-bench`).

use std::process::Command;

/// Crates that mean I/O: an async runtime, QUIC, TLS, syscall wrappers, a database.
const IO_CRATES: [&str; 6] = ["tokio", "quinn", "rustls", "nix", "rusqlite", "etcd-client"];
/// Crates that reach the kernel at all, OS entropy included: the pure core takes seeds.
const SYSCALL_CRATES: [&str; 2] = ["libc", "getrandom"];
/// The service crates the simulator must not see.
const SERVICE_CRATES: [&str; 5] = [
    "tariff-scheduler",
    "tariff-dispatcher",
    "tariff-machine-sched",
    "tariff-cluster",
    "tariff-local",
];

/// Names of every crate in `package`'s normal (non-dev, non-build) dependency tree, with its
/// default features.
fn dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "--edges", "normal", "--prefix", "none"])
        .args(["--format", "{p}", "--package", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

fn assert_free_of(package: &str, forbidden: &[&str]) {
    let deps = dependencies(package);
    assert!(deps.iter().any(|d| d == package), "{package}: {deps:?}");
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "{package} depends on {found:?}; see docs/architecture.md for what each crate may use"
    );
}

#[test]
fn vocabulary_and_policy_do_no_io() {
    for package in ["tariff-types", "tariff-policy"] {
        assert_free_of(package, &IO_CRATES);
        assert_free_of(package, &SYSCALL_CRATES);
    }
}

#[test]
fn simulator_sees_only_the_policy() {
    assert_free_of("tariff-sim", &IO_CRATES);
    assert_free_of("tariff-sim", &SERVICE_CRATES);
    assert!(dependencies("tariff-sim")
        .iter()
        .any(|d| d == "tariff-policy"));
}

#[test]
fn product_does_not_link_the_harness() {
    // `toml` is no longer a sign of the harness's workload files: the gateway's route table
    // is TOML too (docs/gateway.md).
    assert_free_of("tariff", &["tariff-bench", "criterion"]);
    assert_free_of("tariff-local", &["tariff-bench"]);
}
