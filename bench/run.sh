#!/usr/bin/env bash
# logferry's benchmark suite: builds the release binaries, then runs the scenarios with
# `logferry-bench run` and prints one markdown table (also written to <out>/results.md, with
# results.json, every process's log, and the soak's soak.json + soak.svg chart).
#
#   bash bench/run.sh                      # the full suite (about 20 minutes: a 10-minute soak)
#   bash bench/run.sh --quick              # a smoke run with small sizes (about a minute)
#   bash bench/run.sh --scenarios ingest,file,file-gzip,latency
#   bash bench/run.sh --soak-duration 2m --out bench/results/today
#
# Scenarios: ceiling (the generator against a discarding sink), ingest (a0), file (a),
# file-gzip (b), pods (c), latency (d), soak (e). Every argument goes to `logferry-bench run`
# (see `logferry-bench run --help`). BENCH_BIN_DIR=DIR skips the build and uses the binaries in
# DIR; BENCH_PROFILE picks another cargo profile (default release).
#
# Run it on an otherwise idle machine: the figures are ratios measured in one run, and other load
# on the 2 cores moves them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN_DIR="$BENCH_BIN_DIR"
else
  PROFILE="${BENCH_PROFILE:-release}"
  echo "[bench] cargo build --profile $PROFILE (aggregator, forwarder, loadtest)" >&2
  cargo build --profile "$PROFILE" -p logferry-aggregator -p logferry-forwarder -p logferry-loadtest --bins
  BIN_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
fi

exec "$BIN_DIR/logferry-bench" run --bin-dir "$BIN_DIR" "$@"
