#!/usr/bin/env bash
# Tenant pipelines against admin routes, side by side in one run (BENCHMARKS.md, "Tenant
# pipelines"):
#
#   bash bench/tenants.sh [BIN_DIR] [RECORDS_PER_TENANT]
#
# Two aggregators are measured in turn on the same load: 100 senders (one per tenant, its
# namespace in the forwarder's tag), acked, 10 at a time, RECORDS_PER_TENANT records each
# (default 10000: 1M in all).
#   routes:  one [[route]] sends every record to two null outputs (2 buffers);
#   tenants: no route; 100 tenants with 2 pipelines each, one null output each (200 buffers).
# Either way every record is stored twice and fsync'd before its ack. Printed per setup: the
# aggregator's CPU seconds (utime + stime from /proc) per 1M records, its peak RSS, and for
# tenants: the RSS of 200 idle pipelines, and the time from writing one pipeline file (while
# the 199 others run and the load flows) to its new version being active.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-$ROOT/target/release}"
PER="${2:-10000}"
TENANTS=100
WORK="$(mktemp -d)"
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
trap cleanup EXIT

tag_of() { echo "kube.var.log.containers.app-0_t$1_app-$(printf '%064d' 0).log"; }

# 100 senders, 10 at a time (waiting on the senders only: the aggregator is a child too).
load() {
  local i pids=()
  for i in $(seq 0 $((TENANTS - 1))); do
    "$BIN/logferry-loadtest" forward --target "$FORWARD" --records "$PER" --batch 500 --ack \
      --tag "$(tag_of "$i")" >/dev/null &
    pids+=($!)
    if ((${#pids[@]} == 10)); then
      wait "${pids[@]}"
      pids=()
    fi
  done
}

config() {
  cat <<EOF
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[buffer]
path = "$WORK/$1/buffer"
flush_interval = "1s"
EOF
}

# routes
mkdir -p "$WORK/routes"
{
  config routes
  printf '[[route]]\nmatch = "**"\noutputs = ["a", "b"]\n[outputs.a]\ntype = "null"\n[outputs.b]\ntype = "null"\n'
} >"$WORK/routes.toml"

# tenants
mkdir -p "$WORK/tenants/pipelines"
for t in $(seq 0 $((TENANTS - 1))); do
  mkdir -p "$WORK/tenants/pipelines/t$t"
  for p in one two; do
    printf '[buffer]\ntotal_limit_size = "8MiB"\n[outputs.sink]\ntype = "null"\n' >"$WORK/tenants/pipelines/t$t/$p.toml"
  done
done
{
  config tenants
  printf '[pipelines]\ndir = "%s"\nrescan_interval = "200ms"\n' "$WORK/tenants/pipelines"
} >"$WORK/tenants.toml"

printf '| setup | records | CPU s per 1M records | of which kernel | peak RSS MiB |\n|---|---|---|---|---|\n'
for setup in routes tenants; do
  start "$setup" "$WORK/$setup.toml"
  if [ "$setup" = tenants ]; then
    for _ in $(seq 1 300); do
      active=$(curl -s "http://$ADMIN/pipelines" | grep -c '"state": "active"' || true)
      [ "$active" = $((TENANTS * 2)) ] && break
      sleep 0.1
    done
    IDLE_RSS=$(rss_kib "$PID")
  else
    BASE_RSS=$(rss_kib "$PID")
  fi
  before=$(cpu_ticks "$PID")
  sys_before=$(sys_ticks "$PID")
  if [ "$setup" = tenants ]; then
    load &
    LOAD=$!
    sleep 2
    old=$(curl -s "http://$ADMIN/pipelines/t0/one" | grep -o '"hash": "[0-9a-f]*"')
    t0=$(date +%s.%N)
    printf '[[filter]]\ntype = "add_field"\nkey = "v"\nvalue = "2"\n[buffer]\ntotal_limit_size = "8MiB"\n[outputs.sink]\ntype = "null"\n' \
      >"$WORK/tenants/pipelines/t0/.one.tmp"
    touch -d '-5 seconds' "$WORK/tenants/pipelines/t0/.one.tmp"
    mv "$WORK/tenants/pipelines/t0/.one.tmp" "$WORK/tenants/pipelines/t0/one.toml"
    while curl -s "http://$ADMIN/pipelines/t0/one" | grep -q "$old"; do sleep 0.02; done
    APPLY=$(echo "$(date +%s.%N) - $t0" | bc)
    wait "$LOAD"
  else
    load
  fi
  after=$(cpu_ticks "$PID")
  sys_after=$(sys_ticks "$PID")
  hz=$(getconf CLK_TCK)
  records=$((TENANTS * PER))
  cpu=$(echo "scale=3; ($after - $before) / $hz * 1000000 / $records" | bc)
  sys=$(echo "scale=3; ($sys_after - $sys_before) / $hz * 1000000 / $records" | bc)
  printf '| %s | %d | %s | %s | %d |\n' "$setup" "$records" "$cpu" "$sys" $(($(hwm_kib "$PID") / 1024))
  stop
done
echo
echo "200 idle pipelines: RSS $((IDLE_RSS / 1024)) MiB against $((BASE_RSS / 1024)) MiB for two admin outputs: $(((IDLE_RSS - BASE_RSS) / 200)) KiB per pipeline"
echo "one pipeline applied while 199 run under load: ${APPLY}s from file written to active (rescan_interval 200ms)"
