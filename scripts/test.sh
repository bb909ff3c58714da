#!/usr/bin/env bash
# The whole test suite: installs what is missing, then unit and integration tests (a real PostgreSQL is
# started by the test support code), then the Helm chart, manifest and Dockerfile checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The webhook tests run kubernetes-validate from PATH on the patched pods: the repository's tools
# (helm and kubectl in .tools/bin, the Python tools in the virtualenv .tools/venv, installed by
# setup.sh) go first, for the tests and for everything below.
PATH="$PWD/.tools/bin:$PWD/.tools/venv/bin:$PATH"
export PATH
cargo test --locked
# The Dockerfile's build step, as a plain command (no Docker engine here): the shipped binary, stripped, and
# its debug information (target/dist). Everything below runs that binary: check-k8s.sh runs its
# check-config against the chart's and the manifests' configs.
bash scripts/build-release.sh target/dist
PGWARDEN_BIN="$PWD/target/dist/pgwarden"
export PGWARDEN_BIN
# tokio-postgres's own test suite, straight and through pgwarden (tests/drivers/README.md).
bash tests/drivers/tokio-postgres.sh
bash scripts/check-k8s.sh
# The release pipeline's local parts: workflows linted and pinned, SBOM, chart package, krew manifest.
bash scripts/check-release.sh target/dist
# Every fuzz target for a bounded time from the checked-in seeds (scripts/fuzz.sh; longer runs documented there).
bash scripts/fuzz.sh "${PGWARDEN_FUZZ_SECONDS:-30}"
# The benchmark harness in quick mode (seconds per measurement), so it never rots.
python3 bench/run.py --quick --json target/bench-quick.json > target/bench-quick.txt
echo "bench --quick: ok ($(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["results"]))' target/bench-quick.json) rows in target/bench-quick.txt)"
# The instruction counter (valgrind's callgrind, from apt when missing) on one shape and few transactions.
python3 bench/instructions.py --shapes simple -n 100 > target/bench-instructions.txt
echo "bench/instructions.py: ok ($(tail -1 target/bench-instructions.txt))"
