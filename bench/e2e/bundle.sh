#!/usr/bin/env bash
# Pack what the bench/e2e scripts run into one relocatable archive, for a
# measuring machine that has no package registry (the many-core machine some
# sessions are lent, say).
#
# The archive holds PostgreSQL 15 (postgres, initdb, pg_ctl, pgbench, psql,
# its modules and share files), curl and GNU time, the release sluice-dp,
# and every shared library they load, down to this machine's glibc and its
# loader. Each program is rewritten with patchelf to use that loader and to
# look for libraries only in the archive, under PREFIX, so the target's own
# libraries (another glibc, another OpenSSL) never mix in.
#
# On the target: `bench/e2e/bundle-install.sh ARCHIVE` unpacks it to PREFIX
# and makes the paths the scripts expect (/usr/lib/postgresql/15/bin,
# /usr/bin/time, pgbench/psql/curl on PATH via PREFIX/bin). Then run the
# scripts there with SLUICE_BUILD=0 SLUICE_BIN=PREFIX/bin/sluice-dp.
#
# Knobs (env): PREFIX (default /opt/sluice-bench, where the target unpacks it),
# OUT_ARCHIVE (default <repo>/.bundle/sluice-bench.tar.gz), SLUICE_BIN
# (default <target>/release/sluice-dp), PGBIN (default
# /usr/lib/postgresql/15/bin).
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PREFIX=${PREFIX:-/opt/sluice-bench}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGLIB=$(dirname "$PGBIN")/lib
PGSHARE=${PGSHARE:-/usr/share/postgresql/15}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/sluice-dp}
OUT_ARCHIVE=${OUT_ARCHIVE:-$REPO_ROOT/.bundle/sluice-bench.tar.gz}

die() {
    echo "bundle.sh: $*" >&2
    exit 1
}
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi
[[ $# -eq 0 ]] || die "no arguments expected (configure with env vars; see --help)"
[[ $PREFIX == /* ]] || die "PREFIX must be an absolute path, got '$PREFIX'"
command -v patchelf >/dev/null || die "patchelf is needed (apt-get install patchelf)"
[[ -x $PGBIN/postgres ]] || die "PostgreSQL binaries not found in $PGBIN (set PGBIN)"
[[ -x $SLUICE_BIN ]] || die "sluice-dp not found at $SLUICE_BIN (cargo build --release -p dataplane --bin sluice-dp)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is needed (apt-get install time)"
CURL=$(command -v curl) || die "curl is needed"

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/sluice-bundle.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
root=$STAGE/root
mkdir -p "$root/bin" "$root/lib" "$root/pg/bin" "$root/pg/lib" "$root/pg/share"

progs=()
for p in postgres initdb pg_ctl pgbench psql; do
    cp "$PGBIN/$p" "$root/pg/bin/$p"
    progs+=("$root/pg/bin/$p")
done
# Modules initdb and the server load (plpgsql, text-search dictionaries,
# encoding conversions); not the LLVM JIT provider, which pulls in LLVM.
for m in "$PGLIB"/*.so; do
    [[ $(basename "$m") == llvmjit.so ]] && continue
    cp "$m" "$root/pg/lib/"
done
cp -a "$PGSHARE/." "$root/pg/share/"
cp "$CURL" "$root/bin/curl"
cp /usr/bin/time "$root/bin/time"
cp "$SLUICE_BIN" "$root/bin/sluice-dp"
progs+=("$root/bin/curl" "$root/bin/time" "$root/bin/sluice-dp")

# Every library any of them loads (ldd resolves the whole tree), plus the
# loader and glibc's NSS module for /etc/passwd lookups.
loader=""
while read -r lib; do
    [[ -n $lib ]] || continue
    cp -L "$lib" "$root/lib/$(basename "$lib")"
done < <(for f in "${progs[@]}" "$root"/pg/lib/*.so; do ldd "$f" 2>/dev/null; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\/.*ld-linux/ { print $1 }' | sort -u)
for f in "$root"/lib/ld-linux*; do loader=$(basename "$f"); done
[[ -n $loader ]] || die "no dynamic loader found among the libraries"
for nss in /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libnss_compat.so.2; do
    if [[ -e $nss ]]; then cp -L "$nss" "$root/lib/"; fi
done

# Programs: the archive's loader, and its lib dir as DT_RPATH (which, unlike
# RUNPATH, also applies to the libraries they load, and to dlopen'd modules).
for f in "${progs[@]}"; do
    patchelf --set-interpreter "$PREFIX/lib/$loader" --force-rpath --set-rpath "$PREFIX/lib" "$f"
done
for f in "$root"/pg/lib/*.so; do
    patchelf --force-rpath --set-rpath "$PREFIX/lib" "$f"
done
"$SLUICE_BIN" --version >"$root/SLUICE_VERSION" 2>/dev/null || true
git -C "$REPO_ROOT" describe --always --dirty >>"$root/SLUICE_VERSION" 2>/dev/null || true
"$PGBIN/postgres" --version >"$root/PG_VERSION"

mkdir -p "$(dirname "$OUT_ARCHIVE")"
tar -C "$root" -czf "$OUT_ARCHIVE" .
echo "bundle: $OUT_ARCHIVE ($(du -h "$OUT_ARCHIVE" | cut -f1)), unpacks to $PREFIX"
