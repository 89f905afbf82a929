#!/usr/bin/env bash
# Installs what ateom needs on a fresh Debian 12 machine and builds it.
#
#   scripts/setup.sh          install packages, build ateom (release), the counter demo, the
#                             guest init, the freestanding test guest and the guest kernel
#   scripts/setup.sh --demo   ... then run the demo (`ateom demo --backend gvisor`)
#
# Idempotent: packages already present are not reinstalled, builds are incremental.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

if [[ $(id -u) -ne 0 ]]; then
    echo "setup: run as root (ateom creates network namespaces and runs sandboxes)" >&2
    exit 1
fi

packages=(runsc busybox-static e2fsprogs iproute2 zstd qemu-system-x86 qemu-utils redis-server
          linux-source-6.1 build-essential binutils bc bison flex libelf-dev libssl-dev cpio
          xz-utils python3 curl openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
else
    log "Debian packages present"
fi

# npm installs Azurite, the Azure Blob emulator the az:// tests start (any node/npm will do).
if ! command -v npm >/dev/null; then
    log "installing npm"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends npm >&2
fi

if ! command -v cargo >/dev/null; then
    echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
    exit 1
fi

log "building ateom and ate (release)"
cargo build --release --locked -p ateom -p ate >&2
log "building the static counter demo"
counter="$(scripts/build-counter.sh)"
log "counter: $counter"
log "building the static guest init (ateom-init)"
guest_init="$(scripts/build-init.sh)"
log "guest init: $guest_init"
log "building the freestanding test guest (firecracker tests and demo)"
scripts/build-test-guest.sh >/dev/null
log "building the guest kernel (first time ~7 minutes on 2 cores; cached in ~/.cache/ateom/kernel)"
kernel="$(scripts/build-guest-kernel.sh)"
log "guest kernel: $kernel"

if [[ "${1:-}" == "--demo" ]]; then
    shift
    log "running the demo"
    exec "$root/target/release/ateom" demo --backend gvisor --counter-bin "$counter" "$@"
fi
