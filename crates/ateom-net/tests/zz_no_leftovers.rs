//! Runs after the other test binaries (cargo runs them in name order): no namespace named
//! by a test of this crate may outlive the process that created it.
//!
//! Test namespaces are named `ateomt-<pid>-...`; a name whose process is still alive
//! belongs to a concurrently running test binary and is left alone.

mod common;

use std::path::Path;

use ateom_net::Netns;
use common::{TEST_PREFIX, ip_netns_list};

#[test]
fn no_test_namespace_outlives_its_test_process() {
    let mut names = Netns::list_with_prefix(TEST_PREFIX).unwrap();
    names.extend(ip_netns_list().into_iter().filter(|name| name.starts_with(TEST_PREFIX)));
    let orphans: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let pid = name[TEST_PREFIX.len()..].split('-').next().unwrap_or("");
            pid.is_empty() || !Path::new("/proc").join(pid).exists()
        })
        .collect();
    assert!(orphans.is_empty(), "namespaces left behind by finished tests: {orphans:?}");
}
