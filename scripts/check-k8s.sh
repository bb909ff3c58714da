#!/usr/bin/env bash
# Validates the Kubernetes delivery: Helm chart, deploy/ manifests, Dockerfile, YAML style.
# Needs the tools scripts/install-k8s-tools.sh puts into $REPO/.tools (helm and kubectl in .tools/bin,
# the Python tools in the virtualenv .tools/venv); no cluster, no network.
#
#   scripts/install-k8s-tools.sh && scripts/check-k8s.sh
#
# PGWARDEN_BIN: a pgwarden binary for the check-config checks. Unset: target/release/pgwarden or
# target/debug/pgwarden when built. Set to the empty string: those checks are skipped.
#
# Every check runs even after a failure; the exit status is 1 if any failed.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

CHART=charts/pgwarden
RELEASE=pgwarden
NAMESPACE=pgwarden-system
KUBE_VERSIONS=(1.29.0 1.33.0)

# Optional: a built pgwarden binary, to check that it accepts the proxy configs the chart and
# deploy/ produce (see PGWARDEN_BIN above).
if [[ -z "${PGWARDEN_BIN+set}" ]]; then
  for candidate in target/release/pgwarden target/debug/pgwarden; do
    if [[ -x "$candidate" ]]; then
      PGWARDEN_BIN="$REPO/$candidate"
      break
    fi
  done
fi
export PGWARDEN_BIN="${PGWARDEN_BIN:-}"

# The repository's own tools first. `python3` below is then the virtualenv's, which has PyYAML (a
# dependency of yamllint and kubernetes-validate) for the Python checks.
export PATH="$REPO/.tools/bin:$REPO/.tools/venv/bin:$PATH"

for tool in helm kubernetes-validate hadolint yamllint shellcheck openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "check-k8s: $tool not found; run scripts/install-k8s-tools.sh first" >&2
    exit 1
  fi
done
if [[ "$(command -v python3)" != "$REPO/.tools/venv/bin/python3" ]]; then
  echo "check-k8s: no virtualenv in .tools/venv; run scripts/install-k8s-tools.sh first" >&2
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

passed=0
failed=()
last_ok=false

# check NAME CMD...: runs CMD quietly; on failure prints its output. Sets last_ok.
check() {
  local name="$1"
  shift
  if "$@" >"$WORK/out" 2>&1; then
    passed=$((passed + 1))
    last_ok=true
    printf 'ok    %s\n' "$name"
  else
    failed+=("$name")
    last_ok=false
    printf 'FAIL  %s\n' "$name"
    sed 's/^/      /' "$WORK/out"
  fi
}

# check_fails NAME CMD...: CMD must fail (guards that a check really rejects bad input).
# The error must contain EXPECTED, so the right guard fired.
check_fails() {
  local name="$1" expected="$2"
  shift 2
  if "$@" >"$WORK/out" 2>&1; then
    failed+=("$name")
    printf 'FAIL  %s (expected an error, got none)\n' "$name"
  elif ! grep -qF -- "$expected" "$WORK/out"; then
    failed+=("$name")
    printf 'FAIL  %s (error does not mention "%s")\n' "$name" "$expected"
    sed 's/^/      /' "$WORK/out"
  else
    passed=$((passed + 1))
    printf 'ok    %s\n' "$name"
  fi
}

validate() { # validate KUBE_VERSION FILE...
  local version="$1"
  shift
  kubernetes-validate --strict --quiet -k "$version" "$@"
}

render() { # render OUT KUBE_VERSION [helm args...]
  local out="$1" version="$2"
  shift 2
  helm template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --kube-version "$version" "$@" >"$out"
}

# contains FILE LINE...: every LINE is a whole line of FILE.
contains() {
  local file="$1" line
  shift
  for line in "$@"; do
    grep -qxF -- "$line" "$file" || {
      echo "no line '$line' in:"
      cat "$file"
      return 1
    }
  done
}

# --- scripts, Dockerfile, plain YAML ---------------------------------------------------------
check "shellcheck scripts/*.sh" shellcheck scripts/*.sh
check "hadolint Dockerfile" hadolint --failure-threshold warning Dockerfile
check "yamllint deploy/ and chart values" \
  yamllint --strict deploy "$CHART/values.yaml" "$CHART/Chart.yaml" .yamllint

# --- chart: lint, render, validate -----------------------------------------------------------
value_sets=(default)
for f in deploy/values/*.yaml; do
  value_sets+=("$f")
done

rendered=()
for set in "${value_sets[@]}"; do
  args=()
  label="default values"
  if [[ "$set" != default ]]; then
    args=(-f "$set")
    label="$set"
  fi
  check "helm lint --strict ($label)" helm lint --strict --quiet "$CHART" --namespace "$NAMESPACE" "${args[@]}"
  for version in "${KUBE_VERSIONS[@]}"; do
    out="$WORK/render-$(basename "$set" .yaml)-$version.yaml"
    check "helm template ($label, k8s $version)" render "$out" "$version" "${args[@]}"
    if $last_ok; then
      check "kubernetes-validate --strict -k $version ($label)" validate "$version" "$out"
      rendered+=("$out")
    fi
  done
done

# --- gateway mode (gateway.enabled; deploy/values/gateway.yaml above is a full example) -----------
# Minimal: only the required upstream. Then watching two namespaces: a Role per namespace instead of
# the ClusterRole. Both are checked by check_k8s_render.py below too, with the other renders.
gateway_args=(--set gateway.enabled=true --set gateway.upstream=db.example:5432)
gateway_ns_args=("${gateway_args[@]}" --set 'gateway.namespaces={shop,batch}')
for variant in gateway-min gateway-ns; do
  if [[ "$variant" == gateway-min ]]; then
    args=("${gateway_args[@]}")
    label="gateway.enabled=true,gateway.upstream=db.example:5432"
  else
    args=("${gateway_ns_args[@]}")
    label="gateway.enabled=true,gateway.upstream=db.example:5432,gateway.namespaces={shop,batch}"
  fi
  check "helm lint --strict ($label)" helm lint --strict --quiet "$CHART" --namespace "$NAMESPACE" "${args[@]}"
  for version in "${KUBE_VERSIONS[@]}"; do
    out="$WORK/render-$variant-$version.yaml"
    check "helm template ($label, k8s $version)" render "$out" "$version" "${args[@]}"
    if $last_ok; then
      check "kubernetes-validate --strict -k $version ($label)" validate "$version" "$out"
      rendered+=("$out")
    fi
  done
done
check "gateway RBAC (gateway.namespaces empty): one ClusterRole + ClusterRoleBinding, pods list+watch only" \
  python3 scripts/check_k8s_render.py --gateway-rbac "$NAMESPACE" "$WORK/render-gateway-min-1.33.0.yaml"
check "gateway RBAC (gateway.namespaces={shop,batch}): Role + RoleBinding in shop and batch, no ClusterRole" \
  python3 scripts/check_k8s_render.py --gateway-rbac "$NAMESPACE" "$WORK/render-gateway-ns-1.33.0.yaml" shop batch
check "fleet-reader ClusterRole: exactly pods list + pods/proxy get, bound to nobody" \
  python3 scripts/check_k8s_render.py --fleet-reader "$WORK/render-default-1.33.0.yaml"
check_fails "no gateway by default" "could not find template" \
  render "$WORK/x.yaml" 1.33.0 --show-only templates/gateway-deployment.yaml
check_fails "no fleet-reader ClusterRole with fleetReader.create=false" "could not find template" \
  render "$WORK/x.yaml" 1.33.0 --set fleetReader.create=false --show-only templates/fleet-reader-rbac.yaml
check_fails "chart rejects gateway.enabled without gateway.upstream" "gateway.upstream is required" \
  render "$WORK/x.yaml" 1.33.0 --set gateway.enabled=true
check_fails "chart rejects gateway.config.listen (gateway.port sets it)" "gateway.config.listen: the chart sets it" \
  render "$WORK/x.yaml" 1.33.0 "${gateway_args[@]}" --set gateway.config.listen=0.0.0.0:7000
check_fails "schema rejects a gateway namespace that is no namespace name" "/gateway/namespaces/0" \
  render "$WORK/x.yaml" 1.33.0 "${gateway_args[@]}" --set 'gateway.namespaces={Shop_1}'

# --- control plane (control.enabled, on by default: the renders above have it on, and
# deploy/values/control.yaml sets overrides and editors; check_k8s_render.py checks inject.yaml's control, the
# overrides ConfigMap and the editor Role in every render). Off: without budgets, the injector may no
# longer watch pods or review tokens; with budgets, it still may. -------------------------------------
for variant in control-off control-off-budgets; do
  if [[ "$variant" == control-off ]]; then
    args=(--set control.enabled=false)
    label="control.enabled=false"
  else
    args=(-f deploy/values/budgets.yaml --set control.enabled=false)
    label="deploy/values/budgets.yaml,control.enabled=false"
  fi
  check "helm lint --strict ($label)" helm lint --strict --quiet "$CHART" --namespace "$NAMESPACE" "${args[@]}"
  for version in "${KUBE_VERSIONS[@]}"; do
    out="$WORK/render-$variant-$version.yaml"
    check "helm template ($label, k8s $version)" render "$out" "$version" "${args[@]}"
    if $last_ok; then
      check "kubernetes-validate --strict -k $version ($label)" validate "$version" "$out"
      rendered+=("$out")
    fi
  done
done
check "control plane on by default: overrides ConfigMap without entries, editor Role bound to nobody" \
  python3 scripts/check_k8s_render.py --control "$NAMESPACE" "$WORK/render-default-1.33.0.yaml" 0 0
check "control plane (deploy/values/control.yaml): 3 overrides entries, editor Role bound to 2 subjects" \
  python3 scripts/check_k8s_render.py --control "$NAMESPACE" "$WORK/render-control-1.33.0.yaml" 3 2
check "control plane off: no control objects, injector ClusterRole without pods and TokenReviews" \
  python3 scripts/check_k8s_render.py --control "$NAMESPACE" "$WORK/render-control-off-1.33.0.yaml" off
check "control plane off, budgets on: injector ClusterRole keeps pods and TokenReviews" \
  python3 scripts/check_k8s_render.py --control "$NAMESPACE" "$WORK/render-control-off-budgets-1.33.0.yaml" off
check_fails "no overrides ConfigMap with control.enabled=false" "could not find template" \
  render "$WORK/x.yaml" 1.33.0 --set control.enabled=false --show-only templates/overrides-configmap.yaml
sed 's/verbs: \["get", "update", "patch"\]/verbs: ["get", "update", "patch", "delete"]/' \
  "$WORK/render-default-1.33.0.yaml" >"$WORK/editor-delete.yaml"
check_fails "render check rejects an editor Role that may delete the overrides ConfigMap" \
  "want exactly ['get', 'patch', 'update'] on configmaps" \
  python3 scripts/check_k8s_render.py --control "$NAMESPACE" "$WORK/editor-delete.yaml" 0 0
check_fails "schema rejects an unknown key in an overrides entry" "'max_connection' not allowed" \
  render "$WORK/x.yaml" 1.33.0 --set control.overrides.shop.defaults.max_connection=4
check_fails "schema rejects an overrides key that is no NAMESPACE or NAMESPACE.WORKLOAD" "/control/overrides" \
  render "$WORK/x.yaml" 1.33.0 --set control.overrides.Shop_1.enforce=false
check_fails "schema rejects a cap of 0 connections" "/control/overrides/shop/cap/connections" \
  render "$WORK/x.yaml" 1.33.0 --set control.overrides.shop.cap.connections=0
check_fails "schema rejects an editor of no RBAC subject kind" "/control/editors/0/kind" \
  render "$WORK/x.yaml" 1.33.0 --set 'control.editors[0].kind=Team' --set 'control.editors[0].name=sre'

if ((${#rendered[@]})); then
  check "rendered chart: metrics vs SPEC, webhook TLS chain, selectors, injector config, gateway, control plane, RBAC${PGWARDEN_BIN:+ (+ pgwarden check-config)}" \
    python3 scripts/check_k8s_render.py "$NAMESPACE" "${rendered[@]}"
fi

# --- Grafana dashboard (monitoring.grafanaDashboard; deploy/values/production.yaml enables it, so the
# loop above validated its ConfigMap and check_k8s_render.py its expressions) ---------------------
DASHBOARD="$CHART/dashboards/pgwarden.json"
SHOW_DASHBOARD=(--show-only templates/grafana-dashboard.yaml)
python3 scripts/check_k8s_render.py --spec-metrics >"$WORK/spec-metrics.txt"
check "grafana dashboard: JSON parses, SPEC metrics only, queries through \${datasource}" \
  python3 scripts/dashboard_metrics.py "$DASHBOARD" --names-file "$WORK/spec-metrics.txt"
sed 's/pgwarden_client_leak_suspects/pgwarden_client_leaks/' "$DASHBOARD" >"$WORK/bad-dashboard.json"
check_fails "dashboard check rejects a metric pgwarden does not export" \
  "pgwarden_client_leaks is not an exported metric" \
  python3 scripts/dashboard_metrics.py "$WORK/bad-dashboard.json" --names-file "$WORK/spec-metrics.txt"
check_fails "no dashboard ConfigMap by default" "could not find template" \
  render "$WORK/x.yaml" 1.33.0 "${SHOW_DASHBOARD[@]}"
dashboard_args=(--set monitoring.grafanaDashboard.enabled=true --set monitoring.grafanaDashboard.namespace=grafana
  --set monitoring.grafanaDashboard.label=dashboards.example.com/grafana
  --set-string monitoring.grafanaDashboard.labelValue=pgwarden)
check "helm template (dashboard in its own namespace, custom label)" \
  render "$WORK/dashboard.yaml" 1.33.0 "${dashboard_args[@]}" "${SHOW_DASHBOARD[@]}"
if $last_ok; then
  check "dashboard ConfigMap: namespace and label from values" \
    contains "$WORK/dashboard.yaml" "  namespace: grafana" '    dashboards.example.com/grafana: "pgwarden"'
  check "kubernetes-validate --strict -k 1.33.0 (dashboard ConfigMap)" validate 1.33.0 "$WORK/dashboard.yaml"
fi
check_fails "schema rejects a dashboard label value that is no label value" "/monitoring/grafanaDashboard/labelValue" \
  render "$WORK/x.yaml" 1.33.0 --set monitoring.grafanaDashboard.labelValue="not a label"

# The guards must reject bad values, not only accept good ones.
printf 'proxy:\n  defaults:\n    idle_timeout: off\n' >"$WORK/bare-off.yaml"
printf 'proxy:\n  defaults:\n    idle_timeout: on\n' >"$WORK/bare-on.yaml"
check "chart accepts a bare off (YAML 1.1 false, which pgwarden reads as off)" \
  render "$WORK/x.yaml" 1.33.0 -f "$WORK/bare-off.yaml"
check_fails "schema rejects a bare on (YAML 1.1 true)" "/proxy/defaults/idle_timeout" \
  render "$WORK/x.yaml" 1.33.0 -f "$WORK/bare-on.yaml"
check_fails "schema rejects \"off\" for a plain integer" "/proxy/max_tracked_clients" \
  render "$WORK/x.yaml" 1.33.0 --set proxy.max_tracked_clients=off
check_fails "schema rejects an unknown proxy key" "'idle_timeout' not allowed" \
  render "$WORK/x.yaml" 1.33.0 --set proxy.idle_timeout=5m
check_fails "schema rejects a bad enum" "/proxy/upstream_tls" \
  render "$WORK/x.yaml" 1.33.0 --set proxy.upstream_tls=always
check_fails "chart rejects proxy.listen off sidecar.listenPort" "must use sidecar.listenPort" \
  render "$WORK/x.yaml" 1.33.0 --set sidecar.listenPort=7432
check_fails "chart rejects a loopback admin_listen" "must not be a loopback address" \
  render "$WORK/x.yaml" 1.33.0 --set proxy.admin_listen=127.0.0.1:9187

# --- workload budgets (deploy/values/budgets.yaml above is a full example; check_k8s_render.py checks
# the coordinator URL, the CA mount and the RBAC in every render, on and off) ------------------------
check_fails "schema rejects a budget entry without a workload" "workload" \
  render "$WORK/x.yaml" 1.33.0 --set budgets.enabled=true --set 'budgets.entries[0].maxConnections=4' \
  --set 'budgets.entries[0].match.namespace=shop'
check_fails "schema rejects a budget of 0" "/budgets/entries/0/maxConnections" \
  render "$WORK/x.yaml" 1.33.0 --set 'budgets.entries[0].match.workload=api' --set 'budgets.entries[0].maxConnections=0'
check_fails "schema rejects an unknown budget key" "'maxConnection' not allowed" \
  render "$WORK/x.yaml" 1.33.0 --set 'budgets.entries[0].match.workload=api' --set 'budgets.entries[0].maxConnection=4'
if [[ -n "$PGWARDEN_BIN" ]]; then
  printf 'budgets:\n  enabled: true\n  entries:\n    - {match: {namespace: shop, workload: api}, maxConnections: 4}\n    - {name: again, match: {workload: "a*"}, maxConnections: 5}\n' >"$WORK/budgets-twice.yaml"
  budgets_twice() {
    render "$WORK/twice.yaml" 1.33.0 -f "$WORK/budgets-twice.yaml" &&
      python3 scripts/check_k8s_render.py "$NAMESPACE" "$WORK/twice.yaml"
  }
  check_fails "pgwarden inject --check refuses two budgets for one workload in the chart's config" \
    "matches the same workload" budgets_twice
fi

# --- deploy/ manifests (every YAML file with a top-level apiVersion) -------------------------
mapfile -t manifests < <(grep -rlE --include='*.yaml' --include='*.yml' '^apiVersion:' deploy | sort)
if ((${#manifests[@]} == 0)); then
  failed+=("deploy/ manifests")
  echo "FAIL  deploy/ manifests: none found"
fi
for version in "${KUBE_VERSIONS[@]}"; do
  check "kubernetes-validate --strict -k $version deploy/ (${#manifests[@]} files)" \
    validate "$version" "${manifests[@]}"
done
if [[ -n "$PGWARDEN_BIN" ]]; then
  check "pgwarden check-config on deploy/ PGWARDEN_CONFIG_YAML" \
    python3 scripts/check_k8s_render.py --env-configs "${manifests[@]}"
else
  echo "skip  pgwarden check-config (PGWARDEN_BIN empty, or no pgwarden binary in target/)"
fi
# The gateway's proxy.yaml (pod_identity.from: peer_address) of the gateway renders above: minimal,
# watching namespaces, and deploy/values/gateway.yaml.
gateway_renders=()
for f in "$WORK"/render-gateway-min-1.33.0.yaml "$WORK"/render-gateway-ns-1.33.0.yaml \
  "$WORK"/render-gateway-1.33.0.yaml; do
  if [[ -f "$f" ]]; then
    gateway_renders+=("$f")
  fi
done
if [[ -n "$PGWARDEN_BIN" ]]; then
  check "pgwarden check-config on the gateway's proxy.yaml" \
    python3 scripts/check_k8s_render.py --gateway-configs "${gateway_renders[@]}"
else
  echo "skip  pgwarden check-config on the gateway's proxy.yaml (PGWARDEN_BIN empty, or no pgwarden binary in target/)"
fi

# --- summary ---------------------------------------------------------------------------------
total=$((passed + ${#failed[@]}))
if ((${#failed[@]})); then
  printf '\ncheck-k8s: %d of %d checks FAILED:\n' "${#failed[@]}" "$total"
  printf '  - %s\n' "${failed[@]}"
  exit 1
fi
printf '\ncheck-k8s: all %d checks passed\n' "$total"
