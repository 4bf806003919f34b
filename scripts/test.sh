#!/usr/bin/env bash
# The one command that runs every check of the project on a fresh clone:
# it installs what the tests need (Python venvs with moto and with Helm 4), then formats,
# lints and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/moto-venv.sh
bash scripts/helm-venv.sh
bash scripts/supply-chain.sh
bash scripts/cel-venv.sh
bash scripts/prometheus.sh
bash scripts/dashboard-venv.sh
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
