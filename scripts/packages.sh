# Debian packages for scripts/setup.sh: install what is missing, leave what the machine has
# alone (source it; it defines functions only).
#
#   ensure_packages SPEC...     SPEC is NAME, NAME>=MIN, NAME<<MAX, NAME>=MIN<<MAX, optionally
#                               followed by @COMMAND (a command that, found on PATH outside
#                               dpkg, stands in for the package), e.g. "e2fsprogs>=1.43@mkfs.ext4"
#
# For each package:
#   * installed (dpkg says "install ok installed"): its version is checked against MIN/MAX
#     (dpkg --compare-versions). Out of range: say so, print the exact command that would fix
#     it, and stop (exit 1). An installed package is never upgraded, downgraded or removed.
#   * not installed, but COMMAND is on PATH (a binary the machine's owner put there): noted and
#     left alone.
#   * missing: collected, then installed in one apt-get call, under these guarantees:
#       1. apt-get is only called when something is missing, and only the missing packages are
#          named (so --no-upgrade is moot for them and apt has no reason to touch others except
#          as dependencies);
#       2. first a simulation (apt-get -s) of exactly the same command: every line that would
#          upgrade or downgrade an installed package ("Inst NAME [OLD] (NEW ...)") or remove one
#          ("Remv NAME") stops setup before anything changes, naming those packages;
#       3. the real call runs with --no-remove (apt aborts if anything would be removed) and
#          without --allow-downgrades / --allow-remove-essential / --allow-change-held-packages
#          (with -y, apt-get aborts rather than downgrade, remove essentials or change holds);
#       4. afterwards the versions of every package that was installed before are compared with
#          what dpkg says now; any difference is reported loudly (exit 1).
#
# Environment: ATEOM_SETUP_ACCEPT="NAME ..." accepts those packages at whatever version is
# installed (for example a newer QEMU with --qemu-unconfined); ATEOM_SETUP_DRY_RUN=1 reports
# what would be installed and installs nothing.

pkg_log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# installed_version NAME: the installed version, or nothing (status 1) if not installed.
installed_version() {
    local out
    out="$(dpkg-query -W -f='${Status}\t${Version}' "$1" 2>/dev/null)" || return 1
    [[ "${out%%$'\t'*}" == "install ok installed" ]] || return 1
    printf '%s\n' "${out#*$'\t'}"
}

# best_candidate NAME MIN MAX: the highest version apt knows for NAME within [MIN, MAX).
best_candidate() {
    local name="$1" min="$2" max="$3" v
    while read -r v; do
        [[ -n "$min" ]] && ! dpkg --compare-versions "$v" ge "$min" && continue
        [[ -n "$max" ]] && ! dpkg --compare-versions "$v" lt "$max" && continue
        echo "$v"
        return 0
    done < <(apt-cache madison "$name" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' |
        sort -u | sort -r -V)
    return 1
}

# fix_command NAME MIN MAX INSTALLED: the command that would bring NAME into range.
fix_command() {
    local name="$1" min="$2" max="$3" have="$4" want pkgs p
    if ! want="$(best_candidate "$name" "$min" "$max")"; then
        echo "(no version of $name in this machine's apt sources fits${min:+ >= $min}${max:+ << $max};" \
            "add a source that has one, e.g. Debian 12's)"
        return
    fi
    if [[ -n "$min" ]] && dpkg --compare-versions "$have" lt "$min"; then
        echo "apt-get install --only-upgrade $name=$want"
        return
    fi
    # A downgrade: the packages built from the same source must move together.
    pkgs="$name=$want"
    for p in $(dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${source:Package}\n' 2>/dev/null |
        awk -v s="$(dpkg-query -W -f='${source:Package}' "$name")" -v n="$name" \
            '$1 == "ii" && $3 == s && $2 != n { print $2 }'); do
        p="${p%%:*}"
        if apt-cache madison "$p" 2>/dev/null | awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF "$want"; then
            pkgs+=" $p=$want"
        fi
    done
    echo "apt-get install --allow-downgrades $pkgs"
}

ensure_packages() {
    local spec name cmd range min max have missing=() bad=0 p
    for spec in "$@"; do
        cmd=""
        [[ "$spec" == *@* ]] && { cmd="${spec#*@}"; spec="${spec%%@*}"; }
        name="${spec%%[<>]*}"
        range="${spec#"$name"}"
        min="" max=""
        [[ "$range" =~ \>=([^\<]+) ]] && min="${BASH_REMATCH[1]}"
        [[ "$range" =~ \<\<(.+)$ ]] && max="${BASH_REMATCH[1]}"
        if have="$(installed_version "$name")"; then
            if [[ " ${ATEOM_SETUP_ACCEPT:-} " == *" $name "* ]]; then
                continue
            fi
            if [[ -n "$min" ]] && ! dpkg --compare-versions "$have" ge "$min"; then
                pkg_log "ERROR: $name $have is installed; ateom needs >= $min. To fix it:"
                pkg_log "    $(fix_command "$name" "$min" "$max" "$have")"
                bad=1
            elif [[ -n "$max" ]] && ! dpkg --compare-versions "$have" lt "$max"; then
                pkg_log "ERROR: $name $have is installed; ateom supports only versions before $max$(
                    pkg_reason "$name")."
                pkg_log "    This script does not downgrade packages. To fix it:"
                pkg_log "    $(fix_command "$name" "$min" "$max" "$have")"
                pkg_log "    or keep yours: ATEOM_SETUP_ACCEPT=\"$name\" $0 ${ATEOM_SETUP_ARGS:-}"
                bad=1
            fi
            continue
        fi
        if [[ -n "$cmd" ]] && p="$(command -v "$cmd")"; then
            pkg_log "$name is not installed, but $p is there (not from a Debian package): leaving it alone"
            continue
        fi
        missing+=("$name")
    done
    if ((bad)); then
        pkg_log "stopped: nothing was installed or changed"
        return 1
    fi
    if ((${#missing[@]} == 0)); then
        pkg_log "Debian packages present"
        return 0
    fi
    if [[ "${ATEOM_SETUP_DRY_RUN:-0}" == 1 ]]; then
        pkg_log "would install: ${missing[*]} (ATEOM_SETUP_DRY_RUN=1: nothing installed)"
        return 0
    fi
    pkg_log "installing missing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    local args=(install --no-install-recommends --no-remove --no-upgrade)
    local sim touched
    if ! sim="$(apt-get -s "${args[@]}" "${missing[@]}" 2>&1)"; then
        printf '%s\n' "$sim" >&2
        pkg_log "ERROR: apt cannot install ${missing[*]} without removing or changing packages this machine has"
        pkg_log "stopped: nothing was installed or changed"
        return 1
    fi
    touched="$(printf '%s\n' "$sim" | awk '/^Inst [^ ]+ \[/ { print $2 " " $3 } /^Remv / { print $2 " (removed)" }')"
    if [[ -n "$touched" ]]; then
        pkg_log "ERROR: installing ${missing[*]} would change packages this machine already has:"
        printf '%s\n' "$touched" | sed 's/^/    /' >&2
        pkg_log "install them yourself if that is what you want: apt-get install ${missing[*]}"
        pkg_log "stopped: nothing was installed or changed"
        return 1
    fi
    local before after
    before="$(dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${Version}\n' | awk '$1 == "ii" { print $2, $3 }')"
    apt-get -y -qq "${args[@]}" "${missing[@]}" >&2
    after="$(dpkg-query -W -f='${db:Status-Abbrev} ${binary:Package} ${Version}\n' | awk '$1 == "ii" { print $2, $3 }')"
    # Every line of `before` must still be in `after` (new packages only add lines).
    local changed
    changed="$(comm -23 <(sort <<<"$before") <(sort <<<"$after"))"
    if [[ -n "$changed" ]]; then
        pkg_log "ERROR: these installed packages changed although they should not have:"
        printf '%s\n' "$changed" | sed 's/^/    /' >&2
        return 1
    fi
    pkg_log "installed ${missing[*]}; no package the machine had was changed"
}

# Why a package has a maximum version (shown with the error).
pkg_reason() {
    case "$1" in
        qemu-system-x86) echo " (QEMU 9.0 removed -chroot, which ateom's QEMU confinement passes;" \
            "a newer QEMU runs only with ateom serve --qemu-unconfined)" ;;
    esac
}
