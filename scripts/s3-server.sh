#!/usr/bin/env bash
# A real S3-compatible server for tests and demos: s3s-fs (crates.io, Apache-2.0), which keeps
# buckets as directories and objects as files under a data dir, with SigV4 authentication.
#
#   scripts/s3-server.sh install
#       Install s3s-fs if missing (cargo install, cached) and print the binary's path.
#   scripts/s3-server.sh run   --port P --data DIR [--access-key AK --secret-key SK] [--bucket B]...
#       Create the bucket directories and exec the server in the foreground on 127.0.0.1:P.
#   scripts/s3-server.sh start --port P --data DIR [--access-key AK --secret-key SK] [--bucket B]...
#       Start it in the background, wait until it answers, create the buckets through the S3
#       API (CreateBucket, SigV4-signed with curl), print AWS_ENDPOINT_URL=… and PID=….
#   scripts/s3-server.sh create-bucket --endpoint URL --bucket B --access-key AK --secret-key SK
#       CreateBucket through the S3 API.
#
# Environment: S3S_FS_BIN (use this binary), S3S_FS_VERSION (default 0.14.1: the newest
# release that builds with Rust 1.95; 0.17 needs 1.96), ATEOM_TOOLS_DIR (install root,
# default ~/.cache/ateom/tools). It listens only on 127.0.0.1 unless --host says otherwise.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${S3S_FS_VERSION:-0.14.1}"
TOOLS="${ATEOM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ateom/tools}"

die() { echo "s3-server.sh: $*" >&2; exit 1; }

find_bin() {
    if [[ -n "${S3S_FS_BIN:-}" && -x "${S3S_FS_BIN}" ]]; then echo "$S3S_FS_BIN"; return 0; fi
    local c
    for c in "$TOOLS/bin/s3s-fs" "$HOME/.cargo/bin/s3s-fs" "$(command -v s3s-fs 2>/dev/null || true)"; do
        if [[ -n "$c" && -x "$c" ]]; then echo "$c"; return 0; fi
    done
    return 1
}

install() {
    local bin
    if bin="$(find_bin)"; then echo "$bin"; return 0; fi
    command -v cargo >/dev/null || die "cargo not found: cannot install s3s-fs"
    mkdir -p "$TOOLS"
    # One installer at a time (parallel test binaries may all ask).
    exec 9>"$TOOLS/.s3s-fs.lock"
    flock 9
    if bin="$(find_bin)"; then echo "$bin"; return 0; fi
    echo "s3-server.sh: installing s3s-fs $VERSION into $TOOLS (takes ~2 minutes on 2 cores)" >&2
    local start=$SECONDS
    cargo install --locked --quiet --root "$TOOLS" s3s-fs --version "$VERSION" --features binary >&2 \
        || die "cargo install s3s-fs $VERSION failed"
    echo "s3-server.sh: installed in $((SECONDS - start)) s" >&2
    echo "$TOOLS/bin/s3s-fs"
}

create_bucket() { # endpoint bucket ak sk
    local endpoint="$1" bucket="$2" ak="$3" sk="$4" code
    command -v curl >/dev/null || die "curl not found: cannot call CreateBucket"
    # s3s wants x-amz-content-sha256; curl signs x-amz-* headers it is given (empty body).
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT \
        -H "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" \
        --aws-sigv4 "aws:amz:us-east-1:s3" --user "$ak:$sk" "$endpoint/$bucket")" \
        || die "CreateBucket $bucket at $endpoint: request failed"
    [[ "$code" == 200 || "$code" == 409 ]] || die "CreateBucket $bucket at $endpoint: HTTP $code"
}

cmd="${1:-}"
[[ -n "$cmd" ]] || die "usage: $0 install|run|start|create-bucket [options]"
shift
HOST=127.0.0.1 PORT="" DATA="" AK="" SK="" ENDPOINT="" BUCKETS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --host) HOST="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --access-key) AK="$2"; shift 2 ;;
        --secret-key) SK="$2"; shift 2 ;;
        --bucket) BUCKETS+=("$2"); shift 2 ;;
        --endpoint) ENDPOINT="$2"; shift 2 ;;
        *) die "unknown option $1" ;;
    esac
done

case "$cmd" in
    install)
        install
        ;;
    run | start)
        [[ -n "$PORT" && -n "$DATA" ]] || die "$cmd needs --port and --data"
        BIN="$(install)"
        mkdir -p "$DATA"
        AUTH=()
        [[ -n "$AK" ]] && AUTH=(--access-key "$AK" --secret-key "$SK")
        if [[ "$cmd" == run ]]; then
            # s3s-fs keeps a bucket as a top-level directory of its data dir (its CreateBucket
            # is exactly this mkdir), so buckets can exist before it starts.
            for b in "${BUCKETS[@]}"; do mkdir -p "$DATA/$b"; done
            exec "$BIN" --host "$HOST" --port "$PORT" "${AUTH[@]}" "$DATA"
        fi
        LOG="${DATA%/}.log"
        nohup "$BIN" --host "$HOST" --port "$PORT" "${AUTH[@]}" "$DATA" >"$LOG" 2>&1 &
        PID=$!
        wait_port "$HOST" "$PORT" 10 || { kill "$PID" 2>/dev/null; die "s3s-fs did not listen on $HOST:$PORT (log: $LOG)"; }
        for b in "${BUCKETS[@]}"; do
            create_bucket "http://$HOST:$PORT" "$b" "$AK" "$SK" || { kill "$PID"; exit 1; }
        done
        echo "AWS_ENDPOINT_URL=http://$HOST:$PORT"
        echo "PID=$PID"
        ;;
    create-bucket)
        [[ -n "$ENDPOINT" && ${#BUCKETS[@]} -gt 0 ]] || die "create-bucket needs --endpoint and --bucket"
        for b in "${BUCKETS[@]}"; do create_bucket "$ENDPOINT" "$b" "$AK" "$SK"; done
        ;;
    *)
        die "unknown command $cmd"
        ;;
esac
