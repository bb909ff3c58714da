#!/usr/bin/env bash
# The whole test suite: installs what is missing, then unit and integration tests (a real PostgreSQL is
# started by the test support code), then the Helm chart, manifest and Dockerfile checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
cargo build --locked --bins
cargo test --locked
bash scripts/check-k8s.sh
