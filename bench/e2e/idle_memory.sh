#!/usr/bin/env bash
# Memory per idle client connection of sluice-dp, plaintext and TLS.
#
# Starts a fresh PostgreSQL 15 (max_connections above N); then, for each mode,
# a fresh sluice-dp (with a dev TLS certificate), opens N authenticated client
# connections through it with the idle-conns helper (session established,
# optionally one SELECT 1, then idle), and reads sluice-dp's VmRSS from
# /proc/PID/status before and while they are held. Prints KiB per connection;
# raw numbers go to $OUT/idle_memory.csv. GATEWAY=pgbouncer measures PgBouncer
# the same way, for reference. See README.md for the knobs.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${N:-1000}
MODES=${MODES:-"plain tls"}
CONCURRENCY=${CONCURRENCY:-16}
PING=${PING:-1}
SETTLE=${SETTLE:-2}
CYCLES=${CYCLES:-1}
GATEWAY=${GATEWAY:-sluice}
IDLE_BUILD=${IDLE_BUILD:-1}
TARGET_KIB=32

if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    echo
    echo "Knobs (env): N=$N MODES=\"$MODES\" CONCURRENCY=$CONCURRENCY PING=$PING (1: one SELECT 1 per connection)"
    echo "  SETTLE=$SETTLE (s) CYCLES=$CYCLES (open/close cycles per fresh gateway) GATEWAY=$GATEWAY (sluice|pgbouncer) SLUICE_WORKERS=${SLUICE_WORKERS:-<one per core>} OUT=<dir> IDLE_BUILD=0|1"
    echo "  SLUICE_BIN SLUICE_BUILD=0|1 PGBIN KEEP_WORK=1"
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"

for v in N CONCURRENCY SETTLE CYCLES; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
((N >= 1 && CONCURRENCY >= 1 && CYCLES >= 1)) || die "N, CONCURRENCY and CYCLES must be at least 1"
[[ $PING == 0 || $PING == 1 ]] || die "PING must be 0 or 1"
for m in $MODES; do
    [[ $m == plain || $m == tls ]] || die "unknown mode '$m' (known: plain tls)"
done
[[ $GATEWAY == sluice || $GATEWAY == pgbouncer ]] || die "GATEWAY must be sluice or pgbouncer"

OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/sluice-idle.XXXXXX")}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
CSV=$OUT/idle_memory.csv

require_cmd psql awk
# The helper holds N sockets, sluice-dp up to 2N (client + target side), and
# PostgreSQL one backend per target connection.
raise_nofile $((4 * N + 1024))
e2e_init
write_meta "$OUT/meta.txt"
{
    echo "N=$N MODES=$MODES CONCURRENCY=$CONCURRENCY PING=$PING SETTLE=$SETTLE CYCLES=$CYCLES"
    echo "GATEWAY=$GATEWAY SLUICE_WORKERS=${SLUICE_WORKERS:-default}"
} >>"$OUT/meta.txt"
log "output dir: $OUT"

IDLE_DIR=$E2E_DIR/idle-conns
IDLE_BIN=$IDLE_DIR/target/release/idle-conns
if [[ $IDLE_BUILD == 1 ]]; then
    log "building the idle-conns helper (cargo build --release in $IDLE_DIR; no-op when up to date)"
    (cd "$IDLE_DIR" && cargo build --release) >"$WORK/idle-conns-build.log" 2>&1 ||
        { show_tail "$WORK/idle-conns-build.log" 40; die "building idle-conns failed"; }
fi
[[ -x $IDLE_BIN ]] || die "idle-conns helper not found at $IDLE_BIN (IDLE_BUILD=1 builds it)"

if [[ $GATEWAY == sluice ]]; then ensure_sluice_bin; fi
start_pg $((N + 100 > 1100 ? N + 100 : 1100))
sslmode_of() { if [[ $1 == tls ]]; then echo require; else echo disable; fi; }

# A fresh gateway per mode (so memory freed by one mode cannot be reused by the
# next), warmed up with one connection of that mode so one-time lazy setup is
# not counted. Sets GW_PID and GW_LOG.
start_gateway() {
    local m=$1
    if [[ $GATEWAY == sluice ]]; then
        start_sluice tls
        GW_PID=$SLUICE_PID GW_LOG=$WORK/sluice-dp.log
    else
        start_pgbouncer tls
        GW_PID=$BOUNCER_PID GW_LOG=$WORK/pgbouncer.log
    fi
    contender_conn "$GATEWAY"
    PGSSLMODE=$(sslmode_of "$m") psql_at "$CONN_PORT" "$CONN_USER" "$CONN_PW" "$BENCH_DB" -tAc "SELECT 1" \
        >/dev/null 2>"$WORK/warmup.log" ||
        { cat "$WORK/warmup.log" >&2; show_tail "$GW_LOG"; die "warm-up query through $GATEWAY ($m) failed"; }
    sleep "$SETTLE"
}

stop_gateway() {
    if [[ $GATEWAY == sluice ]]; then
        stop_pid sluice-dp "$SLUICE_PID" 10
        SLUICE_PID=""
    else
        stop_pid pgbouncer "$BOUNCER_PID" 10
        BOUNCER_PID=""
    fi
    GW_PID=""
}

fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
pg_bench_backends() {
    psql_at "$PG_PORT" postgres "$PG_SUPERPW" postgres -tAc \
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '$BENCH_USER'"
}

HOLD_FIFO=$WORK/hold.fifo
IDLE_PID=""

# hold_cycle MODE CYCLE BASELINE_KIB: open N connections, measure, close them;
# appends one CSV row. KiB/conn is against BASELINE_KIB, the fresh process's
# RSS before its first cycle, so a later cycle that grows again shows a leak.
hold_cycle() {
    local m=$1 cycle=$2 base=$3 ssl tag rss0 fds0 rss1 fds1 rss2 backends open_s per rc closed t_start t_ready deadline
    local -a helper_args=(--concurrency "$CONCURRENCY")
    ssl=$(sslmode_of "$m")
    tag="$m cycle $cycle/$CYCLES"
    rss0=$(proc_rss_kib "$GW_PID")
    fds0=$(fd_count "$GW_PID")
    rm -f "$HOLD_FIFO"
    mkfifo "$HOLD_FIFO"
    if [[ $PING == 1 ]]; then helper_args+=(--ping); fi
    log "$tag: opening $N connections through $GATEWAY (sslmode=$ssl), RSS before: $rss0 KiB"
    t_start=$(date +%s.%N)
    # Output files are opened before the FIFO (whose open blocks until we
    # open its write end), and the old output is gone, so a stale "ready"
    # line can never be read.
    rm -f "$WORK/idle-conns.out"
    PGPASSWORD=$CONN_PW "$IDLE_BIN" "${helper_args[@]}" "$N" \
        "host=127.0.0.1 port=$CONN_PORT user=$CONN_USER dbname=$BENCH_DB sslmode=$ssl connect_timeout=30" \
        >"$WORK/idle-conns.out" 2>>"$WORK/idle-conns.log" <"$HOLD_FIFO" &
    IDLE_PID=$!
    E2E_EXTRA_PIDS+=("idle-conns:$IDLE_PID")
    exec 3>"$HOLD_FIFO" # the helper holds its connections until this closes
    deadline=$((SECONDS + 60 + N / 5))
    until grep -q '^ready ' "$WORK/idle-conns.out" 2>/dev/null; do
        if ! pid_alive "$IDLE_PID"; then
            show_tail "$WORK/idle-conns.log"
            show_tail "$GW_LOG"
            die "idle-conns ($tag) exited before all $N connections were ready"
        fi
        ((SECONDS < deadline)) || { show_tail "$WORK/idle-conns.log"; die "idle-conns ($tag): $N connections not ready in time"; }
        sleep 0.2
    done
    t_ready=$(date +%s.%N)
    sleep "$SETTLE"
    pid_alive "$GW_PID" || { show_tail "$GW_LOG" 40; die "$GATEWAY died holding $N connections"; }
    rss1=$(proc_rss_kib "$GW_PID")
    fds1=$(fd_count "$GW_PID")
    backends=$(pg_bench_backends)
    open_s=$(awk -v a="$t_start" -v b="$t_ready" 'BEGIN { printf "%.2f", b - a }')
    per=$(awk -v a="$base" -v b="$rss1" -v n="$N" 'BEGIN { printf "%.2f", (b - a) / n }')
    log "$tag: $N idle connections (opened in ${open_s}s): RSS $rss1 KiB, +$((rss1 - base)) KiB over the fresh process = $per KiB/conn; $GATEWAY fds $fds0 -> $fds1; PG backends of '$BENCH_USER': $backends"

    exec 3>&- # release
    rc=0
    wait "$IDLE_PID" || rc=$?
    IDLE_PID=""
    closed=$(sed -n 's/^closed-by-server //p' "$WORK/idle-conns.out")
    if [[ $rc -ne 0 ]]; then
        log "WARNING: idle-conns ($tag) exited $rc; $GATEWAY closed ${closed:-?} connections while they were idle"
        show_tail "$WORK/idle-conns.log" 10
    fi
    sleep "$SETTLE"
    rss2=$(proc_rss_kib "$GW_PID")
    log "$tag: after closing: RSS $rss2 KiB"
    echo "$m,$cycle,$N,$base,$rss0,$rss1,$rss2,$per,$fds0,$fds1,$backends,$open_s,${closed:-}" >>"$CSV"
}

echo "mode,cycle,n,rss_fresh_kib,rss_before_kib,rss_idle_kib,rss_after_close_kib,kib_per_conn,fds_before,fds_idle,pg_backends_idle,open_seconds,closed_by_server" >"$CSV"
for m in $MODES; do
    start_gateway "$m"
    base=$(proc_rss_kib "$GW_PID")
    for ((cycle = 1; cycle <= CYCLES; cycle++)); do
        hold_cycle "$m" "$cycle" "$base"
    done
    stop_gateway
done

{
    echo
    if [[ $GATEWAY == sluice ]]; then
        echo "== sluice-dp memory per idle client connection (N=$N, PING=$PING, workers ${SLUICE_WORKERS:-default}) =="
    else
        echo "== pgbouncer memory per idle client connection (N=$N, PING=$PING, transaction pool ${BOUNCER_POOL_SIZE:-20}) =="
    fi
    awk -F, -v target="$TARGET_KIB" -v gw="$GATEWAY" 'NR == 1 { next } {
        printf "%-6s cycle %d: %8.2f KiB/conn  (RSS %d fresh -> %d KiB idle, %d KiB after close; %s fds %d -> %d; PG backends %d)  target <= %d: %s\n",
            $1, $2, $8, $4, $6, $7, gw, $9, $10, $11, target, ($8 <= target ? "met" : "NOT met")
    }' "$CSV"
} | tee "$OUT/summary.txt"
echo
echo "raw numbers: $CSV   logs: $OUT/logs/"
