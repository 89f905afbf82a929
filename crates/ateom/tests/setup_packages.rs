//! scripts/packages.sh, the package step of scripts/setup.sh, against a fake dpkg/apt: it
//! installs only what is missing, never changes a package the machine has, and stops with the
//! command that would fix an out-of-range one. (No real package is touched: dpkg-query,
//! apt-get and apt-cache are stubs on PATH; dpkg --compare-versions is the real one.)

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// A fake package database and apt. `db`: "name version" lines of installed packages;
/// `madison`: "name version" lines apt knows; `sim_extra`: lines the simulation adds.
struct Fake {
    dir: tempfile::TempDir,
}

const DPKG_QUERY: &str = r#"#!/bin/bash
# fake dpkg-query over $FAKE/db ("name version source" lines)
fmt=""; names=()
for a in "$@"; do case "$a" in -W) ;; -f=*) fmt="${a#-f=}" ;; *) names+=("$a") ;; esac; done
if ((${#names[@]} == 0)); then
    while read -r n v s; do
        line="$fmt"; line="${line//'${db:Status-Abbrev}'/ii }"; line="${line//'${binary:Package}'/$n}"
        line="${line//'${Version}'/$v}"; line="${line//'${source:Package}'/${s:-$n}}"; printf "$line"
    done <"$FAKE/db"
    exit 0
fi
read -r n v s < <(awk -v n="${names[0]}" '$1 == n' "$FAKE/db")
[[ -n "$n" ]] || { echo "dpkg-query: no packages found matching ${names[0]}" >&2; exit 1; }
line="$fmt"; line="${line//'${Status}'/install ok installed}"; line="${line//'${Version}'/$v}"
line="${line//'${source:Package}'/${s:-$n}}"; printf "$line"
"#;

const APT_GET: &str = r#"#!/bin/bash
# fake apt-get: logs every call; -s prints a simulation; -y installs into $FAKE/db
echo "apt-get $*" >>"$FAKE/log"
sim=0; yes=0; pkgs=()
for a in "$@"; do case "$a" in -s) sim=1 ;; -y) yes=1 ;; -*|install|update) ;; *) pkgs+=("$a") ;; esac; done
[[ " $* " == *" update "* ]] && exit 0
if ((sim)); then
    for p in "${pkgs[@]}"; do echo "Inst $p (1.0 Debian:12 [amd64])"; done
    cat "$FAKE/sim_extra" 2>/dev/null
    exit 0
fi
for p in "${pkgs[@]}"; do echo "$p 1.0" >>"$FAKE/db"; done
"#;

const APT_CACHE: &str = r#"#!/bin/bash
# fake apt-cache madison over $FAKE/madison ("name version" lines)
[[ "$1" == madison ]] || exit 1
awk -v n="$2" '$1 == n { printf "%10s | %s | http://deb.debian.org/debian bookworm/main amd64 Packages\n", $1, $2 }' "$FAKE/madison"
"#;

impl Fake {
    fn new(db: &str, madison: &str) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        for (name, body) in [("dpkg-query", DPKG_QUERY), ("apt-get", APT_GET), ("apt-cache", APT_CACHE)] {
            let p = bin.join(name);
            std::fs::write(&p, body).unwrap();
            Command::new("chmod").arg("+x").arg(&p).status().unwrap();
        }
        std::fs::write(dir.path().join("db"), db).unwrap();
        std::fs::write(dir.path().join("madison"), madison).unwrap();
        std::fs::write(dir.path().join("log"), "").unwrap();
        Fake { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// `ensure_packages SPECS...`; returns (success, stderr).
    fn ensure(&self, specs: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let path = format!("{}:/usr/bin:/bin:/usr/sbin:/sbin", self.path("bin").display());
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(format!("source '{}/scripts/packages.sh'; ensure_packages \"$@\"", repo_root().display()))
            .arg("ensure_packages")
            .args(specs)
            .env("PATH", path)
            .env("FAKE", self.dir.path())
            .env_remove("ATEOM_SETUP_ACCEPT")
            .env_remove("ATEOM_SETUP_DRY_RUN");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn dpkg_available() -> bool {
    Command::new("dpkg").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn nothing_missing_means_apt_is_never_called() {
    if !dpkg_available() {
        eprintln!("SKIPPED nothing_missing_means_apt_is_never_called: no dpkg (not Debian)");
        return;
    }
    let f = Fake::new("runsc 0.0~20221219.0-2\ne2fsprogs 1.47.0-2\n", "");
    let (ok, err) = f.ensure(&["runsc", "e2fsprogs>=1.43@mkfs.ext4"], &[]);
    assert!(ok, "{err}");
    assert_eq!(f.read("log"), "", "apt-get was called: {err}");
}

#[test]
fn only_missing_packages_are_installed_and_nothing_else_changes() {
    if !dpkg_available() {
        eprintln!("SKIPPED only_missing_packages_are_installed_and_nothing_else_changes: no dpkg");
        return;
    }
    let f = Fake::new("runsc 0.0~20221219.0-2\nqemu-utils 1:10.0.2+ds-1~bpo12+1\n", "");
    let (ok, err) = f.ensure(&["runsc", "zstd", "bc"], &[]);
    assert!(ok, "{err}");
    let log = f.read("log");
    let calls: Vec<&str> = log.lines().collect();
    assert_eq!(calls[0], "apt-get update -qq");
    assert_eq!(calls[1], "apt-get -s install --no-install-recommends --no-remove --no-upgrade zstd bc");
    assert_eq!(calls[2], "apt-get -y -qq install --no-install-recommends --no-remove --no-upgrade zstd bc");
    assert_eq!(calls.len(), 3);
    let db = f.read("db");
    assert!(db.contains("qemu-utils 1:10.0.2+ds-1~bpo12+1\n"), "the newer qemu-utils stays: {db}");
    assert!(err.contains("no package the machine had was changed"), "{err}");
}

#[test]
fn a_simulation_that_touches_an_installed_package_stops_before_anything_changes() {
    if !dpkg_available() {
        eprintln!(
            "SKIPPED a_simulation_that_touches_an_installed_package_stops_before_anything_changes: no dpkg"
        );
        return;
    }
    let f = Fake::new("qemu-utils 1:10.0.2+ds-1~bpo12+1\n", "");
    std::fs::write(
        f.path("sim_extra"),
        "Inst qemu-utils [1:10.0.2+ds-1~bpo12+1] (1:7.2+dfsg-7+deb12u18+b3 Debian:12 [amd64])\nRemv foo [1.0]\n",
    )
    .unwrap();
    let (ok, err) = f.ensure(&["qemu-system-x86"], &[]);
    assert!(!ok);
    assert!(err.contains("would change packages this machine already has"), "{err}");
    assert!(err.contains("qemu-utils [1:10.0.2+ds-1~bpo12+1]") && err.contains("foo (removed)"), "{err}");
    assert!(!f.read("log").contains("-y"), "no real install ran");
    assert_eq!(f.read("db"), "qemu-utils 1:10.0.2+ds-1~bpo12+1\n");
}

#[test]
fn a_too_new_qemu_stops_with_the_command_that_fixes_it() {
    if !dpkg_available() {
        eprintln!("SKIPPED a_too_new_qemu_stops_with_the_command_that_fixes_it: no dpkg");
        return;
    }
    let f = Fake::new(
        "qemu-system-x86 1:10.0.2+ds-1~bpo12+1 qemu\nqemu-system-common 1:10.0.2+ds-1~bpo12+1 qemu\nzstd 1.5.4 zstd\n",
        "qemu-system-x86 1:10.0.2+ds-1~bpo12+1\nqemu-system-x86 1:7.2+dfsg-7+deb12u18+b3\n\
         qemu-system-common 1:7.2+dfsg-7+deb12u18+b3\n",
    );
    let spec = "qemu-system-x86>=1:4.2<<1:9.0@qemu-system-x86_64";
    let (ok, err) = f.ensure(&[spec, "bc"], &[]);
    assert!(!ok);
    assert!(
        err.contains(
            "qemu-system-x86 1:10.0.2+ds-1~bpo12+1 is installed; ateom supports only versions before 1:9.0"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "apt-get install --allow-downgrades qemu-system-x86=1:7.2+dfsg-7+deb12u18+b3 qemu-system-common=1:7.2+dfsg-7+deb12u18+b3"
        ),
        "{err}"
    );
    assert!(err.contains("ATEOM_SETUP_ACCEPT=\"qemu-system-x86\""), "{err}");
    assert_eq!(f.read("log"), "", "stopped before apt-get, even for the missing bc");
    // Accepting the installed one lets setup go on (and only bc is installed).
    let (ok, err) = f.ensure(&[spec, "bc"], &[("ATEOM_SETUP_ACCEPT", "qemu-system-x86")]);
    assert!(ok, "{err}");
    assert!(f.read("log").contains("--no-upgrade bc\n"));
}

#[test]
fn a_too_old_package_stops_with_an_upgrade_command() {
    if !dpkg_available() {
        eprintln!("SKIPPED a_too_old_package_stops_with_an_upgrade_command: no dpkg");
        return;
    }
    let f = Fake::new("e2fsprogs 1.42.9-1\n", "e2fsprogs 1.47.0-2\ne2fsprogs 1.42.9-1\n");
    let (ok, err) = f.ensure(&["e2fsprogs>=1.43@mkfs.ext4"], &[]);
    assert!(!ok);
    assert!(err.contains("e2fsprogs 1.42.9-1 is installed; ateom needs >= 1.43"), "{err}");
    assert!(err.contains("apt-get install --only-upgrade e2fsprogs=1.47.0-2"), "{err}");
}

#[test]
fn a_command_installed_outside_dpkg_stands_in_for_its_package() {
    if !dpkg_available() {
        eprintln!("SKIPPED a_command_installed_outside_dpkg_stands_in_for_its_package: no dpkg");
        return;
    }
    let f = Fake::new("", "");
    let own = f.path("bin").join("qemu-img");
    std::fs::write(&own, "#!/bin/sh\necho 'qemu-img version 10.0.2'\n").unwrap();
    Command::new("chmod").arg("+x").arg(&own).status().unwrap();
    let (ok, err) = f.ensure(&["qemu-utils@qemu-img"], &[]);
    assert!(ok, "{err}");
    assert!(err.contains("is there (not from a Debian package): leaving it alone"), "{err}");
    assert_eq!(f.read("log"), "");
}
