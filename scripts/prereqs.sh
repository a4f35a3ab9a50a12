#!/usr/bin/env bash
# Installs what pgward's tests, demo and benchmarks need on Debian/Ubuntu, if it is missing:
# PostgreSQL server and client tools (psql, pgbench, initdb), psycopg 3; with --drivers the rest
# of the driver matrix (tests/tests/drivers.rs: asyncpg, the JDBC driver and a JDK from Debian,
# Node.js, and node-postgres with pg-copy-streams from npm into $CARGO_TARGET_DIR/drivers/node);
# with --bench PgBouncer.
# Usage: scripts/prereqs.sh [--bench] [--drivers]
set -euo pipefail

want_pgbouncer=0
want_drivers=0
for arg in "$@"; do
  case "$arg" in
    --bench) want_pgbouncer=1 ;;
    --drivers) want_drivers=1 ;;
    *) echo "prereqs: unknown option $arg" >&2; exit 2 ;;
  esac
done

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
if (( want_drivers )); then
  /usr/bin/python3 -c 'import asyncpg' 2>/dev/null || missing+=(python3-asyncpg)
  [[ -f /usr/share/java/postgresql.jar ]] || missing+=(libpostgresql-jdbc-java)
  # `java File.java` compiles in memory: it needs a JDK, not only a runtime.
  command -v javac >/dev/null || missing+=(default-jdk-headless)
  command -v npm >/dev/null || missing+=(nodejs npm)
fi
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

# node-postgres for the driver matrix, pinned, from the npm registry.
node_dir="${CARGO_TARGET_DIR:-target}/drivers/node"
node_pkgs=(pg@8.23.1 pg-copy-streams@7.0.0)
if (( want_drivers )) && [[ "$(cat "$node_dir/.installed" 2>/dev/null)" != "${node_pkgs[*]}" ]]; then
  echo "prereqs: npm install ${node_pkgs[*]} into $node_dir" >&2
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --no-save --prefix "$node_dir" "${node_pkgs[@]}" >&2
  echo "${node_pkgs[*]}" >"$node_dir/.installed"
fi
