//! The example binaries as Tariff runs them: payload on stdin, answer on stdout, exit status.
//! Having integration tests also makes `cargo test --workspace` build the binaries, which the
//! cross-process tests in the root package deploy.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs an example binary with `payload` on stdin.
fn run(binary: &str, payload: &str) -> Output {
    let mut child = Command::new(binary)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {binary}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(payload.as_bytes())
        .expect("writing the payload");
    child.wait_with_output().expect("waiting for the function")
}

#[test]
fn echo_copies_its_payload() {
    let out = run(env!("CARGO_BIN_EXE_tariff-echo"), "hello\nworld");
    assert!(out.status.success());
    assert_eq!(out.stdout, b"hello\nworld");
}

#[test]
fn fail_exits_3_with_its_payload_on_stderr() {
    let out = run(env!("CARGO_BIN_EXE_tariff-fail"), "broken");
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr, b"broken");
}

#[test]
fn numeric_functions_report_and_refuse_bad_payloads() {
    let spin = run(env!("CARGO_BIN_EXE_tariff-spin"), "5");
    assert!(spin.status.success());
    assert_eq!(String::from_utf8_lossy(&spin.stdout).trim(), "spun 5 ms");
    let sleep = run(env!("CARGO_BIN_EXE_tariff-sleep"), "1");
    assert_eq!(String::from_utf8_lossy(&sleep.stdout).trim(), "slept 1 ms");
    let alloc = run(env!("CARGO_BIN_EXE_tariff-alloc"), "2");
    assert_eq!(
        String::from_utf8_lossy(&alloc.stdout).trim(),
        "allocated 2 MB"
    );
    for binary in [
        env!("CARGO_BIN_EXE_tariff-spin"),
        env!("CARGO_BIN_EXE_tariff-sleep"),
        env!("CARGO_BIN_EXE_tariff-alloc"),
    ] {
        assert_eq!(run(binary, "lots").status.code(), Some(2), "{binary}");
    }
}

#[test]
fn counter_speaks_frames_not_text() {
    // Plain text is not a frame: the persistent example must not answer it as if it were.
    let out = run(env!("CARGO_BIN_EXE_tariff-counter"), "hello");
    assert!(!out.status.success());
}
