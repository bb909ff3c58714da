#!/usr/bin/env bash
# The shipped binary, built as the Dockerfile and the release workflow build it:
#   scripts/build-release.sh OUTDIR [amd64|arm64]    (default: this machine's architecture)
# writes OUTDIR/pgwarden, stripped (what the image and the release archives carry), and OUTDIR/pgwarden.debug,
# its debug information (line tables and symbols, a release asset) which the stripped binary names in its
# .gnu_debuglink section, so gdb, perf and addr2line find it when it sits beside the binary or in
# /usr/lib/debug. For the other architecture it cross-compiles with Debian's cross gcc
# (gcc-aarch64-linux-gnu or gcc-x86-64-linux-gnu, and the rustup target), no emulation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:?usage: scripts/build-release.sh OUTDIR [amd64|arm64]}"
host="$(uname -m)"
case "$host" in x86_64) host=amd64 ;; aarch64) host=arm64 ;; esac
arch="${2:-$host}"
case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu gnu=x86_64-linux-gnu ;;
  arm64) triple=aarch64-unknown-linux-gnu gnu=aarch64-linux-gnu ;;
  *) echo "build-release: unknown architecture $arch (amd64 or arm64)" >&2; exit 64 ;;
esac
if [[ "$arch" == "$host" ]]; then
  cargo build --release --locked --bin pgwarden
  built=target/release/pgwarden
  objcopy=objcopy
else
  for tool in "$gnu-gcc" "$gnu-objcopy"; do
    command -v "$tool" >/dev/null || { echo "build-release: $tool is missing (apt-get install gcc-${gnu//_/-})" >&2; exit 1; }
  done
  env_triple="${triple//-/_}"
  export "CARGO_TARGET_${env_triple^^}_LINKER=$gnu-gcc" "CC_$env_triple=$gnu-gcc" "AR_$env_triple=$gnu-ar"
  cargo build --release --locked --bin pgwarden --target "$triple"
  built="target/$triple/release/pgwarden"
  objcopy="$gnu-objcopy"
fi
mkdir -p "$out"
"$objcopy" --only-keep-debug "$built" "$out/pgwarden.debug"
# --strip-debug keeps the symbol table: a panic's backtrace and `perf top` on the pod still name functions
# (it costs the binary a few MB; BENCHMARKS.md "Binary size").
(cd "$out" && "$objcopy" --strip-debug --add-gnu-debuglink=pgwarden.debug "$OLDPWD/$built" pgwarden)
chmod 0755 "$out/pgwarden"
chmod 0644 "$out/pgwarden.debug"
size() { stat -c %s "$1"; }
echo "build-release: $arch $(size "$built") bytes built, $out/pgwarden $(size "$out/pgwarden") bytes, $out/pgwarden.debug $(size "$out/pgwarden.debug") bytes"
