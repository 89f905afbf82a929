//! `counter`: the demo workload for ateom's checkpoint/restore tests.
//!
//! A tiny HTTP/1.1 server (std only, one thread per connection) whose state lives both in
//! RAM and on disk, so a restore can be checked for both:
//!
//! - `GET /` increments an in-memory counter and the number in `$COUNTER_DIR/count`, and
//!   answers `{"memory_count":N,"file_count":M,"file_sha256":"…","pid":P}` where the hash is
//!   of `$COUNTER_DIR/random.bin` (1 MiB of random bytes written at start unless the
//!   directory already holds one, as does `count`) re-read now;
//! - `GET /readyz` answers `ok`; `GET /random` 16 fresh random bytes as hex; `GET /time` the
//!   wall clock in unix milliseconds;
//! - `GET /secret` the value `COUNTER_SECRET` had at start (kept in memory: a restore must
//!   bring it back although manifests never record it), or nothing;
//! - `GET /alloc?mib=N` allocates N MiB more, writes every page and keeps it, and answers
//!   the total held (memory-limit tests: past the sandbox's limit this process is killed);
//! - `GET /connect?addr=IP:PORT` tries a TCP connection from inside the sandbox (2 s) and
//!   answers `connected` or `failed: <reason>` (isolation tests: a sandbox must not reach the
//!   host's loopback services);
//! - anything else 404.
//!
//! Environment: `PORT` (default 8080, listens on 0.0.0.0), `COUNTER_DIR` (default
//! `/var/lib/counter`, created at start), `COUNTER_SECRET`.
//!
//! **Connections are closed passively.** gVisor cannot checkpoint a sandbox that has a TCP
//! connection open or in TIME_WAIT, and TIME_WAIT stays with the side that closes first. So
//! after a response the server waits (up to [`CLOSE_WAIT`]) for the client to close, then
//! closes; a client that does not close in time gets a reset (`SO_LINGER` 0), which leaves
//! no TIME_WAIT either.
//!
//! Build a fully static binary with `scripts/build-counter.sh`.

mod http;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::http::{ParseError, Request, Route, Status};

/// How long the server waits for the client to close after the response.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// How long a client may take to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are reset.
const MAX_CONNECTIONS: usize = 512;
/// Size of `random.bin`.
const RANDOM_FILE_SIZE: usize = 1 << 20;
const URANDOM: &str = "/dev/urandom";

/// Process-wide state.
struct State {
    dir: PathBuf,
    /// The in-memory counter; its lock also serialises the count file's read-modify-write.
    memory_count: Mutex<u64>,
    connections: AtomicUsize,
    /// `COUNTER_SECRET` as it was at start.
    secret: String,
    /// What `/alloc` holds.
    held: Mutex<Vec<Vec<u8>>>,
}

fn main() -> ExitCode {
    install_exit_on_sigterm();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("counter: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let port = match std::env::var("PORT") {
        Ok(p) => p.parse::<u16>().map_err(|_| format!("PORT={p:?} is not a TCP port"))?,
        Err(_) => 8080,
    };
    let dir = std::env::var_os("COUNTER_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/var/lib/counter"), PathBuf::from);
    fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;

    // State already in COUNTER_DIR (a durable directory that outlived an earlier run) is kept;
    // a fresh directory gets a new random file and a zero count.
    let random_path = dir.join("random.bin");
    let random = match fs::read(&random_path) {
        Ok(existing) if existing.len() == RANDOM_FILE_SIZE => existing,
        _ => {
            let mut random = vec![0u8; RANDOM_FILE_SIZE];
            File::open(URANDOM)
                .and_then(|mut f| f.read_exact(&mut random))
                .map_err(|e| format!("reading {URANDOM}: {e}"))?;
            write_replace(&random_path, &random)
                .map_err(|e| format!("writing {}: {e}", random_path.display()))?;
            random
        }
    };
    let digest = hex::encode(Sha256::digest(&random));
    let count_path = dir.join("count");
    if !count_path.is_file() {
        write_replace(&count_path, b"0").map_err(|e| format!("writing {}: {e}", count_path.display()))?;
    }

    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let listener = TcpListener::bind(addr).map_err(|e| format!("listening on {addr}: {e}"))?;
    eprintln!(
        "counter: pid {} listening on {addr}, state in {}, random.bin sha256 {digest}",
        std::process::id(),
        dir.display()
    );

    let state = Arc::new(State {
        dir,
        memory_count: Mutex::new(0),
        connections: AtomicUsize::new(0),
        secret: std::env::var("COUNTER_SECRET").unwrap_or_default(),
        held: Mutex::new(Vec::new()),
    });
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("counter: accept: {e}");
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        };
        if state.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            state.connections.fetch_sub(1, Ordering::SeqCst);
            eprintln!("counter: too many connections, resetting one");
            abort(stream);
            continue;
        }
        let st = Arc::clone(&state);
        // The stream moves into the thread; if spawning fails the closure (and the stream)
        // is dropped, which closes the connection.
        let spawned = std::thread::Builder::new().name("conn".into()).spawn(move || {
            serve(stream, &st);
            st.connections.fetch_sub(1, Ordering::SeqCst);
        });
        if let Err(e) = spawned {
            state.connections.fetch_sub(1, Ordering::SeqCst);
            eprintln!("counter: spawning a connection thread: {e}");
        }
    }
    Ok(())
}

/// Why no request could be read.
enum ReadFailure {
    /// The client closed (or reset) before sending a whole head.
    Closed,
    TimedOut,
    Parse(ParseError),
    Io(io::Error),
}

/// Serves one connection: one request, one response, then a passive close.
fn serve(mut stream: TcpStream, state: &State) {
    let peer = stream.peer_addr().map_or_else(|_| "?".to_owned(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let started = Instant::now();
    let (line, status, ctype, body) = match read_request(&mut stream) {
        Ok(req) => {
            let (status, ctype, body) = handle(&req, state);
            (format!("{} {} {}", req.method, req.target, req.version), status, ctype, body)
        }
        Err(ReadFailure::Closed) => return, // The client closed first: closing now is passive.
        Err(ReadFailure::Io(e)) => {
            eprintln!("counter: {peer} read error: {e}");
            return abort(stream);
        }
        Err(ReadFailure::TimedOut) => {
            ("-".to_owned(), Status::REQUEST_TIMEOUT, "text/plain", b"request timeout\n".to_vec())
        }
        Err(ReadFailure::Parse(e)) => {
            ("-".to_owned(), e.status(), "text/plain", format!("{e}\n").into_bytes())
        }
    };
    let written = stream.write_all(&http::response(status, ctype, &body));
    eprintln!("counter: {peer} \"{line}\" {} {} {}us", status.0, body.len(), started.elapsed().as_micros());
    if let Err(e) = written {
        eprintln!("counter: {peer} write error: {e}");
        return abort(stream);
    }
    if !wait_for_client_close(&mut stream) {
        abort(stream);
    }
    // Dropping the stream after the client's FIN is a passive close: no TIME_WAIT here.
}

/// Reads until a complete request head has arrived.
fn read_request(stream: &mut TcpStream) -> Result<Request, ReadFailure> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(ReadFailure::TimedOut);
        }
        stream.set_read_timeout(Some(remaining)).map_err(ReadFailure::Io)?;
        // Never read past the head bound (plus a little, so an over-long head is detected).
        let room = (http::MAX_HEAD + 1).saturating_sub(buf.len()).min(chunk.len());
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Err(ReadFailure::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ReadFailure::TimedOut);
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Err(ReadFailure::Closed),
            Err(e) => return Err(ReadFailure::Io(e)),
        }
        match http::parse_head(&buf) {
            Ok(Some(req)) => return Ok(req),
            Ok(None) => {}
            Err(e) => return Err(ReadFailure::Parse(e)),
        }
    }
}

/// Answers a request: status, content type, body.
fn handle(req: &Request, state: &State) -> (Status, &'static str, Vec<u8>) {
    const TEXT: &str = "text/plain";
    match http::route(req) {
        Route::Count => match count(state) {
            Ok(body) => (Status::OK, "application/json", body.into_bytes()),
            Err(e) => (Status::INTERNAL_ERROR, TEXT, format!("{e}\n").into_bytes()),
        },
        Route::Readyz => (Status::OK, TEXT, b"ok".to_vec()),
        Route::Random => {
            let mut bytes = [0u8; 16];
            match File::open(URANDOM).and_then(|mut f| f.read_exact(&mut bytes)) {
                Ok(()) => (Status::OK, TEXT, hex::encode(bytes).into_bytes()),
                Err(e) => (Status::INTERNAL_ERROR, TEXT, format!("reading {URANDOM}: {e}\n").into_bytes()),
            }
        }
        Route::Time => {
            let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
            (Status::OK, TEXT, ms.to_string().into_bytes())
        }
        Route::Secret => (Status::OK, TEXT, state.secret.clone().into_bytes()),
        Route::Alloc(mib) => {
            let mut held = state.held.lock().unwrap_or_else(|p| p.into_inner());
            // Written, not just reserved: every page is really resident.
            held.push(vec![0xa5u8; (mib as usize) << 20]);
            let total: usize = held.iter().map(Vec::len).sum();
            (Status::OK, TEXT, format!("{}\n", total >> 20).into_bytes())
        }
        Route::Connect(addr) => {
            let outcome = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => "connected".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            (Status::OK, TEXT, outcome.into_bytes())
        }
        Route::MethodNotAllowed => (Status::METHOD_NOT_ALLOWED, TEXT, b"method not allowed\n".to_vec()),
        Route::NotFound => (Status::NOT_FOUND, TEXT, b"not found\n".to_vec()),
    }
}

/// `GET /`: bumps both counters and reports them with the hash of `random.bin` as on disk now.
fn count(state: &State) -> Result<String, String> {
    let (memory_count, file_count) = {
        // A poisoned lock only means a thread panicked mid-update; the number is still usable.
        let mut memory = state.memory_count.lock().unwrap_or_else(|p| p.into_inner());
        let path = state.dir.join("count");
        let text = fs::read_to_string(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let file = text
            .trim()
            .parse::<u64>()
            .map_err(|_| format!("{} holds {:?}, not a number", path.display(), text.trim()))?
            .saturating_add(1);
        write_replace(&path, file.to_string().as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        *memory += 1;
        (*memory, file)
    };
    let random = state.dir.join("random.bin");
    let mut hasher = Sha256::new();
    File::open(&random)
        .and_then(|mut f| io::copy(&mut f, &mut hasher))
        .map_err(|e| format!("reading {}: {e}", random.display()))?;
    let sha = hex::encode(hasher.finalize());
    Ok(format!(
        "{{\"memory_count\":{memory_count},\"file_count\":{file_count},\"file_sha256\":\"{sha}\",\"pid\":{}}}",
        std::process::id()
    ))
}

/// Writes `path` atomically (write a sibling temp file, then rename over), without fsync.
fn write_replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, bytes)?;
    fs::rename(&tmp, path)
}

/// Waits up to [`CLOSE_WAIT`] for the client to close its side, discarding anything it
/// still sends. True when it closed (EOF or reset).
fn wait_for_client_close(stream: &mut TcpStream) -> bool {
    let deadline = Instant::now() + CLOSE_WAIT;
    let mut sink = [0u8; 4096];
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return false;
        }
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Closes with a reset (`SO_LINGER` on, 0 s): no FIN handshake, so no TIME_WAIT.
fn abort(stream: TcpStream) {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: the fd is a live socket owned by `stream`; the option value is a properly
    // initialised `linger` whose size is passed along.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        eprintln!("counter: setting SO_LINGER: {}", io::Error::last_os_error());
    }
    drop(stream);
}

/// As PID 1 of a PID namespace the default SIGTERM/SIGINT action (terminate) does not
/// apply, so `kill` would be ignored: exit explicitly instead.
fn install_exit_on_sigterm() {
    extern "C" fn exit_now(_signal: libc::c_int) {
        // SAFETY: `_exit` is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    let handler = exit_now as extern "C" fn(libc::c_int);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: installs a handler that only calls an async-signal-safe function.
        unsafe { libc::signal(signal, handler as libc::sighandler_t) };
    }
}
