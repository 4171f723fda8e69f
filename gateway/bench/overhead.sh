#!/usr/bin/env bash
# The gateway's own overhead at a fixed rate (default 1,000 requests/s), two ways in one run:
#
# 1. From the gateway itself: every request's `gateway_us` (its own time: route lookup, body,
#    envelope, response, less the shard's answer time; docs/gateway.md, Server-Timing) from
#    its debug log, while oha sends page views of the home page (a warm persistent function).
# 2. From outside: oha's latency for the same page views, and for a path with no route (the
#    404 is answered by the gateway alone: the HTTP round trip's floor on this machine).
#
#   gateway/bench/overhead.sh
#
# Needs a release build and oha; every figure can be set from the environment.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARIFF=${TARIFF:-$ROOT/target/release/tariff}
OHA=${OHA:-oha}
RATE=${RATE:-1000}
DURATION=${DURATION:-20s}
WORKERS=${WORKERS:-200}

work=$(mktemp -d)
cleanup() {
    [[ -n ${local_pid:-} ]] && kill "$local_pid" 2>/dev/null && wait "$local_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

RUST_LOG=info,tariff_gateway=debug "$TARIFF" --cluster "$work/cluster" local --shards 1 \
    --dispatchers 1 --gateway "$ROOT/examples/web/routes.toml" > "$work/local.out" 2> "$work/local.log" &
local_pid=$!
for _ in $(seq 200); do grep -q '^running' "$work/local.out" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/^ *gateway: *http:\/\/\([^ ]*\).*/\1/p' "$work/local.out")
[[ -n $addr ]] || { cat "$work/local.out" "$work/local.log" >&2; exit 1; }
"$OHA" --no-tui -n 50 -c 1 "http://$addr/" > /dev/null

run() {
    "$OHA" --no-tui -z "$DURATION" -q "$RATE" --latency-correction -c "$WORKERS" "http://$addr$1"
}
echo "== no route (404, the gateway alone) at $RATE/s"
run /nowhere | tee "$work/none.txt"
: > "$work/local.log.mark"; start=$(wc -l < "$work/local.log")
echo "== home page (critical, warm) at $RATE/s"
run / | tee "$work/home.txt"
tail -n +"$((start + 1))" "$work/local.log" | sed -n 's/.*path=\/ .*gateway_us=\([0-9]*\).*/\1/p' \
    | sort -n > "$work/gateway_us"
n=$(wc -l < "$work/gateway_us")
at() { sed -n "$(( ($1 * n + 99) / 100 ))p" "$work/gateway_us"; }
echo "== the gateway's own time per home-page request ($n requests): p50 $(at 50) us, p99 $(at 99) us, max $(tail -1 "$work/gateway_us") us"
