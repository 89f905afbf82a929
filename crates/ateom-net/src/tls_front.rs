//! The workload's endpoint for other hosts: TLS with client certificates in front of the
//! loopback forwarder.
//!
//! The loopback forwarder is reachable from this host only. A router on another host reaches
//! the workload through this front instead: it accepts a TCP connection, completes a TLS
//! handshake that requires a client certificate signed by the configured CA (refusals are
//! logged with their reason), then relays the decrypted bytes to the forwarder's loopback
//! port and back. Never a plain port that anyone on the network can use.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

/// A running TLS front. Dropping it stops accepting (relays in progress finish).
pub struct TlsFront {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsFront {
    /// Listens on `listen` and relays every authenticated connection to `upstream` (the
    /// forwarder's loopback endpoint).
    pub async fn start(
        listen: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        upstream: SocketAddr,
    ) -> std::io::Result<TlsFront> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else { continue };
                let _ = tcp.set_nodelay(true);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            warn!(%peer, error = %e, "workload endpoint: refused a client (TLS)");
                            return;
                        }
                        Err(_) => {
                            warn!(%peer, "workload endpoint: refused a client (no TLS handshake within 10 s)");
                            return;
                        }
                    };
                    let mut up = match TcpStream::connect(upstream).await {
                        Ok(s) => s,
                        Err(e) => {
                            debug!(%peer, error = %e, "workload endpoint: forwarder not reachable");
                            return;
                        }
                    };
                    let _ = up.set_nodelay(true);
                    let mut tls = tls;
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Ok(TlsFront { addr, task })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}
