#!/usr/bin/env bash
# Makes sure a headless-capable Chromium is installed, for the dashboard's
# browser test (tests/tests/dashboard.rs), and prints its path.
#
# Only when no browser is found, installs Debian's `chromium` package:
# `apt-get update` once, then `apt-get install -y --no-install-recommends
# chromium` (as root, or through sudo). Recommended packages are left out:
# headless Chromium needs none of them, and on Debian 12 they are 90 more
# packages (udev, upower, CUPS tools...). Everything but the path goes to
# stderr, so `bin=$(scripts/chromium.sh)` works.
set -euo pipefail

find_chromium() {
    command -v chromium 2>/dev/null && return 0
    [ -x /usr/bin/chromium ] && echo /usr/bin/chromium && return 0
    return 1
}

if bin=$(find_chromium); then
    echo "$bin"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no chromium and no apt-get; install Chromium by hand" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "chromium.sh: installing chromium needs root or sudo" >&2
        exit 1
    fi
    sudo=(sudo)
fi

echo "chromium.sh: installing Debian's chromium package" >&2
# Through env: sudo would drop an exported DEBIAN_FRONTEND.
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium >&2

if ! bin=$(find_chromium); then
    echo "chromium.sh: chromium installed but not found on PATH or at /usr/bin/chromium" >&2
    exit 1
fi
"$bin" --version >&2 || true
echo "$bin"
