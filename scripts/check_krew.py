#!/usr/bin/env python3
"""Validate a krew plugin manifest the way krew does, and a little more.

    check_krew.py FILE [--archives DIR] [--any-file-name]
    check_krew.py --self-test

Every problem is listed (krew stops at the first). The rules are ported from krew
(github.com/kubernetes-sigs/krew; each rule below names the file it comes from):

internal/index/validation/validate.go, ValidatePlugin / validatePlatform / validateFiles /
validateSelector (with pkg/constants/constants.go and internal/installation/semver/version.go):
  - apiVersion is krew.googlecontainertools.github.com/v1alpha2; kind is Plugin;
  - the plugin name matches ^[\\w-]+$ and is no Windows device name (CON, PRN, AUX, NUL, COM1-9,
    LPT1-9, any case), and metadata.name equals it;
  - spec.shortDescription is set and has no line break;
  - spec.platforms is not empty; spec.version is set and is `v` + a semantic version as
    k8s.io/apimachinery's version.ParseSemantic reads it (three numeric parts, no leading zeroes,
    optional -pre.release and +build; numeric pre-release parts without leading zeroes);
  - each platform: uri set; sha256 set and ^[a-f0-9]{64}$; bin set; files either absent or a
    non-empty list whose entries have both `from` and `to`; a selector that is set, not empty
    (matchLabels or matchExpressions), uses only the keys os and arch, and has no matchLabels or
    matchExpressions given but empty.
cmd/validate-krew-manifest/main.go (what krew-index's CI runs):
  - the file is named NAME.yaml and NAME is the plugin name (--any-file-name skips this, as
    `kubectl krew install --manifest FILE` does, and checks metadata.name instead);
  - each platform's selector matches at least one os/arch krew ships for, and no such os/arch is
    matched by two platforms (overlapping selectors);
  - with --archives: the plugin installs (below) and a LICENSE-like file is among what it installs.
internal/installation/install.go, move.go, platform.go, internal/download/downloader.go:
  - a `files[].to` is a clean path (install fails on "./x" or "a/../b"); bin stays inside the
    install directory; the selector compiles (operators In, NotIn, Exists, DoesNotExist; In/NotIn
    with values, Exists/DoesNotExist without);
  - with --archives DIR (the archive named by the uri's last path segment, from DIR): its sha256
    is the manifest's; it is a gzip tar or a zip; a tar holds only regular files and directories
    and no entry with ".." or an absolute path; each `files[].from` matches something (a path or
    a glob, `*` within one path segment); `bin` is among the installed files (and executable, in
    a tar).
Extra rules (this repository's, not krew's):
  - every uri is https; no two platforms have the same selector;
  - shortDescription is at most 50 characters (`kubectl krew search` cuts it there:
    cmd/krew/cmd/search.go limitString); description is set (the krew docs call it required:
    site/content/docs/developer-guide/plugin-manifest.md);
  - the manifest is one YAML document without duplicate keys; the fields krew reads as strings
    are strings (quote `arch: "386"`); no unknown field in spec, a platform, a file entry or a
    selector (a misspelt field is silently ignored by krew).

Exit status: 0 valid, 1 problems (each printed), 64 bad usage or unreadable file.
PyYAML is needed to read FILE (it is in .tools/venv: `.tools/venv/bin/python3 scripts/check_krew.py`);
--self-test runs without it (then skipping its YAML round trips).
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import os
import posixpath
import re
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Optional

# pkg/constants/constants.go
CURRENT_API_VERSION = "krew.googlecontainertools.github.com/v1alpha2"
PLUGIN_KIND = "Plugin"
MANIFEST_EXTENSION = ".yaml"

# internal/index/validation/validate.go (Go's \w is ASCII-only)
SAFE_PLUGIN_RE = re.compile(r"^[A-Za-z0-9_-]+\Z")
SHA256_RE = re.compile(r"^[a-f0-9]{64}\Z")
WINDOWS_FORBIDDEN = ["CON", "PRN", "AUX", "NUL"] + [f"COM{i}" for i in range(1, 10)] + [f"LPT{i}" for i in range(1, 10)]
SELECTOR_KEYS = ("os", "arch")

# k8s.io/apimachinery/pkg/util/version/version.go (v0.34.1, the one krew's go.mod pins)
VERSION_MATCH_RE = re.compile(r"^\s*v?([0-9]+(?:\.[0-9]+)*)(.*)\Z", re.ASCII)
EXTRA_MATCH_RE = re.compile(r"^(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?\s*\Z", re.ASCII)
UINT64_MAX = 2**64 - 1

# cmd/validate-krew-manifest/main.go allPlatforms()
SUPPORTED_PLATFORMS = [
    ("windows", "386"), ("windows", "amd64"), ("windows", "arm64"),
    ("linux", "386"), ("linux", "amd64"), ("linux", "arm"), ("linux", "arm64"), ("linux", "ppc64le"),
    ("darwin", "386"), ("darwin", "amd64"), ("darwin", "arm64"),
]
# cmd/validate-krew-manifest/main.go licenseFiles
LICENSE_FILES = {"license", "license.txt", "license.md", "licenses", "licenses.txt", "licenses.md", "copying", "copying.txt"}

# pkg/index/types.go: the fields krew reads.
TOP_KEYS = {"apiVersion", "kind", "metadata", "spec"}
SPEC_KEYS = {"version", "shortDescription", "description", "caveats", "homepage", "platforms"}
PLATFORM_KEYS = {"uri", "sha256", "selector", "files", "bin"}
FILE_KEYS = {"from", "to"}
SELECTOR_FIELDS = {"matchLabels", "matchExpressions"}
EXPRESSION_KEYS = {"key", "operator", "values"}
OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}

SHORT_DESCRIPTION_MAX = 50  # cmd/krew/cmd/search.go: limitString(v.p.Spec.ShortDescription, 50)

# Label values (k8s.io/apimachinery validation.IsValidLabelValue): what a compiled selector accepts.
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")

MISSING = object()


def semver_error(s: str) -> Optional[str]:
    """None when krew's semver.Parse accepts s (a leading `v`, then version.ParseSemantic), else why not."""
    if not s.startswith("v"):
        return f"version string {s!r} not starting with 'v'"
    m = VERSION_MATCH_RE.match(s)
    if m is None:
        return f"could not parse {s!r} as version"
    numbers, extra = m.group(1), m.group(2)
    components = numbers.split(".")
    if len(components) != 3:
        return f"illegal version string {s!r} (needs MAJOR.MINOR.PATCH)"
    for comp in components:
        if comp.startswith("0") and comp != "0":
            return f"illegal zero-prefixed version component {comp!r} in {s!r}"
        if int(comp) > UINT64_MAX:
            return f"illegal non-numeric version component {comp!r} in {s!r} (out of range)"
    if extra:
        em = EXTRA_MATCH_RE.match(extra)
        if em is None:
            return f"could not parse pre-release/metadata ({extra}) in version {s!r}"
        for comp in (em.group(1) or "").split("."):
            if comp.isdigit() and comp.isascii() and int(comp) <= UINT64_MAX and comp.startswith("0") and comp != "0":
                return f"illegal zero-prefixed version component {comp!r} in {s!r}"
    return None


def is_safe_plugin_name(name: str) -> bool:
    """validate.go IsSafePluginName."""
    return bool(SAFE_PLUGIN_RE.match(name)) and all(name.upper() != f for f in WINDOWS_FORBIDDEN)


def go_clean(p: str) -> str:
    """Go's filepath.Clean on a slash path (posixpath.normpath, except that it keeps a leading //)."""
    if p == "":
        return "."
    c = posixpath.normpath(p)
    return "/" + c.lstrip("/") if c.startswith("//") else c


def escapes(p: str) -> bool:
    """Whether joining p to a directory leaves it (pathutil.IsSubPath: the relative path starts with "..")."""
    c = go_clean(p)
    return c.startswith("/") or c.startswith("..")


class Checker:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, where: str, msg: str) -> None:
        self.problems.append(f"{where}: {msg}" if where else msg)

    def string(self, obj: dict, key: str, where: str) -> Any:
        """obj[key] if it is a string or absent (MISSING / None), else a problem and MISSING."""
        v = obj.get(key, MISSING)
        if v is MISSING or v is None:
            return MISSING
        if not isinstance(v, str):
            self.add(f"{where}.{key}" if where else key, f"must be a string, not {type(v).__name__} {v!r} (quote it)")
            return MISSING
        return v

    def unknown(self, obj: dict, allowed: set[str], where: str) -> None:
        for k in obj:
            if k not in allowed:
                self.add(where or "(top level)", f"unknown field {k!r} (krew ignores it; allowed: {', '.join(sorted(allowed))})")


def compile_selector(sel: dict) -> tuple[Optional[list], Optional[str]]:
    """metav1.LabelSelectorAsSelector: a list of (key, op, values) requirements, or why it does not compile."""
    reqs = []
    ml = sel.get("matchLabels")
    if isinstance(ml, dict):
        for k, v in ml.items():
            if not isinstance(v, str):
                return None, f"matchLabels.{k}: value {v!r} is not a string"
            if len(v) > 63 or not LABEL_VALUE_RE.match(v):
                return None, f"matchLabels.{k}: {v!r} is not a valid label value"
            reqs.append((k, "In", [v]))
    me = sel.get("matchExpressions")
    if isinstance(me, list):
        for i, expr in enumerate(me):
            if not isinstance(expr, dict):
                return None, f"matchExpressions[{i}] is not a mapping"
            op, key, values = expr.get("operator"), expr.get("key"), expr.get("values")
            if op not in OPERATORS:
                return None, f"matchExpressions[{i}]: {op!r} is not a valid label selector operator"
            if values is None:
                values = []
            if not isinstance(values, list) or not all(isinstance(x, str) for x in values):
                return None, f"matchExpressions[{i}].values must be a list of strings"
            if op in ("In", "NotIn") and not values:
                return None, f"matchExpressions[{i}]: for 'In', 'NotIn' operators, values set can't be empty"
            if op in ("Exists", "DoesNotExist") and values:
                return None, f"matchExpressions[{i}]: values set must be empty for Exists and DoesNotExist"
            for x in values:
                if len(x) > 63 or not LABEL_VALUE_RE.match(x):
                    return None, f"matchExpressions[{i}]: {x!r} is not a valid label value"
            reqs.append((key, op, values))
    return reqs, None


def selector_matches(reqs: list, os_: str, arch: str) -> bool:
    labels = {"os": os_, "arch": arch}
    for key, op, values in reqs:
        have = key in labels
        if op == "In" and not (have and labels[key] in values):
            return False
        if op == "NotIn" and have and labels[key] in values:
            return False
        if op == "Exists" and not have:
            return False
        if op == "DoesNotExist" and have:
            return False
    return True


def validate_selector(c: Checker, sel: Any, where: str) -> Optional[list]:
    """validate.go validateSelector, then whether it compiles; the requirements when usable."""
    if sel is MISSING or sel is None:
        c.add(where, "invalid platform selector: nil selector is not supported")
        return None
    if not isinstance(sel, dict):
        c.add(where, f"invalid platform selector: must be a mapping, not {type(sel).__name__}")
        return None
    c.unknown(sel, SELECTOR_FIELDS, where)
    ml, me = sel.get("matchLabels"), sel.get("matchExpressions")
    ok = True
    if ml is not None and not isinstance(ml, dict):
        c.add(f"{where}.matchLabels", "must be a mapping")
        return None
    if me is not None and not isinstance(me, list):
        c.add(f"{where}.matchExpressions", "must be a list")
        return None
    if ml is None and not me:
        c.add(where, "invalid platform selector: empty selector is not supported")
        return None
    keys = list(ml or {}) + [e.get("key") if isinstance(e, dict) else None for e in (me or [])]
    for k in keys:
        if k not in SELECTOR_KEYS:
            c.add(where, f"invalid platform selector: key {k!r} not supported (only os and arch)")
            ok = False
    if ml is not None and len(ml) == 0:
        c.add(where, "invalid platform selector: `matchLabels` specified but empty")
        ok = False
    if me is not None and len(me) == 0:
        c.add(where, "invalid platform selector: `matchExpressions` specified but empty")
        ok = False
    reqs, err = compile_selector(sel)
    if err:
        c.add(where, f"failed to compile label selector: {err}")
        return None
    return reqs if ok else None


def validate_files(c: Checker, files: Any, where: str) -> None:
    """validate.go validateFiles, plus move.go's clean `to` and paths that stay inside."""
    if files is MISSING or files is None:
        return
    if not isinstance(files, list):
        c.add(where, f"`files` is invalid: must be a list, not {type(files).__name__}")
        return
    if len(files) == 0:
        c.add(where, "`files` is invalid: `files` has to be unspecified or non-empty")
        return
    for i, op in enumerate(files):
        w = f"{where}[{i}]"
        if not isinstance(op, dict):
            c.add(w, "must be a mapping with `from` and `to`")
            continue
        c.unknown(op, FILE_KEYS, w)
        frm, to = c.string(op, "from", w), c.string(op, "to", w)
        if frm is MISSING or frm == "":
            c.add(w, "`files` is invalid: `from` field has to be set")
        elif escapes(frm):
            c.add(f"{w}.from", f"{frm!r} leaves the archive (krew refuses the move)")
        if to is MISSING or to == "":
            c.add(w, "`files` is invalid: `to` field has to be set")
        else:
            if to != go_clean(to):
                c.add(f"{w}.to", f"the provided path is not clean, {to!r} should be {go_clean(to)!r} (krew install fails)")
            if escapes(to):
                c.add(f"{w}.to", f"{to!r} leaves the install directory (krew refuses the move)")


def validate_plugin(doc: Any, file_name: Optional[str] = None) -> list[str]:
    """Every problem of the manifest `doc` (parsed YAML). file_name: the manifest's file name, for the
    NAME.yaml rule of validate-krew-manifest; None checks metadata.name alone (krew install --manifest)."""
    c = Checker()
    if not isinstance(doc, dict):
        return [f"the manifest must be a mapping, not {type(doc).__name__}"]
    c.unknown(doc, TOP_KEYS, "")

    api = c.string(doc, "apiVersion", "")
    if api != CURRENT_API_VERSION:
        c.add("apiVersion", f"plugin manifest has apiVersion={'' if api is MISSING else api!r}, "
              f"krew supports only {CURRENT_API_VERSION!r}")
    kind = c.string(doc, "kind", "")
    if kind != PLUGIN_KIND:
        c.add("kind", f"plugin manifest has kind={'' if kind is MISSING else kind!r}, but only {PLUGIN_KIND!r} is supported")

    meta = doc.get("metadata")
    name: Any = MISSING
    if not isinstance(meta, dict):
        c.add("metadata", "must be a mapping with `name`")
    else:
        name = c.string(meta, "name", "metadata")
    if name is MISSING or name == "":
        c.add("metadata.name", "has to be set")
        name = ""
    if file_name is not None:
        base = posixpath.basename(file_name.replace(os.sep, "/"))
        stem, ext = posixpath.splitext(base)
        if ext != MANIFEST_EXTENSION:
            c.add("file name", f"expected manifest extension {MANIFEST_EXTENSION!r} but found {ext!r} in {base!r}")
        if not is_safe_plugin_name(stem):
            c.add("file name", f"the plugin name {stem!r} (from the file name) is not allowed, must match ^[\\w-]+$ "
                  "and not be a Windows device name")
        if name and name != stem:
            c.add("metadata.name", f"plugin should be named {stem!r} (its file name), not {name!r}")
    elif name and not is_safe_plugin_name(name):
        c.add("metadata.name", f"the plugin name {name!r} is not allowed, must match ^[\\w-]+$ and not be a Windows device name")

    spec = doc.get("spec")
    if not isinstance(spec, dict):
        c.add("spec", "must be a mapping")
        return c.problems
    c.unknown(spec, SPEC_KEYS, "spec")

    short = c.string(spec, "shortDescription", "spec")
    if short is MISSING or short == "":
        c.add("spec.shortDescription", "should have a short description")
    else:
        if "\r" in short or "\n" in short:
            c.add("spec.shortDescription", "should not have line breaks in short description")
        if len(short) > SHORT_DESCRIPTION_MAX:
            c.add("spec.shortDescription", f"{len(short)} characters; `kubectl krew search` cuts it at {SHORT_DESCRIPTION_MAX}")
    desc = c.string(spec, "description", "spec")
    if desc is MISSING or desc.strip() == "":
        c.add("spec.description", "should have a description (required by the krew manifest docs)")
    c.string(spec, "caveats", "spec")
    c.string(spec, "homepage", "spec")

    version = c.string(spec, "version", "spec")
    if version is MISSING or version == "":
        c.add("spec.version", "should have a version specified")
    else:
        err = semver_error(version)
        if err:
            c.add("spec.version", f"failed to parse plugin version: {err}")

    platforms = spec.get("platforms")
    if platforms is not None and not isinstance(platforms, list):
        c.add("spec.platforms", f"must be a list, not {type(platforms).__name__}")
        return c.problems
    if not platforms:
        c.add("spec.platforms", "should have a platform specified")
        return c.problems

    compiled: list[tuple[int, Optional[list]]] = []
    seen_selectors: dict[str, int] = {}
    for i, pl in enumerate(platforms):
        w = f"spec.platforms[{i}]"
        if not isinstance(pl, dict):
            c.add(w, "must be a mapping")
            continue
        c.unknown(pl, PLATFORM_KEYS, w)
        uri = c.string(pl, "uri", w)
        if uri is MISSING or uri == "":
            c.add(f"{w}.uri", "`uri` has to be set")
        elif not uri.startswith("https://") or len(uri) <= len("https://"):
            c.add(f"{w}.uri", f"{uri!r} is not an https URL")
        sha = c.string(pl, "sha256", w)
        if sha is MISSING or sha == "":
            c.add(f"{w}.sha256", "`sha256` sum has to be set")
        elif not SHA256_RE.match(sha):
            c.add(f"{w}.sha256", f"`sha256` value {sha} is not valid, must match pattern ^[a-f0-9]{{64}}$ (lowercase hex)")
        b = c.string(pl, "bin", w)
        if b is MISSING or b == "":
            c.add(f"{w}.bin", "`bin` has to be set")
        elif escapes(b):
            c.add(f"{w}.bin", f"{b!r} is not inside the plugin's install directory")
        validate_files(c, pl.get("files", MISSING), f"{w}.files")
        sel = pl.get("selector", MISSING)
        reqs = validate_selector(c, sel, f"{w}.selector")
        compiled.append((i, reqs))
        if isinstance(sel, dict):
            key = repr(canonical(sel))
            if key in seen_selectors:
                c.add(f"{w}.selector", f"the same selector as spec.platforms[{seen_selectors[key]}]")
            else:
                seen_selectors[key] = i

    # cmd/validate-krew-manifest/main.go: every platform is used, and none overlaps another.
    usable = [(i, r) for i, r in compiled if r is not None]
    for i, reqs in usable:
        if not any(selector_matches(reqs, o, a) for o, a in SUPPORTED_PLATFORMS):
            c.add(f"spec.platforms[{i}].selector", "matches no platform krew supports "
                  f"({', '.join(o + '/' + a for o, a in SUPPORTED_PLATFORMS)})")
    for o, a in SUPPORTED_PLATFORMS:
        hits = [i for i, reqs in usable if selector_matches(reqs, o, a)]
        if len(hits) > 1:
            c.add("spec.platforms", f"overlapping selectors: platforms {hits} all select {o}/{a}")
    return c.problems


def canonical(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, canonical(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(sorted(repr(canonical(x)) for x in v))
    return v


# --- archives: what `kubectl krew install` would do with each platform's archive ----------------------

def archive_entries(path: Path) -> tuple[dict[str, dict], list[str]]:
    """The entries of a krew archive {name: {"dir": bool, "exec": bool|None}} and the reasons krew's
    extractor (internal/download/downloader.go) would refuse it."""
    problems: list[str] = []
    entries: dict[str, dict] = {}
    head = path.read_bytes()[:4]
    if head[:2] == b"\x1f\x8b":
        try:
            with tarfile.open(path, "r:gz") as tf:
                for m in tf.getmembers():
                    name = m.name
                    if name == "pax_global_header":
                        continue
                    if ".." in name:
                        problems.append(f"refusing to unpack archive with suspicious entry {name!r}")
                    if name.startswith("/") or name.startswith("\\"):
                        problems.append(f"refusing to unpack archive with absolute entry {name!r}")
                    if not (m.isreg() or m.isdir()):
                        problems.append(f"unable to handle the entry {name!r} (only regular files and directories)")
                        continue
                    entries[go_clean(name)] = {"dir": m.isdir(), "exec": bool(m.mode & 0o111) if m.isreg() else None}
        except (tarfile.TarError, OSError, EOFError) as e:
            problems.append(f"not a readable gzip tar: {e}")
    elif head == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                for zi in zf.infolist():
                    is_dir = zi.is_dir()
                    mode = zi.external_attr >> 16
                    entries[go_clean(zi.filename)] = {"dir": is_dir, "exec": bool(mode & 0o111) if mode and not is_dir else None}
        except (zipfile.BadZipFile, OSError) as e:
            problems.append(f"not a readable zip: {e}")
    else:
        problems.append("neither a gzip tar nor a zip (krew detects the type from the content)")
    # Parent directories exist implicitly.
    for name in list(entries):
        parts = name.split("/")
        for k in range(1, len(parts)):
            entries.setdefault("/".join(parts[:k]), {"dir": True, "exec": None})
    entries.pop(".", None)
    return entries, problems


def glob_match(pattern: str, name: str) -> bool:
    """filepath.Glob on a path: `*` and `?` stay within one path segment."""
    pp, np_ = go_clean(pattern).split("/"), name.split("/")
    return len(pp) == len(np_) and all(fnmatch.fnmatchcase(n, p) for p, n in zip(pp, np_))


def simulate_install(entries: dict[str, dict], files: Any) -> tuple[dict[str, dict], list[str]]:
    """move.go: the install directory's files {path: entry} after the file operations, and failures."""
    if files is MISSING or files is None:
        files = [{"from": "*", "to": "."}]  # install.go applyDefaults
    installed: dict[str, dict] = {}
    problems: list[str] = []

    def place(src: str, dst: str) -> None:
        installed[dst] = entries[src]
        prefix = src + "/"
        for name, e in entries.items():
            if name.startswith(prefix):
                installed[dst + "/" + name[len(prefix):]] = e

    for op in files if isinstance(files, list) else []:
        if not isinstance(op, dict) or not isinstance(op.get("from"), str) or not isinstance(op.get("to"), str):
            continue
        frm, to = go_clean(op["from"]), go_clean(op["to"])
        if frm in entries:  # getDirectMove: `from` names a file or directory
            place(frm, posixpath.basename(frm) if to == "." else to)
            continue
        matches = sorted(n for n in entries if glob_match(frm, n))
        if not matches:
            problems.append(f"no files in the plugin archive matched the glob pattern={op['from']}")
        for m in matches:
            place(m, go_clean(posixpath.join(to, posixpath.basename(m))))
    return installed, problems


def check_archives(doc: Any, directory: Path) -> list[str]:
    """Each platform's archive (DIR/<last segment of its uri>): checksum, extraction, files, bin, LICENSE."""
    from urllib.parse import unquote, urlsplit

    problems: list[str] = []
    platforms = doc.get("spec", {}).get("platforms") if isinstance(doc, dict) and isinstance(doc.get("spec"), dict) else None
    for i, pl in enumerate(platforms if isinstance(platforms, list) else []):
        w = f"spec.platforms[{i}]"
        if not isinstance(pl, dict) or not isinstance(pl.get("uri"), str):
            continue
        name = unquote(posixpath.basename(urlsplit(pl["uri"]).path))
        path = directory / name
        if not name or not path.is_file():
            problems.append(f"{w}: archive {str(path)!r} (from its uri) not found")
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if pl.get("sha256") != digest:
            problems.append(f"{w}.sha256: {pl.get('sha256')!r}, but {name} has {digest}")
        entries, errs = archive_entries(path)
        problems += [f"{w}: {name}: {e}" for e in errs]
        if errs:
            continue
        installed, errs = simulate_install(entries, pl.get("files", MISSING))
        problems += [f"{w}.files: {name}: {e}" for e in errs]
        b = pl.get("bin")
        if isinstance(b, str) and b:
            e = installed.get(go_clean(b))
            if e is None or e["dir"]:
                problems.append(f"{w}.bin: {b!r} is not among the installed files of {name} ({', '.join(sorted(installed)) or 'none'})")
            elif e["exec"] is False:
                problems.append(f"{w}.bin: {b!r} is not executable in {name}")
        if not any(posixpath.basename(p).lower() in LICENSE_FILES and not e["dir"] for p, e in installed.items()):
            problems.append(f"{w}: no LICENSE (or alike) file is installed from {name} (krew-index requires one)")
    return problems


# --- reading the file ------------------------------------------------------------------------------------

def load_yaml(text: str) -> Any:
    """One YAML document, duplicate keys refused. Raises ImportError without PyYAML, ValueError when invalid."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        out = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=deep)
            if key in out:
                raise ValueError(f"duplicate key {key!r} (line {knode.start_mark.line + 1})")
            out[key] = loader.construct_object(vnode, deep=deep)
        return out

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        docs = [d for d in yaml.load_all(text, Loader=Loader)]
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML: {e}") from None
    if len(docs) != 1:
        raise ValueError(f"expected one YAML document, found {len(docs)}")
    return docs[0]


def check_file(path: Path, archives: Optional[Path], any_file_name: bool) -> list[str]:
    doc = load_yaml(path.read_text(encoding="utf-8"))
    problems = validate_plugin(doc, None if any_file_name else path.name)
    if archives is not None:
        problems += check_archives(doc, archives)
    return problems


# --- self-test ------------------------------------------------------------------------------------------

def _good() -> dict:
    def platform(arch: str, digest: str) -> dict:
        return {
            "selector": {"matchLabels": {"os": "linux", "arch": arch}},
            "uri": f"https://github.com/example/pgwarden/releases/download/v1.2.3/pgwarden_v1.2.3_linux_{arch}.tar.gz",
            "sha256": digest,
            "files": [{"from": "pgwarden", "to": "."}, {"from": "LICENSE", "to": "."}],
            "bin": "pgwarden",
        }
    return {
        "apiVersion": CURRENT_API_VERSION,
        "kind": "Plugin",
        "metadata": {"name": "pgwarden"},
        "spec": {
            "version": "v1.2.3",
            "homepage": "https://github.com/example/pgwarden",
            "shortDescription": "Find PostgreSQL connection leaks",
            "description": "Reads pgwarden sidecars.\n",
            "platforms": [platform("amd64", "a" * 64), platform("arm64", "b" * 64)],
        },
    }


def self_test() -> int:
    import copy

    sys.dont_write_bytecode = True  # no scripts/__pycache__ from the import below
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import krew_manifest  # the generator's YAML writer, for the round trips

    try:
        import yaml  # noqa: F401
        have_yaml = True
    except ImportError:
        have_yaml = False
    failures: list[str] = []
    ran = 0

    def check(name: str, doc: dict, want: Optional[str], file_name: Optional[str] = "pgwarden.yaml") -> None:
        """want None: no problem expected; else a problem containing `want`. Checked on the dict and,
        with PyYAML, on the YAML the generator's writer makes of it."""
        nonlocal ran
        ran += 1
        variants = [("dict", doc)]
        if have_yaml:
            variants.append(("yaml", load_yaml(krew_manifest.render(doc))))
        for how, d in variants:
            problems = validate_plugin(d, file_name)
            if want is None and problems:
                failures.append(f"{name} ({how}): expected to pass, got {problems}")
            elif want is not None and not any(want in p for p in problems):
                failures.append(f"{name} ({how}): expected a problem with {want!r}, got {problems}")

    def broken(name: str, want: str, edit: Any, file_name: Optional[str] = "pgwarden.yaml") -> None:
        d = copy.deepcopy(_good())
        edit(d)
        check(name, d, want, file_name)

    def setp(i: int, key: str, value: Any) -> Any:
        def f(d: dict) -> None:
            if value is MISSING:
                del d["spec"]["platforms"][i][key]
            else:
                d["spec"]["platforms"][i][key] = value
        return f

    def sets(key: str, value: Any) -> Any:
        def f(d: dict) -> None:
            if value is MISSING:
                del d["spec"][key]
            else:
                d["spec"][key] = value
        return f

    check("good manifest", _good(), None)
    check("good manifest, install --manifest", _good(), None, file_name=None)
    for v in ["v0.1.0", "v1.2.3-rc.1", "v1.2.3+build.5", "v1.2.3-alpha-1.0+x", "v10.20.30"]:
        d = _good()
        d["spec"]["version"] = v
        check(f"good version {v}", d, None)
    for v, why in [("1.2.3", "not starting with 'v'"), ("v1.2", "MAJOR.MINOR.PATCH"), ("v1.2.3.4", "MAJOR.MINOR.PATCH"),
                   ("v01.2.3", "zero-prefixed"), ("v1.02.3", "zero-prefixed"), ("v1.2.3-01", "zero-prefixed"),
                   ("v1.2.3-", "pre-release"), ("v1.2.3_x", "pre-release"), ("vx.y.z", "could not parse"), ("", "version specified")]:
        broken(f"bad version {v!r}", why, sets("version", v))
    broken("version missing", "version specified", sets("version", MISSING))
    broken("wrong apiVersion", "apiVersion", lambda d: d.update(apiVersion="krew.googlecontainertools.github.com/v1alpha1"))
    broken("wrong kind", "kind", lambda d: d.update(kind="Plugins"))
    broken("name differs from the file name", "should be named", lambda d: d["metadata"].update(name="pgwarden2"))
    broken("file not .yaml", "extension", lambda d: None, file_name="pgwarden.yml")
    broken("unsafe name", "not allowed", lambda d: d["metadata"].update(name="pg/warden"), file_name=None)
    broken("Windows device name", "not allowed", lambda d: d["metadata"].update(name="com1"), file_name=None)
    broken("empty shortDescription", "short description", sets("shortDescription", ""))
    broken("shortDescription with a line break", "line breaks", sets("shortDescription", "two\nlines"))
    broken("shortDescription over 50", "cuts it", sets("shortDescription", "x" * 51))
    broken("no description", "description", sets("description", MISSING))
    broken("no platforms (empty)", "platform specified", sets("platforms", []))
    broken("no platforms (absent)", "platform specified", sets("platforms", MISSING))
    broken("missing uri", "`uri` has to be set", setp(0, "uri", MISSING))
    broken("http uri", "not an https URL", setp(0, "uri", "http://example.com/pgwarden.tar.gz"))
    broken("missing sha256", "`sha256` sum has to be set", setp(0, "sha256", MISSING))
    broken("bad sha256 (uppercase)", "is not valid", setp(0, "sha256", "A" * 64))
    broken("bad sha256 (63 digits)", "is not valid", setp(0, "sha256", "a" * 63))
    broken("sha256 a number", "must be a string", setp(0, "sha256", 1234))
    broken("empty bin", "`bin` has to be set", setp(0, "bin", ""))
    broken("missing bin", "`bin` has to be set", setp(0, "bin", MISSING))
    broken("bin outside", "not inside", setp(0, "bin", "../kubectl"))
    broken("files empty", "unspecified or non-empty", setp(0, "files", []))
    broken("file without to", "`to` field has to be set", setp(0, "files", [{"from": "pgwarden"}]))
    broken("file without from", "`from` field has to be set", setp(0, "files", [{"to": "."}]))
    broken("unclean to", "not clean", setp(0, "files", [{"from": "pgwarden", "to": "./pgwarden"}]))
    broken("misspelt field", "unknown field 'sha265'", setp(0, "sha265", "a" * 64))
    broken("no selector", "nil selector", setp(0, "selector", MISSING))
    broken("empty selector", "empty selector", setp(0, "selector", {}))
    broken("empty matchLabels", "specified but empty", setp(0, "selector", {"matchLabels": {}, "matchExpressions": [{"key": "os", "operator": "In", "values": ["linux"]}]}))
    broken("unsupported selector key", "not supported", setp(0, "selector", {"matchLabels": {"os": "linux", "distro": "debian"}}))
    broken("bad operator", "not a valid label selector operator", setp(0, "selector", {"matchExpressions": [{"key": "os", "operator": "in", "values": ["linux"]}]}))
    broken("In without values", "can't be empty", setp(0, "selector", {"matchExpressions": [{"key": "os", "operator": "In"}]}))
    broken("arch a number", "not a string", setp(0, "selector", {"matchLabels": {"os": "linux", "arch": 386}}))
    broken("selector matching nothing", "matches no platform", setp(0, "selector", {"matchLabels": {"os": "plan9", "arch": "amd64"}}))
    broken("duplicate selector", "the same selector", setp(1, "selector", {"matchLabels": {"arch": "amd64", "os": "linux"}}))
    broken("overlapping selectors", "overlapping selectors", setp(1, "selector", {"matchExpressions": [{"key": "os", "operator": "In", "values": ["linux"]}]}))

    # YAML-level checks.
    if have_yaml:
        ran += 2
        text = krew_manifest.render(_good())
        for name, bad in [("duplicate key", text.replace("kind: ", "kind: \"Plugin\"\nkind: ", 1)),
                          ("two documents", text + "---\n" + text)]:
            try:
                load_yaml(bad)
                failures.append(f"{name}: accepted")
            except ValueError:
                pass

    # End to end: fake archives, the generator, the checker with --archives.
    with tempfile.TemporaryDirectory() as tmp:
        dist = Path(tmp)

        def make(arch: str, members: dict[str, tuple[bytes, int]]) -> Path:
            p = dist / f"pgwarden_v1.2.3_linux_{arch}.tar.gz"
            with tarfile.open(p, "w:gz") as tf:
                for n, (data, mode) in members.items():
                    ti = tarfile.TarInfo(n)
                    ti.size, ti.mode, ti.mtime = len(data), mode, 0
                    tf.addfile(ti, io.BytesIO(data))
            return p

        good_members = {"pgwarden": (b"#!/bin/sh\n", 0o755), "LICENSE": (b"Apache License\n", 0o644)}
        make("amd64", good_members)
        make("arm64", good_members)
        doc = krew_manifest.build("v1.2.3", "example/pgwarden", dist, None, note=lambda _: None)
        ran += 1
        probs = validate_plugin(doc, "pgwarden.yaml") + check_archives(doc, dist)
        if probs:
            failures.append(f"generated manifest: {probs}")
        if have_yaml:
            ran += 1
            if validate_plugin(load_yaml(krew_manifest.render(doc)), "pgwarden.yaml"):
                failures.append("generated manifest (yaml): rejected")

        cases = [
            ("archive changed after the manifest", {"pgwarden": (b"other\n", 0o755), "LICENSE": (b"x\n", 0o644)}, "but pgwarden_"),
            ("archive without LICENSE", {"pgwarden": (b"#!/bin/sh\n", 0o755)}, "LICENSE"),
            ("archive without pgwarden", {"kubectl-pgwarden": (b"x", 0o755), "LICENSE": (b"x\n", 0o644)}, "glob pattern=pgwarden"),
            ("pgwarden not executable", {"pgwarden": (b"x", 0o644), "LICENSE": (b"x\n", 0o644)}, "not executable"),
            ("archive with ..", {"pgwarden": (b"x", 0o755), "LICENSE": (b"x\n", 0o644), "a/../b": (b"", 0o644)}, "suspicious"),
        ]
        for name, members, want in cases:
            ran += 1
            make("arm64", members)
            probs = check_archives(doc, dist)
            if not any(want in p for p in probs):
                failures.append(f"{name}: expected a problem with {want!r}, got {probs}")
            if name == "archive changed after the manifest" and any("platforms[0]" in p for p in probs):
                failures.append(f"{name}: amd64 reported too: {probs}")

        # The generator refuses: a bad version, no archive, an archive it cannot install from.
        for name, args, want in [("generator bad version", ("1.2.3", "example/pgwarden", dist), "semantic version"),
                                 ("generator no archives", ("v9.9.9", "example/pgwarden", dist), "no archive"),
                                 ("generator bad archive", ("v1.2.3", "example/pgwarden", dist), "suspicious")]:
            ran += 1
            try:
                krew_manifest.build(*args, None, note=lambda _: None)
                failures.append(f"{name}: no error")
            except krew_manifest.GenerateError as e:
                if want not in str(e):
                    failures.append(f"{name}: error {e} lacks {want!r}")

    if failures:
        print(f"self-test FAILED ({len(failures)} of {ran} cases):", file=sys.stderr)
        for f in failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"self-test ok: {ran} cases{'' if have_yaml else ' (PyYAML missing: YAML round trips skipped)'}")
    return 0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description="Validate a krew plugin manifest (krew's rules and this repository's).")
    ap.add_argument("file", nargs="?", type=Path, help="the manifest, named NAME.yaml")
    ap.add_argument("--archives", type=Path, metavar="DIR",
                    help="also install-check each platform against DIR/<archive named by its uri>")
    ap.add_argument("--any-file-name", action="store_true",
                    help="do not require the file to be named <metadata.name>.yaml (as `krew install --manifest`)")
    ap.add_argument("--self-test", action="store_true", help="check the checker on built-in good and broken manifests")
    try:
        args = ap.parse_args(argv[1:])
    except SystemExit as e:
        return 0 if e.code == 0 else 64
    if args.self_test:
        return self_test()
    if args.file is None:
        ap.print_usage(sys.stderr)
        print("check_krew.py: error: FILE is required (or --self-test)", file=sys.stderr)
        return 64
    if args.archives is not None and not args.archives.is_dir():
        print(f"check_krew.py: --archives {args.archives}: not a directory", file=sys.stderr)
        return 64
    try:
        problems = check_file(args.file, args.archives, args.any_file_name)
    except ImportError:
        print("check_krew.py: PyYAML is needed to read the manifest; run it with .tools/venv/bin/python3", file=sys.stderr)
        return 64
    except OSError as e:
        print(f"check_krew.py: {args.file}: {e}", file=sys.stderr)
        return 64
    except (ValueError, UnicodeDecodeError) as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 1
    if problems:
        print(f"{args.file}: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    print(f"{args.file}: valid krew manifest{' (archives checked)' if args.archives else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
