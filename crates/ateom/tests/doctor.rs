//! `ateom doctor` against the real facts of this machine, `ateom serve`'s start-up summary and
//! refusals, and how the CLI prints a user's error.

mod common;
#[path = "../../ateom-store/tests/common/s3server.rs"]
#[allow(dead_code)]
mod s3server;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ateom(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ateom"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("ATEOM_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("running ateom")
}

/// `ateom doctor --json ARGS`: (exit code, report).
fn doctor_json(args: &[&str], env: &[(&str, String)]) -> (i32, Value) {
    let mut all = vec!["doctor", "--json"];
    all.extend_from_slice(args);
    let out = ateom(&all, env);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn the_doctor_reports_the_real_facts_of_this_host() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (code, r) = doctor_json(&["--state-dir", state.to_str().unwrap()], &[]);

    let names: Vec<&str> =
        r["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for want in [
        "runsc",
        "kvm",
        "qemu",
        "firecracker",
        "jailer",
        "netns",
        "cgroups",
        "userfaultfd",
        "disk",
        "mkfs.ext4",
        "guest-kernel",
        "guest-init",
        "test-guest",
    ] {
        assert!(names.contains(&want), "no {want} check in {names:?}");
    }
    for c in r["checks"].as_array().unwrap() {
        assert!(["ok", "degraded", "missing"].contains(&c["status"].as_str().unwrap()), "{c}");
        assert!(!c["detail"].as_str().unwrap().is_empty(), "{c}");
    }
    // The exit status is the verdict on the default backend (gvisor).
    assert_eq!(code == 0, r["ok"] == true, "{r}");
    assert_eq!(r["backend"], "gvisor");
    assert_eq!(r["ok"], r["backends"]["gvisor"]["runs"], "{r}");

    // runsc: what `runsc --version` says.
    let runsc = check(&r, "runsc");
    if Path::new("/usr/bin/runsc").exists() {
        let out = Command::new("/usr/bin/runsc").arg("--version").output().unwrap();
        let version = ateom_gvisor::runsc::parse_version(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert_eq!(runsc["status"], "ok", "{runsc}");
        let detail = runsc["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("runsc {version} at /usr/bin/runsc")), "{detail}");
        assert!(detail.contains("using ptrace"), "{detail}");
    } else {
        assert_eq!(runsc["status"], "missing", "{runsc}");
        assert_eq!(runsc["blocks"], serde_json::json!(["gvisor"]));
    }

    // /dev/kvm: hardware, kvm-pvm or absent, exactly as the machine has it.
    let kvm = check(&r, "kvm");
    let detail = kvm["detail"].as_str().unwrap();
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    if !dev {
        assert_eq!(kvm["status"], "missing", "{kvm}");
        assert_eq!(r["backends"]["firecracker"]["runs"], false);
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(kvm["status"], "degraded", "{kvm}");
        assert!(detail.contains("kvm-pvm") && detail.contains("stock Linux guests cannot boot"), "{detail}");
    } else {
        assert_eq!(kvm["status"], "ok", "{kvm}");
        assert!(detail.contains("hardware virtualisation"), "{detail}");
    }

    // QEMU: its version and, without hardware virtualisation, TCG.
    if let Ok(out) = Command::new("qemu-system-x86_64").arg("--version").output() {
        let version = ateom_qemu::parse_version(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let qemu = check(&r, "qemu");
        let detail = qemu["detail"].as_str().unwrap();
        assert!(detail.contains(&format!("QEMU {version} at ")), "{detail}");
        assert!(detail.contains("accelerators tcg"), "{detail}");
        let major: u32 = version.split('.').next().unwrap().parse().unwrap();
        if major < 9 {
            assert_eq!(qemu["status"], "ok", "{qemu}");
            if !Path::new("/sys/module/kvm_amd").exists() && Path::new("/sys/module/kvm_pvm").exists() {
                assert!(detail.contains("TCG"), "{detail}");
            }
        } else {
            assert_eq!(qemu["status"], "missing", "confined QEMU >= 9.0 cannot start: {qemu}");
        }
    }

    // Network namespaces: created and deleted for real.
    let netns = check(&r, "netns");
    if is_root() {
        assert_eq!(netns["status"], "ok", "{netns}");
        let name = netns["detail"].as_str().unwrap().rsplit(' ').next().unwrap().to_owned();
        assert!(name.starts_with("ateom-doctor-"), "{netns}");
        assert!(!Path::new("/run/netns").join(&name).exists(), "{name} was left behind");
    } else {
        assert_eq!(netns["status"], "missing", "{netns}");
    }

    // Disk: measured at the nearest existing parent of the state directory.
    let disk = check(&r, "disk");
    assert!(disk["detail"].as_str().unwrap().contains(&format!("at {}", tmp.path().display())), "{disk}");
    assert!(!state.exists(), "the doctor created nothing");

    // The human report: one line per check, then one per backend.
    let out = ateom(&["doctor", "--state-dir", state.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let checks: Vec<&str> = text.split("\n\n").next().unwrap().lines().collect();
    assert_eq!(checks.len(), names.len(), "{text}");
    for (line, name) in checks.iter().zip(&names) {
        assert_eq!(line.split_whitespace().nth(1), Some(*name), "{text}");
    }
    assert!(text.contains("gvisor       can") && text.contains("firecracker  can"), "{text}");
}

#[test]
fn firecracker_and_its_jailer_are_told_apart() {
    let (_, r) = doctor_json(&["--firecracker", "/nonexistent/firecracker", "--backend", "firecracker"], &[]);
    assert_eq!(check(&r, "firecracker")["status"], "missing");
    assert_eq!(r["ok"], false);
    assert_eq!(r["backends"]["firecracker"]["runs"], false);
    // Firecracker binaries installed on this machine, if any (it is in no package registry).
    for (bin, jailed) in
        [("/opt/firecracker-static/firecracker", true), ("/opt/firecracker/firecracker", false)]
    {
        if !Path::new(bin).exists() {
            eprintln!("SKIPPED firecracker_and_its_jailer_are_told_apart for {bin}: not on this machine");
            continue;
        }
        let (_, r) = doctor_json(&["--firecracker", bin, "--backend", "firecracker"], &[]);
        let fc = check(&r, "firecracker");
        assert_eq!(fc["status"], "ok", "{fc}");
        let jailer = check(&r, "jailer");
        let has_jailer = Path::new(bin).with_file_name("jailer").exists();
        match (has_jailer, jailed) {
            (true, true) => assert_eq!(jailer["status"], "ok", "{jailer}"),
            (true, false) => {
                assert_eq!(jailer["status"], "degraded", "{jailer}");
                assert!(jailer["detail"].as_str().unwrap().contains("dynamically linked"), "{jailer}");
            }
            (false, _) => assert_eq!(jailer["status"], "degraded", "{jailer}"),
        }
        let runs = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() && is_root();
        assert_eq!(r["backends"]["firecracker"]["runs"], runs, "{r}");
    }
}

#[test]
fn a_store_is_listed_and_a_missing_bucket_is_missing_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    // A directory standing in for a bucket.
    let (_, r) = doctor_json(&["--store", &format!("file://{}", tmp.path().display())], &[]);
    let store = check(&r, "store");
    assert_eq!(store["status"], "ok", "{store}");
    assert!(store["detail"].as_str().unwrap().contains("listed 0 snapshot(s); no LATEST yet"), "{store}");

    // A real S3 server (s3s-fs on loopback): one bucket exists, the other does not.
    let Some(s3) =
        s3server::S3Server::start("a_store_is_listed_and_a_missing_bucket_is_missing_with_the_reason")
    else {
        return;
    };
    let env = vec![
        ("AWS_ENDPOINT_URL", s3.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", s3server::ACCESS_KEY.to_owned()),
        ("AWS_SECRET_ACCESS_KEY", s3server::SECRET_KEY.to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
    ];
    let (code, r) = doctor_json(&["--store", &format!("s3://{}/ateom/doctor", s3server::BUCKET)], &env);
    let store = check(&r, "store");
    assert_eq!(store["status"], "ok", "{store}");
    assert_eq!(code == 0, r["ok"] == true);

    let started = Instant::now();
    let (code, r) = doctor_json(&["--store", "s3://no-such-bucket/ateom"], &env);
    let store = check(&r, "store");
    assert_eq!(store["status"], "missing", "{store}");
    let detail = store["detail"].as_str().unwrap();
    assert!(detail.starts_with("s3://no-such-bucket/ateom: the bucket does not exist"), "{detail}");
    assert_eq!(r["ok"], false, "an unusable store makes the report not ok");
    assert_eq!(code, 1);
    assert!(started.elapsed() < Duration::from_secs(30), "answered quickly");

    // Wrong credentials are told apart from a missing bucket.
    let mut bad = env.clone();
    bad[2] = ("AWS_SECRET_ACCESS_KEY", "not-the-secret-key-0123456789".to_owned());
    let (_, r) = doctor_json(&["--store", &format!("s3://{}/ateom", s3server::BUCKET)], &bad);
    let store = check(&r, "store");
    assert_eq!(store["status"], "missing", "{store}");
    assert!(store["detail"].as_str().unwrap().contains("the credentials were refused"), "{store}");
}

#[test]
fn serve_refuses_a_backend_that_cannot_run_with_the_doctors_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = tmp.path().join("s.sock");
    let env = [("RUST_BACKTRACE", "1".to_owned()), ("RUST_LIB_BACKTRACE", "1".to_owned())];
    let base = ["serve", "--socket", socket.to_str().unwrap(), "--state-dir", tmp.path().to_str().unwrap()];

    let mut args = base.to_vec();
    args.extend(["--backend", "gvisor", "--runsc", "/nonexistent/runsc"]);
    let out = ateom(&args, &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "error: the gvisor backend cannot run on this host: runsc: no runsc at /nonexistent/runsc"
        ),
        "{err}"
    );
    assert!(err.contains("`ateom doctor --backend gvisor`"), "{err}");
    assert!(!err.contains("backtrace") && !err.contains("Caused by"), "no backtrace: {err}");
    assert!(!socket.exists());

    let mut args = base.to_vec();
    args.extend(["--backend", "firecracker", "--firecracker", "/nonexistent/firecracker"]);
    let out = ateom(&args, &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "error: the firecracker backend cannot run on this host: firecracker: /nonexistent/firecracker"
        ),
        "{err}"
    );

    let mut args = base.to_vec();
    args.extend(["--backend", "qemu", "--kernel", "/nonexistent/vmlinux"]);
    let out = ateom(&args, &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("guest-kernel: --kernel /nonexistent/vmlinux does not exist"), "{err}");
}

#[test]
fn serve_logs_the_doctors_summary_at_start() {
    if let Some(why) = common::gvisor_unavailable() {
        eprintln!("SKIPPED serve_logs_the_doctors_summary_at_start: {why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut w = common::Worker::start(&tmp.path().join("w"), &[]);
    let log = w.log_text();
    w.stop();
    for name in
        ["runsc ok:", "kvm ", "qemu ", "firecracker ", "netns ok:", "cgroups ", "userfaultfd ", "disk "]
    {
        assert!(log.contains(name), "no `{name}` line in the worker's log:\n{log}");
    }
}

#[test]
fn user_errors_print_the_message_and_what_to_do_without_a_backtrace() {
    let env = [("RUST_BACKTRACE", "full".to_owned()), ("RUST_LIB_BACKTRACE", "1".to_owned())];
    let out = ateom(&["caps", "--socket", "/nonexistent/ateom.sock"], &env);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with(
            "error: connecting to the worker at /nonexistent/ateom.sock (is `ateom serve` running?): "
        ),
        "{err}"
    );
    assert!(!err.contains("backtrace") && !err.contains("Caused by") && !err.contains("panicked"), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");

    // --debug shows the cause list and the backtrace.
    let out = ateom(&["--debug", "caps", "--socket", "/nonexistent/ateom.sock"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Caused by") && err.contains("backtrace"), "{err}");
}
