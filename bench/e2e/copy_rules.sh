#!/usr/bin/env bash
# What column rules cost COPY TO STDOUT. Three contenders read the same
# table with psql (a simple Query per COPY): `direct` (PostgreSQL itself),
# `detect` (sluice-dp masking with the detectors only: the default profile
# with `columns: []`) and `rules` (the built-in default profile, whose
# `*secret*` rule covers the table's `api_secret` column: every COPY is
# described first and every row is rewritten with that field masked).
# Two workloads, interleaved per round (direct -> detect -> rules):
#   bulk:  one `COPY copy_rows TO STDOUT` of TABLE_ROWS rows;
#   small: one psql session running SMALL statements
#          `COPY (SELECT * FROM copy_rows WHERE id <= 10) TO STDOUT`
#          (the describe's round trip is paid per COPY).
# Prints the median wall seconds of each and the median [min-max] of the
# per-round ratios rules/detect and detect/direct, and the values each
# gateway masked by rule (from /metrics). Results: bench/RESULTS.md §13.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-7}
TABLE_ROWS=${TABLE_ROWS:-200000}
SMALL=${SMALL:-500}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): ROUNDS=$ROUNDS TABLE_ROWS=$TABLE_ROWS SMALL=$SMALL"
    echo "  SLUICE_WORKERS, SLUICE_BIN, SLUICE_BUILD=0|1, PGBIN, KEEP_WORK=1, OUT=<dir>"
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"
for v in ROUNDS TABLE_ROWS SMALL; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1 && TABLE_ROWS >= 10 && SMALL >= 1)) || die "ROUNDS and SMALL must be at least 1, TABLE_ROWS at least 10"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-copy.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/copy_rules.csv
require_cmd psql awk sed curl
e2e_init
write_meta "$OUT/meta.txt"
echo "ROUNDS=$ROUNDS TABLE_ROWS=$TABLE_ROWS SMALL=$SMALL SLUICE_WORKERS=${SLUICE_WORKERS:-default}" >>"$OUT/meta.txt"

ensure_sluice_bin
start_pg 50
log "seeding copy_rows ($TABLE_ROWS rows)"
psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -q >"$WORK/seed.log" 2>&1 <<EOF || { show_tail "$WORK/seed.log"; die "seeding failed"; }
DROP TABLE IF EXISTS copy_rows;
CREATE TABLE copy_rows AS
SELECT i AS id,
       'Customer ' || i AS customer,
       'user' || i || '@example.com' AS email,
       'order ORD-' || (100000 + i) || ' shipped 2026-03-' || lpad((i % 28 + 1)::text, 2, '0') ||
         ' total ' || (i % 900 + 10) || '.' || lpad((i % 100)::text, 2, '0') AS note,
       md5(i::text) || md5((i + 1)::text) AS api_secret,
       timestamptz '2026-01-01' + i * interval '1 minute' AS created
FROM generate_series(1, $TABLE_ROWS) i;
ALTER TABLE copy_rows ADD PRIMARY KEY (id);
ANALYZE copy_rows;
EOF
bytes=$(psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -c "COPY copy_rows TO STDOUT" | wc -c)
echo "COPY output bytes: $bytes" >>"$OUT/meta.txt"
log "COPY output: $bytes bytes"

declare -A PORT ADMIN KEY
for k in detect rules; do
    case $k in
    detect) SLUICE_EXTRA_YAML='masking_profiles: { default: { columns: [] } }' ;;
    rules) SLUICE_EXTRA_YAML='' ;;
    esac
    SLUICE_NAME=sluice-$k start_sluice plain
    PORT[$k]=$SLUICE_PORT ADMIN[$k]=$SLUICE_ADMIN_PORT KEY[$k]=$SLUICE_KEY
    E2E_EXTRA_PIDS+=("sluice-$k:$SLUICE_PID")
done
PORT[direct]=$PG_PORT

SMALL_SQL=$OUT/small.sql
for ((i = 0; i < SMALL; i++)); do
    echo 'COPY (SELECT * FROM copy_rows WHERE id <= 10) TO STDOUT;'
done >"$SMALL_SQL"

# Wall seconds of one psql run against contender $1 with the rest as args.
run_psql() {
    local k=$1 user pw t0 t1
    shift
    if [[ $k == direct ]]; then user=$BENCH_USER pw=$BENCH_PW; else user=agent pw=${KEY[$k]}; fi
    t0=$(date +%s%N)
    psql_at "${PORT[$k]}" "$user" "$pw" "$BENCH_DB" "$@" >"$WORK/out.$k" 2>"$WORK/err.$k" ||
        { cat "$WORK/err.$k" >&2; die "psql through $k failed"; }
    t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", (b - a) / 1e9 }'
}

echo "round,workload,contender,seconds" >"$CSV"
for ((r = 1; r <= ROUNDS; r++)); do
    for k in direct detect rules; do
        s=$(run_psql "$k" -c "COPY copy_rows TO STDOUT")
        echo "$r,bulk,$k,$s" >>"$CSV"
        s2=$(run_psql "$k" -f "$SMALL_SQL")
        echo "$r,small,$k,$s2" >>"$CSV"
        log "round $r $k: bulk $s s, small $s2 s"
    done
done
# The rules gateway really masked api_secret (and the others did not).
if grep -q "$(psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -tAc "SELECT api_secret FROM copy_rows WHERE id = 1")" "$WORK/out.rules"; then
    die "the rules gateway forwarded api_secret unmasked"
fi

masked() {
    curl -fsS --max-time 5 "http://127.0.0.1:${ADMIN[$1]}/metrics" |
        awk '/^sluice_masked_values_total\{/ && $2 > 0 { s = s " " $0 } END { print s }'
}
{
    echo "COPY TO STDOUT through psql: wall seconds, median of $ROUNDS rounds; per-round ratios, median [min-max]"
    echo "bulk: one COPY of $TABLE_ROWS rows ($bytes bytes); small: $SMALL COPYs of 10 rows in one session"
    awk -F, "$AWK_MEDIAN"'
        NR > 1 { t[$2, $3, $1] = $4; if ($1 > R) R = $1 }
        function ratio(w, a, b,   j, q, lo, hi, x) {
            q = 0
            for (j = 1; j <= R; j++) if ((w, a, j) in t && (w, b, j) in t) x[++q] = t[w, a, j] / t[w, b, j]
            lo = x[1]; hi = x[1]
            for (j = 1; j <= q; j++) { if (x[j] < lo) lo = x[j]; if (x[j] > hi) hi = x[j] }
            return sprintf("%.3f [%.3f-%.3f]", median(x, q), lo, hi)
        }
        END {
            split("bulk small", ws, " "); split("direct detect rules", ks, " ")
            for (i = 1; i <= 2; i++) {
                w = ws[i]; line = sprintf("%-6s", w)
                for (k = 1; k <= 3; k++) {
                    m = 0
                    for (j = 1; j <= R; j++) if ((w, ks[k], j) in t) a[++m] = t[w, ks[k], j]
                    line = line sprintf("  %s %.3f s", ks[k], median(a, m))
                    delete a
                }
                print line "  rules/detect " ratio(w, "rules", "detect") "  detect/direct " ratio(w, "detect", "direct")
            }
        }' "$CSV"
    for k in detect rules; do echo "masked $k:$(masked "$k")"; done
} | tee "$OUT/summary.txt"
