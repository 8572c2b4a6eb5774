#!/usr/bin/env bash
# Make sure a headless-capable Chromium is installed, for the studio's screenshot tests and `make screenshots`
# (tastebud.studio.screenshots drives it over the DevTools protocol). Installs Debian's `chromium` and a colour emoji
# font (the studio's page icons) only when missing; TASTEBUD_CHROMIUM may name another Chromium or Chrome binary.
set -euo pipefail

have_chromium() {
    if [ -n "${TASTEBUD_CHROMIUM:-}" ]; then
        command -v "$TASTEBUD_CHROMIUM" >/dev/null 2>&1
        return
    fi
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
        || command -v google-chrome >/dev/null 2>&1 || command -v google-chrome-stable >/dev/null 2>&1
}

have_emoji_font() {
    ! command -v fc-list >/dev/null 2>&1 || fc-list 2>/dev/null | grep -qi "emoji"
}

if have_chromium && have_emoji_font; then
    echo "ensure-chromium: Chromium found"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    if have_chromium; then
        echo "ensure-chromium: Chromium found (no emoji font; page icons render as boxes)"
        exit 0
    fi
    echo "ensure-chromium: Chromium is missing and apt-get is not available; install Chromium or Chrome" \
        "(or set TASTEBUD_CHROMIUM to its binary)" >&2
    exit 1
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "ensure-chromium: Chromium is missing; run this script as root to install it" >&2
        exit 1
    fi
    SUDO=(sudo)
fi

echo "ensure-chromium: installing chromium and fonts-noto-color-emoji"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium fonts-noto-color-emoji >/dev/null

if ! have_chromium; then
    echo "ensure-chromium: installation finished but chromium is still missing" >&2
    exit 1
fi
echo "ensure-chromium: installed $(chromium --version 2>/dev/null || echo chromium)"
