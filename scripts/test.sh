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
