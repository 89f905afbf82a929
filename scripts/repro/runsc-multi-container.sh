#!/bin/bash
# Reproduces multi-container checkpoint/restore with a given runsc, outside ateom: a pause
# container (CRI annotation container-type=sandbox) and an app container in one sandbox, each
# the static counter (ports 9090 and 8080), --network=none; reads both counters with busybox
# wget through `runsc exec`, checkpoints the root container, restores both, reads again and
# watches the sandbox for 6 s. Needs root, ATEOM_COUNTER_BIN and busybox-static.
#
#   ATEOM_COUNTER_BIN=... scripts/repro/runsc-multi-container.sh <runsc> [platform]
#
# Seen (issue 11): Debian 12's runsc 0.0~20221219 fails the restore of the root container
# (a panic in host.inode.afterLoad: "failed to set host FD non-blocking: bad file descriptor";
# an earlier variant answered ENOMEM); Debian trixie's 0.0~20240729 restores both, their
# memory continues (app 3 -> 4, pause 1 -> 2) and both still run 6 s later.
set -u
RUNSC=$1; PLAT=${2:-ptrace}
D=${TMPDIR:-/tmp}/ateom-runsc-mc; rm -rf $D; mkdir -p $D; cd $D
R="$RUNSC --root $D/state --network=none --platform=$PLAT --ignore-cgroups"
mk() { # name port type
  mkdir -p $1/rootfs/bin $1/rootfs/tmp $1/rootfs/proc $1/rootfs/dev $1/rootfs/sys
  cp $ATEOM_COUNTER_BIN $1/rootfs/counter; cp /usr/bin/busybox $1/rootfs/bin/busybox
  (cd $1 && $RUNSC spec -- /counter)
  python3 - $1/config.json $2 $3 <<'PY'
import json,sys
p,port,typ=sys.argv[1:]
c=json.load(open(p))
c["process"]["env"]+=["PORT="+port,"COUNTER_DIR=/tmp/c"]
c["process"]["terminal"]=False
c["root"]["readonly"]=False
c["annotations"]={"io.kubernetes.cri.container-type":typ,"io.kubernetes.cri.sandbox-id":"mc-pause"}
json.dump(c,open(p,"w"))
PY
}
mk pause 9090 sandbox; mk app 8080 container
get() { timeout 10 $R exec $1 /bin/busybox wget -qO- http://127.0.0.1:$2/ 2>&1; echo; }
$R create --bundle pause mc-pause && $R start mc-pause || exit 1
$R create --bundle app mc-app && $R start mc-app || exit 1
sleep 1
for i in 1 2 3; do get mc-app 8080; done
get mc-pause 9090
echo "--- checkpoint"
mkdir img; time $R checkpoint --image-path img mc-pause; echo "rc=$?"; ls -la img
$R list
$R delete --force mc-app 2>/dev/null; $R delete --force mc-pause 2>/dev/null
echo "--- restore"
( $R restore --detach --image-path img --bundle pause mc-pause; echo "restore pause rc=$?" ) &
sleep 1
$R restore --detach --image-path img --bundle app mc-app; echo "restore app rc=$?"
wait
$R list
get mc-app 8080
get mc-pause 9090
for s in 1 2 3 4 5 6; do sleep 1; echo "t+$s: $($R list | tail -n +2 | awk '{print $1, $3}' | tr '\n' ' ')"; done
get mc-app 8080
$R kill mc-pause KILL 2>/dev/null; $R delete --force mc-app mc-pause 2>/dev/null
