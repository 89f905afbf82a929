//! `ate`'s client verbs as a user meets them: addresses written as URLs, and errors that read
//! like user errors (message and cause on one line, no backtrace unless `--debug`).

use std::process::{Command, Output};

fn ate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ate"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .env("ATE_TOKEN", "not-needed-to-connect")
        .output()
        .unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_unreachable_api_is_one_line_with_what_to_do_and_no_backtrace() {
    let api = format!("http://127.0.0.1:{}", closed_port());
    let out = ate(&["--api", &api, "get", "actors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: connecting to ate serve's API at 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("is `ate serve` running?") && stderr.contains("refused"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "RUST_BACKTRACE=1 must not add frames: {stderr}");

    let out = ate(&["--debug", "--api", &api, "get", "actors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Caused by") && stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn https_api_addresses_are_refused_with_the_reason() {
    let out = ate(&["--api", "https://127.0.0.1:7070", "get", "actors"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TLS is not supported") && stderr.contains("http://127.0.0.1:7070"), "{stderr}");
}
