#!/usr/bin/env bash
# Builds the static (musl) binary with the `ship` profile (Cargo.toml: fat LTO, one
# codegen unit, opt-level "z", panic = "abort", stripped; relative relocations packed,
# unwind tables dropped) and puts it where the
# Dockerfile copies it from: target/image/spot-guard
# Needs the rustup target and musl-gcc (ring compiles C); installs both when
# missing and when it can (rustup, and apt-get as root). Idempotent: cargo rebuilds
# only what changed.
set -euo pipefail

TARGET="x86_64-unknown-linux-musl"
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

if ! rustup target list --installed | grep -qx "${TARGET}"; then
    echo "build-static: adding rustup target ${TARGET}" >&2
    rustup target add "${TARGET}"
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null 2>&1; then
        echo "build-static: installing musl-tools (musl-gcc)" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools
    else
        echo "build-static: musl-gcc not found; install musl-tools (Debian/Ubuntu) or musl-gcc" >&2
        exit 1
    fi
fi

# ring builds C code; point its cc at the musl wrapper.
export CC_x86_64_unknown_linux_musl=musl-gcc
# Two link-time flags for the binary only (`cargo rustc` passes them to the final link, so
# no dependency is rebuilt for them; docs/PERFORMANCE.md has what each saves):
# - RELR packs the static-pie's relative relocations (GNU ld >= 2.38; musl >= 1.2.4, which
#   Rust's musl target ships, applies them at start-up);
# - the linker script discards the unwind tables, which panic = "abort" never reads.
cargo rustc --profile ship --locked --target "${TARGET}" --bin spot-guard -- \
    -C link-arg=-Wl,-z,pack-relative-relocs \
    -C link-arg=-Wl,-T,"${repo_root}/scripts/ship-discard-unwind-tables.ld"

# The profile strips symbols already; the copy keeps cargo's output where cargo expects it
# (CARGO_TARGET_DIR when set, as with a target dir of one's own).
image_binary="target/image/spot-guard"
mkdir -p "$(dirname "${image_binary}")"
cp "${CARGO_TARGET_DIR:-target}/${TARGET}/ship/spot-guard" "${image_binary}"
if command -v file >/dev/null 2>&1; then
    file "${image_binary}" >&2
fi
echo "build-static: $(du -h "${image_binary}" | cut -f1) ${image_binary}" >&2
