//! `ate certs init|issue`: a small CA and the certificates of a fleet (rcgen), for tests and
//! small deployments. Production users bring their own PKI; nothing in `ate` or `ateom`
//! depends on certificates made here.
//!
//! Every certificate issued is checked before it is written: it must verify against the CA
//! certificate with the same verifier (rustls/webpki) the workers and `ate` use, for the
//! purpose it was made for (a worker's certificate as a server for each of its names, `ate`'s
//! as a client). A CA key that does not belong to the CA certificate, or an expired CA, is
//! refused there rather than at the first handshake.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// `ate certs --help`.
pub const LONG_ABOUT: &str = "\
Make a CA and the certificates workers on other hosts and ate present to each other (mutual
TLS), for tests and small deployments; bring your own PKI in production.

Files (in --dir):
  ca.crt            the CA certificate: every worker's --tls-ca and the pool's tls.ca
  ca.key            the CA's private key (0600): only `ate certs issue` needs it; keep it away
                    from the workers
  NAME.crt          a certificate signed by the CA (NAME from --name)
  NAME.key          its private key (0600)

A worker on host-a (a server certificate; its --san names every address ate dials: the host of
the pool entry's address: https://HOST:PORT and of its forward: HOST:PORT):

  ate certs init  --dir /etc/ate/pki
  ate certs issue --dir /etc/ate/pki --name host-a --san 169.254.10.2 --san host-a.example
  ateom serve --socket /run/ateom.sock --state-dir /var/lib/ateom \\
      --listen-tcp 169.254.10.2:7443 --forward-tls 169.254.10.2:7444 \\
      --tls-cert /etc/ate/pki/host-a.crt --tls-key /etc/ate/pki/host-a.key --tls-ca /etc/ate/pki/ca.crt

ate itself (a client certificate, the pool's tls block; paths are absolute):

  ate certs issue --dir /etc/ate/pki --name ate --client
  kind: WorkerPool
  metadata: { name: fleet }
  spec:
    tls: { ca: /etc/ate/pki/ca.crt, cert: /etc/ate/pki/ate.crt, key: /etc/ate/pki/ate.key }
    workers:
      - { name: host-a, address: \"https://169.254.10.2:7443\", forward: \"169.254.10.2:7444\" }

Copy NAME.crt, NAME.key and ca.crt to the host that uses them. Existing files are never
overwritten unless --force. Certificates made from another CA are refused by both sides.";

/// `ate certs` (its help text is [`LONG_ABOUT`], set where the subcommand is declared).
#[derive(Args, Debug)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub cmd: CertsCmd,
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Make the CA: DIR/ca.crt and DIR/ca.key (0600); DIR is created 0700 if missing.
    Init {
        /// Where the CA's files go.
        #[arg(long)]
        dir: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "ate fleet CA")]
        name: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace an existing CA (every certificate it signed stops being accepted by
        /// whoever trusts only the new one).
        #[arg(long)]
        force: bool,
    },
    /// Make DIR/NAME.crt and DIR/NAME.key (0600), signed by DIR's CA: a worker's server
    /// certificate (give every address it is dialled at with --san), or with --client ate's
    /// client certificate.
    Issue {
        /// The CA's directory (from `ate certs init`).
        #[arg(long)]
        dir: PathBuf,
        /// The file names (NAME.crt, NAME.key) and the certificate's common name.
        #[arg(long)]
        name: String,
        /// A name the certificate is valid for: an IP address or a DNS name (repeatable).
        /// Required for a worker's certificate.
        #[arg(long = "san")]
        sans: Vec<String>,
        /// A client certificate (for ate) instead of a server certificate (for a worker).
        #[arg(long)]
        client: bool,
        /// Validity in days.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(u32).range(1..=36500))]
        days: u32,
        /// Replace existing NAME.crt / NAME.key.
        #[arg(long)]
        force: bool,
    },
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("--name {0:?}: use letters, digits, '.', '_' and '-' (a letter or digit first), at most 64")]
    BadName(String),
    #[error(
        "--san {0:?} is neither an IP address nor a DNS name (labels of letters, digits and '-', separated by '.'; a leading '*.' is allowed)"
    )]
    BadSan(String),
    #[error(
        "a worker's certificate needs at least one --san: the IP address or host name ate dials (the host of its address: https://HOST:PORT and forward: HOST:PORT); or --client for ate's certificate"
    )]
    NoSan,
    #[error("no CA in {dir}: {missing} does not exist (run `ate certs init --dir {dir}` first)", dir = .dir.display(), missing = .missing.display())]
    NoCa { dir: PathBuf, missing: PathBuf },
    #[error("{} already {}; not overwriting (give --force to replace)", .0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(" and "), if .0.len() == 1 { "exists" } else { "exist" })]
    Exists(Vec<PathBuf>),
    #[error("{path}: {detail}", path = .path.display())]
    Io { path: PathBuf, detail: String },
    #[error("{path}: {detail}", path = .path.display())]
    BadCa { path: PathBuf, detail: String },
    #[error(
        "the certificate made does not verify against {ca} ({detail}); does {key} belong to it, and is the CA still valid?",
        ca = .ca.display(), key = .key.display()
    )]
    DoesNotVerify { ca: PathBuf, key: PathBuf, detail: String },
    #[error("making the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |e| CertsError::Io { path: path.to_owned(), detail: e.to_string() }
}

/// Runs `ate certs ...`; answers the lines to print.
pub fn run(args: CertsArgs) -> Result<Vec<String>, CertsError> {
    match args.cmd {
        CertsCmd::Init { dir, name, days, force } => init(&dir, &name, days, force),
        CertsCmd::Issue { dir, name, sans, client, days, force } => {
            issue(&dir, &name, &sans, client, days, force)
        }
    }
}

fn check_name(name: &str) -> Result<(), CertsError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(CertsError::BadName(name.to_owned())) }
}

/// An IP address, or a DNS name (RFC 1123 labels, an optional leading `*.`).
pub fn parse_san(s: &str) -> Result<SanType, CertsError> {
    let bad = || CertsError::BadSan(s.to_owned());
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let host = s.strip_prefix("*.").unwrap_or(s);
    if s.len() > 253 || !ate_core::resource::is_host_name(host) {
        return Err(bad());
    }
    // A bare number or dotted numbers that did not parse as an address are no host name.
    if host.split('.').all(|l| l.chars().all(|c| c.is_ascii_digit())) {
        return Err(bad());
    }
    Ok(SanType::DnsName(s.try_into().map_err(|_| bad())?))
}

fn validity(params: &mut CertificateParams, days: u32) {
    // A few minutes back, so a host whose clock is slightly behind accepts it at once.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Refuses existing outputs unless `force`.
fn check_free(paths: &[&Path], force: bool) -> Result<(), CertsError> {
    let existing: Vec<PathBuf> = paths.iter().filter(|p| p.exists()).map(|p| p.to_path_buf()).collect();
    if existing.is_empty() || force { Ok(()) } else { Err(CertsError::Exists(existing)) }
}

/// Writes `text` to `path` with `mode` (a replaced file is removed first, so the mode holds
/// from the first byte).
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CertsError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let mut f =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io(path))?;
    f.write_all(text.as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn init(dir: &Path, name: &str, days: u32, force: bool) -> Result<Vec<String>, CertsError> {
    if name.trim().is_empty() || name.len() > 64 {
        return Err(CertsError::BadName(name.to_owned()));
    }
    let (crt, key_path) = (dir.join("ca.crt"), dir.join("ca.key"));
    check_free(&[&crt, &key_path], force)?;
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&crt, &cert.pem(), 0o644)?;
    Ok(vec![
        format!("wrote {} (the CA certificate: --tls-ca of every worker, tls.ca of the pool)", crt.display()),
        format!("wrote {} (the CA's private key, 0600: keep it off the workers)", key_path.display()),
        format!("valid {days} days; next: ate certs issue --dir {} --name HOST --san ADDRESS", dir.display()),
    ])
}

fn issue(
    dir: &Path,
    name: &str,
    sans: &[String],
    client: bool,
    days: u32,
    force: bool,
) -> Result<Vec<String>, CertsError> {
    check_name(name)?;
    let names: Vec<SanType> = sans.iter().map(|s| parse_san(s)).collect::<Result<_, _>>()?;
    if names.is_empty() && !client {
        return Err(CertsError::NoSan);
    }
    let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
    for p in [&ca_crt, &ca_key] {
        if !p.exists() {
            return Err(CertsError::NoCa { dir: dir.to_owned(), missing: p.clone() });
        }
    }
    let (crt, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    check_free(&[&crt, &key_path], force)?;
    let ca_pem = std::fs::read_to_string(&ca_crt).map_err(io(&ca_crt))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io(&ca_key))?;
    let signer = KeyPair::from_pem(&ca_key_pem)
        .map_err(|e| CertsError::BadCa { path: ca_key.clone(), detail: format!("not a private key: {e}") })?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, &signer).map_err(|e| CertsError::BadCa {
        path: ca_crt.clone(),
        detail: format!("not a CA certificate: {e}"),
    })?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = names.clone();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages =
        vec![if client { ExtendedKeyUsagePurpose::ClientAuth } else { ExtendedKeyUsagePurpose::ServerAuth }];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, days);
    let cert = params.signed_by(&key, &issuer)?;

    verify(&ca_pem, &ca_crt, &ca_key, cert.der(), client, &names)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&crt, &cert.pem(), 0o644)?;
    let shown: Vec<String> = sans.to_vec();
    let mut out = vec![
        format!(
            "wrote {} ({} certificate{}, valid {days} days, signed by {})",
            crt.display(),
            if client { "client" } else { "server" },
            if shown.is_empty() { String::new() } else { format!(" for {}", shown.join(", ")) },
            ca_crt.display()
        ),
        format!("wrote {} (its private key, 0600)", key_path.display()),
    ];
    if client {
        out.push(format!(
            "use: a WorkerPool's tls: {{ ca: {}, cert: {}, key: {} }}",
            abs(&ca_crt),
            abs(&crt),
            abs(&key_path)
        ));
    } else {
        out.push(format!(
            "use: ateom serve ... --listen-tcp HOST:PORT --forward-tls HOST:PORT --tls-cert {} --tls-key {} --tls-ca {}",
            abs(&crt),
            abs(&key_path),
            abs(&ca_crt)
        ));
    }
    Ok(out)
}

fn abs(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned()).display().to_string()
}

/// Checks the new certificate with the verifier the other side will use.
fn verify(
    ca_pem: &str,
    ca_crt: &Path,
    ca_key: &Path,
    der: &CertificateDer<'_>,
    client: bool,
    names: &[SanType],
) -> Result<(), CertsError> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| CertsError::BadCa { path: ca_crt.to_owned(), detail: e.to_string() })?;
        roots.add(c).map_err(|e| CertsError::BadCa { path: ca_crt.to_owned(), detail: e.to_string() })?;
    }
    let roots = Arc::new(roots);
    let fail =
        |detail: String| CertsError::DoesNotVerify { ca: ca_crt.to_owned(), key: ca_key.to_owned(), detail };
    let now = UnixTime::now();
    if client {
        let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        v.verify_client_cert(der, &[], now).map_err(|e| fail(e.to_string()))?;
    } else {
        let v = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        for n in names {
            let server_name = match n {
                SanType::IpAddress(ip) => ServerName::IpAddress((*ip).into()),
                SanType::DnsName(d) => {
                    // A wildcard is checked for one name it covers.
                    let host = d.as_str().replacen("*.", "x.", 1);
                    ServerName::try_from(host).map_err(|e| fail(e.to_string()))?
                }
                _ => continue,
            };
            v.verify_server_cert(der, &[], &server_name, &[], now).map_err(|e| fail(e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_addresses_or_host_names() {
        for ok in ["127.0.0.1", "::1", "fd00::5", "host-a", "host-a.example", "*.fleet.example", "a1.b2"] {
            assert!(parse_san(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "host a",
            "https://h",
            "h:7443",
            "a..b",
            "-a",
            "a-",
            "1.2.3",
            "999.1.1.1",
            "*",
            "a/b",
            "é.example",
        ] {
            let e = parse_san(bad).unwrap_err().to_string();
            assert!(e.contains("neither an IP address nor a DNS name"), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_file_names() {
        for ok in ["host-a", "ate", "w1.example", "A_b"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../ca", "a/b", ".hidden", "-x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    fn issue_args(dir: &Path, name: &str, sans: &[&str], force: bool) -> Result<Vec<String>, CertsError> {
        issue(dir, name, &sans.iter().map(|s| s.to_string()).collect::<Vec<_>>(), false, 30, force)
    }

    /// Hostile input (the security suite's `certs` group): names that would leave the
    /// directory, a symbolic link planted where a key goes, a CA key that does not belong to
    /// the CA, a file that is no certificate: refused, nothing written through, keys 0600.
    #[test]
    fn hostile_inputs_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        init(&dir, "test CA", 30, false).unwrap();
        for name in ["../escape", "/abs", "a/../../b", "..", ".", "x\ny"] {
            let e = issue_args(&dir, name, &["127.0.0.1"], true).unwrap_err();
            assert!(matches!(e, CertsError::BadName(_)), "{name}: {e}");
        }
        assert!(!tmp.path().join("escape.key").exists());
        for san in ["127.0.0.1/8", "h\0x", "a b", "'; rm -rf /", "http://h", "[::1]"] {
            let e = issue_args(&dir, "w", &[san], false).unwrap_err();
            assert!(matches!(e, CertsError::BadSan(_)), "{san}: {e}");
        }
        // A symbolic link where the key goes: refused without --force; with it, the link is
        // replaced by a private file and its target is untouched.
        let target = tmp.path().join("target");
        std::fs::write(&target, "precious").unwrap();
        std::os::unix::fs::symlink(&target, dir.join("w.key")).unwrap();
        let e = issue_args(&dir, "w", &["127.0.0.1"], false).unwrap_err();
        assert!(matches!(e, CertsError::Exists(_)), "{e}");
        issue_args(&dir, "w", &["127.0.0.1"], true).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        let meta = std::fs::symlink_metadata(dir.join("w.key")).unwrap();
        assert!(meta.file_type().is_file() && meta.permissions().mode() & 0o777 == 0o600);
        // Another CA's key with this CA's certificate: nothing verifies, nothing is written.
        let other = tmp.path().join("other");
        init(&other, "other CA", 30, false).unwrap();
        std::fs::copy(other.join("ca.key"), dir.join("ca.key")).unwrap();
        let e = issue_args(&dir, "v", &["127.0.0.1"], false).unwrap_err();
        assert!(matches!(e, CertsError::DoesNotVerify { .. }), "{e}");
        assert!(!dir.join("v.crt").exists() && !dir.join("v.key").exists());
        // Garbage in place of the CA certificate.
        std::fs::write(dir.join("ca.crt"), "not a certificate").unwrap();
        let e = issue_args(&dir, "v", &["127.0.0.1"], false).unwrap_err();
        assert!(matches!(e, CertsError::BadCa { .. }), "{e}");
    }
}
