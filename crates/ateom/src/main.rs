//! `ateom`: the worker daemon (`ateom serve`) and its command-line client.

mod backends;
mod bench;
mod client;
mod demo;
mod doctor;
mod images;
mod microvm_demo;
mod snapshots;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

const ABOUT: &str = "ateom — a sandbox runtime for stateful, mostly idle workloads";

const LONG_ABOUT: &str = "\
ateom runs one sandboxed workload at a time and can run it, checkpoint it (memory + file
system) to a snapshot, and restore it later with its state intact.

A worker is `ateom serve`; everything else is a client of its unix socket:

  ateom serve --backend gvisor --socket /run/ateom.sock --state-dir /var/lib/ateom
  ateom run --socket /run/ateom.sock --actor a1 --image oci-layout:/images/counter:latest --port 8080
  curl http://$(ateom caps --socket /run/ateom.sock --json | jq -r .host_endpoint)/
  ateom checkpoint --socket /run/ateom.sock --actor a1
  ateom restore --socket /run/ateom.sock --actor a1

`ateom demo` does all of that in one command and prints what it measured.";

#[derive(Parser)]
#[command(name = "ateom", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// Log filter (tracing env-filter syntax), e.g. `info`, `ateom_runtime=debug`.
    #[arg(long, global = true, env = "ATEOM_LOG", default_value = "info")]
    log: String,
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// On an error, print its cause chain and backtrace too (otherwise only the message and
    /// what to do, whatever RUST_BACKTRACE says).
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker daemon: serve the Ateom gRPC service on a unix socket.
    Serve(ServeArgs),
    /// Start a workload on a worker and wait until it is ready.
    Run(client::RunArgs),
    /// Checkpoint the running workload into a snapshot and free the worker.
    Checkpoint(client::CheckpointArgs),
    /// Restore a workload from a snapshot and wait until it is ready.
    Restore(client::RestoreArgs),
    /// Remove an actor from a worker: stop it if it runs there (state discarded) and delete
    /// its local snapshots.
    Delete(client::DeleteArgs),
    /// Show the worker's backend, capabilities, host fingerprint and running actor.
    Caps(client::CapsArgs),
    /// Attach to the running microVM's serial console.
    Console(client::ConsoleArgs),
    /// Local and durable snapshots: list, push (LOCAL -> DURABLE), pull, delete, gc.
    #[command(subcommand)]
    Snapshots(snapshots::SnapshotsCommand),
    /// Build OCI image layouts (no Docker needed).
    #[command(subcommand)]
    Image(images::ImageCommand),
    /// Run the end-to-end demo: counter image -> run -> requests -> checkpoint -> restore.
    Demo(demo::DemoArgs),
    /// Benchmark run/checkpoint/restore against the same operations driven directly.
    Bench(demo::BenchArgs),
    /// Check what this host can run: runsc, /dev/kvm (hardware or kvm-pvm), QEMU, firecracker
    /// and its jailer, network namespaces, cgroups, userfaultfd, free disk, the guest files,
    /// and a --store. One line per check (ok / degraded / missing, and why); exit status 1 when
    /// the --backend (default gvisor) cannot run or the store is unusable.
    Doctor(doctor::DoctorArgs),
}

/// Which sandbox backend a worker uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// gVisor (runsc): userspace kernel, small portable snapshots.
    Gvisor,
    /// Firecracker microVMs: hardware isolation, full-memory snapshots (same host to restore).
    Firecracker,
    /// QEMU microvm machines: Linux guests with KVM, or with TCG where KVM cannot boot them.
    Qemu,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gvisor => "gvisor",
            Self::Firecracker => "firecracker",
            Self::Qemu => "qemu",
        }
    }
}

/// Options shared by everything that creates a worker (serve, demo, bench).
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Sandbox backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Gvisor)]
    pub backend: BackendKind,
    /// The runsc binary (gvisor backend).
    #[arg(long, env = "ATEOM_RUNSC", default_value = "/usr/bin/runsc")]
    pub runsc: PathBuf,
    /// runsc platform: ptrace works everywhere; kvm needs hardware virtualisation.
    #[arg(long, default_value = "ptrace")]
    pub platform: String,
    /// This worker's name in host fingerprints (default: from /etc/machine-id).
    #[arg(long)]
    pub host_id: Option<String>,
    /// How long Run/Restore wait for the workload's readiness probe.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub ready_timeout: Duration,
    /// Memory limit of a gVisor sandbox whose request sets none (0: none). Past it, the
    /// sandbox is killed (the host is not affected).
    #[arg(long, default_value_t = 2048)]
    pub default_memory_mib: u64,
    /// CPU limit (thousandths of a CPU) of a gVisor sandbox whose request sets none (0: none).
    #[arg(long, default_value_t = 2000)]
    pub default_cpu_milli: u32,
    /// Processes/threads limit of a gVisor sandbox whose request sets none (0: none).
    #[arg(long, default_value_t = 4096)]
    pub default_pids: u32,
    /// Raise runsc's log (kept in each sandbox's work directory, and with a failed sandbox
    /// under <state-dir>/failures/) from warnings to debug.
    #[arg(long)]
    pub debug_logs: bool,
    /// Local snapshots kept per actor besides those the control plane pins; older ones are
    /// pruned after every checkpoint.
    #[arg(long, default_value_t = 2)]
    pub keep_snapshots: usize,
    /// Free space (MiB) a checkpoint must leave in the state directory on top of the snapshot's
    /// expected size; below it the checkpoint is refused and the workload keeps running.
    #[arg(long = "min-free-mib", default_value_t = 64)]
    pub min_free_mib: u64,
    /// Sign every durable snapshot with this key and restore only durable snapshots signed
    /// with it (repeat for rotation: the first signs, any verifies). The key is a file of at
    /// least 32 random bytes kept outside the store (`ateom snapshots keygen` makes one).
    #[arg(long = "snapshot-key-file", env = "ATEOM_SNAPSHOT_KEY_FILE", value_delimiter = ',')]
    pub snapshot_key_files: Vec<PathBuf>,
    /// The firecracker binary (default: `firecracker` on PATH).
    #[arg(long, env = "ATEOM_FIRECRACKER_BIN", help_heading = "microVM backends")]
    pub firecracker: Option<PathBuf>,
    /// Default guest kernel (an uncompressed ELF vmlinux, or any ELF the VMM boots).
    #[arg(long, help_heading = "microVM backends")]
    pub kernel: Option<PathBuf>,
    /// Default root disk image (ext4); each workload gets a sparse copy of it.
    #[arg(long, help_heading = "microVM backends")]
    pub rootfs: Option<PathBuf>,
    /// Default kernel command line.
    #[arg(long, help_heading = "microVM backends")]
    pub kernel_cmdline: Option<String>,
    /// Default vCPUs per microVM.
    #[arg(long, default_value_t = 1, help_heading = "microVM backends")]
    pub vcpus: u8,
    /// Default guest memory.
    #[arg(long, default_value_t = 256, help_heading = "microVM backends")]
    pub memory_mib: u32,
    /// Default CPU template (firecracker: e.g. T2, C3; none by default).
    #[arg(long, help_heading = "microVM backends")]
    pub cpu_template: Option<String>,
    /// Guests without a network are ready when this appears on their serial console.
    #[arg(long, help_heading = "microVM backends")]
    pub ready_console_line: Option<String>,
    /// Run firecracker VMMs under this jailer binary (chroot, privilege drop, namespace,
    /// cgroups; needs a statically linked firecracker). Default: a `jailer` next to the
    /// firecracker binary, when that firecracker is statically linked (see --no-jailer).
    #[arg(long, env = "ATEOM_JAILER_BIN", help_heading = "microVM backends")]
    pub jailer: Option<PathBuf>,
    /// Run firecracker without its jailer even when one is there (not recommended: the VMM
    /// then runs as root, unconfined).
    #[arg(long, conflicts_with = "jailer", help_heading = "microVM backends")]
    pub no_jailer: bool,
    /// uid the jailed VMM runs as (default: an unprivileged uid of this worker's own).
    #[arg(long, help_heading = "microVM backends")]
    pub jailer_uid: Option<u32>,
    /// gid the jailed VMM runs as (default: the same number as the uid).
    #[arg(long, help_heading = "microVM backends")]
    pub jailer_gid: Option<u32>,
    /// cgroup version for the jailer's --cgroup settings (1 or 2).
    #[arg(long, help_heading = "microVM backends")]
    pub jailer_cgroup_version: Option<u8>,
    /// A cgroup setting for jailed VMMs, FILE=VALUE (repeatable), e.g. cpu.shares=512.
    #[arg(long = "jailer-cgroup", help_heading = "microVM backends")]
    pub jailer_cgroups: Vec<String>,
    /// The QEMU binary (qemu backend).
    #[arg(
        long,
        env = "ATEOM_QEMU_BIN",
        default_value = "qemu-system-x86_64",
        help_heading = "microVM backends"
    )]
    pub qemu: PathBuf,
    /// QEMU accelerator: auto (KVM when a stock Linux guest can boot with it, else TCG), kvm, tcg.
    #[arg(long, default_value = "auto", help_heading = "microVM backends")]
    pub accel: String,
    /// Run QEMU as root without its seccomp sandbox, uid drop and chroot (by default every
    /// QEMU is confined: `-sandbox on,spawn=deny,...`, `-runas` a uid of this worker's own,
    /// `-chroot` into its work directory).
    #[arg(long, help_heading = "microVM backends")]
    pub qemu_unconfined: bool,
    /// QEMU guest CPU model (under TCG the same model restores on any host).
    #[arg(long, default_value = "max", help_heading = "microVM backends")]
    pub qemu_cpu: String,
    /// The static guest init (ateom-init, built by scripts/build-init.sh) put into root disks
    /// built from container images.
    #[arg(long, env = "ATEOM_GUEST_INIT", help_heading = "microVM backends")]
    pub guest_init: Option<PathBuf>,
}

#[derive(Args)]
struct ServeArgs {
    /// Unix socket to serve on (created with mode 0600; a stale one is replaced).
    #[arg(long, env = "ATEOM_SOCKET")]
    socket: PathBuf,
    /// Directory for snapshots, caches and sandbox state. Leftovers of a crashed previous
    /// daemon here are cleaned up at start.
    #[arg(long, env = "ATEOM_STATE_DIR")]
    state_dir: PathBuf,
    /// Loopback address forwarded into the running workload (port 0 picks a free one, or the
    /// one an adopted workload was served on; GetCapabilities and every Run/Restore response
    /// report it).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// What happens to the running workload when the daemon stops (SIGTERM, Ctrl-C): `keep`
    /// leaves it running for the next `ateom serve` on this state directory to adopt;
    /// `stop` deletes it (its state is lost).
    #[arg(long, value_enum, default_value_t = OnExitArg::Keep)]
    on_exit: OnExitArg,
    /// Which layout of the `ateom.Ateom` gRPC service the socket speaks. Both layouts have the
    /// same service and method names but different field numbers, so a socket speaks one; a
    /// client of the other is refused with an error naming the layout this worker speaks.
    /// Pick the layout your control plane's client was built from.
    #[arg(long, value_enum, default_value_t = WireArg::SubstrateV1)]
    wire: WireArg,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    worker: WorkerArgs,
}

/// Serving other hosts: gRPC and the workload's endpoint over TCP, both with mutual TLS.
#[derive(Args, Clone, Debug)]
#[command(next_help_heading = "Other hosts (mutual TLS)")]
struct TlsArgs {
    /// Also serve gRPC on this TCP address (e.g. 169.254.10.2:7443), with mutual TLS: clients
    /// must present a certificate signed by --tls-ca.
    #[arg(long, requires_all = ["tls_cert", "tls_key", "tls_ca"])]
    listen_tcp: Option<SocketAddr>,
    /// Serve the running workload to other hosts on this TCP address, with the same mutual TLS
    /// (a router elsewhere reaches it here; the loopback endpoint stays for this host).
    #[arg(long, requires_all = ["tls_cert", "tls_key", "tls_ca"])]
    forward_tls: Option<SocketAddr>,
    /// This worker's certificate (PEM; its names must include the address clients use).
    #[arg(long, env = "ATEOM_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "ATEOM_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA that signs the clients allowed in (PEM).
    #[arg(long, env = "ATEOM_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WireArg {
    /// proto/ateom.proto: substrate's original layout (actor_template_namespace=1,
    /// actor_template_name=2, actor_id=3, runsc_path=4, spec=5, snapshot_uri_prefix=6) plus
    /// ateom's own fields and RPCs. For `ate`, the `ateom` CLI, and substrate control planes
    /// from before its renumbering.
    SubstrateV1,
    /// proto/substrate/v2/ateom.proto: substrate's renumbered layout (atespace=1, actor_name=2,
    /// actor_uid=3, runsc_path=6, spec=7, snapshot_uri=8; TerminateWorkload and the stats
    /// RPCs). For substrate control planes whose requests carry atespace and actor_uid. It has
    /// no image or runtime-config fields (the node agent's bundles are used); GetCapabilities,
    /// DeleteWorkload and the snapshot RPCs still answer, so `ateom caps`, `ateom delete` and
    /// `ateom snapshots` work against it.
    SubstrateV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OnExitArg {
    Keep,
    Stop,
}

/// Durations on the command line: `500ms`, `30s`, `2m`, `1h` (humantime's syntax).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 500ms, 30s, 2m, 1h: {e}"))
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn serve(args: ServeArgs) -> Result<()> {
    let runtime = backends::start_runtime(&args.worker, &args.state_dir, args.listen, true).await?;
    let runtime = std::sync::Arc::new(runtime);
    tokio::spawn(runtime.clone().supervise());
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
    };
    let wire = match args.wire {
        WireArg::SubstrateV1 => ateom_grpc::Wire::SubstrateV1,
        WireArg::SubstrateV2 => ateom_grpc::Wire::SubstrateV2,
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let mut tcp = None;
    let mut front = None;
    if let (Some(cert), Some(key), Some(ca)) = (&args.tls.tls_cert, &args.tls.tls_key, &args.tls.tls_ca) {
        let files = ateom_grpc::tls::TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() };
        let config = ateom_grpc::tls::server_config(&files)?;
        if let Some(addr) = args.tls.forward_tls {
            let front_config = ateom_grpc::tls::front_config(&files)?;
            let f = ateom_net::tls_front::TlsFront::start(addr, front_config, runtime.host_endpoint())
                .await
                .with_context(|| format!("listening on {addr} for the workload's endpoint"))?;
            tracing::info!(endpoint = %f.local_addr(), "the workload is served to other hosts with mutual TLS");
            front = Some(f);
        }
        if let Some(addr) = args.tls.listen_tcp {
            let mut stop = stop_rx.clone();
            let rt = runtime.clone();
            tcp = Some(tokio::spawn(async move {
                ateom_grpc::tls::serve_tcp(addr, rt, wire, config, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            }));
        }
    }
    let served = ateom_grpc::serve_unix_with(&args.socket, runtime.clone(), wire, shutdown).await;
    if let Some(t) = tcp {
        match t.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the TCP listener ended with an error"),
            Err(e) => tracing::warn!(error = %e, "the TCP listener task failed"),
            Ok(Ok(())) => {}
        }
    }
    drop(front);
    runtime
        .shutdown(match args.on_exit {
            OnExitArg::Keep => ateom_runtime::OnExit::Keep,
            OnExitArg::Stop => ateom_runtime::OnExit::Stop,
        })
        .await;
    served?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if cli.debug {
        // SAFETY: still single-threaded (no runtime, no logging threads yet).
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "1") };
    }
    init_logging(&cli.log, cli.log_format);
    ateom_runtime::faults::setup();
    let debug = cli.debug;
    let starts_worker = matches!(cli.cmd, Command::Serve(_) | Command::Demo(_) | Command::Bench(_));
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprint!("{}", error_report(&e, debug, starts_worker));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        match cli.cmd {
            Command::Serve(a) => serve(a).await,
            Command::Run(a) => client::run(a).await,
            Command::Checkpoint(a) => client::checkpoint(a).await,
            Command::Restore(a) => client::restore(a).await,
            Command::Delete(a) => client::delete(a).await,
            Command::Caps(a) => client::caps(a).await,
            Command::Console(a) => client::console(a).await,
            Command::Image(c) => images::main(c),
            Command::Snapshots(c) => snapshots::main(c).await,
            Command::Demo(a) => demo::demo(a).await,
            Command::Bench(a) => demo::bench(a).await,
            Command::Doctor(a) => doctor::main(a).await,
        }
    })
}

/// What a failed command prints: the error's whole chain on one line (`{:#}`), what to do
/// about it when we can tell, and only with `--debug` the cause list and backtrace. anyhow's
/// own report (what `main` returning `Err` prints) adds a backtrace whenever RUST_BACKTRACE
/// or RUST_LIB_BACKTRACE is set, which buries a user's mistake under frames.
pub fn error_report(e: &anyhow::Error, debug: bool, starts_worker: bool) -> String {
    let mut out = format!("error: {}\n", ateom_core::errtext::chain_line(e.as_ref()));
    if let Some(h) = hint(e, starts_worker) {
        out.push_str(&format!("hint: {h}\n"));
    }
    if debug {
        out.push_str(&format!("\n{e:?}\n"));
    }
    out
}

fn hint(e: &anyhow::Error, starts_worker: bool) -> Option<String> {
    let text = format!("{e:#}");
    let io_kind = e.chain().find_map(|c| c.downcast_ref::<std::io::Error>()).map(std::io::Error::kind);
    if io_kind == Some(std::io::ErrorKind::PermissionDenied) || text.contains("Operation not permitted") {
        return Some("ateom needs root for network namespaces and sandboxes: run it as root".into());
    }
    if starts_worker && !text.contains("ateom doctor") {
        return Some("`ateom doctor` shows what this host can run and what is missing".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_is_well_formed_and_its_defaults_parse() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        // Defaults are parsed when the flag is absent: a bad default only shows up here.
        Cli::try_parse_from(["ateom", "snapshots", "gc", "--store", "file:///x"]).unwrap();
        Cli::try_parse_from(["ateom", "serve", "--socket", "/s", "--state-dir", "/d"]).unwrap();
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("soon").is_err());
        Cli::try_parse_from(["ateom", "doctor", "--json", "--store", "file:///x", "--backend", "qemu"])
            .unwrap();
    }

    #[test]
    fn errors_print_their_chain_and_a_hint_but_no_backtrace() {
        let e = anyhow::anyhow!(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
            .context("creating /run/netns/x");
        let r = error_report(&e, false, true);
        assert!(r.starts_with("error: creating /run/netns/x: permission denied\n"), "{r}");
        assert!(r.contains("hint: ateom needs root"), "{r}");
        assert!(!r.contains("backtrace") && !r.contains("Caused by"), "{r}");
        let r = error_report(&anyhow::anyhow!("no such actor"), false, false);
        assert_eq!(r, "error: no such actor\n");
        let r = error_report(&anyhow::anyhow!("the gvisor backend cannot run"), false, true);
        assert!(r.contains("hint: `ateom doctor`"), "{r}");
        // A cause that prints its own source is not repeated.
        #[derive(Debug)]
        struct Wraps(std::io::Error);
        impl std::fmt::Display for Wraps {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "connect: {}", self.0)
            }
        }
        impl std::error::Error for Wraps {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let wrapped = anyhow::Error::from(Wraps(std::io::ErrorKind::NotFound.into())).context("caps");
        assert_eq!(error_report(&wrapped, false, false), "error: caps: connect: entity not found\n");
        let r = error_report(&anyhow::anyhow!("inner").context("outer"), true, false);
        assert!(r.contains("Caused by"), "--debug shows the cause list: {r}");
    }
}
