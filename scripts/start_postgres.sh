#!/usr/bin/env bash
# Start a local PostgreSQL for the tests that need one (the shared store, issue 14), and create
# the role they connect as: textinv/textinv, allowed to create databases (each test makes its own).
# Installs Debian's package when it is missing. PostgreSQL refuses to run as root, so the server
# runs as the postgres user. Idempotent: a server already running and a role already there are kept.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$version" ]; then
  version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
  as_root pg_createcluster "$version" main
fi
if ! as_root pg_ctlcluster "$version" main status >/dev/null 2>&1; then
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi
psql_as_postgres() { as_root su postgres -c "psql -v ON_ERROR_STOP=1 -qtAc \"$1\""; }
for _ in $(seq 1 30); do psql_as_postgres "SELECT 1" >/dev/null 2>&1 && break; sleep 1; done
if [ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname = 'textinv'")" != 1 ]; then
  psql_as_postgres "CREATE ROLE textinv LOGIN CREATEDB PASSWORD 'textinv'"
fi
echo "PostgreSQL $version is running; tests connect as textinv@127.0.0.1:5432"
