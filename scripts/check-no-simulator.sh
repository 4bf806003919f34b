#!/usr/bin/env bash
# Shows that a built agent binary carries no simulator code: neither the simulators'
# source paths (which panic locations and debug info would name) nor their symbols.
#   cargo build --release --bin spot-guard && bash scripts/check-no-simulator.sh target/release/spot-guard
#   bash scripts/build-static.sh && bash scripts/check-no-simulator.sh target/image/spot-guard
set -euo pipefail
binary="${1:-target/release/spot-guard}"
[ -f "${binary}" ] || { echo "check-no-simulator: ${binary} does not exist; build it first" >&2; exit 2; }
found=$(grep -a -o -E 'src/sim/[a-z_/]+\.rs|spot_guard::sim::[A-Za-z_:]+|spot_guard\.\.sim\.\.|FakeKube|AsgSim|ImdsSim' "${binary}" | sort -u || true)
if [ -n "${found}" ]; then
    echo "check-no-simulator: ${binary} contains simulator code:" >&2
    echo "${found}" | head -20 >&2
    exit 1
fi
echo "check-no-simulator: ${binary} ($(du -h "${binary}" | cut -f1)) contains no simulator code"
