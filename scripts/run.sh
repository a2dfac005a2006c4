#!/usr/bin/env bash
# Runs Loom in the foreground. Unless LOOM_MONGODB_URI is set, the local
# database is started first and stopped with Loom (Ctrl-C or SIGTERM):
# FerretDB (the MongoDB wire protocol) over PostgreSQL, its cluster created
# once under $LOOM_DATA_DIR/postgres by scripts/postgres.sh; or, with
# LOOM_LOCAL_DB=sqlite, FerretDB over SQLite files under $LOOM_DATA_DIR/ferretdb.
# The HTTP door (OpenAI's Conversations and Responses APIs) listens on
# 127.0.0.1:8080 unless LOOM_HTTP_LISTEN says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FERRETDB=${FERRETDB:-.tools/bin/ferretdb}
DATA_DIR=${LOOM_DATA_DIR:-./.data}
LOCAL_DB=${LOOM_LOCAL_DB:-postgresql}
export ORT_DISABLE_TELEMETRY=1
# The OpenAI-shaped HTTP door; LOOM_HTTP_LISTEN= (empty) turns it off.
export LOOM_HTTP_LISTEN=${LOOM_HTTP_LISTEN-127.0.0.1:8080}

pg_dir=""
ferret_pid=""
loom_pid=""
stop_all() {
  set +e
  if [[ -n "$loom_pid" ]]; then kill -TERM "$loom_pid" 2>/dev/null; wait "$loom_pid" 2>/dev/null; fi
  if [[ -n "$ferret_pid" ]]; then kill "$ferret_pid" 2>/dev/null; wait "$ferret_pid" 2>/dev/null; fi
  if [[ -n "$pg_dir" ]]; then scripts/postgres.sh stop "$pg_dir"; fi
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ -z "${LOOM_MONGODB_URI:-}" ]]; then
  port=${LOOM_FERRETDB_PORT:-27017}
  mkdir -p "$DATA_DIR/ferretdb"
  state_dir=$(cd "$DATA_DIR/ferretdb" && pwd)
  case "$LOCAL_DB" in
    postgresql)
      pg_dir="$(cd "$DATA_DIR" && pwd)/postgres"
      storage=(--handler=postgresql "--postgresql-url=$(scripts/postgres.sh start "$pg_dir")")
      where="PostgreSQL in $pg_dir" ;;
    sqlite)
      # FerretDB's own pragmas (WAL, an fsync per commit): synchronous(normal)
      # measured no faster here, where FerretDB's CPU is the limit.
      storage=(--handler=sqlite "--sqlite-url=file:$state_dir/")
      where="SQLite in $state_dir" ;;
    *) echo "LOOM_LOCAL_DB must be postgresql or sqlite, not '$LOCAL_DB'" >&2; exit 2 ;;
  esac
  "$FERRETDB" "${storage[@]}" --state-dir="$state_dir" \
    --telemetry=disable --listen-addr="127.0.0.1:$port" --log-level=warn --debug-addr=- \
    >"$state_dir/ferretdb.log" 2>&1 &
  ferret_pid=$!
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 "$ferret_pid" 2>/dev/null || { echo "FerretDB failed to start; see $state_dir/ferretdb.log" >&2; exit 1; }
    sleep 0.1
  done
  export LOOM_MONGODB_URI="mongodb://127.0.0.1:$port"
  # Below FerretDB's own pool (50 connections to PostgreSQL, 100 to SQLite):
  # as many concurrent updates as it has connections lock it up for good
  # (service/store/mongo.py, connect).
  export LOOM_MONGODB_MAX_POOL=${LOOM_MONGODB_MAX_POOL:-40}
  echo "FerretDB on $LOOM_MONGODB_URI over $where" >&2
fi
"$PY" -m service "$@" &
loom_pid=$!
wait "$loom_pid"
