//! Path resolution inside a root file system, as a process chrooted there would see it.
//!
//! Symlinks found on disk are followed by hand: an absolute target restarts at the root, a
//! relative one continues from the link's directory. A `..` that would climb above the root
//! is refused instead of being clamped: a layer that needs it is hostile or broken. The host
//! path that comes back therefore never leaves the root and has no symlink among its
//! directories (races aside: nothing else writes a rootfs while it is being built).

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

/// Symlinks followed in one resolution before giving up (Linux's own limit).
const MAX_SYMLINKS: usize = 40;

/// Why a path could not be resolved inside the root.
#[derive(Debug)]
pub(crate) enum ResolveError {
    /// Resolution would leave the root (through `..` or a symlink).
    Escapes(String),
    /// A component that must be a directory is something else (the path inside the root).
    NotADirectory(String),
    /// A component does not exist and was not to be created (the path inside the root).
    NotFound(String),
    /// Too many symlinks.
    TooManySymlinks,
    /// The path would lie deeper than allowed below the root.
    TooDeep,
    /// The file system said no.
    Io(PathBuf, io::Error),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Escapes(via) => write!(f, "resolves outside the root file system ({via})"),
            Self::NotADirectory(p) => write!(f, "{p} is not a directory"),
            Self::NotFound(p) => write!(f, "{p} does not exist"),
            Self::TooManySymlinks => write!(f, "more than {MAX_SYMLINKS} levels of symlinks"),
            Self::TooDeep => write!(f, "too many directory levels below the root"),
            Self::Io(p, e) => write!(f, "{}: {e}", p.display()),
        }
    }
}

/// How [`resolve`] treats what it finds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mode {
    /// Create missing directories (0755) on the way.
    pub create_dirs: bool,
    /// The last component may be a non-directory (and a symlink there is followed).
    pub last_may_be_file: bool,
}

/// No depth limit (for reading files an image already holds).
pub(crate) const MAX_DEPTH_UNLIMITED: usize = usize::MAX;

/// Directories: create what is missing.
pub(crate) const MKDIR_P: Mode = Mode { create_dirs: true, last_may_be_file: false };
/// Directories that must exist.
pub(crate) const EXISTING_DIR: Mode = Mode { create_dirs: false, last_may_be_file: false };
/// An existing file, symlinks followed.
pub(crate) const EXISTING_FILE: Mode = Mode { create_dirs: false, last_may_be_file: true };

/// The components of a relative in-root path: refuses absolute paths and `..`, drops `.`.
pub(crate) fn normal_components(path: &Path) -> Result<Vec<&OsStr>, &'static str> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err("it contains a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path"),
        }
    }
    Ok(out)
}

/// Resolves `components` below `root`; see the module docs. `created` receives every
/// directory this call created. No directory deeper than `max_depth` levels below the root
/// is entered or created (symlinks count where they lead, so chained links cannot build an
/// unbounded tree).
pub(crate) fn resolve(
    root: &Path,
    components: &[&OsStr],
    mode: Mode,
    max_depth: usize,
    created: &mut Vec<PathBuf>,
) -> Result<PathBuf, ResolveError> {
    let mut queue: VecDeque<OsString> = components.iter().map(|c| (*c).to_owned()).collect();
    let mut stack: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(name) = queue.pop_front() {
        if name.is_empty() || name == "." {
            continue;
        }
        if name == ".." {
            if stack.pop().is_none() {
                return Err(ResolveError::Escapes("'..' above the root".to_owned()));
            }
            continue;
        }
        let host = join(root, &stack).join(&name);
        let is_last = queue.is_empty();
        // Entering or creating a directory (or reaching the file) one level deeper.
        let too_deep = stack.len() >= max_depth;
        match std::fs::symlink_metadata(&host) {
            Ok(meta) if meta.is_dir() && too_deep => return Err(ResolveError::TooDeep),
            Ok(meta) if meta.is_dir() => stack.push(name),
            Ok(meta) if meta.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::TooManySymlinks);
                }
                let target = std::fs::read_link(&host).map_err(|e| ResolveError::Io(host.clone(), e))?;
                if target.has_root() {
                    stack.clear();
                }
                let shown = format!("symlink /{} -> {}", rel_display(&stack, &name), target.display());
                let mut expansion = Vec::new();
                for c in target.components() {
                    match c {
                        Component::Normal(n) => expansion.push(n.to_owned()),
                        Component::ParentDir => expansion.push(OsString::from("..")),
                        Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                    }
                }
                // A `..` in the target that climbs above the root is reported with the link.
                if escapes(&stack, &expansion) {
                    return Err(ResolveError::Escapes(shown));
                }
                for c in expansion.into_iter().rev() {
                    queue.push_front(c);
                }
            }
            Ok(_) if is_last && mode.last_may_be_file && too_deep => return Err(ResolveError::TooDeep),
            Ok(_) if is_last && mode.last_may_be_file => {
                stack.push(name);
                return Ok(join(root, &stack));
            }
            Ok(_) => return Err(ResolveError::NotADirectory(format!("/{}", rel_display(&stack, &name)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && mode.create_dirs && too_deep => {
                return Err(ResolveError::TooDeep);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && mode.create_dirs => {
                match std::fs::create_dir(&host) {
                    Ok(()) => created.push(host),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        // Lost a race with ourselves: look again.
                        queue.push_front(name);
                        continue;
                    }
                    Err(e) => return Err(ResolveError::Io(host, e)),
                }
                stack.push(name);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ResolveError::NotFound(format!("/{}", rel_display(&stack, &name))));
            }
            Err(e) => return Err(ResolveError::Io(host, e)),
        }
    }
    Ok(join(root, &stack))
}

/// Whether applying `expansion` (which may hold `..`) to `stack` climbs above the root.
fn escapes(stack: &[OsString], expansion: &[OsString]) -> bool {
    let mut depth = stack.len();
    for c in expansion {
        if c == ".." {
            if depth == 0 {
                return true;
            }
            depth -= 1;
        } else {
            depth += 1;
        }
    }
    false
}

fn join(root: &Path, stack: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(stack);
    p
}

fn rel_display(stack: &[OsString], name: &OsStr) -> String {
    let mut p = PathBuf::new();
    p.extend(stack);
    p.push(name);
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn comps(p: &str) -> Vec<&OsStr> {
        normal_components(Path::new(p)).unwrap()
    }

    #[test]
    fn components_refuse_absolute_and_dotdot() {
        assert_eq!(comps("./a/./b/"), vec![OsStr::new("a"), OsStr::new("b")]);
        assert!(normal_components(Path::new("/etc/passwd")).is_err());
        assert!(normal_components(Path::new("a/../b")).is_err());
        assert!(normal_components(Path::new("..")).is_err());
    }

    #[test]
    fn follows_symlinks_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr", root.join("abs")).unwrap();
        symlink("../lib", root.join("usr/up")).unwrap();
        let mut created = vec![];
        assert_eq!(
            resolve(root, &comps("lib"), EXISTING_DIR, 64, &mut created).unwrap(),
            root.join("usr/lib")
        );
        assert_eq!(
            resolve(root, &comps("abs/lib"), EXISTING_DIR, 64, &mut created).unwrap(),
            root.join("usr/lib")
        );
        assert_eq!(
            resolve(root, &comps("usr/up"), EXISTING_DIR, 64, &mut created).unwrap(),
            root.join("usr/lib")
        );
        assert!(created.is_empty());
        // Creating through a symlink creates inside the root.
        assert_eq!(
            resolve(root, &comps("abs/new/dir"), MKDIR_P, 64, &mut created).unwrap(),
            root.join("usr/new/dir")
        );
        assert_eq!(created, vec![root.join("usr/new"), root.join("usr/new/dir")]);
    }

    #[test]
    fn refuses_to_climb_out() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        symlink("../../..", root.join("up")).unwrap();
        symlink("/../x", root.join("absup")).unwrap();
        let mut created = vec![];
        for p in ["up", "up/x", "absup"] {
            let err = resolve(&root, &comps(p), MKDIR_P, 64, &mut created).unwrap_err();
            assert!(matches!(err, ResolveError::Escapes(_)), "{p}: {err}");
        }
        assert!(created.is_empty());
        assert!(!tmp.path().join("x").exists());
    }

    #[test]
    fn loops_and_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        std::fs::write(root.join("f"), "").unwrap();
        let mut created = vec![];
        assert!(matches!(
            resolve(root, &comps("a/x"), MKDIR_P, 64, &mut created),
            Err(ResolveError::TooManySymlinks)
        ));
        assert!(matches!(
            resolve(root, &comps("f/x"), MKDIR_P, 64, &mut created),
            Err(ResolveError::NotADirectory(_))
        ));
        assert!(matches!(
            resolve(root, &comps("nope"), EXISTING_DIR, 64, &mut created),
            Err(ResolveError::NotFound(_))
        ));
        assert_eq!(resolve(root, &comps("f"), EXISTING_FILE, 64, &mut created).unwrap(), root.join("f"));
    }

    #[test]
    fn depth_counts_where_symlinks_lead() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        symlink("a/b/c", root.join("deep")).unwrap();
        let mut created = vec![];
        assert_eq!(
            resolve(root, &comps("a/b/c"), EXISTING_DIR, 3, &mut created).unwrap(),
            root.join("a/b/c")
        );
        assert!(matches!(
            resolve(root, &comps("a/b/c"), EXISTING_DIR, 2, &mut created),
            Err(ResolveError::TooDeep)
        ));
        // Two components written, four levels reached: refused, and nothing created.
        assert!(matches!(
            resolve(root, &comps("deep/x"), MKDIR_P, 3, &mut created),
            Err(ResolveError::TooDeep)
        ));
        assert!(!root.join("a/b/c/x").exists());
        assert!(created.is_empty());
        // Climbing back up through a deep link is fine.
        symlink("a/b/c/../../..", root.join("back")).unwrap();
        assert_eq!(resolve(root, &comps("back/a"), EXISTING_DIR, 3, &mut created).unwrap(), root.join("a"));
        // Errors name paths inside the root, not on the host.
        std::fs::write(root.join("a/f"), "").unwrap();
        let err = resolve(root, &comps("a/f/x"), MKDIR_P, 64, &mut created).unwrap_err();
        assert_eq!(err.to_string(), "/a/f is not a directory");
    }
}
