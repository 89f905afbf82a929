#!/usr/bin/env bash
# Builds the `counter` demo (demos/counter) as a fully static binary and prints its absolute
# path as the last stdout line. See scripts/build-static.sh for how.
set -euo pipefail
exec "$(dirname "${BASH_SOURCE[0]}")/build-static.sh" counter counter counter-static
