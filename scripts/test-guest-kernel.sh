#!/usr/bin/env bash
# Proves ateom's guest kernel boots under `qemu-system-x86_64 -M microvm -accel tcg`
# (software emulation: /dev/kvm on our hosts is kvm-pvm and cannot run a stock kernel) with
# its root filesystem on a virtio-mmio block device, and that the guest sees its devices.
#
# Usage: scripts/test-guest-kernel.sh [VMLINUX]
#   VMLINUX defaults to the output of scripts/build-guest-kernel.sh (built/cached on demand).
# Env:   ATEOM_TEST_TIMEOUT  seconds per boot before QEMU is killed (default 120)
#        ATEOM_TEST_CPU      QEMU -cpu model (default max)
#        ATEOM_TEST_SMP      vCPUs (default 1; see "TCG timekeeping" below)
#        ATEOM_TEST_TSC_KHZ  guest TSC frequency for tsc_early_khz= (default: host's, from
#                            /proc/cpuinfo; "none" to leave it out)
#        ATEOM_TEST_NET      tap | hubport | auto (default auto: tap if possible, see Network)
#        ATEOM_TEST_KEEP=1   keep the work directory (rootfs image, console logs)
#
# The rootfs is an ext4 image made WITHOUT loop mounts (`mkfs.ext4 -d`): busybox-static as
# /bin/sh plus an /init script that reports what the guest sees (kernel, root mount, block
# and net devices, /dev/vsock, RNG state, virtio-console), configures eth0 with a link-local
# address over `ip` (netlink), pings the host end, prints the marker line and exits the VM.
#
# Two boots, one per virtio-mmio discovery path:
#   acpi     microvm acpi=on (QEMU's default): devices in the ACPI DSDT; VM ends by `poweroff -f`
#            (ACPI sleep register of microvm's GED).
#   cmdline  microvm acpi=off: devices passed as virtio_mmio.device=<size>@<base>:<irq> on the
#            kernel command line (QEMU appends them itself: auto-kernel-cmdline=on; Firecracker
#            does the same); VM ends by `reboot -f` (reboot=t) + -no-reboot.
#
# Network: no host network is touched. Each QEMU runs inside a fresh network namespace
# (`unshare --net`, gone when QEMU exits) holding a tap device with 169.254.100.1/30; the
# guest gets 169.254.100.2/30 and a fixed MAC, and pings the tap end. Without /dev/net/tun or
# unshare, it falls back to `-netdev hubport` (a virtual hub with nothing else attached: the
# NIC exists, frames go nowhere) and only checks that eth0 exists.
#
# TCG timekeeping: under TCG the guest has no kvm-clock, and microvm has no HPET and no ACPI
# PM timer, so the only TSC reference is the PIT, and the kernel's quick PIT calibration is
# timing-sensitive under emulation: on a loaded host it fails in about half the boots
# ("tsc: Fast TSC calibration failed / Unable to calibrate against PIT / No reference
# (HPET/PMTIMER) available / Marking TSC unstable due to could not calculate TSC khz").
# With acpi=on (a hardware-reduced ACPI platform, where Linux does not use the PIT as tick
# device) that leaves no tick source at all and the boot hangs right after that message;
# with acpi=off it falls back to the PIT tick and the low-resolution jiffies clocksource.
# TCG's guest TSC runs at the host TSC rate, so we pass tsc_early_khz=<host TSC kHz>, which
# skips the calibration: every boot then works and (with 1 vCPU) uses the TSC clocksource;
# with 2+ vCPUs TCG's non-invariant TSC is declared unsynchronised and jiffies is used.
#
# Prints per boot the time from QEMU start to the marker line and to QEMU's exit; on any
# failure prints the console log and exits non-zero.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
timeout_s="${ATEOM_TEST_TIMEOUT:-120}"
smp="${ATEOM_TEST_SMP:-1}"
cpu="${ATEOM_TEST_CPU:-max}"
tsc_khz="${ATEOM_TEST_TSC_KHZ:-$(awk -F: '/^cpu MHz/ { printf "%d", $2 * 1000; exit }' /proc/cpuinfo)}"
marker="ATEOM-GUEST-READY"

log() { echo "test-guest-kernel: $*" >&2; }
die() { log "FAIL: $*"; exit 1; }

for tool in qemu-system-x86_64 mkfs.ext4 timeout; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install qemu-system-x86 e2fsprogs coreutils)"
done
busybox="${ATEOM_TEST_BUSYBOX:-/bin/busybox}"
file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
    die "$busybox is not a static busybox (apt-get install busybox-static)"

if [[ $# -ge 1 ]]; then
    vmlinux="$1"
else
    log "building (or reusing) the guest kernel"
    vmlinux="$("$root/scripts/build-guest-kernel.sh" | tail -n 1)"
fi
[[ -f "$vmlinux" ]] || die "no kernel at '$vmlinux'"
log "kernel: $vmlinux ($(stat -c %s "$vmlinux") bytes)"

work="$(mktemp -d /tmp/ateom-kernel-test.XXXXXX)"
cleanup() {
    if [[ "${ATEOM_TEST_KEEP:-0}" == 1 ]]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# ---- rootfs: busybox + /init, packed by mkfs.ext4 -d (no loop mount, no root needed) -------
rootdir="$work/rootfs"
mkdir -p "$rootdir"/{bin,dev,proc,sys,tmp,etc}
cp "$busybox" "$rootdir/bin/busybox"
for applet in sh mount umount cat ls echo ip ping sleep reboot poweroff grep head tail od tr \
    dmesg uname wc sed cut mkdir; do
    ln -s busybox "$rootdir/bin/$applet"
done
cat >"$rootdir/init" <<'INIT'
#!/bin/sh
# Test PID 1. Kernel command-line words "name=value" it does not know arrive as environment.
export PATH=/bin
say() { echo "ATEOM-GUEST: $*"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
say "uname: $(uname -sr)"
say "uptime-at-init: $(cut -d' ' -f1 /proc/uptime)s"
say "cmdline: $(cat /proc/cmdline)"
say "root: $(grep ' / ' /proc/mounts)"
say "dev-mounted: $(grep ' /dev ' /proc/mounts | cut -d' ' -f1,3)"
say "block: $(ls /sys/block | tr '\n' ' ')"
say "net: $(ls /sys/class/net | tr '\n' ' ')"
say "cpus: $(grep -c ^processor /proc/cpuinfo)"
say "clocksource: $(cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
say "virtio: $(for d in /sys/bus/virtio/devices/*; do echo -n "$(basename $d):$(cat $d/device) "; done)"
[ -c /dev/vsock ] && say "vsock: /dev/vsock present"
say "hwrng: $(cat /sys/class/misc/hw_random/rng_current 2>/dev/null || echo none)"
# /dev/random blocks until the CRNG is initialised: this must return promptly.
say "random: $(head -c 8 /dev/random | od -An -tx1 | tr -d ' \n') entropy_avail=$(cat /proc/sys/kernel/random/entropy_avail)"
say "crng: $(dmesg | grep -m1 'crng init done' || echo 'no crng-init message')"
for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] || continue
    n="$(cat $p/name)"; say "virtio-port: $(basename $p) name=$n"
    [ "$n" = ateom.ctl ] && echo "ATEOM-CTL-HELLO" >"/dev/$(basename $p)"
done
if [ -n "$ateom_ip" ] && [ -e /sys/class/net/eth0 ]; then
    ip link set lo up
    ip link set eth0 up
    ip addr add "$ateom_ip" dev eth0
    say "eth0: $(cat /sys/class/net/eth0/address) $(ip -4 addr show dev eth0 | grep -o 'inet [^ ]*')"
    if ping -c 1 -W 5 "$ateom_peer" >/tmp/ping 2>&1; then
        say "ping $ateom_peer: ok ($(grep -o 'time=[^ ]* ms' /tmp/ping))"
    else
        say "ping $ateom_peer: FAILED: $(cat /tmp/ping)"
    fi
fi
echo "ATEOM-GUEST-READY uptime=$(cut -d' ' -f1 /proc/uptime)s"
sync
case "$ateom_exit" in
    reboot) reboot -f ;;
    *) poweroff -f ;;
esac
sleep 5
say "still alive after $ateom_exit -f"
INIT
chmod 755 "$rootdir/init"
rootfs="$work/rootfs.ext4"
mkfs.ext4 -q -F -L ateom-test -E root_owner=0:0 -d "$rootdir" "$rootfs" 64M ||
    die "mkfs.ext4 -d failed (needs e2fsprogs >= 1.43)"
log "rootfs: $rootfs ($(du -k "$rootfs" | cut -f1) KiB on disk, built with mkfs.ext4 -d)"

# ---- networking backend -----------------------------------------------------------------
net_mode="${ATEOM_TEST_NET:-auto}"
if [[ $net_mode == auto ]]; then
    net_mode=hubport
    if [[ -c /dev/net/tun ]] && command -v unshare >/dev/null && command -v ip >/dev/null &&
        unshare --net true 2>/dev/null; then
        net_mode=tap
    fi
fi
[[ $net_mode == tap || $net_mode == hubport ]] || die "ATEOM_TEST_NET must be tap, hubport or auto"
log "network: $net_mode"

# ---- one boot -------------------------------------------------------------------------------
# boot NAME ACPI(on|off) EXIT(poweroff|reboot)
boot() {
    local name="$1" acpi="$2" exit_how="$3"
    local console="$work/console-$name.log" ctl="$work/ctl-$name.out"
    # pci=off: microvm has no PCI host (CONFIG_PCI is only built in for ACPI's sake); skips the probe.
    local append="console=ttyS0 root=/dev/vda rw rootfstype=ext4 init=/init panic=-1 pci=off ateom_exit=$exit_how"
    # reboot=t: reset by triple fault, which QEMU (-no-reboot) turns into an exit at once. Without
    # ACPI the default order tries the absent i8042 first and the exit takes ~3 s longer under TCG.
    # (Firecracker instead wants reboot=k: it watches the i8042 reset command.)
    [[ $exit_how == reboot ]] && append+=" reboot=t"
    [[ -n "$tsc_khz" && "$tsc_khz" != none ]] && append+=" tsc_early_khz=$tsc_khz"
    local netargs=()
    if [[ $net_mode == tap ]]; then
        append+=" ateom_ip=169.254.100.2/30 ateom_peer=169.254.100.1"
        netargs=(-netdev tap,id=net0,ifname=tap0,script=no,downscript=no)
    else
        netargs=(-netdev hubport,id=net0,hubid=0)
    fi
    local qemu=(qemu-system-x86_64
        -M "microvm,x-option-roms=off,isa-serial=on,rtc=on,acpi=$acpi"
        -accel tcg -cpu "$cpu" -m 256M -smp "$smp"
        -nodefaults -no-user-config -nographic -no-reboot
        -serial stdio
        -kernel "$vmlinux" -append "$append"
        -drive "id=root,file=$rootfs,format=raw,if=none"
        -device virtio-blk-device,drive=root
        "${netargs[@]}"
        -device virtio-net-device,netdev=net0,mac=52:54:00:a7:e0:02
        -object rng-random,id=rng0,filename=/dev/urandom
        -device virtio-rng-device,rng=rng0
        -chardev "file,id=ctl,path=$ctl"
        -device virtio-serial-device
        -device virtserialport,chardev=ctl,name=ateom.ctl
    )
    local runner=()
    if [[ $net_mode == tap ]]; then
        # A private network namespace that disappears with QEMU; the tap lives only in there.
        runner=(unshare --net -- sh -c 'ip link set lo up &&
            ip tuntap add dev tap0 mode tap &&
            ip addr add 169.254.100.1/30 dev tap0 &&
            ip link set tap0 up && exec "$@"' netns-qemu)
    fi
    printf '%q ' "${qemu[@]}" >"$work/cmd-$name"
    log "[$name] $(cat "$work/cmd-$name")"
    : >"$console"
    rm -f "$work/marker-$name"
    local t0 t1 rc
    t0="$(date +%s%N)"
    set +e
    timeout -k 5 "$timeout_s" "${runner[@]}" "${qemu[@]}" </dev/null 2>&1 | while IFS= read -r line; do
        line="${line%$'\r'}"
        printf '%s\n' "$line" >>"$console"
        if [[ "$line" == "$marker"* && ! -e "$work/marker-$name" ]]; then
            date +%s%N >"$work/marker-$name"
        fi
    done
    rc="${PIPESTATUS[0]}"
    set -e
    t1="$(date +%s%N)"
    local failed=""
    [[ $rc == 124 || $rc == 137 ]] && failed+=" QEMU timed out after ${timeout_s}s (killed);"
    [[ $rc != 0 && $rc != 124 && $rc != 137 ]] && failed+=" QEMU exited with status $rc;"
    [[ -e "$work/marker-$name" ]] || failed+=" no marker line '$marker';"
    grep -q 'ATEOM-GUEST: root: /dev/root / ext4 rw' "$console" || failed+=" root is not ext4 rw on /dev/root;"
    grep -q 'ATEOM-GUEST: dev-mounted: devtmpfs devtmpfs' "$console" || failed+=" /dev is not an automounted devtmpfs;"
    grep -q 'ATEOM-GUEST: block: .*vda' "$console" || failed+=" no vda;"
    grep -q 'ATEOM-GUEST: net: .*eth0' "$console" || failed+=" no eth0 in /sys/class/net;"
    grep -q 'ATEOM-GUEST: vsock: /dev/vsock present' "$console" || failed+=" no /dev/vsock;"
    grep -q 'ATEOM-GUEST: hwrng: virtio_rng' "$console" || failed+=" virtio-rng not the current hwrng;"
    grep -q 'ATEOM-GUEST: random: [0-9a-f]\{16\}' "$console" || failed+=" /dev/random read failed;"
    grep -q 'ATEOM-CTL-HELLO' "$ctl" 2>/dev/null || failed+=" nothing arrived on the virtio-console port;"
    if [[ $net_mode == tap ]]; then
        grep -q 'ATEOM-GUEST: ping 169.254.100.1: ok' "$console" || failed+=" guest could not ping the tap end;"
    fi
    if grep -qE 'Kernel panic|still alive after|Call Trace' "$console"; then
        failed+=" kernel panic/oops or the VM did not exit;"
    fi
    if [[ -n "$failed" ]]; then
        echo "----- console log ($name) -----" >&2
        cat "$console" >&2
        echo "----- end of console log -----" >&2
        die "[$name]$failed"
    fi
    local to_marker=$(( ($(cat "$work/marker-$name") - t0) / 1000000 ))
    local to_exit=$(( (t1 - t0) / 1000000 ))
    grep -E '^ATEOM-GUEST|^ATEOM-GUEST-READY' "$console" | sed "s/^/  [$name] /" >&2
    log "[$name] PASS: QEMU start -> marker ${to_marker} ms, QEMU start -> exit ${to_exit} ms" \
        "($(grep -o 'uptime=[0-9.]*s' "$console" | head -1) guest)"
    echo "$name marker_ms=$to_marker exit_ms=$to_exit"
}

boot acpi on poweroff
boot cmdline off reboot
log "all boots passed"
