#!/usr/bin/env bash
# Builds the freestanding counter guest (guest/freestanding/counter.S) with GNU as/ld and
# prints the absolute path of the ELF as the last stdout line. Cached by source digest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/guest/freestanding"
key="$(cat "$src/counter.S" "$src/counter.lds" | sha256sum | cut -c1-16)"
out_dir="$root/target/test-guest/$key"
out="$out_dir/counter.elf"
if [[ -f "$out" ]]; then echo "$out"; exit 0; fi
command -v as >/dev/null && command -v ld >/dev/null || {
    echo "build-test-guest: GNU as/ld missing (apt install binutils)" >&2; exit 1; }
mkdir -p "$out_dir"
tmp="$(mktemp -d "$out_dir/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
as --64 -o "$tmp/counter.o" "$src/counter.S"
ld -nostdlib -static -z max-page-size=4096 --no-warn-rwx-segments -T "$src/counter.lds" -o "$tmp/counter.elf" "$tmp/counter.o"
mv "$tmp/counter.elf" "$out"
echo "build-test-guest: $(stat -c %s "$out") bytes" >&2
echo "$out"
