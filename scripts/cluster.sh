#!/usr/bin/env bash
# Several hosts on one machine: each host is a network namespace, joined to the others by a
# bridge in a namespace of its own; link-local addresses 169.254.77.0/24 that exist only inside
# those namespaces (nothing is sent outside them).
#
#   scripts/cluster.sh up   [--hosts N]     N worker hosts (default 3) + a services host
#   scripts/cluster.sh demo [--json]        30 actors, traffic through both replicas, a host's
#                                           link down and up, then that host removed entirely,
#                                           then the leader replica killed
#   scripts/cluster.sh down                 every process, namespace and file of the cluster
#
# What runs where:
#   atec-svc   169.254.77.10   redis-server, s3s-fs (a real S3 server; scripts/s3-server.sh)
#   atec-hN    169.254.77.N    `ateom serve` (gVisor) with its own state directory and host
#                              certificate, gRPC on :7443 and its workloads' TLS front on :7444,
#                              both mutual TLS; h1 and h2 also run an `ate serve` replica
#                              (router :8080, API :7070) on the shared Redis
#   atec-br                    the bridge
# Certificates come from `ate certs`. The template pauses with `durability: both`, so a paused
# actor's snapshot is copied to S3 in the background and survives its host.
#
# `demo --json` prints one JSON object: hosts, replicas, actors, requests, continuity_errors,
# actors_on_lost_host, actors_recovered, recovery_p95_ms (the first request of each actor of the
# lost host, sent to answered), lost_host_actors_all_back_after_ms (requests go one at a time, so
# this grows with their number), failed_requests, partition_cut_off_actors (running on the host
# whose link goes down and up first), partition_unavailable_requests, partition_runs_twice (actors
# seen on two workers after the partition healed: must be 0), leader_failover_ms (SIGKILL of the leader until
# the other replica leads), cross_host_request_p50_ms and same_host_request_p50_ms (requests to a
# RUNNING actor through a replica on another host / on the actor's host).
#
# Needs root, iproute2, runsc, redis-server and the binaries (`cargo build -p ateom -p ate`;
# ATEOM_BIN / ATE_BIN override). State: $ATE_CLUSTER_DIR (default /tmp/ate-cluster).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${ATE_CLUSTER_DIR:-/tmp/ate-cluster}"
NET=169.254.77
P=atec
ATEOM="${ATEOM_BIN:-$root/target/debug/ateom}"
ATE="${ATE_BIN:-$root/target/debug/ate}"
AK=cluster-access-key
SK=cluster-secret-key-0123456789

log() { printf '\033[1m[cluster]\033[0m %s\n' "$*" >&2; }
die() {
    log "error: $*"
    if [[ "${CLEAN_ON_DIE:-}" == 1 ]]; then log "cleaning up"; down; fi
    exit 1
}
# Only the network namespace changes (nsenter): `ip netns exec` also mounts a sysfs of its own,
# without the cgroup file system runsc needs.
in_ns() { local ns="$1"; shift; nsenter --net="/run/netns/$P-$ns" -- "$@"; }
hosts() { cat "$DIR/hosts" 2>/dev/null || echo 3; }

down() {
    # Every process in our namespaces (by PID, only those), then the namespaces, then files.
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-" || true); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    done
    # Sandboxes' own namespaces made by the cluster's workers (named after their state dirs).
    for n in $(seq 1 "$(hosts)"); do
        [[ -d "$DIR/h$n/state" ]] || continue
        for pid in $(pgrep -f -- "--root=$DIR/h$n/state/runsc" || true); do kill -9 "$pid" 2>/dev/null || true; done
    done
    sleep 0.5
    for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-" || true); do ip netns delete "$ns" || true; done
    for n in $(seq 1 "$(hosts)"); do
        local id
        id="$(cat "$DIR/h$n/instance" 2>/dev/null || true)"
        [[ -n "$id" ]] || continue
        for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^ateom-$id-" || true); do ip netns delete "$ns" || true; done
    done
    rm -rf "$DIR"
}

wait_for() { # wait_for SECONDS WHAT CMD...
    local secs="$1" what="$2"; shift 2
    local end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || die "$what did not come up in ${secs}s"
        sleep 0.2
    done
}

up() {
    local n_hosts=3
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --hosts) n_hosts="$2"; shift 2 ;;
            *) die "unknown argument $1" ;;
        esac
    done
    ((n_hosts >= 2 && n_hosts <= 9)) || die "--hosts must be 2..9"
    [[ $EUID -eq 0 ]] || die "needs root (network namespaces)"
    for b in "$ATEOM" "$ATE"; do [[ -x "$b" ]] || die "$b missing: cargo build -p ateom -p ate"; done
    command -v redis-server >/dev/null || die "redis-server missing: apt install redis-server"
    [[ -x /usr/bin/runsc ]] || die "runsc missing: apt install runsc"
    [[ ! -d "$DIR" ]] || die "$DIR exists: scripts/cluster.sh down first"
    mkdir -p "$DIR"
    echo "$n_hosts" >"$DIR/hosts"
    CLEAN_ON_DIE=1
    trap 'log "up failed; cleaning up"; down' ERR

    log "namespaces and the bridge"
    ip netns add "$P-br"
    in_ns br ip link add br0 type bridge
    in_ns br ip link set br0 up
    local names=(svc) n
    for n in $(seq 1 "$n_hosts"); do names+=("h$n"); done
    for h in "${names[@]}"; do
        local addr
        if [[ $h == svc ]]; then addr="$NET.10"; else addr="$NET.${h#h}"; fi
        ip netns add "$P-$h"
        ip link add "v-$h" netns "$P-$h" type veth peer name "b-$h" netns "$P-br"
        in_ns br ip link set "b-$h" master br0 up
        in_ns "$h" ip addr add "$addr/24" dev "v-$h"
        in_ns "$h" ip link set "v-$h" up
        in_ns "$h" ip link set lo up
    done

    log "services: redis and s3s-fs on $NET.10"
    in_ns svc redis-server --bind "$NET.10" --port 6379 --save '' --appendonly no --protected-mode no \
        --daemonize yes --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log"
    local s3out
    s3out="$(in_ns svc "$root/scripts/s3-server.sh" start --host "$NET.10" --port 9000 --data "$DIR/s3" \
        --access-key "$AK" --secret-key "$SK" --bucket ate)"
    echo "$s3out" >"$DIR/s3.env"

    # Workers push and pull snapshots there; ate reads the indexes (provenance) for placement.
    s3env=(AWS_ENDPOINT_URL="http://$NET.10:9000" AWS_ACCESS_KEY_ID="$AK" AWS_SECRET_ACCESS_KEY="$SK"
        AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true)

    log "certificates (ate certs)"
    "$ATE" certs init --dir "$DIR/certs" >/dev/null
    for n in $(seq 1 "$n_hosts"); do
        "$ATE" certs issue --dir "$DIR/certs" --name "h$n" --san "$NET.$n" >/dev/null
    done
    "$ATE" certs issue --dir "$DIR/certs" --name ate --client >/dev/null

    log "image"
    if [[ -z "${ATEOM_COUNTER_BIN:-}" ]]; then
        ATEOM_COUNTER_BIN="$("$root/scripts/build-counter.sh" 2>/dev/null | tail -n1)"
        export ATEOM_COUNTER_BIN
    fi
    "$ATEOM" image pack-counter --out "$DIR/image" >/dev/null

    log "workers: one ateom per host, gRPC and TLS front over mutual TLS"
    for n in $(seq 1 "$n_hosts"); do
        local d="$DIR/h$n"
        mkdir -p "$d/state"
        in_ns "h$n" env "${s3env[@]}" nohup "$ATEOM" serve --state-dir "$d/state" --socket "$d/ateom.sock" --host-id "h$n" \
            --listen-tcp "$NET.$n:7443" --forward-tls "$NET.$n:7444" \
            --tls-cert "$DIR/certs/h$n.crt" --tls-key "$DIR/certs/h$n.key" --tls-ca "$DIR/certs/ca.crt" \
            >"$d/worker.log" 2>&1 &
        # The instance id ateom names its sandboxes' namespaces with (see ate::cluster::instance_id).
        python3 -c 'import hashlib,os,sys; print(hashlib.sha256(os.path.realpath(sys.argv[1]).encode()).hexdigest()[:8])' \
            "$d/state" >"$d/instance"
    done
    for n in $(seq 1 "$n_hosts"); do wait_for 60 "worker h$n" test -S "$DIR/h$n/ateom.sock"; done

    log "control plane: ate replicas on h1 and h2, one Redis"
    local r
    for r in 1 2; do
        in_ns "h$r" env "${s3env[@]}" nohup "$ATE" --data-dir "$DIR/ate-data" serve --redis "redis://$NET.10:6379" \
            --replica-id "r$r" --router "$NET.$r:8080" --api "$NET.$r:7070" --metrics "$NET.$r:9090" \
            --host-loss-grace 10s --local-wait 2s \
            >"$DIR/ate-r$r.log" 2>&1 &
        wait_for 60 "ate replica r$r" in_ns "h$r" "$ATE" --data-dir "$DIR/ate-data" --api "http://$NET.$r:7070" status
        # The replica's own PID (nsenter runs it as a child).
        pgrep -f -- "--replica-id r$r --router" >"$DIR/ate-r$r.pid"
    done

    log "resources: the pool of $n_hosts hosts and a counter template (durability: both)"
    {
        printf 'apiVersion: ate.dev/v1\nkind: WorkerPool\nmetadata: { name: cluster }\nspec:\n  backend: gvisor\n'
        printf '  tls: { ca: "%s", cert: "%s", key: "%s" }\n  workers:\n' \
            "$DIR/certs/ca.crt" "$DIR/certs/ate.crt" "$DIR/certs/ate.key"
        for n in $(seq 1 "$n_hosts"); do
            printf '    - { name: w%s, address: "https://%s:7443", forward: "%s:7444" }\n' "$n" "$NET.$n" "$NET.$n"
        done
        printf -- '---\napiVersion: ate.dev/v1\nkind: ActorTemplate\nmetadata: { name: counter }\nspec:\n  pool: cluster\n'
        printf '  containers:\n    - name: counter\n      image: "oci-layout:%s:latest"\n' "$DIR/image"
        printf '      readyz: { httpGet: { path: /readyz, port: 8080 } }\n  resources: { cpu: "1", memory: 256Mi }\n'
        printf '  snapshot: { location: "s3://ate/counter", durability: both }\n'
    } >"$DIR/resources.yaml"
    cli 1 apply -f "$DIR/resources.yaml" >/dev/null
    local end=$((SECONDS + 300))
    until cli 1 get templates | grep -q READY; do
        ((SECONDS < end)) || die "the golden snapshot was not built in 300s"
        sleep 1
    done
    trap - ERR
    CLEAN_ON_DIE=
    log "up: $n_hosts worker hosts, services on $NET.10, replicas r1 ($NET.1) and r2 ($NET.2); $DIR"
}

cli() { local r="$1"; shift; in_ns "h$r" "$ATE" --data-dir "$DIR/ate-data" --api "http://$NET.$r:7070" "$@"; }

demo() {
    local json=false
    [[ "${1:-}" == "--json" ]] && json=true
    [[ -f "$DIR/hosts" ]] || die "no cluster: scripts/cluster.sh up first"
    local n_hosts
    n_hosts="$(hosts)"
    local lost="h$n_hosts"
    # The driver runs on the services host (it reaches every router); it calls back into this
    # script for what needs another namespace (the CLI, killing a host or a replica).
    in_ns svc python3 - "$DIR" "$NET" "$n_hosts" "$lost" "$json" "$0" <<'EOF'
import http.client, json, os, subprocess, sys, time

d, net, n_hosts, lost, as_json, script = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5] == "true", sys.argv[6]
routers = {1: f"{net}.1", 2: f"{net}.2"}
N = 30
requests = continuity_errors = failed = 0
last = {}
log = lambda m: print(f"\033[1m[cluster]\033[0m {m}", file=sys.stderr, flush=True)

def cli(r, *args):
    out = subprocess.run([script, "_cli", str(r), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"ate {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout

def get(r, actor, timeout=120):
    """GET / of actor through replica r's router: (status, memory count or None, ms)."""
    global requests
    requests += 1
    t = time.monotonic()
    try:
        c = http.client.HTTPConnection(routers[r], 8080, timeout=timeout)
        c.request("GET", "/", headers={"Host": f"{actor}.actors.local", "Connection": "close"})
        resp = c.getresponse()
        body = resp.read().decode(errors="replace")
        ms = (time.monotonic() - t) * 1000
        if resp.status != 200:
            return resp.status, None, ms
        return 200, json.loads(body).get("memory_count"), ms
    except Exception as e:
        return 0, None, (time.monotonic() - t) * 1000

def hit(r, actor):
    global continuity_errors, failed
    s, mem, ms = get(r, actor)
    if s != 200:
        failed += 1
        return False, ms
    want = last.get(actor, 0) + 1
    if mem is None or mem != want:
        continuity_errors += 1
        log(f"continuity: {actor} answered {mem}, expected {want}")
    last[actor] = mem if mem is not None else want
    return True, ms

def actors():
    return {a["name"]: a for a in json.loads(cli(1, "get", "actors", "-o", "json"))}

def workers():
    return {w["name"]: w for w in json.loads(cli(1, "get", "workers", "-o", "json"))}

names = [f"c{i:02}" for i in range(N)]
docs = "".join(f"---\nkind: Actor\nmetadata: {{ name: {a} }}\nspec: {{ template: counter }}\n" for a in names)
with open(f"{d}/actors.yaml", "w") as f:
    f.write(docs)
cli(1, "apply", "-f", f"{d}/actors.yaml")

log(f"{N} actors, two requests each, alternating replicas")
same, cross = [], []
ws = workers()
for i, a in enumerate(names):
    for k in range(2):
        r = 1 + (i + k) % 2
        ok, ms = hit(r, a)
        # Only requests that found the actor running (no resume) compare the data path.
        if ok and k == 1:
            w = actors()[a].get("worker")
            host = (ws.get(w) or {}).get("host_id")
            (same if host == f"h{r}" else cross).append(ms)

# A partition: the lost-to-be host's link goes down (its processes keep running), then up
# again, within --host-loss-grace: its running actor is unavailable meanwhile, nothing moves,
# and afterwards it continues where it was; no actor ever runs on two workers.
part_worker = f"w{lost[1:]}"
st, ws = actors(), workers()
cut_off = [a for a in names if st[a]["state"] == "RUNNING" and st[a].get("worker") == part_worker]
log(f"partition: {lost}'s link down ({len(cut_off)} running actor(s) there), then up")
subprocess.run([script, "_link", lost, "down"], check=True)
end = time.monotonic() + 30
while workers()[part_worker]["healthy"] and time.monotonic() < end:
    time.sleep(0.2)
partition_unavailable = 0
for a in cut_off:
    s_, _, _ = get(1, a, timeout=30)
    partition_unavailable += s_ != 200
subprocess.run([script, "_link", lost, "up"], check=True)
end = time.monotonic() + 60
while not workers()[part_worker]["healthy"] and time.monotonic() < end:
    time.sleep(0.2)
for a in cut_off:
    hit(2, a)
def runs_twice():
    on = {}
    for w in workers().values():
        if w.get("running"):
            on.setdefault(w["running"].rsplit("/", 1)[-1], []).append(w["name"])
    return sum(1 for v in on.values() if len(v) > 1)
partition_runs_twice = runs_twice()

log("pausing every actor (durability both: copied to S3 in the background)")
for a in names:
    cli(1, "pause", "actor", a)
end = time.monotonic() + 300
while True:
    st = actors()
    pending = [a for a in names if st[a]["state"] != "SUSPENDED"]
    if not pending:
        break
    if time.monotonic() > end:
        log(f"copies not landed after 300 s: {pending}")
        break
    time.sleep(1)
st = actors()
lost_worker = f"w{lost[1:]}"
on_lost = [a for a in names if (st[a].get("local") or {}).get("worker") == lost_worker or st[a].get("worker") == lost_worker]

log(f"removing host {lost} entirely ({len(on_lost)} actors' newest state is there)")
subprocess.run([script, "_kill_host", lost], check=True)
t_lost = time.monotonic()
recovery = []
recovered = 0
all_back_ms = None
for i, a in enumerate(names):
    ok, ms = hit(1 + i % 2, a)
    if a in on_lost and ok:
        # What its client saw: the first request after the loss, from sent to answered.
        recovered += 1
        recovery.append(ms)
        all_back_ms = round((time.monotonic() - t_lost) * 1000)

log("killing the leader replica")
status = json.loads(cli(1, "status", "-o", "json"))
leader = (status.get("leader") or {}).get("holder", "r1")
survivor = 2 if leader == "r1" else 1
subprocess.run([script, "_kill_replica", leader[1:]], check=True)
t_kill = time.monotonic()
failover_ms = None
while time.monotonic() - t_kill < 60:
    try:
        s = json.loads(cli(survivor, "status", "-o", "json"))
        if s.get("leading"):
            failover_ms = round((time.monotonic() - t_kill) * 1000)
            break
    except Exception:
        pass
    time.sleep(0.1)
for a in names:
    hit(survivor, a)

def p(xs, q):
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else None

out = {
    "hosts": n_hosts,
    "replicas": 2,
    "actors": N,
    "requests": requests,
    "continuity_errors": continuity_errors,
    "actors_on_lost_host": len(on_lost),
    "actors_recovered": recovered,
    "recovery_p95_ms": p(recovery, 0.95),
    "lost_host_actors_all_back_after_ms": all_back_ms if recovered == len(on_lost) else None,
    "failed_requests": failed,
    "partition_cut_off_actors": len(cut_off),
    "partition_unavailable_requests": partition_unavailable,
    "partition_runs_twice": partition_runs_twice,
    "leader_failover_ms": failover_ms,
    "cross_host_request_p50_ms": p(cross, 0.5),
    "same_host_request_p50_ms": p(same, 0.5),
}
print(json.dumps(out) if as_json else json.dumps(out, indent=2))
EOF
}

kill_host() { # everything in the host's namespace, and the namespace
    local h="$1"
    for pid in $(ip netns pids "$P-$h" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
    local n="${h#h}"
    for pid in $(pgrep -f -- "--root=$DIR/h$n/state/runsc" || true); do kill -9 "$pid" 2>/dev/null || true; done
    ip netns delete "$P-$h"
}

case "${1:-}" in
    up) shift; up "$@" ;;
    demo) shift; demo "$@" ;;
    down) down; log "down" ;;
    _cli) shift; cli "$@" ;;
    _kill_host) kill_host "$2" ;;
    _link) in_ns "$2" ip link set "v-$2" "$3" ;;
    _kill_replica) kill -9 "$(cat "$DIR/ate-r$2.pid")" ;;
    *) sed -n '2,25p' "$0"; exit 2 ;;
esac
