#!/usr/bin/env bash
# Writes the CycloneDX 1.5 JSON SBOM of the release binary `pgwarden` for a Linux target, then checks it
# (scripts/sbom.py check): every crate `cargo tree -e normal` shows for that binary is listed with its
# version, checksum and license, and nothing else is.
#   scripts/sbom.sh OUT.json [amd64|arm64]     (default: this machine's architecture)
# cargo-cyclonedx (pinned below) is installed into .tools/cargo on first use. It resolves features across
# the dev-dependencies too, so it lists crates only the tests build (x509-parser through rcgen's feature,
# …); scripts/sbom.py prune drops every component the release binary's own dependency tree does not have.
# SOURCE_DATE_EPOCH (default: the last commit's time) makes the timestamp reproducible.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:?usage: scripts/sbom.sh OUT.json [amd64|arm64]}"
case "${2:-$(uname -m)}" in
  amd64 | x86_64) target=x86_64-unknown-linux-gnu ;;
  arm64 | aarch64) target=aarch64-unknown-linux-gnu ;;
  *) echo "sbom: unknown architecture ${2:-$(uname -m)} (amd64 or arm64)" >&2; exit 64 ;;
esac
CDX_VERSION=0.5.9
cdx=.tools/cargo/bin/cargo-cyclonedx
if [[ "$("$cdx" cyclonedx --version 2>/dev/null)" != "cargo-cyclonedx-cyclonedx $CDX_VERSION" ]]; then
  echo "sbom: installing cargo-cyclonedx $CDX_VERSION into .tools/cargo"
  cargo install --locked --quiet --root .tools/cargo cargo-cyclonedx --version "$CDX_VERSION"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -f pgwarden_bin.cdx.json' EXIT
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}" \
  "$cdx" cyclonedx --quiet --format json --describe binaries --spec-version 1.5 --no-build-deps --target "$target"
mv pgwarden_bin.cdx.json "$work/raw.cdx.json"
cargo tree --locked -e normal --prefix none --target "$target" -p pgwarden > "$work/tree.txt"
python3 scripts/sbom.py prune "$work/raw.cdx.json" "$work/tree.txt" > "$out"
python3 scripts/sbom.py check "$out" "$work/tree.txt"
