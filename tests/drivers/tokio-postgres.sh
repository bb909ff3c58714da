#!/usr/bin/env bash
# A real driver's own test suite through pgwarden: tokio-postgres.
#
# Takes the tokio-postgres package of our Cargo.lock from crates.io (`cargo fetch --locked`, checksum
# checked against Cargo.lock), unpacks it under target/drivers/, builds its test suite (all features, as
# its upstream CI does) and runs it twice, each time against a fresh throwaway PostgreSQL set up the way
# the suite expects (users, passwords, pg_hba.conf, extensions, ssl = on):
#   direct   PostgreSQL on 127.0.0.1:5433, the address the suite is written for;
#   pgwarden PostgreSQL on a free port, pgwarden with its default config (upstream_tls: prefer, so TLS
#            to the database) on 127.0.0.1:5433.
# Writes the per-test comparison to target/drivers/tokio-postgres-comparison.txt and exits 1 when a
# test's result through pgwarden differs from its direct result, unless the test is listed in
# tests/drivers/tokio-postgres-expected-differences.txt.
#
# Environment: PGWARDEN_BIN (default target/release/pgwarden; not built here), PG_BINDIR (default
# /usr/lib/postgresql/15/bin), DRIVERS_RUN_TIMEOUT (seconds per suite run, default 900).
# Needs cargo, curl, openssl, python3 and, when run as root, the `postgres` user to run the server as.
# Everything it starts is stopped and removed on every exit path.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT=$PWD
# One collation for sort and join.
export LC_ALL=C

PGWARDEN_BIN=${PGWARDEN_BIN:-target/release/pgwarden}
PG_BINDIR=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
RUN_TIMEOUT=${DRIVERS_RUN_TIMEOUT:-900}
OUT=$ROOT/target/drivers
export CARGO_TARGET_DIR=$ROOT/target/drivers-build
ALLOW=$ROOT/tests/drivers/tokio-postgres-expected-differences.txt
REPORT=$OUT/tokio-postgres-comparison.txt
# The suite connects to 127.0.0.1:5433 and localhost:5433, fixed in its code.
SUITE_PORT=5433
# Same selection for the build and both runs: the integration suite (tests/test), every feature.
CARGO_ARGS=(--locked --all-features --test test)

log() { echo "drivers: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------------------------------------------
# Cleanup: everything started below registers here; the EXIT trap runs on success, failure and signals.
PGWARDEN_PID=""
CHILD_PID=""
declare -A PG_DIRS=() # temp dir -> run name
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # timeout(1) leads its own process group and passes the signal on to cargo and everything under it.
  if [[ -n $CHILD_PID ]]; then kill -TERM "$CHILD_PID" 2>/dev/null || true; wait "$CHILD_PID" 2>/dev/null || true; fi
  stop_pgwarden
  local d
  for d in "${!PG_DIRS[@]}"; do stop_postgres "$d"; done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------
# Checks before anything starts.
[[ -x $PG_BINDIR/postgres && -x $PG_BINDIR/initdb && -x $PG_BINDIR/pg_ctl ]] ||
  die "no PostgreSQL server binaries in $PG_BINDIR (set PG_BINDIR; scripts/setup.sh installs postgresql-15)"
[[ $PGWARDEN_BIN == /* ]] || PGWARDEN_BIN=$ROOT/$PGWARDEN_BIN
[[ -x $PGWARDEN_BIN ]] || die "no pgwarden binary at $PGWARDEN_BIN (cargo build --release --locked, or set PGWARDEN_BIN)"
for tool in cargo openssl python3 curl; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done
AS_PG=()
if [[ $(id -u) -eq 0 ]]; then
  id postgres >/dev/null 2>&1 || die "PostgreSQL refuses to run as root and there is no 'postgres' user"
  AS_PG=(runuser -u postgres --)
fi

# A listener on 127.0.0.1:PORT or [::1]:PORT (the suite's `localhost` may resolve to either).
port_in_use() {
  python3 - "$1" <<'EOF'
import socket, sys
port = int(sys.argv[1])
for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    try:
        with socket.socket(family) as s:
            s.settimeout(1)
            s.connect((addr, port))
            sys.exit(0)
    except OSError:
        pass
sys.exit(1)
EOF
}
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port_in_use "$SUITE_PORT" && die "port $SUITE_PORT is taken on 127.0.0.1 or ::1; the suite needs it"

# Runs cargo in DIR under timeout(1), output to LOG, in the background so that a signal to this script
# is handled at once (the trap stops it); returns cargo's status (124 on timeout).
cargo_in() { # DIR LOG SECONDS ARGS...
  local rc=0
  # RUST_BACKTRACE=0: a failing test's panic message without the stack of the test harness.
  (cd "$1" && RUST_BACKTRACE=0 exec timeout "$3" cargo "${@:4}") >"$2" 2>&1 &
  CHILD_PID=$!
  wait "$CHILD_PID" || rc=$?
  CHILD_PID=""
  return "$rc"
}

mkdir -p "$OUT"
SECONDS=0

# ---------------------------------------------------------------------------------------------------
# The package: the tokio-postgres of our Cargo.lock, via cargo from crates.io into cargo's package cache.
read -r VERSION CHECKSUM < <(awk '
  /^name = "tokio-postgres"$/ { f = 1; next }
  f && /^version = / { gsub(/"/, "", $3); v = $3 }
  f && /^checksum = / { gsub(/"/, "", $3); print v, $3; exit }' Cargo.lock) ||
  die "tokio-postgres is not in Cargo.lock"
CRATE_DIR=$OUT/tokio-postgres-$VERSION
if [[ ! -f $CRATE_DIR/.unpacked-$CHECKSUM ]]; then
  log "fetching tokio-postgres $VERSION (cargo fetch --locked)"
  cargo fetch --locked --quiet
  crate_file=""
  for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"tokio-postgres-$VERSION.crate"; do
    [[ -f $f ]] && [[ $(sha256sum "$f" | cut -d' ' -f1) == "$CHECKSUM" ]] && crate_file=$f && break
  done
  [[ -n $crate_file ]] || die "no tokio-postgres-$VERSION.crate with checksum $CHECKSUM in cargo's cache"
  rm -rf "$CRATE_DIR"
  tar -xzf "$crate_file" -C "$OUT"
  touch "$CRATE_DIR/.unpacked-$CHECKSUM"
fi
t_fetch=$SECONDS

# ---------------------------------------------------------------------------------------------------
# The build: one cargo process, one job (the machine has 2 cores and others build too).
log "building the tokio-postgres $VERSION test suite (CARGO_TARGET_DIR=$CARGO_TARGET_DIR, -j 1)"
cargo_in "$CRATE_DIR" "$OUT/tokio-postgres-build.log" 3600 test "${CARGO_ARGS[@]}" --no-run -j 1 ||
  { tail -n 40 "$OUT/tokio-postgres-build.log" >&2; die "build failed (target/drivers/tokio-postgres-build.log)"; }
t_build=$((SECONDS - t_fetch))

# ---------------------------------------------------------------------------------------------------
# PostgreSQL, set up as the suite expects: superuser `postgres` trusted over TCP; `pass_user` (cleartext
# `password`), `md5_user` (md5, its password stored as md5) and `scram_user` (scram-sha-256), all with
# the password `password`; the extensions hstore, citext and ltree; ssl = on with a self-signed
# certificate. Loopback only, the Unix socket in its own directory.
pg() { (cd "$1" && "${AS_PG[@]}" env LC_ALL=C "$PG_BINDIR/$2" "${@:3}"); }

start_postgres() { # NAME PORT; sets PG_DIR
  local port=$2 dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/pgwarden-drivers-$1.XXXXXX")
  PG_DIRS[$dir]=$1
  PG_DIR=$dir
  [[ ${#AS_PG[@]} -eq 0 ]] || chown postgres: "$dir"
  chmod 700 "$dir"
  pg "$dir" initdb -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$dir/data/server.key" -out "$dir/data/server.crt" >/dev/null 2>&1 || die "openssl failed"
  chmod 600 "$dir/data/server.key"
  cat >>"$dir/data/postgresql.conf" <<EOF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  cat >"$dir/data/pg_hba.conf" <<EOF
# TYPE DATABASE USER        ADDRESS       METHOD
local  all      postgres                  trust
host   all      pass_user   127.0.0.1/32  password
host   all      pass_user   ::1/128       password
host   all      md5_user    127.0.0.1/32  md5
host   all      md5_user    ::1/128       md5
host   all      scram_user  127.0.0.1/32  scram-sha-256
host   all      scram_user  ::1/128       scram-sha-256
host   all      postgres    127.0.0.1/32  trust
host   all      postgres    ::1/128       trust
EOF
  [[ ${#AS_PG[@]} -eq 0 ]] || chown -R postgres: "$dir"
  pg "$dir" pg_ctl -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
    { cat "$dir/server.log" >&2; die "PostgreSQL did not start"; }
  pg "$dir" psql -X -q -v ON_ERROR_STOP=1 -h "$dir" -p "$port" -U postgres -d postgres >/dev/null <<'EOF' ||
CREATE ROLE pass_user LOGIN PASSWORD 'password';
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN PASSWORD 'password';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN PASSWORD 'password';
CREATE EXTENSION hstore;
CREATE EXTENSION citext;
CREATE EXTENSION ltree;
EOF
    die "setting up the roles and extensions failed"
}

stop_postgres() { # DIR
  local dir=$1
  [[ -d $dir ]] || return 0
  if [[ -f $dir/data/postmaster.pid ]]; then
    pg "$dir" pg_ctl -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
  fi
  cp "$dir/server.log" "$OUT/tokio-postgres-${PG_DIRS[$dir]}.server.log" 2>/dev/null || true
  rm -rf "$dir"
  unset 'PG_DIRS[$dir]'
}

# ---------------------------------------------------------------------------------------------------
# pgwarden with its default config (no file; no PGWARDEN_* variable of the caller's leaks in).
start_pgwarden() { # UPSTREAM_PORT
  local admin
  admin=$(free_port)
  local clean_env=()
  local v
  for v in $(compgen -e); do [[ $v == PGWARDEN_* ]] && clean_env+=(-u "$v"); done
  env "${clean_env[@]}" RUST_LOG=info NO_COLOR=1 "$PGWARDEN_BIN" proxy --listen "127.0.0.1:$SUITE_PORT" \
    --admin-listen "127.0.0.1:$admin" --upstream "127.0.0.1:$1" >"$OUT/tokio-postgres-pgwarden.proxy.log" 2>&1 &
  PGWARDEN_PID=$!
  PGWARDEN_ADMIN=http://127.0.0.1:$admin
  for _ in $(seq 100); do
    kill -0 "$PGWARDEN_PID" 2>/dev/null || { cat "$OUT/tokio-postgres-pgwarden.proxy.log" >&2; die "pgwarden exited"; }
    curl -fsS -o /dev/null "$PGWARDEN_ADMIN/readyz" 2>/dev/null && return 0
    sleep 0.1
  done
  die "pgwarden did not become ready"
}

stop_pgwarden() {
  [[ -n $PGWARDEN_PID ]] || return 0
  kill -TERM "$PGWARDEN_PID" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$PGWARDEN_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$PGWARDEN_PID" 2>/dev/null || true
  wait "$PGWARDEN_PID" 2>/dev/null || true
  PGWARDEN_PID=""
}

# ---------------------------------------------------------------------------------------------------
# One run of the suite; its output goes to target/drivers/tokio-postgres-NAME.log, the per-test
# results ("NAME RESULT" lines, sorted) to target/drivers/tokio-postgres-NAME.results.
run_suite() { # NAME
  local name=$1 logf=$OUT/tokio-postgres-$1.log rc=0
  log "running the suite ($name)"
  cargo_in "$CRATE_DIR" "$logf" "$RUN_TIMEOUT" test "${CARGO_ARGS[@]}" -j 1 -- --color never || rc=$?
  [[ $rc -ne 124 ]] || log "the $name run timed out after ${RUN_TIMEOUT}s; unfinished tests count as missing"
  sed -nE 's/^test (.+) \.\.\. (ok|FAILED|ignored)(, .*)?$/\1 \2/p' "$logf" | sort >"$OUT/tokio-postgres-$name.results"
  [[ -s $OUT/tokio-postgres-$name.results ]] || { tail -n 40 "$logf" >&2; die "the $name run reported no test"; }
}

# (a) direct
start_postgres direct "$SUITE_PORT"
t0=$SECONDS
run_suite direct
t_direct=$((SECONDS - t0))
stop_postgres "$PG_DIR"

# (b) through pgwarden
pg_port=$(free_port)
start_postgres pgwarden "$pg_port"
start_pgwarden "$pg_port"
# The upstream leg really is TLS (the default upstream_tls: prefer against a server with ssl = on).
upstream_ssl=$("$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$SUITE_PORT" -U postgres -d postgres \
  -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>&1) || upstream_ssl="error: $upstream_ssl"
t0=$SECONDS
run_suite pgwarden
t_pgwarden=$((SECONDS - t0))
# Sessions pgwarden admitted during the run (the suite really went through it), and its complaints.
pgwarden_opened=$(curl -fsS "$PGWARDEN_ADMIN/metrics" |
  awk '/^pgwarden_client_connections_opened_total/ { n += $NF } END { print n + 0 }')
pgwarden_errors=$(grep -cE '\b(ERROR|WARN)\b|panicked' "$OUT/tokio-postgres-pgwarden.proxy.log" || true)
stop_pgwarden
stop_postgres "$PG_DIR"

# ---------------------------------------------------------------------------------------------------
# The comparison.
allowed=()
while IFS= read -r line; do
  entry=${line%%#*}
  entry=${entry//[[:space:]]/}
  [[ -n $entry ]] || continue
  [[ $line == *"#"?* ]] || die "$ALLOW: '$entry' has no '# reason'"
  allowed+=("$entry")
done <"$ALLOW"
is_allowed() { local a; for a in "${allowed[@]}"; do [[ $a == "$1" ]] && return 0; done; return 1; }

count() { awk -v r="$2" '$2 == r { n++ } END { print n + 0 }' "$OUT/tokio-postgres-$1.results"; }
# The `---- NAME stdout ----` block of a failed test, from a run's log.
failure_output() { # RUN TEST
  awk -v t="---- $2 stdout ----" '
    $0 == t { f = 1; print; next }
    f && (/^---- .* stdout ----$/ || /^failures:$/ || /^test result:/) { exit }
    f { print }' "$OUT/tokio-postgres-$1.log"
}

mapfile -t rows < <(join -a1 -a2 -e missing -o 0,1.2,2.2 \
  "$OUT/tokio-postgres-direct.results" "$OUT/tokio-postgres-pgwarden.results")
differing=() unexpected=()
for row in "${rows[@]}"; do
  read -r t a b <<<"$row"
  [[ $a == "$b" ]] && continue
  differing+=("$t")
  is_allowed "$t" || unexpected+=("$t")
done
stale=()
for a in "${allowed[@]}"; do
  printf '%s\n' "${differing[@]}" | grep -qxF -- "$a" || stale+=("$a")
done

{
  echo "tokio-postgres $VERSION test suite (tests/test, --all-features): direct vs through pgwarden"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "PostgreSQL: $("$PG_BINDIR/postgres" --version)"
  echo "pgwarden: $PGWARDEN_BIN ($("$PGWARDEN_BIN" --version 2>/dev/null || echo '?')), default config"
  echo "localhost resolves to: $(getent ahosts localhost | awk '!seen[$1]++ { printf "%s ", $1 }')(the suite's only listener is 127.0.0.1:$SUITE_PORT in both runs)"
  echo "pgwarden -> PostgreSQL over TLS (pg_stat_ssl.ssl): $upstream_ssl"
  echo "sessions pgwarden admitted (psql check + suite): $pgwarden_opened"
  echo "pgwarden log lines at WARN/ERROR or panics: $pgwarden_errors (target/drivers/tokio-postgres-pgwarden.proxy.log)"
  echo "seconds: fetch $t_fetch, build $t_build, direct run $t_direct, pgwarden run $t_pgwarden, total $SECONDS"
  echo
  printf '%-10s %7s %7s %8s %8s\n' run passed failed ignored missing
  for r in direct pgwarden; do
    other=$([[ $r == direct ]] && echo pgwarden || echo direct)
    missing=$(join -v2 "$OUT/tokio-postgres-$r.results" "$OUT/tokio-postgres-$other.results" | wc -l)
    printf '%-10s %7s %7s %8s %8s\n' "$r" "$(count "$r" ok)" "$(count "$r" FAILED)" "$(count "$r" ignored)" "$missing"
  done
  echo
  echo "differences: ${#differing[@]} (allowed by tests/drivers/tokio-postgres-expected-differences.txt: $((${#differing[@]} - ${#unexpected[@]})))"
  for t in "${differing[@]}"; do
    printf '%s\n' "${rows[@]}" | awk -v t="$t" -v allowed="$(is_allowed "$t" && echo ' (allowed)')" \
      '$1 == t { printf "  %s: direct %s, through pgwarden %s%s\n", t, $2, $3, allowed }'
  done
  if ((${#stale[@]})); then
    echo "allow-list entries that no longer differ (remove them): ${stale[*]}"
  fi
  echo
  echo "output of the differing tests that failed:"
  for t in "${differing[@]}"; do
    for r in direct pgwarden; do
      [[ $(awk -v t="$t" '$1 == t { print $2 }' "$OUT/tokio-postgres-$r.results") == FAILED ]] || continue
      echo "== $t ($r)"
      failure_output "$r" "$t" | sed 's/^/  | /'
    done
  done
  echo
  echo "per test (direct / through pgwarden):"
  for row in "${rows[@]}"; do
    read -r t a b <<<"$row"
    printf '  %-60s %-8s %-8s\n' "$t" "$a" "$b"
  done
} >"$REPORT"

sed -n '1,/^output of the differing tests/p' "$REPORT" | sed '$d' >&2
if ((${#unexpected[@]})); then
  log "FAILED: ${#unexpected[@]} test(s) differ through pgwarden and are not in the allow-list (their output: target/drivers/tokio-postgres-comparison.txt)"
  exit 1
fi
log "ok: every test has the same result through pgwarden as directly ($(count pgwarden ok) passed, $(count pgwarden FAILED) failed, $(count pgwarden ignored) ignored)"
