//! The gVisor veth topology and the microVM tap topology, checked against the kernel.

mod common;

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use ateom_core::Dialer;
use ateom_net::{NetError, NetnsDialer, TapPlan, VethPlan, link_state, setup_tap, setup_veth};
use common::{Scenario, listen_in, veth_topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn veth_pair_spans_sandbox_and_gateway_and_carries_tcp() {
    let mut scenario = Scenario::new("veth");
    let sandbox = scenario.netns("sb");
    let gateway = scenario.netns("gw");
    let mac = [0x02, 0xa7, 0xe0, 0x00, 0x00, 0x07];
    let plan = VethPlan { sandbox_mac: Some(mac), ..VethPlan::for_index(7).unwrap() };
    setup_veth(&sandbox, &gateway, &plan).await.unwrap();

    // Each end is in its namespace, addressed and up, with the requested MAC; lo is up.
    let eth0 = link_state(&sandbox, "eth0").await.unwrap().expect("eth0 in sandbox");
    assert!(eth0.up);
    assert_eq!(eth0.ipv4, vec![(plan.sandbox_ip, 30)]);
    assert_eq!(eth0.mac, Some(mac));
    let gw0 = link_state(&gateway, "gw0").await.unwrap().expect("gw0 in gateway");
    assert!(gw0.up);
    assert_eq!(gw0.ipv4, vec![(plan.gateway_ip, 30)]);
    for ns in [&sandbox, &gateway] {
        assert!(link_state(ns, "lo").await.unwrap().unwrap().up, "lo down in {}", ns.name());
    }
    // ...and only there.
    assert_eq!(link_state(&sandbox, "gw0").await.unwrap(), None);
    assert_eq!(link_state(&gateway, "eth0").await.unwrap(), None);

    // A server in the sandbox is reachable from the gateway through the dialer.
    let listener = listen_in(&sandbox, plan.sandbox_ip);
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut stream, peer) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.unwrap();
        stream.write_all(&buf).await.unwrap();
        peer
    });
    let dialer = NetnsDialer::new(&gateway, IpAddr::V4(plan.sandbox_ip)).unwrap();
    assert_eq!(dialer.ip(), IpAddr::V4(plan.sandbox_ip));
    assert_eq!(dialer.namespace(), gateway.name());
    let mut stream = dialer.dial(port).await.unwrap();
    assert!(stream.nodelay().unwrap());
    // The connection comes from the gateway end of the pair.
    assert_eq!(stream.local_addr().unwrap().ip(), IpAddr::V4(plan.gateway_ip));
    stream.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    stream.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    assert_eq!(server.await.unwrap().ip(), IpAddr::V4(plan.gateway_ip));

    // Dialing a closed port inside the namespace is refused, not hung.
    let closed = dialer.dial(1).await.unwrap_err();
    assert_eq!(closed.kind(), std::io::ErrorKind::ConnectionRefused);

    // A second setup with the same names fails precisely and leaves the first intact.
    let again = setup_veth(&sandbox, &gateway, &plan).await;
    assert!(matches!(again, Err(NetError::InterfaceExists { .. })), "{again:?}");
    assert!(link_state(&gateway, "gw0").await.unwrap().unwrap().up);

    drop(stream);
    drop(dialer);
    scenario.finish();
}

#[tokio::test]
async fn many_dials_reuse_one_helper_thread() {
    let mut scenario = Scenario::new("dials");
    let topology = veth_topology(&mut scenario, 0).await;
    let listener = listen_in(&topology.sandbox, topology.plan.sandbox_ip);
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let mut served = 0;
        while served < 50 {
            let (mut stream, _) = listener.accept().await.unwrap();
            stream.write_all(b"k").await.unwrap();
            served += 1;
        }
    });
    let threads_before = thread_count();
    let dialer = NetnsDialer::new(&topology.gateway, IpAddr::V4(topology.plan.sandbox_ip)).unwrap();
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = dialer.dial(port).await.unwrap();
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        streams.push(stream);
    }
    server.await.unwrap();
    // One helper thread, not one per connection (the runtime may add a blocking thread).
    assert!(thread_count() <= threads_before + 2, "{} -> {}", threads_before, thread_count());
    drop(streams);
    drop(dialer);
    drop(topology);
    scenario.finish();
}

fn thread_count() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[tokio::test]
async fn tap_is_persistent_addressed_up_and_openable_by_a_vmm() {
    let mut scenario = Scenario::new("tap");
    let ns = scenario.netns("vm");
    let plan = TapPlan::for_index(42).unwrap();
    setup_tap(&ns, &plan).await.unwrap();

    let tap = link_state(&ns, &plan.name).await.unwrap().expect("tap exists in the namespace");
    assert!(tap.up);
    assert_eq!(tap.ipv4, vec![(plan.host_ip, 30)]);
    assert!(link_state(&ns, "lo").await.unwrap().unwrap().up);

    // iproute2's view: a persistent tap owned by root, no packet info, with vnet headers.
    let output = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-d", "link", "show", &plan.name])
        .output()
        .unwrap();
    let details = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    for expected in ["tun type tap", "pi off", "vnet_hdr on", "persist on"] {
        assert!(details.contains(expected), "{expected:?} missing in: {details}");
    }
    assert!(details.contains("user root") || details.contains("user 0"), "not owned by root: {details}");

    // A VMM started in the namespace can attach to it by name with the same flags.
    let name = plan.name.clone();
    let attached = ns
        .run_in(move || -> std::io::Result<()> {
            let tun = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun")?;
            // SAFETY: zeroed ifreq is valid; TUNSETIFF reads it.
            let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
            for (slot, byte) in request.ifr_name.iter_mut().zip(name.bytes()) {
                *slot = byte as libc::c_char;
            }
            request.ifr_ifru.ifru_flags =
                (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
            // SAFETY: valid fd and ifreq pointer.
            if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut request) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .unwrap();
    attached.expect("attaching to the persistent tap from inside the namespace");
    // Still there after that reader went away: persistent.
    assert!(link_state(&ns, &plan.name).await.unwrap().is_some());

    // The name is taken now.
    let again = setup_tap(&ns, &plan).await;
    assert!(matches!(again, Err(NetError::InterfaceExists { .. })), "{again:?}");

    // A plain tap without vnet headers too.
    let plain = TapPlan { name: "tap1".into(), vnet_hdr: false, ..TapPlan::for_index(43).unwrap() };
    setup_tap(&ns, &plain).await.unwrap();
    let output = std::process::Command::new("ip")
        .args(["-n", ns.name(), "-d", "link", "show", "tap1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("vnet_hdr off"));

    scenario.finish();
}

#[tokio::test]
async fn bad_plans_fail_before_touching_the_kernel() {
    let mut scenario = Scenario::new("badplan");
    let ns = scenario.netns("a");
    let tap = TapPlan { name: "tap/0".into(), ..TapPlan::for_index(0).unwrap() };
    assert!(matches!(setup_tap(&ns, &tap).await, Err(NetError::InvalidInterfaceName { .. })));
    let tap = TapPlan { prefix_len: 32, ..TapPlan::for_index(0).unwrap() };
    assert!(matches!(setup_tap(&ns, &tap).await, Err(NetError::InvalidPlan { field: "prefix_len", .. })));
    let veth = VethPlan { sandbox_ip: "169.254.200.2".parse().unwrap(), ..VethPlan::for_index(0).unwrap() };
    assert!(matches!(setup_veth(&ns, &ns, &veth).await, Err(NetError::InvalidPlan { .. })));
    // Nothing was created.
    assert_eq!(link_state(&ns, "tap0").await.unwrap(), None);
    assert_eq!(link_state(&ns, "gw0").await.unwrap(), None);
    scenario.finish();
}
