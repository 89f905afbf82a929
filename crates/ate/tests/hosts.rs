//! Workers on other hosts: `ate` drives real `ateom serve` gVisor workers through their TCP
//! listeners (`--listen-tcp`, mutual TLS) and routes traffic through their TLS fronts
//! (`--forward-tls`), with real certificates (rcgen). Everything listens on 127.0.0.1.
//!
//! * actors created, served, paused and resumed, suspended and resumed on workers named by
//!   `address: https://127.0.0.1:PORT`: every counter continues (memory == file);
//! * wrong TLS material (a CA that did not sign the workers, a client certificate the workers'
//!   CA did not sign, an expired one, a missing file, a worker certificate that does not name
//!   the address dialled) or nothing listening: the workers are unhealthy with a reason naming
//!   TLS (or the file, or the refused connection), and nothing is placed on them;
//! * the worker's front refuses a client without a certificate.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ate::api::WorkerView;
use ate::cluster::WorkerProc;
use ate::demo::parse_count;
use ate_core::ActorState;
use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A certificate for `names` signed by `ca`, written as `<prefix>.crt` / `<prefix>.key`.
fn leaf(dir: &Path, prefix: &str, ca: &Ca, names: &[&str], expired: bool) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    if expired {
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    }
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let (crt, k) = (dir.join(format!("{prefix}.crt")), dir.join(format!("{prefix}.key")));
    std::fs::write(&crt, params.signed_by(&key, &issuer).unwrap().pem()).unwrap();
    std::fs::write(&k, key.serialize_pem()).unwrap();
    (crt, k)
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The certificates of one test: the fleet's CA (signs workers and `ate`), a foreign CA.
struct Pki {
    dir: PathBuf,
    ca: Ca,
    ca_file: PathBuf,
    foreign: Ca,
    foreign_file: PathBuf,
    /// `ate`'s client certificate, signed by `ca`.
    ate: (PathBuf, PathBuf),
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, foreign) = (ca("fleet CA"), ca("foreign CA"));
        let ca_file = write(&dir, "ca.crt", &ca.pem);
        let foreign_file = write(&dir, "foreign-ca.crt", &foreign.pem);
        let ate = leaf(&dir, "ate", &ca, &["ate"], false);
        Pki { dir, ca, ca_file, foreign, foreign_file, ate }
    }

    /// `tls: { ca, cert, key }` as YAML.
    fn yaml(ca: &Path, (cert, key): &(PathBuf, PathBuf)) -> String {
        format!("{{ ca: \"{}\", cert: \"{}\", key: \"{}\" }}", ca.display(), cert.display(), key.display())
    }
}

/// A worker on "another host": its gRPC on TCP and its TLS front, both mutual TLS.
struct Remote {
    /// None: nothing listens at these addresses.
    proc_: Option<WorkerProc>,
    grpc: SocketAddr,
    front: SocketAddr,
}

impl Remote {
    fn start(dir: &Path, pki: &Pki, name: &str, host_id: &str) -> Remote {
        Self::start_named(dir, pki, name, host_id, &["127.0.0.1", "localhost"])
    }

    /// [`Self::start`] with a certificate for `names` only.
    fn start_named(dir: &Path, pki: &Pki, name: &str, host_id: &str, names: &[&str]) -> Remote {
        let (cert, key) = leaf(&pki.dir, name, &pki.ca, names, false);
        Self::start_files(dir, name, host_id, &cert, &key, &pki.ca_file)
    }

    /// A worker presenting `cert`/`key` and accepting clients `ca` signed.
    fn start_files(dir: &Path, name: &str, host_id: &str, cert: &Path, key: &Path, ca: &Path) -> Remote {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let front: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let args: Vec<String> = vec![
            "--listen-tcp".into(),
            grpc.to_string(),
            "--forward-tls".into(),
            front.to_string(),
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
            "--tls-ca".into(),
            ca.display().to_string(),
        ];
        let proc_ = WorkerProc::start_with(&ateom_bin(), &dir.join(name), name, host_id, &args).unwrap();
        let until = deadline(20);
        while std::net::TcpStream::connect(grpc).is_err() || std::net::TcpStream::connect(front).is_err() {
            assert!(std::time::Instant::now() < until, "{name} does not listen: {}", proc_.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
        Remote { proc_: Some(proc_), grpc, front }
    }

    /// Its pool entry: `address`, `forward` and an optional `tls` override.
    fn entry(&self, name: &str, tls: Option<String>) -> String {
        let tls = tls.map(|t| format!(", tls: {t}")).unwrap_or_default();
        format!(
            "    - {{ name: {name}, address: \"https://{}\", forward: \"{}\"{tls} }}\n",
            self.grpc, self.front
        )
    }
}

fn template(pool: &str, name: &str, image: &str, location: &str) -> String {
    format!(
        "---\nkind: ActorTemplate\nmetadata: {{ name: {name} }}\nspec:\n  pool: {pool}\n  containers:\n    - name: counter\n      image: \"{image}\"\n      readyz: {{ httpGet: {{ path: /readyz, port: 8080 }} }}\n  resources: {{ cpu: \"1\", memory: 256Mi }}\n  snapshot: {{ location: \"{location}\" }}\n"
    )
}

fn apply(lab: &Lab, file: &str, yaml: &str) {
    let path = lab.dir.path().join(file);
    std::fs::write(&path, yaml).unwrap();
    let (ok, out, err) = lab.serve.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(ok, "ate apply failed: {out}\n{err}\n{yaml}");
}

async fn workers(lab: &Lab) -> Vec<WorkerView> {
    lab.serve.api.workers().await.unwrap()
}

/// GET through the router: the counter must answer `want` in memory and in its file.
async fn expect_count(lab: &Lab, actor: &str, want: u64) {
    let (status, body) = get(lab.serve.router, actor).await.unwrap();
    assert_eq!(status, 200, "{actor}: {body}\n{}", lab.serve.log_text());
    let c = parse_count(&body).unwrap();
    assert_eq!((c.memory, c.file), (want, want), "{actor}: the counter must continue (memory and file)");
}

async fn wait_state(lab: &Lab, actor: &str, want: ActorState, secs: u64) {
    let api = lab.serve.api.clone();
    let got = wait_for(secs, || {
        let api = api.clone();
        async move { api.actor(actor).await.ok().filter(|a| a.actor.state == want) }
    })
    .await;
    assert!(got.is_some(), "{actor} never became {want:?}: {:?}", lab.serve.api.actor(actor).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn actors_run_on_workers_reached_over_mutual_tls() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED actors_run_on_workers_reached_over_mutual_tls: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start(StoreKind::Sqlite, 0);
    let pki = Pki::new(lab.dir.path());
    let remotes = [
        Remote::start(lab.dir.path(), &pki, "r1", "host-1"),
        Remote::start(lab.dir.path(), &pki, "r2", "host-2"),
    ];
    let mut yaml = format!(
        "kind: WorkerPool\nmetadata: {{ name: hosts }}\nspec:\n  tls: {}\n  workers:\n",
        Pki::yaml(&pki.ca_file, &pki.ate)
    );
    for (i, r) in remotes.iter().enumerate() {
        yaml.push_str(&r.entry(&format!("r{}", i + 1), None));
    }
    yaml.push_str(&template("hosts", "counter", &lab.image, &lab.location));
    apply(&lab, "hosts.yaml", &yaml);
    let golden = golden_settled(&lab.serve, "counter", 120).await;
    assert_eq!(golden["golden"]["status"], "READY", "{golden}\n{}", lab.serve.log_text());

    // Both workers answer over TLS; the CLI shows their addresses and TLS fronts.
    let ws = workers(&lab).await;
    for (w, r) in ws.iter().zip(&remotes) {
        assert!(w.healthy, "{w:?}");
        assert_eq!(w.address.as_deref(), Some(format!("https://{}", r.grpc).as_str()));
        assert_eq!(w.endpoint.as_deref(), Some(format!("tls://{}", r.front).as_str()), "{w:?}");
        assert!(w.socket.is_empty(), "{w:?}");
    }
    let (ok, out, _) = lab.serve.cli(&["get", "workers"]);
    assert!(ok && out.contains("ADDRESS") && out.contains(&format!("https://{}", remotes[0].grpc)), "{out}");
    assert!(out.contains("host-1") && out.contains("host-2"), "{out}");

    // Traffic through the router reaches the workload through the worker's TLS front.
    let names = lab.create_actors(2);
    for n in 1..=3 {
        for a in &names {
            expect_count(&lab, a, n).await;
        }
    }
    let mut on = Vec::new();
    for a in &names {
        let v = lab.serve.api.actor(a).await.unwrap().actor;
        assert_eq!(v.state, ActorState::Running);
        let w = v.worker.clone().unwrap();
        let r = &remotes[if w == "r1" { 0 } else { 1 }];
        assert_eq!(v.endpoint.as_deref(), Some(format!("tls://{}", r.front).as_str()), "{v:?}");
        on.push(w);
    }
    assert_ne!(on[0], on[1], "two running actors hold two workers");

    // Pause (LOCAL, on that host) and resume on traffic: same worker, state continues.
    for a in &names {
        let (ok, out, err) = lab.serve.cli(&["pause", "actor", a]);
        assert!(ok, "{out}{err}");
    }
    for a in &names {
        wait_state(&lab, a, ActorState::Paused, 60).await;
        expect_count(&lab, a, 4).await;
    }
    for (a, w) in names.iter().zip(&on) {
        let v = lab.serve.api.actor(a).await.unwrap().actor;
        assert_eq!(v.worker.as_ref(), Some(w), "a PAUSED actor resumes on the host holding its snapshot");
    }
    // Suspend (DURABLE) one and resume it: wherever it lands, its state continues.
    let (ok, out, err) = lab.serve.cli(&["suspend", "actor", &names[0]]);
    assert!(ok, "{out}{err}");
    wait_state(&lab, &names[0], ActorState::Suspended, 60).await;
    expect_count(&lab, &names[0], 5).await;
    expect_count(&lab, &names[1], 5).await;

    // A client without a certificate gets nothing from a worker's front (the router, with
    // its certificate, does).
    let anonymous = ateom_grpc::tls::anonymous_client_config(&pki.ca_file).unwrap();
    let refused = raw_get_over_tls(remotes[0].front, anonymous).await;
    assert!(refused.is_err(), "a client without a certificate was answered: {refused:?}");
    eprintln!("no client certificate: {}", refused.unwrap_err());
    let with_cert = ateom_grpc::tls::client_config_plain(&ateom_grpc::tls::TlsFiles {
        cert: pki.ate.0.clone(),
        key: pki.ate.1.clone(),
        ca: pki.ca_file.clone(),
    })
    .unwrap();
    let r1 = if on[0] == "r1" { &names[0] } else { &names[1] };
    let answered = raw_get_over_tls(remotes[0].front, with_cert).await;
    assert!(answered.as_deref().is_ok_and(|b| b.contains("memory_count")), "{answered:?} ({r1} on r1)");
}

/// One `GET /` over TLS to `front` with `config`; the response text, or why there was none.
async fn raw_get_over_tls(
    front: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(front).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut out = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut out)).await {
        Ok(Ok(_)) if !out.is_empty() => Ok(String::from_utf8_lossy(&out).into_owned()),
        Ok(Ok(_)) => Err("closed without an answer".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Err(_) => Err("no answer within 10 s".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_with_wrong_tls_material_are_unhealthy_and_get_nothing() {
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED workers_with_wrong_tls_material_are_unhealthy_and_get_nothing: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start(StoreKind::Sqlite, 0);
    let pki = Pki::new(lab.dir.path());
    let r = Remote::start(lab.dir.path(), &pki, "r1", "host-1");
    let foreign_client = leaf(&pki.dir, "ate-foreign", &pki.foreign, &["ate"], false);
    let expired_client = leaf(&pki.dir, "ate-expired", &pki.ca, &["ate"], true);
    let missing = (pki.dir.join("missing.crt"), pki.ate.1.clone());
    // A worker whose certificate does not name the address it is dialled at.
    let misnamed = Remote::start_named(lab.dir.path(), &pki, "r2", "host-2", &["worker.example"]);
    // Nothing listens there.
    let nobody =
        Remote { proc_: None, grpc: format!("127.0.0.1:{}", free_port()).parse().unwrap(), front: r.front };
    // One pool per kind of wrong material (each naming a real worker, but the last).
    let good = Pki::yaml(&pki.ca_file, &pki.ate);
    let pools = [
        ("wrong-ca", Pki::yaml(&pki.foreign_file, &pki.ate), &r),
        ("foreign-client", Pki::yaml(&pki.ca_file, &foreign_client), &r),
        ("expired-client", Pki::yaml(&pki.ca_file, &expired_client), &r),
        ("missing-cert", Pki::yaml(&pki.ca_file, &missing), &r),
        ("wrong-name", good.clone(), &misnamed),
        ("unreachable", good, &nobody),
    ];
    let mut yaml = String::new();
    for (i, (pool, tls, worker)) in pools.iter().enumerate() {
        if i > 0 {
            yaml.push_str("---\n");
        }
        yaml.push_str(&format!(
            "kind: WorkerPool\nmetadata: {{ name: {pool} }}\nspec:\n  tls: {tls}\n  workers:\n"
        ));
        yaml.push_str(&worker.entry(&format!("x-{pool}"), None));
    }
    // A template on the pool whose CA did not sign the worker: its golden build must not start.
    yaml.push_str(&template("wrong-ca", "counter", &lab.image, &lab.location));
    apply(&lab, "wrong.yaml", &yaml);

    let api = lab.serve.api.clone();
    let n = pools.len();
    let ws = wait_for(30, || {
        let api = api.clone();
        async move {
            let ws = api.workers().await.ok()?;
            (ws.len() == n && ws.iter().all(|w| w.error.is_some())).then_some(ws)
        }
    })
    .await
    .unwrap_or_else(|| panic!("every worker should be unhealthy with a reason\n{}", lab.serve.log_text()));
    for w in &ws {
        eprintln!("{}: {}", w.name, w.error.as_deref().unwrap_or_default());
        assert!(!w.healthy, "{w:?}");
        let e = w.error.as_deref().unwrap();
        match w.name.as_str() {
            "x-wrong-ca" => assert!(e.contains("TLS handshake") && e.contains("certificate"), "{e}"),
            "x-foreign-client" | "x-expired-client" => {
                assert!(e.contains("TLS") && e.contains("client certificate"), "{e}")
            }
            "x-missing-cert" => assert!(e.contains("TLS material") && e.contains("does not exist"), "{e}"),
            "x-wrong-name" => assert!(e.contains("TLS handshake") && e.contains("not valid for name"), "{e}"),
            "x-unreachable" => assert!(e.contains("connecting") && e.contains("refused"), "{e}"),
            other => panic!("{other}"),
        }
    }
    let (ok, out, _) = lab.serve.cli(&["get", "workers"]);
    assert!(ok && out.contains("REASON") && out.contains("TLS handshake"), "{out}");

    // Nothing placed: the golden build waits for a healthy worker, the worker runs nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ts = lab.serve.api.call(hyper::Method::GET, "/v1/templates", None).await.unwrap();
    let t = ts.as_array().unwrap().iter().find(|t| t["name"] == "counter").unwrap().clone();
    assert_eq!(t["golden"]["status"], "PENDING", "{t}");
    assert!(t["golden"]["worker"].is_null(), "{t}");
    let caps = ate::worker::connect_lazy(&r.proc_.as_ref().unwrap().socket)
        .get_capabilities(ateom_proto::GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(caps.running_actor.is_empty() && caps.state == "idle", "{caps:?}");
}

/// Runs the real `ate` binary.
fn ate_cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ate")).args(args).output().expect("running ate");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// `ate certs init|issue` makes what a real `ateom serve --listen-tcp` and `ate` need: an
/// actor runs on a worker reached over mutual TLS with them only; `ate`'s certificate from
/// another CA made by `ate certs` too is refused by the worker, with a reason naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_made_by_ate_certs_carry_mutual_tls() {
    use std::os::unix::fs::PermissionsExt;
    if let Some(why) = unavailable(false) {
        eprintln!("SKIPPED certificates_made_by_ate_certs_carry_mutual_tls: {why}");
        return;
    }
    let _serial = serial().await;
    let lab = Lab::start(StoreKind::Sqlite, 0);
    let pki = lab.dir.path().join("pki");
    let other = lab.dir.path().join("other-pki");
    let (p, o) = (pki.to_str().unwrap(), other.to_str().unwrap());
    for args in [
        vec!["certs", "init", "--dir", p],
        vec!["certs", "issue", "--dir", p, "--name", "r1", "--san", "127.0.0.1", "--san", "localhost"],
        vec!["certs", "issue", "--dir", p, "--name", "r2", "--san", "127.0.0.1"],
        vec!["certs", "issue", "--dir", p, "--name", "ate", "--client"],
        vec!["certs", "init", "--dir", o, "--name", "another CA"],
        vec!["certs", "issue", "--dir", o, "--name", "ate", "--client"],
    ] {
        let (ok, out) = ate_cli(&args);
        assert!(ok, "ate {args:?}: {out}");
        eprint!("{out}");
    }
    let mode = |f: &Path| std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
    for k in ["ca.key", "r1.key", "ate.key"] {
        assert_eq!(mode(&pki.join(k)), 0o600, "{k}");
    }
    assert_eq!(mode(&pki), 0o700);
    // Nothing is overwritten without --force; clear errors for a missing CA and a bad name.
    let (ok, out) = ate_cli(&["certs", "issue", "--dir", p, "--name", "r1", "--san", "127.0.0.1"]);
    assert!(!ok && out.contains("already exist") && out.contains("--force"), "{out}");
    let (ok, out) = ate_cli(&["certs", "init", "--dir", p]);
    assert!(!ok && out.contains("--force"), "{out}");
    let nowhere = lab.dir.path().join("nowhere");
    let (ok, out) =
        ate_cli(&["certs", "issue", "--dir", nowhere.to_str().unwrap(), "--name", "x", "--san", "127.0.0.1"]);
    assert!(!ok && out.contains("ate certs init"), "{out}");
    let (ok, out) = ate_cli(&["certs", "issue", "--dir", p, "--name", "x", "--san", "not a host"]);
    assert!(!ok && out.contains("neither an IP address nor a DNS name"), "{out}");
    let (ok, out) = ate_cli(&["certs", "issue", "--dir", p, "--name", "x"]);
    assert!(!ok && out.contains("--san"), "{out}");
    let (ok, out) = ate_cli(&["certs", "--help"]);
    assert!(ok && out.contains("--tls-ca") && out.contains("tls: { ca:"), "{out}");

    let r = Remote::start_files(
        lab.dir.path(),
        "r1",
        "host-1",
        &pki.join("r1.crt"),
        &pki.join("r1.key"),
        &pki.join("ca.crt"),
    );
    // Another worker (two entries must not share a TLS front: the router picks the front's
    // client certificate by its address).
    let r2 = Remote::start_files(
        lab.dir.path(),
        "r2",
        "host-2",
        &pki.join("r2.crt"),
        &pki.join("r2.key"),
        &pki.join("ca.crt"),
    );
    let tls = |dir: &Path| {
        format!(
            "{{ ca: \"{}\", cert: \"{}\", key: \"{}\" }}",
            pki.join("ca.crt").display(),
            dir.join("ate.crt").display(),
            dir.join("ate.key").display()
        )
    };
    let mut yaml =
        format!("kind: WorkerPool\nmetadata: {{ name: hosts }}\nspec:\n  tls: {}\n  workers:\n", tls(&pki));
    yaml.push_str(&r.entry("r1", None));
    yaml.push_str(&format!(
        "---\nkind: WorkerPool\nmetadata: {{ name: strangers }}\nspec:\n  tls: {}\n  workers:\n",
        tls(&other)
    ));
    yaml.push_str(&r2.entry("x-foreign", None));
    yaml.push_str(&template("hosts", "counter", &lab.image, &lab.location));
    apply(&lab, "certs.yaml", &yaml);
    let golden = golden_settled(&lab.serve, "counter", 120).await;
    assert_eq!(golden["golden"]["status"], "READY", "{golden}\n{}", lab.serve.log_text());
    let names = lab.create_actors(1);
    expect_count(&lab, &names[0], 1).await;
    expect_count(&lab, &names[0], 2).await;
    let ws = workers(&lab).await;
    let good = ws.iter().find(|w| w.name == "r1").unwrap();
    assert!(good.healthy, "{good:?}");
    let foreign = ws.iter().find(|w| w.name == "x-foreign").unwrap();
    let e = foreign.error.as_deref().unwrap_or_default();
    eprintln!("x-foreign: {e}");
    assert!(!foreign.healthy && e.contains("TLS") && e.contains("client certificate"), "{foreign:?}");
    let log = r2.proc_.as_ref().unwrap().log_text();
    assert!(log.contains("refused") || log.contains("certificate"), "the worker logs the refusal:\n{log}");
}
