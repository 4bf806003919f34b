#!/usr/bin/env bash
# Installs Debian's `prometheus` package (promtool and the Prometheus server) for the
# observability tests: tests/promtool.rs (check metrics, check/test rules) and
# tests/dashboard.rs (every dashboard query against a Prometheus that scraped agents).
# Idempotent: does nothing when both are on PATH. The package's service is not needed:
# the tests start their own server on a loopback port.
set -euo pipefail

if command -v promtool >/dev/null && command -v prometheus >/dev/null; then
    exit 0
fi
if [[ "$(id -u)" != 0 ]]; then
    echo "prometheus.sh: promtool/prometheus missing; run as root or: apt-get install prometheus" >&2
    exit 1
fi
echo "prometheus.sh: installing Debian's prometheus package (promtool, prometheus)" >&2
export DEBIAN_FRONTEND=noninteractive
if ! apt-get install -y --no-install-recommends prometheus >/dev/null; then
    apt-get update >/dev/null
    apt-get install -y --no-install-recommends prometheus >/dev/null
fi
command -v promtool >/dev/null && command -v prometheus >/dev/null
