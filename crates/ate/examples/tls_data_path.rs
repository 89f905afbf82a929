//! What the data path to a worker on another host costs: request latency through a worker's
//! mutual-TLS front against the same request over loopback, in the same run, interleaved.
//!
//! ```sh
//! cargo build --release -p ateom
//! cargo run --release -p ate --example tls_data_path -- --samples 300 --warmup 30
//! ```
//!
//! Two real `ateom serve` gVisor workers (the `ateom` next to this binary, or `$ATEOM_BIN`),
//! each listening with `--listen-tcp` and `--forward-tls` (rcgen certificates); a control
//! plane in this process with its router; one counter actor RUNNING on each worker. The pool
//! names one worker by `address`/`forward` (the worker "on another host") and the other by
//! its socket; halfway through it is applied again with the roles swapped (the health check
//! moves the running actors' endpoints), so both routed kinds cover both sandboxes alike.
//! Four kinds of request, each a `GET /` on a fresh client connection timed from connect to
//! the last body byte:
//!
//! * `routed_tls_front`: through the router to the actor on the TLS worker (the router opens
//!   TCP + TLS with its client certificate to the front, which relays to the forwarder);
//! * `routed_loopback`: through the router to the actor on the socket worker (plain TCP to
//!   its loopback forwarder) — the baseline of the first;
//! * `direct_tls_front`: straight to the TLS worker's front with the client certificate;
//! * `direct_loopback`: straight to the TLS worker's loopback endpoint — the baseline of the
//!   third, on the same sandbox (what the front alone adds).
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

/// One worker: both ways in (socket and TLS), so either can be the "other host".
struct Worker {
    name: &'static str,
    socket: std::path::PathBuf,
    grpc: String,
    front: String,
    _proc: WorkerProc,
}

/// The pool with `tls` named by its address and the other by its socket.
fn pool(workers: &[Worker], tls: usize, ca: &str, cert: &str, key: &str) -> String {
    let mut y = format!(
        "kind: WorkerPool\nmetadata: {{ name: mixed }}\nspec:\n  tls: {{ ca: \"{ca}\", cert: \"{cert}\", key: \"{key}\" }}\n  workers:\n"
    );
    for (i, w) in workers.iter().enumerate() {
        if i == tls {
            y.push_str(&format!(
                "    - {{ name: {}, address: \"https://{}\", forward: \"{}\" }}\n",
                w.name, w.grpc, w.front
            ));
        } else {
            y.push_str(&format!("    - {{ name: {}, socket: \"{}\" }}\n", w.name, w.socket.display()));
        }
    }
    y
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

    // Certificates: one CA signs the workers (for 127.0.0.1) and the control plane.
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
    let (acert, akey) = leaf("ate", &["ate"])?;
    let ca_file = d.join("ca.crt");
    std::fs::write(&ca_file, &ca_pem)?;
    let ca_file = ca_file.display().to_string();

    let mut workers = Vec::new();
    for (i, name) in ["w1", "w2"].into_iter().enumerate() {
        let (wcert, wkey) = leaf(name, &["127.0.0.1"])?;
        let (grpc, front) = (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
        let args: Vec<String> = [
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
        let p = WorkerProc::start_with(&ateom, &d.join(name), name, &format!("node-{}", i + 1), &args)?;
        let until = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&grpc).is_err() {
            if Instant::now() > until {
                bail!("{name} does not listen on {grpc}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        workers.push(Worker { name, socket: p.socket.clone(), grpc, front, _proc: p });
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
    let template = format!(
        "---\nkind: ActorTemplate\nmetadata: {{ name: counter }}\nspec:\n  pool: mixed\n  containers:\n    - name: counter\n      image: \"{image}\"\n      readyz: {{ httpGet: {{ path: /readyz, port: 8080 }} }}\n  snapshot: {{ location: \"file://{}/bucket\" }}\n",
        d.display()
    );
    let front_cfg = ateom_grpc::tls::client_config_plain(&ateom_grpc::tls::TlsFiles {
        cert: acert.clone().into(),
        key: akey.clone().into(),
        ca: ca_file.clone().into(),
    })?;
    let result = async {
        let ctl = &running.ctl;
        let router = running.router_addr;
        ctl.apply(ate_core::parse_resources(&(pool(&workers, 1, &ca_file, &acert, &akey) + &template))?).await?;
        let mut actor_on = std::collections::HashMap::new();
        let mut last = std::collections::HashMap::new();
        for name in ["b1", "b2"] {
            ctl.create_actor(name, "counter", Duration::from_secs(120)).await?;
            let (s, b) = get(router, name, SUFFIX).await?;
            if s != 200 {
                bail!("{name}: HTTP {s}: {b}");
            }
            last.insert(name, parse_count(&b)?.memory);
            let a = ctl.actor(name).await?.value;
            actor_on.insert(a.worker.clone().context("running actor without a worker")?, name);
        }
        // routed through the TLS front, routed to loopback, direct to the front, direct to
        // the TLS worker's own loopback endpoint.
        let kinds = ["routed_tls_front", "routed_loopback", "direct_tls_front", "direct_loopback"];
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        // Two phases: each worker is the one on "another host" for half of the samples.
        for (phase, tls) in [1usize, 0].into_iter().enumerate() {
            if phase > 0 {
                ctl.apply(ate_core::parse_resources(&pool(&workers, tls, &ca_file, &acert, &akey))?).await?;
            }
            let (tw, lw) = (&workers[tls], &workers[1 - tls]);
            let (tls_actor, local_actor) = (actor_on[tw.name], actor_on[lw.name]);
            // The health check moves the actors' endpoints to the new routes.
            let until = Instant::now() + Duration::from_secs(30);
            loop {
                let (t, l) = (ctl.actor(tls_actor).await?.value, ctl.actor(local_actor).await?.value);
                let want = format!("tls://{}", tw.front);
                if t.endpoint.as_deref() == Some(want.as_str())
                    && l.endpoint.as_deref().is_some_and(|e| !e.starts_with("tls://"))
                {
                    break;
                }
                if Instant::now() > until {
                    bail!("phase {phase}: endpoints did not move: {:?} {:?}", t.endpoint, l.endpoint);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let loopback: std::net::SocketAddr = ate::worker::connect_lazy(&tw.socket)
                .get_capabilities(ateom_proto::GetCapabilitiesRequest {})
                .await?
                .into_inner()
                .host_endpoint
                .parse()?;
            let front_addr: std::net::SocketAddr = tw.front.parse()?;
            let n = samples.div_ceil(2);
            for round in 0..(warmup + n) {
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
        }
        let r3 = |v: f64| (v * 1000.0).round() / 1000.0;
        let mut out = json!({
            "what": "GET / latency in ms, client connect to last body byte; fresh connections each time",
            "statistics": "p50 and p95 per kind over samples_per_kind requests, half with each worker as the TLS one; kinds interleaved in a rotating order",
            "samples_per_kind": times[0].len(),
            "warmup_per_kind_and_phase": warmup,
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
