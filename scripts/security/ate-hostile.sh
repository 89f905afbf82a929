#!/usr/bin/env bash
# The control plane's hostile-input cases (crates/ate/tests/hostile.rs) for the security
# suite: runs them against real `ate serve` processes and fake ateom workers (no gVisor
# needed) and prints one line per case on stdout:
#
#   CASE <name> <passed|failed> escapes=<n> unauthenticated_accepted=<n> crashes=<n> <detail>
#
# Exit status: cargo test's (non-zero if any case failed or a test could not run).
# Environment: CARGO_TARGET_DIR as usual; extra arguments go to the test binary
# (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/../.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test -p ate --test hostile -- --nocapture --test-threads=1 "$@" >"$log" 2>&1
rc=$?
set -e
# Case lines may follow cargo's "test name ... " prefix on the same line.
grep -o 'CASE .*' "$log" || true
if [ "$rc" -ne 0 ]; then
  echo "ate-hostile: cargo test exited $rc; last lines:" >&2
  tail -n 40 "$log" >&2
fi
exit "$rc"
