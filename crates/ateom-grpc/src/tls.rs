//! The worker over the network: gRPC on TCP with mutual TLS.
//!
//! A worker that listens on TCP presents its certificate and accepts only clients whose
//! certificate is signed by the configured CA (rustls, `WebPkiClientVerifier`: a client
//! without a certificate, with an expired one or one another CA signed is refused in the
//! handshake, and the worker logs why, naming the peer). Clients connect with their own
//! certificate and check the worker's against the same CA. HTTP/2 is negotiated with ALPN.
//!
//! The TLS handshake is done here (tokio-rustls) rather than inside tonic so that every
//! refusal is logged with its reason instead of disappearing in the transport.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ateom_proto as pb;
use ateom_runtime::Runtime;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{info, warn};

use crate::ServeError;

/// The PEM files of one side of a mutual-TLS connection.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// This side's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// The CA that must have signed the other side's certificate.
    pub ca: PathBuf,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {detail}")]
    File { what: &'static str, path: PathBuf, detail: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        what,
        path: path.to_owned(),
        detail: if e.kind() == std::io::ErrorKind::NotFound {
            "does not exist (give the PEM file, or make one with `ate certs issue`)".into()
        } else {
            e.to_string()
        },
    })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_pem(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem).collect::<Result<_, _>>().map_err(|e| {
        TlsError::File { what, path: path.to_owned(), detail: format!("not PEM certificates: {e}") }
    })?;
    if certs.is_empty() {
        return Err(TlsError::File { what, path: path.to_owned(), detail: "holds no certificate".into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_pem("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs("CA certificate", path)? {
        roots.add(c).map_err(|e| TlsError::File {
            what: "CA certificate",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The worker's side: its identity, and client certificates required, signed by `files.ca`.
pub fn server_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(&files.ca)?), provider())
            .build()
            .map_err(|e| TlsError::Config(format!("client verification with {}: {e}", files.ca.display())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs("certificate", &files.cert)?, key(&files.key)?)
        .map_err(|e| {
            TlsError::Config(format!("{} with {}: {e}", files.cert.display(), files.key.display()))
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client's side: its identity, and the worker's certificate checked against `files.ca`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(&files.ca)?)
        .with_client_auth_cert(certs("certificate", &files.cert)?, key(&files.key)?)
        .map_err(|e| {
            TlsError::Config(format!("{} with {}: {e}", files.cert.display(), files.key.display()))
        })?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client of the workload endpoint (plain HTTP/1.1 inside TLS: no ALPN), with its
/// certificate.
pub fn client_config_plain(files: &TlsFiles) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut cfg = (*client_config(files)?).clone();
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}

/// A client without a certificate that trusts `ca` (what a stranger on the network has).
pub fn anonymous_client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The server side for the workload endpoint: as [`server_config`], without ALPN (the
/// workload speaks whatever it speaks inside the tunnel).
pub fn front_config(files: &TlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = (*server_config(files)?).clone();
    cfg.alpn_protocols.clear();
    Ok(Arc::new(cfg))
}

/// Serves `ateom.Ateom` on TCP with mutual TLS until `shutdown` resolves.
pub async fn serve_tcp(
    addr: SocketAddr,
    runtime: Arc<Runtime>,
    wire: crate::Wire,
    config: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Socket { path: PathBuf::from(addr.to_string()), source })?;
    info!(%addr, wire = wire.name(), "serving ateom.Ateom over TCP with mutual TLS");
    let acceptor = TlsAcceptor::from(config);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let accept = tokio::spawn(async move {
        loop {
            let Ok((tcp, peer)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok::<_, std::io::Error>(tls)).await;
                    }
                    Ok(Err(e)) => warn!(%peer, error = %e, "refused a client: TLS handshake failed"),
                    Err(_) => warn!(%peer, "refused a client: no TLS handshake within 10 s"),
                }
            });
        }
    });
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
    let served = crate::serve_incoming(runtime, wire, incoming, shutdown).await;
    accept.abort();
    served?;
    Ok(())
}

/// Connects a client to a worker at `host:port` (or `https://host:port`) with mutual TLS.
/// The worker's certificate must name `host` (an IP address or a DNS name).
pub async fn connect_tcp(
    address: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<pb::AteomClient<tonic::transport::Channel>, TlsError> {
    let hostport = address.trim_start_matches("https://").trim_end_matches('/').to_owned();
    let host =
        hostport.rsplit_once(':').map_or(hostport.as_str(), |(h, _)| h).trim_matches(['[', ']']).to_owned();
    let name = ServerName::try_from(host.clone())
        .map_err(|e| TlsError::Config(format!("{host:?} is not a host name or address: {e}")))?;
    let connector = TlsConnector::from(config);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{hostport}"))
        .map_err(|e| TlsError::Config(format!("{address:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(tower::service_fn(move |_| {
            let (connector, name, hostport) = (connector.clone(), name.clone(), hostport.clone());
            async move {
                let tcp = TcpStream::connect(&hostport).await?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }));
    Ok(pb::AteomClient::new(channel).max_decoding_message_size(64 << 20))
}
