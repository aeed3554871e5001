#!/usr/bin/env bash
# Gateway CPU per statement: sluice-dp vs PgBouncer at the same fixed rate.
#
# Starts a fresh PostgreSQL 15, PgBouncer (transaction pooling, pool 20) and
# sluice-dp, then, interleaved for ROUNDS rounds, drives each gateway with
# `pgbench -n -S -M MODE -R RATE -c CLIENTS -T SECS` and reads the gateway
# process's CPU time (utime+stime of all its threads, /proc/PID/stat) before
# and after. Prints microseconds of gateway CPU per transaction (one statement
# per transaction for -S) and the sluice/pgbouncer ratio; raw numbers go to
# $OUT/cpu.csv. See README.md for the knobs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=${RATE:-2000}
CLIENTS=${CLIENTS:-10}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-15}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}
MODE=${MODE:-simple}
IDLE_SECS=${IDLE_SECS:-3}
CONTENDERS=${CONTENDERS:-"sluice pgbouncer"}

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): RATE=$RATE CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS MODE=$MODE (simple|extended|prepared)"
    echo "  SCALE=$SCALE THREADS=$THREADS IDLE_SECS=$IDLE_SECS CONTENDERS=\"$CONTENDERS\""
    echo "  SLUICE_WORKERS=${SLUICE_WORKERS:-<one per core>} OUT=<dir> SLUICE_BIN SLUICE_BUILD=0|1 PGBIN KEEP_WORK=1"
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"

for v in RATE CLIENTS ROUNDS SECS SCALE THREADS IDLE_SECS; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((RATE >= 1 && CLIENTS >= 1 && ROUNDS >= 1 && SECS >= 1 && THREADS >= 1)) ||
    die "RATE, CLIENTS, ROUNDS, SECS and THREADS must be at least 1"
[[ $MODE == simple || $MODE == extended || $MODE == prepared ]] || die "MODE must be simple, extended or prepared"

ORDER=()
for k in sluice pgbouncer; do
    if [[ " $CONTENDERS " == *" $k "* ]]; then ORDER+=("$k"); fi
done
for k in $CONTENDERS; do
    [[ $k == sluice || $k == pgbouncer ]] || die "unknown contender '$k' (known: sluice pgbouncer)"
done
((${#ORDER[@]} > 0)) || die "CONTENDERS is empty"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-cpu.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/cpu.csv
PGBENCH_LOG=$OUT/pgbench.log

require_cmd pgbench psql awk sed getconf
CLK_TCK=$(getconf CLK_TCK)
e2e_init
write_meta "$OUT/meta.txt"
{
    echo "RATE=$RATE CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS MODE=$MODE SCALE=$SCALE THREADS=$THREADS CLK_TCK=$CLK_TCK"
    echo "CONTENDERS=${ORDER[*]} SLUICE_WORKERS=${SLUICE_WORKERS:-default}"
} >>"$OUT/meta.txt"
log "output dir: $OUT"
log "plan: $ROUNDS rounds x [${ORDER[*]}] x ${SECS}s at $RATE tps, $CLIENTS clients, -M $MODE"

if [[ " ${ORDER[*]} " == *" sluice "* ]]; then ensure_sluice_bin; fi
start_pg 200
pgbench_init "$SCALE"
for k in "${ORDER[@]}"; do
    case $k in
    pgbouncer) start_pgbouncer plain ;;
    sluice) start_sluice plain ;;
    esac
done

gateway_pid() {
    case $1 in
    sluice) echo "$SLUICE_PID" ;;
    pgbouncer) echo "$BOUNCER_PID" ;;
    esac
}

# CPU burnt while idle: a gateway that spins shows here, not in the per-statement figure.
for k in "${ORDER[@]}"; do
    pid=$(gateway_pid "$k")
    t0=$(proc_cpu_ticks "$pid")
    sleep "$IDLE_SECS"
    t1=$(proc_cpu_ticks "$pid")
    log "$k idle: $((t1 - t0)) ticks of CPU in ${IDLE_SECS}s ($(awk -v t=$((t1 - t0)) -v hz="$CLK_TCK" -v s="$IDLE_SECS" 'BEGIN { printf "%.1f", 100 * t / hz / s }')% of one core)"
done

j=$((CLIENTS < THREADS ? CLIENTS : THREADS))
echo "round,contender,transactions,cpu_ticks,clk_tck,us_per_txn,tps,latency_avg_ms" >"$CSV"
: >"$PGBENCH_LOG"
for ((r = 1; r <= ROUNDS; r++)); do
    for k in "${ORDER[@]}"; do
        contender_conn "$k"
        pid=$(gateway_pid "$k")
        cmd=(pgbench -n -S -M "$MODE" -R "$RATE" -c "$CLIENTS" -j "$j" -T "$SECS" -h 127.0.0.1 -p "$CONN_PORT" -U "$CONN_USER" "$BENCH_DB")
        printf '==== round %s %s: %s\n' "$r" "$k" "${cmd[*]}" >>"$PGBENCH_LOG"
        t0=$(proc_cpu_ticks "$pid")
        rc=0
        run_logged "$WORK/pgbench.out" env PGPASSWORD="$CONN_PW" "${cmd[@]}" || rc=$?
        output=$(<"$WORK/pgbench.out")
        t1=$(proc_cpu_ticks "$pid")
        printf '%s\n(exit %s)\n' "$output" "$rc" >>"$PGBENCH_LOG"
        txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$output" | head -n 1)
        tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$output" | head -n 1)
        lat=$(sed -n 's/^latency average = \([0-9.]*\) ms$/\1/p' <<<"$output" | head -n 1)
        if [[ $rc -ne 0 || -z $txns || $txns -eq 0 ]]; then
            err=$(grep -m 1 -E 'error|FATAL|ERROR' <<<"$output" || true)
            die "pgbench against $k failed (exit $rc): ${err:-see $PGBENCH_LOG}"
        fi
        ticks=$((t1 - t0))
        us=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
        echo "$r,$k,$txns,$ticks,$CLK_TCK,$us,$tps,$lat" >>"$CSV"
        log "round $r/$ROUNDS $k: $txns txns, $ticks ticks -> $us us/txn (tps $tps, latency avg ${lat:-?} ms)"
        pid_alive "$pid" || die "$k (pid $pid) died during the run"
        sleep 1
    done
done

summarize() {
    awk -F, -v ks="${ORDER[*]}" -v rounds="$ROUNDS" -v rate="$RATE" -v clients="$CLIENTS" -v secs="$SECS" \
        -v mode="$MODE" -v hz="$CLK_TCK" "$AWK_MEDIAN"'
    NR == 1 { next }
    { us[$1, $2] = $6; ticks[$1, $2] = $4; tx[$1, $2] = $3 }
    END {
        nk = split(ks, K, " ")
        printf "\n== gateway CPU per transaction: pgbench -n -S -M %s -R %s -c %s -T %s, %s rounds ==\n", mode, rate, clients, secs, rounds
        printf "%-10s %14s %18s %16s\n", "contender", "median us/txn", "[min-max]", "ticks/round"
        for (i = 1; i <= nk; i++) {
            n = 0; delete v; tsum = 0
            for (r = 1; r <= rounds; r++) if ((r, K[i]) in us) { v[++n] = us[r, K[i]]; tsum += ticks[r, K[i]] }
            m = median(v, n)
            printf "%-10s %14.2f %18s %16.0f\n", K[i], m, sprintf("[%.2f-%.2f]", v[1], v[n]), tsum / n
        }
        if (nk == 2) {
            n = 0; delete v
            for (r = 1; r <= rounds; r++) v[++n] = us[r, "sluice"] / us[r, "pgbouncer"]
            m = median(v, n)
            printf "\nsluice/pgbouncer CPU per transaction: median %.3f [%.2f-%.2f] (per-round ratios)\n", m, v[1], v[n]
        }
        printf "CPU time is read in clock ticks of %.0f us (CLK_TCK=%s): each round reading is +-1 tick.\n", 1e6 / hz, hz
    }' "$CSV"
}

summarize | tee "$OUT/summary.txt"
echo
echo "raw per-round numbers: $CSV"
echo "summary: $OUT/summary.txt   pgbench output: $PGBENCH_LOG   machine/versions: $OUT/meta.txt"
