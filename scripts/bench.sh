#!/usr/bin/env bash
# The standard benchmark set: builds release binaries, pins the node to one
# core and the load generator to another, runs each scenario against a node it
# starts for the purpose, and appends every report's JSON line to
# bench-results/<UTC time>.jsonl. Takes under 10 minutes on 2 cores.
#
#   scripts/bench.sh            # the standard set
#   scripts/bench.sh fanout     # only the scenarios whose name matches
#
# See BENCHMARKS.md for what each scenario measures and the figures.
set -euo pipefail
cd "$(dirname "$0")/.."

only="${1:-}"
cargo build --release --locked -p roomcast-server -p roomcast-cli --bins
bin="${CARGO_TARGET_DIR:-target}/release"

# Fan-out bursts of acknowledgements overflow the default 208 KiB UDP buffers:
# let the node and the generator ask for 16 MiB (needs root; else a warning).
for key in net.core.rmem_max net.core.wmem_max; do
    if [ "$(sysctl -n "$key" 2>/dev/null || echo 0)" -lt 16777216 ]; then
        sysctl -qw "$key=16777216" 2>/dev/null ||
            echo "note: could not raise $key; UDP buffers stay capped at $(sysctl -n "$key" 2>/dev/null)" >&2
    fi
done

# Node on CPU 0, generator on CPU 1, when there are two.
if [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    gen=(taskset -c 1)
    pin=(--server-cpus 0)
else
    gen=()
    pin=()
    echo "note: fewer than 2 CPUs or no taskset: node and generator share the CPUs" >&2
fi

mkdir -p bench-results
out="bench-results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"

run() {
    local name="$1"
    shift
    if [ -n "$only" ] && [[ "$name" != *"$only"* ]]; then
        return
    fi
    echo "== $name: roomcast bench $*" >&2
    "${gen[@]}" "$bin/roomcast" bench "$@" --spawn "${pin[@]}" --timeout 300 | tee /dev/stderr |
        grep '^{' | sed "s/^{/{\"name\":\"$name\",/" >>"$out"
}

run fanout-100 fanout --subscribers 100 --rate 20 --size 120 --duration 10
run fanout-1000 fanout --subscribers 1000 --rate 20 --size 120 --duration 10
run fanout-5000 fanout --subscribers 5000 --rate 20 --size 120 --duration 10
run fanout-10000 fanout --subscribers 10000 --rate 20 --size 120 --duration 10
# The same fan-out against NATS, the peer the targets are set against. Its
# clients are TCP connections, a file descriptor each.
nats_ok=
if ! command -v nats-server >/dev/null; then
    echo "note: nats-server is not installed (apt-get install nats-server): no NATS comparison" >&2
elif [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 10100 ]; then
    echo "note: ulimit -n is $(ulimit -n), under the 10,100 the NATS runs need: no NATS comparison" >&2
else
    nats_ok=1
    run fanout-5000-nats fanout --peer nats --subscribers 5000 --rate 20 --size 120 --duration 10
    run fanout-10000-nats fanout --peer nats --subscribers 10000 --rate 20 --size 120 --duration 10
fi
run join-storm join-storm --connections 5000
# Two fleet nodes and a Redis (on the generator's core): one-node, split and
# remote layouts of one room.
if command -v redis-server >/dev/null; then
    redis_pin=()
    [ ${#gen[@]} -gt 0 ] && redis_pin=(--redis-cpus 1)
    run cross-node-1000 cross-node --subscribers 1000 --rate 20 --size 120 --duration 10 "${redis_pin[@]}"
else
    echo "note: redis-server is not installed (scripts/redis.sh): no cross-node run" >&2
fi
run chat-storm chat-storm --subscribers 1000 --senders 200 --sender-rate 1 --duration 10
run slow-consumers slow-consumers --subscribers 1000 --rate 20 --slow-share 0.01 --duration 10
run idle idle --connections 20000 --rooms 100 --duration 60
if [ -n "$nats_ok" ]; then
    # As many as the open-files limit allows, up to the node's 20,000.
    conns=20000
    if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 21000 ]; then
        conns=$(($(ulimit -n) - 1000))
    fi
    run idle-nats idle --peer nats --connections "$conns" --rooms 100 --duration 60
fi

echo "results: $out" >&2
