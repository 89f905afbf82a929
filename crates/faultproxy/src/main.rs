//! `ateom-faultproxy`: the fault-injecting proxy as a process (see the library docs).
//!
//! ```text
//! ateom-faultproxy --upstream http://127.0.0.1:9000 [--listen 127.0.0.1:0] [--control 127.0.0.1:0] [--rules FILE]
//! ```
//! Prints `LISTEN=<addr>` and `CONTROL=<addr>` (the ports actually bound) on stdout once both
//! accept connections, then serves until SIGINT/SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser)]
#[command(name = "ateom-faultproxy", about = "Fault-injecting HTTP proxy for tests (loopback only)")]
struct Args {
    /// Upstream server, http://127.0.0.1:PORT (loopback only).
    #[arg(long)]
    upstream: String,
    /// Address the proxy listens on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address of the control endpoint (PUT/GET/DELETE /rules, GET /stats).
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Rules to start with (JSON, as for PUT /rules).
    #[arg(long)]
    rules: Option<std::path::PathBuf>,
}

fn upstream_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.strip_prefix("http://").context("--upstream must be http://HOST:PORT")?;
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('/') {
        bail!("--upstream takes no path: {url}");
    }
    let hostport = hostport.replace("localhost", "127.0.0.1");
    hostport.parse().with_context(|| format!("--upstream {url}: not HOST:PORT with an IP address"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let upstream = upstream_addr(&args.upstream)?;
    let running =
        faultproxy::start(faultproxy::Config { listen: args.listen, control: args.control, upstream })
            .await?;
    if let Some(path) = &args.rules {
        let json = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        running.state.set_rules(
            faultproxy::rules::parse(&json).with_context(|| format!("rules in {}", path.display()))?,
        );
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTEN={}\nCONTROL={}", running.listen, running.control)?;
    out.flush()?;
    drop(out);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}
