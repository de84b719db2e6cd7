#!/usr/bin/env bash
# The soak (README.md, "Benchmark"): starts `orderflow run` on ephemeral ports in a temporary
# data dir, sends orders at a steady rate for a while (`orderflow load --rate R --duration D`)
# and samples the process every N seconds: resident memory (VmRSS), open file descriptors,
# threads, and the size of the store file and of the data dir. Prints one table row per sample,
# then the load's summary. Memory or descriptors that keep climbing at a steady rate are a leak;
# a plateau is what bounded queues, caches and pruning look like.
#
#   scripts/soak.sh [--bin path/to/orderflow] [--rate 200] [--duration 600] [--every 30]
#
# Without --bin it builds the debug binary (`cargo build --locked`, honouring CARGO_TARGET_DIR).
# It competes for the CPU with nothing else when run as `nice -n 19 scripts/soak.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=""
rate=200
duration=600
every=30
while [ $# -gt 0 ]; do
    case "$1" in
        --bin) bin="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --duration) duration="$2"; shift 2 ;;
        --every) every="$2"; shift 2 ;;
        *) echo "usage: $0 [--bin BIN] [--rate R] [--duration SECONDS] [--every SECONDS]" >&2; exit 2 ;;
    esac
done
if [ -z "$bin" ]; then
    cargo build --locked
    bin="${CARGO_TARGET_DIR:-target}/debug/orderflow"
fi
[ -x "$bin" ] || { echo "no $bin" >&2; exit 1; }

work="$(mktemp -d)"
pid=""
load_pid=""
cleanup() {
    if [ -n "$load_pid" ]; then kill "$load_pid" 2>/dev/null || true; fi
    if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$bin" run --data-dir "$work/data" --http 127.0.0.1:0 --kafka-listen 127.0.0.1:0 \
    >"$work/run.out" 2>"$work/run.log" &
pid=$!
for _ in $(seq 1 600); do
    if grep -q "Kafka bootstrap:" "$work/run.out" 2>/dev/null; then break; fi
    kill -0 "$pid" 2>/dev/null || { cat "$work/run.log" >&2; exit 1; }
    sleep 0.1
done
http="$(awk '/HTTP API:/ { print $3 }' "$work/run.out")"
brokers="$(awk '/Kafka bootstrap:/ { print $3 }' "$work/run.out")"
for _ in $(seq 1 300); do
    if curl -fsS "$http/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
done

# One sample: seconds since the start, VmRSS (MiB), open fds, threads, store file and data dir
# (MiB), whether /readyz answers 200.
start_s="$(date +%s)"
sample() {
    local rss fds threads store data ready
    rss="$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")"
    fds="$(ls "/proc/$pid/fd" | wc -l)"
    threads="$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status")"
    store="$(du -m "$work/data/state/state.redb" 2>/dev/null | cut -f1)"
    data="$(du -sm "$work/data" 2>/dev/null | cut -f1)"
    ready="$(curl -s -o /dev/null -w '%{http_code}' "$http/readyz" || true)"
    printf "%6s  %9s  %5s  %7s  %9s  %8s  %6s\n" \
        "$(( $(date +%s) - start_s ))" "$rss" "$fds" "$threads" "${store:-?}" "${data:-?}" "$ready"
}

echo "soak: $bin, $rate orders/s for ${duration}s, a sample every ${every}s (pid $pid)"
printf "%6s  %9s  %5s  %7s  %9s  %8s  %6s\n" "t (s)" "RSS (MiB)" "fds" "threads" "store MiB" "data MiB" "readyz"
sample
"$bin" load --url "$http" --brokers "$brokers" --pid "$pid" --json \
    --rate "$rate" --duration "${duration}s" --timeout-secs "$(( duration + 120 ))" >"$work/load.out" 2>&1 &
load_pid=$!
while kill -0 "$load_pid" 2>/dev/null; do
    for _ in $(seq 1 "$every"); do
        kill -0 "$load_pid" 2>/dev/null || break
        sleep 1
    done
    kill -0 "$pid" 2>/dev/null || { echo "orderflow run exited" >&2; cat "$work/run.log" >&2; exit 1; }
    sample
done
status=0
wait "$load_pid" || status=$?
load_pid=""
sample
echo
echo "load (exit $status):"
grep -v '^{' "$work/load.out" || true
tail -n 1 "$work/load.out"
# What /readyz found down, if anything, and the run's errors, counted.
plain() { sed 's/\x1b\[[0-9;]*m//g' "$work/run.log"; }
echo "not ready, by check: $(plain | grep 'Not ready' | grep -o 'check="*[a-z_]*' | sort | uniq -c | xargs || true)"
echo "warnings and errors logged, by message:"
plain | grep -E ' (WARN|ERROR) ' | sed -E 's/^[^ ]+ +(WARN|ERROR) +//; s/[:,] .*//' | cut -c1-100 | sort | uniq -c | sort -rn | head -n 8 || true
exit "$status"
