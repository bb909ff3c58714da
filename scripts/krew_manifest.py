#!/usr/bin/env python3
"""Print the krew plugin manifest (`kubectl krew install --manifest`, or plugins/pgwarden.yaml in
krew-index) for a pgwarden release.

    krew_manifest.py --version vX.Y.Z --repo OWNER/NAME --dist DIR [--base-url URL] > pgwarden.yaml

DIR holds the release archives pgwarden_vX.Y.Z_linux_amd64.tar.gz and pgwarden_vX.Y.Z_linux_arm64.tar.gz,
each with `pgwarden` (executable) and `LICENSE` at its root. Each archive found becomes a platform
(selector os=linux, arch=amd64|arm64) with its sha256 and the uri
https://github.com/OWNER/NAME/releases/download/vX.Y.Z/<archive>, or URL/<archive> with --base-url
(https only). A missing archive is skipped with a note on stderr; none at all is an error.

krew installs `files` (pgwarden and LICENSE, copied to the install directory's root) and links
kubectl-pgwarden (from metadata.name) to `bin`, so `kubectl pgwarden ...` runs the binary.

Before printing, the manifest goes through scripts/check_krew.py's rules (krew's validator's, and
this repository's) and each archive through its install check (checksum, entries krew can extract,
pgwarden executable, LICENSE installed): the generator never prints a manifest the checker rejects.

The YAML is written here (stdlib only, no PyYAML): keys in a fixed order, every string value
double-quoted (JSON escapes, valid YAML), multi-line text as `|` blocks. Same inputs, same bytes.

Exit status: 0 printed, 1 error (bad version, repository or URL, no archive, an archive or manifest
krew would refuse), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import quote

sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_krew  # noqa: E402  (stdlib-only unless a file is read)

PLUGIN = "pgwarden"
ARCHES = ("amd64", "arm64")

SHORT_DESCRIPTION = "Find leaking Postgres clients in pgwarden pods"

DESCRIPTION = """\
pgwarden is a PostgreSQL connection proxy that runs as a sidecar in your
pods and flags the clients that leak connections. This plugin reads those
sidecars through the Kubernetes API server's pod proxy, with your
kubeconfig: no port-forward.

kubectl pgwarden fleet leaks reads every injected pod (-n NS, or -A) and
gives a verdict per workload: the leaking workloads, their worst pods and
the evidence (exit status 3 when a leak is suspected).
kubectl pgwarden fleet top shows the same fleet live, per workload and
per client, leakers first.
kubectl pgwarden leaks POD and kubectl pgwarden top POD do the same for
one pod: its leak report, or its live per-client table.
"""

CAVEATS = """\
The pods must run the pgwarden sidecar: install the pgwarden injector
(its Helm chart) and let it inject your workloads.

RBAC, in each namespace read:
  fleet leaks, fleet top:  list pods, get pods/proxy
  leaks POD, top POD:      get pods, get pods/proxy
The chart's ClusterRole <release>-fleet-reader grants these; bind it,
for example:
  kubectl create clusterrolebinding pgwarden-fleet-me \\
    --clusterrole=pgwarden-fleet-reader --user=me@example.com
"""

# GitHub owner (user or organisation) and repository names.
REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,37}[A-Za-z0-9])?/[A-Za-z0-9._-]{1,100}\Z")
# A release tag: v, then the rest of a semantic version (check_krew.semver_error decides), no spaces.
TAG_CHARS_RE = re.compile(r"^v[0-9A-Za-z.+-]+\Z")
KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*\Z")
YAML11_SPECIAL_KEYS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


class GenerateError(Exception):
    pass


def archive_name(version: str, arch: str) -> str:
    return f"{PLUGIN}_{version}_linux_{arch}.tar.gz"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build(version: str, repo: str, dist: Path, base_url: Optional[str],
          note: Callable[[str], None] = lambda msg: print(f"krew_manifest.py: note: {msg}", file=sys.stderr)) -> dict:
    """The manifest as a dict, checked; GenerateError when it cannot be made or krew would refuse it.
    note() is told of each archive that is not there."""
    err = check_krew.semver_error(version) if TAG_CHARS_RE.match(version) else "expected v + MAJOR.MINOR.PATCH, no spaces"
    if err:
        raise GenerateError(f"--version {version!r} is not a semantic version with a leading v (like v1.2.3): {err}")
    if not REPO_RE.match(repo) or repo.split("/")[1] in (".", ".."):
        raise GenerateError(f"--repo {repo!r} is not a GitHub OWNER/NAME")
    if base_url is not None:
        base_url = base_url.rstrip("/")
        if not re.match(r"^https://[^/\s]+(/\S*)?\Z", base_url):
            raise GenerateError(f"--base-url {base_url!r} is not an https URL")
    else:
        base_url = f"https://github.com/{repo}/releases/download/{quote(version, safe='')}"
    if not dist.is_dir():
        raise GenerateError(f"--dist {dist}: not a directory")

    platforms = []
    for arch in ARCHES:
        name = archive_name(version, arch)
        path = dist / name
        if not path.is_file():
            note(f"{path} not found, no linux/{arch} platform")
            continue
        platforms.append({
            "selector": {"matchLabels": {"os": "linux", "arch": arch}},
            "uri": f"{base_url}/{quote(name, safe='')}",
            "sha256": sha256_file(path),
            "files": [{"from": PLUGIN, "to": "."}, {"from": "LICENSE", "to": "."}],
            "bin": PLUGIN,
        })
    if not platforms:
        names = ", ".join(archive_name(version, a) for a in ARCHES)
        raise GenerateError(f"no archive in {dist}: expected {names}")

    doc = {
        "apiVersion": check_krew.CURRENT_API_VERSION,
        "kind": check_krew.PLUGIN_KIND,
        "metadata": {"name": PLUGIN},
        "spec": {
            "version": version,
            "homepage": f"https://github.com/{repo}",
            "shortDescription": SHORT_DESCRIPTION,
            "description": DESCRIPTION,
            "caveats": CAVEATS,
            "platforms": platforms,
        },
    }
    problems = check_krew.validate_plugin(doc, f"{PLUGIN}.yaml") + check_krew.check_archives(doc, dist)
    if problems:
        raise GenerateError("krew would refuse this manifest:\n" + "\n".join(f"  - {p}" for p in problems))
    return doc


# --- YAML writer --------------------------------------------------------------------------------------------

def _key(k: str) -> str:
    if KEY_RE.match(k) and k.lower() not in YAML11_SPECIAL_KEYS:
        return k
    return json.dumps(k)


def _block_indicator(s: str) -> Optional[str]:
    """`|` or `|-` when s can be a literal block as is (printable ASCII lines, no trailing blanks, the
    first line not indented, at most one final newline), else None (then it is double-quoted)."""
    if "\n" not in s.rstrip("\n") or s.endswith("\n\n") or s.startswith((" ", "\n")):
        return None
    lines = s.rstrip("\n").split("\n")
    for line in lines:
        if line != line.rstrip(" ") or any(not (" " <= ch <= "~") for ch in line):
            return None
    return "|" if s.endswith("\n") else "|-"


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True) if all(ord(ch) < 0x10000 for ch in v) else _non_bmp(v)
    raise TypeError(f"cannot write {type(v).__name__} {v!r} as YAML")


def _non_bmp(s: str) -> str:
    # JSON would write surrogate pairs, which YAML reads as two code points; YAML has \UXXXXXXXX.
    out = []
    for ch in s:
        out.append(f"\\U{ord(ch):08x}" if ord(ch) >= 0x10000 else json.dumps(ch, ensure_ascii=True)[1:-1])
    return '"' + "".join(out) + '"'


def _mapping(d: dict, indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for k, v in d.items():
        head = f"{pad}{_key(k)}:"
        if isinstance(v, dict) and v:
            out.append(head)
            out += _mapping(v, indent + 2)
        elif isinstance(v, list) and v:
            out.append(head)
            out += _sequence(v, indent + 2)
        elif isinstance(v, dict):
            out.append(f"{head} {{}}")
        elif isinstance(v, list):
            out.append(f"{head} []")
        elif isinstance(v, str) and _block_indicator(v):
            out.append(f"{head} {_block_indicator(v)}")
            out += [f"{pad}  {line}" if line else "" for line in v.rstrip("\n").split("\n")]
        else:
            out.append(f"{head} {_scalar(v)}")
    return out


def _sequence(items: list, indent: int) -> list[str]:
    pad = " " * indent
    out = []
    for item in items:
        if isinstance(item, dict) and item:
            sub = _mapping(item, indent + 2)
            out.append(f"{pad}- {sub[0][indent + 2:]}")
            out += sub[1:]
        elif isinstance(item, (dict, list)):
            if item:
                raise TypeError("nested sequences are not written")
            out.append(f"{pad}- {'{}' if isinstance(item, dict) else '[]'}")
        else:
            out.append(f"{pad}- {_scalar(item)}")
    return out


def render(doc: dict) -> str:
    """doc as block-style YAML, two-space indents, sequences indented under their key."""
    return "\n".join(_mapping(doc, 0)) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Print the krew plugin manifest for a pgwarden release.")
    ap.add_argument("--version", required=True, help="the release tag, v + semantic version (v1.2.3)")
    ap.add_argument("--repo", required=True, metavar="OWNER/NAME", help="the GitHub repository of the release")
    ap.add_argument("--dist", required=True, type=Path, metavar="DIR", help="directory with the release archives")
    ap.add_argument("--base-url", metavar="URL",
                    help="where the archives are downloaded from (default: the GitHub release of --version)")
    try:
        args = ap.parse_args(argv[1:])
    except SystemExit as e:
        return 0 if e.code == 0 else 1
    try:
        doc = build(args.version, args.repo, args.dist, args.base_url)
    except GenerateError as e:
        print(f"krew_manifest.py: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"krew_manifest.py: error: {e}", file=sys.stderr)
        return 1
    sys.stdout.write(render(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
