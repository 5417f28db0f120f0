#!/usr/bin/env bash
# Forwarder benchmark: tail -> logferry-forwarder -> logferry-aggregator (acked, null output).
#
#   cargo build --release -p logferry-forwarder -p logferry-aggregator
#   bash forwarder/bench/run.sh                 # LINES=2000000 by default
#
# 1. Throughput: a docker json-file log of LINES lines (200-byte messages, kubelet file name)
#    is written first; the forwarder (release, default config: fsync "always" buffer, acks)
#    is started under /usr/bin/time -v and stopped with SIGTERM once every line was acked.
#    Reports lines/s (start to last ack), CPU seconds per 1M lines, peak RSS.
# 2. Idle: 100 files of 10 lines each; after 10 s, RSS and CPU used over the next 10 s.
# The aggregator runs on the same 2 cores (null output, fsync "always"), as the receiver.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="${BIN:-$ROOT/target/release}"
LINES="${LINES:-2000000}"
W="$(mktemp -d /tmp/lf-fwd-bench.XXXXXX)"
PIDS=()
cleanup() { for p in "${PIDS[@]+"${PIDS[@]}"}"; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
metric() { # metric NAME ADMIN_PORT -> value (sum over label sets)
  curl -s "http://127.0.0.1:$2/metrics" | awk -v n="$1" '$1==n || index($1, n"{")==1 {s+=$2} END {printf "%d\n", s}'
}
ID=4f7e3b2a1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f

AGG_PORT=$(port); AGG_ADMIN=$(port); FWD_ADMIN=$(port)
cat >"$W/agg.toml" <<TOML
[server]
listen = "127.0.0.1:$AGG_PORT"
[admin]
listen = "127.0.0.1:$AGG_ADMIN"
[buffer]
path = "$W/aggbuf"
[[route]]
match = "**"
outputs = ["null"]
[outputs.null]
type = "null"
TOML
mkdir -p "$W/logs"
cat >"$W/fwd.toml" <<TOML
[input]
paths = ["$W/logs/*.log"]
[kubernetes]
merge_log = false
[buffer]
path = "$W/fwdbuf"
[output]
servers = ["127.0.0.1:$AGG_PORT"]
[admin]
listen = "127.0.0.1:$FWD_ADMIN"
TOML

echo "== writing $LINES docker json-file lines"
python3 - "$W/logs/web-1_shop_nginx-$ID.log" "$LINES" <<'PY'
import sys, time
path, n = sys.argv[1], int(sys.argv[2])
pad = "x" * 180
t0 = time.time()
with open(path, "w") as f:
    buf = []
    for i in range(n):
        t = t0 + i * 1e-6
        secs = int(t); nanos = int((t - secs) * 1e9)
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + ".%09dZ" % nanos
        buf.append('{"log":"line %010d %s\\n","stream":"stdout","time":"%s"}\n' % (i, pad, ts))
        if len(buf) == 10000:
            f.write("".join(buf)); buf = []
    f.write("".join(buf))
PY
ls -la "$W/logs"

"$BIN/logferry-aggregator" run --config "$W/agg.toml" >"$W/agg.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$AGG_ADMIN/readyz" >/dev/null && break; sleep 0.1; done

echo "== throughput"
START=$(date +%s.%N)
/usr/bin/time -v "$BIN/logferry-forwarder" run --config "$W/fwd.toml" >"$W/fwd.log" 2>"$W/fwd.time" &
TPID=$!
PIDS+=($TPID)
sleep 0.5
FPID=$(pgrep -P "$TPID" logferry-forwar || true)
while :; do
  done_n=$(metric logferry_output_records_total "$FWD_ADMIN" 2>/dev/null || echo 0)
  [ "${done_n:-0}" -ge "$LINES" ] && break
  sleep 0.05
done
END=$(date +%s.%N)
kill -TERM "$FPID"
wait "$TPID" || true
python3 - "$START" "$END" "$LINES" "$W/fwd.time" <<'PY'
import sys, re
start, end, n, tf = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
t = open(tf).read()
user = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1))
sys_ = float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
print(f"lines={n} elapsed_to_last_ack={end-start:.2f}s lines_per_s={n/(end-start):,.0f}")
print(f"cpu user={user:.2f}s sys={sys_:.2f}s cpu_s_per_1M_lines={(user+sys_)/n*1e6:.3f}")
print(f"peak_rss={rss/1024:.1f}MiB")
PY

echo "== idle with 100 files"
rm -rf "$W/logs" "$W/fwdbuf"; mkdir -p "$W/logs"
for i in $(seq 100); do
  for j in $(seq 10); do echo "2024-01-01T00:00:0$((j-1)).$(printf %09d "$i")Z stdout F pod $i idle line $j"; done >"$W/logs/pod-$i""_ns_c-$ID.log"
done
"$BIN/logferry-forwarder" run --config "$W/fwd.toml" >"$W/fwd-idle.log" 2>&1 &
IPID=$!
PIDS+=($IPID)
sleep 10
ticks() { awk '{print $14+$15}' "/proc/$IPID/stat"; }
T0=$(ticks); sleep 10; T1=$(ticks)
HZ=$(getconf CLK_TCK)
echo "files=$(metric logferry_tail_files "$FWD_ADMIN")"
grep -E "VmRSS|VmHWM|RssAnon|RssFile" "/proc/$IPID/status"
python3 -c "print(f'idle_cpu_ms_per_s={($T1-$T0)/$HZ*1000/10:.2f}')"
kill -TERM "$IPID"; wait "$IPID" || true
