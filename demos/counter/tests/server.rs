//! Runs the real `counter` binary on a loopback port and talks to it with a plain
//! `TcpStream` client, the way ateom's readiness probe and the restore tests do.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// A running counter, killed on drop.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        // Not created beforehand: the server must create it.
        let dir = tmp.path().join("state/counter");
        // Ask the kernel for a free port, release it, and hand it to the server.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_counter"))
            .env("PORT", port.to_string())
            .env("COUNTER_DIR", &dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut server = Server { child, port, dir, _tmp: tmp };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("counter exited early: {status}");
            }
            if let Ok(resp) = server.try_get("/readyz") {
                assert_eq!(resp.status, 200);
                return server;
            }
            assert!(Instant::now() < deadline, "counter did not become ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> std::io::Result<TcpStream> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(s)
    }

    fn try_get(&self, path: &str) -> std::io::Result<Response> {
        let mut s = self.connect()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        read_response(&mut s)
        // `s` drops here: the client closes first, as a well-behaved client does.
    }

    fn get(&self, path: &str) -> Response {
        self.try_get(path).unwrap()
    }

    fn raw(&self, request: &[u8]) -> Response {
        let mut s = self.connect().unwrap();
        s.write_all(request).unwrap();
        read_response(&mut s).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Reads exactly one response, framed by Content-Length: it must not need the server to
/// close the connection (the server waits for us to close first).
fn read_response(s: &mut TcpStream) -> std::io::Result<Response> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof in head"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.to_owned(), v.trim().to_owned())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .expect("every response has a Content-Length")
        .1
        .parse()
        .unwrap();
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof in body"));
        }
        body.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(body.len(), len, "no bytes after the body");
    Ok(Response { status, headers, body: String::from_utf8(body).unwrap() })
}

/// A tiny extractor for the counter's flat JSON object.
fn json_field<'a>(body: &'a str, key: &str) -> &'a str {
    let pat = format!("\"{key}\":");
    let start = body.find(&pat).unwrap_or_else(|| panic!("{key} missing in {body}")) + pat.len();
    let rest = &body[start..];
    let end = rest.find([',', '}']).unwrap();
    rest[..end].trim_matches('"')
}

/// TCP sockets (IPv4 and IPv6 tables) whose local port is `port`, as (state hex, local address).
fn sockets_on_local_port(port: u16) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            let local_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) {
                out.push(((*state).to_owned(), (*local).to_owned()));
            }
        }
    }
    out
}

const TCP_TIME_WAIT: &str = "06";
const TCP_LISTEN: &str = "0A";

/// Waits until the server has finished closing its side of every connection (only the
/// listener is left on its port) and asserts none of them went through TIME_WAIT.
fn assert_server_sockets_closed_without_time_wait(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let socks = sockets_on_local_port(port);
        assert!(
            !socks.iter().any(|(st, _)| st == TCP_TIME_WAIT),
            "server-side socket in TIME_WAIT on port {port}: {socks:?}"
        );
        if socks.iter().all(|(st, _)| st == TCP_LISTEN) {
            return;
        }
        assert!(Instant::now() < deadline, "server sockets on port {port} did not close: {socks:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn counts_in_memory_and_on_disk_with_a_stable_file_hash() {
    let server = Server::start();
    assert_eq!(std::fs::read_to_string(server.dir.join("count")).unwrap(), "0");
    let random = server.dir.join("random.bin");
    assert_eq!(std::fs::metadata(&random).unwrap().len(), 1 << 20);
    let expected_sha = sha256_hex(&random);

    for n in 1..=3u64 {
        let r = server.get("/");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        assert_eq!(r.header("Connection"), Some("close"));
        assert_eq!(json_field(&r.body, "memory_count"), n.to_string(), "{}", r.body);
        assert_eq!(json_field(&r.body, "file_count"), n.to_string(), "{}", r.body);
        assert_eq!(json_field(&r.body, "file_sha256"), expected_sha);
        assert_eq!(json_field(&r.body, "pid"), server.child.id().to_string());
    }
    assert_eq!(std::fs::read_to_string(server.dir.join("count")).unwrap(), "3");

    // The file counter is read back from disk each time: bump it behind the server's back.
    std::fs::write(server.dir.join("count"), "41\n").unwrap();
    let r = server.get("/?q=1");
    assert_eq!(json_field(&r.body, "memory_count"), "4");
    assert_eq!(json_field(&r.body, "file_count"), "42");

    // And the hash is of the file as it is on disk now.
    std::fs::write(&random, b"changed").unwrap();
    let r = server.get("/");
    assert_eq!(json_field(&r.body, "file_sha256"), hex::encode(Sha256::digest(b"changed")));

    // A count file that is not a number is a clear 500, not a crash.
    std::fs::write(server.dir.join("count"), "garbage").unwrap();
    let r = server.get("/");
    assert_eq!(r.status, 500);
    assert!(r.body.contains("not a number"), "{}", r.body);
    assert_eq!(server.get("/readyz").status, 200);
}

#[test]
fn readyz_random_time_and_errors() {
    let server = Server::start();
    let r = server.get("/readyz");
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));

    let a = server.get("/random").body;
    let b = server.get("/random").body;
    for x in [&a, &b] {
        assert_eq!(x.len(), 32, "{x}");
        assert!(x.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{x}");
    }
    assert_ne!(a, b, "two reads of 16 random bytes collided");

    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i128;
    let t: i128 = server.get("/time").body.parse().unwrap();
    assert!((t - now).abs() < 60_000, "guest time {t} far from host time {now}");

    assert_eq!(server.get("/nope").status, 404);
    assert_eq!(server.raw(b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").status, 405);
    assert_eq!(server.raw(b"BLAH\r\n\r\n").status, 400);
    assert_eq!(server.raw(b"GET / HTTP/1.1\r\nbad header\r\n\r\n").status, 400);
    assert_eq!(server.raw(b"GET / HTTP/3.0\r\n\r\n").status, 505);
    let mut huge = b"GET / HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(20 * 1024, b'a');
    assert_eq!(server.raw(&huge).status, 431);
    // None of that hurt the counter.
    let r = server.get("/");
    assert_eq!(json_field(&r.body, "memory_count"), "1");
}

#[test]
fn the_server_never_leaves_time_wait_behind() {
    let server = Server::start();
    for path in ["/", "/readyz", "/random", "/nope"] {
        assert!(matches!(server.get(path).status, 200 | 404));
    }
    // A client that half-closes after its request still gets the answer.
    let mut s = server.connect().unwrap();
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    assert_eq!(read_response(&mut s).unwrap().body, "ok");
    drop(s);
    // A client that connects and goes away without a request.
    drop(server.connect().unwrap());
    assert_server_sockets_closed_without_time_wait(server.port);
}

#[test]
fn a_client_that_does_not_close_is_reset_not_left_in_time_wait() {
    let server = Server::start();
    let mut s = server.connect().unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).unwrap().body, "ok");
    // Keep the connection open past the server's 2 s wait: it must reset, not FIN.
    let started = Instant::now();
    let mut rest = [0u8; 16];
    let outcome = s.read(&mut rest);
    let waited = started.elapsed();
    match outcome {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected a reset from the server, got {other:?}"),
    }
    assert!(waited >= Duration::from_millis(1500), "reset came after only {waited:?}");
    drop(s);
    assert_server_sockets_closed_without_time_wait(server.port);
}
