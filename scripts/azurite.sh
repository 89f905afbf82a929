#!/usr/bin/env bash
# A real Azure Blob Storage emulator for tests and demos: Azurite (npm, MIT), Microsoft's own
# emulator. It serves the blob API at http://HOST:PORT/devstoreaccount1 with the emulator's
# well-known, publicly documented account key (not a secret).
#
#   scripts/azurite.sh install
#       Install Azurite if missing (npm, cached) and print the azurite-blob binary's path.
#   scripts/azurite.sh run --port P --data DIR
#       Exec the blob service in the foreground on 127.0.0.1:P (containers: create-container).
#   scripts/azurite.sh start --port P --data DIR [--container C]...
#       Start the blob service in the background on 127.0.0.1:P, wait until it answers,
#       create the containers through the API (SharedKey-signed with curl + openssl), print
#       AZURITE_BLOB_STORAGE_URL=… and PID=….
#   scripts/azurite.sh create-container --endpoint URL --container C
#       Create Container through the API.
#
# ateom reaches it with az://CONTAINER/prefix and the environment
#   AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:P
#
# Environment: AZURITE_BIN (use this binary), AZURITE_VERSION (default 3.35.0),
# ATEOM_TOOLS_DIR (install root, default ~/.cache/ateom/tools).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERSION="${AZURITE_VERSION:-3.35.0}"
TOOLS="${ATEOM_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ateom/tools}"
ACCOUNT=devstoreaccount1
KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

die() { echo "azurite.sh: $*" >&2; exit 1; }

find_bin() {
    if [[ -n "${AZURITE_BIN:-}" && -x "${AZURITE_BIN}" ]]; then echo "$AZURITE_BIN"; return 0; fi
    local c="$TOOLS/azurite/node_modules/.bin/azurite-blob"
    if [[ -x "$c" ]]; then echo "$c"; return 0; fi
    return 1
}

install() {
    local bin
    if bin="$(find_bin)"; then echo "$bin"; return 0; fi
    command -v npm >/dev/null || die "npm not found: cannot install Azurite (apt-get install npm)"
    mkdir -p "$TOOLS/azurite"
    # One installer at a time (parallel test binaries may all ask).
    exec 9>"$TOOLS/.azurite.lock"
    flock 9
    if bin="$(find_bin)"; then echo "$bin"; return 0; fi
    echo "azurite.sh: installing Azurite $VERSION into $TOOLS/azurite" >&2
    npm install --prefix "$TOOLS/azurite" --no-audit --no-fund --silent "azurite@$VERSION" >&2 \
        || die "npm install azurite@$VERSION failed"
    find_bin || die "azurite-blob missing after the install"
}

# Create Container, signed with the account key (Shared Key; Azurite's path-style resource is
# /account/account/container).
create_container() { # endpoint container
    local endpoint="$1" container="$2" date version=2021-08-06 sts hexkey sig code
    command -v curl >/dev/null || die "curl not found: cannot call Create Container"
    command -v openssl >/dev/null || die "openssl not found: cannot sign Create Container"
    date="$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')"
    sts="$(printf 'PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:%s\n/%s/%s/%s\nrestype:container' \
        "$date" "$version" "$ACCOUNT" "$ACCOUNT" "$container")"
    hexkey="$(printf '%s' "$KEY" | base64 -d | od -An -vtx1 | tr -d ' \n')"
    sig="$(printf '%s' "$sts" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64 -w0)"
    code="$(curl -sS -o /dev/null -w '%{http_code}' -X PUT -H "Content-Length: 0" \
        -H "x-ms-date: $date" -H "x-ms-version: $version" -H "Authorization: SharedKey $ACCOUNT:$sig" \
        "$endpoint/$ACCOUNT/$container?restype=container")" \
        || die "Create Container $container at $endpoint: request failed"
    [[ "$code" == 201 || "$code" == 409 ]] || die "Create Container $container at $endpoint: HTTP $code"
}

cmd="${1:-}"
[[ -n "$cmd" ]] || die "usage: $0 install|run|start|create-container [options]"
shift
HOST=127.0.0.1 PORT="" DATA="" ENDPOINT="" CONTAINERS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --container) CONTAINERS+=("$2"); shift 2 ;;
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
        if [[ "$cmd" == run ]]; then
            exec "$BIN" --blobHost "$HOST" --blobPort "$PORT" --location "$DATA" --silent --skipApiVersionCheck
        fi
        LOG="${DATA%/}.log"
        nohup "$BIN" --blobHost "$HOST" --blobPort "$PORT" --location "$DATA" --silent \
            --skipApiVersionCheck >"$LOG" 2>&1 &
        PID=$!
        wait_port "$HOST" "$PORT" 20 || { kill "$PID" 2>/dev/null; die "Azurite did not listen on $HOST:$PORT (log: $LOG)"; }
        for c in "${CONTAINERS[@]}"; do
            create_container "http://$HOST:$PORT" "$c" || { kill "$PID"; exit 1; }
        done
        echo "AZURITE_BLOB_STORAGE_URL=http://$HOST:$PORT"
        echo "PID=$PID"
        ;;
    create-container)
        [[ -n "$ENDPOINT" && ${#CONTAINERS[@]} -gt 0 ]] || die "create-container needs --endpoint and --container"
        for c in "${CONTAINERS[@]}"; do create_container "$ENDPOINT" "$c"; done
        ;;
    *)
        die "unknown command $cmd"
        ;;
esac
