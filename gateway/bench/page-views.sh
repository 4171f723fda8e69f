#!/usr/bin/env bash
# Page views through `tariff gateway` at a fixed rate, alone and while image resizes overload
# the cluster, with oha as the open-loop load generator (a fixed rate with `-q`, latency
# measured from when each request was due, `--latency-correction`, so a stalled server is
# not hidden by the generator waiting: coordinated omission). One run of one policy:
#
#   gateway/bench/page-views.sh tariff     # or: fifo
#
# Prints oha's summary for each phase and the page-view p50/p99 of both phases. Needs a
# release build (`cargo build --release`) and oha (`cargo install oha --locked`).
# Every figure can be set from the environment (defaults below).
set -euo pipefail

POLICY=${1:-tariff}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARIFF=${TARIFF:-$ROOT/target/release/tariff}
OHA=${OHA:-oha}
PAGE_RATE=${PAGE_RATE:-50}          # page views per second
PAGE_PATH=${PAGE_PATH:-/}           # the home page, at critical
DURATION=${DURATION:-60s}           # each phase (3,000 page views at 50/s: a p99 of 30 calls)
IMAGE_RATE=${IMAGE_RATE:-40}        # resizes per second
IMAGE_ROUNDS=${IMAGE_ROUNDS:-200}    # CPU per resize (see tariff-web resize)
IMAGE_SIDE=${IMAGE_SIDE:-256}       # pixels, square
WORKERS=${WORKERS:-100}             # oha connections per load; see docs/gateway.md (Benchmarks)
# oha stands in for clients on other machines. On one small host it would share the CPUs with
# the cluster's `batch` functions and, as a normal task, wait behind them for its own receive
# (a CFS slice, milliseconds): the loaded phase would then measure oha's scheduling. As root
# it runs under SCHED_FIFO 1, above every normal task and below every Tariff function and
# thread; CLIENT_RT=0 runs it as a normal task (docs/gateway.md reports both).
CLIENT_RT=${CLIENT_RT:-1}

work=$(mktemp -d)
cleanup() {
    [[ -n ${local_pid:-} ]] && kill "$local_pid" 2>/dev/null && wait "$local_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

"$TARIFF" --cluster "$work/cluster" local --shards 1 --dispatchers 1 --policy "$POLICY" \
    --gateway "$ROOT/examples/web/routes.toml" > "$work/local.out" 2> "$work/local.log" &
local_pid=$!
for _ in $(seq 200); do grep -q '^running' "$work/local.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^ *gateway: *http:\/\/\([^ ]*\).*/\1/p' "$work/local.out")
[[ -n $addr ]] || { cat "$work/local.out" "$work/local.log" >&2; exit 1; }
token=$(cat "$work/cluster/tokens/default")

# A square PPM of random pixels.
{ printf 'P6\n%d %d\n255\n' "$IMAGE_SIDE" "$IMAGE_SIDE"
  head -c $((IMAGE_SIDE * IMAGE_SIDE * 3)) /dev/urandom; } > "$work/image.ppm"

client() {
    if [[ $CLIENT_RT == 1 && $(id -u) == 0 ]] && command -v chrt > /dev/null; then
        chrt -f 1 "$OHA" "$@"
    else
        "$OHA" "$@"
    fi
}

pages() {
    client --no-tui -z "$DURATION" -q "$PAGE_RATE" --latency-correction -c "$WORKERS" \
        "http://$addr$PAGE_PATH"
}
# Warm the pages' persistent instances.
client --no-tui -n 20 -c 1 "http://$addr$PAGE_PATH" > /dev/null

echo "== $POLICY: page views alone ($PAGE_RATE/s for $DURATION)"
pages | tee "$work/alone.txt"
echo "== $POLICY: page views while resizes run ($IMAGE_RATE/s, ${IMAGE_ROUNDS} rounds of ${IMAGE_SIDE}x${IMAGE_SIDE})"
client --no-tui -z "$DURATION" -q "$IMAGE_RATE" --latency-correction -c "$WORKERS" -m POST \
    -H "Authorization: Bearer $token" -D "$work/image.ppm" -t 120s \
    "http://$addr/images?rounds=$IMAGE_ROUNDS" > "$work/images.txt" &
images=$!
sleep 2
pages | tee "$work/loaded.txt"
wait "$images" || true
echo "== $POLICY: the resizes"
cat "$work/images.txt"
pct() { sed -n "s/^ *$1% in \([0-9.]* [a-z]*\).*/\1/p" "$2" | head -1; }
echo "== $POLICY summary : alone p50 $(pct 50.00 "$work/alone.txt") p99 $(pct 99.00 "$work/alone.txt") | loaded p50 $(pct 50.00 "$work/loaded.txt") p99 $(pct 99.00 "$work/loaded.txt")"
