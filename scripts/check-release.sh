#!/usr/bin/env bash
# The release pipeline's parts that can run without a registry or a signing identity, on the binary
# scripts/build-release.sh wrote to DIST (default target/dist):
#   - the workflows: every third-party action pinned by commit (scripts/check_workflows.py) and actionlint;
#   - the versions agree (Cargo.toml, Chart.yaml version and appVersion), the chart's default image is the
#     one the release publishes, and a digest pins it;
#   - the shipped binary is stripped, names its debug file, and that file symbolizes its functions;
#   - the SBOM lists every crate of the release binary (scripts/sbom.sh);
#   - `helm package` of the chart, which renders the published image;
#   - the release archive and its krew manifest, checked as krew would (scripts/check_krew.py), and the
#     archive installed as krew installs it answers `kubectl pgwarden`.
# Pushing the image and the chart, signing (cosign keyless needs the GitHub OIDC token) and the attestations
# run only in .github/workflows/release.yml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PATH="$PWD/.tools/bin:$PWD/.tools/venv/bin:$PATH"
export PATH
dist="${1:-target/dist}"
ok() { printf 'check-release: ok   %s\n' "$*"; }
fail() {
  printf 'check-release: FAIL %s\n' "$*" >&2
  exit 1
}
for tool in actionlint shellcheck helm kubectl readelf addr2line nm; do
  command -v "$tool" >/dev/null || fail "$tool is missing (scripts/setup.sh installs the tools; binutils has readelf)"
done

# Workflows.
python3 scripts/check_workflows.py --self-test >/dev/null || fail "check_workflows.py --self-test"
python3 scripts/check_workflows.py || fail "a third-party action is not pinned by commit"
actionlint -no-color .github/workflows/*.yml || fail "actionlint"
ok "workflows: actions pinned by commit, actionlint $(actionlint -version | head -1) clean"

# Versions and the chart's default image.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
chart_version="$(sed -n 's/^version: //p' charts/pgwarden/Chart.yaml)"
app_version="$(sed -n 's/^appVersion: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/pgwarden/Chart.yaml)"
[[ "$version" == "$chart_version" && "$version" == "$app_version" ]] ||
  fail "versions differ: Cargo.toml $version, Chart.yaml version $chart_version, appVersion $app_version"
tag="v$version"
image="$(helm template t charts/pgwarden --set proxy.upstream=db:5432 | sed -n 's/^ *image: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' | grep '/pgwarden/pgwarden' | sort -u)"
[[ "$image" == "ghcr.io/pgwarden/pgwarden:$version" ]] || fail "the chart's default image is $image, not ghcr.io/pgwarden/pgwarden:$version"
digest="sha256:$(printf '%064d' 0 | tr 0 a)"
pinned="$(helm template t charts/pgwarden --set proxy.upstream=db:5432 --set "image.digest=$digest" | sed -n 's/^ *image: "\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' | grep '/pgwarden/pgwarden' | sort -u)"
[[ "$pinned" == "ghcr.io/pgwarden/pgwarden@$digest" ]] || fail "image.digest renders $pinned"
ok "versions agree ($tag); the chart's image is $image, image.digest pins it"

# The shipped binary: no debug sections, a debug link to pgwarden.debug, which resolves its functions.
bin="$dist/pgwarden" debug="$dist/pgwarden.debug"
[[ -x "$bin" && -f "$debug" ]] || fail "$bin or $debug missing (scripts/build-release.sh $dist)"
# (readelf's output is taken whole first: `grep -q` closing the pipe early would fail it under pipefail.)
sections="$(readelf -S -W "$bin")" debug_sections="$(readelf -S -W "$debug" 2>/dev/null)"
if grep -Eq '\.debug_(info|line|abbrev|str|ranges|rnglists|loclists|aranges) ' <<<"$sections"; then fail "$bin has debug sections"; fi
grep -q 'pgwarden.debug' <<<"$(readelf -p .gnu_debuglink "$bin" 2>/dev/null)" || fail "$bin does not name pgwarden.debug"
grep -q '\.debug_line ' <<<"$debug_sections" || fail "$debug has no line tables"
symbols="$(nm "$bin")"
addr="$(awk '$3 ~ /pgwarden3cli3run/ && $2 ~ /[tT]/ {print $1; exit}' <<<"$symbols")"
[[ -n "$addr" ]] || fail "$bin has no symbol for pgwarden::cli::run (the symbol table must stay)"
where="$(addr2line -e "$debug" "0x$addr")"
[[ "$where" == *src/cli.rs:* ]] || fail "$debug resolves pgwarden::cli::run to $where"
"$bin" --version >/dev/null || fail "$bin --version"
ok "$bin: $(stat -c %s "$bin") bytes, stripped; $debug: $(stat -c %s "$debug") bytes, resolves cli::run to ${where##*/}"

# SBOM.
python3 scripts/sbom.py --self-test >/dev/null || fail "sbom.py --self-test"
bash scripts/sbom.sh "$dist/pgwarden_$tag.cdx.json" || fail "the SBOM"
ok "SBOM $dist/pgwarden_$tag.cdx.json"

# The chart as the OCI artifact is pushed: helm package, then rendered from the package.
rm -f "$dist/pgwarden-$version.tgz"
helm package charts/pgwarden --destination "$dist" >/dev/null || fail "helm package"
packaged="$(helm template t "$dist/pgwarden-$version.tgz" --set proxy.upstream=db:5432 | grep -c "ghcr.io/pgwarden/pgwarden:$version")"
((packaged > 0)) || fail "the packaged chart does not render the published image"
ok "helm package: $dist/pgwarden-$version.tgz"

# Release archive, krew manifest, and the plugin installed from it as krew would.
arch="$(uname -m)"
case "$arch" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; esac
bash scripts/package.sh "$tag" "$arch" "$dist" "$dist" >/dev/null
python3 scripts/check_krew.py --self-test >/dev/null || fail "check_krew.py --self-test"
python3 scripts/krew_manifest.py --version "$tag" --repo pgwarden/pgwarden --dist "$dist" >"$dist/pgwarden.yaml" 2>/dev/null ||
  fail "krew_manifest.py"
python3 scripts/check_krew.py "$dist/pgwarden.yaml" --archives "$dist" || fail "the krew manifest"
yamllint -s -d relaxed "$dist/pgwarden.yaml" || fail "yamllint on the krew manifest"
krew_home="$(mktemp -d)"
trap 'rm -rf "$krew_home"' EXIT
mkdir -p "$krew_home/store/pgwarden/$tag" "$krew_home/bin"
tar -xzf "$dist/pgwarden_${tag}_linux_$arch.tar.gz" -C "$krew_home/store/pgwarden/$tag"
ln -s "$krew_home/store/pgwarden/$tag/pgwarden" "$krew_home/bin/kubectl-pgwarden"
usage="$(PATH="$krew_home/bin:$PATH" kubectl pgwarden --help)" || fail "kubectl pgwarden --help"
[[ "$usage" == *"Usage: kubectl pgwarden <COMMAND>"* ]] || fail "kubectl pgwarden --help does not name the plugin"
ok "krew manifest $dist/pgwarden.yaml valid; the archive installed as krew does answers kubectl pgwarden"
