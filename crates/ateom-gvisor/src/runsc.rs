//! The `runsc` binary: version and feature detection, and command construction.
//!
//! Releases differ (the Debian 12 package is a 2022 build; users deploy newer ones), so
//! features are detected from `runsc flags` rather than assumed from a version number.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use ateom_core::BackendError;
use tokio::process::Command;

/// What this runsc build supports, as far as ateom cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    /// `--overlay2 root:memory`: root file system changes live in sandbox memory and are
    /// therefore part of the checkpoint image.
    pub overlay2: bool,
    /// The older spelling of the same, `--overlay`.
    pub overlay_legacy: bool,
    /// Platforms named in `--platform`'s help text.
    pub platforms: Vec<String>,
}

/// A probed runsc binary.
#[derive(Clone, Debug)]
pub struct Runsc {
    pub path: PathBuf,
    /// e.g. `0.0~20221219.0` or `release-20240513.0`.
    pub version: String,
    pub features: Features,
}

impl Runsc {
    /// Runs `runsc --version` and `runsc flags` to learn what this build can do.
    pub async fn probe(path: &Path) -> Result<Self, BackendError> {
        let out = Command::new(path).arg("--version").stdin(Stdio::null()).output().await.map_err(|e| {
            BackendError::Unavailable { what: format!("runsc at {}", path.display()), detail: e.to_string() }
        })?;
        let text = String::from_utf8_lossy(&out.stdout);
        let version = parse_version(&text).ok_or_else(|| BackendError::Unavailable {
            what: format!("runsc at {}", path.display()),
            detail: format!("unexpected --version output {:?}", text.trim()),
        })?;
        let flags = Command::new(path).arg("flags").stdin(Stdio::null()).output().await.map_err(|e| {
            BackendError::Unavailable { what: format!("runsc at {}", path.display()), detail: e.to_string() }
        })?;
        // `runsc flags` prints to stdout on some releases and stderr on others.
        let mut help = String::from_utf8_lossy(&flags.stdout).into_owned();
        help.push_str(&String::from_utf8_lossy(&flags.stderr));
        Ok(Self { path: path.to_owned(), version, features: parse_features(&help) })
    }
}

/// `runsc version 0.0~20221219.0\nspec: 1.0.2-dev` -> `0.0~20221219.0`.
pub fn parse_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("runsc version "))?;
    let v = line.trim_start_matches("runsc version ").trim();
    (!v.is_empty()).then(|| v.to_owned())
}

pub fn parse_features(flags_help: &str) -> Features {
    let has_flag = |name: &str| {
        flags_help.lines().any(|l| {
            let l = l.trim_start();
            l.strip_prefix('-').and_then(|r| r.split_whitespace().next()) == Some(name)
        })
    };
    let mut platforms = Vec::new();
    let mut lines = flags_help.lines();
    while let Some(l) = lines.next() {
        if l.trim_start().strip_prefix('-').and_then(|r| r.split_whitespace().next()) == Some("platform")
            && let Some(help) = lines.next()
        {
            for p in ["ptrace", "kvm", "systrap"] {
                if help.contains(p) {
                    platforms.push(p.to_owned());
                }
            }
        }
    }
    Features { overlay2: has_flag("overlay2"), overlay_legacy: has_flag("overlay"), platforms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("runsc version 0.0~20221219.0\nspec: 1.0.2-dev\n").unwrap(),
            "0.0~20221219.0"
        );
        assert_eq!(parse_version("runsc version release-20240513.0\n").unwrap(), "release-20240513.0");
        assert_eq!(parse_version("nope"), None);
    }

    #[test]
    fn features_of_the_2022_release() {
        let help = "  -overlay\n    \tDEPRECATED: use --overlay2=all:memory\n  -overlay2 value\n    \twrap mounts\n  -platform string\n    \tspecifies which platform to use: ptrace (default), kvm. (default \"ptrace\")\n";
        let f = parse_features(help);
        assert!(f.overlay2 && f.overlay_legacy);
        assert_eq!(f.platforms, ["ptrace", "kvm"]);
        let f = parse_features("  -platform string\n    \tsystrap (default), ptrace, kvm\n");
        assert!(!f.overlay2);
        assert_eq!(f.platforms, ["ptrace", "kvm", "systrap"]);
    }
}
