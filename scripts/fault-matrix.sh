#!/usr/bin/env bash
# The standing fault matrix (issue 9): real `ateom serve` workers SIGKILLed at every crash
# point, their sandbox processes SIGKILLed at the same points, their state directories on a
# small tmpfs filled at each write, and their object store (a real S3 server, s3s-fs) behind a
# fault-injecting proxy — each case checks continuity from the last acknowledged state, lost
# state, leftovers (processes, namespaces, mounts, cgroups) and that the next operation works.
#
#   scripts/fault-matrix.sh [--json] [--backend gvisor|qemu|firecracker|all] [--filter SUBSTR]
#                           [--list] [--work-dir DIR]
#
# Prints ONE JSON object with --json (cases, passed, failed, skipped, wrong_resumes,
# lost_acknowledged_state, leaks, elapsed_s, by_backend, results[]), otherwise a table and the
# same summary. Exit status: 0 when no case failed, 1 when one did, 2 when the suite could not
# run. Skipped cases (a backend this machine cannot run) are listed loudly on stderr and never
# count as passed. Builds and progress go to stderr.
#
# What it builds or installs (cached):
#   * `ateom` with crash points: cargo build --release -p ateom --features failpoints
#     --target-dir ${CARGO_TARGET_DIR:-target}/failpoints (FAILPOINTS="<point>=return" makes
#     the worker SIGKILL itself there; the points are in crates/ateom-runtime/src/faults.rs),
#     and the runner (crates/fault-matrix, binary ateom-fault-matrix) in the same target dir;
#   * the static counter (scripts/build-counter.sh, or $ATEOM_COUNTER_BIN), packed once;
#   * s3s-fs (scripts/s3-server.sh install);
#   * for QEMU: the guest kernel (scripts/build-guest-kernel.sh) and ateom-init
#     (scripts/build-init.sh);
#   * for Firecracker, only when a binary is at $ATEOM_FIRECRACKER_BIN or on PATH: the
#     freestanding test guest (scripts/build-test-guest.sh).
# Needs root (network namespaces, runsc, tmpfs mounts). Traffic stays on loopback and inside
# the namespaces ateom creates; only processes the suite started are killed (by PID).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { echo "fault-matrix.sh: $*" >&2; }
die() { log "ERROR: $*"; exit 2; }

backend=all
pass=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --json | --list) pass+=("$1"); shift ;;
        --backend) backend="$2"; pass+=(--backend "$2"); shift 2 ;;
        --filter | --work-dir) pass+=("$1" "$2"); shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
case "$backend" in gvisor | qemu | firecracker | all) ;; *) die "--backend: gvisor, qemu, firecracker or all" ;; esac
wants() { [[ "$backend" == all || "$backend" == "$1" ]]; }

[[ "$(id -u)" == 0 ]] || die "needs root (network namespaces, runsc, tmpfs mounts)"
target="${CARGO_TARGET_DIR:-$root/target}/failpoints"
cargo="${CARGO:-cargo}"

log "building ateom with crash points and the runner in $target"
"$cargo" build --release -p ateom --features failpoints --target-dir "$target" 1>&2
"$cargo" build --release -p ateom-fault-matrix --target-dir "$target" 1>&2
runner_args=(--ateom "$target/release/ateom")
for a in "${pass[@]}"; do
    # Listing needs nothing else.
    [[ "$a" == --list ]] && exec "$target/release/ateom-fault-matrix" "${runner_args[@]}" --counter /dev/null "${pass[@]}"
done

counter="${ATEOM_COUNTER_BIN:-}"
if [[ -z "$counter" ]]; then
    counter="$(scripts/build-counter.sh | tail -n1)" || die "scripts/build-counter.sh failed"
fi
runner_args+=(--counter "$counter")

if s3="$(scripts/s3-server.sh install | tail -n1)" && [[ -x "$s3" ]]; then
    runner_args+=(--s3s-fs "$s3")
else
    log "!!!!! s3s-fs could not be installed: the object-store cases will be skipped"
fi

if wants gvisor; then
    runsc="${ATEOM_RUNSC:-/usr/bin/runsc}"
    [[ -x "$runsc" ]] || runner_args+=(--unavailable "gvisor=runsc is not installed at $runsc (apt install runsc)")
fi

if wants qemu; then
    if ! command -v qemu-system-x86_64 >/dev/null; then
        runner_args+=(--unavailable "qemu=qemu-system-x86_64 is not installed (apt install qemu-system-x86)")
    elif ! kernel="$(scripts/build-guest-kernel.sh | tail -n1)"; then
        runner_args+=(--unavailable "qemu=the guest kernel could not be built (scripts/build-guest-kernel.sh)")
    elif ! init="$(scripts/build-init.sh | tail -n1)"; then
        runner_args+=(--unavailable "qemu=ateom-init could not be built (scripts/build-init.sh)")
    else
        runner_args+=(--kernel "$kernel" --guest-init "$init")
    fi
fi

if wants firecracker; then
    fc="${ATEOM_FIRECRACKER_BIN:-$(command -v firecracker || true)}"
    if [[ -n "$fc" && -x "$fc" ]]; then
        if guest="$(scripts/build-test-guest.sh | tail -n1)"; then
            runner_args+=(--firecracker "$fc" --test-guest "$guest")
        else
            runner_args+=(--unavailable "firecracker=the freestanding test guest could not be built")
        fi
    fi
fi

exec "$target/release/ateom-fault-matrix" "${runner_args[@]}" "${pass[@]}"
