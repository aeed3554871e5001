#!/usr/bin/env bash
# End-to-end cost of result masking: Sluice with masking on ÷ masking off.
#
# Starts a fresh PostgreSQL 15 and one sluice-dp (release build, static
# config) on free loopback ports. The gateway has two connections to the same
# database: `bench` with the built-in default masking profile and
# `bench_nomask` with `masking_profile: none`. A table of ~1 KB rows of mixed
# text (order notes with dates, amounts, hex references; some rows also hold
# a card number, an e-mail, an SSN or an IBAN) is seeded directly. Then, for
# every protocol mode, pgbench runs a custom script (a SELECT of ROWS
# consecutive rows at a random offset) against `bench_nomask` and `bench`,
# interleaved for ROUNDS rounds (off -> on, then on -> off: ABBA), and the
# script prints the median tps of each and the median (min-max) of the
# per-round ratios on/off, plus values masked per transaction (from
# /metrics) to show the masking happened, sluice-dp's own CPU time per
# transaction (utime+stime from /proc), and the CPU time of everything the
# transaction ran on (pgbench via /usr/bin/time, PostgreSQL's postmaster with
# its reaped backends, sluice-dp): on a busy shared machine these move far
# less than throughput, and their ratio off/on estimates the throughput ratio
# of a CPU-bound run.
# Raw per-round numbers go to $OUT/mask_overhead.csv; services are started
# by lib.sh as README.md describes. Results: bench/RESULTS.md section 8.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODES=${MODES:-"simple extended"}
CLIENTS=${CLIENTS:-4}
ROUNDS=${ROUNDS:-11}
SECS=${SECS:-5}
THREADS=${THREADS:-2}
PAUSE=${PAUSE:-0}
ROWS=${ROWS:-20}
TABLE_ROWS=${TABLE_ROWS:-20000}
CONTENDERS=${CONTENDERS:-"off on"}

usage() {
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): MODES=\"$MODES\" (simple extended prepared) CLIENTS=$CLIENTS ROUNDS=$ROUNDS"
    echo "  SECS=$SECS THREADS=$THREADS PAUSE=$PAUSE ROWS=$ROWS (rows per SELECT) TABLE_ROWS=$TABLE_ROWS"
    echo "  CONTENDERS=\"$CONTENDERS\" (any of: direct off on) SLUICE_WORKERS=${SLUICE_WORKERS:-<one per core>}"
    echo "  OUT=<dir> SLUICE_BIN, SLUICE_BUILD=0|1, PGBIN, KEEP_WORK=1"
    echo "  SLUICE_CPUS, PG_CPUS, CLIENT_CPUS: CPU lists (taskset -c) for sluice-dp, PostgreSQL, pgbench"
    echo "  SLUICE_EXTRA_YAML=<lines added to the gateway's config, e.g. 'limits: { buffer_bytes: 32768 }'>"
    echo "  SLUICE_MASK_KERNEL=avx512|avx2|ssse3|scalar (passed to sluice-dp; default: the fastest)"
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    usage
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for v in CLIENTS ROUNDS SECS THREADS PAUSE ROWS TABLE_ROWS; do
    is_uint "${!v}" || die "$v must be a non-negative integer, got '${!v}'"
done
((ROUNDS >= 1 && SECS >= 1 && THREADS >= 1 && CLIENTS >= 1 && ROWS >= 1)) ||
    die "ROUNDS, SECS, THREADS, CLIENTS and ROWS must be at least 1"
((TABLE_ROWS > ROWS)) || die "TABLE_ROWS must be larger than ROWS"
for m in $MODES; do
    [[ " simple extended prepared " == *" $m "* ]] || die "unknown mode '$m' (known: simple extended prepared)"
done
ORDER=()
for k in direct off on; do
    if [[ " $CONTENDERS " == *" $k "* ]]; then ORDER+=("$k"); fi
done
for k in $CONTENDERS; do
    [[ " direct off on " == *" $k "* ]] || die "unknown contender '$k' (known: direct off on)"
done
[[ " ${ORDER[*]} " == *" off "* && " ${ORDER[*]} " == *" on "* ]] || die "CONTENDERS must include off and on"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-mask.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/mask_overhead.csv
PGBENCH_LOG=$OUT/pgbench.log

require_cmd pgbench psql awk sed curl getconf
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed (Debian package 'time')"
e2e_init
write_meta "$OUT/meta.txt"
{
    echo "MODES=$MODES CLIENTS=$CLIENTS ROUNDS=$ROUNDS SECS=$SECS THREADS=$THREADS ROWS=$ROWS TABLE_ROWS=$TABLE_ROWS"
    echo "CONTENDERS=${ORDER[*]} SLUICE_WORKERS=${SLUICE_WORKERS:-default}"
    echo "SLUICE_CPUS=${SLUICE_CPUS:-any} PG_CPUS=${PG_CPUS:-any} CLIENT_CPUS=${CLIENT_CPUS:-any}"
    echo "SLUICE_EXTRA_YAML=${SLUICE_EXTRA_YAML:-}"
} >>"$OUT/meta.txt"

n_modes=$(wc -w <<<"$MODES")
est=$((n_modes * ROUNDS * ${#ORDER[@]} * (SECS + PAUSE)))
log "output dir: $OUT"
log "plan: modes [$MODES] x $ROUNDS rounds x [${ORDER[*]}], c$CLIENTS, ${SECS}s each: about $((est / 60)) min $((est % 60)) s of runs"

ensure_sluice_bin
start_pg 100

# ~1 KB rows of mixed text; every 10th row holds a card, every 5th an
# e-mail, every 20th an SSN, every 20th (offset) an IBAN. The rest is what
# order notes look like: ids, dates, amounts, hex references, digits that
# are not sensitive (so the detectors have candidates to reject).
log "seeding mask_rows: $TABLE_ROWS rows of ~1 KB"
psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" >"$WORK/seed.log" 2>&1 <<EOF || { show_tail "$WORK/seed.log"; die "seeding failed"; }
CREATE TABLE mask_rows (
    id int PRIMARY KEY,
    customer text NOT NULL,
    contact text NOT NULL,
    note text NOT NULL,
    amount numeric(10, 2) NOT NULL,
    created timestamptz NOT NULL
);
INSERT INTO mask_rows
SELECT g,
       'customer ' || (g % 997) || ' (account ' || lpad((g * 7919 % 100000)::text, 6, '0') || ')',
       CASE WHEN g % 5 = 0 THEN 'user' || g || '@example.com' ELSE 'contact via portal, ticket ' || (g * 31) END,
       (SELECT string_agg(format('Order %s-%s shipped %s to depot %s, qty %s at %s EUR, ref %s.',
                                 g, i, date '2024-01-01' + (g + i) % 365, (g * i) % 97, i + 1,
                                 round(((g * 13 + i) % 10000) / 100.0, 2), md5(g::text || ':' || i)), ' ')
          FROM generate_series(1, 8) i)
       || CASE
            WHEN g % 10 = 0 THEN ' Paid with card ' || (ARRAY['4111 1111 1111 1111', '5500-0000-0000-0004', '378282246310005'])[1 + g % 3] || '.'
            WHEN g % 20 = 1 THEN ' Customer SSN 536-22-8841 on file.'
            WHEN g % 20 = 2 THEN ' Refund to GB82 WEST 1234 5698 7654 32.'
            ELSE ' No payment details.'
          END,
       round((g % 100000) / 7.0, 2),
       timestamptz '2024-01-01 00:00:00+00' + g * interval '37 minutes'
  FROM generate_series(1, $TABLE_ROWS) g;
ANALYZE mask_rows;
EOF
psql_at "$PG_PORT" postgres "$PG_SUPERPW" "$BENCH_DB" -c "CHECKPOINT" >/dev/null 2>&1 || true
avg=$(psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -tAc \
    "SELECT round(avg(octet_length(m::text))) FROM mask_rows m")
log "mask_rows: average row $avg bytes"
echo "average row size (as text): $avg bytes" >>"$OUT/meta.txt"

# sluice-dp with two connections to the same database: masking on (the
# built-in default profile) and off.
start_sluice_mask() {
    local dir=$WORK/sluice cfg out verifier i
    mkdir -p "$dir"
    out=$("$SLUICE_BIN" apikey) || die "sluice-dp apikey failed"
    SLUICE_KEY=$(printf '%s\n' "$out" | sed -n 's/^key: *//p' | head -n 1)
    verifier=$(printf '%s\n' "$out" | sed -n 's/^verifier: *//p' | head -n 1)
    [[ -n $SLUICE_KEY && $verifier == SCRAM-SHA-256\$* ]] || die "unexpected 'sluice-dp apikey' output: $out"
    SLUICE_PORT=$(free_port)
    SLUICE_ADMIN_PORT=$(free_port)
    cfg=$dir/sluice.yaml
    {
        printf 'listen: ["127.0.0.1:%s"]\n' "$SLUICE_PORT"
        printf 'admin_listen: "127.0.0.1:%s"\n' "$SLUICE_ADMIN_PORT"
        if [[ -n ${SLUICE_WORKERS:-} ]]; then printf 'workers: %s\n' "$SLUICE_WORKERS"; fi
        cat <<EOF
connections:
  - name: $BENCH_DB
    target: { host: 127.0.0.1, port: $PG_PORT, database: $BENCH_DB, user: $BENCH_USER, password: $BENCH_PW }
  - name: ${BENCH_DB}_nomask
    masking_profile: none
    target: { host: 127.0.0.1, port: $PG_PORT, database: $BENCH_DB, user: $BENCH_USER, password: $BENCH_PW }
identities:
  - name: agent
    api_key: "$verifier"
grants:
  - { connections: [$BENCH_DB, ${BENCH_DB}_nomask], identities: [agent] }
EOF
        if [[ -n ${SLUICE_EXTRA_YAML:-} ]]; then printf '%s\n' "$SLUICE_EXTRA_YAML"; fi
    } >"$cfg"
    "$SLUICE_BIN" check-config --config "$cfg" >"$WORK/sluice-check-config.log" 2>&1 ||
        { cat "$WORK/sluice-check-config.log" >&2; die "sluice-dp refused the generated config $cfg"; }
    pin_for sluice
    "${PIN[@]}" "$SLUICE_BIN" --config "$cfg" >>"$WORK/sluice-dp.log" 2>&1 &
    SLUICE_PID=$!
    for ((i = 0; i < 300; i++)); do
        pid_alive "$SLUICE_PID" || { show_tail "$WORK/sluice-dp.log"; die "sluice-dp exited at start (config: $cfg)"; }
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$SLUICE_ADMIN_PORT/readyz" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    ((i < 300)) || { show_tail "$WORK/sluice-dp.log"; die "sluice-dp /readyz not 200 within 30s"; }
    log "sluice-dp up: 127.0.0.1:$SLUICE_PORT admin :$SLUICE_ADMIN_PORT pid $SLUICE_PID workers ${SLUICE_WORKERS:-default}${SLUICE_CPUS:+, on CPUs $(cpus_of "$SLUICE_PID")}"
}
start_sluice_mask
# Which classification kernel the gateway scans with (SLUICE_MASK_KERNEL, else
# the fastest this CPU runs); builds before sluice_mask_kernel_info say nothing.
MASK_KERNEL_RUN=$(curl -fsS --max-time 5 "http://127.0.0.1:$SLUICE_ADMIN_PORT/metrics" |
    sed -n 's/^sluice_mask_kernel_info{kernel="\([a-z0-9]*\)"} 1$/\1/p' | head -n 1)
log "masking kernel: ${MASK_KERNEL_RUN:-unknown}"
echo "masking kernel: ${MASK_KERNEL_RUN:-unknown}" >>"$OUT/meta.txt"

# Connection settings per contender: sets CONN_PORT CONN_USER CONN_PW CONN_DB.
mask_conn() {
    case $1 in
    direct) CONN_PORT=$PG_PORT CONN_USER=$BENCH_USER CONN_PW=$BENCH_PW CONN_DB=$BENCH_DB ;;
    off) CONN_PORT=$SLUICE_PORT CONN_USER=agent CONN_PW=$SLUICE_KEY CONN_DB=${BENCH_DB}_nomask ;;
    on) CONN_PORT=$SLUICE_PORT CONN_USER=agent CONN_PW=$SLUICE_KEY CONN_DB=$BENCH_DB ;;
    esac
}

# Sum of sluice_masked_values_total over all rules.
masked_total() {
    curl -fsS --max-time 5 "http://127.0.0.1:$SLUICE_ADMIN_PORT/metrics" |
        awk '/^sluice_masked_values_total\{/ { s += $NF } END { printf "%d\n", s }'
}

# Sanity: the same rows through both connections; `on` must hide the cards.
check_sql="SELECT note FROM mask_rows WHERE id BETWEEN 1 AND 40 ORDER BY id"
mask_conn off
off_out=$(psql_at "$CONN_PORT" "$CONN_USER" "$CONN_PW" "$CONN_DB" -tAc "$check_sql") || die "query via bench_nomask failed"
mask_conn on
on_out=$(psql_at "$CONN_PORT" "$CONN_USER" "$CONN_PW" "$CONN_DB" -tAc "$check_sql") || die "query via bench (masked) failed"
grep -q '4111 1111 1111 1111' <<<"$off_out" || die "sanity: the unmasked connection does not show the seeded card"
if grep -q '4111 1111 1111 1111' <<<"$on_out"; then die "sanity: the masked connection shows a card"; fi
grep -q '\*\*\*\* \*\*\*\* \*\*\*\* 1111' <<<"$on_out" || die "sanity: the masked connection shows no masked card"
log "sanity check ok: masking on hides the cards, masking off shows them"

SCRIPT=$WORK/select_rows.sql
cat >"$SCRIPT" <<EOF
\set start random(1, $((TABLE_ROWS - ROWS + 1)))
SELECT id, customer, contact, note, amount, created FROM mask_rows WHERE id >= :start AND id < :start + $ROWS;
EOF
cp "$SCRIPT" "$OUT/select_rows.sql"

check_alive() {
    pid_alive "$SLUICE_PID" || { show_tail "$WORK/sluice-dp.log" 40; die "sluice-dp (pid $SLUICE_PID) died during the run"; }
}

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

echo "mode,clients,round,contender,tps,transactions,masked_values,gw_cpu_ticks,gw_us_per_txn,pg_cpu_ticks,pgbench_cpu_s,total_us_per_txn,status" >"$CSV"
: >"$PGBENCH_LOG"
j=$((CLIENTS < THREADS ? CLIENTS : THREADS))
for mode in $MODES; do
    for ((r = 1; r <= ROUNDS; r++)); do
        # Odd rounds run the contenders in ORDER, even rounds in reverse
        # (ABBA): a drift within a round (a checkpoint, a neighbour's
        # build starting) then favours neither contender.
        round_order=("${ORDER[@]}")
        if ((r % 2 == 0)); then
            round_order=()
            for ((i = ${#ORDER[@]} - 1; i >= 0; i--)); do round_order+=("${ORDER[i]}"); done
        fi
        for k in "${round_order[@]}"; do
            mask_conn "$k"
            before=0 ticks0=0
            pg0=$(proc_cpu_ticks_all "$PG_PID")
            if [[ $k != direct ]]; then
                before=$(masked_total)
                ticks0=$(proc_cpu_ticks "$SLUICE_PID")
            fi
            cmd=(pgbench -n -f "$SCRIPT" -M "$mode" -c "$CLIENTS" -j "$j" -T "$SECS" -h 127.0.0.1 -p "$CONN_PORT" -U "$CONN_USER" "$CONN_DB")
            printf '==== %s round %s %s: %s\n' "$mode" "$r" "$k" "${cmd[*]}" >>"$PGBENCH_LOG"
            rc=0
            rm -f "$WORK/time.out"
            pin_for client
            run_logged "$WORK/pgbench.out" "${PIN[@]}" env PGPASSWORD="$CONN_PW" /usr/bin/time -f '%U %S' -o "$WORK/time.out" "${cmd[@]}" || rc=$?
            # Backends exit once pgbench disconnects; let the postmaster reap them.
            sleep 0.3
            pgt=$(($(proc_cpu_ticks_all "$PG_PID") - pg0))
            bench_s=$(awk '{ printf "%.2f", $1 + $2 }' "$WORK/time.out" 2>/dev/null || true)
            output=$(<"$WORK/pgbench.out")
            printf '%s\n(exit %s)\n' "$output" "$rc" >>"$PGBENCH_LOG"
            tps=$(sed -n 's/^tps = \([0-9.]*\) (without initial connection time)$/\1/p' <<<"$output" | head -n 1)
            txns=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$output" | head -n 1)
            masked="" ticks="" us="" total=""
            if [[ $k != direct ]]; then
                ticks=$(($(proc_cpu_ticks "$SLUICE_PID") - ticks0))
                masked=$(($(masked_total) - before))
                if [[ -n $txns && $txns -gt 0 ]]; then
                    us=$(awk -v t="$ticks" -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
                fi
            fi
            if [[ -n $txns && $txns -gt 0 && -n $bench_s ]]; then
                total=$(awk -v g="${ticks:-0}" -v p="$pgt" -v b="$bench_s" -v hz="$CLK_TCK" -v n="$txns" \
                    'BEGIN { printf "%.2f", ((g + p) / hz + b) * 1e6 / n }')
            fi
            if [[ -n $tps && $rc -eq 0 ]]; then
                status=ok
                log "$mode round $r/$ROUNDS masking $k: $tps tps, ${masked:-n/a} values masked, CPU/txn: gateway ${us:-n/a} us, all ${total:-n/a} us"
            else
                status=$([[ -n $tps ]] && echo aborted || echo failed)
                err=$(grep -m 1 -E 'error|FATAL|ERROR' <<<"$output" || true)
                log "$mode round $r/$ROUNDS masking $k: $status (exit $rc): ${err:-see $PGBENCH_LOG}"
            fi
            echo "$mode,$CLIENTS,$r,$k,${tps:-},${txns:-},${masked},${ticks},${us},${pgt},${bench_s},${total},$status" >>"$CSV"
            check_alive
            sleep "$PAUSE"
        done
    done
done

summarize() {
    awk -F, -v modes="$MODES" -v ks="${ORDER[*]}" -v rounds="$ROUNDS" -v secs="$SECS" -v c="$CLIENTS" \
        -v rows="$ROWS" -v threads="$j" "$AWK_MEDIAN"'
    NR == 1 { next }
    $13 == "ok" {
        tps[$1, $3, $4] = $5; tx[$1, $3, $4] = $6; mv[$1, $3, $4] = $7
        if ($9 != "") us[$1, $3, $4] = $9
        if ($12 != "") tot[$1, $3, $4] = $12
    }
    END {
        nm = split(modes, M, " "); nk = split(ks, K, " ")
        printf "\n== SELECT of %s ~1 KB rows: pgbench -n -f select_rows.sql -c %s -j %s -T %s, %s rounds ==\n", rows, c, threads, secs, rounds
        printf "%-9s", "mode"
        for (i = 1; i <= nk; i++) printf " %12s", "tps " K[i]
        printf "  %-24s %-10s %-10s %-10s %-22s %-10s %-10s %-22s %s\n", "tps on/off", "gw us off", "gw us on", "on-off us", "gw CPU on/off", "all us off", "all us on", "est. tps on/off", "masked/txn"
        for (m = 1; m <= nm; m++) {
            mode = M[m]
            printf "%-9s", mode
            for (i = 1; i <= nk; i++) {
                n = 0; delete v
                for (r = 1; r <= rounds; r++) if ((mode, r, K[i]) in tps) v[++n] = tps[mode, r, K[i]]
                printf " %12s", (n ? sprintf("%.1f", median(v, n)) : "n/a")
            }
            n = 0; delete v
            for (r = 1; r <= rounds; r++)
                if ((mode, r, "on") in tps && (mode, r, "off") in tps && tps[mode, r, "off"] > 0)
                    v[++n] = tps[mode, r, "on"] / tps[mode, r, "off"]
            if (n == 0) s = "n/a"
            else {
                med = median(v, n)
                s = sprintf("%.3f [%.3f-%.3f]", med, v[1], v[n])
                if (n < rounds) s = s sprintf(" n=%d", n)
            }
            printf "  %-24s", s
            for (i = 1; i <= 2; i++) {
                k = (i == 1) ? "off" : "on"
                n = 0; delete v
                for (r = 1; r <= rounds; r++) if ((mode, r, k) in us) v[++n] = us[mode, r, k]
                printf " %-10s", (n ? sprintf("%.1f", median(v, n)) : "n/a")
            }
            n = 0; delete v; delete w
            for (r = 1; r <= rounds; r++)
                if ((mode, r, "on") in us && (mode, r, "off") in us && us[mode, r, "off"] > 0) {
                    v[++n] = us[mode, r, "on"] - us[mode, r, "off"]
                    w[n] = us[mode, r, "on"] / us[mode, r, "off"]
                }
            printf " %-10s", (n ? sprintf("%.1f", median(v, n)) : "n/a")
            if (n) { med = median(w, n); printf " %-22s", sprintf("%.3f [%.2f-%.2f]", med, w[1], w[n]) }
            else printf " %-22s", "n/a"
            for (i = 1; i <= 2; i++) {
                k = (i == 1) ? "off" : "on"
                n = 0; delete v
                for (r = 1; r <= rounds; r++) if ((mode, r, k) in tot) v[++n] = tot[mode, r, k]
                printf " %-10s", (n ? sprintf("%.1f", median(v, n)) : "n/a")
            }
            n = 0; delete w
            for (r = 1; r <= rounds; r++)
                if ((mode, r, "on") in tot && (mode, r, "off") in tot && tot[mode, r, "on"] > 0)
                    w[++n] = tot[mode, r, "off"] / tot[mode, r, "on"]
            if (n) { med = median(w, n); printf " %-22s", sprintf("%.3f [%.2f-%.2f]", med, w[1], w[n]) }
            else printf " %-22s", "n/a"
            n = 0; delete v
            for (r = 1; r <= rounds; r++)
                if ((mode, r, "on") in tx && tx[mode, r, "on"] > 0) v[++n] = mv[mode, r, "on"] / tx[mode, r, "on"]
            printf " %s", (n ? sprintf("%.2f", median(v, n)) : "n/a")
            printf "\n"
        }
        printf "\ntps: median over rounds. tps on/off: median of per-round ratios [min-max]; a round counts only when both runs succeeded.\n"
        printf "gw us: sluice-dp CPU (utime+stime, all threads) per transaction, median; on-off: median of per-round differences;\n"
        printf "gw CPU on/off: median of per-round ratios [min-max]. all us: CPU per transaction of pgbench + PostgreSQL + sluice-dp;\n"
        printf "est. tps on/off: median of per-round (all us off) / (all us on), the throughput ratio of a CPU-bound run.\n"
        printf "masked/txn: values masked per transaction with masking on (from /metrics).\n"
    }' "$CSV"
}

summarize | tee "$OUT/summary.txt"
echo
echo "raw per-round numbers: $CSV"
echo "summary: $OUT/summary.txt   pgbench output: $PGBENCH_LOG   machine/versions: $OUT/meta.txt"
