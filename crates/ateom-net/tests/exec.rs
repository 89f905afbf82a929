//! Starting processes inside a namespace, with and without the /proc/sys/net/core mask.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ateom_net::{NetError, join_netns_before_exec, join_netns_before_exec_std};
use common::{Scenario, veth_topology};
use tokio::process::Command;

async fn run(mut cmd: Command) -> String {
    let output = cmd.output().await.expect("spawning the child");
    assert!(output.status.success(), "{:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn child_joins_the_namespace_before_exec() {
    let mut scenario = Scenario::new("exec-join");
    let topology = veth_topology(&mut scenario, 9).await;
    let sandbox = &topology.sandbox;

    let mut cmd = Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    join_netns_before_exec(&mut cmd, sandbox, false).unwrap();
    let expected = format!("net:[{}]", std::fs::metadata(sandbox.path()).unwrap().ino());
    assert_eq!(run(cmd).await.trim(), expected);

    let mut cmd = Command::new("cat");
    cmd.arg("/proc/self/net/dev");
    join_netns_before_exec(&mut cmd, sandbox, false).unwrap();
    let dev = run(cmd).await;
    let interfaces: Vec<&str> =
        dev.lines().skip(2).filter_map(|line| line.split(':').next()).map(str::trim).collect();
    assert!(interfaces.contains(&"eth0"), "{dev}");
    assert!(!interfaces.contains(&"gw0"), "{dev}");

    // The namespace fd is close-on-exec: nothing open in the child is a namespace.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "for fd in /proc/$$/fd/*; do readlink $fd || true; done"]);
    join_netns_before_exec(&mut cmd, sandbox, false).unwrap();
    let open = run(cmd).await;
    assert!(!open.contains("net:["), "namespace fd leaked into the child: {open}");

    // The parent stayed where it was.
    assert_ne!(std::fs::read_link("/proc/self/ns/net").unwrap().to_str().unwrap(), expected);
    drop(topology);
    scenario.finish();
}

#[tokio::test]
async fn mask_hides_proc_sys_net_core_only_in_the_child() {
    let mut scenario = Scenario::new("exec-mask");
    let ns = scenario.netns("sb");

    // Unmasked, a namespace shows per-namespace core sysctls (somaxconn at least).
    let mut cmd = Command::new("ls");
    cmd.args(["-A", "/proc/sys/net/core"]);
    join_netns_before_exec(&mut cmd, &ns, false).unwrap();
    let unmasked = run(cmd).await;
    assert!(unmasked.lines().any(|entry| entry == "somaxconn"), "{unmasked}");
    let shows_rmem_default = unmasked.lines().any(|entry| entry == "rmem_default");
    assert_eq!(ateom_net::kernel_shows_core_sysctls_in_netns().unwrap(), shows_rmem_default);

    // Masked: empty, and the child is still in the namespace.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "ls -A /proc/sys/net/core; echo ---; readlink /proc/self/ns/net"]);
    join_netns_before_exec(&mut cmd, &ns, true).unwrap();
    let masked = run(cmd).await;
    let expected_ns = format!("net:[{}]", std::fs::metadata(ns.path()).unwrap().ino());
    assert_eq!(masked, format!("---\n{expected_ns}\n"));

    // The mask lived in the child's private mount namespace: the host is untouched.
    assert!(Path::new("/proc/sys/net/core/somaxconn").exists());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("/proc/sys/net/core"), "mask leaked into the host: {mounts}");
    scenario.finish();
}

#[test]
fn std_command_variant_and_missing_namespace() {
    let mut scenario = Scenario::new("exec-std");
    let ns = scenario.netns("a");
    let mut cmd = std::process::Command::new("readlink");
    cmd.arg("/proc/self/ns/net");
    join_netns_before_exec_std(&mut cmd, &ns, false).unwrap();
    let output = cmd.output().unwrap();
    let expected = format!("net:[{}]\n", std::fs::metadata(ns.path()).unwrap().ino());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);

    ateom_net::Netns::delete_by_name(ns.name()).unwrap();
    let mut cmd = std::process::Command::new("true");
    assert!(matches!(
        join_netns_before_exec_std(&mut cmd, &ns, true),
        Err(NetError::NamespaceNotFound { .. })
    ));
    scenario.finish();
}
