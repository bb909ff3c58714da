#!/usr/bin/env python3
"""The release binary's SBOM against its dependency tree (stdlib only).

  sbom.py prune RAW.cdx.json TREE.txt > SBOM.cdx.json   keep only the components in TREE
  sbom.py check SBOM.cdx.json TREE.txt                  every crate of TREE listed, with version and licence
  sbom.py --self-test                                   the check catches what it must

TREE is `cargo tree -e normal --prefix none --target T -p pgwarden` (lines `name vX.Y.Z [(path)] [(*)]`); its
first line is pgwarden itself, which is the SBOM's metadata.component.
"""
import copy
import json
import re
import sys

LINE = re.compile(r"^(\S+) v(\S+)")


def tree_crates(text):
    """(root, {name@version}) from cargo tree's output."""
    crates = []
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            crates.append(f"{m.group(1)}@{m.group(2)}")
    if not crates:
        raise SystemExit("sbom: the dependency tree is empty")
    return crates[0], set(crates[1:]) - {crates[0]}


def key(component):
    return f"{component.get('name')}@{component.get('version')}"


def prune(bom, tree):
    _, crates = tree_crates(tree)
    keep = [c for c in bom.get("components", []) if key(c) in crates]
    refs = {c["bom-ref"] for c in keep} | {bom["metadata"]["component"]["bom-ref"]}
    # The binary's own sub-component refs stay resolvable.
    for sub in bom["metadata"]["component"].get("components", []):
        refs.add(sub["bom-ref"])
    out = dict(bom)
    out["components"] = keep
    out["dependencies"] = [
        {**d, "dependsOn": [r for r in d.get("dependsOn", []) if r in refs]}
        for d in bom.get("dependencies", [])
        if d["ref"] in refs
    ]
    return out


def licences(component):
    found = []
    for entry in component.get("licenses", []):
        if entry.get("expression"):
            found.append(entry["expression"])
        lic = entry.get("license") or {}
        if lic.get("id") or lic.get("name"):
            found.append(lic.get("id") or lic.get("name"))
    return found


def check(bom, tree):
    """Problems, one line each; empty when the SBOM lists exactly the tree's crates."""
    problems = []
    root, crates = tree_crates(tree)
    if bom.get("bomFormat") != "CycloneDX" or not str(bom.get("specVersion", "")).startswith("1."):
        problems.append("not a CycloneDX 1.x document")
    top = (bom.get("metadata") or {}).get("component") or {}
    if key(top) != root:
        problems.append(f"metadata.component is {key(top)}, the tree's root is {root}")
    if not licences(top):
        problems.append(f"{root}: no licence")
    listed = {}
    for c in bom.get("components", []):
        listed.setdefault(key(c), c)
    for crate in sorted(crates):
        c = listed.get(crate)
        if c is None:
            same_name = sorted(k for k in listed if k.split("@")[0] == crate.split("@")[0])
            problems.append(f"{crate}: missing" + (f" (listed: {', '.join(same_name)})" if same_name else ""))
            continue
        if not licences(c):
            problems.append(f"{crate}: no licence")
        if not c.get("purl", "").startswith(f"pkg:cargo/{crate}"):
            problems.append(f"{crate}: purl {c.get('purl')!r}")
        if c.get("bom-ref", "").startswith("registry+") and not c.get("hashes"):
            problems.append(f"{crate}: from the registry but no checksum")
    for extra in sorted(set(listed) - crates):
        problems.append(f"{extra}: listed but not in the release binary's dependency tree")
    refs = {c.get("bom-ref") for c in bom.get("components", [])} | {top.get("bom-ref")}
    refs |= {s.get("bom-ref") for s in top.get("components", [])}
    for d in bom.get("dependencies", []):
        for r in [d.get("ref"), *d.get("dependsOn", [])]:
            if r not in refs:
                problems.append(f"dependency graph names {r}, which is no component")
    return problems


def self_test():
    tree = "pgwarden v0.1.0 (/src)\nanyhow v1.0.0\nring v0.17.0\nanyhow v1.0.0 (*)\n"
    good = {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "metadata": {"component": {"name": "pgwarden", "version": "0.1.0", "bom-ref": "p",
                                   "licenses": [{"expression": "Apache-2.0"}]}},
        "components": [
            {"name": "anyhow", "version": "1.0.0", "bom-ref": "registry+a", "purl": "pkg:cargo/anyhow@1.0.0",
             "hashes": [{"alg": "SHA-256", "content": "00"}], "licenses": [{"expression": "MIT OR Apache-2.0"}]},
            {"name": "ring", "version": "0.17.0", "bom-ref": "registry+r", "purl": "pkg:cargo/ring@0.17.0",
             "hashes": [{"alg": "SHA-256", "content": "00"}], "licenses": [{"license": {"id": "ISC"}}]},
        ],
        "dependencies": [{"ref": "p", "dependsOn": ["registry+a", "registry+r"]}],
    }
    assert check(good, tree) == [], check(good, tree)
    extra = copy.deepcopy(good)
    extra["components"].append({**good["components"][0], "name": "x509-parser", "bom-ref": "registry+x",
                                "purl": "pkg:cargo/x509-parser@1.0.0"})
    extra["dependencies"][0]["dependsOn"].append("registry+x")
    assert check(prune(extra, tree), tree) == [], "prune drops what the tree does not have"
    cases = {
        "missing": lambda b: b["components"].pop(1),
        "version": lambda b: b["components"][1].update(version="0.16.0"),
        "no licence": lambda b: b["components"][0].update(licenses=[]),
        "not in the release": lambda b: b["components"].append(dict(extra["components"][2])),
        "no checksum": lambda b: b["components"][0].pop("hashes"),
        "metadata.component": lambda b: b["metadata"]["component"].update(version="9"),
        "dependency graph": lambda b: b["dependencies"][0]["dependsOn"].append("registry+gone"),
    }
    for name, spoil in cases.items():
        bad = copy.deepcopy(good)
        spoil(bad)
        assert check(bad, tree), f"the check misses: {name}"
    print(f"sbom.py self-test: ok ({len(cases)} spoiled SBOMs caught)")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    if len(argv) != 4 or argv[1] not in ("prune", "check"):
        print(__doc__, file=sys.stderr)
        return 64
    with open(argv[2]) as f:
        bom = json.load(f)
    with open(argv[3]) as f:
        tree = f.read()
    if argv[1] == "prune":
        json.dump(prune(bom, tree), sys.stdout, indent=2)
        print()
        return 0
    problems = check(bom, tree)
    for p in problems:
        print(f"sbom: {p}", file=sys.stderr)
    if problems:
        return 1
    _, crates = tree_crates(tree)
    print(f"sbom: {argv[2]} lists all {len(crates)} crates of the release binary with versions, checksums and licences")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
