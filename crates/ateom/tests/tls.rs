//! Workers over the network: gRPC on TCP and the workload's endpoint for other hosts, both
//! with mutual TLS, against a real `ateom serve` and real certificates (rcgen): the right
//! client gets in, a client without a certificate, with one another CA signed, or with an
//! expired one does not, and a worker presenting a certificate the client's CA did not sign
//! is refused by the client.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "test CA");
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A certificate for `names` signed by `ca`, valid now unless `expired`.
fn leaf(ca: &Ca, names: &[&str], expired: bool) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

fn files(dir: &Path, prefix: &str, (cert, key): &(String, String), ca: &Ca) -> ateom_grpc::tls::TlsFiles {
    ateom_grpc::tls::TlsFiles {
        cert: write(dir, &format!("{prefix}.crt"), cert),
        key: write(dir, &format!("{prefix}.key"), key),
        ca: write(dir, &format!("{prefix}-ca.crt"), &ca.pem),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn caps_over_tls(addr: &str, f: &ateom_grpc::tls::TlsFiles) -> Result<String, String> {
    let cfg = ateom_grpc::tls::client_config(f).map_err(|e| e.to_string())?;
    let mut c = ateom_grpc::tls::connect_tcp(addr, cfg).await.map_err(|e| e.to_string())?;
    c.get_capabilities(ateom_proto::GetCapabilitiesRequest {})
        .await
        .map(|r| r.into_inner().backend)
        .map_err(|s| format!("{s}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn workers_over_tcp_require_mutual_tls() {
    require_gvisor!();
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let image = counter_image(d);
    let (ca1, ca2) = (ca(), ca());
    let server = files(d, "server", &leaf(&ca1, &["127.0.0.1", "localhost"], false), &ca1);
    let (grpc_port, front_port) = (free_port(), free_port());
    let grpc = format!("127.0.0.1:{grpc_port}");
    let front = format!("127.0.0.1:{front_port}");
    let w = Worker::start(
        &d.join("state"),
        &[
            "--listen-tcp",
            &grpc,
            "--forward-tls",
            &front,
            "--tls-cert",
            server.cert.to_str().unwrap(),
            "--tls-key",
            server.key.to_str().unwrap(),
            "--tls-ca",
            server.ca.to_str().unwrap(),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(&grpc).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", w.log_text());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // The right client: in, with the full API.
    let good = files(d, "client", &leaf(&ca1, &["router"], false), &ca1);
    assert_eq!(caps_over_tls(&format!("https://{grpc}"), &good).await.unwrap(), "gvisor");
    let cfg = ateom_grpc::tls::client_config(&good).unwrap();
    let mut c = ateom_grpc::tls::connect_tcp(&grpc, cfg).await.unwrap();
    let run = c.run_workload(run_req("t1", &image)).await.expect("run over TCP").into_inner();
    assert!(run.host_endpoint.starts_with("127.0.0.1:"));

    // Refused: another CA's client, an expired client certificate.
    let foreign = files(d, "foreign", &leaf(&ca2, &["router"], false), &ca1);
    let err = caps_over_tls(&grpc, &foreign).await.expect_err("a client another CA signed");
    eprintln!("foreign client: {err}");
    let expired = files(d, "expired", &leaf(&ca1, &["router"], true), &ca1);
    let err = caps_over_tls(&grpc, &expired).await.expect_err("an expired client certificate");
    eprintln!("expired client: {err}");
    // The client refuses a worker whose certificate its CA did not sign.
    let wrong_ca = ateom_grpc::tls::TlsFiles { ca: write(d, "ca2.crt", &ca2.pem), ..good.clone() };
    let err = caps_over_tls(&grpc, &wrong_ca).await.expect_err("a worker another CA signed");
    assert!(err.contains("certificate") || err.contains("transport"), "{err}");
    // No certificate at all: plain TCP gets nothing (the handshake is refused).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut plain = tokio::net::TcpStream::connect(&grpc).await.unwrap();
        let _ = plain.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), plain.read(&mut buf)).await;
        assert!(
            matches!(n, Ok(Ok(0)) | Ok(Err(_)) | Err(_)) || !buf.starts_with(b"\0\0"),
            "plaintext gRPC must not work"
        );
    }
    let log = w.log_text();
    assert!(log.contains("refused a client"), "the worker says why it refused: {log}");

    // The workload's endpoint for other hosts: the counter through TLS with a client cert.
    let connector = tokio_rustls::TlsConnector::from(ateom_grpc::tls::client_config_plain(&good).unwrap());
    let tcp = tokio::net::TcpStream::connect(&front).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector.connect(name, tcp).await.expect("TLS to the workload endpoint");
    let (status, body) = ateom_runtime::probe::http_get(&mut tls, &front, "/").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&body).contains("\"memory_count\":1"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Without a client certificate: refused.
    let anonymous = ateom_grpc::tls::anonymous_client_config(&server.ca).unwrap();
    let tcp = tokio::net::TcpStream::connect(&front).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let refused = async {
        let mut tls = tokio_rustls::TlsConnector::from(anonymous).connect(name, tcp).await?;
        ateom_runtime::probe::http_get(&mut tls, &front, "/").await
    }
    .await;
    assert!(refused.is_err(), "no client certificate, no workload: {refused:?}");
    c.checkpoint_workload(checkpoint_req("t1")).await.expect("checkpoint over TCP");
}
