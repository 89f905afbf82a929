#!/usr/bin/env bash
# Sets up a Debian 12 machine (x86_64, as root, with a Rust toolchain) for ateom: installs the
# Debian packages a job needs that are missing and builds what it needs. Two jobs:
#
#   scripts/setup.sh --demo [DEMO FLAGS]   what the gVisor demo needs: runsc and a C toolchain,
#                                          ateom (release) and the static counter; then runs
#                                          `ateom demo --backend gvisor [DEMO FLAGS]`
#   scripts/setup.sh --all                 everything: all
#                                          packages (QEMU, Redis, the kernel source, ...), ateom
#                                          and ate (release), the counter, the guest init, the
#                                          freestanding test guest and the guest kernel
#   scripts/setup.sh --tests               what scripts/test.sh (and so CI) uses: --all without the
#                                          release build of ateom and ate (the tests build their
#                                          own debug binaries, the fault matrix its release build
#                                          with crash points)
#   scripts/setup.sh                       the same as --all
#
# Packages the machine already has are never upgraded, downgraded or removed; one that is too
# old (or, for QEMU, too new) stops setup with the command that would fix it. See
# scripts/packages.sh for how apt is kept from touching them. Each step prints how long it
# took. Idempotent: present packages are skipped, builds are incremental, the guest kernel is
# cached under ~/.cache/ateom/kernel.
#
# Environment: ATEOM_SETUP_DRY_RUN=1 (report missing packages, install nothing, build nothing),
# ATEOM_SETUP_ACCEPT="PKG ..." (accept those packages at the installed version).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
# shellcheck source=scripts/packages.sh
source "$root/scripts/packages.sh"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

job=all
case "${1:-}" in
    --demo) job=demo; shift ;;
    --all) job=all; shift ;;
    --tests) job=tests; shift ;;
    "") ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
    *) die "unknown argument $1 (--demo, --all or --tests; --help)" ;;
esac
if [[ $job != demo && $# -gt 0 ]]; then
    die "--$job takes no further arguments (got: $*)"
fi
export ATEOM_SETUP_ARGS="--$job"

if [[ $(id -u) -ne 0 && "${ATEOM_SETUP_DRY_RUN:-0}" != 1 ]]; then
    die "run as root (ateom creates network namespaces and runs sandboxes; apt installs packages)"
fi

# Timings of the steps, printed at the end.
timings=()
step_start=0
step() { step_name="$1"; step_start=$SECONDS; log "$1"; }
step_done() {
    local s=$((SECONDS - step_start))
    timings+=("$(printf '%-34s %dm%02ds' "$step_name" $((s / 60)) $((s % 60)))")
}

# ---- packages -------------------------------------------------------------------------------
# NAME[>=MIN][<<MAX][@COMMAND]: COMMAND on PATH outside dpkg stands in for the package.
# The demo: runsc, and a C toolchain (cc links Rust binaries; libc6-dev's static libc.a and
# binutils' readelf make and check the static counter).
demo_packages=(runsc@runsc build-essential binutils)
# Everything else: microVMs (QEMU >= 4.2 has -M microvm; before 9.0 because ateom's QEMU
# confinement passes -chroot, which 9.0 removed; e2fsprogs >= 1.43 for mkfs.ext4 -d), the guest
# kernel build, the tests' services and tools (scripts/cluster.sh: pgrep, nsenter). (Nothing uses
# qemu-img: qemu-utils is not needed.)
all_packages=("${demo_packages[@]}"
    busybox-static "e2fsprogs>=1.43@mkfs.ext4" iproute2 zstd@zstd
    "qemu-system-x86>=1:4.2<<1:9.0@qemu-system-x86_64" redis-server@redis-server
    linux-source-6.1 bc bison flex libelf-dev libssl-dev cpio xz-utils python3@python3 curl@curl openssl
    procps@pgrep util-linux@nsenter)

step "Debian packages ($job)"
if [[ $job == demo ]]; then
    ensure_packages "${demo_packages[@]}"
else
    ensure_packages "${all_packages[@]}"
    # npm installs Azurite, the Azure Blob emulator the az:// tests start (any node/npm will do).
    ensure_packages npm@npm
fi
step_done

if ! command -v cargo >/dev/null; then
    die "cargo not found; install Rust (https://rustup.rs) first"
fi
need_rust="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
have_rust="$(rustc --version | awk '{print $2}')"
if [[ -n "$need_rust" ]] && ! dpkg --compare-versions "$have_rust" ge "$need_rust"; then
    die "rustc $have_rust is older than the $need_rust ateom needs: rustup update stable"
fi
if [[ "${ATEOM_SETUP_DRY_RUN:-0}" == 1 ]]; then
    log "ATEOM_SETUP_DRY_RUN=1: not building anything"
    exit 0
fi

if [[ $job == demo ]]; then
    step "building ateom (release)"
    cargo build --release --locked -p ateom >&2
    step_done
elif [[ $job == all ]]; then
    step "building ateom and ate (release)"
    cargo build --release --locked -p ateom -p ate >&2
    step_done
else
    log "not building ateom and ate (release): the tests build their own"
fi
step "building the static counter demo"
counter="$(scripts/build-counter.sh | tail -n 1)"
step_done
log "counter: $counter"

if [[ $job != demo ]]; then
    step "building the static guest init (ateom-init)"
    guest_init="$(scripts/build-init.sh | tail -n 1)"
    step_done
    log "guest init: $guest_init"
    step "building the freestanding test guest"
    test_guest="$(scripts/build-test-guest.sh | tail -n 1)"
    step_done
    log "test guest: $test_guest"
    step "building the guest kernel (cached)"
    log "(the first build takes 10-25 minutes on 2 cores, with progress; later runs hit the cache)"
    kernel="$(scripts/build-guest-kernel.sh | tail -n 1)"
    step_done
    log "guest kernel: $kernel"
fi

log "times:"
printf '    %s\n' "${timings[@]}" >&2
if [[ $job == tests ]]; then
    log "what this host can run: cargo run -p ateom -- doctor"
else
    log "what this host can run: target/release/ateom doctor"
fi

if [[ $job == demo ]]; then
    # A runsc the machine's owner installed outside dpkg is the one to use.
    ATEOM_RUNSC="${ATEOM_RUNSC:-$(command -v runsc)}"
    export ATEOM_RUNSC
    log "running the demo: ateom demo --backend gvisor $*"
    exec "$root/target/release/ateom" demo --backend gvisor --counter-bin "$counter" "$@"
fi
