//! Named network namespaces: create, open, list, run inside, delete.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use ateom_net::{NetError, Netns};
use common::{Scenario, ip_netns_list};

#[test]
fn create_open_list_delete_round_trip() {
    let mut scenario = Scenario::new("life");
    let name = scenario.name("a");
    let ns = Netns::create(&name).unwrap();
    assert_eq!(ns.name(), name);
    assert_eq!(ns.path(), Path::new("/run/netns").join(&name));

    // Visible to iproute2 and to our own listing; a second namespace sorts after it.
    assert!(ip_netns_list().contains(&name), "ip netns list lacks {name}");
    let other = scenario.netns("b");
    assert_eq!(
        Netns::list_with_prefix(scenario.prefix()).unwrap(),
        vec![name.clone(), other.name().to_owned()]
    );

    // The bound file is a real, distinct namespace: not ours, not the other one.
    let ino = |path: &Path| std::fs::metadata(path).unwrap().ino();
    assert_ne!(ino(ns.path()), ino(Path::new("/proc/self/ns/net")));
    assert_ne!(ino(ns.path()), ino(other.path()));

    // Opening by name yields the same handle.
    assert_eq!(Netns::open(&name).unwrap(), ns);

    // Creating it again fails precisely.
    assert!(matches!(Netns::create(&name), Err(NetError::NamespaceExists { name: n }) if n == name));

    // Delete is idempotent.
    ns.delete().unwrap();
    Netns::delete_by_name(&name).unwrap();
    Netns::delete_by_name(&name).unwrap();
    assert!(matches!(Netns::open(&name), Err(NetError::NamespaceNotFound { .. })));
    assert_eq!(Netns::list_with_prefix(scenario.prefix()).unwrap(), vec![other.name().to_owned()]);

    // The name can be reused once deleted.
    let again = Netns::create(&name).unwrap();
    assert_eq!(again.name(), name);
    scenario.finish();
}

#[test]
fn run_in_executes_inside_the_namespace() {
    let mut scenario = Scenario::new("runin");
    let ns = scenario.netns("a");
    let expected = format!("net:[{}]", std::fs::metadata(ns.path()).unwrap().ino());
    let seen = ns.run_in(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap()).unwrap();
    assert_eq!(seen.to_str().unwrap(), expected);

    // A fresh namespace has only a down loopback.
    let dev = ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap()).unwrap();
    let interfaces: Vec<&str> =
        dev.lines().skip(2).filter_map(|line| line.split(':').next()).map(str::trim).collect();
    assert_eq!(interfaces, vec!["lo"]);

    // The caller's thread is untouched.
    assert_ne!(std::fs::read_link("/proc/thread-self/ns/net").unwrap().to_str().unwrap(), expected);

    // A panic inside is reported, not propagated.
    let panicked = ns.run_in(|| -> u32 { panic!("deliberate panic inside run_in") });
    assert!(matches!(panicked, Err(NetError::ThreadPanicked { .. })), "{panicked:?}");
    scenario.finish();
}

#[test]
fn invalid_names_are_rejected_before_touching_the_system() {
    for bad in ["", "a/b", "../etc", "-rf", "with space", &"x".repeat(65)] {
        assert!(matches!(Netns::create(bad), Err(NetError::InvalidNamespaceName { .. })), "create {bad:?}");
        assert!(matches!(Netns::open(bad), Err(NetError::InvalidNamespaceName { .. })), "open {bad:?}");
        assert!(
            matches!(Netns::delete_by_name(bad), Err(NetError::InvalidNamespaceName { .. })),
            "delete {bad:?}"
        );
    }
}

#[test]
fn a_leftover_file_is_not_a_namespace_and_delete_removes_it() {
    let mut scenario = Scenario::new("stale");
    let name = scenario.name("file");
    // What a creator that crashed between creating the mount point and binding leaves.
    std::fs::create_dir_all("/run/netns").unwrap();
    std::fs::write(Path::new("/run/netns").join(&name), b"").unwrap();
    assert!(matches!(Netns::open(&name), Err(NetError::NotANamespace { .. })));
    assert_eq!(Netns::list_with_prefix(scenario.prefix()).unwrap(), vec![name.clone()]);
    Netns::delete_by_name(&name).unwrap();
    assert!(matches!(Netns::open(&name), Err(NetError::NamespaceNotFound { .. })));
    scenario.finish();
}

#[test]
fn operations_on_a_deleted_namespace_fail_precisely() {
    let mut scenario = Scenario::new("gone");
    let ns = scenario.netns("a");
    Netns::delete_by_name(ns.name()).unwrap();
    assert!(matches!(ns.run_in(|| ()), Err(NetError::NamespaceNotFound { .. })));
    assert!(matches!(
        ateom_net::NetnsDialer::new(&ns, "169.254.1.2".parse().unwrap()),
        Err(NetError::NamespaceNotFound { .. })
    ));
    scenario.finish();
}

#[test]
fn core_sysctl_probe_matches_what_a_namespace_shows() {
    let mut scenario = Scenario::new("probe");
    let ns = scenario.netns("a");
    let shown_inside = ns.run_in(|| Path::new("/proc/sys/net/core/rmem_default").exists()).unwrap();
    assert_eq!(ateom_net::kernel_shows_core_sysctls_in_netns().unwrap(), shown_inside);
    // Cached answer is the same.
    assert_eq!(ateom_net::kernel_shows_core_sysctls_in_netns().unwrap(), shown_inside);
    scenario.finish();
}
