#!/usr/bin/env bash
# Creates target/moto-venv with a pinned moto server, used by tests/moto.rs.
# Idempotent: does nothing when target/moto-venv/bin/moto_server already exists.
set -euo pipefail

# Pinned: 5.2.5 is the version checked against aws-sdk-autoscaling (ENGINEERING-NOTES).
MOTO_VERSION="5.2.5"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/target/moto-venv"

if [[ -x "${venv}/bin/moto_server" ]]; then
    exit 0
fi

echo "moto-venv: installing moto[server]==${MOTO_VERSION} into ${venv}" >&2
# A half-built venv from an interrupted run would otherwise be reused.
rm -rf "${venv}"
mkdir -p "$(dirname "${venv}")"
if ! python3 -m venv "${venv}"; then
    echo "moto-venv: 'python3 -m venv' failed; install python3-venv" >&2
    exit 1
fi
if ! "${venv}/bin/pip" install --quiet --disable-pip-version-check "moto[server]==${MOTO_VERSION}"; then
    echo "moto-venv: pip install of moto[server]==${MOTO_VERSION} failed" >&2
    rm -rf "${venv}"
    exit 1
fi
if [[ ! -x "${venv}/bin/moto_server" ]]; then
    echo "moto-venv: ${venv}/bin/moto_server missing after install" >&2
    exit 1
fi
echo "moto-venv: ready (${venv}/bin/moto_server)" >&2
