#!/usr/bin/env bash
# One architecture's release assets, from what scripts/build-release.sh wrote to BINDIR:
#   scripts/package.sh TAG ARCH BINDIR OUTDIR
# OUTDIR/pgwarden_TAG_linux_ARCH.tar.gz (pgwarden and LICENSE at its root: the download, and the archive the
# krew manifest points at) and OUTDIR/pgwarden_TAG_linux_ARCH.debug (the debug information). The archive is
# reproducible: sorted names, owner 0, modification time SOURCE_DATE_EPOCH (default: the last commit's).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tag="${1:?usage: scripts/package.sh TAG ARCH BINDIR OUTDIR}" arch="${2:?}" bindir="${3:?}" out="${4:?}"
[[ "$tag" =~ ^v[0-9]+\.[0-9]+\.[0-9]+ ]] || { echo "package: TAG must be vX.Y.Z, got $tag" >&2; exit 64; }
[[ "$arch" == amd64 || "$arch" == arm64 ]] || { echo "package: ARCH must be amd64 or arm64, got $arch" >&2; exit 64; }
for f in "$bindir/pgwarden" "$bindir/pgwarden.debug"; do
  [[ -f "$f" ]] || { echo "package: $f is missing (scripts/build-release.sh $bindir $arch writes it)" >&2; exit 1; }
done
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
mkdir -p "$out"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
install -m 0755 "$bindir/pgwarden" "$stage/pgwarden"
install -m 0644 LICENSE "$stage/LICENSE"
name="pgwarden_${tag}_linux_${arch}"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -C "$stage" -cf - LICENSE pgwarden |
  gzip -9 -n > "$out/$name.tar.gz"
install -m 0644 "$bindir/pgwarden.debug" "$out/$name.debug"
echo "package: $out/$name.tar.gz ($(stat -c %s "$out/$name.tar.gz") bytes), $out/$name.debug"
