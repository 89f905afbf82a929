//! The control channel listener: one request per connection, answered by
//! [`ateom_init::server::answer`], only from the host side of the network.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use ateom_init::protocol::{self, ErrorKind, MAX_FRAME_LEN, Request, Response};
use ateom_init::server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sys::SystemOps;

/// A connection must deliver its request within this time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the listener on `guest_ip` (all addresses when `None`).
pub async fn bind(guest_ip: Option<Ipv4Addr>, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((guest_ip.unwrap_or(Ipv4Addr::UNSPECIFIED), port)).await
}

/// Accepts connections forever, each answered in its own task.
pub async fn serve(listener: TcpListener, guest_ip: Option<Ipv4Addr>, ops: SystemOps) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let ops = ops.clone();
                tokio::spawn(async move { connection(stream, peer, guest_ip, ops).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                say!("warning: control channel: accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, guest_ip: Option<Ipv4Addr>, mut ops: SystemOps) {
    let response = if !server::is_host_peer(peer.ip(), guest_ip) {
        say!("warning: control channel: refused a connection from {peer} (not the host side)");
        Response::error(
            ErrorKind::Refused,
            format!("control requests are only taken from the host side, not from {peer}"),
        )
    } else {
        match tokio::time::timeout(REQUEST_TIMEOUT, read_request(&mut stream)).await {
            Err(_) => Response::error(
                ErrorKind::BadRequest,
                format!("no complete request within {REQUEST_TIMEOUT:?}"),
            ),
            Ok(Err(e)) => Response::for_decode_error(&e),
            Ok(Ok(frame)) => {
                let response = server::answer(&frame, &mut ops);
                log_request(&frame, &response, peer);
                response
            }
        }
    };
    let bytes = match protocol::encode_response(&response) {
        Ok(bytes) => bytes,
        Err(e) => {
            say!("error: control channel: {e}");
            return;
        }
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await;
}

async fn read_request(stream: &mut TcpStream) -> Result<Vec<u8>, protocol::ProtocolError> {
    let mut frame = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|source| protocol::ProtocolError::Io { op: "reading from", source })?;
        if n == 0 {
            return if frame.is_empty() {
                Err(protocol::ProtocolError::Truncated { received: 0 })
            } else {
                Ok(frame)
            };
        }
        frame.extend_from_slice(&chunk[..n]);
        if let Some(len) = protocol::frame_len(&frame)? {
            frame.truncate(len);
            return Ok(frame);
        }
        if frame.len() > MAX_FRAME_LEN {
            return Err(protocol::ProtocolError::TooLong { len: frame.len() });
        }
    }
}

fn log_request(frame: &[u8], response: &Response, peer: SocketAddr) {
    match (protocol::decode_request(frame), response) {
        (Ok(Request::Sync { .. }), Response::Synced { delta_ns, entropy_bits, .. }) => {
            say!(
                "control: sync from {peer}: clock moved by {:+.3} s, {entropy_bits} bits of host entropy added, CRNG reseeded",
                *delta_ns as f64 / 1e9
            );
        }
        (_, Response::Error { kind, message }) => {
            say!("warning: control: request from {peer} failed ({kind}): {message}")
        }
        _ => {}
    }
}
