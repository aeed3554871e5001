#!/usr/bin/env bash
# What the column catalog read costs a new connection: pgbench with a new
# connection per transaction (`-C -S`) through three sluice-dp instances that
# differ only in `limits`: `off` (column_origins: false), `cached` (the
# default: each worker reuses its read for 60 s) and `every`
# (column_origins_max_age_ms: 0, a read at every login). All three mask with
# the built-in default profile, whose name rules make the read happen.
# Contenders are interleaved (off -> cached -> every) for ROUNDS rounds; the
# script prints the median connections per second of each and the median
# (min-max) of the per-round ratios to `off`, and the reads each instance did
# (sluice_column_catalog_reads_total). Results: bench/RESULTS.md section 12.
# WORKLOAD=ddl instead keeps each client's session open and runs, per
# transaction, `CREATE OR REPLACE VIEW` of the client's own view over t1 and a
# SELECT from it, at a fixed rate (RATE per second, all clients), and prints
# the mean latency of a transaction: what a session's own catalog read after
# each schema change adds (none with `off`). At a fixed rate every contender
# leaves the catalog the same dead rows (replaced views), which an unlimited
# `off` would pile up for the others.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CLIENTS=${CLIENTS:-4}
ROUNDS=${ROUNDS:-7}
SECS=${SECS:-5}
THREADS=${THREADS:-2}
TABLES=${TABLES:-200}
VIEWS=${VIEWS:-0}
FUNCTIONS=${FUNCTIONS:-0}
WORKLOAD=${WORKLOAD:-connect}
RATE=${RATE:-40}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS THREADS=$THREADS"
    echo "  TABLES=$TABLES (extra tables of 12 columns, 2 of them secret-named, so the catalog is not trivial)"
    echo "  VIEWS=$VIEWS (views over those tables, each renaming one secret column and computing from the other,"
    echo "    which the login's view read follows; at most TABLES)"
    echo "  FUNCTIONS=$FUNCTIONS (PL/pgSQL functions returning text, which the view read reads too)"
    echo "  WORKLOAD=$WORKLOAD (connect: pgbench -C -S; ddl: open sessions, CREATE OR REPLACE VIEW + SELECT from it)"
    echo "  RATE=$RATE (WORKLOAD=ddl: transactions per second, all clients together)"
    echo "  SLUICE_WORKERS, SLUICE_BIN, SLUICE_BUILD=0|1, PGBIN, KEEP_WORK=1, OUT=<dir>"
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"
[[ $WORKLOAD == connect || $WORKLOAD == ddl ]] || die "WORKLOAD must be connect or ddl, got '$WORKLOAD'"
[[ $WORKLOAD == connect ]] || ((TABLES >= 1)) || die "WORKLOAD=ddl needs TABLES >= 1"
for v in CLIENTS ROUNDS SECS THREADS TABLES VIEWS FUNCTIONS RATE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1 && SECS >= 1 && THREADS >= 1 && CLIENTS >= 1)) || die "ROUNDS, SECS, THREADS and CLIENTS must be at least 1"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-origins.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/connect_origins.csv
require_cmd pgbench psql awk sed curl
e2e_init
write_meta "$OUT/meta.txt"
echo "CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS THREADS=$THREADS TABLES=$TABLES VIEWS=$VIEWS FUNCTIONS=$FUNCTIONS WORKLOAD=$WORKLOAD SLUICE_WORKERS=${SLUICE_WORKERS:-default}" >>"$OUT/meta.txt"
log "output dir: $OUT; about $((ROUNDS * 3 * SECS)) s of runs"

ensure_sluice_bin
start_pg 200
pgbench_init 1
log "creating $TABLES tables of 12 columns"
psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -q >"$WORK/tables.log" 2>&1 <<EOF || { show_tail "$WORK/tables.log"; die "creating tables failed"; }
DO \$\$ BEGIN
  FOR i IN 1..$TABLES LOOP
    EXECUTE format('CREATE TABLE t%s (id int, name text, email text, phone text, street text, city text,
                    zip text, created timestamptz, total numeric, api_secret text, note text, reset_token text)', i);
  END LOOP;
  FOR i IN 1..LEAST($VIEWS, $TABLES) LOOP
    EXECUTE format('CREATE VIEW v%s AS SELECT id, name, api_secret AS k, upper(reset_token) AS r,
                    city || '' '' || zip AS place FROM t%s WHERE total > 0', i, i);
  END LOOP;
  FOR i IN 1..$FUNCTIONS LOOP
    EXECUTE format('CREATE FUNCTION f%s(k int) RETURNS text LANGUAGE plpgsql STABLE AS \$f\$
      DECLARE r text;
      BEGIN
        SELECT name || '' <'' || email || ''> '' || city INTO r FROM t1 WHERE id = k;
        IF r IS NULL THEN RAISE NOTICE ''no customer %%'', k; END IF;
        RETURN r;
      END \$f\$', i);
  END LOOP;
END \$\$;
EOF
if [[ $WORKLOAD == ddl ]]; then
    psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -qc \
        "INSERT INTO t1 VALUES (1, 'Ann Lee', 'ann@example.com', '555-0100', '1 Main St', 'Springfield', '12345', now(), 10, 'zq81-ALPHA-omega', 'vip', 'tok')" ||
        die "seeding t1 failed"
    cat >"$OUT/ddl.sql" <<'EOF'
CREATE OR REPLACE VIEW sv_:client_id AS SELECT id, name, api_secret AS k FROM t1;
SELECT name, k FROM sv_:client_id LIMIT 1;
EOF
    BENCH_ARGS=(-f "$OUT/ddl.sql" -R "$RATE")
    UNIT="mean latency in ms of CREATE OR REPLACE VIEW + SELECT from it, $RATE per second, open sessions"
    PICK='s/^latency average = \([0-9.]*\) ms.*/\1/p'
else
    BENCH_ARGS=(-C -S)
    UNIT="connections per second (pgbench -C -S)"
    PICK='s/^tps = \([0-9.]*\).*/\1/p'
fi
cols=$(psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -tAc "SELECT count(*) FROM pg_attribute")
echo "pg_attribute rows: $cols" >>"$OUT/meta.txt"

declare -A PORT ADMIN KEY
for k in off cached every; do
    case $k in
    off) SLUICE_EXTRA_YAML='limits: { column_origins: false }' ;;
    cached) SLUICE_EXTRA_YAML='' ;;
    every) SLUICE_EXTRA_YAML='limits: { column_origins_max_age_ms: 0 }' ;;
    esac
    SLUICE_NAME=sluice-$k start_sluice plain
    PORT[$k]=$SLUICE_PORT ADMIN[$k]=$SLUICE_ADMIN_PORT KEY[$k]=$SLUICE_KEY
    E2E_EXTRA_PIDS+=("sluice-$k:$SLUICE_PID")
done

echo "round,contender,tps" >"$CSV"
for ((r = 1; r <= ROUNDS; r++)); do
    for k in off cached every; do
        tps=$(PGPASSWORD=${KEY[$k]} pgbench -n "${BENCH_ARGS[@]}" -M simple -c "$CLIENTS" -j "$THREADS" -T "$SECS" \
            -h 127.0.0.1 -p "${PORT[$k]}" -U agent "$BENCH_DB" 2>>"$OUT/pgbench.log" |
            sed -n "$PICK" | head -n 1)
        [[ -n $tps ]] || { tail -n 20 "$OUT/pgbench.log" >&2; die "pgbench through $k gave no tps"; }
        echo "$r,$k,$tps" >>"$CSV"
        log "round $r $k: $tps"
    done
done

reads() {
    curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[$1]}/metrics" |
        awk '/^sluice_column_catalog_reads_total/ { s = s " " $0 } END { print s }'
}
{
    echo "$UNIT, c$CLIENTS, ${SECS}s, median of $ROUNDS rounds; ratio to off per round, median [min-max]"
    awk -F, "$AWK_MEDIAN"'
        NR > 1 { t[$2, $1] = $3; n[$2]++; if ($1 > R) R = $1 }
        END {
            split("off cached every", ks, " ")
            for (i = 1; i <= 3; i++) {
                k = ks[i]; m = 0; q = 0
                for (r = 1; r <= R; r++) { if ((k, r) in t) a[++m] = t[k, r]; if ((k, r) in t && ("off", r) in t) b[++q] = t[k, r] / t["off", r] }
                med = median(a, m); lo = b[1]; hi = b[1]
                for (j = 1; j <= q; j++) { if (b[j] < lo) lo = b[j]; if (b[j] > hi) hi = b[j] }
                printf "%-7s %10.1f  %.3f [%.3f-%.3f]\n", k, med, median(b, q), lo, hi
                delete a; delete b
            }
        }' "$CSV"
    for k in off cached every; do echo "reads $k:$(reads "$k")"; done
} | tee "$OUT/summary.txt"
