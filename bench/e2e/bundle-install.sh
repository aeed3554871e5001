#!/usr/bin/env bash
# Unpack an archive made by bundle.sh on the machine that measures, as root.
#
#   bench/e2e/bundle-install.sh ARCHIVE [PREFIX]
#
# PREFIX must be the one the archive was made for (default /opt/sluice-bench).
# Makes /usr/lib/postgresql/15/{bin,lib} and /usr/share/postgresql/15 point
# into it (PostgreSQL finds its modules and share files relative to its own
# path), installs /usr/bin/time if the machine has none, and creates the
# `postgres` OS user that lib.sh runs initdb as. Prints the PATH to export.
set -euo pipefail

die() {
    echo "bundle-install.sh: $*" >&2
    exit 1
}
[[ $# -ge 1 && $# -le 2 ]] || die "usage: bundle-install.sh ARCHIVE [PREFIX]"
ARCHIVE=$1
PREFIX=${2:-/opt/sluice-bench}
[[ -f $ARCHIVE ]] || die "no archive at $ARCHIVE"
[[ $(id -u) -eq 0 ]] || die "run as root (it writes under /usr and adds a user)"

mkdir -p "$PREFIX"
tar -C "$PREFIX" -xzf "$ARCHIVE"
mkdir -p /usr/lib/postgresql/15 /usr/share/postgresql
for d in bin lib; do
    if [[ ! -e /usr/lib/postgresql/15/$d ]]; then ln -s "$PREFIX/pg/$d" "/usr/lib/postgresql/15/$d"; fi
done
if [[ ! -e /usr/share/postgresql/15 ]]; then ln -s "$PREFIX/pg/share" /usr/share/postgresql/15; fi
if [[ ! -x /usr/bin/time ]]; then ln -s "$PREFIX/bin/time" /usr/bin/time; fi
for p in pgbench psql; do ln -sf "$PREFIX/pg/bin/$p" "$PREFIX/bin/$p"; done
if ! id postgres >/dev/null 2>&1; then
    if command -v useradd >/dev/null; then
        useradd --system --no-create-home --shell /bin/sh postgres
    else
        echo "postgres:x:70:70:PostgreSQL:/tmp:/bin/sh" >>/etc/passwd
        echo "postgres:x:70:" >>/etc/group
    fi
fi
"$PREFIX/pg/bin/postgres" --version >/dev/null || die "the unpacked postgres does not run"
echo "export PATH=$PREFIX/bin:\$PATH"
