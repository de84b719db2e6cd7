#!/usr/bin/env bash
# The benchmark (README.md, "Benchmark"): builds the release binary, starts `orderflow run` on
# ephemeral ports in a temporary data dir, and measures, side by side on this machine:
#   (a) the raw producer ceiling into the same embedded broker (`orderflow load --raw`),
#   (b) ingest at saturation (closed loop, 256 requests in flight): alone, the API and the broker
#       as their own processes (`orderflow ingest`, `orderflow broker`) with no stage behind
#       them, with its HTTP latency below saturation (open loop); and within `orderflow run`,
#       the stages running behind it,
#   (c) the whole pipeline: a closed loop of 10,000 orders at 64 in flight, then an open loop
#       stepping up the rate; the highest rate sustained with accept → invoiced p99 ≤ 100 ms,
#   (d) idle CPU over 10 s.
# Prints every figure and writes BENCHMARKS.md (machine, figures). With `--before BIN`, an
# older `orderflow` binary is measured the same way first, and BENCHMARKS.md shows both.
#
#   bench/run.sh [--before path/to/old/orderflow] [--quick] [--out BENCHMARKS.md]
#
# Speed lives here, not in the tests: nothing in the test suite asserts a time.
set -euo pipefail
cd "$(dirname "$0")/.."

before=""
quick=0
out="BENCHMARKS.md"
while [ $# -gt 0 ]; do
    case "$1" in
        --before) before="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out="$2"; shift 2 ;;
        *) echo "usage: $0 [--before BIN] [--quick] [--out FILE]" >&2; exit 2 ;;
    esac
done

target_dir="${CARGO_TARGET_DIR:-target}"
if [ -z "${ORDERFLOW_BENCH_NO_BUILD:-}" ]; then
    cargo build --release --locked
fi
bin="$target_dir/release/orderflow"
[ -x "$bin" ] || { echo "no $bin" >&2; exit 1; }

work="$(mktemp -d)"
pid=""
cleanup() {
    if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# CPU ticks (1/100 s) used so far by a process: utime + stime from /proc/<pid>/stat.
ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }
# A field of the JSON object on the last line of a file.
field() { tail -n 1 "$1" | python3 -c "import json,sys; v=json.load(sys.stdin).get('$2'); print('' if v is None else v)"; }

# Waits (up to 60 s) until the API at $http answers /readyz.
await_ready() {
    for _ in $(seq 1 300); do
        if curl -fsS "$http/readyz" >/dev/null 2>&1; then return; fi
        sleep 0.2
    done
}

# Starts `$1 run` in a fresh data dir; sets pid, http, brokers.
start() {
    local dir="$work/$2"
    mkdir -p "$dir"
    "$1" run --data-dir "$dir/data" --http 127.0.0.1:0 --kafka-listen 127.0.0.1:0 \
        >"$dir/run.out" 2>"$dir/run.log" &
    pid=$!
    for _ in $(seq 1 600); do
        if grep -q "Kafka bootstrap:" "$dir/run.out" 2>/dev/null; then break; fi
        kill -0 "$pid" 2>/dev/null || { cat "$dir/run.log" >&2; exit 1; }
        sleep 0.1
    done
    http="$(awk '/HTTP API:/ { print $3 }' "$dir/run.out")"
    brokers="$(awk '/Kafka bootstrap:/ { print $3 }' "$dir/run.out")"
    # Ready (stages joined their groups, demo data placed and processed), then quiet.
    await_ready
    sleep 10
    log_in
}

stop() {
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
}

# Logs in as the demo customer (`orderflow run`'s) at $http: sets token. The steps share it,
# since the API limits how often one account may log in.
log_in() {
    token="$(curl -fsS -X POST "$http/v1/auth/login" -H 'content-type: application/json' \
        -d '{"email": "user@example.com", "password": "user123"}' |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')"
}

load() { "$bin" load --url "$http" --brokers "$brokers" --pid "$pid" --token "$token" --json "$@"; }

# Waits (up to 60 s) for a line matching $2 in file $1 while process $3 lives.
await_line() {
    for _ in $(seq 1 600); do
        if grep -q "$2" "$1" 2>/dev/null; then return; fi
        kill -0 "$3" 2>/dev/null || { cat "${1%.out}.log" >&2; exit 1; }
        sleep 0.1
    done
    echo "no '$2' in $1" >&2
    exit 1
}

# (b) ingest alone: `$1 broker` and `$1 ingest` on the data dir `orderflow run` set up under the
# label `$2` (its accounts, catalogue and JWT secret), no stage consuming; figures go to
# $work/$2/alone-*.out.
ingest_alone() {
    local run_bin="$1" dir="$work/$2" orders="$3" step="$4" bpid ipid t0 t1
    "$run_bin" broker --data-dir "$dir/data" --kafka-listen 127.0.0.1:0 \
        >"$dir/broker.out" 2>"$dir/broker.log" &
    bpid=$!
    await_line "$dir/broker.out" "Kafka bootstrap:" "$bpid"
    brokers="$(awk '/Kafka bootstrap:/ { print $3 }' "$dir/broker.out")"
    ORDERFLOW_JWT_SECRET="$(cat "$dir/data/jwt-secret")" "$run_bin" ingest --data-dir "$dir/data" \
        --brokers "$brokers" --http 127.0.0.1:0 >"$dir/api.out" 2>"$dir/api.log" &
    ipid=$!
    pid="$ipid"
    await_line "$dir/api.log" "HTTP API listening" "$ipid"
    # `addr=127.0.0.1:PORT` (older builds: `addr=Some(127.0.0.1:PORT)`).
    http="http://$(sed -n 's/.*HTTP API listening.*addr=\(Some(\)\{0,1\}\([0-9.:]*\).*/\2/p' "$dir/api.log" | head -n 1)"
    await_ready
    sleep 5
    log_in
    t0="$(ticks "$bpid")"
    load --accept-only --orders "$orders" --concurrency 256 | tee "$dir/alone-saturation.out"
    t1="$(ticks "$bpid")"
    echo "{\"broker_cpu_us_per_order\": $(( (t1 - t0) * 10000 / orders ))}" >"$dir/alone-broker.out"
    echo "(b) ingest alone at saturation: $(field "$dir/alone-saturation.out" accepted_per_s) orders/s accepted"
    # Below saturation: an open loop stepping up while HTTP p99 stays ≤ 20 ms and the accept
    # rate keeps up with the offered one (a step that misses is run once more, as in (c)).
    sleep 2
    sync
    local rate try met p99 per_s best=0 best_file=""
    for rate in 2500 5000 7500 10000 12500 15000 17500 20000 25000; do
        met=0
        for try in 1 2; do
            if ! load --accept-only --rate "$rate" --duration "${step}s" >"$dir/alone-open-$rate.out" 2>&1; then
                echo "    ingest alone at $rate/s failed: $(grep -v '^{' "$dir/alone-open-$rate.out" | tail -n 3 | tr '\n' ' ')"
                break
            fi
            p99="$(field "$dir/alone-open-$rate.out" http_p99_ms)"
            per_s="$(field "$dir/alone-open-$rate.out" accepted_per_s)"
            echo "    ingest alone at $rate/s (try $try): accepted $per_s/s, HTTP p99 $p99 ms"
            sleep 2
            sync
            if python3 -c "import sys; sys.exit(0 if $p99 <= 20 and $per_s >= 0.95 * $rate else 1)"; then
                met=1
                break
            fi
        done
        if [ "$met" = 1 ]; then
            best="$rate"; best_file="$dir/alone-open-$rate.out"
        else
            break
        fi
    done
    echo "(b) ingest alone sustained with HTTP p99 ≤ 20 ms: $best orders/s"
    if [ -n "$best_file" ]; then cp "$best_file" "$dir/alone-sustained.out"; fi
    kill -INT "$ipid" "$bpid" 2>/dev/null || true
    wait "$ipid" "$bpid" 2>/dev/null || true
    pid=""
}

# Waits (up to 60 s) until the pipeline is quiet again, under 10% of a core over a second: after
# a burst, the bridge's sinks are still delivering when the load tool has seen every invoice.
# Then writes the burst's dirty pages back (`sync`): otherwise the kernel does so about 30 s
# later, in the middle of the next step, and the fsyncs of that step wait for it.
settle() {
    local t0 t1
    for _ in $(seq 1 60); do
        t0="$(ticks "$pid")"
        sleep 1
        t1="$(ticks "$pid")"
        if [ $((t1 - t0)) -lt 10 ]; then sync; return; fi
    done
    echo "    (still busy after 60 s)"
    sync
}

# Measures `$1` (a binary) under the label `$2`; the figures go to $work/$2.json.
measure() {
    local run_bin="$1" label="$2" dir="$work/$2"
    echo "== $label: $run_bin"
    start "$run_bin" "$label"

    local t0 t1 idle
    t0="$(ticks "$pid")"
    sleep 10
    t1="$(ticks "$pid")"
    idle="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 10 }')"
    echo "(d) idle: ${idle}% of one core over 10 s"

    local raw_records=50000 orders=10000 step=10
    if [ "$quick" = 1 ]; then raw_records=10000; orders=2000; step=5; fi
    load --raw "$raw_records" | tee "$dir/raw.out"
    echo "(a) raw produce: $(field "$dir/raw.out" records_per_s) records/s"

    load --orders "$orders" --concurrency 64 | tee "$dir/closed.out"
    echo "(c) closed loop c=64: $(field "$dir/closed.out" completed_per_s) orders/s invoiced"
    settle

    load --orders "$orders" --concurrency 256 | tee "$dir/ingest.out"
    echo "(b) ingest at saturation: $(field "$dir/ingest.out" accepted_per_s) orders/s accepted"
    settle

    # Open loop, stepping up while accept → invoiced p99 stays ≤ 100 ms and the invoiced rate
    # keeps up with the offered one.
    local best=0 best_file=""
    # A step that misses is run once more: one stall of the disk or of the machine (a VM's
    # neighbours) spoils a 10-s step, and would end the search there. Both tries are printed.
    local rate try met p99 done_per_s
    for rate in 100 250 500 750 1000 1500 2000 2500 3000 3500 4000 5000 7500 10000; do
        met=0
        for try in 1 2; do
            if ! load --rate "$rate" --duration "${step}s" --timeout-secs 60 >"$dir/open-$rate.out" 2>&1; then
                echo "    open loop $rate/s failed: $(grep -v '^{' "$dir/open-$rate.out" | tail -n 3 | tr '\n' ' ')"
                break
            fi
            p99="$(field "$dir/open-$rate.out" e2e_p99_ms)"
            done_per_s="$(field "$dir/open-$rate.out" completed_per_s)"
            echo "    open loop $rate/s (try $try): invoiced $done_per_s/s, e2e p99 $p99 ms"
            if python3 -c "import sys; sys.exit(0 if $p99 <= 100 and $done_per_s >= 0.95 * $rate else 1)"; then
                met=1
                break
            fi
            settle
        done
        if [ "$met" = 1 ]; then
            best="$rate"; best_file="$dir/open-$rate.out"
        else
            break
        fi
    done
    echo "(c) sustained with e2e p99 ≤ 100 ms: $best orders/s"
    stop

    ingest_alone "$run_bin" "$label" "$((orders * 2))" "$step"

    python3 - "$dir" "$idle" "$best" "${best_file:-}" >"$work/$label.json" <<'PY'
import json, os, sys
d, idle, best, best_file = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
last = lambda f: json.loads(open(f).read().strip().splitlines()[-1])
print(json.dumps({
    "idle_pct": idle,
    "raw": last(f"{d}/raw.out"),
    "closed": last(f"{d}/closed.out"),
    "ingest": last(f"{d}/ingest.out"),
    "alone": last(f"{d}/alone-saturation.out") | last(f"{d}/alone-broker.out"),
    "alone_sustained": last(f"{d}/alone-sustained.out") if os.path.exists(f"{d}/alone-sustained.out") else None,
    "sustained_rate": best,
    "sustained": last(best_file) if best_file else None,
}))
PY
}

labels=()
if [ -n "$before" ]; then
    measure "$before" before
    labels+=(before)
fi
measure "$bin" after
labels+=(after)

python3 - "$work" "$out" "${labels[@]}" <<'PY'
import json, os, platform, subprocess, sys
work, out, labels = sys.argv[1], sys.argv[2], sys.argv[3:]
runs = {l: json.load(open(f"{work}/{l}.json")) for l in labels}

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception:
        return ""

cpu = sh("lscpu | awk -F: '/Model name/ {gsub(/^ +/, \"\", $2); print $2; exit}'") or platform.processor()
cores = os.cpu_count()
mem = sh("awk '/MemTotal/ {printf \"%.0f GiB\", $2/1048576}' /proc/meminfo")
fs = sh("df -T \"${TMPDIR:-/tmp}\" | awk 'NR==2 {print $2}'")
kernel = platform.release()
rev = sh("git rev-parse --short HEAD")

# 10,000 orders, 2,000 with --quick.
closed_orders = runs[labels[-1]]["closed"]["orders"]
rows = [
    ("(a) raw produce, records/s (400 B, acks=all, idempotent)", lambda r: r["raw"]["records_per_s"]),
    ("(a) broker CPU per raw record, µs", lambda r: r["raw"].get("cpu_us_per_record")),
    ("(b) ingest alone at saturation (c=256), accepted/s", lambda r: r["alone"]["accepted_per_s"]),
    ("(b) alone: HTTP p50 / p99 at saturation, ms", lambda r: f'{r["alone"]["http_p50_ms"]} / {r["alone"]["http_p99_ms"]}'),
    ("(b) alone: CPU per order, API + broker, µs", lambda r: f'{r["alone"]["cpu_us_per_order"]} + {r["alone"]["broker_cpu_us_per_order"]}'),
    ("(b) alone: highest open-loop rate with HTTP p99 ≤ 20 ms, orders/s", lambda r: r["alone_sustained"]["rate"] if r["alone_sustained"] else 0),
    ("(b) alone at that rate: HTTP p50 / p99, ms", lambda r: f'{r["alone_sustained"]["http_p50_ms"]} / {r["alone_sustained"]["http_p99_ms"]}' if r["alone_sustained"] else "—"),
    ("(b) within `orderflow run`, stages behind it (c=256), accepted/s", lambda r: r["ingest"]["accepted_per_s"]),
    ("(b) within `orderflow run`: HTTP p50 / p99 at saturation, ms", lambda r: f'{r["ingest"]["http_p50_ms"]} / {r["ingest"]["http_p99_ms"]}'),
    (f"(c) closed loop {closed_orders:,} orders c=64: accepted/s", lambda r: r["closed"]["accepted_per_s"]),
    ("(c) closed loop: invoiced/s", lambda r: r["closed"]["completed_per_s"]),
    ("(c) closed loop: accept → invoiced p50 / p99, ms", lambda r: f'{r["closed"]["e2e_p50_ms"]} / {r["closed"]["e2e_p99_ms"]}'),
    ("(c) closed loop: CPU per order, µs", lambda r: r["closed"]["cpu_us_per_order"]),
    ("(c) highest open-loop rate with e2e p99 ≤ 100 ms, orders/s", lambda r: r["sustained_rate"]),
    ("(c) at that rate: e2e p50 / p99, ms", lambda r: f'{r["sustained"]["e2e_p50_ms"]} / {r["sustained"]["e2e_p99_ms"]}' if r["sustained"] else "—"),
    ("(d) idle CPU, % of one core", lambda r: r["idle_pct"]),
    ("(b)/(a), alone", lambda r: round(r["alone"]["accepted_per_s"] / r["raw"]["records_per_s"], 3)),
    ("(c)/(a)", lambda r: round(r["sustained_rate"] / r["raw"]["records_per_s"], 3)),
]
lines = [
    "# Benchmarks",
    "",
    "Written by `bench/run.sh` (README.md, \"Benchmark\"); numbers from one run on one machine,",
    "`orderflow run` release build, defaults, fresh data dir, every client on 127.0.0.1.",
    "",
    f"Machine: {cpu}, {cores} cores, {mem}, Linux {kernel}, data dir on {fs or 'unknown fs'}. "
    f"Commit {rev}.",
    "",
    "| figure | " + " | ".join(labels) + " |",
    "|---|" + "---|" * len(labels),
]
for name, get in rows:
    cells = []
    for l in labels:
        try:
            v = get(runs[l])
        except Exception:
            v = None
        cells.append("—" if v is None else str(v))
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
lines.append("")
text = "\n".join(lines)
print(text)
notes = ""
if os.path.exists(out):
    old = open(out).read()
    marker = "\n## Notes"
    if marker in old:
        notes = old[old.index(marker):]
open(out, "w").write(text + notes)
PY
echo "wrote $out"
