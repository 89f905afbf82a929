//! `ateom-init` as the real PID 1 of a Linux guest: the static binary (scripts/build-init.sh)
//! in an ext4 root made with `mkfs.ext4 -d` (busybox-static as the workload), booted with
//! ateom's guest kernel (scripts/build-guest-kernel.sh) under
//! `qemu-system-x86_64 -M microvm -accel tcg`, its virtio-net on a tap inside a network
//! namespace this test creates (host side 169.254.0.1/30, guest 169.254.0.2/30).
//!
//! * `control_channel_sets_the_clock_and_runs_the_workload_as_configured`: the workload runs
//!   with the config's uid/gid/groups/cwd/env/rlimit/umask and the hostname, its output is
//!   on the console; from inside the namespace the control channel answers Hello and Ping,
//!   refuses garbage without dying, and a Sync one day ahead moves the guest clock (seen by
//!   the next Hello and by the workload's own `date`).
//! * `sigterm_to_pid1_is_forwarded_orphans_are_reaped_and_the_vm_exits`: orphans reparented
//!   to PID 1 leave no zombie; SIGTERM to PID 1 reaches the workload, whose exit powers the
//!   VM off (QEMU exits by itself).
//! * `a_workload_ignoring_sigterm_is_killed_after_the_grace_period`: `ateom.grace_ms`.
//! * `a_bad_config_is_reported_and_the_vm_still_exits`: fatal errors end the VM too.
//!
//! Skips (loudly: `SKIPPED <test>: <reason>`) only when qemu-system-x86_64 or the guest
//! kernel is unavailable, or when not run as root (namespaces, tap).
//! Env: ATEOM_INIT_BIN (use this static ateom-init instead of building it),
//! ATEOM_GUEST_KERNEL (use this vmlinux instead of scripts/build-guest-kernel.sh).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use ateom_init::config::{Process, Rlimit, User, WorkloadConfig};
use ateom_init::protocol::{self, Entropy, ErrorKind, ProtocolError, Request, Response};
use ateom_init::{BootParams, DEFAULT_CTL_PORT};

const GUEST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("workspace root")
}

struct TestEnv {
    init_bin: PathBuf,
    kernel: PathBuf,
    busybox: PathBuf,
    tsc_khz: Option<u64>,
}

/// Builds (once per test binary) what every boot needs; `Err` is a skip reason.
fn test_env() -> Result<&'static TestEnv, String> {
    static ENV: OnceLock<Result<TestEnv, String>> = OnceLock::new();
    ENV.get_or_init(prepare_env).as_ref().map_err(Clone::clone)
}

fn prepare_env() -> Result<TestEnv, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (network namespaces and a tap device)".into());
    }
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        return Err("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)".into());
    }
    let root = workspace_root();
    let kernel = match std::env::var_os("ATEOM_GUEST_KERNEL") {
        Some(path) => PathBuf::from(path),
        None => {
            eprintln!("qemu_guest: scripts/build-guest-kernel.sh (cached after the first ~6-7 min build)");
            let out = Command::new(root.join("scripts/build-guest-kernel.sh"))
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run scripts/build-guest-kernel.sh: {e}"))?;
            if !out.status.success() {
                return Err(format!("the guest kernel build failed ({})", out.status));
            }
            last_line(&out.stdout).ok_or("scripts/build-guest-kernel.sh printed no path")?
        }
    };
    if !kernel.is_file() {
        return Err(format!("no guest kernel at {}", kernel.display()));
    }
    // From here on a failure is a real failure, not a skip.
    let init_bin = match std::env::var_os("ATEOM_INIT_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let out = Command::new(root.join("scripts/build-init.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("running scripts/build-init.sh");
            assert!(out.status.success(), "scripts/build-init.sh failed: {}", out.status);
            last_line(&out.stdout).expect("scripts/build-init.sh printed no path")
        }
    };
    let busybox = PathBuf::from("/bin/busybox");
    let file = Command::new("file").arg("-L").arg(&busybox).output().expect("running file(1)");
    assert!(
        String::from_utf8_lossy(&file.stdout).contains("statically linked"),
        "{} is not a static busybox: apt-get install busybox-static",
        busybox.display()
    );
    Ok(TestEnv { init_bin, kernel, busybox, tsc_khz: host_tsc_khz() })
}

fn last_line(bytes: &[u8]) -> Option<PathBuf> {
    String::from_utf8_lossy(bytes).lines().last().map(|l| PathBuf::from(l.trim()))
}

/// TCG's guest TSC runs at the host TSC rate: pass it as tsc_early_khz= (see
/// guest/kernel/README.md, "TCG timekeeping").
fn host_tsc_khz() -> Option<u64> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 =
        cpuinfo.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

macro_rules! env_or_skip {
    ($name:expr) => {
        match test_env() {
            Ok(env) => env,
            Err(reason) => {
                eprintln!("SKIPPED {}: {reason}", $name);
                return;
            }
        }
    };
}

/// A network namespace with a tap, removed on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        let name = format!("ateom-init-t{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).stderr(Stdio::null()).status();
        let netns = Netns { name };
        netns.ip(&["netns", "add", &netns.name]);
        netns.ip(&["-n", &netns.name, "link", "set", "lo", "up"]);
        netns.ip(&["-n", &netns.name, "tuntap", "add", "dev", "tap0", "mode", "tap"]);
        netns.ip(&["-n", &netns.name, "addr", "add", &format!("{HOST_IP}/30"), "dev", "tap0"]);
        netns.ip(&["-n", &netns.name, "link", "set", "tap0", "up"]);
        netns
    }

    fn ip(&self, args: &[&str]) {
        let status = Command::new("ip").args(args).status().expect("running ip(8)");
        assert!(status.success(), "ip {} failed: {status}", args.join(" "));
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// A TCP connection made from inside the namespace (a thread joins it, connects, ends;
    /// the socket stays in the namespace).
    fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        let path = self.path();
        std::thread::spawn(move || {
            let ns = fs::File::open(&path)?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            TcpStream::connect_timeout(&addr, timeout)
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

#[derive(Default)]
struct Console {
    lines: Vec<(Instant, String)>,
    closed: bool,
}

/// One QEMU boot of a fresh rootfs; QEMU is killed and the namespace removed on drop.
struct Boot {
    name: String,
    qemu: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    started: Instant,
    netns: Netns,
    _work: tempfile::TempDir,
}

impl Boot {
    fn start(env: &TestEnv, name: &str, config_json: &[u8], params: &BootParams) -> Boot {
        let work = tempfile::tempdir().expect("tempdir");
        let rootfs = build_rootfs(env, work.path(), config_json);
        let netns = Netns::create(name);
        let mut append = String::from(
            "console=ttyS0 root=/dev/vda rw rootfstype=ext4 panic=-1 pci=off reboot=t init=/sbin/ateom-init",
        );
        if let Some(khz) = env.tsc_khz {
            append.push_str(&format!(" tsc_early_khz={khz}"));
        }
        append.push(' ');
        append.push_str(&params.kernel_args());
        let mut qemu = Command::new("nsenter");
        qemu.arg(format!("--net={}", netns.path()))
            .arg("--")
            .arg("qemu-system-x86_64")
            .args(["-M", "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=off"])
            .args(["-accel", "tcg", "-cpu", "max", "-m", "256M", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio"])
            .arg("-kernel")
            .arg(&env.kernel)
            .args(["-append", &append])
            .arg("-drive")
            .arg(format!("id=root,file={},format=raw,if=none", rootfs.display()))
            .args(["-device", "virtio-blk-device,drive=root"])
            .args(["-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no"])
            .args(["-device", "virtio-net-device,netdev=net0,mac=06:00:a9:fe:00:02"])
            .args(["-object", "rng-random,id=rng0,filename=/dev/urandom"])
            .args(["-device", "virtio-rng-device,rng=rng0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = qemu.spawn().expect("starting qemu-system-x86_64 in the namespace");
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let stdout = child.stdout.take().expect("qemu stdout");
        let stderr = child.stderr.take().expect("qemu stderr");
        spawn_reader(stdout, Arc::clone(&console), true);
        spawn_reader(stderr, Arc::clone(&console), false);
        Boot { name: name.to_owned(), qemu: child, console, started, netns, _work: work }
    }

    /// Waits for a console line starting with `needle` (the workload's markers also appear
    /// inside ateom-init's "workload started" line, so only the start counts); returns it and
    /// when it came.
    fn wait_for(&self, needle: &str, timeout: Duration) -> (Duration, String) {
        let (lock, cond) = &*self.console;
        let deadline = Instant::now() + timeout;
        let mut console = lock.lock().unwrap();
        loop {
            if let Some((at, line)) = console.lines.iter().find(|(_, l)| l.starts_with(needle)) {
                return (at.duration_since(self.started), line.clone());
            }
            let now = Instant::now();
            if console.closed || now >= deadline {
                drop(console);
                panic!("[{}] no console line starting with {needle:?}\n{}", self.name, self.transcript());
            }
            console = cond.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    /// Whether a console line starts with `prefix`.
    fn has_line(&self, prefix: &str) -> bool {
        self.console.0.lock().unwrap().lines.iter().any(|(_, l)| l.starts_with(prefix))
    }

    /// Whether a console line contains `needle`.
    fn has_line_containing(&self, needle: &str) -> bool {
        self.console.0.lock().unwrap().lines.iter().any(|(_, l)| l.contains(needle))
    }

    fn transcript(&self) -> String {
        let console = self.console.0.lock().unwrap();
        let lines: Vec<&str> = console.lines.iter().map(|(_, l)| l.as_str()).collect();
        format!("----- console of boot {} -----\n{}\n----- end -----", self.name, lines.join("\n"))
    }

    /// Waits for QEMU to exit by itself.
    fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.qemu.try_wait().expect("waiting for qemu") {
                Some(status) => return (status, self.started.elapsed()),
                None if Instant::now() >= deadline => {
                    panic!("[{}] QEMU still running after {timeout:?}\n{}", self.name, self.transcript())
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn ctl(&self, request: &Request) -> Result<Response, ProtocolError> {
        let mut stream = self.ctl_stream();
        protocol::call(&mut stream, request)
    }

    fn ctl_stream(&self) -> TcpStream {
        let addr = SocketAddr::from((GUEST_IP, DEFAULT_CTL_PORT));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.netns.connect(addr, Duration::from_secs(5)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                    stream.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                    return stream;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("[{}] connecting to {addr}: {e}; retrying", self.name);
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("[{}] cannot connect to {addr}: {e}\n{}", self.name, self.transcript()),
            }
        }
    }

    /// Guest uptime when ateom-init started the workload, from its console line.
    fn guest_uptime_at_workload_start(&self) -> String {
        let (_, line) = self.wait_for("ateom-init: workload started pid=", Duration::ZERO);
        line.split("(uptime ").nth(1).and_then(|s| s.split(" s)").next()).unwrap_or("?").to_owned()
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

fn spawn_reader(pipe: impl Read + Send + 'static, console: Arc<(Mutex<Console>, Condvar)>, closes: bool) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned();
                    let (lock, cond) = &*console;
                    lock.lock().unwrap().lines.push((Instant::now(), line));
                    cond.notify_all();
                }
            }
        }
        if closes {
            let (lock, cond) = &*console;
            lock.lock().unwrap().closed = true;
            cond.notify_all();
        }
    });
}

/// An ext4 image (no loop mount) with busybox, ateom-init and `/.ateom/config.json`.
fn build_rootfs(env: &TestEnv, work: &Path, config_json: &[u8]) -> PathBuf {
    let dir = work.join("rootfs");
    for sub in ["bin", "sbin", "etc", "dev", "proc", "sys", "run", "tmp", "root", ".ateom"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy(&env.busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "echo", "date", "id", "cat", "grep", "wc", "pwd", "hostname", "kill", "ls"]
    {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    fs::copy(&env.init_bin, dir.join("sbin/ateom-init")).unwrap();
    fs::set_permissions(dir.join("sbin/ateom-init"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(dir.join(".ateom/config.json"), config_json).unwrap();
    let image = work.join("rootfs.ext4");
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "ateom-init-test", "-E", "root_owner=0:0", "-d"])
        .arg(&dir)
        .arg(&image)
        .arg("64M")
        .output()
        .expect("running mkfs.ext4");
    assert!(out.status.success(), "mkfs.ext4 -d failed: {}", String::from_utf8_lossy(&out.stderr));
    image
}

fn shell_workload(script: &str) -> Process {
    let mut p = Process::new(vec!["/bin/busybox".into(), "sh".into(), "-c".into(), script.into()]);
    p.env = vec!["PATH=/bin".into()];
    p
}

fn net_params() -> BootParams {
    BootParams {
        ip: ateom_init::cmdline::Ipv4Cidr::new(GUEST_IP, 30),
        gateway: Some(HOST_IP),
        hostname: Some("ateom-test".into()),
        ..BootParams::default()
    }
}

fn host_now_ns() -> i64 {
    protocol::unix_time_ns(SystemTime::now())
}

fn report_boot(boot: &Boot, up: Duration) {
    eprintln!(
        "ateom-init boot [{}]: QEMU start -> WORKLOAD-UP {} ms (guest uptime at workload start {} s)",
        boot.name,
        up.as_millis(),
        boot.guest_uptime_at_workload_start()
    );
}

#[test]
fn control_channel_sets_the_clock_and_runs_the_workload_as_configured() {
    let env = env_or_skip!("control_channel_sets_the_clock_and_runs_the_workload_as_configured");
    let mut process = shell_workload(
        "echo WORKLOAD-UP uid=$(id -u) gid=$(id -g) groups=\"$(id -G)\" cwd=$(pwd) foo=$FOO \
         host=$(hostname) nofile=$(ulimit -n) umask=$(umask); \
         while :; do echo TICK $(date +%s); sleep 1; done",
    );
    process.env.push("FOO=bar baz".into());
    process.cwd = "/tmp".into();
    process.user = User { uid: 1000, gid: 1001, additional_gids: vec![2000], umask: Some(0o027) };
    process.rlimits = vec![Rlimit { kind: "RLIMIT_NOFILE".into(), hard: 2048, soft: 1234 }];
    let config = WorkloadConfig::new(process);
    let boot = Boot::start(env, "ctl", &config.to_json().unwrap(), &net_params());

    let (up, line) = boot.wait_for("WORKLOAD-UP", BOOT_TIMEOUT);
    report_boot(&boot, up);
    assert!(
        line.contains(
            "uid=1000 gid=1001 groups=1001 2000 cwd=/tmp foo=bar baz host=ateom-test nofile=1234 umask=0027"
        ),
        "{line}\n{}",
        boot.transcript()
    );
    assert!(boot.has_line("ateom-init: control channel listening on 169.254.0.2:10789"));
    assert!(boot.has_line("ateom-init: network: lo up, eth0 up, 169.254.0.2/30, default via 169.254.0.1"));
    assert!(boot.has_line("ateom-init: devtmpfs already mounted on /dev"), "{}", boot.transcript());

    // Hello.
    let t = Instant::now();
    let hello = boot.ctl(&Request::Hello).unwrap();
    let hello_ms = t.elapsed().as_secs_f64() * 1e3;
    let Response::Hello { init_version, uptime_ns, boot_id, unix_time_ns, workload_pid } = hello else {
        panic!("{hello:?}")
    };
    assert_eq!(init_version, env!("CARGO_PKG_VERSION"));
    assert!(uptime_ns > 0);
    assert_eq!(boot_id.len(), 36, "{boot_id}");
    assert!(workload_pid.is_some());
    let boot_skew_s = (unix_time_ns - host_now_ns()) as f64 / 1e9;
    eprintln!(
        "ateom-init ctl: hello round trip {hello_ms:.1} ms; guest clock at boot is {boot_skew_s:+.3} s off the host"
    );

    // Ping.
    assert!(matches!(boot.ctl(&Request::Ping).unwrap(), Response::Pong { .. }));

    // Garbage and another protocol version are answered, and the guest keeps serving.
    let mut stream = boot.ctl_stream();
    std::io::Write::write_all(&mut stream, b"\x00\xffnot json at all\n").unwrap();
    let answer = protocol::decode_response(&protocol::read_frame(&mut stream).unwrap()).unwrap();
    assert!(matches!(answer, Response::Error { kind: ErrorKind::BadRequest, .. }), "{answer:?}");
    let mut stream = boot.ctl_stream();
    std::io::Write::write_all(&mut stream, b"{\"version\":2,\"type\":\"hello\"}\n").unwrap();
    let answer = protocol::decode_response(&protocol::read_frame(&mut stream).unwrap()).unwrap();
    assert!(matches!(answer, Response::Error { kind: ErrorKind::UnsupportedVersion, .. }), "{answer:?}");

    // Sync one day ahead.
    const DAY_NS: i64 = 86_400 * 1_000_000_000;
    let target = host_now_ns() + DAY_NS;
    let t = Instant::now();
    let synced =
        boot.ctl(&Request::Sync { unix_time_ns: target, entropy: Entropy::from_host().unwrap() }).unwrap();
    let sync_ms = t.elapsed().as_secs_f64() * 1e3;
    let Response::Synced { before_unix_ns, after_unix_ns, delta_ns, entropy_bits, reseeded } = synced else {
        panic!("{synced:?}")
    };
    assert_eq!(entropy_bits, 512);
    assert!(reseeded);
    assert_eq!(delta_ns, target - before_unix_ns);
    assert!((delta_ns - DAY_NS).abs() < 60_000_000_000, "delta {delta_ns} ns is not about one day");
    assert!(
        (0..5_000_000_000).contains(&(after_unix_ns - target)),
        "guest time after sync {after_unix_ns} is not just after the requested {target}"
    );
    eprintln!(
        "ateom-init ctl: sync round trip {sync_ms:.1} ms, clock moved {:+.3} s, guest after - requested = {:.3} ms",
        delta_ns as f64 / 1e9,
        (after_unix_ns - target) as f64 / 1e6
    );
    // ateom-init logs the sync after answering it.
    let (_, line) = boot.wait_for("ateom-init: control: sync from 169.254.0.1:", Duration::from_secs(10));
    assert!(line.contains("clock moved by +8640"), "{line}");
    assert!(line.contains("512 bits of host entropy added, CRNG reseeded"), "{line}");

    // The next Hello and the workload itself see the new time.
    let Response::Hello { unix_time_ns, .. } = boot.ctl(&Request::Hello).unwrap() else { panic!() };
    assert!(unix_time_ns >= target, "guest clock {unix_time_ns} went back before {target}");
    let wanted_s = target / 1_000_000_000;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = boot.console.0.lock().unwrap().lines.iter().any(|(_, l)| {
            l.strip_prefix("TICK ").and_then(|s| s.trim().parse::<i64>().ok()).is_some_and(|s| s >= wanted_s)
        });
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the workload never printed a time >= {wanted_s}\n{}",
            boot.transcript()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!boot.has_line_containing("Kernel panic"), "{}", boot.transcript());
}

#[test]
fn sigterm_to_pid1_is_forwarded_orphans_are_reaped_and_the_vm_exits() {
    let env = env_or_skip!("sigterm_to_pid1_is_forwarded_orphans_are_reaped_and_the_vm_exits");
    // `(sleep 0.1 &)` leaves an orphan that the kernel reparents to PID 1; unreaped, it
    // would show as a zombie (State: Z) a second later. Then the workload asks PID 1 to stop
    // (SIGTERM to pid 1, as a VMM or an operator would), expecting it back.
    let config = WorkloadConfig::new(shell_workload(
        "trap 'echo GOT-TERM; exit 7' TERM; \
         for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 1; \
         echo ZOMBIES=$(grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l); \
         echo WORKLOAD-UP; kill -TERM 1; \
         while :; do sleep 0.1; done",
    ));
    let mut boot = Boot::start(env, "term", &config.to_json().unwrap(), &net_params());
    let (up, _) = boot.wait_for("WORKLOAD-UP", BOOT_TIMEOUT);
    report_boot(&boot, up);
    let (status, at) = boot.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}\n{}", boot.transcript());
    eprintln!(
        "ateom-init boot [term]: WORKLOAD-UP -> QEMU exited by itself {} ms",
        at.saturating_sub(up).as_millis()
    );
    for line in [
        "ZOMBIES=0",
        "ateom-init: SIGTERM received: stopping the workload",
        "GOT-TERM",
        "ateom-init: workload exited: code 7",
        "ateom-init: rebooting",
    ] {
        assert!(boot.has_line(line), "missing {line:?}\n{}", boot.transcript());
    }
}

#[test]
fn a_workload_ignoring_sigterm_is_killed_after_the_grace_period() {
    let env = env_or_skip!("a_workload_ignoring_sigterm_is_killed_after_the_grace_period");
    let config = WorkloadConfig::new(shell_workload(
        "trap '' TERM; echo WORKLOAD-UP; kill -TERM 1; while :; do sleep 0.1; done",
    ));
    let params = BootParams { grace: Duration::from_millis(500), ..net_params() };
    let mut boot = Boot::start(env, "grace", &config.to_json().unwrap(), &params);
    let (up, _) = boot.wait_for("WORKLOAD-UP", BOOT_TIMEOUT);
    report_boot(&boot, up);
    let (status, _) = boot.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}\n{}", boot.transcript());
    for line in [
        "ateom-init: SIGTERM received: stopping the workload (grace 500 ms)",
        "ateom-init: workload exited: killed by signal 9 (SIGKILL)",
        "ateom-init: rebooting",
    ] {
        assert!(boot.has_line(line), "missing {line:?}\n{}", boot.transcript());
    }
    assert!(
        boot.has_line_containing("still running 500 ms after the stop request: SIGKILL"),
        "{}",
        boot.transcript()
    );
}

#[test]
fn a_bad_config_is_reported_and_the_vm_still_exits() {
    let env = env_or_skip!("a_bad_config_is_reported_and_the_vm_still_exits");
    let config = br#"{"version": 2, "process": {"args": ["/bin/sh"]}}"#;
    let mut boot = Boot::start(env, "badcfg", config, &net_params());
    let (status, at) = boot.wait_exit(BOOT_TIMEOUT);
    assert!(status.success(), "QEMU exited with {status}\n{}", boot.transcript());
    assert!(
        boot.has_line(
            "ateom-init: fatal: /.ateom/config.json: workload config version 2 is not supported (this ateom-init reads version 1)"
        ),
        "{}",
        boot.transcript()
    );
    assert!(boot.has_line("ateom-init: rebooting"));
    assert!(!boot.has_line_containing("Kernel panic"), "{}", boot.transcript());
    eprintln!("ateom-init boot [badcfg]: QEMU start -> exit {} ms", at.as_millis());
}
