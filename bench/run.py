#!/usr/bin/env python3
"""pgwarden side-by-side benchmark: direct PostgreSQL, pgwarden, PgBouncer (session mode) and HAProxy (TCP mode)
on one machine, alternating targets round by round so machine drift hits all alike.

    bench/run.py              # the full run (~40 min on 2 cores, estimated): the table in BENCHMARKS.md
    bench/run.py --quick      # seconds per measurement; what CI runs so the harness never rots
    bench/run.py --only views # only the admin views at scale (examples/views_at_scale.rs)

Installs pgbouncer and haproxy from apt when missing (root), builds pgwarden in release mode, starts a throwaway
PostgreSQL (max_connections 1200), and prints one table (median of rounds, min-max, ratio to each row's baseline)
and JSON. Everything listens on 127.0.0.1 (and, for the Unix-socket rows, on sockets in the temporary directory)
and is stopped and removed at the end, also on error or Ctrl-C.
"""

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = ["direct", "pgwarden", "pgbouncer", "haproxy"]
PROXIES = TARGETS[1:]  # the targets with a process of their own between pgbench and PostgreSQL
UNIX_TARGETS = ["direct", "pgwarden", "pgbouncer"]  # HAProxy is left out of the Unix-socket rows


def log(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bindir():
    for cand in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True):
        if (cand / "postgres").exists():
            return cand
    sys.exit("bench: PostgreSQL server binaries not found (apt-get install postgresql)")


def ensure_packages():
    required = [pkg for pkg, binary in [("pgbouncer", "pgbouncer"), ("haproxy", "haproxy")] if not shutil.which(binary) and not Path(f"/usr/sbin/{binary}").exists()]
    if required and os.geteuid() != 0:
        sys.exit(f"bench: missing {required}; install them with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if required:
        log(f"installing {' '.join(required)}")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *required], check=True, env=env, stdout=subprocess.DEVNULL)
        # The packages start system services of their own; the benchmark starts its own instances.
        for svc in required:
            subprocess.run(["service", svc, "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # perf (Debian linux-perf) counts each proxy's syscalls; without it those rows say n/a and nothing else changes.
    if not shutil.which("perf") and os.geteuid() == 0:
        log("installing linux-perf (for the syscalls/tx rows)")
        if not required:
            subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "linux-perf"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class Runner:
    """Runs processes as the `postgres` user when we are root (PostgreSQL and PgBouncer refuse root)."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.uid = self.gid = None
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            shutil.chown(workdir, self.uid, self.gid)
        self.procs = []

    def _demote(self):
        if self.uid is not None:
            os.setgid(self.gid)
            os.setuid(self.uid)

    def run(self, args, **kw):
        return subprocess.run(args, preexec_fn=self._demote, cwd=self.workdir, **kw)

    def spawn(self, args, log_name):
        out = open(self.workdir / log_name, "w")
        p = subprocess.Popen(args, preexec_fn=self._demote, cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def stop_all(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: nothing listens on {port}")


def wait_unix(path, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(1)
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"bench: nothing listens on {path}")


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n * q / 100)
    return sorted_values[min(len(sorted_values), rank) - 1]


def commented_orm_statement():
    """The other ORM shape: a short SELECT carrying a ~1.4 KB comment (an ORM's or APM's annotations, a query
    builder's provenance), returning one row whose ~4 KB is one column."""
    comment = "/* " + " ".join(f"app.module{i:02d}.Repository.find_by_id line={100 + i} caller=service.Handler.handle" for i in range(20)) + " */"
    return ('SELECT "a"."aid", "a"."bid", "a"."abalance", repeat(md5("a"."aid"::text), 125) AS "document" '
            'FROM "pgbench_accounts" AS "a" WHERE "a"."aid" = :aid ' + comment[:1400].rstrip() + " */")


def orm_statement():
    """One ORM-shaped SELECT (explicit, aliased column list; a join; LIMIT 1) of ~1.5 KB of SQL text, for a pgbench
    script run with -M prepared: one row of ~4 KB back, most of it a document column, every column depending on
    the :aid parameter. The column list is padded with further aliased columns, as an ORM's wide entity has."""
    cols = ['"a"."aid" AS "account__id"', '"a"."bid" AS "account__branch_id"', '"a"."abalance" AS "account__balance"',
            'rtrim("a"."filler") AS "account__filler"', '"b"."bid" AS "account__branch__id"',
            '"b"."bbalance" AS "account__branch__balance"',
            'CASE WHEN "a"."abalance" < 0 THEN \'debit\' ELSE \'credit\' END AS "account__kind"',
            'md5("a"."aid"::text) AS "account__etag"',
            'to_char("a"."aid", \'FM000000000\') AS "account__number"',
            "repeat(md5(\"a\".\"aid\"::text), 125) AS \"account__document\""]  # 32 x 125 = 4000 bytes
    head, tail = "SELECT ", ' FROM "pgbench_accounts" AS "a" LEFT OUTER JOIN "pgbench_branches" AS "b" ON "b"."bid" = "a"."bid" WHERE "a"."aid" = :aid LIMIT 1'
    i = 0
    while len(head + ", ".join(cols) + tail) < 1500:
        i += 1
        cols.append(f'("a"."abalance" + {i}) AS "account__ledger_entry_{i:02d}_amount"')
    return head + ", ".join(cols) + tail


# A sqlcommenter comment as Django, Rails 7.1+, Spring or OpenTelemetry append to every statement (issue 29):
# the "tagged" rows run the select-only and ORM-sized statements with it.
SQLCOMMENTER = ("/*action='show',controller='accounts',db_driver='psycopg',framework='django%3A4.2',"
                "route='%2Faccounts%2F%3Caid%3E',"
                "traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/")


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def context_switches(pid):
    """Voluntary + involuntary context switches of every thread of the process so far (/proc/PID/task/*/status)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        except OSError:
            pass  # a thread that ended meanwhile
    return total


PERF_FAILED = []  # pids perf stat could not attach to: the syscalls rows are n/a then, not an error


class SyscallCounter:
    """Counts one process's system calls (all its threads) with `perf stat -e raw_syscalls:sys_enter` while a
    measurement runs; `None` when perf is missing or not allowed (the rows then say n/a)."""

    def __init__(self, pid, workdir):
        self.out = workdir / f"perf-stat-{pid}-{time.monotonic_ns()}.csv"
        self.proc = None
        perf = shutil.which("perf")
        if perf:
            self.proc = subprocess.Popen([perf, "stat", "-x", ",", "-e", "raw_syscalls:sys_enter", "-p", str(pid), "-o", str(self.out)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.2)  # attached before the measurement starts
            if self.proc.poll() is not None:  # not allowed here (perf_event_paranoid, a seccomp profile)
                self.proc = None
                PERF_FAILED.append(pid)

    def stop(self):
        if not self.proc:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        try:
            for line in self.out.read_text().splitlines():
                fields = line.split(",")
                if len(fields) > 2 and fields[2].startswith("raw_syscalls:sys_enter") and fields[0].isdigit():
                    return int(fields[0])
        finally:
            self.out.unlink(missing_ok=True)
        return None


def rss_bytes(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def startup_packet(user, db, app):
    body = struct.pack("!I", 3 << 16)
    for k, v in [("user", user), ("database", db), ("application_name", app)]:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("connection closed by the server")
        buf += chunk
    return buf


def read_until_ready(s):
    """Reads whole messages (tag, int32 length including itself, body) up to ReadyForQuery; returns their tags.
    Parsing the headers, not looking at the tail of a recv, so a 'Z' inside a row or a split read cannot fool it."""
    tags = []
    while True:
        tag, length = struct.unpack("!cI", recv_exact(s, 5))
        body = recv_exact(s, length - 4)
        if tag == b"E":
            fields = body.decode(errors="replace").split("\0")
            raise RuntimeError(f"ErrorResponse: {' '.join(f for f in fields if f)}")
        tags.append(tag)
        if tag == b"Z":
            return tags


def simple_query(sql):
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


# A query whose text and result both outgrow small idle buffers (pgwarden's are 512 bytes per direction), so the
# connections that run it have had large buffers once: what an application's pooled, now idle, connection has.
USED_QUERY = "select repeat('r', 40000), '" + "p" * 2000 + "'"


def open_idle(port, n, query=None):
    """Opens `n` connections (trust auth) and waits for each ReadyForQuery; with `query`, each then runs it once
    (simple protocol) and reads its result up to ReadyForQuery. Returns the sockets, all idle."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(startup_packet("postgres", "postgres", "bench-idle"))
        socks.append(s)
    for s in socks:
        read_until_ready(s)
        if query:
            s.sendall(simple_query(query))
            if b"D" not in read_until_ready(s):
                raise RuntimeError(f"no row for {query[:40]!r}")
    return socks


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.tmp = Path(tempfile.mkdtemp(prefix="pgwarden-bench-"))
        self.runner = Runner(self.tmp)
        self.bindir = find_bindir()
        self.ports = {t: free_port() for t in TARGETS}
        self.admin_port = free_port()
        self.pids = {}
        self.memo, self.round, self.log_runs = {}, 0, 0
        self.scale = "1" if self.quick else "10"

    # --- setup -------------------------------------------------------------------------------
    def start(self):
        ensure_packages()
        binary = os.environ.get("PGWARDEN_BIN")
        if not binary:
            log("building pgwarden (release)")
            subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "pgwarden"], cwd=ROOT, check=True)
            binary = str(ROOT / "target/release/pgwarden")
        shutil.copy(binary, self.tmp / "pgwarden")
        os.chmod(self.tmp / "pgwarden", 0o755)
        r = self.runner
        log(f"initdb in {self.tmp}")
        r.run([self.bindir / "initdb", "-D", "data", "-U", "postgres", "--auth=trust", "--no-sync"], check=True, stdout=subprocess.DEVNULL)
        with open(self.tmp / "data/postgresql.conf", "a") as f:
            f.write(f"port = {self.ports['direct']}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{self.tmp}'\n"
                    "max_connections = 1200\nshared_buffers = 256MB\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nlog_min_messages = warning\n")
        pg = r.spawn([self.bindir / "postgres", "-D", "data"], "postgres.log")
        self.pids["direct"] = pg.pid
        wait_port(self.ports["direct"])
        time.sleep(0.5)
        log(f"pgbench -i -s {self.scale}")
        r.run([self.bindir / "pgbench", "-i", "-q", "-s", self.scale, "-h", "127.0.0.1", "-p", str(self.ports["direct"]), "-U", "postgres", "postgres"],
              check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # pgwarden as production runs it: caps configured, leak detection and metrics on, admin API up.
        (self.tmp / "pgwarden.yaml").write_text(
            f"listen: 127.0.0.1:{self.ports['pgwarden']}\nupstream: 127.0.0.1:{self.ports['direct']}\nupstream_tls: disable\n"
            f"listen_unix: {self.tmp}\nadmin_listen: 127.0.0.1:{self.admin_port}\nmax_total_connections: 1150\n"
            "defaults:\n  max_connections: 1100\n  idle_in_transaction_timeout: 5m\n"
            "rules:\n  - name: reports\n    match: { application_name: 'report-*' }\n    max_connections: 20\n")
        pw = r.spawn([self.tmp / "pgwarden", "proxy", "--config", self.tmp / "pgwarden.yaml"], "pgwarden.log")
        self.pids["pgwarden"] = pw.pid
        # PgBouncer in session mode: trust on loopback, pools raised to fit, otherwise defaults (the admin console
        # only so the RSS rows can empty its pool between measurements). pgwarden and PgBouncer also listen on
        # Unix sockets in the temporary directory, next to PostgreSQL's (.s.PGSQL.<their port> each).
        (self.tmp / "userlist.txt").write_text('"postgres" ""\n')
        (self.tmp / "pgbouncer.ini").write_text(
            f"[databases]\npostgres = host=127.0.0.1 port={self.ports['direct']} dbname=postgres\n"
            f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {self.ports['pgbouncer']}\nunix_socket_dir = {self.tmp}\n"
            "auth_type = trust\nauth_file = userlist.txt\npool_mode = session\nmax_client_conn = 2000\n"
            "default_pool_size = 1100\nmax_db_connections = 1150\nlogfile = pgbouncer.log\nadmin_users = postgres\n")
        pb = r.spawn([shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "pgbouncer.ini"], "pgbouncer.out")
        self.pids["pgbouncer"] = pb.pid
        # HAProxy in TCP mode with defaults (connection limits raised to fit).
        (self.tmp / "haproxy.cfg").write_text(
            "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n"
            f"frontend pg\n  bind 127.0.0.1:{self.ports['haproxy']}\n  maxconn 3000\n  default_backend pg\n"
            f"backend pg\n  server db 127.0.0.1:{self.ports['direct']} maxconn 3000\n")
        hp = r.spawn([shutil.which("haproxy") or "/usr/sbin/haproxy", "-f", "haproxy.cfg", "-db"], "haproxy.log")
        self.pids["haproxy"] = hp.pid
        for t in TARGETS:
            wait_port(self.ports[t])
        for t in UNIX_TARGETS:
            wait_unix(self.tmp / f".s.PGSQL.{self.ports[t]}")
        log("all targets up: " + ", ".join(f"{t}:{p}" for t, p in self.ports.items()) + f"; Unix sockets in {self.tmp}")
        self.write_orm_script()

    def write_orm_script(self):
        """The ORM-sized pgbench script; logs the statement's and its row's size once, checked against direct."""
        sql = orm_statement()
        (self.tmp / "orm.sql").write_text(f"\\set aid random(1, 100000 * :scale)\n{sql};\n")
        (self.tmp / "tagged-orm.sql").write_text(f"\\set aid random(1, 100000 * :scale)\n{sql} {SQLCOMMENTER};\n")
        commented = commented_orm_statement()
        (self.tmp / "commented-orm.sql").write_text(f"\\set aid random(1, 100000 * :scale)\n{commented};\n")
        crow = self.psql(self.ports["direct"], "postgres", commented.replace(":aid", "1"))
        log(f"ORM-sized commented statement: {len(commented)} bytes of SQL text; its row: {len(crow) - crow.count('|')} bytes in {crow.count('|') + 1} columns")
        if not (1400 <= len(commented) <= 1700 and 3900 <= len(crow) <= 4200):
            raise RuntimeError(f"ORM-sized commented statement is {len(commented)} bytes and its row {len(crow)}")
        (self.tmp / "tagged-select.sql").write_text(
            "\\set aid random(1, 100000 * :scale)\n"
            f"SELECT abalance FROM pgbench_accounts WHERE aid = :aid {SQLCOMMENTER};\n")
        row = self.psql(self.ports["direct"], "postgres", sql.replace(":aid", "1"))
        columns = row.count("|") + 1
        log(f"ORM-sized statement: {len(sql)} bytes of SQL text; its row: {len(row) - columns + 1} bytes of values in {columns} columns")
        if not (1400 <= len(sql) <= 1700 and 3900 <= len(row) <= 4600):
            raise RuntimeError(f"ORM-sized statement is {len(sql)} bytes and its row {len(row)}, not ~1.5 KB and ~4 KB")

    def stop(self):
        self.runner.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # --- measurements ------------------------------------------------------------------------
    def pgbench(self, target, extra, duration=None, transactions=None, unix=False, count_syscalls=False):
        """One pgbench run; returns its tps, the transactions it processed, and per transaction what the target's
        proxy process spent meanwhile: CPU (utime + stime from /proc, read just before and after), context switches
        of all its threads (/proc), and with `count_syscalls` its system calls (perf stat); none for direct."""
        host = str(self.tmp) if unix else "127.0.0.1"
        cmd = [self.bindir / "pgbench", "-n", "-h", host, "-p", str(self.ports[target]), "-U", "postgres", *extra]
        cmd += ["-T", str(duration)] if duration else ["-t", str(transactions)]
        cmd.append("postgres")
        pid = self.pids[target] if target != "direct" else None
        syscalls = SyscallCounter(pid, self.tmp) if pid and count_syscalls else None
        cpu_before = cpu_seconds(pid) if pid else 0.0
        cs_before = context_switches(pid) if pid else 0
        out = self.runner.run(cmd, capture_output=True, text=True)
        cpu = cpu_seconds(pid) - cpu_before if pid else None
        cs = context_switches(pid) - cs_before if pid else None
        calls = syscalls.stop() if syscalls else None
        if out.returncode != 0:
            raise RuntimeError(f"pgbench {extra} against {target} failed: {out.stderr.strip()[-500:]}")
        m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out.stdout) or re.search(r"tps = ([0-9.]+)", out.stdout)
        n = int(re.search(r"number of transactions actually processed: (\d+)", out.stdout).group(1))
        if n == 0:
            raise RuntimeError(f"pgbench {extra} against {target} processed no transaction: {out.stdout.strip()[-300:]}")
        return {"tps": float(m.group(1)), "transactions": n, "cpu_us_per_tx": cpu * 1e6 / n if pid else None,
                "cs_per_tx": cs / n if pid else None, "syscalls_per_tx": calls / n if calls is not None else None}

    def once(self, key, target, measure):
        """One measurement per round, key and target, shared by the rows that report different numbers of it (the
        tps and CPU/tx rows of one pgbench run, the latency rows of one logged run): whichever row comes first
        runs it, so `--only` may pick any of them."""
        k = (self.round, key, target)
        if k not in self.memo:
            self.memo[k] = measure()
        return self.memo[k]

    def latency(self, target, extra, duration):
        """pgbench at 1 client with a per-transaction log (written as the postgres user into the temporary
        directory, the runner's cwd): p50 and p99 of the transactions' latency, in µs (the log's third field)."""
        self.log_runs += 1
        prefix = f"latency-{target}-{self.log_runs}"
        self.pgbench(target, ["-c", "1", "-j", "1", "--log", f"--log-prefix={prefix}", *extra], duration=duration)
        files = sorted(self.tmp.glob(prefix + ".*"))
        lat = sorted(int(line.split()[2]) for f in files for line in f.read_text().splitlines() if line.strip())
        for f in files:
            f.unlink()
        if not lat:
            raise RuntimeError(f"pgbench against {target} wrote no per-transaction log ({prefix}.*)")
        return {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "transactions": len(lat)}

    def copy_out(self, target):
        rows = 16_000 if self.quick else 270_000  # x ~1001 bytes: 16 MB quick, ~270 MB full
        sql = f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT"
        start = time.perf_counter()
        out = self.runner.run([self.bindir / "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(self.ports[target]), "-U", "postgres", "-d", "postgres", "-c", sql],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        took = time.perf_counter() - start
        if out.returncode != 0:
            raise RuntimeError(f"COPY via {target}: {out.stderr.decode()[-300:]}")
        return len(out.stdout) / 1e6 / took

    def psql(self, port, db, sql):
        out = self.runner.run([self.bindir / "psql", "-X", "-tA", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", db, "-c", sql],
                              capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"psql {sql!r} on {port}: {out.stderr.strip()[-300:]}")
        return out.stdout.strip()

    def backends(self):
        return int(self.psql(self.ports["direct"], "postgres", "select count(*) from pg_stat_activity where backend_type = 'client backend'"))

    def release_servers(self, target, backends_before):
        """Waits until the server connections behind the closed clients are gone, so the next target finds
        PostgreSQL's slots free (max_connections 1200 fits one target's 1000 only) and every round starts alike.
        PgBouncer keeps a session's server connection pooled for server_idle_timeout (10 min) after its client
        left; RECONNECT makes it close them now."""
        if target == "pgbouncer":
            self.psql(self.ports["pgbouncer"], "pgbouncer", "RECONNECT")
        end = time.time() + 30
        while (left := self.backends()) > backends_before:
            if time.time() > end:
                raise RuntimeError(f"{target}: {left} server connections still open, {backends_before} before")
            time.sleep(0.2)

    def idle_rss(self, target, query=None):
        n = 100 if self.quick else 1000
        pid = self.pids[target]
        backends_before = self.backends()
        before = rss_bytes(pid)
        socks = open_idle(self.ports[target], n, query)
        # pgwarden gives an idle session's large buffers back once it has been idle 1 s, at the next
        # once-a-second housekeeping round, and the OS has the pages a round later: the RSS of connections idle
        # for longer than that.
        time.sleep(3.5)
        after = rss_bytes(pid)
        for s in socks:
            s.close()
        time.sleep(1.0)
        self.release_servers(target, backends_before)
        return max(after - before, 0) / n

    # --- the run -----------------------------------------------------------------------------
    def run(self):
        dur = 2 if self.quick else self.args.duration
        rounds = 1 if self.quick else self.args.rounds
        # (name, unit, measure, targets, baseline): each cell shows its ratio to the baseline's median. The RSS rows
        # have none: PgBouncer preallocates its client slots, so its RSS hardly moves with idle connections (0 bytes
        # in a quick run) and is no yardstick, and a direct connection's RSS is a PostgreSQL backend's.
        tests = []

        def throughput(name, extra, targets=TARGETS, unix=False):
            """A tps row and, from the same pgbench runs, what each proxy process spent per transaction: CPU,
            context switches and system calls. The syscalls are counted (perf stat) in a second, shorter run of
            the same workload, so counting them does not weigh on the CPU figure."""
            def run(t):
                return self.once(name, t, lambda: self.pgbench(t, extra, duration=dur, unix=unix))

            def counted(t):
                return self.once(f"{name} syscalls", t, lambda: self.pgbench(t, extra, duration=max(2, dur // 3), unix=unix, count_syscalls=True))
            proxies = [t for t in targets if t != "direct"]
            tests.append((name, "tps", lambda t: run(t)["tps"], targets, "direct"))
            tests.append((f"{name} CPU/tx", "cpu µs", lambda t: run(t)["cpu_us_per_tx"], proxies, "pgbouncer"))
            tests.append((f"{name} cs/tx", "cs", lambda t: run(t)["cs_per_tx"], proxies, "pgbouncer"))
            tests.append((f"{name} syscalls/tx", "calls", lambda t: counted(t)["syscalls_per_tx"], proxies, "pgbouncer"))

        def latency(label, extra):
            """p50 and p99 per transaction at 1 client, then the same minus direct's of the same round."""
            def run(t):
                return self.once(f"latency {label}", t, lambda: self.latency(t, extra, dur))
            for q in ("p50", "p99"):
                tests.append((f"latency {q}, 1 client {label}", "µs", lambda t, q=q: run(t)[q], TARGETS, "direct"))
            for q in ("p50", "p99"):
                tests.append((f"latency {q} added, 1 client {label}", "µs", lambda t, q=q: run(t)[q] - run("direct")[q], PROXIES, "pgbouncer"))

        orm = ["-f", str(self.tmp / "orm.sql"), "-M", "prepared", "-s", self.scale]  # -s: :scale of a custom script
        commented = ["-f", str(self.tmp / "commented-orm.sql"), "-M", "prepared", "-s", self.scale]
        for clients in (1, 8, 64):
            for mode in ("simple", "prepared"):
                throughput(f"select-only {clients:>2} clients {mode}", ["-S", "-c", str(clients), "-j", str(min(clients, 2)), "-M", mode])
        throughput("select-only -C (connect per transaction) 8 clients", ["-S", "-C", "-c", "8", "-j", "2"])
        throughput("ORM-sized  8 clients prepared", [*orm, "-c", "8", "-j", "2"])
        throughput("ORM-sized commented  8 clients prepared", [*commented, "-c", "8", "-j", "2"])
        tagged = ["-s", self.scale, "-c", "8", "-j", "2"]
        throughput("tagged select-only  8 clients simple", ["-f", str(self.tmp / "tagged-select.sql"), "-M", "simple", *tagged])
        throughput("tagged ORM-sized  8 clients prepared", ["-f", str(self.tmp / "tagged-orm.sql"), "-M", "prepared", *tagged])
        for mode in ("simple", "prepared"):
            throughput(f"Unix socket select-only  8 clients {mode}", ["-S", "-c", "8", "-j", "2", "-M", mode], UNIX_TARGETS, unix=True)
        throughput("Unix socket ORM-sized  8 clients prepared", [*orm, "-c", "8", "-j", "2"], UNIX_TARGETS, unix=True)
        throughput("Unix socket ORM-sized commented  8 clients prepared", [*commented, "-c", "8", "-j", "2"], UNIX_TARGETS, unix=True)
        latency("select-only simple", ["-S", "-M", "simple"])
        latency("ORM-sized", orm)
        tests.append(("COPY OUT throughput", "MB/s", self.copy_out, TARGETS, "direct"))
        tests.append(("RSS per idle client connection", "bytes", self.idle_rss, PROXIES, None))
        # Connections that never ran a query flatter a proxy: buffers grown by one query must be given back too.
        tests.append(("RSS per idle client connection after queries", "bytes", lambda t: self.idle_rss(t, USED_QUERY), PROXIES, None))
        if self.args.only:
            tests = [t for t in tests if re.search(self.args.only, t[0])]
        results = {name: {t: [] for t in targets} for name, _, _, targets, _ in tests}
        for r in range(rounds):
            self.round = r
            for name, unit, fn, targets, _ in tests:
                # Rotate the order every round so drift and warm-up hit every target alike.
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for t in order:
                    v = fn(t)
                    results[name][t].append(v)
                    log(f"round {r + 1}/{rounds} {name} {t}: {'n/a' if v is None else f'{v:.2f}'} {unit}")
        return tests, results


def render(tests, results):
    lines = []
    w = max([52] + [len(name) for name, *_ in tests])
    header = f"{'measurement':<{w}} {'unit':>6} " + " ".join(f"{t:>27}" for t in TARGETS)
    lines.append(header)
    lines.append("-" * len(header))
    summary = {}
    for name, unit, _, targets, baseline in tests:
        row = f"{name:<{w}} {unit:>6} "
        # A figure this machine cannot give (syscalls without perf) is None in every round: n/a.
        med = {t: (statistics.median(v) if v and None not in v else None) for t, v in results[name].items()}
        base = med.get(baseline) if baseline else None
        summary[name] = {"unit": unit, "baseline": baseline, "targets": {}}
        for t in TARGETS:
            if t not in med:
                row += f"{'-':>27} "
                continue
            vals = results[name][t]
            if med[t] is None:
                row += f"{'n/a':>27} "
                summary[name]["targets"][t] = {"median": None, "values": vals}
                continue
            d = {"cpu µs": 1, "cs": 2, "calls": 2}.get(unit, 0)  # per-transaction figures are small
            cell = f"{med[t]:.{d}f} ({min(vals):.{d}f}-{max(vals):.{d}f})"
            summary[name]["targets"][t] = {"median": med[t], "min": min(vals), "max": max(vals), "values": vals}
            if base and base > 0:
                ratio = med[t] / base
                cell += f" {ratio:.2f}x"
                summary[name]["targets"][t][f"ratio_to_{baseline}"] = ratio
            elif baseline:
                cell += " n/a"  # the baseline measured 0 (or less: an added latency within noise): no ratio
            row += f"{cell:>27} "
        lines.append(row.rstrip())
    lines.append("")
    lines += [
        "Each cell: median (min-max) and the ratio to the row's baseline: direct for tps and absolute latency rows, PgBouncer",
        "for CPU/tx and 'added' latency rows (n/a when PgBouncer's added latency is 0 or below).",
        "CPU/tx: utime + stime of the proxy's process over the pgbench run of the tps row above it, in µs per transaction pgbench",
        "processed (no direct cell: nothing runs between pgbench and PostgreSQL there; PostgreSQL's CPU is not counted).",
        "cs/tx: context switches (voluntary + involuntary) of all the proxy's threads in that run, per transaction.",
        "syscalls/tx: the proxy's system calls per transaction (perf stat -e raw_syscalls:sys_enter) in a second run of a third of",
        "the duration (at least 2 s), so the count does not weigh on CPU/tx; n/a without perf.",
        "Unix socket rows: pgbench -> proxy over the proxy's Unix socket, proxy -> PostgreSQL over loopback TCP; direct is",
        "PostgreSQL's own socket; no HAProxy. ORM-sized: one prepared ~1.5 KB SELECT per transaction returning one ~4 KB row.",
        "Latency rows: 1 client, pgbench's per-transaction log, in µs. 'added' = the target's percentile minus direct's of the",
        "same round (no direct cell: direct's own is the absolute row above; can be negative within noise).",
        "The RSS rows have no ratio: PgBouncer preallocates its client slots, so its RSS hardly grows with idle connections",
        "and is no yardstick.",
    ]
    return "\n".join(lines), summary


def views_at_scale(quick):
    """The admin views with 10,000 connections over 2,000 clients (examples/views_at_scale.rs, in-process on the
    production runtime): time per scrape, and how late a 1 ms ticker on the relaying thread runs meanwhile.
    With --quick (the test suite) the debug build that `cargo test` already made runs at a tenth of the scale:
    it keeps the harness working; its figures are not the release build's and are not the ones to quote."""
    binary = os.environ.get("PGWARDEN_VIEWS_BENCH")
    profile = [] if quick else ["--release"]
    if not binary:
        log(f"building examples/views_at_scale ({'debug' if quick else 'release'})")
        subprocess.run(["cargo", "build", *profile, "--locked", "--example", "views_at_scale"], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / ("debug" if quick else "release") / "examples/views_at_scale")
    scale = ["1000", "200"] if quick else ["10000", "2000"]
    out = subprocess.run([binary, *scale], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    build = " (quick: debug build)" if quick else ""
    lines = ["", f"Admin views with {r['connections']} connections over {r['clients']} clients (one runtime thread){build}:",
             f"{'view':<14} {'median ms':>10} {'max ms':>8} {'bytes':>10} {'requests':>9}"]
    for v in ("metrics", "clients", "connections"):
        lines.append(f"/{v:<13} {r[v + '_ms_median']:>10.2f} {r[v + '_ms_max']:>8.2f} {r[v + '_bytes']:>10} {r[v + '_requests']:>9}")
    lines.append(f"lag of a 1 ms ticker on the relay thread: idle p50 {r['lag_idle_ms_p50']:.2f} ms, p99 {r['lag_idle_ms_p99']:.2f} ms; "
                 f"while scraped back to back p50 {r['lag_scraped_ms_p50']:.2f} ms, p99 {r['lag_scraped_ms_p99']:.2f} ms, "
                 f"max {r['lag_scraped_ms_max']:.2f} ms")
    return "\n".join(lines), r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="seconds per measurement, one round (CI)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    ap.add_argument("--only", help="run only the measurements whose name matches this regex")
    args = ap.parse_args()
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        bench.start()
        tests, results = bench.run()
    finally:
        bench.stop()
    table, summary = render(tests, results)
    print(table)
    doc = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}, "quick": args.quick, "results": summary}
    if not args.only or re.search(args.only, "admin views at scale"):
        views_table, doc["views_at_scale"] = views_at_scale(args.quick)
        print(views_table)
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    # The harness must produce every number; a zero means something did not run. (RSS growth may be 0, and a latency
    # "added" over direct may be 0 or below within noise: the absolute latency rows it comes from must be positive.)
    # Syscalls need perf: without it (or where it may not attach) those rows are n/a, said once here.
    perf = shutil.which("perf") is not None and not PERF_FAILED
    if not shutil.which("perf"):
        log("perf not found: the syscalls/tx rows are n/a (apt-get install linux-perf)")
    elif PERF_FAILED:
        log("perf stat could not attach to the proxies (perf_event_paranoid or a seccomp profile): the syscalls/tx rows are n/a")
    missing = [n for n, s in summary.items() for t, v in s["targets"].items()
               if (v["median"] is None or v["median"] <= 0) and "RSS" not in n and " added" not in n
               and (perf or not n.endswith("syscalls/tx"))]
    if missing:
        sys.exit(f"bench: no result for {missing}")


if __name__ == "__main__":
    main()
