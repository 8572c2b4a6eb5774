#!/usr/bin/env bash
# Make sure `promtool` (Prometheus's rule and config checker) is installed, for the tests that check the alert rules
# and scrape config in deploy/prometheus/. Installs Debian's `prometheus` package only when promtool is missing; the
# package's service is not started (policy-rc.d), since the tests only need the binary.
set -euo pipefail

if command -v promtool >/dev/null 2>&1; then
    echo "ensure-promtool: $(command -v promtool) found"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-promtool: promtool is missing and apt-get is not available; install Prometheus's promtool" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "ensure-promtool: promtool is missing; run this script as root to install it" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "ensure-promtool: installing the prometheus package (for promtool)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
# Keep the package's post-install from starting a Prometheus server on this machine.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod +x "$POLICY"
    CREATED_POLICY=1
fi
trap 'if [ "$CREATED_POLICY" -eq 1 ]; then "${SUDO[@]}" rm -f "$POLICY"; fi' EXIT
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends prometheus >/dev/null

if ! command -v promtool >/dev/null 2>&1; then
    echo "ensure-promtool: installation finished but promtool is still missing" >&2
    exit 1
fi
echo "ensure-promtool: installed $(command -v promtool) ($(promtool --version 2>&1 | head -n 1))"
