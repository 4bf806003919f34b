#!/usr/bin/env bash
# Creates target/cel-venv with cel-python, a CEL evaluator from PyPI: tests/admission_policy.rs
# evaluates the chart's ValidatingAdmissionPolicy expressions with it (scripts/cel_eval.py)
# against allowed and forbidden requests. Idempotent.
set -euo pipefail

CEL_PYTHON_VERSION="0.5.0"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${repo_root}/target/cel-venv"

if [[ -x "${venv}/bin/python" ]] && "${venv}/bin/python" -c "import celpy" 2>/dev/null; then
    exit 0
fi

echo "cel-venv: installing cel-python==${CEL_PYTHON_VERSION} into ${venv}" >&2
rm -rf "${venv}"
mkdir -p "$(dirname "${venv}")"
python3 -m venv "${venv}"
if ! "${venv}/bin/pip" install --quiet --disable-pip-version-check "cel-python==${CEL_PYTHON_VERSION}"; then
    echo "cel-venv: pip install of cel-python==${CEL_PYTHON_VERSION} failed" >&2
    rm -rf "${venv}"
    exit 1
fi
