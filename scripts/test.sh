#!/usr/bin/env bash
# The whole test suite: installs what is missing, then unit and integration tests (a real PostgreSQL is
# started by the test support code), then the Helm chart, manifest and Dockerfile checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The webhook tests validate patched pods with kubernetes-validate (installed by setup.sh).
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH
cargo test --locked
# The Dockerfile's build step, as a plain command (no Docker engine here); check-k8s.sh then runs the
# release binary's check-config against the chart's and the manifests' configs.
cargo build --release --locked --bin pgwarden
PGWARDEN_BIN="$PWD/target/release/pgwarden" bash scripts/check-k8s.sh
# The benchmark harness in quick mode (seconds per measurement), so it never rots.
PGWARDEN_BIN="$PWD/target/release/pgwarden" python3 bench/run.py --quick --json target/bench-quick.json > target/bench-quick.txt
echo "bench --quick: ok ($(grep -c 'x$' target/bench-quick.txt) rows in target/bench-quick.txt)"
