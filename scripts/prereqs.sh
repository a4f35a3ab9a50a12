#!/usr/bin/env bash
# Installs what pgward's tests, demo and benchmarks need on Debian/Ubuntu, if it is missing:
# PostgreSQL server and client tools (psql, pgbench, initdb), and optionally PgBouncer.
# Usage: scripts/prereqs.sh [--bench]
set -euo pipefail

want_pgbouncer=0
[[ "${1:-}" == "--bench" ]] && want_pgbouncer=1

missing=()
have_server=0
for dir in /usr/lib/postgresql/*/bin; do
  [[ -x "$dir/initdb" && -x "$dir/postgres" ]] && have_server=1
done
[[ -n "${PGWARD_PG_BIN:-}" && -x "${PGWARD_PG_BIN}/initdb" ]] && have_server=1
(( have_server )) || missing+=(postgresql)
command -v psql >/dev/null || missing+=(postgresql-client)
command -v pgbench >/dev/null || missing+=(postgresql-contrib)
# psycopg (3) for the driver tests of the identity methods, in Debian's own Python.
/usr/bin/python3 -c 'import psycopg' 2>/dev/null || missing+=(python3-psycopg)
if (( want_pgbouncer )); then
  command -v pgbouncer >/dev/null || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
fi

if (( ${#missing[@]} )); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "prereqs: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian's package starts a cluster of its own; pgward's scripts start their own servers.
    if command -v pg_lsclusters >/dev/null; then
      pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
        pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
      done
    fi
    service pgbouncer stop >/dev/null 2>&1 || true
  else
    echo "prereqs: missing packages: ${missing[*]}" >&2
    echo "prereqs: install them with: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
