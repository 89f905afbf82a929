//! OCI runtime bundles: a runtime spec for running an image, and `config.json` on disk.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsStr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_maskedpaths, get_default_mounts,
    get_default_readonly_paths,
};

use crate::error::{ImageError, IoContext};
use crate::fspath;
use crate::store::ImageConfig;

/// OCI runtime spec version written into `config.json`.
pub const OCI_RUNTIME_VERSION: &str = "1.0.2";

/// `PATH` for processes whose image sets none (Docker's and containerd's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Open files allowed to the container process (soft and hard `RLIMIT_NOFILE`).
pub const DEFAULT_NOFILE: u64 = 65536;

/// The capabilities a container process gets: Docker's and containerd's default set.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// What a workload request changes about the image's process (Kubernetes semantics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessOverrides {
    /// Replaces the image's `Entrypoint` (and drops its `Cmd` unless `args` is given).
    pub command: Vec<String>,
    /// Replaces the image's `Cmd`.
    pub args: Vec<String>,
    /// Added to the image's `Env`, replacing variables of the same name.
    pub env: BTreeMap<String, String>,
}

/// How the bundle runs, beyond the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleOptions {
    /// The root file system (an absolute path is best: runtimes resolve a relative one
    /// against the bundle directory).
    pub rootfs: PathBuf,
    /// Hostname inside the UTS namespace (also `HOSTNAME` in the environment unless set).
    pub hostname: String,
    /// Join this network namespace (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`) instead of
    /// creating a new one.
    pub netns_path: Option<PathBuf>,
    /// Mount the root file system read-only.
    pub readonly_rootfs: bool,
}

/// The runtime spec for running an image.
///
/// - **args**: `command` replaces the image's `Entrypoint` and `args` its `Cmd`; a `command`
///   without `args` drops the image's `Cmd` (Kubernetes semantics). Nothing at all is
///   [`ImageError::NoCommand`].
/// - **env**: the image's `Env` in order, each overridden by `overrides.env`, then the new
///   override variables (sorted); `PATH`, `HOSTNAME` and `HOME` are added when missing.
/// - **cwd**: `WorkingDir` (relative ones are taken from `/`), or `/`.
/// - **user**: from the image's `User`: numeric `uid[:gid]`, or user and group names
///   resolved in the rootfs's `/etc/passwd` and `/etc/group` (read inside the rootfs, never
///   following a symlink out of it). A user's supplementary groups come from `/etc/group`.
/// - pid, ipc, uts, mount and network namespaces (the network one joins
///   `opts.netns_path` when set); `/proc`, `/dev`, `/dev/pts`, `/dev/shm`, `/dev/mqueue`,
///   `/sys` mounts; the usual masked and read-only paths; [`DEFAULT_CAPABILITIES`];
///   `noNewPrivileges`; [`DEFAULT_NOFILE`] open files; all devices denied in the device
///   cgroup; no terminal.
pub fn runtime_spec(
    image: &ImageConfig,
    overrides: &ProcessOverrides,
    opts: &BundleOptions,
) -> Result<Spec, ImageError> {
    let args = process_args(image, overrides)?;
    let user = resolve_user(image.user.as_deref(), &opts.rootfs)?;
    let env = process_env(image, overrides, &opts.hostname, &user.home)?;
    let cwd = match image.working_dir.as_deref() {
        Some(w) if w.starts_with('/') => w.to_owned(),
        Some(w) => format!("/{w}"),
        None => "/".to_owned(),
    };
    if cwd.contains('\0') {
        return Err(ImageError::InvalidOverride {
            field: "WorkingDir".into(),
            reason: "contains NUL".into(),
        });
    }
    if opts.hostname.is_empty() || opts.hostname.len() > 64 || opts.hostname.contains(['\0', '/']) {
        return Err(ImageError::InvalidOverride {
            field: "hostname".into(),
            reason: format!("{:?} is not a valid hostname (1-64 characters)", opts.hostname),
        });
    }

    let spec_err = |what: &'static str| {
        move |e: oci_spec::OciSpecError| ImageError::Spec { what, reason: e.to_string() }
    };
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .map_err(spec_err("capabilities"))?;
    let mut user_builder = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        user_builder = user_builder.additional_gids(user.additional_gids.clone());
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user_builder.build().map_err(spec_err("process user"))?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(DEFAULT_NOFILE)
                .hard(DEFAULT_NOFILE)
                .build()
                .map_err(spec_err("rlimits"))?,
        ])
        .build()
        .map_err(spec_err("process"))?;

    let mut namespaces = Vec::new();
    for typ in
        [LinuxNamespaceType::Pid, LinuxNamespaceType::Ipc, LinuxNamespaceType::Uts, LinuxNamespaceType::Mount]
    {
        namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build().map_err(spec_err("namespaces"))?);
    }
    let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    if let Some(path) = &opts.netns_path {
        net = net.path(path.clone());
    }
    namespaces.push(net.build().map_err(spec_err("namespaces"))?);
    let deny_all_devices = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .map_err(spec_err("device cgroup"))?;
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![deny_all_devices])
                .build()
                .map_err(spec_err("resources"))?,
        )
        .build()
        .map_err(spec_err("linux section"))?;

    // The standard mounts, without a cgroup file system.
    let mounts: Vec<_> = get_default_mounts()
        .into_iter()
        .filter(|m| m.typ().as_deref() != Some("cgroup") && !m.destination().starts_with("/sys/fs/cgroup"))
        .collect();

    SpecBuilder::default()
        .version(OCI_RUNTIME_VERSION)
        .root(
            RootBuilder::default()
                .path(opts.rootfs.clone())
                .readonly(opts.readonly_rootfs)
                .build()
                .map_err(spec_err("root"))?,
        )
        .hostname(opts.hostname.clone())
        .mounts(mounts)
        .process(process)
        .linux(linux)
        .build()
        .map_err(spec_err("runtime spec"))
}

fn process_args(image: &ImageConfig, overrides: &ProcessOverrides) -> Result<Vec<String>, ImageError> {
    let (entrypoint, cmd) = match (overrides.command.is_empty(), overrides.args.is_empty()) {
        (true, true) => (&image.entrypoint, &image.cmd),
        (true, false) => (&image.entrypoint, &overrides.args),
        (false, true) => (&overrides.command, &Vec::new()),
        (false, false) => (&overrides.command, &overrides.args),
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    match args.first() {
        None => Err(ImageError::NoCommand),
        Some(a) if a.is_empty() => Err(ImageError::InvalidOverride {
            field: "command".into(),
            reason: "the program (first argument) is empty".into(),
        }),
        Some(_) if args.iter().any(|a| a.contains('\0')) => Err(ImageError::InvalidOverride {
            field: "command/args".into(),
            reason: "an argument contains NUL".into(),
        }),
        Some(_) => Ok(args),
    }
}

fn process_env(
    image: &ImageConfig,
    overrides: &ProcessOverrides,
    hostname: &str,
    home: &str,
) -> Result<Vec<String>, ImageError> {
    for (k, v) in &overrides.env {
        if k.is_empty() || k.contains(['=', '\0']) || v.contains('\0') {
            return Err(ImageError::InvalidOverride {
                field: format!("env {k:?}"),
                reason: "names must be non-empty without '=' or NUL, values without NUL".into(),
            });
        }
    }
    let mut vars: Vec<(String, String)> = Vec::new();
    for (k, v) in &image.env {
        let v = overrides.env.get(k).unwrap_or(v);
        match vars.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => vars.push((k.clone(), v.clone())),
        }
    }
    for (k, v) in &overrides.env {
        if !vars.iter().any(|(name, _)| name == k) {
            vars.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in [("PATH", DEFAULT_PATH), ("HOSTNAME", hostname), ("HOME", home)] {
        if !vars.iter().any(|(name, _)| name == k) {
            vars.push((k.to_owned(), v.to_owned()));
        }
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// A resolved process identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves an image `User` against the rootfs's `/etc/passwd` and `/etc/group`.
pub(crate) fn resolve_user(user: Option<&str>, rootfs: &Path) -> Result<ResolvedUser, ImageError> {
    let spec = user.unwrap_or("");
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let unknown = |reason: String| ImageError::UnknownUser { user: spec.to_owned(), reason };
    let passwd = read_etc(rootfs, "passwd")?.map(|t| parse_passwd(&t)).unwrap_or_default();
    let groups = read_etc(rootfs, "group")?.map(|t| parse_group(&t)).unwrap_or_default();

    let entry = if user_part.is_empty() {
        passwd.iter().find(|e| e.uid == 0)
    } else if let Ok(uid) = user_part.parse::<u32>() {
        passwd.iter().find(|e| e.uid == uid)
    } else {
        let found = passwd.iter().find(|e| e.name == user_part);
        if found.is_none() {
            return Err(unknown(format!("no user {user_part:?} in the image's /etc/passwd")));
        }
        found
    };
    let uid = match user_part.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry.map_or(0, |e| e.uid),
    };
    let gid = match group_part {
        None => entry.map_or(0, |e| e.gid),
        Some("") => return Err(unknown("empty group after ':'".into())),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| unknown(format!("no group {g:?} in the image's /etc/group")))?,
        },
    };
    let mut additional_gids = Vec::new();
    if let Some(e) = entry {
        for g in &groups {
            if g.members.iter().any(|m| m == &e.name) && g.gid != gid && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    let home = entry.map(|e| e.home.clone()).filter(|h| h.starts_with('/')).unwrap_or_else(|| "/".to_owned());
    Ok(ResolvedUser { uid, gid, additional_gids, home })
}

/// Reads `/etc/<name>` of the rootfs, `None` when it does not exist.
fn read_etc(rootfs: &Path, name: &str) -> Result<Option<String>, ImageError> {
    let mut created = Vec::new();
    let path = match fspath::resolve(
        rootfs,
        &[OsStr::new("etc"), OsStr::new(name)],
        fspath::EXISTING_FILE,
        fspath::MAX_DEPTH_UNLIMITED,
        &mut created,
    ) {
        Ok(p) => p,
        Err(fspath::ResolveError::NotFound(_)) => return Ok(None),
        Err(e) => {
            return Err(ImageError::UnknownUser {
                user: String::new(),
                reason: format!("cannot read /etc/{name} in {}: {e}", rootfs.display()),
            });
        }
    };
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = crate::layout::read_limited(&path, 16 << 20)?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: (*f.first()?).to_owned(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map_or_else(String::new, |h| (*h).to_owned()),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: (*f.first()?).to_owned(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| m.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect())
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Writes `<bundle_dir>/config.json` for `spec`, creating the directory (`0700`, with any
/// missing parents) if needed.
///
/// `config.json` holds the workload's environment, which may carry secrets: it is created
/// `0600` under a temporary name, synced and renamed into place, so it is never readable
/// by another user (not even for a moment) and never half-written. An existing one is
/// replaced the same way.
pub fn write_bundle(bundle_dir: &Path, spec: &Spec) -> Result<(), ImageError> {
    if !bundle_dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(bundle_dir)
            .ctx(|| format!("creating {}", bundle_dir.display()))?;
    }
    let json = canonical_json(spec)?;
    crate::private::write_private_file(&bundle_dir.join("config.json"), &json)
}

/// A spec as JSON that is the same bytes every time for the same spec: the capability sets
/// (hash sets in oci-spec, iterated in a random order) are written sorted.
pub fn canonical_json(spec: &Spec) -> Result<Vec<u8>, ImageError> {
    let err = |e: serde_json::Error| ImageError::Spec { what: "config.json", reason: e.to_string() };
    let mut v = serde_json::to_value(spec).map_err(err)?;
    if let Some(caps) = v.pointer_mut("/process/capabilities").and_then(|c| c.as_object_mut()) {
        for set in caps.values_mut() {
            if let Some(list) = set.as_array_mut() {
                list.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
            }
        }
    }
    serde_json::to_vec_pretty(&v).map_err(err)
}

/// Reads a bundle prepared by someone else (a node agent): `config.json` and its root
/// file system. Returns the spec with `root.path` made absolute (a relative one is taken
/// from the bundle directory) after checking that it is a directory and that the spec has
/// a process to run.
pub fn load_bundle(bundle_dir: &Path) -> Result<Spec, ImageError> {
    let invalid = |reason: String| ImageError::InvalidBundle { dir: bundle_dir.to_owned(), reason };
    let dir = std::path::absolute(bundle_dir)
        .map_err(|e| invalid(format!("cannot make the path absolute: {e}")))?;
    let config = dir.join("config.json");
    let bytes = match std::fs::read(&config) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(invalid("no config.json".into())),
        Err(e) => return Err(ImageError::io(format!("reading {}", config.display()), e)),
    };
    let mut spec: Spec = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(format!("config.json is not a runtime spec: {e}")))?;
    let Some(mut root) = spec.root().clone() else { return Err(invalid("config.json has no root".into())) };
    let rootfs = if root.path().is_absolute() { root.path().clone() } else { dir.join(root.path()) };
    if !rootfs.is_dir() {
        return Err(invalid(format!("root path {} is not a directory", rootfs.display())));
    }
    if spec.process().as_ref().and_then(|p| p.args().as_ref()).is_none_or(|a| a.is_empty()) {
        return Err(invalid("config.json has no process args".into()));
    }
    root.set_path(rootfs);
    spec.set_root(Some(root));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_and_group_parsing_skips_junk() {
        let p = parse_passwd(
            "root:x:0:0:root:/root:/bin/sh\n# c\nbad\nnobody:x:nope:1::/:\napp:x:1000:1000::/home/app:\n",
        );
        assert_eq!(p.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["root", "app"]);
        let g = parse_group("root:x:0:\nstaff:x:50:app,bob\nbad:x:y:\n");
        assert_eq!(g.len(), 2);
        assert_eq!(g[1].members, ["app", "bob"]);
    }
}
