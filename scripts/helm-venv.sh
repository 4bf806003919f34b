#!/usr/bin/env bash
# Creates target/helm-venv with helm-python-sdk, a PyPI package that bundles Helm 4 as
# a library (no helm binary, works offline once installed). scripts/helm.py drives it;
# tests/chart.rs renders and lints charts/spot-guard through it.
# Idempotent: does nothing when the venv already imports helm_python.
set -euo pipefail

# Pinned: 0.2.2 bundles helm-c-sdk 0.2.1 over the Helm v4.2.3 Go SDK.
HELM_SDK_VERSION="0.2.2"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/target/helm-venv"

if [[ -x "${venv}/bin/python" ]] && "${venv}/bin/python" -c "import helm_python" 2>/dev/null; then
    exit 0
fi

echo "helm-venv: installing helm-python-sdk==${HELM_SDK_VERSION} into ${venv}" >&2
# A half-built venv from an interrupted run would otherwise be reused.
rm -rf "${venv}"
mkdir -p "$(dirname "${venv}")"
if ! python3 -m venv "${venv}"; then
    echo "helm-venv: 'python3 -m venv' failed; install python3-venv" >&2
    exit 1
fi
if ! "${venv}/bin/pip" install --quiet --disable-pip-version-check "helm-python-sdk==${HELM_SDK_VERSION}"; then
    echo "helm-venv: pip install of helm-python-sdk==${HELM_SDK_VERSION} failed" >&2
    rm -rf "${venv}"
    exit 1
fi
if ! "${venv}/bin/python" -c "import helm_python" 2>/dev/null; then
    echo "helm-venv: ${venv} cannot import helm_python after install" >&2
    exit 1
fi
echo "helm-venv: ready ($("${venv}/bin/python" -c 'import helm_python as h; print("helm", h.helm_sdk_version())'))" >&2
