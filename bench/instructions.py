#!/usr/bin/env python3
"""User-space instructions per transaction of pgwarden and PgBouncer, counted by valgrind's callgrind.

CPU time per transaction drifts by 5-10 % between runs on a shared machine; an instruction count does not. Each
proxy runs under callgrind twice, once for N and once for 3N pgbench transactions (8 clients) of one workload
shape, and the difference of the two totals over 2N transactions is what one transaction costs in user space
(start-up and connection set-up cancel out). Kernel time is not counted: for that, and for the whole CPU, see
run.py's CPU/tx, cs/tx and syscalls/tx rows. With --keep DIR the callgrind files stay there for
`callgrind_annotate` (where the instructions go, function by function).

usage: bench/instructions.py [--shapes simple,prepared,orm,commented] [--unix] [-n N] [--keep DIR]
Needs what run.py needs, and valgrind (installed with apt-get when missing and run as root).
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as B  # noqa: E402  (the benchmark's PostgreSQL, proxies' configuration and pgbench runner)

SHAPES = {
    "simple": lambda tmp: ["-S", "-M", "simple"],
    "prepared": lambda tmp: ["-S", "-M", "prepared"],
    # A custom script's :scale comes from -s.
    "orm": lambda tmp: ["-f", str(tmp / "orm.sql"), "-M", "prepared", "-s", "1"],
    "commented": lambda tmp: ["-f", str(tmp / "commented-orm.sql"), "-M", "prepared", "-s", "1"],
}
CLIENTS = 8


def ensure_valgrind():
    if shutil.which("valgrind"):
        return
    if os.geteuid() != 0:
        sys.exit("instructions: valgrind is missing; install it with apt-get")
    B.log("installing valgrind")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "valgrind"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def total_instructions(path):
    m = re.search(r"^(?:summary|totals): (\d+)", Path(path).read_text(), re.M)
    if not m:
        raise RuntimeError(f"no totals in {path}")
    return int(m.group(1))


class Counted:
    """One proxy under callgrind on a port of its own, next to the benchmark's (same PostgreSQL, same settings)."""

    def __init__(self, bench, target, out):
        self.bench, self.target, self.out = bench, target, out
        self.port = B.free_port()
        tmp = bench.tmp
        if target == "pgwarden":
            cfg = (tmp / "pgwarden.yaml").read_text()
            cfg = cfg.replace(f"127.0.0.1:{bench.ports['pgwarden']}", f"127.0.0.1:{self.port}")
            cfg = cfg.replace(f"127.0.0.1:{bench.admin_port}", f"127.0.0.1:{B.free_port()}")
            (tmp / "counted.yaml").write_text(cfg)
            self.cmd = [str(tmp / "pgwarden"), "proxy", "--config", str(tmp / "counted.yaml")]
        else:
            ini = (tmp / "pgbouncer.ini").read_text()
            ini = ini.replace(f"listen_port = {bench.ports['pgbouncer']}", f"listen_port = {self.port}")
            ini = ini.replace("logfile = pgbouncer.log", "logfile = counted.log")
            (tmp / "counted.ini").write_text(ini)
            self.cmd = [shutil.which("pgbouncer") or "/usr/sbin/pgbouncer", "counted.ini"]

    def run(self, shape, extra, transactions, unix):
        """Total instructions of one whole run of the proxy that served `transactions` per client."""
        b = self.bench
        path = self.out / f"{shape}-{self.target}-{transactions}.callgrind"
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={path}", *self.cmd],
                                cwd=b.tmp, stdout=open(b.tmp / f"counted-{self.target}.out", "w"),
                                stderr=subprocess.STDOUT, preexec_fn=b.runner._demote)
        saved = b.ports[self.target]
        try:
            B.wait_port(self.port, timeout=60)
            time.sleep(1)
            b.ports[self.target] = self.port
            b.pgbench(self.target, [*extra, "-c", str(CLIENTS), "-j", "2"], transactions=transactions, unix=unix)
        finally:
            b.ports[self.target] = saved
            # pgwarden drains on SIGINT; PgBouncer stops at once on SIGTERM. Either way callgrind writes its file.
            proc.send_signal(signal.SIGINT if self.target == "pgwarden" else signal.SIGTERM)
            proc.wait(timeout=120)
        return total_instructions(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--unix", action="store_true", help="clients connect over the Unix socket")
    ap.add_argument("-n", type=int, default=500, help="transactions per client in the shorter run (default 500)")
    ap.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = ap.parse_args()
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        sys.exit(f"instructions: unknown shapes {unknown}; known: {list(SHAPES)}")
    ensure_valgrind()
    bench = B.Bench(argparse.Namespace(quick=True, rounds=1, duration=2, json=None, only=None))
    rows = []
    try:
        bench.start()
        out = bench.tmp / "callgrind"
        out.mkdir()
        if bench.runner.uid is not None:
            shutil.chown(out, bench.runner.uid, bench.runner.gid)
        for shape in shapes:
            extra = SHAPES[shape](bench.tmp)
            per_tx = {}
            for target in ("pgwarden", "pgbouncer"):
                counted = Counted(bench, target, out)
                short = counted.run(shape, extra, args.n, args.unix)
                long = counted.run(shape, extra, 3 * args.n, args.unix)
                per_tx[target] = (long - short) / (2 * args.n * CLIENTS)
            rows.append((shape, per_tx["pgwarden"], per_tx["pgbouncer"]))
            B.log(f"{shape}: pgwarden {per_tx['pgwarden']:.0f}, PgBouncer {per_tx['pgbouncer']:.0f} instructions/tx")
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for f in out.iterdir():
                shutil.copy(f, args.keep / f.name)
    finally:
        bench.stop()
    via = "Unix socket" if args.unix else "TCP"
    print(f"\nuser-space instructions per transaction ({via}, {CLIENTS} clients, callgrind)\n")
    print("| shape | pgwarden | PgBouncer | pgwarden / PgBouncer |")
    print("|---|---:|---:|---:|")
    for shape, pw, pb in rows:
        print(f"| {shape} | {pw:,.0f} | {pb:,.0f} | {pw / pb:.2f}× |")


if __name__ == "__main__":
    main()
