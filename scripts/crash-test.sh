#!/usr/bin/env bash
# Kills Orderflow's processes with SIGKILL at random moments under load, restarts them, and
# checks that nothing was lost and nothing done twice (README.md, "Nothing lost, nothing done
# twice").
#
#   scripts/crash-test.sh [--kills N] [--rate ORDERS_PER_S] [--clients C] [--gap SECONDS]
#                         [--min-gap SECONDS]
#                         [--decline-share F] [--only NAME[,NAME…]] [--restart-delay SECONDS]
#                         [--strict] [--bin PATH] [--keep]
#
# It starts, on 127.0.0.1 with free ports, in a temporary directory: moto's AWS emulator (SQS
# and SES), a broker process (`orderflow broker`) and the pipeline (`orderflow run --brokers`:
# API, stages, bridge, to SQS, SES and a notification file). With ORDERFLOW_CRASH_SCYLLA=host:port
# the pipeline is one process per part instead (`orderflow ingest`, `process validation`,
# `process payment`, `process invoicing`, `bridge`), sharing that ScyllaDB (a fresh keyspace).
# Clients post orders (each with its Idempotency-Key, sent again after an error or a cut
# connection); N times, after a random pause, a random process (the broker included) is killed
# with SIGKILL and started again. Then the clients stop, the pipeline settles, and
# scripts/crash_test.py reconciles the API, the topics, the queues, the emails and the
# notification file. The last line is `kills=K orders=N lost=L duplicates=D`; the exit status
# is 0 when L and D are 0. A standard-queue message, email or notification line sent again after
# a kill (those sinks deliver at least once) is reported as repeated; --strict counts it in D. Everything it started is stopped on exit, whatever happens; the
# directory (logs, data) is kept with --keep or when the check fails.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"

kills=5
rate=8
clients=4
gap=6
min_gap=0.5
decline_share=0.1
keep=0
only=""
restart_delay=0
strict=false
bin="${ORDERFLOW_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/orderflow}"
while [ $# -gt 0 ]; do
    case "$1" in
    --kills) kills="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --clients) clients="$2"; shift 2 ;;
    --gap) gap="$2"; shift 2 ;;
    --min-gap) min_gap="$2"; shift 2 ;;
    --decline-share) decline_share="$2"; shift 2 ;;
    --only) only=",$2,"; shift 2 ;;
    --restart-delay) restart_delay="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --strict) strict=true; shift ;;
    --keep) keep=1; shift ;;
    -h | --help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "crash-test: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[ -x "$bin" ] || { echo "crash-test: no orderflow binary at $bin (cargo build, or --bin PATH)" >&2; exit 2; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

say() { echo "crash-test: $*" >&2; }

# The Python with moto, confluent-kafka, fastavro and boto3: the test peers' virtualenv that
# scripts/test.sh makes (made here the same way when missing).
python="${ORDERFLOW_TEST_PYTHON:-}"
if [ -z "$python" ]; then
    venv="${CARGO_TARGET_DIR:-$root/target}/test-python"
    if ! "$venv/bin/python" -c 'import moto.server, confluent_kafka, fastavro, boto3' 2>/dev/null; then
        say "installing the test peers (scripts/test-requirements.txt) into $venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/scripts/test-requirements.txt"
        cp "$root/scripts/test-requirements.txt" "$venv/.requirements"
    fi
    python="$venv/bin/python"
fi

dir="$(mktemp -d "${TMPDIR:-/tmp}/orderflow-crash.XXXXXX")"
mkdir -p "$dir/logs"
declare -A pids=()
failed=1

# Stops `$@` (names in pids): SIGTERM, ten seconds to finish, then SIGKILL.
stop() {
    local name
    for name in "$@"; do
        [ -n "${pids[$name]:-}" ] && kill -TERM "${pids[$name]}" 2>/dev/null || true
    done
    for _ in $(seq 100); do
        local alive=0
        for name in "$@"; do
            [ -n "${pids[$name]:-}" ] && kill -0 "${pids[$name]}" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for name in "$@"; do
        [ -n "${pids[$name]:-}" ] || continue
        kill -KILL "${pids[$name]}" 2>/dev/null || true
        wait "${pids[$name]}" 2>/dev/null || true
        unset "pids[$name]"
    done
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    touch "$dir/stop" 2>/dev/null || true
    # The clients and the pipeline first, then what they use: the broker, moto.
    local name others=()
    for name in "${!pids[@]}"; do
        case "$name" in broker | moto) ;; *) others+=("$name") ;; esac
    done
    stop "${others[@]}"
    stop broker
    stop moto
    if [ "$keep" = 1 ] || [ "$failed" = 1 ]; then
        say "kept $dir (logs in $dir/logs)"
    else
        rm -rf "$dir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until `url` answers 200 (60 s, or `$2` seconds).
wait_http() {
    local deadline=$((SECONDS + ${2:-60}))
    until curl -sf -o /dev/null "$1"; do
        [ $SECONDS -lt $deadline ] || { say "no answer from $1"; return 1; }
        sleep 0.2
    done
}

wait_port() {
    local deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { say "nothing listens on port $1"; return 1; }
        sleep 0.1
    done
}

moto_port=$(free_port)
kafka_port=$(free_port)
http_port=$(free_port)
brokers="127.0.0.1:$kafka_port"
api="http://127.0.0.1:$http_port"
admin_email="crash@example.com"
admin_password="crash-test-password"
sku="CRASH-001"
stock=1000000
queue_created="crash-orders-created"
queue_paid="crash-orders-paid.fifo"
scylla="${ORDERFLOW_CRASH_SCYLLA:-}"
shared="$dir/pipeline"

cat >"$dir/bridge.toml" <<EOF
provision = true
[aws]
region = "us-east-1"
[sinks.orders_created]
type = "sqs"
queue_name = "$queue_created"
[sinks.orders_paid]
type = "sqs"
queue_name = "$queue_paid"
group_by = "order_id"
[sinks.customer_email]
type = "ses"
from = "Orderflow <orders@orderflow.example>"
recipient = "{{ customer_id }}@customers.example"
max_send_rate = 50
[sinks.file]
type = "file"
[[routes]]
events = ["order_accepted"]
sinks = ["orders_created"]
mapping = "event"
[[routes]]
events = ["order_paid"]
sinks = ["orders_paid"]
mapping = "event"
[[routes]]
events = ["order_validated", "order_rejected", "payment_failed", "order_invoiced",
          "order_cancelled", "order_shipped", "payment_refunded", "account_verification"]
sinks = ["customer_email", "file"]
mapping = "notification"
EOF

export AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_ACCESS_KEY_ID=test \
    AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
# A killed process's consumer group members hold their partitions until their session expires;
# on loopback a short session is safe (as `orderflow run` sets for its embedded broker).
export ORDERFLOW_KAFKA_SESSION_TIMEOUT_MS=6000 ORDERFLOW_KAFKA_HEARTBEAT_INTERVAL_MS=1500
export RUST_LOG="${RUST_LOG:-warn}"
jwt_secret="$("$python" -c 'import secrets; print(secrets.token_urlsafe(48))')"

# The processes: name -> how to start it, and where it answers when it is up.
declare -A commands=() ready=()
commands[broker]="broker --data-dir $dir/broker --kafka-listen $brokers"
ready[broker]="port:$kafka_port"
if [ -z "$scylla" ]; then
    commands[pipeline]="run --brokers $brokers --http 127.0.0.1:$http_port --data-dir $shared \
        --bridge-config $dir/bridge.toml --admin-email $admin_email --admin-password $admin_password --sample-orders false"
    ready[pipeline]="$api/healthz"
else
    keyspace="crash_$(date +%s)_$$"
    store="--brokers $brokers --data-dir $shared --scylla $scylla --scylla-keyspace $keyspace"
    commands[ingest]="ingest $store --http 127.0.0.1:$http_port --admin-email $admin_email \
        --admin-password $admin_password"
    ready[ingest]="$api/healthz"
    for part in validation payment invoicing bridge; do
        port=$(free_port)
        case "$part" in
        bridge) commands[$part]="bridge $store --metrics 127.0.0.1:$port --bridge-config $dir/bridge.toml" ;;
        *) commands[$part]="process $part $store --metrics 127.0.0.1:$port" ;;
        esac
        ready[$part]="http://127.0.0.1:$port/healthz"
    done
fi
# Every API process signs with the same secret.
export ORDERFLOW_JWT_SECRET="$jwt_secret"

start() {
    local name="$1"
    # shellcheck disable=SC2086 # the command is a list of words
    "$bin" ${commands[$name]} >>"$dir/logs/$name.log" 2>&1 &
    pids[$name]=$!
    case "${ready[$name]}" in
    port:*) wait_port "${ready[$name]#port:}" ;;
    *) wait_http "${ready[$name]}" 120 ;;
    esac
}

say "in $dir: moto on :$moto_port, broker on :$kafka_port, API on :$http_port"
"$python" -m moto.server -H 127.0.0.1 -p "$moto_port" >"$dir/logs/moto.log" 2>&1 &
pids[moto]=$!
wait_http "http://127.0.0.1:$moto_port/moto-api/"
start broker
if [ -n "$scylla" ]; then
    "$bin" topics create --brokers "$brokers" --partitions 3 >/dev/null
    "$bin" migrate --scylla "$scylla" --scylla-keyspace "$keyspace" >/dev/null
fi
victims=()
for name in "${!commands[@]}"; do
    [ "$name" = broker ] || start "$name"
    [ -z "$only" ] || [[ "$only" == *",$name,"* ]] && victims+=("$name")
done
[ -z "$scylla" ] && wait_http "$api/readyz" 120

common_args="\"url\": \"$api\", \"email\": \"$admin_email\", \"password\": \"$admin_password\", \"sku\": \"$sku\", \"stock\": $stock"
"$python" "$root/scripts/crash_test.py" setup "{$common_args}"
touch "$dir/orders.jsonl"
"$python" "$root/scripts/crash_test.py" load "{$common_args, \"stop_file\": \"$dir/stop\",
    \"out\": \"$dir/orders.jsonl\", \"clients\": $clients, \"rate\": $rate,
    \"decline_share\": $decline_share, \"finish_s\": 120}" >"$dir/load.json" 2>"$dir/logs/load.log" &
pids[load]=$!

# The kills: a random process at a random moment, then started again at once (its restart is
# under load too). A process that exited without being killed is a failure of its own.
done_kills=0
unexpected=0
declare -A killed=()
sleep 2
while [ "$done_kills" -lt "$kills" ]; do
    sleep "$("$python" -c "import random; print(round(random.uniform($min_gap, $gap), 2))")"
    for name in "${victims[@]}"; do
        if ! kill -0 "${pids[$name]}" 2>/dev/null; then
            wait "${pids[$name]}" && code=0 || code=$?
            say "$name exited on its own (status $code): see $dir/logs/$name.log; starting it again"
            unexpected=$((unexpected + 1))
            start "$name"
        fi
    done
    victim="${victims[$((RANDOM % ${#victims[@]}))]}"
    kill -KILL "${pids[$victim]}"
    wait "${pids[$victim]}" 2>/dev/null || true
    done_kills=$((done_kills + 1))
    killed[$victim]=$((${killed[$victim]:-0} + 1))
    say "$(date -u +%H:%M:%S.%3N) kill $done_kills/$kills: $victim (SIGKILL)"
    sleep "$restart_delay"
    start "$victim"
done
sleep 2
touch "$dir/stop"
say "kills done; waiting for the clients to finish their orders"
wait "${pids[load]}" || { say "the load generator failed: $dir/logs/load.log"; exit 1; }
unset 'pids[load]'
say "clients saw: $(cat "$dir/load.json")"

for name in "${victims[@]}"; do
    if ! kill -0 "${pids[$name]}" 2>/dev/null; then
        say "$name exited on its own: see $dir/logs/$name.log; starting it again"
        unexpected=$((unexpected + 1))
        start "$name"
    fi
done
"$python" "$root/scripts/crash_test.py" reconcile "{$common_args, \"kills\": $done_kills,
    \"orders\": \"$dir/orders.jsonl\", \"bootstrap\": \"$brokers\", \"topic_prefix\": \"\",
    \"schemas\": \"$root/schemas/avro\", \"moto\": \"$AWS_ENDPOINT_URL\",
    \"queue_created\": \"$queue_created\", \"queue_paid\": \"$queue_paid\",
    \"notifications\": \"$shared/notifications.jsonl\", \"settle_s\": 180,
    \"strict\": $strict}" >"$dir/result.txt" \
    2> >(tee -a "$dir/logs/reconcile.log" >&2)
last="$(tail -n 1 "$dir/result.txt")"
echo "killed (SIGKILL): $(for n in "${!killed[@]}"; do printf '%s=%s ' "$n" "${killed[$n]}"; done)"
echo "clients saw: $(cat "$dir/load.json")"
[ "$unexpected" = 0 ] || echo "processes that exited without being killed: $unexpected"
head -n -1 "$dir/result.txt"
if [[ "$last" == *" lost=0 duplicates=0" ]] && [ "$unexpected" = 0 ]; then
    failed=0
else
    curl -s "$api/metrics" >"$dir/logs/metrics.txt" || true
fi
echo "$last"
exit "$failed"
