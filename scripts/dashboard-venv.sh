#!/usr/bin/env bash
# Creates target/dashboard-venv with grafana-foundation-sdk (Grafana's own library of
# dashboard types and builders, from PyPI). scripts/dashboard.py uses it to generate the
# chart's dashboard; tests/dashboard.rs checks the committed JSON is its output.
# Idempotent: does nothing when the venv already imports the SDK.
set -euo pipefail

# Pinned: the builders for Grafana 10.1's dashboard schema.
SDK_VERSION="1769699998!10.1.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/target/dashboard-venv"

if [[ -x "${venv}/bin/python" ]] && "${venv}/bin/python" -c "import grafana_foundation_sdk" 2>/dev/null; then
    exit 0
fi

echo "dashboard-venv: installing grafana-foundation-sdk==${SDK_VERSION} into ${venv}" >&2
# A half-built venv from an interrupted run would otherwise be reused.
rm -rf "${venv}"
mkdir -p "$(dirname "${venv}")"
if ! python3 -m venv "${venv}"; then
    echo "dashboard-venv: 'python3 -m venv' failed; install python3-venv" >&2
    exit 1
fi
if ! "${venv}/bin/pip" install --quiet --disable-pip-version-check "grafana-foundation-sdk==${SDK_VERSION}"; then
    echo "dashboard-venv: pip install of grafana-foundation-sdk==${SDK_VERSION} failed" >&2
    rm -rf "${venv}"
    exit 1
fi
