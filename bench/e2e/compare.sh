#!/usr/bin/env bash
# End-to-end throughput: direct PostgreSQL vs Sluice (sluice-dp) vs PgBouncer.
#
# Starts a fresh PostgreSQL 15, PgBouncer (transaction pooling, pool 20) and
# sluice-dp on free loopback ports, runs `pgbench -i -s SCALE` once directly,
# then for every workload x client count runs pgbench against each contender,
# interleaved (direct -> sluice -> pgbouncer) for ROUNDS rounds, and prints the
# median tps per contender and the median (min-max) of the per-round ratios.
# Raw per-round numbers go to $OUT/compare.csv. See README.md for the knobs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKLOADS=${WORKLOADS:-"simple extended"}
CLIENTS=${CLIENTS:-"1 10 50"}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-10}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}
PAUSE=${PAUSE:-1}
CONTENDERS=${CONTENDERS:-"direct sluice pgbouncer"}

usage() {
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): WORKLOADS=\"$WORKLOADS\" (simple extended prepared tpcb) CLIENTS=\"$CLIENTS\""
    echo "  ROUNDS=$ROUNDS SECS=$SECS SCALE=$SCALE THREADS=$THREADS PAUSE=$PAUSE"
    echo "  CONTENDERS=\"$CONTENDERS\" SLUICE_WORKERS=${SLUICE_WORKERS:-<one per core>} OUT=<dir>"
    echo "  SLUICE_BIN, SLUICE_BUILD=0|1, PGBIN, KEEP_WORK=1"
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in ROUNDS SECS SCALE THREADS PAUSE; do
    is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1 && SECS >= 1 && THREADS >= 1)) || die "ROUNDS, SECS and THREADS must be at least 1"

# pgbench arguments of a workload.
workload_args() {
    case $1 in
    simple) echo "-S -M simple" ;;
    extended) echo "-S -M extended" ;;
    prepared) echo "-S -M prepared" ;;
    tpcb) echo "-M simple" ;;
    *) die "unknown workload '$1' (known: simple extended prepared tpcb)" ;;
    esac
}

max_clients=0
for wl in $WORKLOADS; do workload_args "$wl" >/dev/null; done
for c in $CLIENTS; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CLIENTS entries must be positive integers, got '$c'"
    if ((c > max_clients)); then max_clients=$c; fi
done
((max_clients > 0)) || die "CLIENTS is empty"

# Contenders in the canonical interleaving order.
ORDER=()
for k in direct sluice pgbouncer; do
    if [[ " $CONTENDERS " == *" $k "* ]]; then ORDER+=("$k"); fi
done
for k in $CONTENDERS; do
    [[ " direct sluice pgbouncer " == *" $k "* ]] || die "unknown contender '$k' (known: direct sluice pgbouncer)"
done
((${#ORDER[@]} > 0)) || die "CONTENDERS is empty"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-compare.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/compare.csv
PGBENCH_LOG=$OUT/pgbench.log

require_cmd pgbench psql awk sed
e2e_init
write_meta "$OUT/meta.txt"
{
    echo "WORKLOADS=$WORKLOADS CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS SCALE=$SCALE THREADS=$THREADS"
    echo "CONTENDERS=${ORDER[*]} SLUICE_WORKERS=${SLUICE_WORKERS:-default}"
} >>"$OUT/meta.txt"

n_wl=$(wc -w <<<"$WORKLOADS")
n_c=$(wc -w <<<"$CLIENTS")
est=$((n_wl * n_c * ROUNDS * ${#ORDER[@]} * (SECS + PAUSE)))
log "output dir: $OUT"
log "plan: workloads [$WORKLOADS] x clients [$CLIENTS] x $ROUNDS rounds x [${ORDER[*]}], ${SECS}s each: about $((est / 60)) min $((est % 60)) s of runs"

if [[ " ${ORDER[*]} " == *" sluice "* ]]; then ensure_sluice_bin; fi
start_pg $((max_clients + 100 > 200 ? max_clients + 100 : 200))
pgbench_init "$SCALE"
for k in "${ORDER[@]}"; do
    case $k in
    pgbouncer) start_pgbouncer plain ;;
    sluice) start_sluice plain ;;
    esac
done

# Die with the contender's log if a gateway process is gone.
check_alive() {
    case $1 in
    sluice) pid_alive "$SLUICE_PID" || { show_tail "$WORK/sluice-dp.log" 40; die "sluice-dp (pid $SLUICE_PID) died during the run"; } ;;
    pgbouncer) pid_alive "$BOUNCER_PID" || { show_tail "$WORK/pgbouncer.log" 40; die "pgbouncer (pid $BOUNCER_PID) died during the run"; } ;;
    esac
    return 0
}

echo "workload,clients,round,contender,tps,status" >"$CSV"
: >"$PGBENCH_LOG"
for wl in $WORKLOADS; do
    read -r -a wargs <<<"$(workload_args "$wl")"
    for c in $CLIENTS; do
        j=$((c < THREADS ? c : THREADS))
        for ((r = 1; r <= ROUNDS; r++)); do
            for k in "${ORDER[@]}"; do
                contender_conn "$k"
                cmd=(pgbench -n "${wargs[@]}" -c "$c" -j "$j" -T "$SECS" -h 127.0.0.1 -p "$CONN_PORT" -U "$CONN_USER" "$BENCH_DB")
                printf '==== %s c%s round %s %s: %s\n' "$wl" "$c" "$r" "$k" "${cmd[*]}" >>"$PGBENCH_LOG"
                rc=0
                run_logged "$WORK/pgbench.out" env PGPASSWORD="$CONN_PW" "${cmd[@]}" || rc=$?
                output=$(<"$WORK/pgbench.out")
                printf '%s\n(exit %s)\n' "$output" "$rc" >>"$PGBENCH_LOG"
                tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$output" | head -n 1)
                if [[ -n $tps && $rc -eq 0 ]]; then
                    status=ok
                    log "$wl c$c round $r/$ROUNDS $k: $tps tps"
                else
                    status=$([[ -n $tps ]] && echo aborted || echo failed)
                    err=$(grep -m 1 -E 'error|FATAL|ERROR' <<<"$output" || true)
                    log "$wl c$c round $r/$ROUNDS $k: $status (exit $rc${tps:+, $tps tps}): ${err:-see $PGBENCH_LOG}"
                fi
                echo "$wl,$c,$r,$k,${tps:-},$status" >>"$CSV"
                check_alive "$k"
                sleep "$PAUSE"
            done
        done
    done
done

# Summary: median tps per contender; per-round ratios (both runs ok), median [min-max].
summarize() {
    awk -F, -v wls="$WORKLOADS" -v cls="$CLIENTS" -v ks="${ORDER[*]}" -v rounds="$ROUNDS" -v secs="$SECS" \
        -v threads="$THREADS" "$AWK_MEDIAN"'
    NR == 1 { next }
    $6 == "ok" { tps[$1, $2, $3, $4] = $5 }
    END {
        nw = split(wls, W, " "); nc = split(cls, C, " "); nk = split(ks, K, " ")
        for (i = 1; i <= nk; i++) have[K[i]] = 1
        np = 0
        if (have["sluice"] && have["direct"]) { np++; PN[np] = "sluice"; PD[np] = "direct" }
        if (have["pgbouncer"] && have["direct"]) { np++; PN[np] = "pgbouncer"; PD[np] = "direct" }
        if (have["sluice"] && have["pgbouncer"]) { np++; PN[np] = "sluice"; PD[np] = "pgbouncer" }
        args["simple"] = "-S -M simple"; args["extended"] = "-S -M extended"
        args["prepared"] = "-S -M prepared"; args["tpcb"] = "-M simple (tpcb-like)"
        for (w = 1; w <= nw; w++) {
            wl = W[w]
            printf "\n== %s: pgbench -n %s -j %s -T %s, %s rounds ==\n", wl, args[wl], threads, secs, rounds
            printf "%7s", "clients"
            for (i = 1; i <= nk; i++) printf " %11s", K[i]
            for (p = 1; p <= np; p++) printf "  %-22s", PN[p] "/" PD[p]
            printf "\n"
            for (ci = 1; ci <= nc; ci++) {
                c = C[ci]
                printf "%7s", c
                for (i = 1; i <= nk; i++) {
                    n = 0; delete v
                    for (r = 1; r <= rounds; r++) if ((wl, c, r, K[i]) in tps) v[++n] = tps[wl, c, r, K[i]]
                    m = median(v, n)
                    printf " %11s", (n ? sprintf("%.1f", m) : "n/a")
                }
                for (p = 1; p <= np; p++) {
                    n = 0; delete v
                    for (r = 1; r <= rounds; r++)
                        if ((wl, c, r, PN[p]) in tps && (wl, c, r, PD[p]) in tps && tps[wl, c, r, PD[p]] > 0)
                            v[++n] = tps[wl, c, r, PN[p]] / tps[wl, c, r, PD[p]]
                    if (n == 0) { printf "  %-22s", "n/a"; continue }
                    m = median(v, n)   # sorts v
                    s = sprintf("%.3f [%.2f-%.2f]", m, v[1], v[n])
                    if (n < rounds) s = s sprintf(" n=%d", n)
                    printf "  %-22s", s
                }
                printf "\n"
            }
        }
        printf "\ntps: median over rounds. ratios: median of per-round ratios [min-max]; a round counts only when both runs succeeded.\n"
    }' "$CSV"
}

summarize | tee "$OUT/summary.txt"
echo
echo "raw per-round numbers: $CSV"
echo "summary: $OUT/summary.txt   pgbench output: $PGBENCH_LOG   machine/versions: $OUT/meta.txt"
