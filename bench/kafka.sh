#!/usr/bin/env bash
# The Kafka source, and the Kafka tier against a direct Forward path, side by side in one run
# (BENCHMARKS.md, "Kafka source"):
#
#   bash bench/kafka.sh BROKER_BIN [BIN_DIR] [RECORDS]
#
# BROKER_BIN is a Kafka-API broker started as Tansu is (`broker --listener-url ...
# --storage-engine memory://...`; scripts/test.sh installs one into .test-env). RECORDS
# (default 1000000) loadtest records of the k8s shape (about 333 bytes) go through each setup;
# every buffer has fsync = "always".
#   consume -> null:  a topic of 3 partitions, filled once by an edge aggregator (kafka output,
#                     format = "forward"), consumed by an aggregator whose output is null;
#   consume -> file:  the same topic, consumed again (a new group) into a file output;
#   direct:           logferry-loadtest --ack -> aggregator -> file;
#   through kafka:    logferry-loadtest --ack -> edge aggregator -> Kafka -> aggregator -> file.
# Printed per setup: the records/s from the first record to the last one in the final output,
# the consuming (or single) aggregator's CPU seconds (utime + stime from /proc) per 1M records,
# and for the two end-to-end setups the time from the last ack to the last record delivered.
set -euo pipefail

BROKER_BIN="${1:?usage: bench/kafka.sh BROKER_BIN [BIN_DIR] [RECORDS]}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${2:-$ROOT/target/release}"
N="${3:-1000000}"
WORK="$(mktemp -d)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap cleanup EXIT

now() { date +%s.%N; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PORT=$(free_port)
BROKER="127.0.0.1:$PORT"
(cd "$WORK" && exec "$BROKER_BIN" broker --listener-url "tcp://$BROKER" \
  --advertised-listener-url "tcp://$BROKER" --storage-engine memory://bench/) >"$WORK/broker.log" 2>&1 &
PIDS+=($!)
sleep 2

metric() {
  curl -s "http://$1/metrics" | awk -v m="$2" 'index($1, m) == 1 { s += $2 } END { printf "%d\n", s }'
}

# wait_for ADMIN METRIC VALUE: polls until the metric (summed over its series) reaches VALUE.
wait_for() {
  while [ "$(metric "$1" "$2")" -lt "$3" ]; do sleep 0.05; done
}

config() { # NAME OUTPUT_TOML [SOURCE_TOML]
  cat <<EOF
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[buffer]
path = "$WORK/$1/buffer"
fsync = "always"
[[route]]
match = "**"
outputs = ["out"]
[outputs.out]
$2
${3:-}
EOF
}

source_toml() { # GROUP
  printf '[sources.k]\ntype = "kafka"\nbrokers = "%s"\ntopics = ["%s"]\ngroup_id = "%s"\nlibrdkafka = { "session.timeout.ms" = "6000" }\n' \
    "$BROKER" "$1" "$2"
}

edge_output() { # TOPIC
  printf 'type = "kafka"\nbrokers = "%s"\ntopic = "%s"\nformat = "forward"\nkey = "kubernetes.pod_name"\n' "$BROKER" "$1"
}

load() { # TARGET RUN_ID [RECORDS]
  "$BIN/logferry-loadtest" forward --target "$1" --records "${3:-$N}" --batch 500 --connections 6 \
    --ack --run-id "$2" --json --quiet >"$WORK/$2.json"
}

# measure LABEL TARGET RUN_ID DONE: sends the load to TARGET and prints the row of the
# aggregator last started (PID, ADMIN) once its output has counted DONE records.
measure() {
  local before t0 acked t1 after
  before=$(cpu_ticks "$PID")
  t0=$(now)
  load "$2" "$3"
  acked=$(now)
  wait_for "$ADMIN" 'logferry_output_records_total{output="out"}' "$4"
  t1=$(now)
  after=$(cpu_ticks "$PID")
  printf '| %s | %d | %.0f | %.2f | %.2f s |\n' "$1" "$N" \
    "$(echo "$N / ($t1 - $t0)" | bc -l)" "$(echo "($after - $before) / $hz * 1000000 / $N" | bc -l)" \
    "$(echo "$t1 - $acked" | bc -l)"
}

hz=$(getconf CLK_TCK)
printf '| setup | records | records/s | CPU s per 1M records (consuming aggregator) | last ack to last delivered |\n|---|---|---|---|---|\n'

# Fill the topic once.
config edge "$(edge_output bench)" >"$WORK/edge.toml"
start edge "$WORK/edge.toml"
EDGE_PID=$PID
EDGE_FORWARD=$FORWARD
EDGE_ADMIN=$ADMIN
load "$EDGE_FORWARD" fill
wait_for "$EDGE_ADMIN" 'logferry_output_records_total{output="out"}' "$N"

for out in null file; do
  if [ "$out" = null ]; then otoml='type = "null"'; else otoml="type = \"file\"
path = \"$WORK/consume-$out/out\""; fi
  config "consume-$out" "$otoml" "$(source_toml bench "g-$out")" >"$WORK/consume-$out.toml"
  start "consume-$out" "$WORK/consume-$out.toml"
  before=$(cpu_ticks "$PID")
  wait_for "$ADMIN" 'logferry_kafka_consumed_records_total' 1
  t0=$(now)
  wait_for "$ADMIN" 'logferry_output_records_total{output="out"}' "$N"
  t1=$(now)
  after=$(cpu_ticks "$PID")
  printf '| consume -> %s | %d | %.0f | %.2f | |\n' "$out" "$N" \
    "$(echo "$N / ($t1 - $t0)" | bc -l)" "$(echo "($after - $before) / $hz * 1000000 / $N" | bc -l)"
  stop
done

# Direct: Forward -> aggregator -> file.
config direct "type = \"file\"
path = \"$WORK/direct/out\"" >"$WORK/direct.toml"
start direct "$WORK/direct.toml"
measure "direct: forward -> aggregator -> file" "$FORWARD" direct "$N"
stop

# Through Kafka: Forward -> edge -> Kafka -> aggregator -> file (a fresh topic).
kill -TERM "$EDGE_PID"
config edge2 "$(edge_output tier)" >"$WORK/edge2.toml"
start edge2 "$WORK/edge2.toml"
EDGE_FORWARD=$FORWARD
config tier "type = \"file\"
path = \"$WORK/tier/out\"" "$(source_toml tier g-tier)" >"$WORK/tier.toml"
# Warm-up: the first records create the topic, the consumer joins its group and takes them;
# measured from there.
WARM=1000
load "$EDGE_FORWARD" warmup "$WARM"
start tier "$WORK/tier.toml"
wait_for "$ADMIN" 'logferry_output_records_total{output="out"}' "$WARM"
measure "through kafka: forward -> edge -> Kafka -> aggregator -> file" "$EDGE_FORWARD" tier "$((N + WARM))"
echo
for run in direct tier; do
  printf '%s: loadtest ack latency ' "$run"
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); l=s["ack_latency_ms"]; print("p50 %.2f ms, p99 %.2f ms, %d records/s acked" % (l["p50_ms"], l["p99_ms"], s["records_per_sec"]))' "$WORK/$run.json"
done
