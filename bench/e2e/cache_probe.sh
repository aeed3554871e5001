#!/usr/bin/env bash
# Does memory traffic of the audit path's order cost PostgreSQL CPU?
#
# Runs `pgbench -S` straight against a fresh PostgreSQL while a background
# process copies 1 KiB blocks at RATE copies per second, either over a
# small region (64 KiB, stays in cache) or a big one (32 MiB, streams
# through the caches), interleaved for ROUNDS rounds, and prints
# PostgreSQL's CPU per transaction (postmaster with its reaped backends)
# for each, per round and as means. Used for bench/RESULTS.md §9.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS=${ROUNDS:-8}
SECS=${SECS:-5}
RATE=${RATE:-25000}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    echo "Knobs (env): ROUNDS=$ROUNDS SECS=$SECS RATE=$RATE (copies of 1 KiB per second)"
    exit 0
fi
for v in ROUNDS SECS RATE; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
require_cmd pgbench psql python3 awk sed
e2e_init
start_pg 200
pgbench_init 10

# The copier: RATE copies of 1 KiB per second over a region of $1 bytes.
copier() {
    python3 - "$1" "$RATE" <<'PY' &
import sys, time
size, rate = int(sys.argv[1]), int(sys.argv[2])
buf, src, pos, tick = bytearray(size), bytes(range(256)) * 4, 0, max(1, rate // 100)
while True:
    t = time.monotonic()
    for _ in range(tick):
        buf[pos:pos + 1024] = src
        pos = pos + 1024 if pos + 2048 <= size else 0
    time.sleep(max(0.0, 0.01 - (time.monotonic() - t)))
PY
    COPIER_PID=$!
}

pg_ticks() { awk '{ print $14 + $15 + $16 + $17 }' "/proc/$PG_PID/stat"; }
results=()
for ((r = 1; r <= ROUNDS; r++)); do
    for k in small big; do
        if [[ $k == small ]]; then copier 65536; else copier 33554432; fi
        sleep 0.5
        t0=$(pg_ticks)
        out=$(PGPASSWORD=$BENCH_PW pgbench -n -S -c 10 -j 2 -T "$SECS" -h 127.0.0.1 -p "$PG_PORT" -U "$BENCH_USER" "$BENCH_DB" 2>&1) ||
            die "pgbench failed: $out"
        sleep 0.3
        t1=$(pg_ticks)
        kill "$COPIER_PID"
        wait "$COPIER_PID" 2>/dev/null || true
        tx=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
        us=$(awk -v t=$((t1 - t0)) -v hz="$(getconf CLK_TCK)" -v n="$tx" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')
        log "round $r/$ROUNDS copies over the $k region: PostgreSQL $us us CPU per transaction"
        results+=("$k $us")
    done
done
printf '%s\n' "${results[@]}" | awk '{ s[$1] += $2; n[$1]++ } END {
    printf "PostgreSQL CPU per transaction, mean of %d rounds: small region %.2f us, big region %.2f us\n", n["big"], s["small"] / n["small"], s["big"] / n["big"] }'
