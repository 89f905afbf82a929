//! Hostile-input cases for `ate serve` (the control plane's part of the security suite).
//!
//! Every case talks to a real `ate serve` process over real sockets (raw TCP where the bytes
//! themselves are the attack), and fake `ateom` workers (the real gRPC contract, no sandbox)
//! where a worker is the attacker. Each case prints one line:
//!
//! ```text
//! CASE <name> <passed|failed> escapes=<n> unauthenticated_accepted=<n> crashes=<n> <detail>
//! ```
//!
//! * `escapes`: a request or connection that reached what it should not (a non-loopback
//!   endpoint, a fake worker that was never admitted, a tampered snapshot at a worker);
//! * `unauthenticated_accepted`: a request without valid credentials (or with the read token
//!   on an admin route) that got past authentication/authorization;
//! * `crashes`: `ate serve` died, stopped answering, or logged a panic.
//!
//! Each line starts with a newline of its own, so that it begins a line even after cargo's
//! `test <name> ... ` under `--nocapture`. Every test ends with a `<test>.serve-alive` case
//! and fails if any of its cases failed.
//! Run: `cargo test -p ate --test hostile -- --nocapture --test-threads=1 | grep '^CASE '`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use ate::api::routes;
use common::fake::{FakeWorker, Script, Upstream, keygen};
use common::{Serve, golden_settled, pool_and_template, serve_in, wait_for};
use hyper::Method;

// ------------------------------------------------------------------------ case bookkeeping

struct Case {
    name: String,
    passed: bool,
    escapes: u32,
    unauth: u32,
    crashes: u32,
    detail: String,
}

#[derive(Default)]
struct Cases(Vec<Case>);

impl Cases {
    fn add(
        &mut self,
        name: impl Into<String>,
        passed: bool,
        escapes: u32,
        unauth: u32,
        detail: impl Into<String>,
    ) {
        let c = Case { name: name.into(), passed, escapes, unauth, crashes: 0, detail: detail.into() };
        println!(
            "\nCASE {} {} escapes={} unauthenticated_accepted={} crashes={} {}",
            c.name,
            if c.passed { "passed" } else { "failed" },
            c.escapes,
            c.unauth,
            c.crashes,
            c.detail.replace('\n', " ")
        );
        self.0.push(c);
    }

    /// Adds the `<test>.serve-alive` case for `serve`, then fails the test if any case failed.
    async fn finish(mut self, test: &str, serve: &mut Serve) {
        let alive = serve.child.try_wait().ok().flatten().is_none();
        let health = serve.api.raw(Method::GET, "/healthz", vec![]).await.map(|(s, _)| s).unwrap_or(0);
        let log = serve.log_text();
        let panicked = log.contains("panicked");
        let ok = alive && health == 200 && !panicked;
        let c = Case {
            name: format!("{test}.serve-alive"),
            passed: ok,
            escapes: 0,
            unauth: 0,
            crashes: u32::from(!ok),
            detail: format!("process_alive={alive} healthz={health} panic_in_log={panicked}"),
        };
        println!(
            "\nCASE {} {} escapes=0 unauthenticated_accepted=0 crashes={} {}",
            c.name,
            if c.passed { "passed" } else { "failed" },
            c.crashes,
            c.detail
        );
        self.0.push(c);
        let failed: Vec<&str> = self.0.iter().filter(|c| !c.passed).map(|c| c.name.as_str()).collect();
        assert!(failed.is_empty(), "failed cases: {failed:?}\n{}", if ok { String::new() } else { log });
    }
}

// ------------------------------------------------------------------------ raw HTTP

/// Sends `bytes` on a fresh connection and reads the answer to EOF (bounded): the status
/// (0 if none) and the body.
fn raw(addr: SocketAddr, bytes: &[u8]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else { return (0, "connect failed".into()) };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

fn parse(out: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(out).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        r.push_str("Host: ate\r\n");
    }
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut b = r.into_bytes();
    b.extend_from_slice(body);
    b
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn tokens(serve: &Serve, dir: &Path) -> (String, String) {
    let admin = ate::auth::read_token(serve.token_file.as_ref().unwrap()).unwrap();
    let read = ate::auth::read_token(&dir.join("data/tokens/read")).unwrap();
    (admin, read)
}

/// An answer names nothing internal: no path of this test, no token file, no socket, no
/// store URI, no worker.
fn leaks(body: &str, dir: &Path) -> Option<String> {
    let d = dir.display().to_string();
    for needle in [d.as_str(), "tokens/", ".sock", "file://", "0.0.0.0", "fake-", "sqlite", "/tmp/"] {
        if body.contains(needle) {
            return Some(needle.to_owned());
        }
    }
    None
}

async fn api_addr(serve: &Serve) -> SocketAddr {
    serve.api_addr.parse().unwrap()
}

fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("ate-hostile-").tempdir().unwrap()
}

/// Runs a blocking raw exchange off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

// ------------------------------------------------------------------------ credentials

/// Every route of the API's table (plus non-routes) without a token, with a wrong or
/// malformed one, with the read token, and with the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_on_every_route() {
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &[]);
    let (admin, read) = tokens(&serve, dir.path());
    let addr = api_addr(&serve).await;
    let mut cases = Cases::default();
    // (method, path, needs admin, is a route)
    let mut targets: Vec<(String, String, bool, bool)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path_for("ghost"), r.role() == ate::auth::Role::Admin, true))
        .collect();
    // Not routes: must still answer 401 before anything else (no route discovery, no CORS).
    for (m, p) in [
        ("PUT", "/v1/actors"),
        ("OPTIONS", "/v1/apply"),
        ("GET", "/v1/../etc/passwd"),
        ("GET", "/v1/actors/a/b/c"),
        ("PATCH", "/"),
    ] {
        targets.push((m.into(), p.into(), true, false));
    }
    let creds: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("wrong", Some(bearer(&ate::auth::generate_token()))),
        ("wrong-prefix-of-admin", Some(bearer(&admin[..admin.len() - 1]))),
        ("malformed", Some("Basic YWRtaW46YWRtaW4=".into())),
        ("empty-bearer", Some("Bearer ".into())),
        ("read", Some(bearer(&read))),
        ("admin", Some(bearer(&admin))),
    ];
    for (method, path, admin_route, is_route) in &targets {
        for (cname, cred) in &creds {
            let mut h = vec![];
            if let Some(c) = cred {
                h.push(("Authorization", c.as_str()));
            }
            let req = request(method, path, &h, b"");
            let (status, body) = blocking(move || raw(addr, &req)).await;
            let name = format!("api.{cname}.{method}.{path}");
            let leak = leaks(&body, dir.path());
            match *cname {
                "read" if *admin_route && *is_route => {
                    // Anything but 401/403 means the route ran for a read-only token.
                    let unauth = u32::from(!matches!(status, 401 | 403));
                    cases.add(
                        name,
                        status == 403 && leak.is_none(),
                        0,
                        unauth,
                        format!("status={status} want=403 leak={leak:?}"),
                    );
                }
                "read" | "admin" if !*is_route => {
                    let unauth = u32::from((200..300).contains(&status));
                    cases.add(
                        name,
                        status == 404 && leak.is_none(),
                        0,
                        unauth,
                        format!("status={status} want=404 leak={leak:?}"),
                    );
                }
                "read" | "admin" => {
                    // Positive control: a valid token gets past authentication.
                    let ok = !matches!(status, 401 | 403 | 0);
                    cases.add(name, ok, 0, 0, format!("status={status} want=not-401/403"));
                }
                _ => {
                    let unauth = u32::from(status != 401);
                    cases.add(
                        name,
                        status == 401 && leak.is_none(),
                        0,
                        unauth,
                        format!("status={status} want=401 leak={leak:?}"),
                    );
                }
            }
        }
    }
    cases.finish("credentials_on_every_route", &mut serve).await;
}

/// `--metrics ADDR` serves `GET /metrics` and nothing else, whatever the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_serves_only_metrics() {
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &[]);
    let (admin, _) = tokens(&serve, dir.path());
    let m = serve.metrics_addr.unwrap();
    let mut cases = Cases::default();
    let (status, body) = blocking(move || raw(m, &request("GET", "/metrics", &[], b""))).await;
    cases.add(
        "metrics.get-metrics",
        status == 200 && body.contains("ate_actors"),
        0,
        0,
        format!("status={status}"),
    );
    for r in routes() {
        if r.path_for("ghost") == "/metrics" {
            continue;
        }
        let path = r.path_for("ghost");
        let auth = bearer(&admin);
        let req = request(r.method.as_str(), &path, &[("Authorization", &auth)], b"");
        let (status, _) = blocking(move || raw(m, &req)).await;
        cases.add(
            format!("metrics.{}.{path}", r.method),
            status == 404,
            0,
            u32::from((200..400).contains(&status)),
            format!("status={status} want=404"),
        );
    }
    cases.finish("metrics_listener_serves_only_metrics", &mut serve).await;
}

/// `--insecure-no-auth` is refused on a non-loopback API address, allowed on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_mode_needs_loopback() {
    let dir = tmp();
    let mut cases = Cases::default();
    for api in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ate"))
            .args(["serve", "--insecure-no-auth", "--api", api, "--router", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data-insecure"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let started = stdout.contains("\"api\"");
        let ok = !out.status.success() && !started && stderr.contains("loopback");
        cases.add(
            format!("serve.insecure-no-auth.{api}"),
            ok,
            0,
            u32::from(started),
            format!("exit={:?} started={started}", out.status.code()),
        );
    }
    // Allowed on loopback (explicitly), and then really without tokens.
    let mut serve = serve_in(dir.path(), &["--insecure-no-auth"]);
    let addr = api_addr(&serve).await;
    let (status, _) = blocking(move || raw(addr, &request("GET", "/v1/actors", &[], b""))).await;
    cases.add("serve.insecure-no-auth.loopback-allowed", status == 200, 0, 0, format!("status={status}"));
    cases.finish("insecure_mode_needs_loopback", &mut serve).await;
}

// ------------------------------------------------------------------------ crafted YAML

fn billion_laughs() -> String {
    let mut y =
        String::from("a0: &a0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    for i in 1..12 {
        let p = i - 1;
        y.push_str(&format!("a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"));
    }
    y.push_str("kind: Actor\nmetadata: { name: x }\nspec: { template: t }\n");
    y
}

/// Crafted resource documents through `POST /v1/apply` (admin token): each is refused with
/// a 4xx, nothing is applied, the server answers each and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_yaml() {
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &[]);
    let (admin, _) = tokens(&serve, dir.path());
    let addr = api_addr(&serve).await;
    let pool = "kind: WorkerPool\nmetadata: { name: p }\nspec:\n  workers:\n    - { name: w, socket: /run/w.sock }\n";
    let mut deep_block = String::from("kind: Actor\nmetadata:\n");
    for i in 0..400 {
        deep_block.push_str(&format!("{}a:\n", "  ".repeat(i + 1)));
    }
    let docs: Vec<(&str, Vec<u8>)> = vec![
        ("huge-scalar", format!("kind: Actor\nmetadata: {{ name: {} }}\nspec: {{ template: t }}\n", "a".repeat(1000 * 1000)).into_bytes()),
        ("many-empty-docs", "---\n".repeat(200_000).into_bytes()),
        ("deep-flow-yaml", format!("kind: Actor\nmetadata: {}{}\n", "[".repeat(200_000), "]".repeat(200_000)).into_bytes()),
        ("deep-flow-json", format!("[{}{}]", "[".repeat(200_000), "]".repeat(200_000)).into_bytes()),
        ("deep-block", deep_block.into_bytes()),
        ("billion-laughs", billion_laughs().into_bytes()),
        ("wrong-type-name", b"kind: Actor\nmetadata: { name: [1, 2] }\nspec: { template: t }\n".to_vec()),
        ("wrong-type-workers", b"kind: WorkerPool\nmetadata: { name: p }\nspec: { workers: \"all\" }\n".to_vec()),
        ("wrong-type-port", pool.replace("workers:", "workers: 7\n  x:").into_bytes()),
        ("unknown-field", pool.replace("socket: /run/w.sock", "socket: /run/w.sock, admin: true").into_bytes()),
        ("unknown-top-field", format!("{pool}status: {{ healthy: true }}\n").into_bytes()),
        ("name-dotdot", pool.replace("name: w,", "name: ../../etc,").into_bytes()),
        ("name-nul", pool.replace("name: w,", "name: \"w\\0x\",").into_bytes()),
        ("socket-nul", pool.replace("/run/w.sock", "\"/run/w\\0.sock\"").into_bytes()),
        ("socket-relative", pool.replace("/run/w.sock", "../w.sock").into_bytes()),
        ("pool-name-slash", pool.replace("name: p }", "name: \"p/../q\" }").into_bytes()),
        // Workers on other hosts: mutual TLS or nothing.
        ("worker-plain-http", pool.replace("socket: /run/w.sock", "address: \"http://127.0.0.1:7443\", forward: \"127.0.0.1:7444\", tls: { ca: /c, cert: /c, key: /k }").into_bytes()),
        ("worker-without-tls", pool.replace("socket: /run/w.sock", "address: \"https://127.0.0.1:7443\", forward: \"127.0.0.1:7444\"").into_bytes()),
        ("worker-without-forward", pool.replace("socket: /run/w.sock", "address: \"https://127.0.0.1:7443\", tls: { ca: /c, cert: /c, key: /k }").into_bytes()),
        ("worker-socket-and-address", pool.replace("socket: /run/w.sock", "socket: /run/w.sock, address: \"https://127.0.0.1:7443\", forward: \"127.0.0.1:7444\", tls: { ca: /c, cert: /c, key: /k }").into_bytes()),
        ("worker-tls-relative-key", pool.replace("socket: /run/w.sock", "address: \"https://127.0.0.1:7443\", forward: \"127.0.0.1:7444\", tls: { ca: /c, cert: /c, key: ../k }").into_bytes()),
        ("worker-address-userinfo", pool.replace("socket: /run/w.sock", "address: \"https://x@127.0.0.1:7443/\", forward: \"127.0.0.1:7444\", tls: { ca: /c, cert: /c, key: /k }").into_bytes()),
        ("unknown-kind", b"kind: Root\nmetadata: { name: x }\nspec: {}\n".to_vec()),
        ("no-kind", b"metadata: { name: x }\nspec: {}\n".to_vec()),
        ("yaml-tag", b"kind: !Robot Actor\nmetadata: { name: x }\nspec: { template: t }\n".to_vec()),
        ("binary-tag", b"kind: Actor\nmetadata: { name: !!binary aGVsbG8= }\nspec: { template: t }\n".to_vec()),
        ("invalid-utf8", b"kind: Actor\nmetadata: { name: \xff\xfe }\nspec: { template: t }\n".to_vec()),
        ("not-a-mapping", b"- 1\n- 2\n".to_vec()),
        ("json-wrong-shape", br#"[{"kind":"Actor","metadata":{"name":"x"},"spec":{"template":["t"]}}]"#.to_vec()),
        ("template-bad-location", b"kind: ActorTemplate\nmetadata: { name: t }\nspec: { pool: p, containers: [{name: c}], snapshot: { location: \"http://169.254.169.254/\" } }\n".to_vec()),
        ("template-bad-resources", b"kind: ActorTemplate\nmetadata: { name: t }\nspec: { pool: p, containers: [{name: c}], resources: { memory: 1Ei }, snapshot: { location: \"file:///x\" } }\n".to_vec()),
        ("template-env-nul", b"kind: ActorTemplate\nmetadata: { name: t }\nspec: { pool: p, containers: [{name: c, env: { \"A\\0\": x }}], snapshot: { location: \"file:///x\" } }\n".to_vec()),
    ];
    let mut cases = Cases::default();
    for (name, body) in docs {
        let auth = bearer(&admin);
        let started = Instant::now();
        let (status, resp) = blocking(move || {
            raw(
                addr,
                &request(
                    "POST",
                    "/v1/apply",
                    &[("Authorization", &auth), ("Content-Type", "application/yaml")],
                    &body,
                ),
            )
        })
        .await;
        let took = started.elapsed();
        // Refused (4xx); empty documents may be "applied" as nothing (checked below).
        let ok = (400..500).contains(&status) || (name == "many-empty-docs" && status == 200);
        cases.add(
            format!("yaml.{name}"),
            ok,
            0,
            0,
            format!(
                "status={status} took_ms={} error={:?}",
                took.as_millis(),
                resp.chars().take(120).collect::<String>()
            ),
        );
    }
    let pools = serve.api.call(Method::GET, "/v1/pools", None).await.unwrap();
    let templates = serve.api.call(Method::GET, "/v1/templates", None).await.unwrap();
    let actors = serve.api.call(Method::GET, "/v1/actors", None).await.unwrap();
    let nothing = pools.as_array().is_some_and(Vec::is_empty)
        && templates.as_array().is_some_and(Vec::is_empty)
        && actors.as_array().is_some_and(Vec::is_empty);
    cases.add("yaml.nothing-applied", nothing, 0, 0, format!("pools={pools} templates={templates}"));
    cases.finish("crafted_yaml", &mut serve).await;
}

// ------------------------------------------------------------------------ bodies

/// Oversized bodies (413, announced or chunked) and Content-Types a web page could send (415).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_content_types() {
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &["--router-max-body", "1MiB"]);
    let (admin, _) = tokens(&serve, dir.path());
    let addr = api_addr(&serve).await;
    let router = serve.router;
    let mut cases = Cases::default();
    let auth = bearer(&admin);

    // Announced too large: answered before the body is read.
    let a2 = auth.clone();
    let (status, _) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "POST /v1/apply HTTP/1.1\r\nHost: ate\r\nAuthorization: {a2}\r\nContent-Type: application/yaml\r\nContent-Length: {}\r\n\r\n",
            (1 << 20) + 1
        );
        s.write_all(head.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse(&out)
    })
    .await;
    cases.add("body.api.content-length-over-limit", status == 413, 0, 0, format!("status={status}"));

    // Chunked, no length announced: cut at the limit.
    let a2 = auth.clone();
    let (status, _) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!(
            "POST /v1/apply HTTP/1.1\r\nHost: ate\r\nAuthorization: {a2}\r\nContent-Type: application/yaml\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let _ = s.write_all(head.as_bytes());
        let chunk = vec![b'#'; 64 << 10];
        for _ in 0..40 {
            if s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).is_err()
                || s.write_all(&chunk).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse(&out)
    })
    .await;
    cases.add("body.api.chunked-over-limit", status == 413, 0, 0, format!("status={status}"));

    // Content-Types: only YAML/JSON media types are accepted for resources.
    let doc = |name: &str| {
        format!(
            "kind: WorkerPool\nmetadata: {{ name: {name} }}\nspec:\n  workers:\n    - {{ name: w{name}, socket: /run/{name}.sock }}\n"
        )
    };
    for (i, (ct, want)) in [
        (Some("text/plain"), 415),
        (Some("text/plain; charset=utf-8"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("multipart/form-data; boundary=x"), 415),
        (Some("text/html"), 415),
        (Some("application/yamlx"), 415),
        (None, 415),
        (Some("application/yaml; charset=utf-8"), 200),
        (Some("APPLICATION/X-YAML"), 200),
        (Some("text/yaml"), 200),
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("ct{i}");
        let body = doc(&name);
        let a2 = auth.clone();
        let (status, _) = blocking(move || {
            let mut h = vec![("Authorization", a2.as_str())];
            if let Some(ct) = ct {
                h.push(("Content-Type", ct));
            }
            raw(addr, &request("POST", "/v1/apply", &h, body.as_bytes()))
        })
        .await;
        let pools = serve.api.call(Method::GET, "/v1/pools", None).await.unwrap();
        let applied = pools.as_array().unwrap().iter().any(|p| p["name"] == name.as_str());
        let ok = status == want && applied == (want == 200);
        cases.add(
            format!("content-type.apply.{}", ct.unwrap_or("none").replace(' ', "")),
            ok,
            0,
            0,
            format!("status={status} want={want} applied={applied}"),
        );
    }
    let a2 = auth.clone();
    let (status, _) = blocking(move || {
        raw(
            addr,
            &request(
                "POST",
                "/v1/actors",
                &[("Authorization", &a2), ("Content-Type", "application/yaml")],
                b"name: a\ntemplate: t\n",
            ),
        )
    })
    .await;
    cases.add("content-type.create-actor.yaml", status == 415, 0, 0, format!("status={status} want=415"));
    let a2 = auth.clone();
    let (status, _) = blocking(move || {
        raw(
            addr,
            &request(
                "POST",
                "/v1/actors/ghost/pause",
                &[("Authorization", &a2), ("Content-Type", "application/json")],
                b"{}",
            ),
        )
    })
    .await;
    cases.add("body.pause-takes-none", status == 400, 0, 0, format!("status={status} want=400"));

    // The router: announced over --router-max-body.
    let (status, _) = blocking(move || {
        let mut s = TcpStream::connect(router).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = format!("POST / HTTP/1.1\r\nHost: a1.actors.local\r\nContent-Length: {}\r\n\r\n", 2 << 20);
        s.write_all(head.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse(&out)
    })
    .await;
    cases.add("body.router.content-length-over-limit", status == 413, 0, 0, format!("status={status}"));
    cases.finish("oversized_bodies_and_content_types", &mut serve).await;
}

// ------------------------------------------------------------------------ slowloris

/// Whether the server closes `s` within `secs` (read returns EOF or an error).
fn closed_within(s: &mut TcpStream, secs: u64) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    while start.elapsed() < Duration::from_secs(secs) {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(start.elapsed()),
        }
    }
    None
}

/// Slow clients on the API, the router and the metrics listener: a head that never ends, a
/// head trickled byte by byte, an idle keep-alive connection, a body that never comes, and
/// more connections from one peer than allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris() {
    let dir = tmp();
    let mut serve = serve_in(
        dir.path(),
        &[
            "--header-timeout",
            "1s",
            "--idle-timeout",
            "2s",
            "--body-timeout",
            "2s",
            "--max-connections-per-client",
            "16",
        ],
    );
    let (admin, _) = tokens(&serve, dir.path());
    let mut cases = Cases::default();
    let listeners =
        [("api", api_addr(&serve).await), ("router", serve.router), ("metrics", serve.metrics_addr.unwrap())];
    for (lname, addr) in listeners {
        let auth = bearer(&admin);
        let r = blocking(move || {
            // A head that stops half way.
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: a").unwrap();
            let partial = closed_within(&mut s, 10);
            // A head trickled one byte every 200 ms (each byte in time, the whole never).
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").unwrap();
            let start = Instant::now();
            let mut trickle = None;
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            let mut b = [0u8; 512];
            while start.elapsed() < Duration::from_secs(10) {
                if s.write_all(b"a").is_err() {
                    trickle = Some(start.elapsed());
                    break;
                }
                match s.read(&mut b) {
                    Ok(0) => {
                        trickle = Some(start.elapsed());
                        break;
                    }
                    Err(e)
                        if !matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        trickle = Some(start.elapsed());
                        break;
                    }
                    _ => {}
                }
            }
            // A kept-alive connection after one complete request, then silence.
            let mut s = TcpStream::connect(addr).unwrap();
            let req = format!("GET /healthz HTTP/1.1\r\nHost: ate\r\nAuthorization: {auth}\r\n\r\n");
            s.write_all(req.as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 4096];
            let answered = s.read(&mut b).map(|n| n > 0).unwrap_or(false);
            let idle = closed_within(&mut s, 10);
            (partial, trickle, answered, idle)
        })
        .await;
        let (partial, trickle, answered, idle) = r;
        cases.add(
            format!("slowloris.{lname}.partial-head"),
            partial.is_some(),
            0,
            0,
            format!("closed_after={partial:?} header_timeout=1s"),
        );
        cases.add(
            format!("slowloris.{lname}.trickled-head"),
            trickle.is_some(),
            0,
            0,
            format!("closed_after={trickle:?}"),
        );
        cases.add(
            format!("slowloris.{lname}.idle-keepalive"),
            answered && idle.is_some(),
            0,
            0,
            format!("answered={answered} closed_after={idle:?} idle_timeout=2s"),
        );
    }
    // A body announced and never sent: 408 after --body-timeout.
    let addr = api_addr(&serve).await;
    let auth = bearer(&admin);
    let (status, _) = blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let head = format!("POST /v1/apply HTTP/1.1\r\nHost: ate\r\nAuthorization: {auth}\r\nContent-Type: application/yaml\r\nContent-Length: 1000\r\n\r\nkind: ");
        s.write_all(head.as_bytes()).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse(&out)
    })
    .await;
    cases.add("slowloris.api.stalled-body", status == 408, 0, 0, format!("status={status} want=408"));
    // More connections from one peer than --max-connections-per-client: the extra ones are
    // closed at once.
    let router = serve.router;
    let (closed_fast, held) = blocking(move || {
        let mut conns: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(router).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(300));
        let mut closed = 0;
        for s in &mut conns {
            if closed_within(s, 0).is_some() || {
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                let mut b = [0u8; 16];
                matches!(s.read(&mut b), Ok(0))
            } {
                closed += 1;
            }
        }
        (closed, conns.len() - closed)
    })
    .await;
    cases.add(
        "slowloris.router.connections-per-client",
        closed_fast >= 24 && held <= 16,
        0,
        0,
        format!("closed_at_accept={closed_fast} held={held} max=16"),
    );
    let metrics = serve.metrics().await;
    let events = |l: &str, e: &str| -> f64 {
        metrics
            .lines()
            .find(|x| x.starts_with(&format!("ate_http_events_total{{listener=\"{l}\",event=\"{e}\"}}")))
            .and_then(|x| x.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    let counted = events("router", "header_timeout") >= 2.0
        && events("router", "refused_per_client") >= 24.0
        && events("api", "idle_closed") >= 1.0;
    cases.add(
        "slowloris.counted-in-metrics",
        counted,
        0,
        0,
        format!(
            "router.header_timeout={} router.refused_per_client={} api.idle_closed={}",
            events("router", "header_timeout"),
            events("router", "refused_per_client"),
            events("api", "idle_closed")
        ),
    );
    cases.finish("slowloris", &mut serve).await;
}

// ------------------------------------------------------------------------ Host headers

/// Crafted Host headers at the router: huge, non-UTF-8, doubled, missing, with ports, paths
/// and userinfo, absolute-form URIs, and thousands of distinct names (which must allocate
/// nothing per name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crafted_host_headers() {
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &[]);
    let router = serve.router;
    let upstream = Upstream::start().await;
    let mut cases = Cases::default();
    let mut crafted: Vec<(String, Vec<u8>)> = vec![
        (
            "huge-8k".into(),
            format!(
                "GET / HTTP/1.1\r\nHost: {}.actors.local\r\nConnection: close\r\n\r\n",
                "a".repeat(8 << 10)
            )
            .into_bytes(),
        ),
        (
            "huge-200k".into(),
            format!("GET / HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n", "a".repeat(200 << 10))
                .into_bytes(),
        ),
        (
            "non-utf8".into(),
            b"GET / HTTP/1.1\r\nHost: a\xff\xfe.actors.local\r\nConnection: close\r\n\r\n".to_vec(),
        ),
        (
            "two-hosts".into(),
            b"GET / HTTP/1.1\r\nHost: a1.actors.local\r\nHost: a2.actors.local\r\nConnection: close\r\n\r\n"
                .to_vec(),
        ),
        ("no-host".into(), b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n".to_vec()),
        ("empty-host".into(), b"GET / HTTP/1.1\r\nHost: \r\nConnection: close\r\n\r\n".to_vec()),
        (
            "absolute-uri".into(),
            format!(
                "GET http://{}/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                upstream.addr, upstream.addr
            )
            .into_bytes(),
        ),
        (
            "absolute-uri-actor".into(),
            format!(
                "GET http://{}/x HTTP/1.1\r\nHost: a1.actors.local\r\nConnection: close\r\n\r\n",
                upstream.addr
            )
            .into_bytes(),
        ),
        (
            "connect".into(),
            format!("CONNECT {} HTTP/1.1\r\nHost: {}\r\n\r\n", upstream.addr, upstream.addr).into_bytes(),
        ),
    ];
    for (n, h) in [
        ("port-huge", "a1.actors.local:99999999999"),
        ("port-double", "a1.actors.local:80:80"),
        ("path", "a1.actors.local/../../etc"),
        ("userinfo", "a1.actors.local@127.0.0.1:22"),
        ("upstream-addr", &upstream.addr.to_string()),
        ("ipv6", "[::1]:7080"),
        ("dot-dot-label", "...actors.local"),
        ("percent", "a%2e1.actors.local"),
        ("nested", "x.a1.actors.local"),
        ("suffix-only", "actors.local"),
        ("tab", "a1.actors.local\t"),
    ] {
        crafted.push((
            n.into(),
            format!("GET / HTTP/1.1\r\nHost: {h}\r\nConnection: close\r\n\r\n").into_bytes(),
        ));
    }
    for (name, bytes) in crafted {
        let (status, body) = blocking(move || raw(router, &bytes)).await;
        let leak = leaks(&body, dir.path());
        let ok = (400..500).contains(&status) || status == 0;
        cases.add(
            format!("host.{name}"),
            ok && leak.is_none(),
            0,
            0,
            format!("status={status} leak={leak:?}"),
        );
    }
    // Thousands of distinct Host names on one kept-alive connection: all 404, no per-name
    // state (the gate gauge stays 0: no actor exists).
    let gates = |m: &str| {
        m.lines()
            .find(|l| l.starts_with("ate_actor_gates "))
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    let before = gates(&serve.metrics().await);
    let statuses = blocking(move || {
        let mut s = TcpStream::connect(router).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut counts = std::collections::BTreeMap::<u16, u32>::new();
        let mut rng = 0x1234_5678u64;
        for i in 0..3000u32 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let host =
                if i % 3 == 0 { format!("h{i}.actors.local") } else { format!("{rng:x}-{i}.example.{i}") };
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            if s.write_all(req.as_bytes()).is_err() {
                s = TcpStream::connect(router).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                s.write_all(req.as_bytes()).unwrap();
            }
            // Read one response: head, then Content-Length bytes.
            let mut buf = Vec::new();
            let mut b = [0u8; 1];
            while !buf.ends_with(b"\r\n\r\n") {
                match s.read(&mut b) {
                    Ok(1) => buf.push(b[0]),
                    _ => break,
                }
            }
            let head = String::from_utf8_lossy(&buf).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            let mut body = vec![0u8; len];
            let _ = s.read_exact(&mut body);
            *counts.entry(parse(&buf).0).or_default() += 1;
        }
        counts
    })
    .await;
    let after = gates(&serve.metrics().await);
    let all_404 = statuses.len() == 1 && statuses.contains_key(&404);
    cases.add(
        "host.3000-distinct-names",
        all_404 && before == Some(0) && after == Some(0),
        0,
        0,
        format!("statuses={statuses:?} gates_before={before:?} gates_after={after:?}"),
    );
    let reached = upstream.stats.connections.load(SeqCst);
    cases.add(
        "host.never-proxied",
        reached == 0,
        reached as u32,
        0,
        format!("upstream_connections={reached}"),
    );
    cases.finish("crafted_host_headers", &mut serve).await;
}

// ------------------------------------------------------------------------ fake workers

/// Workers as attackers: one registered by an unauthenticated (or read-only) apply, one that
/// reports a non-loopback endpoint in its capabilities, one whose RunWorkload names one, one
/// whose RestoreWorkload names one. None is ever used as a proxy target; router errors name
/// nothing internal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_workers_are_refused() {
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &["--resume-timeout", "15s"]);
    let (_, read) = tokens(&serve, dir.path());
    let addr = api_addr(&serve).await;
    let upstream = Upstream::start().await;
    let elsewhere = format!("0.0.0.0:{}", upstream.addr.port());
    let bucket = format!("file://{}/bucket", dir.path().display());
    let mut cases = Cases::default();

    // 1. Registered without (or with the read) token: refused, never contacted.
    let intruder = FakeWorker::start(&dir.path().join("intruder"), Script::default()).await;
    let yaml = pool_and_template("evil", "intruder", &intruder.socket, "evil", &format!("{bucket}/evil"), "");
    for (cname, cred) in
        [("none", None), ("wrong", Some(bearer("not-a-token-at-all"))), ("read", Some(bearer(&read)))]
    {
        let y = yaml.clone();
        let (status, _) = blocking(move || {
            let mut h = vec![("Content-Type", "application/yaml")];
            if let Some(c) = &cred {
                h.push(("Authorization", c.as_str()));
            }
            raw(addr, &request("POST", "/v1/apply", &h, y.as_bytes()))
        })
        .await;
        let want = if cname == "read" { 403 } else { 401 };
        cases.add(
            format!("worker.register.{cname}"),
            status == want,
            0,
            u32::from(status != want && status != 401 && status != 403),
            format!("status={status} want={want}"),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let workers = serve.api.workers().await.unwrap();
    let listed = workers.iter().any(|w| w.name == "intruder");
    let contacted = intruder.seen().caps_calls;
    cases.add(
        "worker.register.never-admitted",
        !listed && contacted == 0,
        u32::from(listed) + u32::from(contacted > 0),
        0,
        format!("listed={listed} caps_calls={contacted}"),
    );

    // 2. Capabilities name a non-loopback endpoint: the worker is unhealthy with the reason.
    let a = FakeWorker::start(
        &dir.path().join("fa"),
        Script {
            caps_endpoint: elsewhere.clone(),
            caps_always: true,
            run_endpoint: elsewhere.clone(),
            ..Default::default()
        },
    )
    .await;
    serve
        .api
        .apply(&pool_and_template("pa", "fake-a", &a.socket, "ta", &format!("{bucket}/ta"), ""))
        .await
        .unwrap();
    let api = serve.api.clone();
    let refused = wait_for(15, || {
        let api = api.clone();
        async move {
            let w = api.workers().await.ok()?.into_iter().find(|w| w.name == "fake-a")?;
            (!w.healthy && w.error.as_deref().is_some_and(|e| e.contains("loopback"))).then_some(w)
        }
    })
    .await;
    let golden = serve.api.call(Method::GET, "/v1/templates", None).await.unwrap();
    let ta = golden.as_array().unwrap().iter().find(|t| t["name"] == "ta").cloned().unwrap_or_default();
    cases.add(
        "worker.caps-endpoint-not-loopback",
        refused.is_some() && ta["golden"]["status"] != "READY" && a.seen().runs.is_empty(),
        u32::from(!a.seen().runs.is_empty()),
        0,
        format!("error={:?} golden={}", refused.and_then(|w| w.error), ta["golden"]["status"]),
    );

    // 3. RunWorkload names a non-loopback endpoint: the golden build fails with the reason.
    let b = FakeWorker::start(
        &dir.path().join("fb"),
        Script { run_endpoint: elsewhere.clone(), ..Default::default() },
    )
    .await;
    serve
        .api
        .apply(&pool_and_template("pb", "fake-b", &b.socket, "tb", &format!("{bucket}/tb"), ""))
        .await
        .unwrap();
    let t = golden_settled(&serve, "tb", 20).await;
    let reason = t["golden"]["reason"].as_str().unwrap_or_default().to_owned();
    cases.add(
        "worker.run-endpoint-not-loopback",
        t["golden"]["status"] == "FAILED" && reason.contains("loopback"),
        0,
        0,
        format!("golden={} reason={reason:?}", t["golden"]["status"]),
    );

    // 3b. A worker on this host names a `tls://` endpoint (what actors on workers of other
    //     hosts get from their pool's `forward`): refused like any non-loopback endpoint, so
    //     a worker cannot choose a TLS front for the router to dial.
    let b2 = FakeWorker::start(
        &dir.path().join("fb2"),
        Script { run_endpoint: format!("tls://{}", upstream.addr), ..Default::default() },
    )
    .await;
    serve
        .api
        .apply(&pool_and_template("pb2", "fake-b2", &b2.socket, "tb2", &format!("{bucket}/tb2"), ""))
        .await
        .unwrap();
    let t = golden_settled(&serve, "tb2", 20).await;
    let reason = t["golden"]["reason"].as_str().unwrap_or_default().to_owned();
    cases.add(
        "worker.run-endpoint-tls-scheme",
        t["golden"]["status"] == "FAILED" && reason.contains("not an IP address and port"),
        0,
        0,
        format!("golden={} reason={reason:?}", t["golden"]["status"]),
    );

    // 4. RestoreWorkload names a non-loopback endpoint: the actor CRASHES, the router answers
    //    503 naming nothing internal, nothing reaches the upstream.
    let c = FakeWorker::start(
        &dir.path().join("fc"),
        Script {
            run_endpoint: upstream.addr.to_string(),
            restore_endpoint: elsewhere.clone(),
            ..Default::default()
        },
    )
    .await;
    serve
        .api
        .apply(&pool_and_template("pc", "fake-c", &c.socket, "tc", &format!("{bucket}/tc"), ""))
        .await
        .unwrap();
    let t = golden_settled(&serve, "tc", 20).await;
    let ready = t["golden"]["status"] == "READY";
    serve.api.apply("kind: Actor\nmetadata: { name: c1 }\nspec: { template: tc }\n").await.unwrap();
    let router = serve.router;
    let (status, body) =
        blocking(move || raw(router, &request("GET", "/", &[("Host", "c1.actors.local")], b""))).await;
    let actor = serve.api.actor("c1").await.unwrap();
    let reason = actor.actor.reason.clone().unwrap_or_default();
    let leak = leaks(&body, dir.path()).or_else(|| {
        ["fake-c", "pc", "loopback", "RestoreWorkload"]
            .iter()
            .find(|n| body.contains(*n))
            .map(|n| n.to_string())
    });
    cases.add(
        "worker.restore-endpoint-not-loopback",
        ready && actor.actor.state.to_string() == "CRASHED" && reason.contains("loopback"),
        0,
        0,
        format!("golden_ready={ready} state={} reason={reason:?}", actor.actor.state),
    );
    cases.add(
        "router.error-body-names-nothing-internal",
        (500..600).contains(&status) && leak.is_none(),
        0,
        0,
        format!("status={status} body={body:?} leak={leak:?}"),
    );
    let reached = upstream.stats.connections.load(SeqCst);
    cases.add(
        "worker.endpoints-never-proxied",
        reached == 0,
        reached as u32,
        0,
        format!("upstream_connections={reached}"),
    );
    cases.finish("fake_workers_are_refused", &mut serve).await;
}

// ------------------------------------------------------------------------ the router's bounds

/// With a workload behind it (a fake worker whose restores point at a loopback upstream):
/// resumes per client capped (429 + Retry-After), large bodies streamed, oversized ones cut,
/// a stalled body cut, an upstream that never answers timed out (504), and the error bodies
/// fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_bounds_with_a_workload() {
    let dir = tmp();
    let mut serve = serve_in(
        dir.path(),
        &[
            "--max-resumes-per-client",
            "2",
            "--upstream-timeout",
            "2s",
            "--body-timeout",
            "1s",
            "--router-max-body",
            "16MiB",
            "--resume-timeout",
            "20s",
        ],
    );
    let upstream = Upstream::start().await;
    let up = upstream.addr.to_string();
    let d = FakeWorker::start(
        &dir.path().join("fd"),
        Script {
            run_endpoint: up.clone(),
            restore_endpoint: up.clone(),
            restore_delay: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await;
    let bucket = format!("file://{}/bucket/td", dir.path().display());
    serve.api.apply(&pool_and_template("pd", "fake-d", &d.socket, "td", &bucket, "")).await.unwrap();
    let t = golden_settled(&serve, "td", 20).await;
    assert_eq!(t["golden"]["status"], "READY", "{t}");
    let docs: Vec<String> = (1..=6)
        .map(|i| format!("kind: Actor\nmetadata: {{ name: d{i} }}\nspec: {{ template: td }}\n"))
        .collect();
    serve.api.apply(&docs.join("---\n")).await.unwrap();
    let router = serve.router;
    let mut cases = Cases::default();

    // Six requests at once for six suspended actors from one client, two allowed to wait.
    let answers = futures::future::join_all((1..=6).map(|i| {
        blocking(move || {
            let mut s = TcpStream::connect(router).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
            s.write_all(
                format!("GET / HTTP/1.1\r\nHost: d{i}.actors.local\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .unwrap();
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
            (parse(&out).0, text.contains("retry-after: 1"))
        })
    }))
    .await;
    let limited = answers.iter().filter(|(s, ra)| *s == 429 && *ra).count();
    let others_ok = answers.iter().filter(|(s, _)| *s != 429).all(|(s, _)| matches!(s, 200 | 503));
    cases.add("router.resumes-per-client", limited >= 3 && others_ok, 0, 0, format!("answers={answers:?}"));

    // Make d1 RUNNING (a plain request, retried while it resumes).
    let ok = wait_for(40, || async move {
        let (s, b) =
            blocking(move || raw(router, &request("GET", "/", &[("Host", "d1.actors.local")], b""))).await;
        (s == 200 && b == "hello").then_some(())
    })
    .await;
    cases.add("router.forwards-to-loopback-workload", ok.is_some(), 0, 0, "GET / answered by the upstream");

    // A large body is streamed through (not buffered whole), chunked too.
    let (s1, b1) = blocking(move || {
        raw(router, &request("POST", "/echo", &[("Host", "d1.actors.local")], &vec![b'x'; 8 << 20]))
    })
    .await;
    cases.add(
        "router.large-body-streamed",
        s1 == 200 && b1 == (8u64 << 20).to_string(),
        0,
        0,
        format!("status={s1} echoed={b1}"),
    );
    let (s2, b2) = blocking(move || {
        let mut s = TcpStream::connect(router).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: d1.actors.local\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        for _ in 0..32 {
            s.write_all(format!("{:x}\r\n", 64 << 10).as_bytes()).unwrap();
            s.write_all(&vec![b'y'; 64 << 10]).unwrap();
            s.write_all(b"\r\n").unwrap();
        }
        s.write_all(b"0\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse(&out)
    })
    .await;
    cases.add(
        "router.chunked-body-streamed",
        s2 == 200 && b2 == (2u64 << 20).to_string(),
        0,
        0,
        format!("status={s2} echoed={b2}"),
    );

    // Chunked past --router-max-body: cut, never delivered whole.
    let before = upstream.stats.body_bytes.load(SeqCst);
    let (s3, b3) = blocking(move || {
        let mut s = TcpStream::connect(router).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let _ = s.write_all(b"POST /echo HTTP/1.1\r\nHost: d1.actors.local\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
        for _ in 0..(20 * 16) {
            if s.write_all(format!("{:x}\r\n", 64 << 10).as_bytes()).is_err()
                || s.write_all(&vec![b'z'; 64 << 10]).is_err()
                || s.write_all(b"\r\n").is_err()
            {
                break;
            }
        }
        let _ = s.write_all(b"0\r\n\r\n");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        parse(&out)
    })
    .await;
    let delivered = upstream.stats.body_bytes.load(SeqCst) - before;
    cases.add(
        "router.chunked-over-max-cut",
        s3 != 200 && delivered <= (16 << 20) + (1 << 20) && b3 != (20u64 << 20).to_string(),
        0,
        0,
        format!("status={s3} delivered_bytes={delivered} max=16MiB"),
    );

    // A streamed body that stalls: the router cuts it after --body-timeout; the upstream
    // sees its request end instead of waiting forever (a pause could not drain otherwise).
    let cut_before = upstream.stats.bodies_cut.load(SeqCst);
    let stalled = blocking(move || {
        let mut s = TcpStream::connect(router).unwrap();
        s.write_all(format!("POST /echo HTTP/1.1\r\nHost: d1.actors.local\r\nConnection: close\r\nContent-Length: {}\r\n\r\n", 1 << 20).as_bytes()).unwrap();
        s.write_all(&vec![b'w'; 100 << 10]).unwrap();
        s
    })
    .await;
    let st = upstream.stats.clone();
    let cut = wait_for(15, || {
        let st = st.clone();
        async move { (st.bodies_cut.load(SeqCst) > cut_before).then_some(()) }
    })
    .await;
    drop(stalled);
    cases.add(
        "router.stalled-body-cut",
        cut.is_some(),
        0,
        0,
        format!("upstream_bodies_cut={}", upstream.stats.bodies_cut.load(SeqCst)),
    );

    // An upstream that never answers: 504 after --upstream-timeout, fixed body.
    let started = Instant::now();
    let (s4, b4) =
        blocking(move || raw(router, &request("GET", "/slow", &[("Host", "d1.actors.local")], b""))).await;
    let leak = leaks(&b4, dir.path()).or_else(|| {
        [up.as_str(), "fake-d", "127.0.0.1"].iter().find(|n| b4.contains(*n)).map(|n| n.to_string())
    });
    cases.add(
        "router.upstream-timeout",
        s4 == 504 && leak.is_none(),
        0,
        0,
        format!("status={s4} after_ms={} body={b4:?} leak={leak:?}", started.elapsed().as_millis()),
    );
    let metrics = serve.metrics().await;
    let counted = ["too_many_resumes", "upstream_timeout"]
        .iter()
        .all(|r| metrics.contains(&format!("ate_router_errors_total{{reason=\"{r}\"}}")));
    cases.add(
        "router.errors-counted-in-metrics",
        counted,
        0,
        0,
        "ate_router_errors_total{reason=too_many_resumes|upstream_timeout}",
    );
    cases.finish("router_bounds_with_a_workload", &mut serve).await;
}

// ------------------------------------------------------------------------ signed snapshots

/// The index file of snapshot `id` under a `file://` prefix.
fn index_file(prefix: &str, id: &str) -> std::path::PathBuf {
    Path::new(prefix.strip_prefix("file://").unwrap()).join(id).join("index.json")
}

/// `ate serve --snapshot-key-file`: golden snapshots unsigned or signed with another key are
/// refused when built; an actor whose durable snapshot lost its signature, or whose signature
/// was forged, becomes CRASHED with the reason before any worker is asked to restore it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_must_verify_at_placement() {
    let dir = tmp();
    let key = dir.path().join("snapshot.key");
    let other = dir.path().join("other.key");
    keygen(&key);
    keygen(&other);
    let mut serve =
        serve_in(dir.path(), &["--snapshot-key-file", key.to_str().unwrap(), "--resume-timeout", "15s"]);
    let upstream = Upstream::start().await;
    let up = upstream.addr.to_string();
    let bucket = format!("file://{}/bucket", dir.path().display());
    let mut cases = Cases::default();

    for (name, sign_with, needle) in
        [("unsigned", None, "not signed"), ("other-key", Some(other.clone()), "signature")]
    {
        let w = FakeWorker::start(
            &dir.path().join(name),
            Script { run_endpoint: up.clone(), sign_with, ..Default::default() },
        )
        .await;
        let t = format!("t-{name}");
        serve
            .api
            .apply(&pool_and_template(
                &format!("p-{name}"),
                &format!("w-{name}"),
                &w.socket,
                &t,
                &format!("{bucket}/{t}"),
                "",
            ))
            .await
            .unwrap();
        let g = golden_settled(&serve, &t, 20).await;
        let reason = g["golden"]["reason"].as_str().unwrap_or_default().to_owned();
        cases.add(
            format!("snapshot.golden-{name}"),
            g["golden"]["status"] == "FAILED" && reason.contains(needle),
            0,
            0,
            format!("golden={} reason={reason:?}", g["golden"]["status"]),
        );
    }

    // Signed with ate's key: usable; then its durable snapshots are tampered with.
    let w = FakeWorker::start(
        &dir.path().join("good"),
        Script {
            run_endpoint: up.clone(),
            restore_endpoint: up.clone(),
            sign_with: Some(key.clone()),
            ..Default::default()
        },
    )
    .await;
    let prefix = format!("{bucket}/tg");
    serve.api.apply(&pool_and_template("pg", "w-good", &w.socket, "tg", &prefix, "")).await.unwrap();
    let g = golden_settled(&serve, "tg", 20).await;
    cases.add(
        "snapshot.golden-signed",
        g["golden"]["status"] == "READY",
        0,
        0,
        format!("golden={}", g["golden"]["status"]),
    );
    let router = serve.router;
    for (actor, tamper, needle) in [("g1", "strip", "not signed"), ("g2", "forge", "signature")] {
        serve
            .api
            .apply(&format!("kind: Actor\nmetadata: {{ name: {actor} }}\nspec: {{ template: tg }}\n"))
            .await
            .unwrap();
        serve.api.action(actor, "resume").await.unwrap();
        let a = serve.api.action(actor, "suspend").await.unwrap();
        let d = a.actor.durable.clone().unwrap();
        let path = index_file(&format!("{prefix}/actors/{actor}"), &d.snapshot_id);
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if tamper == "strip" {
            v.as_object_mut().unwrap().remove("signature");
        } else {
            // Forged: the signature of another snapshot's index, and a changed manifest.
            v["meta"]["host"]["host_id"] = "attacker".into();
        }
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let restores_before = w.seen().restores.len();
        let (status, _) = blocking(move || {
            raw(router, &request("GET", "/", &[("Host", &format!("{actor}.actors.local"))], b""))
        })
        .await;
        let a = serve.api.actor(actor).await.unwrap();
        let reason = a.actor.reason.clone().unwrap_or_default();
        let asked = w.seen().restores.len() - restores_before;
        cases.add(
            format!("snapshot.durable-{tamper}"),
            a.actor.state.to_string() == "CRASHED" && reason.contains(needle) && status == 503,
            u32::try_from(asked).unwrap_or(u32::MAX),
            0,
            format!("status={status} state={} reason={reason:?} restores_asked={asked}", a.actor.state),
        );
    }
    cases.finish("snapshots_must_verify_at_placement", &mut serve).await;
}

// ------------------------------------------------------------------------ CLI and files

/// Where the secrets live and how the CLI finds the admin token: the data directory and
/// token files are private, the database too; the CLI without a token is refused, with
/// `ATE_TOKEN`, `--token-file` or `--data-dir` it gets in with that token's role; a restart
/// keeps the tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_tokens_and_private_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp();
    let mut serve = serve_in(dir.path(), &[]);
    let (admin, _) = tokens(&serve, dir.path());
    let mut cases = Cases::default();
    let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
    for (name, path, want) in [
        ("data-dir", dir.path().join("data"), 0o700),
        ("tokens-dir", dir.path().join("data/tokens"), 0o700),
        ("admin-token", dir.path().join("data/tokens/admin"), 0o600),
        ("read-token", dir.path().join("data/tokens/read"), 0o600),
        ("database", dir.path().join("ate.db"), 0o600),
        ("database-wal", dir.path().join("ate.db-wal"), 0o600),
    ] {
        let m = mode(&path);
        cases.add(format!("files.{name}"), m == want, 0, 0, format!("mode={m:o} want={want:o}"));
    }
    let empty = dir.path().join("elsewhere");
    std::fs::create_dir(&empty).unwrap();
    let run = |api: &str, args: &[&str], envs: &[(&str, &str)]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ate"));
        c.env_remove("ATE_TOKEN").env_remove("ATE_TOKEN_FILE").env("ATE_DATA_DIR", &empty);
        c.args(["--api", api]).args(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let api = serve.api_addr.clone();
    let cli = |args: &[&str], envs: &[(&str, &str)]| run(&api, args, envs);
    let (ok, err) = cli(&["get", "actors"], &[]);
    cases.add(
        "cli.no-token",
        !ok && err.contains("401"),
        0,
        u32::from(ok),
        format!("ok={ok} stderr={:?}", err.trim()),
    );
    let (ok, err) = cli(&["get", "actors"], &[("ATE_TOKEN", "0123456789abcdef0123")]);
    cases.add("cli.wrong-token", !ok && err.contains("401"), 0, u32::from(ok), format!("ok={ok}"));
    let (ok, err) = cli(&["get", "actors"], &[("ATE_TOKEN", &admin)]);
    cases.add("cli.ate-token", ok, 0, 0, format!("ok={ok} stderr={:?}", err.trim()));
    let data = dir.path().join("data").display().to_string();
    let (ok, err) = cli(&["--data-dir", &data, "get", "workers"], &[]);
    cases.add("cli.data-dir-default-token", ok, 0, 0, format!("ok={ok} stderr={:?}", err.trim()));
    let read_file = dir.path().join("data/tokens/read").display().to_string();
    let (ok, err) = cli(&["--token-file", &read_file, "get", "actors"], &[]);
    cases.add("cli.read-token-file.get", ok, 0, 0, format!("ok={ok} stderr={:?}", err.trim()));
    let pool = dir.path().join("pool.yaml");
    std::fs::write(&pool, "kind: WorkerPool\nmetadata: { name: p }\nspec:\n  workers:\n    - { name: w, socket: /run/w.sock }\n").unwrap();
    let (ok, err) = cli(&["--token-file", &read_file, "apply", "-f", pool.to_str().unwrap()], &[]);
    cases.add(
        "cli.read-token-file.apply",
        !ok && err.contains("403"),
        0,
        u32::from(ok),
        format!("ok={ok} stderr={:?}", err.trim()),
    );
    // Template environment values may be secrets: the read token does not see them.
    let t = "kind: ActorTemplate\nmetadata: { name: t }\nspec:\n  pool: p\n  containers:\n    - { name: c, env: { API_KEY: hunter2-secret } }\n  snapshot: { location: \"file:///nonexistent\" }\n";
    serve.api.apply(t).await.unwrap();
    let read = ate::auth::read_token(Path::new(&read_file)).unwrap();
    let as_read = ate::api::ApiClient::with_token(&serve.api_addr, Some(read));
    let shown = as_read.call(Method::GET, "/v1/templates", None).await.unwrap().to_string();
    let to_admin = serve.api.call(Method::GET, "/v1/templates", None).await.unwrap().to_string();
    cases.add(
        "api.read-token-sees-no-env-values",
        !shown.contains("hunter2") && shown.contains("API_KEY") && to_admin.contains("hunter2"),
        u32::from(shown.contains("hunter2")),
        0,
        "GET /v1/templates: values redacted for the read token, shown to admin",
    );
    // A restart keeps the tokens.
    serve.restart();
    let (ok, _) = run(&serve.api_addr, &["get", "actors"], &[("ATE_TOKEN", &admin)]);
    cases.add("cli.token-survives-restart", ok, 0, 0, format!("ok={ok}"));
    cases.finish("cli_tokens_and_private_files", &mut serve).await;
}
