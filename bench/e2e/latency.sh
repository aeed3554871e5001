#!/usr/bin/env bash
# Latency a gateway adds: client-side latency percentiles at a fixed rate,
# direct to PostgreSQL vs through Sluice (audit off, and on) vs PgBouncer.
#
# Starts a fresh PostgreSQL 15, the contenders in CONTENDERS on free loopback
# ports, runs `pgbench -i -s SCALE` once directly, then, interleaved for
# ROUNDS rounds (the order rotating per round), drives each with
# `pgbench -n -S -M MODE -R RATE -c CLIENTS -T SECS -l` and computes from
# pgbench's per-transaction log the percentiles of each transaction's
# latency from its actual start (pgbench's schedule lag subtracted, so a
# late client thread does not count against the gateway). The summary gives
# the median over rounds of each percentile per contender and the latency
# each adds over direct at each percentile. For Sluice it also reads the
# gateway's own histogram of the time it adds per statement
# (`sluice_gateway_added_seconds`, from /metrics) over the run.
# At a rate well below capacity nothing queues, so this is the latency of
# one statement's extra hop, not of saturation. Raw per-round numbers go to
# $OUT/latency.csv.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATE=${RATE:-2000}
CLIENTS=${CLIENTS:-10}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-10}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}
MODE=${MODE:-simple}
PAUSE=${PAUSE:-1}
CONTENDERS=${CONTENDERS:-"direct sluice sluice-audit pgbouncer"}

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): RATE=$RATE (transactions/s, all clients) CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS"
    echo "  MODE=$MODE (simple|extended|prepared) SCALE=$SCALE THREADS=$THREADS PAUSE=$PAUSE"
    echo "  CONTENDERS=\"$CONTENDERS\" (any of: direct sluice sluice-audit pgbouncer)"
    echo "  SLUICE_YAML=<lines added to both sluice configs, e.g. 'driver: epoll'>"
    echo "  AUDIT_OPTS=<more fields of sluice-audit's audit map, e.g. 'fsync: never, flush_interval_ms: 10'>"
    echo "  SLUICE_WORKERS=${SLUICE_WORKERS:-<one per core>} OUT=<dir> SLUICE_BIN SLUICE_BUILD=0|1 PGBIN KEEP_WORK=1"
    echo "  SLUICE_CPUS (sluice-dp and PgBouncer), PG_CPUS, CLIENT_CPUS (pgbench): CPU lists for taskset -c"
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"
for v in RATE CLIENTS ROUNDS SECS SCALE THREADS PAUSE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((RATE >= 1 && CLIENTS >= 1 && ROUNDS >= 1 && SECS >= 1 && THREADS >= 1)) ||
    die "RATE, CLIENTS, ROUNDS, SECS and THREADS must be at least 1"
[[ " simple extended prepared " == *" $MODE "* ]] || die "MODE must be simple, extended or prepared, got '$MODE'"
ORDER=()
for k in $CONTENDERS; do
    [[ " direct sluice sluice-audit pgbouncer " == *" $k "* ]] ||
        die "unknown contender '$k' (known: direct sluice sluice-audit pgbouncer)"
    ORDER+=("$k")
done
((${#ORDER[@]} > 0)) || die "CONTENDERS is empty"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-latency.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/latency.csv
PGBENCH_LOG=$OUT/pgbench.log

require_cmd pgbench psql awk sed sort curl
e2e_init
write_meta "$OUT/meta.txt"
echo "RATE=$RATE CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS MODE=$MODE SCALE=$SCALE THREADS=$THREADS CONTENDERS=${ORDER[*]} SLUICE_WORKERS=${SLUICE_WORKERS:-default} SLUICE_YAML=${SLUICE_YAML:-} AUDIT_OPTS=${AUDIT_OPTS:-}" >>"$OUT/meta.txt"
echo "SLUICE_CPUS=${SLUICE_CPUS:-any} PG_CPUS=${PG_CPUS:-any} CLIENT_CPUS=${CLIENT_CPUS:-any}" >>"$OUT/meta.txt"
log "output dir: $OUT"

start_pg 200
pgbench_init "$SCALE"
declare -A PORT USER PW ADMIN PID
for k in "${ORDER[@]}"; do
    case $k in
    direct) PORT[$k]=$PG_PORT USER[$k]=$BENCH_USER PW[$k]=$BENCH_PW ;;
    pgbouncer)
        start_pgbouncer plain
        PORT[$k]=$BOUNCER_PORT USER[$k]=$BENCH_USER PW[$k]=$BENCH_PW
        ;;
    sluice | sluice-audit)
        extra=${SLUICE_YAML:-}
        if [[ $k == sluice-audit ]]; then
            extra=$(printf '%s\naudit: { enabled: true, spool_dir: "%s"%s }' "$extra" "$WORK/$k-spool" "${AUDIT_OPTS:+, $AUDIT_OPTS}")
        fi
        SLUICE_NAME=$k SLUICE_EXTRA_YAML=$extra start_sluice plain
        PORT[$k]=$SLUICE_PORT USER[$k]=agent PW[$k]=$SLUICE_KEY ADMIN[$k]=$SLUICE_ADMIN_PORT PID[$k]=$SLUICE_PID
        E2E_EXTRA_PIDS+=("sluice-dp ($k):$SLUICE_PID")
        ;;
    esac
done

# The gateway's added-time histogram as "count sum": the run's own mean
# comes from the difference of two scrapes (quantiles cannot be
# subtracted, so the per-run quantiles are not derived).
added_count_sum() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk '$1 == "sluice_gateway_added_seconds_count" { c = $2 } $1 == "sluice_gateway_added_seconds_sum" { s = $2 } END { print c + 0, s + 0 }'
}

echo "round,contender,transactions,p50_us,p90_us,p99_us,p999_us,max_us,mean_us,late,gw_added_mean_us" >"$CSV"
: >"$PGBENCH_LOG"
n=${#ORDER[@]}
j=$((CLIENTS < THREADS ? CLIENTS : THREADS))
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        k=${ORDER[$(((i + r - 1) % n))]}
        logdir=$WORK/log-$k-$r
        mkdir -p "$logdir"
        cmd=(pgbench -n -S -M "$MODE" -R "$RATE" -c "$CLIENTS" -j "$j" -T "$SECS" -l --log-prefix="$logdir/tx"
            -h 127.0.0.1 -p "${PORT[$k]}" -U "${USER[$k]}" "$BENCH_DB")
        printf '==== round %s %s: %s\n' "$r" "$k" "${cmd[*]}" >>"$PGBENCH_LOG"
        before=""
        if [[ -n ${ADMIN[$k]:-} ]]; then before=$(added_count_sum "${ADMIN[$k]}"); fi
        rc=0
        pin_for client
        run_logged "$WORK/pgbench.out" "${PIN[@]}" env PGPASSWORD="${PW[$k]}" "${cmd[@]}" || rc=$?
        gw_mean=""
        if [[ -n $before ]]; then
            gw_mean=$(awk -v a="$before" -v b="$(added_count_sum "${ADMIN[$k]}")" 'BEGIN {
                split(a, x, " "); split(b, y, " "); n = y[1] - x[1]
                if (n > 0) printf "%.2f", (y[2] - x[2]) * 1e6 / n }')
        fi
        printf '%s\n(exit %s)\n' "$(<"$WORK/pgbench.out")" "$rc" >>"$PGBENCH_LOG"
        ((rc == 0)) || { show_tail "$WORK/pgbench.out" 20; die "pgbench against $k failed (round $r)"; }
        # Log lines: client tx_no latency_us script epoch_s epoch_us lag_us.
        # Latency from the actual start = latency - schedule lag; a
        # transaction that started more than 1 ms late is counted as late.
        stats=$(cat "$logdir"/tx.* | awk '{ l = $3 - $7; if (l < 0) l = 0; print l; if ($7 > 1000) late++ }
                END { print "late", late + 0 > "/dev/stderr" }' 2>"$logdir/late" | sort -n |
            awk '{ v[NR] = $1; s += $1 } END {
                if (NR == 0) { print "0,,,,,,"; exit }
                q(0.5); q(0.9); q(0.99); q(0.999)
                printf "%d,%s,%s,%s,%s,%d,%.1f\n", NR, Q[0.5], Q[0.9], Q[0.99], Q[0.999], v[NR], s / NR
            }
            function q(p,  i) { i = int(p * NR + 0.999999); if (i < 1) i = 1; Q[p] = v[i] }')
        late=$(awk '{ print $2 }' "$logdir/late")
        rm -rf "$logdir"
        IFS=, read -r txs p50 p90 p99 p999 max mean <<<"$stats"
        log "round $r/$ROUNDS $k: $txs tx, latency us p50 $p50 p90 $p90 p99 $p99 p99.9 $p999 max $max${gw_mean:+, gateway-added mean $gw_mean us}${late:+, $late started >1 ms late}"
        echo "$r,$k,$txs,$p50,$p90,$p99,$p999,$max,$mean,$late,$gw_mean" >>"$CSV"
        if [[ -n ${PID[$k]:-} ]] && ! pid_alive "${PID[$k]}"; then
            show_tail "$WORK/$k-dp.log" 40
            die "sluice-dp ($k) died"
        fi
        sleep "$PAUSE"
    done
done

awk -F, -v ks="${ORDER[*]}" -v rounds="$ROUNDS" -v rate="$RATE" -v clients="$CLIENTS" -v secs="$SECS" -v mode="$MODE" "$AWK_MEDIAN"'
    NR == 1 { next }
    { for (c = 4; c <= 9; c++) val[$2, c, ++cnt[$2, c]] = $c; if ($11 != "") gw[$2, ++gn[$2]] = $11; late[$2] += $10 }
    END {
        nk = split(ks, K, " ")
        split("p50 p90 p99 p99.9 max mean", H, " ")
        printf "== pgbench -n -S -M %s -R %s -c %s -T %s, %s rounds: latency from each transaction'"'"'s start, us (median over rounds) ==\n", mode, rate, clients, secs, rounds
        printf "%-13s", "contender"
        for (c = 1; c <= 6; c++) printf " %9s", H[c]
        printf " %16s %10s\n", "gw-added mean", "late tx"
        for (i = 1; i <= nk; i++) {
            k = K[i]
            printf "%-13s", k
            for (c = 4; c <= 9; c++) {
                n = 0; delete a
                for (m = 1; m <= cnt[k, c]; m++) a[++n] = val[k, c, m]
                M[k, c] = median(a, n); MN[k, c] = n
                printf " %9s", (n ? sprintf("%.0f", M[k, c]) : "n/a")
            }
            n = 0; delete a
            for (m = 1; m <= gn[k]; m++) a[++n] = gw[k, m]
            printf " %16s %10d\n", (n ? sprintf("%.1f", median(a, n)) : "-"), late[k]
        }
        have_direct = 0
        for (i = 1; i <= nk; i++) if (K[i] == "direct") have_direct = 1
        if (have_direct) {
            printf "\nadded over direct, us (difference of the medians above):\n"
            printf "%-13s", "contender"
            for (c = 1; c <= 6; c++) printf " %9s", H[c]
            printf "\n"
            for (i = 1; i <= nk; i++) {
                k = K[i]
                if (k == "direct") continue
                printf "%-13s", k
                for (c = 4; c <= 9; c++) printf " %9s", ((MN[k, c] && MN["direct", c]) ? sprintf("%+.0f", M[k, c] - M["direct", c]) : "n/a")
                printf "\n"
            }
        }
        printf "\ngw-added mean: sluice_gateway_added_seconds over the run (sum/count difference), the time the gateway itself accounts per statement.\n"
        printf "late tx: transactions that started over 1 ms after their schedule (all rounds); their lag is not in the latencies.\n"
    }' "$CSV" | tee "$OUT/summary.txt"
echo
echo "raw per-round numbers: $CSV   pgbench output: $PGBENCH_LOG   machine: $OUT/meta.txt"
