#!/usr/bin/env bash
# Throughput against data-plane cores: pgbench direct to PostgreSQL and
# through sluice-dp started with each worker count in WORKERS.
#
# Starts a fresh PostgreSQL 15 and one sluice-dp per entry of WORKERS (all
# idle but the one measured), runs `pgbench -i -s SCALE` once directly, then
# for every client count runs pgbench against direct and each gateway,
# interleaved (the order rotates round by round) for ROUNDS rounds. For each
# run it also reads the gateway's CPU time (all its threads, /proc), so the
# table shows how many cores the gateway kept busy and its CPU per
# transaction: where tps stops growing with workers while the gateway's
# cores are not all busy, something else (PostgreSQL, pgbench, the machine)
# is the limit, not the gateway. Meant for a machine with more cores than
# the 2-core development box; see bundle.sh for one without packages.
# Raw per-round numbers go to $OUT/scaling.csv.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKLOAD=${WORKLOAD:-simple}
WORKERS=${WORKERS:-"1 2 4"}
CLIENTS=${CLIENTS:-"64"}
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
SCALE=${SCALE:-10}
THREADS=${THREADS:-8}
PAUSE=${PAUSE:-0}

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): WORKLOAD=$WORKLOAD (simple extended prepared) WORKERS=\"$WORKERS\" CLIENTS=\"$CLIENTS\""
    echo "  ROUNDS=$ROUNDS SECS=$SECS SCALE=$SCALE THREADS=$THREADS (pgbench -j) PAUSE=$PAUSE OUT=<dir>"
    echo "  SLUICE_BIN, SLUICE_BUILD=0|1, PGBIN, KEEP_WORK=1"
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"
for v in ROUNDS SECS SCALE THREADS PAUSE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1 && SECS >= 1 && THREADS >= 1)) || die "ROUNDS, SECS and THREADS must be at least 1"
case $WORKLOAD in
simple | extended | prepared) ;;
*) die "unknown WORKLOAD '$WORKLOAD' (known: simple extended prepared)" ;;
esac
max_clients=0
for c in $CLIENTS; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CLIENTS entries must be positive integers, got '$c'"
    if ((c > max_clients)); then max_clients=$c; fi
done
((max_clients > 0)) || die "CLIENTS is empty"
CONTENDERS=(direct)
for w in $WORKERS; do
    [[ $w =~ ^[1-9][0-9]*$ ]] || die "WORKERS entries must be positive integers, got '$w'"
    CONTENDERS+=("w$w")
done
((${#CONTENDERS[@]} > 1)) || die "WORKERS is empty"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-scaling.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/scaling.csv
PGBENCH_LOG=$OUT/pgbench.log

require_cmd pgbench psql awk sed curl
CLK_TCK=$(getconf CLK_TCK)
e2e_init
write_meta "$OUT/meta.txt"
echo "WORKLOAD=$WORKLOAD WORKERS=$WORKERS CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS SCALE=$SCALE THREADS=$THREADS" >>"$OUT/meta.txt"
log "output dir: $OUT"

ensure_sluice_bin
start_pg $((max_clients + 100 > 200 ? max_clients + 100 : 200))
pgbench_init "$SCALE"
declare -A PORT KEY PID ADMIN
for w in $WORKERS; do
    SLUICE_NAME=sluice-w$w SLUICE_WORKERS=$w start_sluice plain
    PORT[w$w]=$SLUICE_PORT KEY[w$w]=$SLUICE_KEY PID[w$w]=$SLUICE_PID ADMIN[w$w]=$SLUICE_ADMIN_PORT
    E2E_EXTRA_PIDS+=("sluice-dp ($w workers):$SLUICE_PID")
done

# Statements relayed by each worker so far, space-separated in worker order.
worker_statements() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -F'[{}"]' '/^sluice_worker_statements_total\{/ { split($5, v, " "); n[$3] = v[1] } END { for (i = 0; i in n; i++) printf "%s ", n[i] }'
}
# Busiest worker's share of a run's statements over the mean share
# (1.00: perfectly even; W: one worker did everything).
busiest_over_mean() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); split(b, y, " "); t = 0; m = 0
        for (i = 1; i <= n; i++) { d = y[i] - x[i]; t += d; if (d > m) m = d }
        if (t > 0) printf "%.2f", m * n / t; else printf ""
    }'
}

echo "clients,round,contender,tps,status,gw_cpu_ticks,busiest_over_mean" >"$CSV"
: >"$PGBENCH_LOG"
n=${#CONTENDERS[@]}
for c in $CLIENTS; do
    j=$((c < THREADS ? c : THREADS))
    for ((r = 1; r <= ROUNDS; r++)); do
        for ((i = 0; i < n; i++)); do
            k=${CONTENDERS[$(((i + r - 1) % n))]}
            if [[ $k == direct ]]; then
                port=$PG_PORT user=$BENCH_USER pw=$BENCH_PW pid=""
            else
                port=${PORT[$k]} user=agent pw=${KEY[$k]} pid=${PID[$k]}
            fi
            cmd=(pgbench -n -S -M "$WORKLOAD" -c "$c" -j "$j" -T "$SECS" -h 127.0.0.1 -p "$port" -U "$user" "$BENCH_DB")
            printf '==== c%s round %s %s: %s\n' "$c" "$r" "$k" "${cmd[*]}" >>"$PGBENCH_LOG"
            gw0=0 ws0=""
            if [[ -n $pid ]]; then gw0=$(proc_cpu_ticks "$pid") ws0=$(worker_statements "${ADMIN[$k]}"); fi
            rc=0
            run_logged "$WORK/pgbench.out" env PGPASSWORD="$pw" "${cmd[@]}" || rc=$?
            gwt=0 skew=""
            if [[ -n $pid ]]; then
                gwt=$(($(proc_cpu_ticks "$pid") - gw0))
                skew=$(busiest_over_mean "$ws0" "$(worker_statements "${ADMIN[$k]}")")
            fi
            output=$(<"$WORK/pgbench.out")
            printf '%s\n(exit %s)\n' "$output" "$rc" >>"$PGBENCH_LOG"
            tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$output" | head -n 1)
            status=ok
            if [[ -z $tps || $rc -ne 0 ]]; then status=failed; fi
            log "c$c round $r/$ROUNDS $k: ${tps:-?} tps ($status), gateway CPU $(awk -v t="$gwt" -v hz="$CLK_TCK" -v s="$SECS" 'BEGIN { printf "%.2f", t / hz / s }') cores${skew:+, busiest worker ${skew}x the mean}"
            echo "$c,$r,$k,${tps:-},$status,$gwt,$skew" >>"$CSV"
            if [[ -n $pid ]] && ! pid_alive "$pid"; then
                show_tail "$WORK/sluice-$k-dp.log" 40
                die "sluice-dp ($k) died"
            fi
            sleep "$PAUSE"
        done
    done
done

awk -F, -v cls="$CLIENTS" -v ks="${CONTENDERS[*]}" -v rounds="$ROUNDS" -v secs="$SECS" -v hz="$CLK_TCK" \
    -v wl="$WORKLOAD" -v threads="$THREADS" -v cores="$(nproc)" "$AWK_MEDIAN"'
    NR == 1 { next }
    $5 == "ok" { tps[$1, $2, $3] = $4; gw[$1, $2, $3] = $6; sk[$1, $2, $3] = $7 }
    END {
        nc = split(cls, C, " "); nk = split(ks, K, " ")
        printf "== pgbench -n -S -M %s -j %s -T %s, %s rounds, direct vs sluice-dp by worker count (%s cores here) ==\n", wl, threads, secs, rounds, cores
        printf "%7s %9s %10s %22s %14s %12s %16s %16s\n", "clients", "contender", "tps", "÷ direct [min-max]", "gateway cores", "gw us/txn", "tps per gw core", "busiest worker"
        for (ci = 1; ci <= nc; ci++) for (i = 1; i <= nk; i++) {
            c = C[ci]; k = K[i]
            n1 = 0; nq = 0; ng = 0; nu = 0; ns = 0; delete t; delete q; delete g; delete u; delete z
            for (r = 1; r <= rounds; r++) {
                if (!((c, r, k) in tps)) continue
                t[++n1] = tps[c, r, k]
                if ((c, r, "direct") in tps && tps[c, r, "direct"] > 0) q[++nq] = tps[c, r, k] / tps[c, r, "direct"]
                if (k != "direct") {
                    g[++ng] = gw[c, r, k] / hz / secs
                    if (sk[c, r, k] != "") z[++ns] = sk[c, r, k]
                    if (tps[c, r, k] > 0) u[++nu] = gw[c, r, k] / hz * 1e6 / (tps[c, r, k] * secs)
                }
            }
            mt = median(t, n1); mq = median(q, nq); mg = median(g, ng); mu = median(u, nu); ms = median(z, ns)
            printf "%7s %9s %10.0f %22s %14s %12s %16s %16s\n", c, k, mt,
                (nq ? sprintf("%.3f [%.3f-%.3f]", mq, q[1], q[nq]) : "n/a"),
                (k == "direct" ? "-" : sprintf("%.2f", mg)), (k == "direct" ? "-" : sprintf("%.2f", mu)),
                (k == "direct" || mg <= 0 ? "-" : sprintf("%.0f", mt / mg)), (ns ? sprintf("%.2f", ms) : "-")
        }
        printf "\ntps and CPU: medians over rounds; ratios: median of per-round ratios. gateway cores = gateway CPU seconds / run seconds.\n"
        printf "busiest worker: its statements over the mean per worker in the run (1.00 = even; the kernel hashes connections to workers).\n"
    }' "$CSV" | tee "$OUT/summary.txt"
echo
echo "raw per-round numbers: $CSV   pgbench output: $PGBENCH_LOG   machine: $OUT/meta.txt"
