#!/usr/bin/env bash
# Start Sluice locally: a throwaway PostgreSQL (or --target DSN), sluice-cp
# on its embedded store with the example configuration (deploy/local/
# config.yaml: a connection, a generated API key, a group, a policy),
# dev TLS certificates and sluice-dp subscribed to the control plane; then
# print how to connect.
#
#   deploy/local/up.sh                    # throwaway PostgreSQL (with a demo table) in the state dir
#   deploy/local/up.sh --target postgresql://user:pass@host:5432/db
#   deploy/local/down.sh                  # stop everything up.sh started
#
# Env: SLUICE_PORT (default 6432), SLUICE_ADMIN_PORT (9187), SLUICE_CP_PORT
# (7600; sluicectl's default control plane is http://127.0.0.1:7600), SLUICE_STATE
# (state dir, default <repo>/.sluice-local), SLUICE_WORKERS (0 = per core).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STATE="${SLUICE_STATE:-$ROOT/.sluice-local}"
TARGET_DSN=""
DEMO_TABLE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) TARGET_DSN="${2:?--target needs a DSN}"; shift 2 ;;
    --target=*) TARGET_DSN="${1#--target=}"; shift ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "up.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'up.sh: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
need_apt=()
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
if [ -z "$TARGET_DSN" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "missing packages: ${need_apt[*]} (run as root to install them)"
  log "installing ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || die "cargo is required (https://rustup.rs)"

if [ -f "$STATE/cp.pid" ] && kill -0 "$(cat "$STATE/cp.pid")" 2>/dev/null; then
  die "already running (state in $STATE); run deploy/local/down.sh first"
fi
if [ -f "$STATE/sluice.pid" ] && kill -0 "$(cat "$STATE/sluice.pid")" 2>/dev/null; then
  die "already running (state in $STATE); run deploy/local/down.sh first"
fi
# The throwaway PostgreSQL of an earlier run (its gateway and control plane
# may have exited): removing the state directory under it would leave it
# running with no way for down.sh to find it.
if [ -f "$STATE/pg/data/postmaster.pid" ] &&
   kill -0 "$(head -1 "$STATE/pg/data/postmaster.pid")" 2>/dev/null; then
  die "the PostgreSQL of an earlier run is still running (state in $STATE); run deploy/local/down.sh first"
fi

log "building sluice-dp, sluice-cp, sluicectl (release)"
(cd "$ROOT" && cargo build --release -q -p dataplane --bin sluice-dp -p controlplane --bin sluice-cp --bin sluicectl)
BIN="$ROOT/target/release/sluice-dp"
CP_BIN="$ROOT/target/release/sluice-cp"
CTL="$ROOT/target/release/sluicectl"

rm -rf "$STATE"
mkdir -p "$STATE"
chmod 700 "$STATE"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}

# --- target PostgreSQL ------------------------------------------------------
if [ -z "$TARGET_DSN" ]; then
  PGBIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
  PGPORT="$(pick_port 54320)"
  PGDIR="$STATE/pg"
  mkdir -p "$PGDIR"
  DB_PASSWORD="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
  echo "$DB_PASSWORD" >"$PGDIR/pw"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    chown -R postgres: "$PGDIR"
    chmod 711 "$STATE"
    as_pg=(runuser -u postgres --)
  fi
  log "starting a throwaway PostgreSQL on 127.0.0.1:$PGPORT"
  "${as_pg[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -A scram-sha-256 --pwfile="$PGDIR/pw" \
    -U postgres --no-sync >"$PGDIR/initdb.log" 2>&1 || die "initdb failed: see $PGDIR/initdb.log"
  "${as_pg[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/pg.log" -w \
    -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1 -c max_connections=500" start >/dev/null \
    || die "PostgreSQL did not start: see $PGDIR/pg.log"
  echo "$PGBIN" >"$STATE/pgbin"
  TARGET_HOST=127.0.0.1 TARGET_PORT=$PGPORT TARGET_USER=postgres TARGET_PASSWORD=$DB_PASSWORD TARGET_DB=postgres
  TARGET_DSN_SHOWN="postgresql://postgres:$DB_PASSWORD@127.0.0.1:$PGPORT/postgres"
  # A small demo table (made-up values) to see masking on; only in the
  # throwaway PostgreSQL, never in a --target database.
  log "creating the demo table customers"
  PGPASSWORD="$DB_PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres \
    >"$PGDIR/demo.log" 2>&1 <<'SQL' || die "could not create the demo table: see $PGDIR/demo.log"
create table customers (
  id int primary key, name text, email text, ssn text, card text, phone text,
  api_secret text, profile jsonb, note text);
insert into customers values
  (1, 'Ann Lee', 'ann@example.com', '123-45-6789', '4111 1111 1111 1111', '+1 415-555-2671',
   'as_9f8e7d6c5b4a', '{"city": "Paris", "db_password": "hunter2"}', 'renewal due, no secrets here'),
  (2, 'Bo Chen', 'bo.chen@example.org', '987-65-4321', '5555 5555 5555 4444', '+44 20 7946 0958',
   'as_0a1b2c3d4e5f', '{"city": "Leeds", "db_password": "tr0ub4dor"}', 'key AKIAIOSFODNN7EXAMPLE pasted by mistake');
SQL
  DEMO_TABLE=customers
else
  re='^postgres(ql)?://([^:@/]+)(:([^@]*))?@([^:/?]+)(:([0-9]+))?/([^?]+)'
  [[ "$TARGET_DSN" =~ $re ]] || die "--target must look like postgresql://user:password@host:port/database"
  TARGET_USER="${BASH_REMATCH[2]}" TARGET_PASSWORD="${BASH_REMATCH[4]}"
  TARGET_HOST="${BASH_REMATCH[5]}" TARGET_PORT="${BASH_REMATCH[7]:-5432}" TARGET_DB="${BASH_REMATCH[8]}"
  TARGET_DSN_SHOWN="$TARGET_DSN"
fi

# --- control plane and configuration ------------------------------------------
CP_PORT="$(pick_port "${SLUICE_CP_PORT:-7600}")"
CP_URL="http://127.0.0.1:$CP_PORT"
log "starting sluice-cp on $CP_URL (embedded store in $STATE/cp)"
nohup "$CP_BIN" --listen "127.0.0.1:$CP_PORT" --plaintext --data-dir "$STATE/cp" \
  >"$STATE/sluice-cp.log" 2>&1 &
echo $! >"$STATE/cp.pid"
for _ in $(seq 1 100); do
  "$CTL" --control-plane "$CP_URL" version >/dev/null 2>&1 && break
  kill -0 "$(cat "$STATE/cp.pid")" 2>/dev/null || { cat "$STATE/sluice-cp.log" >&2; die "sluice-cp exited"; }
  sleep 0.1
done
"$CTL" --control-plane "$CP_URL" version >/dev/null || die "sluice-cp not answering: see $STATE/sluice-cp.log"

# Fill in the example configuration (the password only in the state dir).
esc() { printf '%s' "$1" | sed -e 's/[\\/&|]/\\&/g'; }
sed -e "s|\${TARGET_HOST}|$(esc "$TARGET_HOST")|" -e "s|\${TARGET_PORT}|$TARGET_PORT|" \
    -e "s|\${TARGET_DB}|$(esc "$TARGET_DB")|" -e "s|\${TARGET_USER}|$(esc "$TARGET_USER")|" \
    -e "s|\${TARGET_PASSWORD}|$(esc "$TARGET_PASSWORD")|" \
    "$ROOT/deploy/local/config.yaml" >"$STATE/config.yaml"
chmod 600 "$STATE/config.yaml"
log "applying deploy/local/config.yaml"
APPLY="$("$CTL" --control-plane "$CP_URL" apply -f "$STATE/config.yaml")" || die "apply failed"
printf '%s\n' "$APPLY" | grep -v 'key:' >&2 || true
API_KEY="$(sed -n 's/^ *key: \(sk_[A-Za-z0-9_-]*\).*/\1/p' <<<"$APPLY")"
[ -n "$API_KEY" ] || die "no API key in the apply output"
IDENTITY=agent
CONNECTION=demo

"$BIN" dev-certs --dir "$STATE/certs" >/dev/null
PORT="$(pick_port "${SLUICE_PORT:-6432}")"
ADMIN_PORT="$(pick_port "${SLUICE_ADMIN_PORT:-9187}")"
cat >"$STATE/sluice.yaml" <<YAML
# Written by deploy/local/up.sh. See dataplane/src/config.rs for every field.
# Connections, identities and grants come from the control plane.
listen: ["127.0.0.1:$PORT"]
admin_listen: "127.0.0.1:$ADMIN_PORT"
workers: ${SLUICE_WORKERS:-0}
tls:
  cert_file: certs/server.pem
  key_file: certs/server.key
control_plane:
  urls: ["$CP_URL"]
  node_name: local-1
YAML

log "starting sluice-dp on 127.0.0.1:$PORT (admin on $ADMIN_PORT)"
nohup "$BIN" --config "$STATE/sluice.yaml" >"$STATE/sluice.log" 2>&1 &
echo $! >"$STATE/sluice.pid"
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1; then break; fi
  kill -0 "$(cat "$STATE/sluice.pid")" 2>/dev/null || { cat "$STATE/sluice.log" >&2; die "sluice-dp exited"; }
  sleep 0.1
done
curl -fsS "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null || die "sluice-dp not ready: see $STATE/sluice.log"

URL="postgresql://$IDENTITY:$API_KEY@127.0.0.1:$PORT/$CONNECTION?sslmode=require"
echo "$URL" >"$STATE/url"
DEMO_HINT=""
if [ -n "$DEMO_TABLE" ]; then
  DEMO_HINT="
See masking on the demo table (the direct target below shows the originals):
  psql \"$URL\" -c 'select * from $DEMO_TABLE'
"
fi
cat <<MSG

Sluice is running (state, logs and config in $STATE).

Connect through the gateway:
  psql "$URL"
$DEMO_HINT
Verify the gateway's certificate too:
  psql "postgresql://$IDENTITY:$API_KEY@127.0.0.1:$PORT/$CONNECTION?sslmode=verify-full&sslrootcert=$STATE/certs/ca.pem"

Direct target (the credentials only the gateway should hold):
  $TARGET_DSN_SHOWN

Control plane ($CP_URL, embedded store):
  export SLUICE_CONTROL_PLANE=$CP_URL
  $CTL get policies
  $CTL nodes
  $CTL apply -f FILE.yaml      # documents like deploy/local/config.yaml

Metrics: curl http://127.0.0.1:$ADMIN_PORT/metrics
Stop:    deploy/local/down.sh
MSG
