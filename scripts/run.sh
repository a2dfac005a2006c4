#!/usr/bin/env bash
# Runs Loom in the foreground. Unless LOOM_MONGODB_URI is set, a local FerretDB
# (MongoDB wire protocol over SQLite, files under $LOOM_DATA_DIR/ferretdb) is
# started first and stopped with Loom on Ctrl-C. The HTTP door (OpenAI's
# Conversations and Responses APIs) listens on 127.0.0.1:8080 unless
# LOOM_HTTP_LISTEN says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
FERRETDB=${FERRETDB:-.tools/bin/ferretdb}
DATA_DIR=${LOOM_DATA_DIR:-./.data}
export ORT_DISABLE_TELEMETRY=1
# The OpenAI-shaped HTTP door; LOOM_HTTP_LISTEN= (empty) turns it off.
export LOOM_HTTP_LISTEN=${LOOM_HTTP_LISTEN-127.0.0.1:8080}

if [[ -z "${LOOM_MONGODB_URI:-}" ]]; then
  port=${LOOM_FERRETDB_PORT:-27017}
  mkdir -p "$DATA_DIR/ferretdb"
  db_dir=$(cd "$DATA_DIR/ferretdb" && pwd)
  "$FERRETDB" --handler=sqlite --sqlite-url="file:$db_dir/" --state-dir="$db_dir" \
    --telemetry=disable --listen-addr="127.0.0.1:$port" --log-level=warn --debug-addr=- \
    >"$db_dir/ferretdb.log" 2>&1 &
  ferret_pid=$!
  trap 'kill $ferret_pid 2>/dev/null; wait $ferret_pid 2>/dev/null' EXIT
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    kill -0 $ferret_pid 2>/dev/null || { echo "FerretDB failed to start; see $db_dir/ferretdb.log" >&2; exit 1; }
    sleep 0.1
  done
  export LOOM_MONGODB_URI="mongodb://127.0.0.1:$port"
  echo "FerretDB on $LOOM_MONGODB_URI (data in $db_dir)" >&2
fi
"$PY" -m service "$@" &
loom_pid=$!
trap 'kill -TERM $loom_pid 2>/dev/null; wait $loom_pid 2>/dev/null; kill ${ferret_pid:-} 2>/dev/null; wait ${ferret_pid:-} 2>/dev/null' EXIT INT TERM
wait $loom_pid
