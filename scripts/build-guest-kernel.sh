#!/usr/bin/env bash
# Builds ateom's guest kernel and prints the absolute path of its `vmlinux` as the last line
# of stdout (all progress goes to stderr).
#
# What: Linux from Debian's `linux-source-6.1` package (/usr/src/linux-source-6.1.tar.xz),
# configured as `make allnoconfig` + guest/kernel/ateom.config (merge_config.sh -n), then
# `make olddefconfig`; every line of the fragment is checked against the final .config and
# the build fails loudly if one was dropped. Only the `vmlinux` target is built (an
# uncompressed ELF with a PVH entry note: what Firecracker and `qemu -M microvm -kernel`
# load); debug info is stripped from it, and its PVH note and ELF header are checked.
#
# Cache: ${XDG_CACHE_HOME:-$HOME/.cache}/ateom/kernel/<key>/{vmlinux,config,build.log,sha256,info}
# with key = sha256(source package + its dpkg version + recipe version + fragment bytes).
# A hit prints the cached path at once (the vmlinux is checked against its `sha256` file).
# A miss builds in <cache>/.build-<key> and renames the finished directory to <key>, so an
# interrupted build never looks complete; builds are serialised by a lock, so two
# concurrent callers build once. `sha256` holds the kernel id (sha256 of vmlinux).
#
# Usage: scripts/build-guest-kernel.sh [--force] [--print-key] [-j N]
#   --force      rebuild even if the cache has this key (replaces the cached entry)
#   --print-key  print the cache key and exit
#   --check-config FILE  only check that FILE (a .config) has every line of the fragment
#   -j N         parallel make jobs (default: $ATEOM_KERNEL_JOBS or nproc)
# Env: ATEOM_KERNEL_NICE (default 10): niceness of the build;
#      ATEOM_KERNEL_SOURCE_PACKAGE (default linux-source-6.1): the Debian source package.
set -euo pipefail

# Bump when anything below changes what gets built (make targets, flags, strip, checks).
RECIPE_VERSION="ateom-guest-kernel-recipe-1"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fragment="$root/guest/kernel/ateom.config"
pkg="${ATEOM_KERNEL_SOURCE_PACKAGE:-linux-source-6.1}"
tarball="/usr/src/$pkg.tar.xz"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/ateom/kernel"
jobs="${ATEOM_KERNEL_JOBS:-$(nproc)}"
niceness="${ATEOM_KERNEL_NICE:-10}"
force=0
print_key=0

log() { echo "build-guest-kernel: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Every line of the fragment must be in the final .config, verbatim.
# "# CONFIG_X is not set" lines only require that CONFIG_X is not enabled.
check_config() {
    local config="$1" line sym got missing=0
    while IFS= read -r line; do
        line="${line%%$'\r'}"
        if [[ "$line" =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
            sym="${BASH_REMATCH[1]}"
            if got="$(grep -E "^$sym=" "$config")"; then
                log "config check: wanted '$line' but .config has '$got'"
                missing=$((missing + 1))
            fi
        elif [[ "$line" =~ ^(CONFIG_[A-Za-z0-9_]+)= ]]; then
            sym="${BASH_REMATCH[1]}"
            if ! grep -qxF -- "$line" "$config"; then
                got="$(grep -E "^(# )?$sym[= ]" "$config" || true)"
                log "config check: wanted '$line' but .config has '${got:-nothing (dependency not met?)}'"
                missing=$((missing + 1))
            fi
        elif [[ -n "${line// /}" && "$line" != \#* ]]; then
            log "config check: unparsable line in $fragment: '$line'"
            missing=$((missing + 1))
        fi
    done <"$fragment"
    if [[ $missing != 0 ]]; then
        log "ERROR: $missing line(s) of $fragment are not in $config (see above); fix the fragment"
        return 1
    fi
}

check_only=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --force) force=1 ;;
        --print-key) print_key=1 ;;
        --check-config) shift; check_only="${1:?--check-config needs a .config path}" ;;
        -j) shift; jobs="${1:?-j needs a number}" ;;
        -j*) jobs="${1#-j}" ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        *) die "unknown argument: $1" ;;
    esac
    shift
done

[[ -f "$fragment" ]] || die "config fragment $fragment is missing"
if [[ -n "$check_only" ]]; then
    check_config "$check_only" && log "config check passed: $check_only has every line of $fragment"
    exit
fi
pkg_version="$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null)" ||
    die "Debian package $pkg is not installed (apt-get install $pkg)"
[[ -f "$tarball" ]] || die "$tarball is missing although $pkg $pkg_version is installed"

key="$({
    printf 'package=%s\nversion=%s\nrecipe=%s\nfragment:\n' "$pkg" "$pkg_version" "$RECIPE_VERSION"
    cat "$fragment"
} | sha256sum | cut -d' ' -f1)"
if [[ $print_key == 1 ]]; then
    echo "$key"
    exit 0
fi
out="$cache_root/$key"

# Cache hit: a complete entry only ever appears through the final rename.
cache_hit() {
    [[ -f "$out/vmlinux" && -f "$out/sha256" ]] || return 1
    local want have
    want="$(cut -d' ' -f1 "$out/sha256")"
    have="$(sha256sum "$out/vmlinux" | cut -d' ' -f1)"
    if [[ "$want" != "$have" ]]; then
        log "cached $out/vmlinux does not match its sha256 file; rebuilding"
        return 1
    fi
}
if [[ $force == 0 ]] && cache_hit; then
    log "cache hit: $pkg $pkg_version, key $key, kernel id $(cut -d' ' -f1 "$out/sha256")"
    echo "$out/vmlinux"
    exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
if ! flock -n 9; then
    log "another kernel build holds $cache_root/.lock; waiting"
    flock 9
fi
# Someone else may have finished this key while we waited.
if [[ $force == 0 ]] && cache_hit; then
    log "cache hit after waiting: key $key"
    echo "$out/vmlinux"
    exit 0
fi

for tool in make gcc flex bison bc xz tar strip readelf perl; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing; install: apt-get install build-essential bc bison flex libelf-dev libssl-dev xz-utils"
done
[[ -f /usr/include/libelf.h ]] || die "libelf headers missing (objtool): apt-get install libelf-dev"

# A fixed work path (under the lock) keeps the build independent of random temp names.
work="$cache_root/.build-$key"
rm -rf "$work"
mkdir -p "$work/out"
cleanup() {
    local rc=$?
    if [[ $rc != 0 && -f "$work/out/build.log" ]]; then
        cp "$work/out/build.log" "$cache_root/failed-$key.build.log" 2>/dev/null &&
            log "build log kept at $cache_root/failed-$key.build.log"
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
buildlog="$work/out/build.log"
: >"$buildlog"

start=$SECONDS
elapsed() { local s=$((SECONDS - start)); printf '%dm%02ds' $((s / 60)) $((s % 60)); }

log "cache miss: building $pkg $pkg_version (key $key) in $work with -j$jobs, nice $niceness"
log "[$(elapsed)] extracting $tarball"
mkdir -p "$work/src"
nice -n "$niceness" tar -xf "$tarball" -C "$work/src" --strip-components=1
src="$work/src"
obj="$work/obj"
mkdir -p "$obj"

# Reproducibility: the same inputs give the same vmlinux (and so the same kernel id).
export ARCH=x86_64
export KBUILD_BUILD_USER=ateom KBUILD_BUILD_HOST=ateom KBUILD_BUILD_VERSION=1
KBUILD_BUILD_TIMESTAMP="$(date -u -d "@$(stat -c %Y "$tarball")" '+%Y-%m-%d %H:%M:%S UTC')"
export KBUILD_BUILD_TIMESTAMP
unset KCONFIG_CONFIG KCONFIG_ALLCONFIG

log "[$(elapsed)] configuring: allnoconfig + $(basename "$fragment")"
{
    echo "== $pkg $pkg_version, recipe $RECIPE_VERSION, key $key"
    echo "== $(gcc --version | head -1); $(ld --version | head -1)"
    echo "== merge_config.sh -n $fragment"
} >>"$buildlog"
(cd "$src" && nice -n "$niceness" scripts/kconfig/merge_config.sh -n -O "$obj" "$fragment") \
    >>"$buildlog" 2>&1 || { tail -40 "$buildlog" >&2; die "merge_config.sh failed"; }
nice -n "$niceness" make -C "$src" O="$obj" olddefconfig >>"$buildlog" 2>&1 ||
    { tail -40 "$buildlog" >&2; die "make olddefconfig failed"; }

check_config "$obj/.config" || exit 1
log "[$(elapsed)] config check passed: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$fragment") fragment lines present" \
    "($(grep -c '=y$' "$obj/.config") options =y in total)"

# Build vmlinux only, in its own session so an interrupt can stop the whole make tree;
# progress = compiled objects counted in the log every 15 s.
log "[$(elapsed)] make -j$jobs vmlinux (full output in build.log)"
makelog="$work/make.log"
setsid bash -c 'nice -n "$1" make -C "$2" O="$3" -j"$4" vmlinux >"$5" 2>&1; echo $? >"$5.rc"' \
    make-vmlinux "$niceness" "$src" "$obj" "$jobs" "$makelog" </dev/null &
make_pid=$!
stop_make() { kill -TERM -- "-$make_pid" 2>/dev/null || kill -TERM "$make_pid" 2>/dev/null || true; }
trap 'stop_make; exit 130' INT TERM
count_objects() { grep -cE '^  (CC|AS) ' "$makelog" 2>/dev/null || true; }
last_report=$SECONDS
while kill -0 "$make_pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - last_report >= 15 )); then
        log "[$(elapsed)] $(count_objects) objects built"
        last_report=$SECONDS
    fi
done
wait "$make_pid" || true
trap 'exit 130' INT TERM
cat "$makelog" >>"$buildlog"
make_rc="$(cat "$makelog.rc" 2>/dev/null || echo 255)"
log "[$(elapsed)] make finished (exit $make_rc): $(count_objects) objects built"
if [[ $make_rc != 0 ]]; then
    grep -E 'error|Error' "$makelog" | tail -20 >&2 || true
    tail -30 "$makelog" >&2
    die "make vmlinux failed (exit $make_rc)"
fi
[[ -f "$obj/vmlinux" ]] || die "make succeeded but $obj/vmlinux is missing"

strip --strip-debug -o "$work/out/vmlinux" "$obj/vmlinux"
# Sanity: an x86_64 ELF executable with the PVH (Xen PHYS32_ENTRY) note.
readelf -h "$work/out/vmlinux" | grep -q 'Machine:.*X86-64' || die "vmlinux is not an x86-64 ELF"
readelf -n "$work/out/vmlinux" | grep -q 'Xen.*0x00000012' ||
    die "vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); CONFIG_PVH missing?"
cp "$obj/.config" "$work/out/config"
(cd "$work/out" && sha256sum vmlinux >sha256)
kernel_release="$(cat "$obj/include/config/kernel.release" 2>/dev/null || echo unknown)"
{
    echo "package=$pkg"
    echo "package_version=$pkg_version"
    echo "kernel_release=$kernel_release"
    echo "recipe=$RECIPE_VERSION"
    echo "fragment_sha256=$(sha256sum "$fragment" | cut -d' ' -f1)"
    echo "kernel_id=$(cut -d' ' -f1 "$work/out/sha256")"
    echo "vmlinux_bytes=$(stat -c %s "$work/out/vmlinux")"
    echo "unstripped_bytes=$(stat -c %s "$obj/vmlinux")"
    echo "build_seconds=$((SECONDS - start))"
    echo "jobs=$jobs"
    echo "compiler=$(gcc --version | head -1)"
} >"$work/out/info"

# Publish atomically: the entry appears complete or not at all.
if [[ -e "$out" ]]; then
    mv "$out" "$work/old"
fi
mv "$work/out" "$out"
log "[$(elapsed)] done: $kernel_release, vmlinux $(stat -c %s "$out/vmlinux") bytes" \
    "(unstripped $(stat -c %s "$obj/vmlinux")), kernel id $(cut -d' ' -f1 "$out/sha256")"
echo "$out/vmlinux"
