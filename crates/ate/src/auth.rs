//! Who may call the admin API: bearer tokens with two roles, and the private files they live in.
//!
//! `ate serve` keeps two random tokens under `<data dir>/tokens/` (directory 0700, files 0600,
//! created at first start unless `--admin-token-file` / `--read-token-file` name others):
//!
//! * `admin`: every route;
//! * `read`: the `GET` routes only (a write route answers 403).
//!
//! A request carries `Authorization: Bearer <token>`; a missing, malformed or unknown token
//! answers 401. Tokens are compared through their SHA-256 digests in constant time
//! ([`subtle`]), so neither the content nor the length of a configured token leaks through
//! timing. Running without tokens needs `--insecure-no-auth` and a loopback API address
//! (checked by [`crate::server::start`]).

use std::path::{Path, PathBuf};

use hyper::header::{AUTHORIZATION, HeaderMap};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::info;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// `GET` routes.
    Read,
    /// Everything.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

/// Why a request is not authenticated (all answer 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token>")]
    Missing,
    #[error("malformed Authorization header: expected Bearer <token>")]
    Malformed,
    #[error("invalid token")]
    Wrong,
}

/// Errors setting up the token files.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("token file {path} holds no usable token (at least {MIN_TOKEN_LEN} printable characters)")]
    Unusable { path: PathBuf },
    #[error("{path} is a symbolic link; refusing to use it for a secret")]
    Symlink { path: PathBuf },
    #[error("the admin and read tokens must differ ({admin} and {read} hold the same token)")]
    SameToken { admin: PathBuf, read: PathBuf },
    #[error(
        "{path} is a shared directory (world-writable or sticky, like /tmp); ate keeps secrets in its data directory: give --data-dir a directory of its own"
    )]
    SharedDir { path: PathBuf },
}

/// Shortest token accepted from a file.
pub const MIN_TOKEN_LEN: usize = 16;

/// The configured tokens, as digests.
#[derive(Clone)]
pub struct Tokens {
    admin: [u8; 32],
    read: [u8; 32],
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl Tokens {
    /// Tokens from their values (tests, embedding).
    pub fn new(admin: &str, read: &str) -> Tokens {
        Tokens { admin: digest(admin.as_bytes()), read: digest(read.as_bytes()) }
    }

    /// The role of a presented token, if it is one of ours (constant time: both digests are
    /// always compared).
    pub fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let d = digest(presented);
        let admin = d.ct_eq(&self.admin);
        let read = d.ct_eq(&self.read);
        if bool::from(admin) {
            Some(Role::Admin)
        } else if bool::from(read) {
            Some(Role::Read)
        } else {
            None
        }
    }
}

/// How the API authenticates.
#[derive(Clone, Debug)]
pub enum Auth {
    Tokens(Tokens),
    /// `--insecure-no-auth` (loopback only): every caller is admin.
    Insecure,
}

impl Auth {
    /// The caller's role from the request headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Role, AuthError> {
        let tokens = match self {
            Auth::Insecure => return Ok(Role::Admin),
            Auth::Tokens(t) => t,
        };
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthError::Missing)?;
        if values.next().is_some() {
            return Err(AuthError::Malformed);
        }
        let v = value.as_bytes();
        let token = match v.iter().position(|b| *b == b' ') {
            Some(i) if v[..i].eq_ignore_ascii_case(b"bearer") => v[i + 1..].trim_ascii(),
            _ => return Err(AuthError::Malformed),
        };
        if token.is_empty() {
            return Err(AuthError::Malformed);
        }
        tokens.role_of(token).ok_or(AuthError::Wrong)
    }
}

/// Where `ate serve` keeps its tokens by default.
pub fn default_token_path(data_dir: &Path, role: Role) -> PathBuf {
    data_dir.join("tokens").join(role.as_str())
}

/// A new random token: 32 bytes from the thread's CSPRNG (ChaCha seeded by the OS), hex.
pub fn generate_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Creates `dir` (and parents) 0700 if missing; narrows it to 0700 if others may enter it
/// (logged).
pub fn private_dir(dir: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |what, e| TokenError::Io { what, path: dir.to_owned(), source: e };
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(TokenError::Symlink { path: dir.to_owned() }),
        Ok(m) => {
            let mode = m.permissions().mode() & 0o7777;
            // Never narrow a directory others legitimately share (/tmp, /var/tmp).
            if mode & 0o1000 != 0 || mode & 0o002 != 0 {
                return Err(TokenError::SharedDir { path: dir.to_owned() });
            }
            if mode & 0o077 != 0 {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| io("narrowing", e))?;
                info!(path = %dir.display(), old_mode = format!("{mode:o}"), "narrowed a private directory to 0700");
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| io("creating", e))
        }
        Err(e) => Err(io("inspecting", e)),
    }
}

/// Narrows an existing secret file to 0600 if others may read it (logged). Refuses symlinks.
pub fn private_file(path: &Path) -> Result<(), TokenError> {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(path).map_err(|e| TokenError::Io {
        what: "inspecting",
        path: path.to_owned(),
        source: e,
    })?;
    if m.file_type().is_symlink() {
        return Err(TokenError::Symlink { path: path.to_owned() });
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| TokenError::Io { what: "narrowing", path: path.to_owned(), source: e })?;
        info!(path = %path.display(), old_mode = format!("{mode:o}"), "narrowed a secret file to 0600");
    }
    Ok(())
}

/// Reads a token file (trimmed).
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|e| TokenError::Io {
        what: "reading",
        path: path.to_owned(),
        source: e,
    })?;
    let t = text.trim();
    if t.len() < MIN_TOKEN_LEN || t.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(TokenError::Unusable { path: path.to_owned() });
    }
    Ok(t.to_owned())
}

/// Reads `path` if it exists (narrowing it), else creates it 0600 with a new token (without
/// ever overwriting: `O_EXCL`).
fn load_or_create(path: &Path) -> Result<String, TokenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut f) => {
            let t = generate_token();
            f.write_all(format!("{t}\n").as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| TokenError::Io { what: "writing", path: path.to_owned(), source: e })?;
            info!(path = %path.display(), "created an API token");
            Ok(t)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            private_file(path)?;
            read_token(path)
        }
        Err(e) => Err(TokenError::Io { what: "creating", path: path.to_owned(), source: e }),
    }
}

/// Where the tokens come from.
#[derive(Clone, Debug)]
pub struct TokenFiles {
    /// `<data dir>`: the defaults live in `<data dir>/tokens/`.
    pub data_dir: PathBuf,
    /// `--admin-token-file` (must exist), else `<data dir>/tokens/admin` (created if missing).
    pub admin: Option<PathBuf>,
    /// `--read-token-file` (must exist), else `<data dir>/tokens/read` (created if missing).
    pub read: Option<PathBuf>,
}

impl TokenFiles {
    /// The admin token's file.
    pub fn admin_path(&self) -> PathBuf {
        self.admin.clone().unwrap_or_else(|| default_token_path(&self.data_dir, Role::Admin))
    }

    pub fn read_path(&self) -> PathBuf {
        self.read.clone().unwrap_or_else(|| default_token_path(&self.data_dir, Role::Read))
    }

    /// Loads the tokens, creating the default files (and their 0700 directory) at first start.
    pub fn load(&self) -> Result<Tokens, TokenError> {
        if self.admin.is_none() || self.read.is_none() {
            private_dir(&self.data_dir.join("tokens"))?;
        }
        let get = |given: &Option<PathBuf>, role| match given {
            Some(p) => {
                private_file(p)?;
                read_token(p)
            }
            None => load_or_create(&default_token_path(&self.data_dir, role)),
        };
        let admin = get(&self.admin, Role::Admin)?;
        let read = get(&self.read, Role::Read)?;
        if admin == read {
            return Err(TokenError::SameToken { admin: self.admin_path(), read: self.read_path() });
        }
        Ok(Tokens::new(&admin, &read))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(v: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for x in v {
            h.append(AUTHORIZATION, HeaderValue::from_str(x).unwrap());
        }
        h
    }

    #[test]
    fn roles_from_bearer_tokens() {
        let auth = Auth::Tokens(Tokens::new("admin-token-0123456789", "read-token-0123456789"));
        assert_eq!(auth.authenticate(&headers(&["Bearer admin-token-0123456789"])), Ok(Role::Admin));
        assert_eq!(auth.authenticate(&headers(&["bearer read-token-0123456789"])), Ok(Role::Read));
        assert_eq!(auth.authenticate(&headers(&[])), Err(AuthError::Missing));
        assert_eq!(auth.authenticate(&headers(&["Bearer nope"])), Err(AuthError::Wrong));
        assert_eq!(auth.authenticate(&headers(&["Bearer admin-token-012345678"])), Err(AuthError::Wrong));
        assert_eq!(auth.authenticate(&headers(&["Basic YWRtaW4="])), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(&headers(&["Bearer "])), Err(AuthError::Malformed));
        assert_eq!(auth.authenticate(&headers(&["admin-token-0123456789"])), Err(AuthError::Malformed));
        assert_eq!(
            auth.authenticate(&headers(&["Bearer read-token-0123456789", "Bearer admin-token-0123456789"])),
            Err(AuthError::Malformed)
        );
        assert_eq!(Auth::Insecure.authenticate(&headers(&[])), Ok(Role::Admin));
    }

    #[test]
    fn token_files_are_created_private_and_kept() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let files = TokenFiles { data_dir: dir.path().join("data"), admin: None, read: None };
        let t1 = files.load().unwrap();
        let admin = std::fs::read_to_string(files.admin_path()).unwrap();
        assert_eq!(admin.trim().len(), 64);
        assert_eq!(mode(&dir.path().join("data/tokens")), 0o700);
        assert_eq!(mode(&files.admin_path()), 0o600);
        assert_eq!(mode(&files.read_path()), 0o600);
        assert_eq!(t1.role_of(admin.trim().as_bytes()), Some(Role::Admin));
        // Loaded again, not replaced; a widened file is narrowed.
        std::fs::set_permissions(files.read_path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        let t2 = files.load().unwrap();
        assert_eq!(t2.role_of(admin.trim().as_bytes()), Some(Role::Admin));
        assert_eq!(mode(&files.read_path()), 0o600);
        // Given files must exist and be usable.
        let given = TokenFiles { admin: Some(dir.path().join("missing")), ..files.clone() };
        assert!(matches!(given.load(), Err(TokenError::Io { .. })));
        std::fs::write(dir.path().join("short"), "abc").unwrap();
        let given = TokenFiles { admin: Some(dir.path().join("short")), ..files.clone() };
        assert!(matches!(given.load(), Err(TokenError::Unusable { .. })));
        let given = TokenFiles { admin: Some(files.read_path()), ..files.clone() };
        assert!(matches!(given.load(), Err(TokenError::SameToken { .. })));
        // A shared directory is never narrowed, and refused.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert!(matches!(private_dir(&shared), Err(TokenError::SharedDir { .. })));
        assert_eq!(mode(&shared), 0o777);
        // A group-readable one of ate's own is narrowed.
        let own = dir.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&own).unwrap();
        assert_eq!(mode(&own), 0o700);
    }
}
