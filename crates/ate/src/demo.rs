//! `ate demo` and `ate bench`: a control plane in this process, 3 real `ateom` gVisor
//! workers as child processes, 30 counter actors, traffic through the router only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ate_core::ActorState;
use ate_store::StoreConfig;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Request, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::cluster::{WorkerProc, ateom_bin, counter_resources, pack_counter};
use crate::controller::{Config, Controller};
use crate::metrics::percentile;
use crate::server::{Running, ServeOptions, start};
use crate::worker::Workers;

pub const SUFFIX: &str = "actors.local";

#[derive(Args, Clone)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 30)]
    pub actors: usize,
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Traffic rounds (each followed by a pause of every running actor and a suspend of a
    /// third of them).
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// Use this Redis instead of a temporary SQLite file.
    #[arg(long)]
    pub redis: Option<String>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct BenchArgs {
    #[arg(long, default_value_t = 30)]
    pub actors: usize,
    #[arg(long, default_value_t = 3)]
    pub workers: usize,
    /// Measured traffic-triggered resumes per tier.
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Requests of the concurrent phase.
    #[arg(long, default_value_t = 90)]
    pub requests: usize,
    #[arg(long, default_value_t = 6)]
    pub concurrency: usize,
    #[arg(long)]
    pub redis: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// One answer of the counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Count {
    pub memory: u64,
    pub file: u64,
}

/// `GET /` through the router with `Host: <actor>.<suffix>`; returns status and body.
pub async fn get(router: SocketAddr, actor: &str, suffix: &str) -> Result<(u16, String)> {
    let stream =
        tokio::net::TcpStream::connect(router).await.with_context(|| format!("connecting {router}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .uri("/")
        .header(header::HOST, format!("{actor}.{suffix}"))
        .header(header::CONNECTION, "close")
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(90), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("no answer from the router in 90 s"))??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Parses a counter answer.
pub fn parse_count(body: &str) -> Result<Count> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("counter body {body:?}"))?;
    let n = |k: &str| v[k].as_u64().ok_or_else(|| anyhow!("counter body lacks {k}: {body}"));
    Ok(Count { memory: n("memory_count")?, file: n("file_count")? })
}

/// Workers + control plane + counter template, all local.
pub struct Lab {
    pub workers: Vec<WorkerProc>,
    pub running: Option<Running>,
    pub image: String,
    pub bucket: String,
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub async fn start(n_workers: usize, redis: Option<String>, ctl: Config) -> Result<Lab> {
        if let Some(why) = crate::cluster::gvisor_unavailable() {
            bail!("cannot run gVisor workers here: {why}");
        }
        let dir = tempfile::Builder::new().prefix("ate-lab-").tempdir()?;
        let ateom = ateom_bin()?;
        let image = pack_counter(&ateom, &dir.path().join("counter-image"))?;
        let mut workers = Vec::new();
        for i in 1..=n_workers {
            let d = dir.path().join(format!("w{i}"));
            workers.push(WorkerProc::start(&ateom, &d, &format!("w{i}"), &format!("node-{i}"))?);
        }
        let bucket = format!("file://{}/bucket/counter", dir.path().display());
        let store = match redis {
            Some(url) => StoreConfig::Redis { url, prefix: format!("ate-lab-{}:", std::process::id()) },
            None => StoreConfig::Sqlite(dir.path().join("ate.db")),
        };
        let running = start(ServeOptions {
            store,
            router: "127.0.0.1:0".parse()?,
            api: "127.0.0.1:0".parse()?,
            metrics: None,
            controller: ctl,
            resources: None,
            data_dir: Some(dir.path().join("data")),
            auth: crate::server::AuthSetup::Tokens(crate::auth::TokenFiles {
                data_dir: dir.path().join("data"),
                admin: None,
                read: None,
            }),
            api_limits: Default::default(),
            http: Default::default(),
            // One local client drives all the traffic here: no per-client resume cap.
            router_cfg: crate::router::RouterConfig {
                suffix: SUFFIX.into(),
                max_resumes_per_client: usize::MAX,
                ..Default::default()
            },
        })
        .await?;
        let refs: Vec<&WorkerProc> = workers.iter().collect();
        let yaml = counter_resources("gvisor", &refs, "counter", &image, &bucket, None);
        running.ctl.apply(ate_core::parse_resources(&yaml)?).await?;
        Ok(Lab { workers, running: Some(running), image, bucket, dir })
    }

    pub fn ctl(&self) -> &Arc<Controller> {
        &self.running.as_ref().expect("control plane running").ctl
    }

    pub fn router(&self) -> SocketAddr {
        self.running.as_ref().expect("control plane running").router_addr
    }

    pub async fn create(&self, n: usize) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for i in 0..n {
            let name = format!("a{i:02}");
            self.ctl().create_actor(&name, "counter", Duration::from_secs(120)).await?;
            names.push(name);
        }
        Ok(names)
    }

    /// Pauses every RUNNING actor.
    pub async fn pause_all(&self) -> Result<()> {
        for a in self.ctl().actors().await? {
            if a.value.state == ActorState::Running {
                self.ctl().pause(&a.value.name).await?;
            }
        }
        Ok(())
    }
}

fn ms(d: f64) -> f64 {
    (d * 1000.0 * 100.0).round() / 100.0
}

/// Sends one request per actor (bounded concurrency) and checks each counter continues.
async fn traffic_round(
    router: SocketAddr,
    names: &[String],
    expected: &mut HashMap<String, u64>,
    concurrency: usize,
) -> Result<(u64, u64, Vec<f64>)> {
    use futures::StreamExt;
    let mut order = names.to_vec();
    {
        use rand::seq::SliceRandom;
        order.shuffle(&mut rand::rng());
    }
    type Answer = (String, Result<(u16, String)>, f64);
    let results: Vec<Answer> = futures::stream::iter(order)
        .map(|n| async move {
            let t = Instant::now();
            let r = get(router, &n, SUFFIX).await;
            (n, r, t.elapsed().as_secs_f64())
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let (mut requests, mut errors, mut lat) = (0, 0, Vec::new());
    for (n, r, took) in results {
        requests += 1;
        lat.push(took);
        let want = expected.get(&n).copied().unwrap_or(0) + 1;
        match r.and_then(|(s, b)| if s == 200 { parse_count(&b) } else { Err(anyhow!("HTTP {s}: {b}")) }) {
            Ok(c) if c.memory == want && c.file == want => {
                expected.insert(n, want);
            }
            Ok(c) => {
                tracing::warn!(actor = %n, want, got = ?c, "continuity error");
                errors += 1;
                expected.insert(n, c.memory);
            }
            Err(e) => {
                tracing::warn!(actor = %n, error = %e, "request failed");
                errors += 1;
            }
        }
    }
    Ok((requests, errors, lat))
}

/// Direct ateom restores (restore → first answer) of the actors' local snapshots on their
/// nodes, with no control plane in the way: the baseline.
async fn baseline(
    lab: &Lab,
    t: &ate_core::store::TemplateRecord,
    actors: &[(String, String, String)],
) -> Result<Vec<f64>> {
    let workers = Workers::default();
    let mut out = Vec::new();
    for (actor, worker, id) in actors {
        let w = lab.workers.iter().find(|w| &w.name == worker).ok_or_else(|| anyhow!("worker {worker}"))?;
        let target = ate_core::resource::WorkerTarget::Socket(w.socket.display().to_string());
        let start = Instant::now();
        let keep = [id.clone()];
        let r = workers.restore(worker, &target, t, actor, None, id, &keep, Duration::from_secs(60)).await?;
        let (s, b) = get_direct(&r.endpoint).await?;
        out.push(start.elapsed().as_secs_f64());
        if s != 200 {
            bail!("baseline {actor}: HTTP {s}: {b}");
        }
        workers.checkpoint(worker, &target, t, actor, None, None, &keep, Duration::from_secs(60)).await?;
    }
    Ok(out)
}

async fn get_direct(endpoint: &str) -> Result<(u16, String)> {
    let addr: SocketAddr = endpoint.parse()?;
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::builder()
        .uri("/")
        .header(header::HOST, endpoint)
        .header(header::CONNECTION, "close")
        .body(Full::new(Bytes::new()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Paused actors, the node holding their snapshot, and its id.
async fn paused_on(lab: &Lab) -> Result<Vec<(String, String, String)>> {
    Ok(lab
        .ctl()
        .actors()
        .await?
        .into_iter()
        .filter(|a| a.value.state == ActorState::Paused)
        .filter_map(|a| a.value.local.map(|l| (a.value.name, l.worker, l.snapshot_id)))
        .collect())
}

pub async fn demo(a: DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut lab = Lab::start(a.workers, a.redis.clone(), Config::default()).await?;
    let result = run_demo(&lab, &a).await;
    // Baseline: the same kind of snapshots restored directly, without the control plane.
    let out = match result {
        Ok(mut out) => {
            let paused = paused_on(&lab).await?;
            let t = lab.ctl().template("counter").await?.value;
            if let Some(r) = lab.running.take() {
                r.stop();
            }
            let sample: Vec<_> = paused.into_iter().take(10).collect();
            let base = baseline(&lab, &t, &sample).await?;
            out["baseline_restore_p50_ms"] = json!(ms(percentile(&base, 50.0)));
            out["baseline_samples"] = json!(base.len());
            out["overhead_ratio_p50"] = json!(
                (out["resume_p50_ms"].as_f64().unwrap_or(0.0) / ms(percentile(&base, 50.0)).max(0.001)
                    * 100.0)
                    .round()
                    / 100.0
            );
            out["wall_s"] = json!((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
            out
        }
        Err(e) => {
            if let Some(r) = lab.running.take() {
                r.stop();
            }
            return Err(e);
        }
    };
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    if out["continuity_errors"].as_u64() != Some(0) || out["crashed"].as_u64() != Some(0) {
        bail!("the demo saw continuity errors or crashed actors");
    }
    Ok(())
}

async fn run_demo(lab: &Lab, a: &DemoArgs) -> Result<Value> {
    let names = lab.create(a.actors).await?;
    let golden = lab.ctl().template("counter").await?.value.golden;
    let mut expected: HashMap<String, u64> = HashMap::new();
    let (mut requests, mut errors) = (0, 0);
    let mut latencies = Vec::new();
    for round in 0..a.rounds {
        let (r, e, lat) = traffic_round(lab.router(), &names, &mut expected, a.workers * 2).await?;
        requests += r;
        errors += e;
        latencies.extend(lat);
        // Pause everything that runs; suspend a third of the actors (a different third each
        // round), so the next round resumes from every tier.
        lab.pause_all().await?;
        for (i, n) in names.iter().enumerate() {
            if (i + round) % 3 == 0 {
                let _ = lab.ctl().suspend(n).await;
            }
        }
        tracing::info!(round, requests, errors, "round done");
    }
    let samples = lab.ctl().metrics.resume_samples();
    let all: Vec<f64> = samples.values().flatten().copied().collect();
    let tier = |t: &str| samples.get(t).map(|v| ms(percentile(v, 50.0))).unwrap_or(0.0);
    let actors = lab.ctl().actors().await?;
    let crashed = actors.iter().filter(|x| x.value.state == ActorState::Crashed).count();
    Ok(json!({
        "actors": names.len(),
        "workers": a.workers,
        "store": lab.ctl().store_backend(),
        "rounds": a.rounds,
        "requests": requests,
        "continuity_errors": errors,
        "crashed": crashed,
        "resumes": all.len(),
        "resume_p50_ms": ms(percentile(&all, 50.0)),
        "resume_p95_ms": ms(percentile(&all, 95.0)),
        "resume_p50_ms_by_tier": {"local": tier("local"), "durable": tier("durable"), "golden": tier("golden")},
        "resumes_by_tier": samples.iter().map(|(k, v)| (k.to_string(), json!(v.len()))).collect::<serde_json::Map<_, _>>(),
        "request_p50_ms": ms(percentile(&latencies, 50.0)),
        "request_p95_ms": ms(percentile(&latencies, 95.0)),
        "evictions": lab.ctl().metrics.counter("evictions"),
        "pauses": lab.ctl().metrics.counter("pauses"),
        "suspends": lab.ctl().metrics.counter("suspends"),
        "golden_snapshot": golden.snapshot_id,
        "golden_boot_ms": golden.boot_ms,
    }))
}

pub async fn bench(a: BenchArgs) -> Result<()> {
    let mut lab = Lab::start(a.workers, a.redis.clone(), Config::default()).await?;
    let r = run_bench(&mut lab, &a).await;
    if let Some(r) = lab.running.take() {
        r.stop();
    }
    let out = r?;
    if a.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}

async fn run_bench(lab: &mut Lab, a: &BenchArgs) -> Result<Value> {
    let names = lab.create(a.actors).await?;
    let mut expected = HashMap::new();
    let (_, e0, _) = traffic_round(lab.router(), &names, &mut expected, a.workers).await?;
    lab.pause_all().await?;
    // 1. Traffic-triggered resumes, one at a time, with the actor's node free: what the
    //    control plane adds to a restore.
    let mut local = Vec::new();
    let mut measured = Vec::new();
    for (actor, worker, _) in paused_on(lab).await?.into_iter().cycle().take(a.samples) {
        let t = Instant::now();
        let (s, b) = get(lab.router(), &actor, SUFFIX).await?;
        local.push(t.elapsed().as_secs_f64());
        if s != 200 {
            bail!("{actor}: HTTP {s}: {b}");
        }
        lab.ctl().pause(&actor).await?;
        measured.push((actor, worker));
    }
    // 2. The same from DURABLE snapshots (suspended; the node keeps a copy, so placement
    //    sends it back there and nothing is pulled).
    let mut durable = Vec::new();
    let durable_names: Vec<String> = names.iter().take(a.samples.min(names.len())).cloned().collect();
    for n in &durable_names {
        lab.ctl().suspend(n).await?;
    }
    for n in &durable_names {
        let t = Instant::now();
        let (s, b) = get(lab.router(), n, SUFFIX).await?;
        durable.push(t.elapsed().as_secs_f64());
        if s != 200 {
            bail!("{n}: HTTP {s}: {b}");
        }
        lab.ctl().pause(n).await?;
    }
    // 3. Throughput at 10x oversubscription: concurrent clients, random actors.
    let before = lab.ctl().metrics.resume_samples().values().map(Vec::len).sum::<usize>();
    let ev0 = lab.ctl().metrics.counter("evictions");
    let t = Instant::now();
    let router = lab.router();
    let picks: Vec<String> = {
        use rand::seq::IndexedRandom;
        let mut rng = rand::rng();
        (0..a.requests).map(|_| names.choose(&mut rng).expect("actors").clone()).collect()
    };
    use futures::StreamExt;
    let conc: Vec<(f64, bool)> = futures::stream::iter(picks)
        .map(|n| async move {
            let t = Instant::now();
            let ok = matches!(get(router, &n, SUFFIX).await, Ok((200, _)));
            (t.elapsed().as_secs_f64(), ok)
        })
        .buffer_unordered(a.concurrency)
        .collect()
        .await;
    let wall = t.elapsed().as_secs_f64();
    let resumes = lab.ctl().metrics.resume_samples().values().map(Vec::len).sum::<usize>() - before;
    let conc_lat: Vec<f64> = conc.iter().map(|x| x.0).collect();
    let failed = conc.iter().filter(|x| !x.1).count();
    let evictions = lab.ctl().metrics.counter("evictions") - ev0;
    lab.pause_all().await?;
    // 4. Baseline: the same snapshots restored directly through ateom (restore → first answer).
    let paused = paused_on(lab).await?;
    let t = lab.ctl().template("counter").await?.value;
    let store = lab.ctl().store_backend();
    if let Some(r) = lab.running.take() {
        r.stop();
    }
    let sample: Vec<_> = paused.into_iter().take(a.samples).collect();
    let base = baseline(lab, &t, &sample).await?;
    let b50 = percentile(&base, 50.0);
    Ok(json!({
        "actors": names.len(),
        "workers": a.workers,
        "oversubscription": names.len() as f64 / a.workers as f64,
        "warmup_errors": e0,
        "resume_p50_ms": ms(percentile(&local, 50.0)),
        "resume_p95_ms": ms(percentile(&local, 95.0)),
        "resume_p99_ms": ms(percentile(&local, 99.0)),
        "durable_resume_p50_ms": ms(percentile(&durable, 50.0)),
        "durable_resume_p95_ms": ms(percentile(&durable, 95.0)),
        "baseline_restore_p50_ms": ms(b50),
        "baseline_restore_p95_ms": ms(percentile(&base, 95.0)),
        "overhead_ratio_p50": ((percentile(&local, 50.0) / b50.max(1e-6)) * 100.0).round() / 100.0,
        "concurrent": {
            "requests": conc.len(),
            "concurrency": a.concurrency,
            "failed": failed,
            "resumes": resumes,
            "evictions": evictions,
            "wall_s": (wall * 100.0).round() / 100.0,
            "resumes_per_second": ((resumes as f64 / wall) * 100.0).round() / 100.0,
            "request_p50_ms": ms(percentile(&conc_lat, 50.0)),
            "request_p95_ms": ms(percentile(&conc_lat, 95.0)),
            "request_p99_ms": ms(percentile(&conc_lat, 99.0)),
        },
        "samples": local.len(),
        "baseline_samples": base.len(),
        "store": store,
    }))
}
