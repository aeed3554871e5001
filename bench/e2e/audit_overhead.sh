#!/usr/bin/env bash
# Audit overhead: pgbench -S through Sluice with audit on vs audit off.
#
# Starts a fresh PostgreSQL 15 and two sluice-dp processes side by side in
# static mode: one without audit, one with `audit.enabled: true` (records
# spooled locally, fsync per batch by default). Runs `pgbench -i -s SCALE`
# once directly, then for every workload x client count runs pgbench against
# both, interleaved (the order alternates round by round) for ROUNDS rounds,
# and prints the median tps of each and the median [min-max] of the
# per-round ratios audit-on / audit-off. It also accounts CPU per
# transaction in each run (gateway process with all its threads; the
# PostgreSQL postmaster with its reaped backends; pgbench via
# /usr/bin/time) and prints the gateway's CPU per transaction and the
# estimated ratio (CPU of everything per transaction, off / on), which on a
# CPU-bound box is the throughput ratio without the noise of the other
# load on the machine. Then it stops the audited gateway
# and counts the statement records in its spool (`sluice-dp audit-spool`)
# against its statement counter and pgbench's transaction count.
# Raw per-round numbers go to $OUT/audit_overhead.csv.
# With AUDIT_AA=1 the "on" gateway runs without audit too (an A/A run):
# the ratios then show how far two identical contenders differ on this
# machine, the noise floor to read the A/B ratios against.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WORKLOADS=${WORKLOADS:-"simple"}
CLIENTS=${CLIENTS:-"10"}
ROUNDS=${ROUNDS:-7}
SECS=${SECS:-10}
SCALE=${SCALE:-10}
THREADS=${THREADS:-2}
PAUSE=${PAUSE:-1}
AUDIT_FSYNC=${AUDIT_FSYNC:-batch}
AUDIT_QUOTA=${AUDIT_QUOTA:-8589934592}

usage() {
    sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): WORKLOADS=\"$WORKLOADS\" (simple extended prepared) CLIENTS=\"$CLIENTS\""
    echo "  ROUNDS=$ROUNDS SECS=$SECS SCALE=$SCALE THREADS=$THREADS PAUSE=$PAUSE"
    echo "  AUDIT_FSYNC=$AUDIT_FSYNC (batch|never) AUDIT_QUOTA=$AUDIT_QUOTA AUDIT_SPOOL_DIR=<work dir> AUDIT_RING_DIR=<node default>"
    echo "  AUDIT_FLUSH_MS=<node default> AUDIT_RING_BYTES=<node default> AUDIT_AA=0|1"
    echo "  SLUICE_WORKERS=${SLUICE_WORKERS:-<one per core>} OUT=<dir>"
    echo "  SLUICE_BIN, SLUICE_BUILD=0|1, PGBIN, KEEP_WORK=1"
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"
for v in ROUNDS SECS SCALE THREADS PAUSE AUDIT_QUOTA; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1 && SECS >= 1 && THREADS >= 1)) || die "ROUNDS, SECS and THREADS must be at least 1"
[[ $AUDIT_FSYNC == batch || $AUDIT_FSYNC == never ]] || die "AUDIT_FSYNC must be batch or never"

workload_args() {
    case $1 in
    simple) echo "-S -M simple" ;;
    extended) echo "-S -M extended" ;;
    prepared) echo "-S -M prepared" ;;
    *) die "unknown workload '$1' (known: simple extended prepared)" ;;
    esac
}
max_clients=0
for wl in $WORKLOADS; do workload_args "$wl" >/dev/null; done
for c in $CLIENTS; do
    [[ $c =~ ^[1-9][0-9]*$ ]] || die "CLIENTS entries must be positive integers, got '$c'"
    if ((c > max_clients)); then max_clients=$c; fi
done

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-audit-overhead.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/audit_overhead.csv
PGBENCH_LOG=$OUT/pgbench.log

require_cmd pgbench psql awk sed curl
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed for pgbench's CPU time (apt-get install time)"
CLK_TCK=$(getconf CLK_TCK)
# CPU ticks of a process and of its reaped children (the postmaster's
# backends once they have exited): utime + stime + cutime + cstime.
proc_cpu_ticks_all() {
    local stat rest
    stat=$(<"/proc/$1/stat") || die "process $1 is gone"
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13} + ${14} + ${15}))
}
e2e_init
write_meta "$OUT/meta.txt"
echo "WORKLOADS=$WORKLOADS CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS SCALE=$SCALE THREADS=$THREADS AUDIT_FSYNC=$AUDIT_FSYNC AUDIT_FLUSH_MS=${AUDIT_FLUSH_MS:-default} AUDIT_RING_BYTES=${AUDIT_RING_BYTES:-default} AUDIT_AA=${AUDIT_AA:-0} AUDIT_RING_DIR=${AUDIT_RING_DIR:-default} SLUICE_WORKERS=${SLUICE_WORKERS:-default}" >>"$OUT/meta.txt"
log "output dir: $OUT"

ensure_sluice_bin
start_pg $((max_clients * 2 + 100 > 200 ? max_clients * 2 + 100 : 200))
pgbench_init "$SCALE"

# Audit off.
SLUICE_NAME=sluice-off start_sluice plain
OFF_PORT=$SLUICE_PORT OFF_KEY=$SLUICE_KEY OFF_PID=$SLUICE_PID
E2E_EXTRA_PIDS+=("sluice-dp (audit off):$OFF_PID")
# Audit on: local spool only (no control plane), so nothing is deleted.
SPOOL=${AUDIT_SPOOL_DIR:-$WORK/audit-spool}
RING_YAML="" RING_ARGS=()
if [[ -n ${AUDIT_RING_DIR:-} ]]; then RING_YAML=", ring_dir: \"$AUDIT_RING_DIR\"" RING_ARGS=(--ring-dir "$AUDIT_RING_DIR"); fi
if [[ -n ${AUDIT_FLUSH_MS:-} ]]; then RING_YAML="$RING_YAML, flush_interval_ms: $AUDIT_FLUSH_MS"; fi
if [[ -n ${AUDIT_RING_BYTES:-} ]]; then RING_YAML="$RING_YAML, ring_bytes: $AUDIT_RING_BYTES"; fi
AUDIT_AA=${AUDIT_AA:-0}
[[ $AUDIT_AA == 0 || $AUDIT_AA == 1 ]] || die "AUDIT_AA must be 0 or 1"
ON_YAML="audit: { enabled: true, spool_dir: \"$SPOOL\", quota_bytes: $AUDIT_QUOTA, fsync: $AUDIT_FSYNC$RING_YAML }"
if ((AUDIT_AA)); then
    ON_YAML=""
    log "AUDIT_AA=1: the 'on' gateway runs without audit (A/A run)"
fi
SLUICE_NAME=sluice-on SLUICE_EXTRA_YAML="$ON_YAML" \
    start_sluice plain
ON_PORT=$SLUICE_PORT ON_ADMIN=$SLUICE_ADMIN_PORT ON_KEY=$SLUICE_KEY ON_PID=$SLUICE_PID

metric() { # metric ADMIN_PORT 'name{labels}' -> value
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m { print $2; found = 1 } END { if (!found) print "" }'
}

echo "workload,clients,round,contender,tps,transactions,status,gw_cpu_ticks,pg_cpu_ticks,pgbench_cpu_s,gw_us_per_txn,total_us_per_txn" >"$CSV"
: >"$PGBENCH_LOG"
on_tx=0
for wl in $WORKLOADS; do
    read -r -a wargs <<<"$(workload_args "$wl")"
    for c in $CLIENTS; do
        j=$((c < THREADS ? c : THREADS))
        for ((r = 1; r <= ROUNDS; r++)); do
            order=(off on)
            if ((r % 2 == 0)); then order=(on off); fi
            for k in "${order[@]}"; do
                if [[ $k == off ]]; then port=$OFF_PORT key=$OFF_KEY pid=$OFF_PID; else port=$ON_PORT key=$ON_KEY pid=$ON_PID; fi
                cmd=(pgbench -n "${wargs[@]}" -c "$c" -j "$j" -T "$SECS" -h 127.0.0.1 -p "$port" -U agent "$BENCH_DB")
                printf '==== %s c%s round %s audit-%s: %s\n' "$wl" "$c" "$r" "$k" "${cmd[*]}" >>"$PGBENCH_LOG"
                rc=0
                rm -f "$WORK/time.out"
                gw0=$(proc_cpu_ticks "$pid")
                pg0=$(proc_cpu_ticks_all "$PG_PID")
                run_logged "$WORK/pgbench.out" env PGPASSWORD="$key" /usr/bin/time -f '%U %S' -o "$WORK/time.out" "${cmd[@]}" || rc=$?
                gwt=$(($(proc_cpu_ticks "$pid") - gw0))
                # Backends exit once pgbench disconnects; let the postmaster reap them.
                sleep 0.3
                pgt=$(($(proc_cpu_ticks_all "$PG_PID") - pg0))
                bench_s=$(awk '{ printf "%.2f", $1 + $2 }' "$WORK/time.out" 2>/dev/null || true)
                output=$(<"$WORK/pgbench.out")
                printf '%s\n(exit %s)\n' "$output" "$rc" >>"$PGBENCH_LOG"
                tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$output" | head -n 1)
                txs=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$output" | head -n 1)
                status=ok
                if [[ -z $tps || $rc -ne 0 ]]; then status=failed; fi
                if [[ $k == on ]]; then on_tx=$((on_tx + ${txs:-0})); fi
                us="" total=""
                if [[ -n $txs && $txs -gt 0 && -n $bench_s ]]; then
                    us=$(awk -v t="$gwt" -v hz="$CLK_TCK" -v n="$txs" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
                    total=$(awk -v g="$gwt" -v p="$pgt" -v b="$bench_s" -v hz="$CLK_TCK" -v n="$txs" \
                        'BEGIN { printf "%.2f", ((g + p) / hz + b) * 1e6 / n }')
                fi
                log "$wl c$c round $r/$ROUNDS audit-$k: ${tps:-?} tps ($status), CPU/txn: gateway ${us:-?} us, all ${total:-?} us"
                echo "$wl,$c,$r,$k,${tps:-},${txs:-},$status,$gwt,$pgt,${bench_s},${us},${total}" >>"$CSV"
                pid_alive "$pid" || { show_tail "$WORK/sluice-$k-dp.log" 40; die "sluice-dp (audit $k) died"; }
                sleep "$PAUSE"
            done
        done
    done
done

# Counts from the audited gateway, then from its spool once it is stopped.
sleep 1
stmts=$(metric "$ON_ADMIN" sluice_statements_total)
produced=$(metric "$ON_ADMIN" 'sluice_audit_records_total{stage="produced"}')
refused=$(metric "$ON_ADMIN" sluice_audit_refused_total)
unaudited=$(metric "$ON_ADMIN" sluice_audit_unaudited_total)
stop_pid "sluice-dp (audit on)" "$ON_PID" 30
records="" spool_bytes=""
if ((!AUDIT_AA)); then
    "$SLUICE_BIN" audit-spool --dir "$SPOOL" "${RING_ARGS[@]}" >"$OUT/audit-spool.json" 2>"$WORK/audit-spool.err" ||
        { cat "$WORK/audit-spool.err" >&2; die "sluice-dp audit-spool failed"; }
    records=$(sed -n 's/^ *"statements": \([0-9]*\).*/\1/p' "$OUT/audit-spool.json")
    spool_bytes=$(sed -n 's/^ *"spool_bytes": \([0-9]*\).*/\1/p' "$OUT/audit-spool.json")
fi

{
    awk -F, -v wls="$WORKLOADS" -v cls="$CLIENTS" -v rounds="$ROUNDS" -v secs="$SECS" -v threads="$THREADS" "$AWK_MEDIAN"'
    NR == 1 { next }
    $7 == "ok" {
        tps[$1, $2, $3, $4] = $5
        if ($11 != "") us[$1, $2, $3, $4] = $11
        if ($12 != "") tot[$1, $2, $3, $4] = $12
    }
    END {
        nw = split(wls, W, " "); nc = split(cls, C, " ")
        printf "== pgbench -n -S -j %s -T %s, %s rounds, audit-on vs audit-off (interleaved, order alternating) ==\n", threads, secs, rounds
        printf "%-9s %7s %12s %12s %16s %26s\n", "workload", "clients", "off tps", "on tps", "on/off medians", "on/off per round [min-max]"
        for (w = 1; w <= nw; w++) for (ci = 1; ci <= nc; ci++) {
            wl = W[w]; c = C[ci]
            n1 = 0; n2 = 0; nr = 0; delete a; delete b; delete q
            for (r = 1; r <= rounds; r++) {
                if ((wl, c, r, "off") in tps) a[++n1] = tps[wl, c, r, "off"]
                if ((wl, c, r, "on") in tps) b[++n2] = tps[wl, c, r, "on"]
                if ((wl, c, r, "off") in tps && (wl, c, r, "on") in tps && tps[wl, c, r, "off"] > 0)
                    q[++nr] = tps[wl, c, r, "on"] / tps[wl, c, r, "off"]
            }
            moff = median(a, n1); mon = median(b, n2); mq = median(q, nr)
            printf "%-9s %7s %12.1f %12.1f %16.3f %14.3f [%.3f-%.3f]%s\n", wl, c, moff, mon, (moff > 0 ? mon / moff : 0), mq, q[1], q[nr], (nr < rounds ? sprintf(" n=%d", nr) : "")
            # CPU per transaction, medians over rounds, and the estimate.
            n1 = 0; n2 = 0; n3 = 0; n4 = 0; ne = 0; delete go; delete gn; delete to; delete tn; delete e
            for (r = 1; r <= rounds; r++) {
                if ((wl, c, r, "off") in us) go[++n1] = us[wl, c, r, "off"]
                if ((wl, c, r, "on") in us) gn[++n2] = us[wl, c, r, "on"]
                if ((wl, c, r, "off") in tot) to[++n3] = tot[wl, c, r, "off"]
                if ((wl, c, r, "on") in tot) tn[++n4] = tot[wl, c, r, "on"]
                if ((wl, c, r, "off") in tot && (wl, c, r, "on") in tot && tot[wl, c, r, "on"] > 0)
                    e[++ne] = tot[wl, c, r, "off"] / tot[wl, c, r, "on"]
            }
            # PostgreSQL and pgbench do the same work per transaction either
            # way: only the gateway differs, so also give the estimate with
            # the gateway difference alone (less noise from the others).
            mgo = median(go, n1); mgn = median(gn, n2); mto = median(to, n3)
            cpu[w, ci] = sprintf("%-9s %7s %10.2f %10.2f %10.2f %10.2f %10.2f %24s %12.3f", wl, c, mgo, mgn, mgn - mgo, mto, median(tn, n4), (ne ? sprintf("%.3f [%.3f-%.3f]", median(e, ne), e[1], e[ne]) : "n/a"), (mto > 0 ? mto / (mto + mgn - mgo) : 0))
        }
        printf "\nCPU per transaction (us, median of rounds): gateway process (all threads), and everything (gateway + PostgreSQL + pgbench)\n"
        printf "%-9s %7s %10s %10s %10s %10s %10s %24s %12s\n", "workload", "clients", "gw off", "gw on", "gw on-off", "all off", "all on", "est. on/off [min-max]", "est. gw-only"
        for (w = 1; w <= nw; w++) for (ci = 1; ci <= nc; ci++) print cpu[w, ci]
    }' "$CSV"
    echo
    echo "audited gateway: statements relayed (sluice_statements_total) = ${stmts:-?}, records produced = ${produced:-?}"
    echo "statement records (QUERY + EXECUTE) in its spool after stopping = ${records:-?} ($spool_bytes bytes)"
    echo "pgbench transactions completed through it = $on_tx (each -S transaction is one statement; pgbench adds one setup query per run)"
    echo "refused = ${refused:-?}, unaudited = ${unaudited:-?}"
    if ((AUDIT_AA)); then
        echo "A/A run (AUDIT_AA=1): both gateways without audit, no records to count"
    elif [[ -n $records && -n $stmts && $records == "${stmts%.*}" ]]; then
        echo "records == statements: yes"
    else
        echo "records == statements: NO"
    fi
} | tee "$OUT/summary.txt"
echo
echo "raw per-round numbers: $CSV   spool summary: $OUT/audit-spool.json   pgbench output: $PGBENCH_LOG"
