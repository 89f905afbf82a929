#!/usr/bin/env bash
# Builds one binary of the workspace as a fully static x86_64 glibc executable and prints its
# absolute path as the last line of stdout (progress goes to stderr).
#
#   scripts/build-static.sh PACKAGE BINARY TARGET_DIR_NAME
#
# How: glibc's static libc.a (Debian's libc6-dev) with `-C target-feature=+crt-static`,
# passed through RUSTFLAGS with an explicit --target (so build scripts are not affected)
# into a separate target dir under target/ (so the flag does not invalidate the workspace's
# build cache and an ordinary `cargo build` cannot overwrite the static binary). Debug info
# is stripped (symbols are kept for backtraces). A result that would need a dynamic loader
# (an empty container or guest root has none) is refused.
set -euo pipefail

package="$1" binary="$2" dir_name="$3"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="x86_64-unknown-linux-gnu"
target_dir="$root/target/$dir_name"
cargo="${CARGO:-cargo}"
me="build-static($binary)"

echo "$me: building a static $binary for $target in $target_dir" >&2
(
    cd "$root"
    RUSTFLAGS="-C target-feature=+crt-static -C strip=debuginfo" \
        "$cargo" build -p "$package" --bin "$binary" --release --target "$target" \
        --target-dir "$target_dir" 1>&2
)
bin="$target_dir/$target/release/$binary"
if [[ ! -x "$bin" ]]; then
    echo "$me: $bin was not produced" >&2
    exit 1
fi
if LC_ALL=C readelf -l "$bin" | grep -q 'INTERP'; then
    echo "$me: $bin has a program interpreter: it is not statically linked" >&2
    exit 1
fi
if LC_ALL=C readelf -d "$bin" | grep -q '(NEEDED)'; then
    echo "$me: $bin needs shared libraries: it is not statically linked" >&2
    exit 1
fi
echo "$me: $(stat -c %s "$bin") bytes, statically linked" >&2
echo "$bin"
