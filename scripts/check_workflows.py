#!/usr/bin/env python3
"""Checks that every GitHub Actions workflow pins its actions by full commit SHA.

For each .github/workflows/*.yml (and *.yaml), every `uses:` -- of a step or of a job calling a reusable
workflow -- that is not a local path (`./...`) or a Docker image (`docker://...`) must read

    uses: owner/repo[/path]@<40 lowercase hex digits> # vX.Y.Z

i.e. a full commit SHA (a tag or branch can be moved to other code; a short SHA can become ambiguous)
followed by a comment naming the release that SHA is, so that a reader and an updater know what it is.

    python3 scripts/check_workflows.py              # the repository's workflows
    python3 scripts/check_workflows.py FILE...      # just those files
    python3 scripts/check_workflows.py --self-test  # the checker against built-in good and bad examples

Prints every violation as FILE:LINE: message and exits 1 if there is any, or if there are no workflow
files at all. Standard library only: the YAML is scanned line by line (block scalars such as `run: |`
are skipped, so a script that merely mentions `uses:` is not mistaken for a step).
"""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"

# A `uses:` key, as a mapping key or as the first key of a sequence item ("- uses:").
USES_RE = re.compile(r"^(?P<indent>\s*)(?:-\s+)?uses\s*:(?P<rest>.*)$")
# Any `key: |` / `key: >-` / `- key: |2` line: a block scalar starts; its lines are data, not YAML keys.
BLOCK_RE = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?[^\s#'\"][^#]*?:\s+[|>][0-9+-]*\s*(?:#.*)?$")
# The one accepted form of a remote reference.
PINNED_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[^@\s]+)?@[0-9a-f]{40}$")
VERSION_COMMENT_RE = re.compile(r"^#\s*v[0-9]\S*")


def split_value(rest):
    """Splits what follows `uses:` into (value, comment); quotes are removed, comment keeps its '#'."""
    rest = rest.strip()
    if rest[:1] in ("'", '"'):
        quote = rest[0]
        end = rest.find(quote, 1)
        if end < 0:
            return rest[1:], ""
        return rest[1:end], rest[end + 1 :].strip()
    # In plain YAML scalars a comment starts at " #".
    match = re.search(r"(^|\s)#", rest)
    if match:
        return rest[: match.start()].strip(), rest[match.start() :].strip()
    return rest, ""


def check_text(name, text):
    """Returns [(line number, message)] for the workflow `text` (named `name` in messages)."""
    problems = []
    block_indent = None  # set while inside a block scalar: lines indented deeper than this are its data
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if not stripped or stripped.startswith("#"):
            continue
        block = BLOCK_RE.match(line)
        if block:
            # The key's own column: after the "- " of a sequence item.
            block_indent = len(block.group("indent")) + len(block.group("dash") or "")
        match = USES_RE.match(line)
        if not match:
            continue
        value, comment = split_value(match.group("rest"))
        if value.startswith("./") or value.startswith("docker://"):
            continue
        if not value:
            problems.append((lineno, "`uses:` with no value"))
            continue
        if not PINNED_RE.match(value):
            ref = value.partition("@")[2]
            if not ref:
                why = "no @ref"
            elif re.fullmatch(r"[0-9a-fA-F]{40}", ref):
                why = f"SHA '{ref}' is not lowercase hex"
            elif re.fullmatch(r"[0-9a-fA-F]{7,39}", ref):
                why = f"'{ref}' is a short SHA"
            else:
                why = f"'{ref}' is a tag or branch, which can be moved"
            problems.append(
                (lineno, f"`uses: {value}`: not pinned to a full commit SHA ({why}); "
                 "write owner/repo@<40-hex-sha> # vX.Y.Z")
            )
            continue
        if not VERSION_COMMENT_RE.match(comment):
            problems.append(
                (lineno, f"`uses: {value}`: the SHA needs a '# vX.Y.Z' comment naming its release")
            )
    return [(lineno, f"{name}:{lineno}: {msg}") for lineno, msg in problems]


def workflow_files():
    return sorted(p for p in WORKFLOWS.glob("*") if p.is_file() and p.suffix in (".yml", ".yaml"))


def self_test():
    sha = "08c6903cd8c0fde910a37f88322edcfb5dd907a8"
    bad = {
        "tag pin": "      - uses: actions/checkout@v4.2.2\n",
        "major tag pin with comment": "      - uses: actions/checkout@v4 # v4\n",
        "branch pin": "      - uses: actions/checkout@main\n",
        "short sha": "      - uses: actions/checkout@08c6903 # v4.2.2\n",
        "uppercase sha": f"      - uses: actions/checkout@{sha.upper()} # v4.2.2\n",
        "no ref": "      - uses: actions/checkout\n",
        "sha without version comment": f"      - uses: actions/checkout@{sha}\n",
        "sha with a comment that is no version": f"      - uses: actions/checkout@{sha} # pinned\n",
        "quoted tag pin": "      - uses: 'docker/login-action@v3'\n",
        "named step, tag pin": "      - name: Log in\n        uses: docker/login-action@v3.3.0\n",
        "reusable workflow on a branch": "  call:\n    uses: octo/wf/.github/workflows/r.yml@main\n",
    }
    good = {
        "full sha": f"      - uses: actions/checkout@{sha} # v4.2.2\n",
        "quoted full sha": f"      - uses: \"actions/checkout@{sha}\" # v4.2.2\n",
        "action in a subdirectory": f"      - uses: github/codeql-action/init@{sha} # v3.28.0\n",
        "reusable workflow": f"  call:\n    uses: octo/wf/.github/workflows/r.yml@{sha} # v1.0.0\n",
        "local action": "      - uses: ./.github/actions/setup\n",
        "docker image": "      - uses: docker://alpine:3.20\n",
        "a run script mentioning uses": (
            "      - run: |\n          echo 'uses: actions/checkout@main'\n          uses: x@v1\n"
            "      - name: next\n        run: >-\n          uses: y@main\n"
        ),
    }
    failures = []
    for what, text in bad.items():
        if not check_text("bad", "jobs:\n  j:\n    steps:\n" + text):
            failures.append(f"not caught: {what}: {text.strip()!r}")
    for what, text in good.items():
        found = check_text("good", "jobs:\n  j:\n    steps:\n" + text)
        if found:
            failures.append(f"wrongly flagged: {what}: {[m for _, m in found]}")
    # A block scalar ends where the indentation comes back: the `uses:` after it is checked again.
    after_block = "steps:\n  - run: |\n      echo hi\n  - uses: actions/checkout@main\n"
    if [n for n, _ in check_text("after", after_block)] != [4]:
        failures.append("a tag pin after a run: block was not caught at line 4")
    for failure in failures:
        print(f"check_workflows self-test: {failure}", file=sys.stderr)
    if failures:
        return 1
    print(f"check_workflows self-test: ok ({len(bad)} bad examples caught, {len(good)} good ones passed)")
    return 0


def main(argv):
    if argv[1:2] == ["--self-test"]:
        return self_test()
    files = [Path(a) for a in argv[1:]] or workflow_files()
    if not files:
        print(f"check_workflows: no workflow files in {WORKFLOWS}", file=sys.stderr)
        return 1
    problems = []
    for path in files:
        try:
            shown = path.resolve().relative_to(REPO)
        except ValueError:
            shown = path
        problems += [msg for _, msg in check_text(str(shown), path.read_text(encoding="utf-8"))]
    for msg in problems:
        print(msg)
    if problems:
        print(f"check_workflows: {len(problems)} unpinned action reference(s)", file=sys.stderr)
        return 1
    print(f"check_workflows: ok ({len(files)} workflow files, every action pinned by commit SHA)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
