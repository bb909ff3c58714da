#!/usr/bin/env python3
"""The pgwarden metrics a Grafana dashboard queries, checked against the metrics pgwarden exports.

Reads every PromQL expression of the dashboard (panel targets, also inside collapsed rows, and the
template variables' queries), collects the `pgwarden_*` names in them, folds a histogram's
`_bucket`/`_sum`/`_count` series into the histogram's name, and compares those names with the
exported ones, given one of three ways:

    dashboard_metrics.py DASHBOARD.json --names pgwarden_client_connections,pgwarden_build_info,...
    dashboard_metrics.py DASHBOARD.json --names-file NAMES.txt     # one name a line, `#` comments
    dashboard_metrics.py DASHBOARD.json --metrics-text METRICS.txt # a /metrics scrape: `# TYPE` lines

    dashboard_metrics.py DASHBOARD.json                            # only list the names it uses

--metrics-text takes the Prometheus text format a running proxy serves on its admin port, e.g.
`curl -s http://127.0.0.1:9187/metrics > METRICS.txt`, and reads the names from its `# TYPE NAME
KIND` lines (a histogram's TYPE line carries the histogram's name). The prometheus crate prints a
family only once it has a sample: a labelled family (per client, per reason) appears after the
first connection, refusal or close that creates its label set; pgwarden_client_max_connections
only for a capped client, pgwarden_info only with the Kubernetes identity (PGWARDEN_POD_NAME, ...)
set. A test comparing against a live proxy has to produce those first.

scripts/check-k8s.sh runs this against SPEC.md's list, which lives once, in
scripts/check_k8s_render.py (`check_k8s_render.py --spec-metrics` prints it; the rendered chart's
dashboard ConfigMap is checked there too, with the labels).

Besides the names, a dashboard fails when its JSON does not parse, when a panel has no
expression, or when a panel or query names a data source other than the `${datasource}` variable
(a dashboard imported elsewhere must not point at one Grafana's data source uid).

Exit status: 0 when every name is exported, 1 when not (the unknown names are printed), 64 on bad
usage or unreadable input.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Iterator

METRIC_RE = re.compile(r"\bpgwarden_[a-zA-Z0-9_]*[a-zA-Z0-9]")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
DATASOURCE_VAR = "${datasource}"


def base_name(name: str) -> str:
    """pgwarden_x_seconds_bucket -> pgwarden_x_seconds; other names unchanged."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, including those nested in (collapsed) rows; rows themselves are not yielded."""
    for p in dashboard.get("panels", []):
        if p.get("type") == "row":
            yield from panels(p)
        else:
            yield p


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = []
    for p in panels(dashboard):
        for t in p.get("targets", []):
            if t.get("expr"):
                found.append((f"panel {p.get('title', p.get('id'))!r} {t.get('refId', '')}".rstrip(), t["expr"]))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if q:
            found.append((f"variable ${v.get('name')}", q))
    return found


def problems(dashboard: dict) -> list[str]:
    """What makes the dashboard unusable apart from its metric names."""
    out = []
    variables = {v.get("name") for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "datasource"}
    if "datasource" not in variables:
        out.append("no data source template variable named `datasource`")
    for p in panels(dashboard):
        title = p.get("title", p.get("id"))
        targets = p.get("targets", [])
        if not any(t.get("expr") for t in targets):
            out.append(f"panel {title!r}: no expression")
        for owner, what in [(p, "panel"), *((t, f"query {t.get('refId', '?')}") for t in targets)]:
            ds = owner.get("datasource")
            if ds is not None and (not isinstance(ds, dict) or ds.get("uid") != DATASOURCE_VAR):
                out.append(f"panel {title!r}: {what} data source is {ds!r}, not {DATASOURCE_VAR}")
    return out


def used_names(dashboard: dict) -> dict[str, list[str]]:
    """Base metric name -> where it is used."""
    used: dict[str, list[str]] = {}
    for where, expr in expressions(dashboard):
        for name in METRIC_RE.findall(expr):
            used.setdefault(base_name(name), []).append(where)
    return used


def names_from_metrics_text(text: str) -> set[str]:
    """Metric names from the `# TYPE NAME KIND` lines of the Prometheus text format."""
    names = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0] == "#" and parts[1] == "TYPE":
            names.add(parts[2])
    return names


def names_from_list(text: str) -> set[str]:
    """One name a line (or comma/space separated); `#` starts a comment."""
    names = set()
    for line in text.splitlines():
        names.update(n for n in re.split(r"[\s,]+", line.split("#", 1)[0]) if n)
    return names


def compare(dashboard: dict, exported: set[str]) -> list[str]:
    """Errors: the dashboard's problems, and each used name that is not exported."""
    exported = {base_name(n) for n in exported}
    errors = problems(dashboard)
    for name, where in sorted(used_names(dashboard).items()):
        if name not in exported:
            errors.append(f"{name} is not an exported metric (used in {', '.join(sorted(set(where)))})")
    return errors


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="See the module docstring for details.")
    ap.add_argument("dashboard", type=Path, help="Grafana dashboard JSON")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--names", help="exported metric names, comma separated")
    src.add_argument("--names-file", type=Path, help="file of exported metric names, one a line")
    src.add_argument("--metrics-text", type=Path, help="a /metrics scrape (Prometheus text format)")
    try:
        args = ap.parse_args(argv[1:])
    except SystemExit as e:
        return 0 if e.code == 0 else 64
    try:
        dashboard = json.loads(args.dashboard.read_text())
        if args.names is not None:
            exported = names_from_list(args.names)
        elif args.names_file:
            exported = names_from_list(args.names_file.read_text())
        elif args.metrics_text:
            exported = names_from_metrics_text(args.metrics_text.read_text())
        else:
            exported = None
    except (OSError, json.JSONDecodeError) as e:
        print(f"dashboard_metrics: {e}", file=sys.stderr)
        return 64
    used = used_names(dashboard)
    if exported is None:
        print("\n".join(sorted(used)))
        return 0
    if not exported:
        print("dashboard_metrics: no exported metric names given (empty list or no # TYPE lines)", file=sys.stderr)
        return 64
    errors = compare(dashboard, exported)
    if errors:
        print(f"FAIL {args.dashboard}:")
        for e in errors:
            print(f"     - {e}")
        return 1
    unused = sorted({base_name(n) for n in exported} - set(used))
    print(f"ok   {args.dashboard}: {len(used)} metric(s), all exported" + (f"; not shown: {', '.join(unused)}" if unused else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
