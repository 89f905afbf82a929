#!/usr/bin/env bash
# The hostile-input suite: everything an attacker controls, thrown at the real parts.
#
#   scripts/security-suite.sh [--json]
#
# Runs these groups of cases (real processes: ateom workers with runsc, the ate control plane,
# the object store, the image unpacker):
#   worker      crafted gRPC requests, crafted local snapshots, a sandbox probing the host's
#               loopback services (crates/ateom/tests/hostile.rs)
#   control     requests without / with wrong / with read-only credentials on every route,
#               crafted YAML, oversized bodies, wrong content types, slowloris, crafted Host
#               headers, fake workers (crates/ate/tests/hostile.rs)
#   image       crafted OCI layers: setuid binaries, ../ and absolute paths, symlink-then-write,
#               hard links out, devices, whiteout tricks, gzip/zstd bombs, entry counts, lying
#               digests; private caches (crates/ateom-image/tests/{hostile,private}.rs)
#   store       crafted indexes and chunks: fuzzed decoder, forged zero chunks and digests,
#               oversized objects, symlinks in a file store, LATEST rollback, unsigned and
#               mis-signed snapshots (crates/ateom-store/tests/{index_decoder,verify,bounds,signed}.rs)
#   limits      a workload past its memory limit; signed snapshots end to end; a console
#               client that never reads
#   certs       `ate certs`: names leaving the directory, hostile SANs, a symbolic link where a
#               key goes, a CA key of another CA, garbage as the CA (crates/ate/src/certs.rs)
#   kube        crafted pool files for `ate operator --dry-run`, crafted manifests, worker
#               pods with crafted labels and addresses (crates/ate-kube/tests/hostile.rs)
# and prints one JSON object (with --json) or a table and the same summary:
#   cases, passed, failed, escapes, unauthenticated_accepted, crashes, elapsed_s, results[]
# `escapes` counts a file, process or request that reached what it should not;
# `unauthenticated_accepted` a request without valid credentials that was served; `crashes` a
# panic or abort of a daemon. Exit status 1 when any case failed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
json=false
[[ "${1:-}" == "--json" ]] && json=true

log() { printf '\033[1m[security]\033[0m %s\n' "$*" >&2; }
if [[ -z "${ATEOM_COUNTER_BIN:-}" ]]; then
    ATEOM_COUNTER_BIN="$(scripts/build-counter.sh 2>/dev/null | tail -n1)"
    export ATEOM_COUNTER_BIN
fi

out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT
start=$SECONDS

# The test executables, built once for the whole workspace (after `cargo test --workspace` this
# builds nothing): a `cargo test -p PKG` per group would resolve features for that package
# alone and rebuild shared dependencies (object_store, reqwest, ...) several times over.
log "test executables (cargo test --workspace --no-run)"
cargo test --locked --workspace --no-run --message-format=json 2>"$out_dir/build.err" | python3 -c '
import json, os, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    # package_id: path+file:///.../crates/<dir>#[<name>@]<version>
    path, _, rest = m["package_id"].partition("#")
    package = rest.split("@")[0] if "@" in rest else os.path.basename(path)
    kind = "lib" if "lib" in m["target"]["kind"] else m["target"]["kind"][0]
    print(package, kind + ":" + m["target"]["name"], os.path.dirname(m["manifest_path"]), m["executable"], sep="\t")
' >"$out_dir/executables.tsv" || { log "building the test executables failed:"; tail -n 30 "$out_dir/build.err" >&2; exit 2; }

# group | package | test targets (kind:name; lib = its unit tests) | filter | what a failed
# plain test counts as (escape, auth, crash, none)
groups=(
    "worker|ateom|test:hostile||escape"
    "control|ate|test:hostile||auth"
    "image|ateom-image|test:hostile test:private||escape"
    "store|ateom-store|test:index_decoder test:verify test:bounds test:signed||escape"
    "limits|ateom|test:gvisor|a_workload_past_its_memory_limit_is_contained|escape"
    "signed|ateom|test:durable|only_snapshots_signed_with_the_workers_key_are_restored|escape"
    "console|ateom-microvm|lib|console|crash"
    "wire|ateom-grpc|lib||crash"
    "certs|ate|lib|certs::|escape"
    "kube|ate-kube|test:hostile||crash"
)
for g in "${groups[@]}"; do
    IFS='|' read -r name package targets filter kind <<<"$g"
    log "$name: $package $targets${filter:+ (filter $filter)}"
    : >"$out_dir/$name.log"
    for t in $targets; do
        [[ $t == lib ]] && t="lib:${package//-/_}"
        row="$(awk -F'\t' -v p="$package" -v t="$t" '$1 == p && $2 == t' "$out_dir/executables.tsv" | head -n1)"
        if [[ -z "$row" ]]; then
            # Reported as skipped by the summary, not hidden.
            echo "no test target named $t in package $package" >>"$out_dir/$name.log"
            continue
        fi
        IFS=$'\t' read -r _ _ dir exe <<<"$row"
        # Run as `cargo test` would: from the package's directory, with its manifest dir set.
        # shellcheck disable=SC2086
        if ! (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe" $filter --nocapture --test-threads=2) >>"$out_dir/$name.log" 2>&1; then
            log "$name: some cases failed in $t (log kept in the results)"
        fi
    done
    echo "$kind" >"$out_dir/$name.kind"
done

python3 - "$out_dir" "$json" "$((SECONDS - start))" <<'EOF'
import json, os, re, sys
out_dir, as_json, elapsed = sys.argv[1], sys.argv[2] == "true", int(sys.argv[3])
results = []
case_re = re.compile(r"^CASE (\S+) (passed|failed) escapes=(\d+) unauthenticated_accepted=(\d+) crashes=(\d+) ?(.*)$")
test_re = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)")
for fname in sorted(os.listdir(out_dir)):
    if not fname.endswith(".log"):
        continue
    group = fname[:-4]
    kind = open(os.path.join(out_dir, group + ".kind")).read().strip()
    text = open(os.path.join(out_dir, fname), errors="replace").read()
    lines = text.splitlines()
    cases = [case_re.match(l) for l in lines]
    cases = [m for m in cases if m]
    for m in cases:
        results.append({"name": m[1], "group": group, "outcome": m[2], "escapes": int(m[3]),
                        "unauthenticated_accepted": int(m[4]), "crashes": int(m[5]), "detail": m[6]})
    # Tests that printed no CASE lines are cases themselves.
    for l in lines:
        m = test_re.match(l)
        if not m or m[2] == "ignored":
            continue
        if cases and any(True for _ in cases):
            # A binary that reports CASE lines: its tests are already counted, except a test
            # that failed before printing any (a panic): count that as one failed case.
            if m[2] == "FAILED":
                results.append({"name": m[1], "group": group, "outcome": "failed", "escapes": 0,
                                "unauthenticated_accepted": 0, "crashes": 0,
                                "detail": "the test failed (see its assertions)"})
            continue
        ok = m[2] == "ok"
        results.append({"name": m[1], "group": group, "outcome": "passed" if ok else "failed",
                        "escapes": int(not ok and kind == "escape"),
                        "unauthenticated_accepted": int(not ok and kind == "auth"),
                        "crashes": int(not ok and kind == "crash"),
                        "detail": "" if ok else "failed"})
    if not cases and not any(test_re.match(l) for l in lines):
        tail = " | ".join(l for l in lines[-5:])
        missing = "no test target named" in text or "no test target" in text or "package ID specification" in text
        results.append({"name": group + "_suite", "group": group,
                        "outcome": "skipped" if missing else "failed",
                        "escapes": 0, "unauthenticated_accepted": 0, "crashes": 0,
                        "detail": ("SKIPPED: this checkout has no such test target: " if missing else "did not run: ") + tail[-400:]})
summary = {
    "cases": len(results),
    "passed": sum(r["outcome"] == "passed" for r in results),
    "failed": sum(r["outcome"] == "failed" for r in results),
    "skipped": sum(r["outcome"] == "skipped" for r in results),
    "escapes": sum(r["escapes"] for r in results),
    "unauthenticated_accepted": sum(r["unauthenticated_accepted"] for r in results),
    "crashes": sum(r["crashes"] for r in results),
    "elapsed_s": elapsed,
    "results": results,
}
if as_json:
    print(json.dumps(summary))
else:
    for r in results:
        print(f"{r['outcome']:<8} {r['group']:<8} {r['name']:<60} {r['detail'][:100]}")
    print({k: v for k, v in summary.items() if k != "results"})
sys.exit(1 if summary["failed"] else 0)
EOF
