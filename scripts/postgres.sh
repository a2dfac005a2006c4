#!/usr/bin/env bash
# The local PostgreSQL that FerretDB stores Loom's data in: one cluster in one
# folder, created on first start, reached through a Unix socket in that
# folder (no TCP port, so clusters of several checkouts never collide).
#
#   scripts/postgres.sh start DIR        create the cluster if DIR has none, start it,
#                                        print FerretDB's --postgresql-url
#   scripts/postgres.sh createdb DIR DB  one more database (tests give each FerretDB its own)
#   scripts/postgres.sh psql DIR DB ARGS...  psql as the cluster's superuser
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh check            print where PostgreSQL's programs are, or fail
#
# PostgreSQL refuses to run as root: run by root, the cluster belongs to
# LOOM_POSTGRES_USER (default postgres, created if missing). LOOM_POSTGRES_BIN
# names the folder of initdb and pg_ctl when they are not found by themselves.
set -euo pipefail
GIN_TWINS_SQL=$(cd "$(dirname "$0")" && pwd)/postgres-gin-twins.sql
DB_USER=${LOOM_POSTGRES_USER:-postgres}
ROLE=loom  # the superuser initdb creates; trusted on the socket only

die() { echo "postgres.sh: $*" >&2; exit 1; }

# The programs of the newest PostgreSQL, or of the version that made the
# cluster in $1 if there is one (a newer server cannot open its files).
pg_bin() {
  local dir version
  if [[ -n "${LOOM_POSTGRES_BIN:-}" ]]; then echo "$LOOM_POSTGRES_BIN"; return; fi
  version=$(cat "${1:-}/data/PG_VERSION" 2>/dev/null || true)
  if [[ -n "$version" && -x "/usr/lib/postgresql/$version/bin/initdb" ]]; then
    echo "/usr/lib/postgresql/$version/bin"
    return
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [[ -n "$dir" && -x "$dir/initdb" ]]; then echo "$dir"; return; fi
  if command -v initdb >/dev/null; then dirname "$(command -v initdb)"; return; fi
  die "PostgreSQL not found: install it (Debian: apt-get install postgresql) or set LOOM_POSTGRES_BIN"
}

# Runs a command as the cluster's owner: ourselves, or DB_USER when we are root.
as_owner() {
  if [[ $(id -u) -ne 0 ]]; then "$@"; else runuser -u "$DB_USER" -- "$@"; fi
}

# Root only: the owner exists, owns DIR and can reach it.
prepare_owner() {
  local dir=$1
  [[ $(id -u) -eq 0 ]] || return 0
  id "$DB_USER" >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$DB_USER"
  chown "$DB_USER" "$dir"
  chmod 700 "$dir"
  runuser -u "$DB_USER" -- test -w "$dir" ||
    die "$DB_USER cannot reach $dir (a parent folder is closed to it); use a LOOM_DATA_DIR it can reach"
}

# Settings of a development and test database; the README states what they promise.
write_settings() {
  cat >>"$1/postgresql.conf" <<'EOF'

# Loom's local database (scripts/postgres.sh)
listen_addresses = ''
# A commit returns before its WAL is flushed: a crash of PostgreSQL or of the
# machine can lose the last few hundred milliseconds of commits, never
# consistency (fsync stays on).
synchronous_commit = off
# PostgreSQL's default, kept small on a machine shared with other work: the
# operating system's page cache holds the rest of what is read often.
shared_buffers = 128MB
# Room for several FerretDBs (tests start one per fleet beside their own),
# each with a pool sized above its clients' (tests/support/fleet.py).
max_connections = 200
# Loom's queries are short; compiling them would cost more than it saves.
jit = off
# Fresh statistics sooner after a burst of writes: without them the planner
# can pick the GIN twin of a filter that matches every row.
autovacuum_naptime = 10s
EOF
}

psql_in() {
  local dir=$1 db=$2
  shift 2
  "$BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$dir" -U "$ROLE" -d "$db" "$@"
}

start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  prepare_owner "$dir"
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    as_owner "$BIN/initdb" -D "$dir/data" -U "$ROLE" --auth=trust -E UTF8 --locale=C --no-sync \
      >"$dir/initdb.log" 2>&1 || die "initdb failed; see $dir/initdb.log"
    write_settings "$dir/data"
  fi
  if ! as_owner "$BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -o "-k '$dir'" -w -t 60 -s start ||
      die "PostgreSQL did not start; see $dir/postgres.log"
  fi
  # Checked on every start, not only after initdb: a first start may have
  # been cut short between the two.
  if [[ -z $(psql_in "$dir" template1 -At -c "SELECT 1 FROM pg_event_trigger LIMIT 1") ]]; then
    psql_in "$dir" template1 -f "$GIN_TWINS_SQL" >/dev/null
  fi
  if [[ -z $(psql_in "$dir" postgres -At -c "SELECT 1 FROM pg_database WHERE datname = 'ferretdb'") ]]; then
    psql_in "$dir" postgres -c "CREATE DATABASE ferretdb"
  fi
  url "$dir" ferretdb
}

url() { echo "postgres://$ROLE@/$2?host=$1"; }

createdb() {
  local dir
  dir=$(cd "$1" && pwd)
  psql_in "$dir" postgres -c "CREATE DATABASE \"$2\""
  url "$dir" "$2"
}

stop() {
  local dir=$1
  [[ -f "$dir/data/PG_VERSION" ]] || return 0
  if as_owner "$BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
    as_owner "$BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 -s stop
  fi
}

BIN=$(pg_bin "${2:-}")
case "${1:-}" in
  start) [[ $# -eq 2 ]] || die "usage: $0 start DIR"; start "$2" ;;
  createdb) [[ $# -eq 3 ]] || die "usage: $0 createdb DIR DB"; createdb "$2" "$3" ;;
  psql) [[ $# -ge 3 ]] || die "usage: $0 psql DIR DB [ARGS...]"; psql_in "$2" "$3" "${@:4}" ;;
  stop) [[ $# -eq 2 ]] || die "usage: $0 stop DIR"; stop "$2" ;;
  check) echo "$BIN" ;;
  *) die "usage: $0 start|createdb|psql|stop|check DIR [DB]" ;;
esac
