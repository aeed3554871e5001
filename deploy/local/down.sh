#!/usr/bin/env bash
# Stop what deploy/local/up.sh started and remove its state directory.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${SLUICE_STATE:-$ROOT/.sluice-local}"
[ -d "$STATE" ] || { echo "down.sh: nothing to stop ($STATE does not exist)"; exit 0; }

stop_pid() { # pidfile name
  [ -f "$1" ] || return 0
  local pid
  pid="$(cat "$1")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $2 (pid $pid)"
  fi
}
stop_pid "$STATE/sluice.pid" sluice-dp
stop_pid "$STATE/cp.pid" sluice-cp
if [ -f "$STATE/pgbin" ] && [ -d "$STATE/pg/data" ]; then
  PGBIN="$(cat "$STATE/pgbin")"
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$STATE/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  else
    "$PGBIN/pg_ctl" -D "$STATE/pg/data" -m fast -w stop >/dev/null 2>&1 || true
  fi
  echo "stopped the throwaway PostgreSQL"
fi
rm -rf "$STATE"
