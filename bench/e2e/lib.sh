# shellcheck shell=bash
# shellcheck disable=SC2034  # globals set here are read by the sourcing scripts
# Shared helpers for the end-to-end benchmark scripts in bench/e2e/.
# Sourced, never run. Every service is started fresh, in a temp dir, on a free
# loopback port, and stopped by PID when the calling script exits.
#
# Callers set nothing before sourcing; after sourcing they call e2e_init, then
# the start_* functions they need. Knobs read here (all optional):
#   PGBIN          PostgreSQL binaries (default /usr/lib/postgresql/15/bin)
#   SLUICE_BIN     sluice-dp binary (default <target>/release/sluice-dp)
#   SLUICE_BUILD   1 (default): `cargo build --release -p dataplane` first
#                  (a no-op when up to date); 0: use SLUICE_BIN as it is
#   SLUICE_WORKERS workers for sluice-dp (default: unset, one per core)
#   SLUICE_NAME    start_sluice: name of its dir and log (default "sluice";
#                  set it to run a second instance next to the first)
#   SLUICE_EXTRA_YAML  start_sluice: appended to the generated config
#   KEEP_WORK      1: keep the temp work dir (PG data, configs) after exit
#   BOUNCER_POOL_SIZE  PgBouncer default_pool_size (default 20)
#   SLUICE_CPUS    CPU list (taskset -c syntax, e.g. 0-3) sluice-dp (and
#                  PgBouncer, where it is the contender) runs on
#   PG_CPUS        CPU list PostgreSQL (postmaster and backends) runs on
#   CLIENT_CPUS    CPU list the load generator runs on (in the scripts that
#                  say so in --help); all three unset: no pinning

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

# Fixed credentials of the throwaway cluster (never used anywhere else).
PG_SUPERPW=postgrespw
BENCH_USER=bench
BENCH_PW=benchpw
BENCH_DB=bench

WORK=""
PG_DATA=""
PG_PORT=""
PG_PID=""
BOUNCER_PORT=""
BOUNCER_PID=""
SLUICE_PORT=""
SLUICE_ADMIN_PORT=""
SLUICE_PID=""
SLUICE_KEY=""
SLUICE_CERT_DIR=""
CONN_PORT=""   # set by contender_conn
CONN_USER=""
CONN_PW=""
declare -a E2E_EXTRA_PIDS=()   # "name:pid" of other processes to stop
E2E_CHILD=""                    # the pgbench (or other) run now in progress
declare -a E2E_PORTS_TAKEN=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    log "ERROR: $*"
    exit 1
}

is_root() { [[ $(id -u) -eq 0 ]]; }

# Run a command as the postgres OS user when we are root (initdb refuses root).
as_pg() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Like as_pg, but execs in place (no forked parent), so `$!` is the real PID.
as_pg_exec() {
    if is_root; then
        exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        exec "$@"
    fi
}

require_cmd() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || die "required command not found: $c"
    done
}

# Print the last lines of a log file to stderr, for failure messages.
show_tail() {
    local f=$1 n=${2:-30}
    if [[ -s $f ]]; then
        printf -- '---- last %s lines of %s ----\n' "$n" "$f" >&2
        tail -n "$n" "$f" >&2
        printf -- '----\n' >&2
    fi
}

# Is a TCP port bound (any state) on this machine? Reads /proc, no tools needed.
port_in_use() {
    local hex
    hex=$(printf ':%04X' "$1")
    awk -v h="$hex" 'FNR > 1 && substr($2, length($2) - 4) == h { found = 1 }
        END { exit !found }' /proc/net/tcp /proc/net/tcp6 2>/dev/null
}

# A free loopback port, never one already handed out by this script.
free_port() {
    local p tries=0 t taken
    while ((tries < 500)); do
        tries=$((tries + 1))
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 30000))
        taken=0
        for t in "${E2E_PORTS_TAKEN[@]}"; do
            [[ $t == "$p" ]] && taken=1
        done
        ((taken)) && continue
        port_in_use "$p" && continue
        E2E_PORTS_TAKEN+=("$p")
        echo "$p"
        return 0
    done
    die "no free port found"
}

# Is a process running? A zombie (exited, not yet reaped) counts as gone.
pid_alive() {
    local stat
    [[ -n $1 ]] || return 1
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != Z ]]
}

# Stop one process by PID: SIGTERM, wait up to $3 seconds, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 wait_s=${3:-10} i
    pid_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < wait_s * 10; i++)); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    log "$name (pid $pid) did not stop within ${wait_s}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

# Called on EXIT: stop everything we started, newest first, keep the logs.
e2e_cleanup() {
    local rc=$? entry i
    trap - EXIT INT TERM
    if [[ -n $E2E_CHILD ]]; then stop_pid "run in progress" "$E2E_CHILD" 2; fi
    for ((i = ${#E2E_EXTRA_PIDS[@]} - 1; i >= 0; i--)); do
        entry=${E2E_EXTRA_PIDS[i]}
        stop_pid "${entry%%:*}" "${entry##*:}" 5
    done
    stop_pid sluice-dp "$SLUICE_PID" 10
    stop_pid pgbouncer "$BOUNCER_PID" 10
    if pid_alive "$PG_PID"; then
        # SIGINT = PostgreSQL's fast shutdown.
        kill -INT "$PG_PID" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            pid_alive "$PG_PID" || break
            sleep 0.1
        done
        if pid_alive "$PG_PID"; then
            log "PostgreSQL (pid $PG_PID) did not stop within 30s; sending SIGKILL"
            kill -KILL "$PG_PID" 2>/dev/null || true
        fi
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ -n ${OUT:-} && -d ${OUT:-} ]]; then
            mkdir -p "$OUT/logs"
            cp "$WORK"/*.log "$OUT/logs/" 2>/dev/null || true
        fi
        if [[ ${KEEP_WORK:-0} == 1 ]]; then
            log "work dir kept: $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# Create the work dir, install the exit trap.
e2e_init() {
    local v
    for v in SLUICE_CPUS PG_CPUS CLIENT_CPUS; do
        if [[ -n ${!v:-} ]]; then
            [[ ${!v} =~ ^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
                die "$v must be a CPU list such as 0-3 or 0,2,4-7, got '${!v}'"
            require_cmd taskset
            taskset -c "${!v}" true 2>/dev/null || die "$v=${!v}: taskset cannot run on those CPUs here"
        fi
    done
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/sluice-e2e.XXXXXX")
    chmod 755 "$WORK"
    if is_root; then chown postgres: "$WORK"; fi
    trap e2e_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # Every client below talks plaintext unless it says otherwise.
    export PGSSLMODE=disable
    unset PGHOST PGPORT PGUSER PGDATABASE PGPASSWORD PGSERVICE PGOPTIONS
}

# pin_for sluice|pg|client: sets PIN to the command prefix that runs a program
# on the CPUs of SLUICE_CPUS, PG_CPUS or CLIENT_CPUS (`taskset -c LIST`, which
# execs the program, so `$!` stays its PID), or to nothing when that knob is
# unset. Use as `pin_for pg; as_pg "${PIN[@]}" prog ...`.
PIN=()
pin_for() {
    local cpus
    case $1 in
    sluice) cpus=${SLUICE_CPUS:-} ;;
    pg) cpus=${PG_CPUS:-} ;;
    client) cpus=${CLIENT_CPUS:-} ;;
    *) die "pin_for: want sluice, pg or client, got '$1'" ;;
    esac
    PIN=()
    if [[ -n $cpus ]]; then PIN=(taskset -c "$cpus"); fi
}

# cpus_of PID: the CPU list PID may run on (for the start logs).
cpus_of() { taskset -pc "$1" | sed 's/.*: //'; }

# Raise the open-file limit to at least $1, or die explaining why not.
raise_nofile() {
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < want)); then
        if is_root; then
            ulimit -Hn "$want" 2>/dev/null || die "cannot raise the hard open-file limit to $want (is $hard)"
        else
            die "open-file hard limit is $hard, need $want: raise it (ulimit -Hn) first"
        fi
    fi
    ulimit -Sn "$want" || die "cannot raise the open-file limit to $want"
}

ensure_pgbouncer() {
    command -v pgbouncer >/dev/null 2>&1 && return 0
    is_root || die "pgbouncer is not installed; install the Debian package 'pgbouncer'"
    log "installing pgbouncer (apt-get)"
    apt-get update -qq >"$WORK/apt.log" 2>&1 || { show_tail "$WORK/apt.log"; die "apt-get update failed"; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >>"$WORK/apt.log" 2>&1 ||
        { show_tail "$WORK/apt.log"; die "apt-get install pgbouncer failed"; }
}

# run_logged FILE CMD...: run CMD with its output to FILE and return its exit
# status. It runs in the background and is waited for, so a signal to this
# script is acted on at once and the exit trap stops CMD too.
run_logged() {
    local outf=$1 rc=0
    shift
    "$@" >"$outf" 2>&1 &
    E2E_CHILD=$!
    wait "$E2E_CHILD" || rc=$?
    E2E_CHILD=""
    return "$rc"
}

# psql as a given user against a given port, quiet, stopping on error.
psql_at() {
    local port=$1 user=$2 pw=$3 db=$4
    shift 4
    PGPASSWORD=$pw psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U "$user" -d "$db" "$@"
}

# start_pg [max_connections]: a fresh PostgreSQL with SCRAM auth, fsync off,
# TCP on a free loopback port, plus role and database "bench".
start_pg() {
    local max_conn=${1:-200} pgdir=$WORK/pg
    [[ -x $PGBIN/initdb ]] || die "PostgreSQL binaries not found in $PGBIN (set PGBIN)"
    PG_PORT=$(free_port)
    mkdir -p "$pgdir"
    printf '%s\n' "$PG_SUPERPW" >"$pgdir/pw"
    touch "$WORK/pg.log"
    if is_root; then chown -R postgres: "$pgdir" "$WORK/pg.log"; fi
    PG_DATA=$pgdir/data
    log "PostgreSQL: initdb in $PG_DATA"
    as_pg "$PGBIN/initdb" -D "$PG_DATA" -A scram-sha-256 --pwfile="$pgdir/pw" -U postgres \
        --no-sync -E UTF8 --locale=C >"$WORK/initdb.log" 2>&1 ||
        { show_tail "$WORK/initdb.log"; die "initdb failed"; }
    pin_for pg
    as_pg "${PIN[@]}" "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$WORK/pg.log" -w -t 60 -o "-p $PG_PORT -k $pgdir \
-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
-c max_connections=$max_conn -c shared_buffers=256MB" start >"$WORK/pg_ctl.log" 2>&1 ||
        { show_tail "$WORK/pg_ctl.log"; show_tail "$WORK/pg.log"; die "PostgreSQL did not start"; }
    PG_PID=$(head -n 1 "$PG_DATA/postmaster.pid")
    if [[ -n ${PG_CPUS:-} ]]; then log "PostgreSQL on CPUs $(cpus_of "$PG_PID")"; fi
    psql_at "$PG_PORT" postgres "$PG_SUPERPW" postgres \
        -c "CREATE ROLE $BENCH_USER LOGIN PASSWORD '$BENCH_PW'" \
        -c "CREATE DATABASE $BENCH_DB OWNER $BENCH_USER" ||
        die "could not create role/database $BENCH_USER"
    log "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') up: 127.0.0.1:$PG_PORT pid $PG_PID max_connections=$max_conn"
}

# pgbench_init SCALE: `pgbench -i` directly against PostgreSQL.
pgbench_init() {
    local scale=${1:-10}
    log "pgbench -i -s $scale (direct)"
    PGPASSWORD=$BENCH_PW pgbench -i -s "$scale" -h 127.0.0.1 -p "$PG_PORT" -U "$BENCH_USER" "$BENCH_DB" \
        >"$WORK/pgbench-init.log" 2>&1 || { show_tail "$WORK/pgbench-init.log"; die "pgbench -i failed"; }
    psql_at "$PG_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -c "CHECKPOINT" 2>/dev/null || true
}

# start_pgbouncer plain|tls: transaction pooling, pool 20, SCRAM for clients
# (plain password in the userlist), PostgreSQL over TCP loopback. With "tls",
# clients may also use TLS (a self-signed certificate made with openssl).
start_pgbouncer() {
    local want_tls=$1 dir=$WORK/pgbouncer i tls_conf=""
    [[ $want_tls == plain || $want_tls == tls ]] || die "start_pgbouncer: want 'plain' or 'tls', got '$want_tls'"
    ensure_pgbouncer
    BOUNCER_PORT=$(free_port)
    mkdir -p "$dir"
    printf '"%s" "%s"\n' "$BENCH_USER" "$BENCH_PW" >"$dir/userlist.txt"
    if [[ $want_tls == tls ]]; then
        require_cmd openssl
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
            -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$dir/server.key" -out "$dir/server.pem" >"$WORK/openssl.log" 2>&1 ||
            { show_tail "$WORK/openssl.log"; die "openssl could not make a certificate for pgbouncer"; }
        tls_conf="client_tls_sslmode = allow
client_tls_key_file = $dir/server.key
client_tls_cert_file = $dir/server.pem"
    fi
    cat >"$dir/pgbouncer.ini" <<EOF
[databases]
$BENCH_DB = host=127.0.0.1 port=$PG_PORT dbname=$BENCH_DB user=$BENCH_USER password=$BENCH_PW

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $dir/userlist.txt
pool_mode = transaction
default_pool_size = ${BOUNCER_POOL_SIZE:-20}
max_client_conn = 5000
max_db_connections = 0
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 3600
$tls_conf
EOF
    touch "$WORK/pgbouncer.log"
    if is_root; then
        chown -R postgres: "$dir"
        chmod 600 "$dir/userlist.txt"
        if [[ -f $dir/server.key ]]; then chmod 600 "$dir/server.key"; fi
        chown postgres: "$WORK/pgbouncer.log"
    fi
    # (On the gateway's CPUs when SLUICE_CPUS pins them: the same cores as
    # the contender it is compared with.)
    pin_for sluice
    (as_pg_exec "${PIN[@]}" pgbouncer "$dir/pgbouncer.ini") >>"$WORK/pgbouncer.log" 2>&1 &
    BOUNCER_PID=$!
    sleep 0.2
    if [[ $(cat "/proc/$BOUNCER_PID/comm" 2>/dev/null) != pgbouncer ]]; then
        show_tail "$WORK/pgbouncer.log"
        die "pid $BOUNCER_PID is not pgbouncer (did it fail to start?)"
    fi
    for ((i = 0; i < 100; i++)); do
        pid_alive "$BOUNCER_PID" || { show_tail "$WORK/pgbouncer.log"; die "pgbouncer exited at start"; }
        if psql_at "$BOUNCER_PORT" "$BENCH_USER" "$BENCH_PW" "$BENCH_DB" -tAc "SELECT 1" >/dev/null 2>&1; then
            log "PgBouncer $(pgbouncer --version | awk 'NR==1 {print $2}') up: 127.0.0.1:$BOUNCER_PORT pid $BOUNCER_PID (transaction, pool ${BOUNCER_POOL_SIZE:-20}), $want_tls"
            return 0
        fi
        sleep 0.1
    done
    show_tail "$WORK/pgbouncer.log"
    die "pgbouncer did not accept a query within 10s on port $BOUNCER_PORT"
}

# Build (if SLUICE_BUILD=1) and locate sluice-dp; sets SLUICE_BIN. Scripts
# call it before starting anything, so a build never overlaps a measurement;
# later calls do nothing.
SLUICE_BIN_READY=0
ensure_sluice_bin() {
    ((SLUICE_BIN_READY)) && return 0
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    [[ $target == /* ]] || target=$REPO_ROOT/$target
    SLUICE_BIN=${SLUICE_BIN:-$target/release/sluice-dp}
    if [[ ${SLUICE_BUILD:-1} == 1 ]]; then
        log "cargo build --release -p dataplane (no-op when up to date)"
        (cd "$REPO_ROOT" && cargo build --release -p dataplane) >"$WORK/cargo-build.log" 2>&1 ||
            { show_tail "$WORK/cargo-build.log" 40; die "building sluice-dp failed (SLUICE_BUILD=0 uses an existing binary)"; }
    fi
    [[ -x $SLUICE_BIN ]] || die "sluice-dp binary not found at $SLUICE_BIN"
    # Run a private copy, so a rebuild during the run cannot change what is measured.
    cp "$SLUICE_BIN" "$WORK/sluice-dp"
    log "using sluice-dp built $(date -r "$SLUICE_BIN" '+%F %T') ($SLUICE_BIN), copied to the work dir"
    SLUICE_BIN=$WORK/sluice-dp
    SLUICE_BIN_READY=1
}

# start_sluice plain|tls: writes the config, mints an API key, waits for /readyz
# and for one query through the gateway. With "tls", also serves TLS using a
# dev certificate from `sluice-dp dev-certs`.
start_sluice() {
    local want_tls=$1 name=${SLUICE_NAME:-sluice} cfg out verifier i
    local dir=$WORK/$name slog=$WORK/${name}-dp.log
    [[ $want_tls == plain || $want_tls == tls ]] || die "start_sluice: want 'plain' or 'tls', got '$want_tls'"
    ensure_sluice_bin
    require_cmd curl
    mkdir -p "$dir"
    out=$("$SLUICE_BIN" apikey) || die "sluice-dp apikey failed"
    SLUICE_KEY=$(printf '%s\n' "$out" | sed -n 's/^key: *//p' | head -n 1)
    verifier=$(printf '%s\n' "$out" | sed -n 's/^verifier: *//p' | head -n 1)
    [[ -n $SLUICE_KEY && $verifier == SCRAM-SHA-256\$* ]] ||
        die "unexpected 'sluice-dp apikey' output (want 'key: ...' and 'verifier: SCRAM-SHA-256\$...'): $out"
    SLUICE_PORT=$(free_port)
    SLUICE_ADMIN_PORT=$(free_port)
    cfg=$dir/sluice.yaml
    {
        printf 'listen: ["127.0.0.1:%s"]\n' "$SLUICE_PORT"
        printf 'admin_listen: "127.0.0.1:%s"\n' "$SLUICE_ADMIN_PORT"
        if [[ -n ${SLUICE_WORKERS:-} ]]; then printf 'workers: %s\n' "$SLUICE_WORKERS"; fi
        if [[ $want_tls == tls ]]; then
            SLUICE_CERT_DIR=$dir/certs
            rm -rf "$SLUICE_CERT_DIR"
            "$SLUICE_BIN" dev-certs --dir "$SLUICE_CERT_DIR" >"$WORK/sluice-dev-certs.log" 2>&1 ||
                { show_tail "$WORK/sluice-dev-certs.log"; die "sluice-dp dev-certs failed"; }
            printf 'tls: { cert_file: "%s", key_file: "%s" }\n' "$SLUICE_CERT_DIR/server.pem" "$SLUICE_CERT_DIR/server.key"
        fi
        cat <<EOF
connections:
  - name: $BENCH_DB
    target: { host: 127.0.0.1, port: $PG_PORT, database: $BENCH_DB, user: $BENCH_USER, password: $BENCH_PW }
identities:
  - name: agent
    api_key: "$verifier"
grants:
  - { connections: [$BENCH_DB], identities: [agent] }
EOF
        if [[ -n ${SLUICE_EXTRA_YAML:-} ]]; then printf '%s\n' "$SLUICE_EXTRA_YAML"; fi
    } >"$cfg"
    "$SLUICE_BIN" check-config --config "$cfg" >"$WORK/sluice-check-config.log" 2>&1 ||
        { cat "$WORK/sluice-check-config.log" >&2; die "sluice-dp refused the generated config $cfg"; }
    pin_for sluice
    "${PIN[@]}" "$SLUICE_BIN" --config "$cfg" >>"$slog" 2>&1 &
    SLUICE_PID=$!
    for ((i = 0; i < 300; i++)); do
        pid_alive "$SLUICE_PID" || { show_tail "$slog"; die "sluice-dp exited at start (config: $cfg)"; }
        if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$SLUICE_ADMIN_PORT/readyz" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    ((i < 300)) || { show_tail "$slog"; die "sluice-dp /readyz not 200 within 30s"; }
    psql_at "$SLUICE_PORT" agent "$SLUICE_KEY" "$BENCH_DB" -tAc "SELECT 1" >"$WORK/sluice-check.log" 2>&1 ||
        { cat "$WORK/sluice-check.log" >&2; show_tail "$slog"; die "a query through sluice-dp failed"; }
    log "sluice-dp ($name) up: 127.0.0.1:$SLUICE_PORT admin :$SLUICE_ADMIN_PORT pid $SLUICE_PID workers ${SLUICE_WORKERS:-default}, $want_tls${SLUICE_CPUS:+, on CPUs $(cpus_of "$SLUICE_PID")}"
}

# Connection arguments for pgbench/psql per contender: sets CONN_PORT,
# CONN_USER, CONN_PW.
contender_conn() {
    case $1 in
    direct) CONN_PORT=$PG_PORT CONN_USER=$BENCH_USER CONN_PW=$BENCH_PW ;;
    pgbouncer) CONN_PORT=$BOUNCER_PORT CONN_USER=$BENCH_USER CONN_PW=$BENCH_PW ;;
    sluice) CONN_PORT=$SLUICE_PORT CONN_USER=agent CONN_PW=$SLUICE_KEY ;;
    *) die "unknown contender: $1 (known: direct sluice pgbouncer)" ;;
    esac
}

# awk functions the summaries share: `sort(a, n)` sorts a[1..n] in place
# (insertion sort: a handful of rounds), `median(a, n)` sorts and returns
# the median (0 when n is 0; callers print "n/a" by n). Use as
# awk "$AWK_MEDIAN"'<program>'.
AWK_MEDIAN='
    function sort(a, n,    i, j, t) {
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
    }
    function median(a, n) {
        if (n == 0) return 0
        sort(a, n)
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
'

# CPU time (user+system, all threads) of a process, in clock ticks.
proc_cpu_ticks() {
    local stat rest
    stat=$(<"/proc/$1/stat") || die "process $1 is gone"
    rest=${stat##*) }   # fields after "(comm) "; field 3 (state) comes first
    # shellcheck disable=SC2086
    set -- $rest
    echo $((${12} + ${13}))   # utime (field 14) + stime (field 15)
}

# Resident set size of a process in KiB (VmRSS).
proc_rss_kib() {
    awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) exit 1 }' "/proc/$1/status" ||
        die "cannot read VmRSS of pid $1"
}

# Write a description of the machine and versions to a file (callers append
# their knobs).
write_meta() {
    local f=$1
    {
        echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "host: $(uname -srm)"
        echo "cores: $(nproc)"
        echo "cpu: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
        echo "postgres: $("$PGBIN/postgres" --version 2>/dev/null)"
        echo "pgbench: $(pgbench --version 2>/dev/null)"
        if command -v pgbouncer >/dev/null 2>&1; then echo "pgbouncer: $(pgbouncer --version | head -n 1)"; fi
        echo "sluice git: $(git -C "$REPO_ROOT" describe --always --dirty 2>/dev/null || echo 'no commit')"
        echo "script: $0"
    } >"$f"
}
