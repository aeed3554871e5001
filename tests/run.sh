#!/usr/bin/env bash
# Everything CI runs, and what a developer runs before pushing:
# format check, clippy with -D warnings, unit tests, end-to-end tests against
# real PostgreSQL with the real sluice-dp binary, store tests against real etcd.
#
# Installs missing Debian packages when run as root. Env:
#   SKIP_LINT=1     skip fmt and clippy
#   TEST_ARGS=...   extra arguments for `cargo test` (e.g. a test name filter)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }

need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v curl >/dev/null 2>&1 || need+=(curl)
# etcd for the control-plane store tests; protoc for etcd-client's build script
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "tests/run.sh: missing packages ${need[*]}; install them or run as root" >&2
    exit 1
  fi
fi

# A clean run writes about 2 GB to target/ (as CI builds it, without
# incremental caches; a developer tree with them holds several times that).
# Say so up front rather than let a linker die of a full disk (SIGBUS).
avail_kb=$(df -Pk "$ROOT" | awk 'NR == 2 { print $4 }')
if [ "${avail_kb:-0}" -lt $((3 * 1024 * 1024)) ]; then
  echo "tests/run.sh: warning: $((${avail_kb:-0} / 1024)) MiB free under $ROOT;" \
    "a clean build and test run needs about 2 GiB for target/" >&2
fi

if [ "${SKIP_LINT:-0}" != 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets -- -D warnings
fi

step "building sluice-dp"
cargo build -p dataplane --bin sluice-dp -p controlplane --bin sluice-cp --bin sluicectl

step "unit and end-to-end tests"
# shellcheck disable=SC2086
cargo test --workspace ${TEST_ARGS:-}
