#!/usr/bin/env bash
# Builds `ateom-init`, the PID 1 of ateom's microVM guests, as a fully static binary and
# prints its absolute path as the last stdout line. It goes to /.ateom/init in guest root
# disks (crates/ateom-microvm/src/guest_image.rs). See scripts/build-static.sh for how.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/build-static.sh" ateom-init ateom-init init-static
