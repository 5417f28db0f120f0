# Shell helpers shared by the side-by-side scripts (bench/tenants.sh, bench/kafka.sh); sourced,
# with BIN (the binaries' directory) and WORK (a scratch directory) set. Every aggregator
# started here is in PIDS, for the caller's cleanup.

PIDS=()

# utime + stime, and stime alone, of a process in clock ticks; its RSS and peak RSS in KiB.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }

# start NAME CONFIG: runs an aggregator (log in $WORK/NAME.log) and waits for its listeners;
# sets PID, FORWARD and ADMIN.
start() {
  local log="$WORK/$1.log"
  "$BIN/logferry-aggregator" run --config "$2" --log-format json >"$log" 2>&1 &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 1 600); do
    FORWARD=$(grep -o '"listener":"forward"[^}]*"addr":"[^"]*"' "$log" | grep -o '[0-9.]*:[0-9]*' | tail -1 || true)
    ADMIN=$(grep -o '"listener":"admin","addr":"[^"]*"' "$log" | grep -o '[0-9.]*:[0-9]*' | tail -1 || true)
    [ -n "$FORWARD" ] && [ -n "$ADMIN" ] && return 0
    sleep 0.1
  done
  echo "aggregator $1 did not start" >&2
  cat "$log" >&2
  exit 1
}

# stop: SIGTERM to the aggregator last started, and waits for it.
stop() {
  kill -TERM "$PID"
  wait "$PID" 2>/dev/null || true
}

# Kills whatever is still running (for `trap cleanup EXIT`) and removes WORK.
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
