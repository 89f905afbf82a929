//! The loopback forwarder, end to end through a real veth topology, and the promise that
//! matters for gVisor checkpoints: no connection state left in the sandbox afterwards.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ateom_core::Dialer;
use ateom_net::{Forwarder, NetnsDialer};
use common::{Scenario, TcpState, VethTopology, connections_on, eventually, listen_in, veth_topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a condition that should hold "right away" may take to show in /proc
/// (packets on a veth are processed in softirq, so not synchronously). TIME_WAIT lasts
/// 60 s, so this cannot mistake a TIME_WAIT for a closed socket.
const SETTLE: Duration = Duration::from_secs(5);

struct Rig {
    topology: VethTopology,
    listener: Option<TcpListener>,
    port: u16,
    dialer: Arc<NetnsDialer>,
    forwarder: Forwarder,
}

async fn rig(scenario: &mut Scenario, index: u16) -> Rig {
    let topology = veth_topology(scenario, index).await;
    let listener = listen_in(&topology.sandbox, topology.plan.sandbox_ip);
    let port = listener.local_addr().unwrap().port();
    let dialer = Arc::new(NetnsDialer::new(&topology.gateway, IpAddr::V4(topology.plan.sandbox_ip)).unwrap());
    let forwarder = Forwarder::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    assert!(forwarder.local_addr().ip().is_loopback());
    forwarder.set_target(Some((dialer.clone() as Arc<dyn Dialer>, port)));
    Rig { topology, listener: Some(listener), port, dialer, forwarder }
}

impl Rig {
    fn listener(&mut self) -> TcpListener {
        self.listener.take().unwrap()
    }

    async fn settled(&self) {
        let forwarder = &self.forwarder;
        assert!(eventually(SETTLE, || forwarder.active_connections() == 0).await, "forwarder still busy");
    }

    /// Waits until the sandbox has no socket on the server port except the listener.
    async fn sandbox_clean(&self) {
        let (ns, port) = (&self.topology.sandbox, self.port);
        let clean = eventually(SETTLE, || connections_on(ns, port).is_empty()).await;
        assert!(clean, "sandbox still has connection state: {:?}", connections_on(ns, port));
    }
}

#[tokio::test]
async fn server_closes_first_and_leaves_no_time_wait_in_the_sandbox() {
    let mut scenario = Scenario::new("fwd-srvclose");
    let mut rig = rig(&mut scenario, 1).await;
    let listener = rig.listener();
    // A server that answers and closes first, like an HTTP/1.0 server.
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 6];
        stream.read_exact(&mut request).await.unwrap();
        stream.write_all(b"answer to ").await.unwrap();
        stream.write_all(&request).await.unwrap();
        // Dropping closes: FIN goes out first from the sandbox.
    });

    let mut client = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
    client.write_all(b"hello\n").await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"answer to hello\n");
    server.await.unwrap();
    drop(client);

    rig.settled().await;
    rig.sandbox_clean().await;
    drop(rig);
    scenario.finish();
}

#[tokio::test]
async fn without_the_forwarder_the_same_exchange_leaves_time_wait_in_the_sandbox() {
    // The control experiment for the test above: the same server-closes-first exchange
    // over a plain connection (dialed from the gateway namespace, closed normally) parks
    // the sandbox's socket in TIME_WAIT, which is exactly what breaks a gVisor checkpoint.
    let mut scenario = Scenario::new("fwd-control");
    let mut rig = rig(&mut scenario, 2).await;
    let listener = rig.listener();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"bye").await.unwrap();
    });
    let mut client = rig.dialer.dial(rig.port).await.unwrap();
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, b"bye");
    server.await.unwrap();
    drop(client);

    let (ns, port) = (&rig.topology.sandbox, rig.port);
    let time_wait =
        eventually(SETTLE, || connections_on(ns, port).iter().any(|row| row.state == TcpState::TimeWait))
            .await;
    assert!(time_wait, "expected TIME_WAIT, found {:?}", connections_on(ns, port));
    drop(rig);
    scenario.finish();
}

#[tokio::test]
async fn client_half_close_makes_the_sandbox_the_passive_closer() {
    let mut scenario = Scenario::new("fwd-halfclose");
    let mut rig = rig(&mut scenario, 3).await;
    let listener = rig.listener();
    // A server that reads to EOF, answers with the byte count, then closes.
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        stream.read_to_end(&mut request).await.unwrap();
        stream.write_all(format!("{} bytes", request.len()).as_bytes()).await.unwrap();
    });

    let mut client = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
    client.write_all(&[7u8; 100_000]).await.unwrap();
    client.shutdown().await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "100000 bytes");
    server.await.unwrap();
    drop(client);

    rig.settled().await;
    rig.sandbox_clean().await;
    drop(rig);
    scenario.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfers_in_both_directions_arrive_intact() {
    let mut scenario = Scenario::new("fwd-bulk");
    let mut rig = rig(&mut scenario, 4).await;
    let listener = rig.listener();
    // An echo server.
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut read, mut write) = stream.split();
        tokio::io::copy(&mut read, &mut write).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let payload: Vec<u8> =
        (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let client = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
    let (mut read, mut write) = client.into_split();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    });
    let mut echoed = Vec::with_capacity(payload.len());
    read.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    assert!(echoed == payload, "echo differs (got {} bytes)", echoed.len());

    rig.settled().await;
    rig.sandbox_clean().await;
    drop(rig);
    scenario.finish();
}

#[tokio::test]
async fn abort_all_kills_in_flight_connections_and_waits_for_them() {
    let mut scenario = Scenario::new("fwd-abort");
    let mut rig = rig(&mut scenario, 5).await;
    let listener = rig.listener();
    // A server that echoes and never closes on its own; reports how its connections end.
    let (ended_tx, mut ended_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let end = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => break "eof".to_owned(),
                        Ok(n) => {
                            if let Err(e) = stream.write_all(&buf[..n]).await {
                                break format!("{:?}", e.kind());
                            }
                        }
                        Err(e) => break format!("{:?}", e.kind()),
                    }
                };
                let _ = ended_tx.send(end);
            });
        }
    });

    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
        client.write_all(b"x").await.unwrap();
        let mut echo = [0u8; 1];
        client.read_exact(&mut echo).await.unwrap();
        clients.push(client);
    }
    assert_eq!(rig.forwarder.active_connections(), 3);
    assert_eq!(connections_on(&rig.topology.sandbox, rig.port).len(), 3);

    rig.forwarder.set_target(None);
    rig.forwarder.abort_all().await;
    assert_eq!(rig.forwarder.active_connections(), 0);

    // The sandbox saw resets (no orderly FIN it would have to answer), and holds no state.
    for _ in 0..3 {
        let end =
            tokio::time::timeout(SETTLE, ended_rx.recv()).await.expect("server noticed the abort").unwrap();
        assert_eq!(end, "ConnectionReset");
    }
    rig.sandbox_clean().await;

    // The clients see their connection end.
    for mut client in clients {
        let mut rest = Vec::new();
        let outcome =
            tokio::time::timeout(SETTLE, client.read_to_end(&mut rest)).await.expect("client not closed");
        assert!(outcome.is_err() || rest.is_empty(), "{outcome:?} {rest:?}");
    }

    // abort_all with nothing to abort returns at once.
    rig.forwarder.abort_all().await;
    drop(rig);
    scenario.finish();
}

#[tokio::test]
async fn without_a_target_connections_are_refused_and_retargeting_works() {
    let mut scenario = Scenario::new("fwd-target");
    let mut rig = rig(&mut scenario, 6).await;
    let listener = rig.listener();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(b"served").await;
        }
    });

    rig.forwarder.set_target(None);
    let mut refused = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
    let mut rest = Vec::new();
    let outcome =
        tokio::time::timeout(SETTLE, refused.read_to_end(&mut rest)).await.expect("refused promptly");
    assert!(outcome.is_err() || rest.is_empty(), "{outcome:?} {rest:?}");
    assert_eq!(rig.forwarder.active_connections(), 0);
    assert!(
        connections_on(&rig.topology.sandbox, rig.port).is_empty(),
        "refused connection reached the sandbox"
    );

    rig.forwarder.set_target(Some((rig.dialer.clone() as Arc<dyn Dialer>, rig.port)));
    let mut served = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
    let mut buf = [0u8; 6];
    served.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"served");

    // A target whose port has no listener: the client's connection is closed, nothing hangs.
    rig.forwarder.set_target(Some((rig.dialer.clone() as Arc<dyn Dialer>, 1)));
    let mut unreachable = TcpStream::connect(rig.forwarder.local_addr()).await.unwrap();
    let mut rest = Vec::new();
    let outcome =
        tokio::time::timeout(SETTLE, unreachable.read_to_end(&mut rest)).await.expect("closed promptly");
    assert!(outcome.is_err() || rest.is_empty(), "{outcome:?} {rest:?}");
    drop(served);
    drop(rig);
    scenario.finish();
}

#[tokio::test]
async fn binding_a_taken_address_fails_precisely() {
    let first = Forwarder::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let taken: SocketAddr = first.local_addr();
    let second = Forwarder::bind(taken).await;
    assert!(matches!(second, Err(ateom_net::NetError::Bind { addr, .. }) if addr == taken), "{second:?}");
}
