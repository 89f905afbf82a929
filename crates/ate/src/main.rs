//! `ate`: the control plane (`ate serve`) and its command-line client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use ate::api::{ActorView, ApiClient, ApiLimits, WorkerView};
use ate::auth::TokenFiles;
use ate::controller::Config;
use ate::http::Limits as HttpLimits;
use ate::router::RouterConfig;
use ate::server::{AuthSetup, ServeOptions, start};
use ate_store::StoreConfig;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::json;

const LONG_ABOUT: &str = "\
ate is the control plane above ateom workers: actors multiplexed onto few workers, paused or
suspended while idle, resumed when traffic arrives, with their state intact.

  ate serve --data-dir /var/lib/ate --router 127.0.0.1:7080 --api 127.0.0.1:7070 &
  ate apply -f resources.yaml            # worker pools and templates (golden snapshots)
  ate create actor a1 --template counter
  curl -H 'Host: a1.actors.local' http://127.0.0.1:7080/     # resumes a1, forwards
  ate get actors; ate get workers; ate pause actor a1; ate suspend actor a1
  ate snapshots actor a1                 # every snapshot of a1 that exists, with ages
  ate status                             # which replica leads (several share --redis)
  ate certs init --dir D; ate certs issue --dir D --name host-a --san 10.0.0.5   # mutual TLS
  ate resume actor a1 --from-snapshot ID # explicitly restore that one (maybe older state)

The admin API needs a token. At first start `ate serve` writes <data dir>/tokens/admin (every
route) and <data dir>/tokens/read (GET routes only), mode 0600 in a 0700 directory. The client
verbs read the admin token from --token-file, else $ATE_TOKEN, else <data dir>/tokens/admin:

  ate --data-dir /var/lib/ate get actors          # as the user who runs ate serve
  ATE_TOKEN=$(cat read-token) ate get actors      # anyone given the read token

`ate demo --json` and `ate bench --json` bring up 3 local gVisor workers themselves.";

#[derive(Parser)]
#[command(name = "ate", version, about = "ate — control plane for ateom workers", long_about = LONG_ABOUT)]
struct Cli {
    /// Log filter (tracing env-filter syntax).
    #[arg(long, global = true, env = "ATE_LOG", default_value = "info")]
    log: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// The admin API of `ate serve` (where `serve` listens, and what the client verbs call).
    #[arg(long, global = true, env = "ATE_API", default_value = "127.0.0.1:7070", value_parser = parse_endpoint)]
    api: String,
    /// ate's private data directory: `ate serve` keeps its database (unless --db/--redis) and
    /// API tokens there; the client verbs read `<data dir>/tokens/admin` from it.
    #[arg(long, global = true, env = "ATE_DATA_DIR", default_value = "/var/lib/ate")]
    data_dir: PathBuf,
    /// The client verbs' token file (default: $ATE_TOKEN, else <data dir>/tokens/admin).
    #[arg(long, global = true, env = "ATE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// On an error, print its cause chain and backtrace too (otherwise only the message,
    /// whatever RUST_BACKTRACE says).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane: store, controller, router, admin API, metrics.
    Serve(Box<ServeArgs>),
    /// Apply resources (WorkerPool, ActorTemplate, Actor) from a YAML file.
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Create an actor (SUSPENDED on its template's golden snapshot).
    Create {
        #[command(subcommand)]
        what: CreateWhat,
    },
    /// Show actors, workers or templates.
    Get(GetArgs),
    /// List actors (same as `get actors`).
    List {
        #[arg(value_parser = ["actors", "actor"], default_value = "actors")]
        what: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Pause a RUNNING actor (LOCAL snapshot on its node).
    Pause(ActorArg),
    /// Suspend a RUNNING or PAUSED actor (DURABLE snapshot).
    Suspend(ActorArg),
    /// Resume an actor now (also retries a CRASHED one from its recorded snapshot).
    Resume(ResumeArgs),
    /// List an actor's snapshots that exist (local on each worker, durable, golden), newest
    /// first, with their ages: the candidates for `resume --from-snapshot`.
    Snapshots(ActorArg),
    /// Delete an actor and its durable snapshots.
    Delete(ActorArg),
    /// The replica that answers, its store, and which replica leads (holds the leadership
    /// lease: reconciles other replicas' intents, applies idle policies, builds golden
    /// snapshots, repairs workers).
    Status {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Make a CA and certificates for workers on other hosts (mutual TLS).
    #[command(long_about = ate::certs::LONG_ABOUT)]
    Certs(ate::certs::CertsArgs),
    /// 3 gVisor workers, 30 actors, traffic through the router through pause/suspend cycles.
    Demo(ate::demo::DemoArgs),
    /// Traffic-triggered resume latency and throughput vs direct ateom restores.
    Bench(ate::demo::BenchArgs),
    /// Print the Kubernetes CRDs (WorkerPool, ActorTemplate in ate.dev/v1) as YAML.
    Crds,
    /// Run the Kubernetes operator: each WorkerPool becomes worker pods shaped for its
    /// backend (`--dry-run -f pools.yaml` prints them without a cluster).
    Operator(ate_kube::cli::OperatorArgs),
    /// Label this Kubernetes node with what `ateom doctor` finds (ate.dev/kvm,
    /// ate.dev/firecracker, ...), for pools' node selection.
    NodeProbe(ate_kube::cli::NodeProbeArgs),
}

#[derive(Subcommand)]
enum CreateWhat {
    Actor {
        name: String,
        #[arg(long)]
        template: String,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Args)]
struct GetArgs {
    /// actors | actor NAME | workers | templates | pools
    what: String,
    name: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
struct ActorArg {
    #[arg(value_parser = ["actor"])]
    kind: String,
    name: String,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
struct ResumeArgs {
    #[arg(value_parser = ["actor"])]
    kind: String,
    name: String,
    /// Restore exactly this snapshot (see `ate snapshots actor NAME`), even if it is older
    /// than the actor's newest state. Without it, only the recorded snapshot is used.
    #[arg(long)]
    from_snapshot: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

#[derive(Args)]
struct ServeArgs {
    /// SQLite database file (the default store; default <data dir>/ate.db). Created 0600.
    #[arg(long, conflicts_with = "redis")]
    db: Option<PathBuf>,
    /// Redis/Valkey URL (redis://host:port/db) instead of SQLite, for several replicas.
    #[arg(long)]
    redis: Option<String>,
    /// Key prefix in Redis.
    #[arg(long, default_value = "ate:")]
    redis_prefix: String,
    /// The router's listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:7080", value_parser = parse_listen_endpoint)]
    router: SocketAddr,
    /// A separate Prometheus listener: `GET /metrics` only, without a token (the API serves
    /// /metrics as well, to a token).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// The admin token's file (must exist); default <data dir>/tokens/admin, created at
    /// first start.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// The read-only token's file (must exist); default <data dir>/tokens/read, created at
    /// first start.
    #[arg(long)]
    read_token_file: Option<PathBuf>,
    /// Serve the admin API without authentication. Refused unless --api is a loopback
    /// address; every local user can then apply resources and delete actors.
    #[arg(long)]
    insecure_no_auth: bool,
    /// Largest admin API request body (413 beyond).
    #[arg(long, default_value = "1MiB", value_parser = parse_bytes)]
    max_body: u64,
    /// A request's head must arrive within this long once it started (API, router, metrics).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Idle keep-alive connections (and clients that stop reading a response) are closed
    /// after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,
    /// Connections open at once, per listener.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Connections open at once from one peer address, per listener.
    #[arg(long, default_value_t = 128)]
    max_connections_per_client: usize,
    /// The router's deadline to connect to a workload.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    upstream_connect_timeout: Duration,
    /// The router's deadline for a workload's response head.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    upstream_timeout: Duration,
    /// A request body must arrive within this long at the API (408), and through the router
    /// a body that stalls this long ends the request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Largest request body through the router (413 beyond). Bodies are streamed.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    router_max_body: u64,
    /// Actors one peer address may wait on to resume at once (429 for another beyond).
    #[arg(long, default_value_t = 8)]
    max_resumes_per_client: usize,
    /// Snapshot signing key (repeatable; the format of `ateom snapshots keygen`). Every
    /// snapshot index ate reads for placement must verify with one of them.
    #[arg(long = "snapshot-key-file")]
    snapshot_key_files: Vec<PathBuf>,
    /// Actors answer as `<actor>.<suffix>`.
    #[arg(long, default_value = "actors.local")]
    suffix: String,
    /// Resources (YAML) to apply at start.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This replica's name in recorded intents (stable across restarts).
    #[arg(long, default_value = "ate")]
    replica_id: String,
    /// How long a request waits for its actor to resume.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    resume_timeout: Duration,
    /// How long a PAUSED actor waits for its node before using a durable copy elsewhere.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    local_wait: Duration,
    /// How long the worker holding an actor's newest state must have been silent (its host
    /// presumed lost) before `ate resume actor NAME --from-snapshot ID` may restore an older
    /// durable snapshot on another host. Actors of templates with `durability: both` or
    /// `durable` whose newest state is durable move on their own, without this wait.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    host_loss_grace: Duration,
    /// Do not pause idle actors to make room for a resume.
    #[arg(long)]
    no_evict: bool,
    /// This replica's liveness lease in the store lasts this long unless renewed (it is
    /// renewed every fifth of it). When a replica dies, the others take over its unfinished
    /// operations once its lease has expired.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    replica_ttl: Duration,
    /// The leadership lease (one replica reconciles other replicas' intents, applies idle
    /// policies, builds golden snapshots and repairs workers; every replica routes) lasts this
    /// long unless renewed; renewed every fifth of it. A leader that dies is replaced about
    /// this long after its last renewal; one that stops cleanly, at once. Default:
    /// --replica-ttl.
    #[arg(long, value_parser = parse_duration)]
    leader_ttl: Option<Duration>,
    /// Last resort: an operation of a replica that is alive (renews its lease) but has not
    /// finished it after this long is finished or rolled back here. It must exceed the longest
    /// checkpoint or restore.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    stale_op: Duration,
    /// Deadline of one call to a worker. A call past it is not a failure: its outcome is read
    /// from the worker's state.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    rpc_timeout: Duration,
    /// New placements avoid workers with less free snapshot space than this (e.g. 256MiB,
    /// 1GiB, 0 to disable). A PAUSED actor still goes back to its own node.
    #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
    min_snapshot_free: u64,
    #[command(flatten)]
    cluster: ate_kube::cli::ClusterWorkersArgs,
}

/// Sizes on the command line: `1048576`, `512KiB`, `256MiB`, `2GiB`, `1G` (powers of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 256MiB, 1GiB or 1048576"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(1 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Durations on the command line: `500ms`, `30s`, `2m`, `1h` (humantime's syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 2m, 1h: {e}"))
}

/// Addresses the way people write them: `HOST:PORT`, `http://HOST:PORT`, `http://HOST:PORT/`
/// (or `http://HOST`, port 80), as `HOST:PORT`. `https://` is refused with the reason (ate's
/// listeners speak plain HTTP), as are other schemes, paths, user info and a missing port.
pub fn parse_endpoint(s: &str) -> Result<String, String> {
    let t = s.trim();
    let (rest, scheme) = match t.split_once("://") {
        Some((scheme, rest)) => (rest, Some(scheme.to_ascii_lowercase())),
        None => (t, None),
    };
    match scheme.as_deref() {
        None | Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{t:?}: TLS is not supported yet (ate serves plain HTTP); use http://{} or put a \
                 TLS-terminating proxy in front",
                rest.trim_end_matches('/')
            ));
        }
        Some(other) => {
            return Err(format!("{t:?}: unsupported scheme {other:?}; write HOST:PORT or http://HOST:PORT"));
        }
    }
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains('/') {
        return Err(format!("{t:?}: give the address without a path, e.g. http://127.0.0.1:7070"));
    }
    if authority.contains('@') {
        return Err(format!("{t:?}: user info in the address is not supported"));
    }
    // The port follows the last ':' outside an IPv6 literal's brackets.
    let (host, port) = match authority.rfind(':') {
        Some(i) if !authority[i..].contains(']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    if host.is_empty() {
        return Err(format!("{t:?}: no host; write HOST:PORT, e.g. 127.0.0.1:7070"));
    }
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!("{t:?}: write an IPv6 address in brackets, e.g. [::1]:7070"));
    }
    let port: u16 = match (port, &scheme) {
        (Some(p), _) => p.parse().map_err(|_| format!("{t:?}: {p:?} is not a port number"))?,
        (None, Some(_)) => 80,
        (None, None) => return Err(format!("{t:?}: no port; write HOST:PORT, e.g. 127.0.0.1:7070")),
    };
    Ok(format!("{host}:{port}"))
}

/// A listen address written like [`parse_endpoint`] accepts, as an IP socket address.
pub fn parse_listen_endpoint(s: &str) -> Result<SocketAddr, String> {
    let e = parse_endpoint(s)?;
    e.parse().map_err(|_| format!("{s:?}: a listen address needs an IP address, e.g. 127.0.0.1:7080"))
}

#[cfg(test)]
mod endpoint_tests {
    use super::{parse_endpoint, parse_listen_endpoint};

    #[test]
    fn addresses_are_accepted_the_way_people_write_them() {
        for ok in
            ["127.0.0.1:7070", "http://127.0.0.1:7070", "http://127.0.0.1:7070/", " HTTP://127.0.0.1:7070 "]
        {
            assert_eq!(parse_endpoint(ok).unwrap(), "127.0.0.1:7070", "{ok}");
        }
        assert_eq!(parse_endpoint("localhost:7070").unwrap(), "localhost:7070");
        assert_eq!(parse_endpoint("http://localhost").unwrap(), "localhost:80");
        assert_eq!(parse_endpoint("http://[::1]:7070/").unwrap(), "[::1]:7070");
        assert_eq!(
            parse_listen_endpoint("http://127.0.0.1:7080").unwrap(),
            "127.0.0.1:7080".parse().unwrap()
        );
    }

    #[test]
    fn what_cannot_work_says_why() {
        let e = parse_endpoint("https://127.0.0.1:7070").unwrap_err();
        assert!(e.contains("TLS is not supported yet") && e.contains("http://127.0.0.1:7070"), "{e}");
        assert!(parse_endpoint("127.0.0.1").unwrap_err().contains("no port"));
        assert!(parse_endpoint("http://127.0.0.1:7070/v1").unwrap_err().contains("without a path"));
        assert!(parse_endpoint("ftp://x:1").unwrap_err().contains("unsupported scheme"));
        assert!(parse_endpoint("::1:7070").unwrap_err().contains("brackets"));
        assert!(parse_endpoint("http://127.0.0.1:99999").unwrap_err().contains("not a port"));
        assert!(parse_listen_endpoint("localhost:7080").unwrap_err().contains("needs an IP address"));
    }

    #[tokio::test]
    async fn the_client_reaches_an_api_given_as_a_url() {
        use clap::Parser;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let body = "[]";
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: application/json\r\n\r\n{body}",
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        let cli = super::Cli::try_parse_from([
            "ate",
            "--api",
            &format!("http://127.0.0.1:{port}/"),
            "get",
            "actors",
        ])
        .unwrap();
        assert_eq!(cli.api, format!("127.0.0.1:{port}"));
        let v =
            ate::api::ApiClient::new(&cli.api).call(hyper::Method::GET, "/v1/actors", None).await.unwrap();
        assert_eq!(v, serde_json::json!([]));
        let err = super::Cli::try_parse_from(["ate", "--api", "https://127.0.0.1:7070", "get", "actors"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("TLS is not supported yet"), "{err}");
    }
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> =
            cells.iter().enumerate().map(|(i, c)| format!("{c:<width$}", width = w[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn age(ms: u64) -> String {
    ate_core::snapshot::format_age(ate::controller::now_ms().saturating_sub(ms))
}

fn print_actors(actors: &[ActorView], output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(actors)?);
        return Ok(());
    }
    let rows = actors
        .iter()
        .map(|v| {
            let a = &v.actor;
            let snapshot = match (&a.local, &a.durable) {
                (Some(l), _) if l.snapshot_id.is_empty() => format!("local@{}:(unnamed)", l.worker),
                (Some(l), _) => format!("local@{}:{}", l.worker, l.snapshot_id),
                (None, Some(d)) => format!("{}:{}", d.tier.as_str(), d.snapshot_id),
                _ => "-".into(),
            };
            vec![
                a.name.clone(),
                a.template.clone(),
                a.state.to_string(),
                a.worker.clone().unwrap_or_else(|| "-".into()),
                snapshot,
                a.resumes.to_string(),
                age(a.state_since_ms),
                match &v.unavailable {
                    Some(n) => format!("unavailable: {n}"),
                    None => a.reason.clone().unwrap_or_default(),
                },
            ]
        })
        .collect();
    table(&["NAME", "TEMPLATE", "STATE", "WORKER", "SNAPSHOT", "RESUMES", "AGE", "REASON"], rows);
    Ok(())
}

fn print_snapshots(s: &ate::controller::ActorSnapshots, output: Output) -> Result<()> {
    use ate_core::snapshot::Place;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let rows = s
        .snapshots
        .iter()
        .map(|x| {
            let (tier, worker, state) = match &x.seen.place {
                Place::Local { worker, quarantined } => {
                    ("local", worker.clone(), if *quarantined { "quarantined" } else { "complete" })
                }
                Place::Durable => ("durable", "-".into(), "complete"),
                Place::Golden => ("golden", "-".into(), "complete"),
            };
            vec![
                x.seen.id.clone(),
                tier.into(),
                worker,
                state.into(),
                x.seen.created_ms.map_or_else(|| "?".into(), age),
                x.bytes.map_or_else(|| "-".into(), |b| format!("{:.1}M", b as f64 / 1048576.0)),
                x.referenced_as.join(","),
            ]
        })
        .collect();
    table(&["SNAPSHOT", "TIER", "WORKER", "STATE", "AGE", "SIZE", "RECORD"], rows);
    for u in &s.unreachable {
        eprintln!("not asked (snapshots there are missing from this list): {u}");
    }
    Ok(())
}

fn print_workers(ws: &[WorkerView], output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(ws)?);
        return Ok(());
    }
    let rows = ws
        .iter()
        .map(|w| {
            vec![
                w.name.clone(),
                w.pool.clone(),
                if w.healthy { "yes".into() } else { "no".into() },
                w.holder.clone().unwrap_or_else(|| "-".into()),
                if w.running.is_empty() { "-".into() } else { w.running.clone() },
                w.host_id.clone().unwrap_or_default(),
                w.address.clone().unwrap_or_else(|| w.socket.clone()),
                w.endpoint.clone().unwrap_or_default(),
                w.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(&["NAME", "POOL", "HEALTHY", "HOLDER", "RUNNING", "HOST", "ADDRESS", "ENDPOINT", "REASON"], rows);
    Ok(())
}

/// One host as `ate get hosts` shows it.
#[derive(serde::Serialize)]
struct HostRow {
    host: String,
    workers: usize,
    answering: usize,
    holding: usize,
    /// Every worker of it silent: for how long (ms).
    silent_ms: Option<u64>,
    worker_names: Vec<String>,
}

/// Workers grouped by the host they report: how many answer, how many hold an actor, and for
/// how long a silent host has not answered.
fn print_hosts(ws: &[WorkerView], output: Output) -> Result<()> {
    let mut hosts: std::collections::BTreeMap<String, Vec<&WorkerView>> = Default::default();
    for w in ws {
        let h = w.host_id.clone().filter(|h| !h.is_empty()).unwrap_or_else(|| "(unknown)".into());
        hosts.entry(h).or_default().push(w);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let rows: Vec<HostRow> = hosts
        .into_iter()
        .map(|(host, ws)| {
            let answering = ws.iter().filter(|w| w.healthy).count();
            // Silent since its most recently silent worker (the host is silent when all are).
            let silent_ms = (answering == 0)
                .then(|| ws.iter().filter_map(|w| w.unhealthy_since_ms).max())
                .flatten()
                .map(|since| now.saturating_sub(since));
            HostRow {
                host,
                workers: ws.len(),
                answering,
                holding: ws.iter().filter(|w| w.holder.is_some()).count(),
                silent_ms,
                worker_names: ws.iter().map(|w| w.name.clone()).collect(),
            }
        })
        .collect();
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let rows = rows
        .into_iter()
        .map(|r| {
            vec![
                r.host,
                r.workers.to_string(),
                r.answering.to_string(),
                r.holding.to_string(),
                r.silent_ms.map_or_else(|| "-".into(), ate_core::snapshot::format_age),
                r.worker_names.join(","),
            ]
        })
        .collect();
    table(&["HOST", "WORKERS", "ANSWERING", "HOLDING", "SILENT FOR", "WORKER NAMES"], rows);
    Ok(())
}

fn print_status(s: &ate::controller::LeaderStatus, output: Output) -> Result<()> {
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(s)?);
        return Ok(());
    }
    let leader = match &s.leader {
        Some(l) => {
            format!("{} (lease lasts {:.1} s more unless renewed)", l.holder, l.ttl_left_ms as f64 / 1000.0)
        }
        None => "nobody (a replica takes the lease within a fraction of a second)".into(),
    };
    println!("replica:  {}", s.replica);
    println!("store:    {}", s.store);
    println!("leader:   {leader}");
    match s.leading_since_ms {
        Some(ms) if s.leading => println!("leading:  yes, for {}", age(ms)),
        _ => println!("leading:  {}", if s.leading { "yes" } else { "no" }),
    }
    println!("lease:    {} (ttl {:.1} s)", s.lease, s.leader_ttl_ms as f64 / 1000.0);
    Ok(())
}

async fn serve(api: &str, data_dir: PathBuf, a: ServeArgs) -> Result<()> {
    let shared_store = a.redis.is_some();
    let store = match a.redis {
        Some(url) => StoreConfig::Redis { url, prefix: a.redis_prefix },
        None => StoreConfig::Sqlite(a.db.unwrap_or_else(|| data_dir.join("ate.db"))),
    };
    let resources = a.config.map(std::fs::read_to_string).transpose()?;
    let cluster = a.cluster.config()?;
    for k in &a.snapshot_key_files {
        // A key file is a secret: narrowed to 0600 if others may read it (logged).
        if let Err(e) = ate::auth::private_file(k) {
            tracing::warn!(error = %e, "snapshot key file");
        }
    }
    let signing = if a.snapshot_key_files.is_empty() {
        None
    } else {
        Some(ateom_store::SigningKeys::from_files(&a.snapshot_key_files).map_err(anyhow::Error::msg)?)
    };
    let http = HttpLimits {
        header_timeout: a.header_timeout,
        idle_timeout: a.idle_timeout,
        max_connections: a.max_connections,
        max_connections_per_client: a.max_connections_per_client,
        ..HttpLimits::default()
    };
    let auth = if a.insecure_no_auth {
        if a.admin_token_file.is_some() || a.read_token_file.is_some() {
            bail!("--insecure-no-auth and token files exclude each other");
        }
        AuthSetup::Insecure
    } else {
        AuthSetup::Tokens(TokenFiles {
            data_dir: data_dir.clone(),
            admin: a.admin_token_file,
            read: a.read_token_file,
        })
    };
    let opts = ServeOptions {
        store,
        router: a.router,
        api: api.parse().map_err(|e| anyhow::anyhow!("--api {api:?}: {e}"))?,
        metrics: a.metrics,
        data_dir: Some(data_dir),
        auth,
        api_limits: ApiLimits {
            max_body: usize::try_from(a.max_body).unwrap_or(usize::MAX),
            body_timeout: a.body_timeout,
        },
        http: http.clone(),
        router_cfg: RouterConfig {
            suffix: a.suffix,
            http,
            upstream_connect_timeout: a.upstream_connect_timeout,
            upstream_timeout: a.upstream_timeout,
            body_idle_timeout: a.body_timeout,
            max_body: a.router_max_body,
            max_resumes_per_client: a.max_resumes_per_client,
            ..RouterConfig::default()
        },
        controller: Config {
            owner: a.replica_id,
            resume_timeout: a.resume_timeout,
            local_wait: a.local_wait,
            host_loss_grace: a.host_loss_grace,
            evict: !a.no_evict,
            stale_op: a.stale_op,
            replica_ttl: a.replica_ttl,
            leader_ttl: a.leader_ttl.unwrap_or(a.replica_ttl),
            rpc_timeout: a.rpc_timeout,
            min_snapshot_free: a.min_snapshot_free,
            shared_store,
            signing,
            ..Config::default()
        },
        resources,
    };
    let running = start(opts).await?;
    if let Some(cfg) = cluster {
        // Workers from the cluster's pods: each change re-applies the pool's worker list.
        let ctl = running.ctl.clone();
        tokio::spawn(async move {
            let apply = |rs| {
                let ctl = ctl.clone();
                async move { ctl.apply(rs).await.map(|_| ()).map_err(|e| e.to_string()) }
            };
            if let Err(e) = ate_kube::cli::feed_workers(cfg, apply).await {
                tracing::error!(error = %e, "workers from the cluster");
            }
        });
    }
    // Machine-readable readiness line for scripts and tests.
    println!(
        "{}",
        json!({"router": running.router_addr.to_string(), "api": running.api_addr.to_string(),
               "metrics": running.metrics_addr.map(|m| m.to_string()),
               "admin_token_file": running.admin_token_file.as_ref().map(|p| p.display().to_string())})
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
    running.shutdown().await;
    Ok(())
}

/// The client verbs' token: `--token-file`, else `$ATE_TOKEN`, else `<data dir>/tokens/admin`
/// if it can be read (else none: the server then answers 401 with a hint).
fn client_token(token_file: Option<&std::path::Path>, data_dir: &std::path::Path) -> Result<Option<String>> {
    if let Some(f) = token_file {
        return Ok(Some(ate::auth::read_token(f)?));
    }
    if let Ok(t) = std::env::var("ATE_TOKEN") {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(Some(t));
        }
    }
    let default = ate::auth::default_token_path(data_dir, ate::auth::Role::Admin);
    Ok(ate::auth::read_token(&default).ok())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let debug = cli.debug;
    if debug {
        // SAFETY: still single-threaded (no runtime, no logging threads yet).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "1") };
    }
    init_logging(&cli.log, cli.log_format);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes on one line; anyhow's own report (what `main`
            // returning `Err` prints) adds a backtrace whenever RUST_BACKTRACE is set.
            eprintln!("error: {}", ateom_core::errtext::chain_line(e.as_ref()));
            if debug {
                eprintln!("\n{e:?}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let c = match &cli.cmd {
            Cmd::Serve(_)
            | Cmd::Demo(_)
            | Cmd::Bench(_)
            | Cmd::Certs(_)
            | Cmd::Crds
            | Cmd::Operator(_)
            | Cmd::NodeProbe(_) => ApiClient::new(&cli.api),
            _ => ApiClient::with_token(&cli.api, client_token(cli.token_file.as_deref(), &cli.data_dir)?),
        };
        match cli.cmd {
            Cmd::Serve(a) => serve(&cli.api, cli.data_dir, *a).await,
            Cmd::Apply { file, output } => {
                let text = std::fs::read_to_string(&file)?;
                let v = c.apply(&text).await?;
                if output == Output::Json {
                    println!("{v}");
                } else {
                    for l in v["applied"].as_array().into_iter().flatten() {
                        println!("{}", l.as_str().unwrap_or_default());
                    }
                }
                Ok(())
            }
            Cmd::Create { what: CreateWhat::Actor { name, template, output } } => {
                let v = c
                    .call(Method::POST, "/v1/actors", Some(json!({"name": name, "template": template})))
                    .await?;
                let a: ActorView = serde_json::from_value(v)?;
                print_actors(&[a], output)
            }
            Cmd::Get(g) => match (g.what.as_str(), g.name) {
                ("actor" | "actors", Some(name)) => print_actors(&[c.actor(&name).await?], g.output),
                ("actors" | "actor", None) => print_actors(&c.actors().await?, g.output),
                ("workers" | "worker", _) => print_workers(&c.workers().await?, g.output),
                ("hosts" | "host", _) => print_hosts(&c.workers().await?, g.output),
                ("templates" | "template", _) => {
                    let v = c.call(Method::GET, "/v1/templates", None).await?;
                    if g.output == Output::Json {
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else {
                        let rows = v
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|t| {
                                vec![
                                    t["name"].as_str().unwrap_or_default().to_owned(),
                                    t["spec"]["pool"].as_str().unwrap_or_default().to_owned(),
                                    t["golden"]["status"].as_str().unwrap_or_default().to_owned(),
                                    t["golden"]["snapshot_id"].as_str().unwrap_or("-").to_owned(),
                                    t["spec"]["snapshot"]["location"].as_str().unwrap_or_default().to_owned(),
                                ]
                            })
                            .collect();
                        table(&["NAME", "POOL", "GOLDEN", "SNAPSHOT", "LOCATION"], rows);
                    }
                    Ok(())
                }
                ("pools" | "pool", _) => {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&c.call(Method::GET, "/v1/pools", None).await?)?
                    );
                    Ok(())
                }
                (w, _) => {
                    bail!("unknown resource {w:?} (actors, actor NAME, workers, hosts, templates, pools)")
                }
            },
            Cmd::List { output, .. } => print_actors(&c.actors().await?, output),
            Cmd::Pause(a) => print_actors(&[c.action(&a.name, "pause").await?], a.output),
            Cmd::Suspend(a) => print_actors(&[c.action(&a.name, "suspend").await?], a.output),
            Cmd::Resume(a) => {
                let v = match &a.from_snapshot {
                    Some(id) => c.resume_from(&a.name, id).await?,
                    None => c.action(&a.name, "resume").await?,
                };
                print_actors(&[v], a.output)
            }
            Cmd::Snapshots(a) => print_snapshots(&c.snapshots(&a.name).await?, a.output),
            Cmd::Delete(a) => {
                let v = c.call(Method::DELETE, &format!("/v1/actors/{}", a.name), None).await?;
                if a.output == Output::Json {
                    println!("{v}");
                } else {
                    println!("actor/{} deleted", a.name);
                }
                Ok(())
            }
            Cmd::Status { output } => print_status(&c.status().await?, output),
            Cmd::Certs(a) => {
                for line in ate::certs::run(a)? {
                    println!("{line}");
                }
                Ok(())
            }
            Cmd::Demo(a) => ate::demo::demo(a).await,
            Cmd::Bench(a) => ate::demo::bench(a).await,
            Cmd::Crds => ate_kube::cli::crds(),
            Cmd::Operator(a) => ate_kube::cli::operator(a).await,
            Cmd::NodeProbe(a) => ate_kube::cli::node_probe(a).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_in_powers_of_1024_and_refuse_nonsense() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("256MiB"), Ok(256 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        for bad in ["", "MiB", "-1", "1.5GiB", "3 parsecs", "99999999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
