#!/usr/bin/env bash
# Builds `ateom-init`, the PID 1 of ateom's microVM guests, as a fully static x86_64 glibc
# binary and prints its absolute path as the last line of stdout (progress goes to stderr).
#
# How: like scripts/build-counter.sh, glibc's static libc.a (Debian's libc6-dev) with
# `-C target-feature=+crt-static`, passed through RUSTFLAGS with an explicit --target (so
# build scripts are not affected) into a separate target dir (so the flag does not
# invalidate the workspace's build cache and an ordinary `cargo build` cannot overwrite the
# static binary). Debug info is stripped (symbols are kept for backtraces).
#
# The binary goes to /sbin/ateom-init in a guest root file system; the kernel starts it with
# init=/sbin/ateom-init (see crates/ateom-init/src/lib.rs for the contract).
#
# Usage: scripts/build-init.sh            (env CARGO, CARGO_BUILD_JOBS etc. are honoured)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="x86_64-unknown-linux-gnu"
target_dir="$root/target/init-static"
cargo="${CARGO:-cargo}"

echo "build-init: building a static ateom-init for $target in $target_dir" >&2
(
    cd "$root"
    RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
        "$cargo" build -p ateom-init --bin ateom-init --release --target "$target" \
        --target-dir "$target_dir" 1>&2
)
bin="$target_dir/$target/release/ateom-init"

# Refuse to hand out a binary that would need a dynamic loader in a guest rootfs that may
# have no libc at all.
if [[ ! -x "$bin" ]]; then
    echo "build-init: $bin was not produced" >&2
    exit 1
fi
if LC_ALL=C readelf -l "$bin" | grep -q 'INTERP'; then
    echo "build-init: $bin has a program interpreter: it is not statically linked" >&2
    exit 1
fi
if LC_ALL=C readelf -d "$bin" | grep -q '(NEEDED)'; then
    echo "build-init: $bin needs shared libraries: it is not statically linked" >&2
    exit 1
fi
echo "build-init: $(stat -c %s "$bin") bytes, statically linked" >&2
echo "$bin"
