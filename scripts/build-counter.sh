#!/usr/bin/env bash
# Builds the `counter` demo as a fully static x86_64 glibc binary and prints its absolute
# path as the last line of stdout (progress goes to stderr).
#
# How: glibc's static libc.a (Debian's libc6-dev) with `-C target-feature=+crt-static`.
# The flag goes through RUSTFLAGS with an explicit --target, so it applies to the counter and
# its dependencies but not to build scripts, and a separate target dir keeps the flag from
# invalidating the rest of the workspace's build cache (and keeps the static binary from
# being overwritten by an ordinary `cargo build --release`). Debug info is stripped (symbols
# are kept for backtraces).
#
# Usage: scripts/build-counter.sh            (env CARGO, CARGO_BUILD_JOBS etc. are honoured)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="x86_64-unknown-linux-gnu"
target_dir="$root/target/counter-static"
cargo="${CARGO:-cargo}"

echo "build-counter: building a static counter for $target in $target_dir" >&2
(
    cd "$root"
    RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
        "$cargo" build -p counter --release --target "$target" --target-dir "$target_dir" 1>&2
)
bin="$target_dir/$target/release/counter"

# Refuse to hand out a binary that would need a dynamic loader in an empty rootfs.
if [[ ! -x "$bin" ]]; then
    echo "build-counter: $bin was not produced" >&2
    exit 1
fi
if LC_ALL=C readelf -l "$bin" | grep -q 'INTERP'; then
    echo "build-counter: $bin has a program interpreter: it is not statically linked" >&2
    exit 1
fi
if LC_ALL=C readelf -d "$bin" | grep -q '(NEEDED)'; then
    echo "build-counter: $bin needs shared libraries: it is not statically linked" >&2
    exit 1
fi
echo "build-counter: $(stat -c %s "$bin") bytes, statically linked" >&2
echo "$bin"
