#!/usr/bin/env bash
# Makes sure `redis-server` is installed, for the fleet tests
# (tests/tests/fleet.rs start their own on free ports), and prints its path.
# Only when it is missing, installs Debian's `redis-server` package:
# `apt-get update` once, then `apt-get install -y --no-install-recommends
# redis-server` (as root, or through sudo). Everything but the path goes to
# stderr.
set -euo pipefail

if bin=$(command -v redis-server 2>/dev/null); then
    echo "$bin"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis.sh: no redis-server and no apt-get; install Redis by hand" >&2
    exit 1
fi
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
"${sudo[@]}" apt-get update -qq >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >&2
# The package starts a system instance; the tests start their own.
"${sudo[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
command -v redis-server
