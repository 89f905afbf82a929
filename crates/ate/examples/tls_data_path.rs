//! What the data path to a worker on another host costs: request latency through a worker's
//! mutual-TLS front against the same request over loopback, in the same run, interleaved.
//!
//! ```sh
//! cargo build --release -p ateom
//! cargo run --release -p ate --example tls_data_path -- --samples 300 --warmup 30
//! ```
//!
//! Two real `ateom serve` gVisor workers (the `ateom` next to this binary, or `$ATEOM_BIN`):
//! `w-local` named by its unix socket, `w-tls` by `address: https://127.0.0.1:PORT` and
//! `forward: 127.0.0.1:PORT` (rcgen certificates). A control plane in this process with its
//! router; one counter actor RUNNING on each worker. Four kinds of request, each a `GET /` on
//! a fresh client connection timed from connect to the last body byte:
//!
//! * `routed_tls_front`: through the router to the actor on `w-tls` (the router opens TCP +
//!   TLS with its client certificate to the front, which relays to the worker's forwarder);
//! * `routed_loopback`: through the router to the actor on `w-local` (plain TCP to its
//!   loopback forwarder) — the baseline of the first, on another sandbox;
//! * `direct_tls_front`: straight to `w-tls`'s front with the client certificate;
//! * `direct_loopback`: straight to `w-tls`'s loopback endpoint — the baseline of the third,
//!   on the same sandbox (what the front alone adds).
//!
//! Every answer is checked (the counters continue, memory == file). After a warm-up of every
//! kind, the kinds are measured in a rotating order each round. Prints one JSON object:
//! p50/p95 per kind in ms and the ratios `routed_*` (first / second) and `direct_*` (third /
//! fourth).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ate::cluster::{WorkerProc, ateom_bin, pack_counter};
use ate::controller::Config;
use ate::demo::{SUFFIX, get, parse_count};
use ate::metrics::percentile;
use ate::server::{AuthSetup, ServeOptions, start};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::json;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `GET /` over TLS (client certificate) to a worker's front: status and body.
async fn get_tls(
    front: std::net::SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<(u16, String)> {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(front).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from(front.ip().to_string())?;
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .uri("/")
        .header(hyper::header::HOST, "x")
        .header(hyper::header::CONNECTION, "close")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[tokio::main]
async fn main() -> Result<()> {
    let samples = arg("--samples", 300);
    let warmup = arg("--warmup", 30);
    if let Some(why) = ate::cluster::gvisor_unavailable() {
        bail!("cannot run gVisor workers here: {why}");
    }
    let dir = tempfile::Builder::new().prefix("ate-tls-bench-").tempdir()?;
    let d = dir.path();
    let ateom = ateom_bin()?;
    let image = pack_counter(&ateom, &d.join("counter-image"))?;

    // Certificates: one CA signs the worker (for 127.0.0.1) and the control plane.
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::from_params(&ca, &ca_key);
    let leaf = |name: &str, sans: &[&str]| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?
            .signed_by(&key, &issuer)?;
        let (c, k) = (d.join(format!("{name}.crt")), d.join(format!("{name}.key")));
        std::fs::write(&c, cert.pem())?;
        std::fs::write(&k, key.serialize_pem())?;
        Ok((c.display().to_string(), k.display().to_string()))
    };
    let (wcert, wkey) = leaf("worker", &["127.0.0.1"])?;
    let (acert, akey) = leaf("ate", &["ate"])?;
    let ca_file = d.join("ca.crt");
    std::fs::write(&ca_file, &ca_pem)?;
    let ca_file = ca_file.display().to_string();

    let (grpc, front) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
    let tls_args: Vec<String> = [
        "--listen-tcp",
        &grpc,
        "--forward-tls",
        &front,
        "--tls-cert",
        &wcert,
        "--tls-key",
        &wkey,
        "--tls-ca",
        &ca_file,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _local = WorkerProc::start(&ateom, &d.join("w-local"), "w-local", "node-1")?;
    let _remote = WorkerProc::start_with(&ateom, &d.join("w-tls"), "w-tls", "node-2", &tls_args)?;
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&grpc).is_err() {
        if Instant::now() > until {
            bail!("w-tls does not listen on {grpc}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let running = start(ServeOptions {
        store: ate_store::StoreConfig::Sqlite(d.join("ate.db")),
        router: "127.0.0.1:0".parse()?,
        api: "127.0.0.1:0".parse()?,
        metrics: None,
        controller: Config::default(),
        resources: None,
        data_dir: Some(d.join("data")),
        auth: AuthSetup::Tokens(ate::auth::TokenFiles { data_dir: d.join("data"), admin: None, read: None }),
        api_limits: Default::default(),
        http: Default::default(),
        router_cfg: ate::router::RouterConfig {
            suffix: SUFFIX.into(),
            max_resumes_per_client: usize::MAX,
            ..Default::default()
        },
    })
    .await?;
    let local_sock = d.join("w-local/ateom.sock");
    let yaml = format!(
        "kind: WorkerPool\nmetadata: {{ name: mixed }}\nspec:\n  tls: {{ ca: \"{ca_file}\", cert: \"{acert}\", key: \"{akey}\" }}\n  workers:\n    - {{ name: w-local, socket: \"{}\" }}\n    - {{ name: w-tls, address: \"https://{grpc}\", forward: \"{front}\" }}\n---\nkind: ActorTemplate\nmetadata: {{ name: counter }}\nspec:\n  pool: mixed\n  containers:\n    - name: counter\n      image: \"{image}\"\n      readyz: {{ httpGet: {{ path: /readyz, port: 8080 }} }}\n  snapshot: {{ location: \"file://{}/bucket\" }}\n",
        local_sock.display(),
        d.display()
    );
    let result = async {
        running.ctl.apply(ate_core::parse_resources(&yaml)?).await?;
        let router = running.router_addr;
        let mut on = std::collections::HashMap::new();
        for name in ["b1", "b2"] {
            running.ctl.create_actor(name, "counter", Duration::from_secs(120)).await?;
            let (s, b) = get(router, name, SUFFIX).await?;
            if s != 200 {
                bail!("{name}: HTTP {s}: {b}");
            }
            let a = running.ctl.actor(name).await?.value;
            on.insert(
                a.worker.clone().context("running actor without a worker")?,
                (name, a.endpoint.clone()),
            );
        }
        let (tls_actor, tls_endpoint) = on.get("w-tls").cloned().context("no actor on w-tls")?;
        let (local_actor, local_endpoint) = on.get("w-local").cloned().context("no actor on w-local")?;
        if !tls_endpoint.as_deref().is_some_and(|e| e.starts_with("tls://")) {
            bail!("the actor on w-tls is not routed through the TLS front: {tls_endpoint:?}");
        }
        // The TLS worker's own loopback endpoint (what it reports on its unix socket): the
        // direct baseline for its front, on the same sandbox.
        let loopback: std::net::SocketAddr = ate::worker::connect_lazy(&d.join("w-tls/ateom.sock"))
            .get_capabilities(ateom_proto::GetCapabilitiesRequest {})
            .await?
            .into_inner()
            .host_endpoint
            .parse()?;
        let front_cfg = ateom_grpc::tls::client_config_plain(&ateom_grpc::tls::TlsFiles {
            cert: acert.clone().into(),
            key: akey.clone().into(),
            ca: ca_file.clone().into(),
        })?;
        let front_addr: std::net::SocketAddr = front.parse()?;
        let mut last = std::collections::HashMap::from([(tls_actor, 1u64), (local_actor, 1u64)]);
        // routed through the TLS front, routed to loopback, direct to the front, direct to
        // the TLS worker's loopback endpoint.
        let kinds = ["routed_tls_front", "routed_loopback", "direct_tls_front", "direct_loopback"];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        for round in 0..(warmup + samples) {
            for k in 0..kinds.len() {
                let kind = (k + round) % kinds.len();
                let actor = if kind == 1 { local_actor } else { tls_actor };
                let t = Instant::now();
                let (s, b) = match kind {
                    0 | 1 => get(router, actor, SUFFIX).await?,
                    2 => get_tls(front_addr, front_cfg.clone()).await?,
                    _ => get(loopback, actor, SUFFIX).await?,
                };
                let took = t.elapsed().as_secs_f64() * 1000.0;
                let c = parse_count(&b)?;
                let want = last[actor] + 1;
                if s != 200 || c.memory != want || c.file != want {
                    bail!("{}: {actor}: HTTP {s}, counter {c:?}, expected {want}", kinds[kind]);
                }
                last.insert(actor, want);
                if round >= warmup {
                    times[kind].push(took);
                }
            }
        }
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        let mut out = json!({
            "what": "GET / latency in ms, client connect to last body byte; fresh connections each time",
            "statistics": "p50 and p95 over samples_per_kind requests per kind, kinds interleaved (rotating order)",
            "samples_per_kind": samples,
            "warmup_per_kind": warmup,
            "tls_endpoint": tls_endpoint,
            "loopback_endpoint": local_endpoint,
        });
        for (kind, v) in kinds.iter().zip(&times) {
            out[format!("{kind}_p50_ms")] = json!(r3(percentile(v, 50.0)));
            out[format!("{kind}_p95_ms")] = json!(r3(percentile(v, 95.0)));
        }
        for (name, a, b) in [("routed", 0, 1), ("direct", 2, 3)] {
            for p in [50.0, 95.0] {
                let (x, base) = (percentile(&times[a], p), percentile(&times[b], p));
                if base <= 0.0 {
                    bail!("no {} samples", kinds[b]);
                }
                out[format!("{name}_ratio_p{p}")] = json!(r3(x / base));
            }
        }
        Ok(out)
    }
    .await;
    running.stop();
    println!("{}", result?);
    Ok(())
}
