#!/bin/bash
# The shard's CPU time per placed invocation, with the load harness's (the client's) CPU time per
# invocation as the same-run baseline: a standalone `tariff shard`, two standalone dispatchers
# with 64 slots each (so machines do not bound the load), `tariff-bench` sending
# bench/workloads/shard-cpu.toml; utime+stime of each process from /proc (100 Hz ticks).
# Usage, from the workspace root after `cargo build --release`: bench/scripts/shard-cpu.sh [DIR]
set -eu
B=$(pwd)/target/release
D=${1:-$(mktemp -d /tmp/tariff-shard-cpu.XXXXXX)}
mkdir -p "$D"
export TARIFF_CLUSTER=$D/cluster
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
"$B/tariff" shard --listen 127.0.0.1:0 --data-dir "$D/shard" > "$D/shard.log" 2>&1 & S=$!; pids+=($S)
for _ in $(seq 1 40); do [ -s "$D/shard/shard.addr" ] && break; sleep 0.25; done
ADDR=$(cat "$D/shard/shard.addr")
# The workload's tenant (`bench`), with its token file where the harness looks for it.
"$B/tariff" tenant add bench > /dev/null
for m in m1 m2; do
  "$B/tariff" dispatcher --shards "$ADDR" --cores 2 --slots 64 --memory 2G \
    --data-dir "$D/$m" --name "$m" > "$D/$m.log" 2>&1 & pids+=($!)
done
sleep 3
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
s0=$(ticks "$S")
"$B/tariff-bench" --workload bench/workloads/shard-cpu.toml --shards "$ADDR" --deploy-examples \
  --quiet --out "$D/out" > "$D/bench.log" 2>&1 & H=$!
h=0; s=$s0
while kill -0 "$H" 2>/dev/null; do
  h=$(ticks "$H" 2>/dev/null || echo "$h"); s=$(ticks "$S"); sleep 0.2
done
calls=$(python3 -c "import json;r=json.load(open('$D/out/report.json'));print(sum(p['ok'] for p in r['policies'][0]['phases']))")
# The warm-up phase (not reported) sent 1,000 more calls.
calls=$((calls + 1000))
hz=$(getconf CLK_TCK)
python3 - "$((s - s0))" "$h" "$calls" "$hz" <<'PY'
import sys
shard, harness, calls, hz = map(int, sys.argv[1:])
per = lambda t: t / hz / calls * 1e6
print(f"{calls} calls: shard {per(shard):.0f} µs CPU per call ({1e6 / per(shard):,.0f} calls/s per core), "
      f"harness client {per(harness):.0f} µs; shard ÷ client {shard / max(harness, 1):.2f}")
PY
