#!/usr/bin/env bash
# Issue 15's oversubscription benchmark, several rounds: in each round, for 2× and 1.5×, the
# workload without memory pressure (`--memory 2G`) and right after it with its own `--memory`,
# then one line per pair: the top class's p50/p99 both ways and their ratio, what `batch`
# got answered, bytes swapped and kills. Needs root (cgroups, a swap file) and a release build
# (`cargo build --release --workspace --bins --examples`).
#
#   bench/scripts/memory-rounds.sh [ROUNDS]        # default 3; OUT=dir to keep the reports
#
# The swap file (2 GiB, /tmp/tariff-bench-swap unless SWAP_FILE is set; it must not exist yet,
# and its file system must take swap files: not tmpfs, not btrfs) is made here and switched
# off and removed on exit, also after a failure, Ctrl-C or SIGTERM. A machine that already has
# swap is used as it is.
set -euo pipefail
cd "$(dirname "$0")/../.."

rounds=${1:-3}
tariff=./target/release/tariff
swap_file=${SWAP_FILE:-/tmp/tariff-bench-swap}

if [ "$(id -u)" -ne 0 ]; then
    echo "memory-rounds: needs root (per-instance cgroups and a swap file)" >&2
    exit 1
fi
if [ ! -x "$tariff" ] || [ ! -x ./target/release/tariff-bench ]; then
    echo "memory-rounds: build first: cargo build --release --workspace --bins --examples" >&2
    exit 1
fi

made_file=0
made_swap=0
cleanup() {
    if [ "$made_swap" = 0 ] && [ "$made_file" = 1 ]; then
        rm -f "$swap_file"
    elif [ "$made_swap" = 1 ]; then
        # An active swap file unlinked could no longer be switched off by its path.
        if swapoff "$swap_file"; then
            rm -f "$swap_file"
        else
            echo "memory-rounds: could not switch $swap_file off; remove it after swapoff" >&2
        fi
    fi
}
# A signal ends the script (and so runs the EXIT trap once), rather than letting the next
# round run without the swap the trap has just removed.
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ "$(awk '/^SwapTotal:/ {print $2}' /proc/meminfo)" = 0 ]; then
    if [ -e "$swap_file" ]; then
        echo "memory-rounds: $swap_file exists; set SWAP_FILE to a new path" >&2
        exit 1
    fi
    made_file=1
    fallocate -l 2G "$swap_file"
    chmod 600 "$swap_file"
    mkswap "$swap_file" >/dev/null
    swapon "$swap_file"
    made_swap=1
fi

out=${OUT:-$(mktemp -d /tmp/tariff-memory-rounds.XXXXXX)}
mkdir -p "$out"
for round in $(seq "$rounds"); do
    for level in 2x 1.5x; do
        workload=bench/workloads/memory-$level.toml
        "$tariff" bench --workload "$workload" --memory 2G --quiet --out "$out/$round-$level-free" >/dev/null
        "$tariff" bench --workload "$workload" --quiet --out "$out/$round-$level-pressure" >/dev/null
        python3 - "$out/$round-$level-free/report.json" "$out/$round-$level-pressure/report.json" \
            "$round" "$level" "$(cut -d' ' -f1 /proc/loadavg)" <<'EOF'
import json, sys
free, pressure = (json.load(open(p))["policies"][0]["phases"][0] for p in sys.argv[1:3])
def cls(phase, name):
    return next(c for c in phase["classes"] if c["class"] == name)
fc, pc, pb = cls(free, "critical"), cls(pressure, "critical"), cls(pressure, "batch")
kills = sum(c["errors"].get("killed_memory_pressure", 0) for c in pressure["classes"])
p50f, p99f = fc["latency_us"]["p50"] / 1e3, fc["latency_us"]["p99"] / 1e3
p50p, p99p = pc["latency_us"]["p50"] / 1e3, pc["latency_us"]["p99"] / 1e3
print(f"round {sys.argv[3]} {sys.argv[4]:>4} (load {sys.argv[5]}): critical p50/p99 "
      f"{p50f:.1f}/{p99f:.1f} ms without pressure, {p50p:.1f}/{p99p:.1f} ms with: "
      f"p99 {p99p / p99f:.2f}x, p50 {p50p / p50f:.2f}x; critical swapped "
      f"{pc['memory']['swapped_out_bytes'] >> 20} MiB; batch {pb['ok']}/{pb['scheduled']} "
      f"answered, swapped out {pb['memory']['swapped_out_bytes'] >> 20} MiB; kills {kills}")
EOF
    done
done
echo "reports in $out"
