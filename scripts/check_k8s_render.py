#!/usr/bin/env python3
"""Checks on `helm template` output of charts/pgwarden that a Kubernetes schema cannot make.

kubernetes-validate skips custom resources (PodMonitor, PrometheusRule, cert-manager Certificate)
and knows nothing about what pgwarden needs, so this script checks:

- PrometheusRule: every pgwarden_* metric an expression uses is one SPEC.md "Metrics" lists, with
  labels SPEC gives it (plus the scrape's namespace/pod/...), and documented `reason` values;
  alert annotations reach Prometheus as `{{ $labels.client }}` templates (Helm escaping worked).
- Webhook TLS: the MutatingWebhookConfiguration's caBundle is the CA that signed the serving
  certificate in the rendered Secret, the certificate covers <service>.<namespace>.svc and matches
  its key; with cert-manager, the inject-ca-from annotation names a Certificate whose secret the
  injector mounts.
- Webhook: two entries, pods CREATE, sideEffects None, v1 reviews, /mutate, disjoint selectors,
  the release namespace excluded.
- Injector ConfigMap: inject.yaml has the injector keys and every SPEC "Config file" key under
  `proxy`; with PGWARDEN_BIN set, `$PGWARDEN_BIN check-config` accepts that `proxy` block.
- Gateway (gateway.enabled; objects labelled app.kubernetes.io/component=gateway): proxy.yaml in its
  ConfigMap has pod_identity.from peer_address, an upstream, listen/admin_listen on the container
  ports postgres/pgwarden-admin, and only SPEC "Config file" keys; the Deployment runs
  `proxy --config /config/proxy.yaml` from that ConfigMap under its own ServiceAccount, with the
  Downward API env, the pgwarden.io/inject=disabled pod label and probes on pgwarden-admin; the Service
  and PodDisruptionBudget select its pods; RBAC is list+watch on pods and nothing else, a ClusterRole
  when pod_identity.namespaces is empty, else a Role and RoleBinding in each of those namespaces.
- Workload budgets: inject.yaml's `budgets` keys; when enabled, `url` is the injector Service's, `caFile`
  is /tls/ca.crt mounted from the TLS Secret, and the PrometheusRule has the budget alerts. The injector's
  ClusterRole adds pods get/list/watch and tokenreviews create (exactly) when budgets or the control plane
  are on, and only then.
- Control plane (control.enabled; objects labelled app.kubernetes.io/component=control): inject.yaml's
  `control` keys; when enabled, `url` and `caFile` as for budgets, overridesNamespace the release
  namespace, overridesName the one overrides ConfigMap rendered there, whose every data key is NAMESPACE
  or NAMESPACE.WORKLOAD and every value a policy patch with known keys only; the Role
  <fullname>-overrides-editor may get, update and patch that ConfigMap and nothing else, and a RoleBinding
  (at most one) binds it to subjects. When off, none of these objects.
- Fleet reader ClusterRole (component fleet-reader): exactly pods get and list and pods/proxy get, bound by no
  binding of the chart.
- Grafana dashboard ConfigMaps (a `*.json` data key): the JSON parses, its panels query through the
  `${datasource}` variable, and every expression passes the PrometheusRule checks above (SPEC
  metrics and labels), through scripts/dashboard_metrics.py.

With --env-configs, checks instead that every PGWARDEN_CONFIG_YAML in the given manifests passes
`$PGWARDEN_BIN check-config`. With --gateway-configs, that the gateway's proxy.yaml in each rendered file
passes `$PGWARDEN_BIN check-config`. With --gateway-rbac RELEASE_NAMESPACE FILE [NS...], that FILE grants the gateway list+watch
on pods through a Role and RoleBinding in exactly the namespaces NS, or (no NS) through one ClusterRole
and ClusterRoleBinding. With --fleet-reader FILE, that FILE has the fleet-reader ClusterRole. With --control
RELEASE_NAMESPACE FILE off|ENTRIES EDITORS, that FILE's control plane is off, or on with ENTRIES overrides
entries and an editor RoleBinding to EDITORS subjects (0: no RoleBinding). With --spec-metrics, prints the SPEC metric names, one a line (a
histogram once, without _bucket/_sum/_count), for `dashboard_metrics.py --names-file`.

Usage: check_k8s_render.py RELEASE_NAMESPACE RENDERED.yaml... | --env-configs MANIFEST.yaml... | --gateway-configs RENDERED.yaml... | --gateway-rbac RELEASE_NAMESPACE RENDERED.yaml [NS...] | --fleet-reader RENDERED.yaml | --control RELEASE_NAMESPACE RENDERED.yaml off|ENTRIES EDITORS | --spec-metrics
Exit status 0 when every file passes, 1 otherwise.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import dashboard_metrics

# SPEC.md "Metrics" (prefix pgwarden_): name -> labels. Keep in sync with SPEC.md.
SPEC_METRICS: dict[str, set[str]] = {
    "pgwarden_client_connections": {"client", "state"},
    "pgwarden_client_max_connections": {"client"},
    "pgwarden_client_connections_opened_total": {"client"},
    "pgwarden_client_connections_refused_total": {"client", "reason"},
    "pgwarden_client_connections_closed_total": {"client", "reason"},
    "pgwarden_client_would_refuse_total": {"client", "reason"},
    "pgwarden_client_would_close_total": {"client", "reason"},
    "pgwarden_client_leak_suspects": {"client"},
    "pgwarden_client_oldest_idle_in_transaction_seconds": {"client"},
    "pgwarden_upstream_connect_errors_total": set(),
    "pgwarden_build_info": {"version"},
    "pgwarden_info": {"pod", "namespace", "workload"},
}
# Workload budgets' series (README "Metrics"; beyond SPEC.md, which predates budgets).
SPEC_METRICS.update({
    f"pgwarden_budget_{name}": {"budget"}
    for name in ("connections", "share", "max_connections", "pods", "share_age_seconds", "fallback")
})
SPEC_HISTOGRAMS: dict[str, set[str]] = {"pgwarden_upstream_connect_duration_seconds": set()}
for _name, _labels in SPEC_HISTOGRAMS.items():
    SPEC_METRICS[f"{_name}_bucket"] = _labels | {"le"}
    SPEC_METRICS[f"{_name}_sum"] = set(_labels)
    SPEC_METRICS[f"{_name}_count"] = set(_labels)

# Labels Prometheus adds when it scrapes a sidecar through the PodMonitor.
SCRAPE_LABELS = {"namespace", "pod", "container", "endpoint", "instance", "job", "service"}

REFUSE_REASONS = {"client_limit", "total_limit", "budget", "wait_timeout"}
CLOSE_REASONS = {
    "client", "server", "abandoned", "idle_timeout", "idle_in_transaction_timeout", "max_age",
    "transaction_timeout", "reclaim", "budget_reclaim", "shutdown", "error",
}
CONNECTION_STATES = {
    "startup", "waiting", "active", "idle", "idle_in_transaction", "idle_in_failed_transaction",
}
LABEL_VALUES: dict[tuple[str, str], set[str]] = {
    ("pgwarden_client_connections_refused_total", "reason"): REFUSE_REASONS,
    ("pgwarden_client_would_refuse_total", "reason"): REFUSE_REASONS,
    ("pgwarden_client_connections_closed_total", "reason"): CLOSE_REASONS,
    ("pgwarden_client_would_close_total", "reason"): CLOSE_REASONS,
    ("pgwarden_client_connections", "state"): CONNECTION_STATES,
}

# SPEC.md "Config file" and the README's configuration reference: every key, nested keys as dotted paths.
# Keep in sync with both (`pgwarden check-config` of an empty file prints them all).
SPEC_CONFIG_KEYS = {
    "listen", "listen_unix", "listen_unix_mode", "client_tls", "client_tls_cert_file", "client_tls_key_file",
    "upstream", "upstream_tls", "upstream_ca_file", "upstream_connect_timeout", "upstream_tcp_user_timeout",
    "tcp_keepalive", "tcp_keepalive.idle", "tcp_keepalive.interval", "tcp_keepalive.count",
    "client_login_timeout", "admin_listen", "log_format", "shutdown_grace", "enforce",
    "client_key", "max_total_connections", "max_tracked_clients",
    "stats", "stats.statement_text", "stats.statement_max_length",
    "defaults", "defaults.max_connections", "defaults.on_limit", "defaults.wait_timeout",
    "defaults.idle_timeout", "defaults.idle_in_transaction_timeout", "defaults.max_connection_age",
    "leak", "leak.idle_threshold", "leak.idle_in_transaction_threshold", "leak.keep_closed_suspects",
    "rules",
    # Beyond SPEC's list (hardening, issue 27): the bound on distinct client keys.
    "max_clients",
    # Beyond SPEC's list (bounded transactions, issue 28).
    "defaults.transaction_timeout", "defaults.query_timeout",
    # Beyond SPEC's list (query tags, issue 29).
    "stats.query_tag_keys",
}
# The injector's own keys in inject.yaml (besides `proxy`). Keep in sync with the Rust injector.
INJECTOR_KEYS = {
    "image", "imagePullPolicy", "nativeSidecar", "listenPort", "adminPort", "resources", "budgets", "control", "proxy",
}
# inject.yaml `budgets`: always these keys; url and caFile too when enabled.
BUDGET_KEYS = {"enabled", "audience", "keepLast", "fallbackMaxConnections", "maxConnections", "entries"}
# inject.yaml `control`: always `enabled`; these too when enabled.
CONTROL_KEYS = {"enabled"}
CONTROL_ON_KEYS = {"url", "caFile", "overridesNamespace", "overridesName"}
# The injector's ClusterRole: the pgwarden.io/config ConfigMaps (and the overrides ConfigMap); with budgets or the
# control plane, watching pods and reviewing sidecars' tokens too.
INJECTOR_RULES = {("", "configmaps", "get")}
BUDGET_RULES = {("", "pods", "get"), ("", "pods", "list"), ("", "pods", "watch"), ("authentication.k8s.io", "tokenreviews", "create")}
# control.enabled: the sidecars' Events posted on their pods (created, then patched to count repeats).
EVENT_RULES = {("", "events", "create"), ("", "events", "patch")}
# The overrides ConfigMap (livepolicy::PolicyPatch): a data key is NAMESPACE or NAMESPACE.WORKLOAD, a value a patch
# of these keys; defaults and leak take the config file's keys of the same name.
OVERRIDES_KEY_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-.a-z0-9]*[a-z0-9])?)?")
PATCH_KEYS = {"enforce", "max_total_connections", "defaults", "leak", "rules", "cap", "reclaim"}
PATCH_SUBKEYS = {
    section: {k.split(".", 1)[1] for k in SPEC_CONFIG_KEYS if k.startswith(section + ".")}
    for section in ("defaults", "leak")
}
PATCH_SUBKEYS.update({"cap": {"connections", "until"}, "reclaim": {"at", "idle_over", "by"}})
PATCH_REQUIRED = {"cap": "connections", "reclaim": "at"}
# The Role of `pgwarden fleet cap|reclaim`: these verbs on the overrides ConfigMap, by name, and nothing else.
OVERRIDES_EDITOR_VERBS = {"get", "update", "patch"}

# The gateway's proxy.yaml: the SPEC keys plus pod_identity (gateway mode); the chart always sets these.
GATEWAY_CONFIG_KEYS = SPEC_CONFIG_KEYS | {"pod_identity", "pod_identity.from", "pod_identity.namespaces"}
GATEWAY_REQUIRED_KEYS = {"listen", "admin_listen", "upstream", "pod_identity", "client_key"}
# The gateway's Downward API environment: name -> fieldPath (PGWARDEN_WORKLOAD: a plain value).
GATEWAY_ENV = {
    "PGWARDEN_POD_NAME": "metadata.name",
    "PGWARDEN_POD_NAMESPACE": "metadata.namespace",
    "PGWARDEN_NODE_NAME": "spec.nodeName",
    "PGWARDEN_SERVICE_ACCOUNT": "spec.serviceAccountName",
    "PGWARDEN_POD_IP": "status.podIP",
}
# RBAC rules as (apiGroup, resource, verb) triples; the code uses these and no more.
GATEWAY_RULES = {("", "pods", "list"), ("", "pods", "watch")}
FLEET_READER_RULES = {("", "pods", "get"), ("", "pods", "list"), ("", "pods/proxy", "get")}
COMPONENT = "app.kubernetes.io/component"

# Alerts the chart must define, and what their annotations must name.
ALERTS = {
    "PgwardenLeakSuspected": ("{{ $labels.client }}", "{{ $labels.pod }}"),
    "PgwardenClientAtCap": ("{{ $labels.client }}", "{{ $labels.pod }}"),
    "PgwardenUpstreamDown": ("{{ $labels.pod }}",),  # upstream metrics carry no client label
}
# With budgets.enabled the PrometheusRule must also have these.
BUDGET_ALERTS = {
    "PgwardenWorkloadAtBudget": ("{{ $labels.budget }}", "{{ $labels.namespace }}"),
    "PgwardenBudgetCoordinatorUnreachable": ("{{ $labels.pod }}",),
}

METRIC_RE = re.compile(r"\bpgwarden_[a-zA-Z0-9_]+")
SELECTOR_RE = re.compile(r"\b(pgwarden_[a-zA-Z0-9_]+)\s*\{([^}]*)\}")
MATCHER_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


class Checker:
    def __init__(self, path: Path, release_ns: str) -> None:
        self.path = path
        self.release_ns = release_ns
        self.errors: list[str] = []
        self.notes: list[str] = []
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.docs = docs
        self.by_kind: dict[str, list[dict]] = {}
        for d in docs:
            self.by_kind.setdefault(d.get("kind", "?"), []).append(d)

    def error(self, msg: str) -> None:
        self.errors.append(msg)

    def one(self, kind: str, name: str | None = None) -> dict | None:
        found = [d for d in self.by_kind.get(kind, []) if name is None or d["metadata"]["name"] == name]
        if len(found) != 1:
            self.error(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
            return None
        return found[0]

    def of_component(self, component: str, kind: str | None = None) -> list[dict]:
        """Objects labelled app.kubernetes.io/component=COMPONENT (of KIND)."""
        return [
            d for d in self.docs
            if (kind is None or d.get("kind") == kind)
            and (d["metadata"].get("labels") or {}).get(COMPONENT) == component
        ]

    def one_of(self, component: str, kind: str) -> dict | None:
        found = self.of_component(component, kind)
        if len(found) != 1:
            self.error(f"expected one {kind} of component {component}, found {len(found)}")
            return None
        return found[0]

    # --- PrometheusRule -------------------------------------------------------------------
    def check_rules(self) -> None:
        for rule_obj in self.by_kind.get("PrometheusRule", []):
            seen_alerts = set()
            for group in rule_obj.get("spec", {}).get("groups", []):
                for rule in group.get("rules", []):
                    name = rule.get("alert") or rule.get("record") or "?"
                    seen_alerts.add(name)
                    self.check_expr(name, str(rule.get("expr", "")))
                    if "alert" in rule:
                        self.check_alert(name, rule)
            required = dict(ALERTS, **(BUDGET_ALERTS if self.budgets_enabled() else {}))
            for missing in sorted(set(required) - seen_alerts):
                self.error(f"PrometheusRule lacks alert {missing}")
            if not self.budgets_enabled():
                for extra in sorted(set(BUDGET_ALERTS) & seen_alerts):
                    self.error(f"PrometheusRule has {extra} but budgets are off")
            self.notes.append(f"{len(seen_alerts)} alert rule(s) checked")

    def check_expr(self, alert: str, expr: str) -> None:
        names = set(METRIC_RE.findall(expr))
        if not names:
            self.error(f"{alert}: expression uses no pgwarden_* metric: {expr}")
        for metric in sorted(names):
            if metric not in SPEC_METRICS:
                self.error(f"{alert}: metric {metric} is not in SPEC.md Metrics")
        for metric, body in SELECTOR_RE.findall(expr):
            allowed = SPEC_METRICS.get(metric, set()) | SCRAPE_LABELS
            pos = 0
            while pos < len(body.strip()):
                m = MATCHER_RE.match(body, pos)
                if not m:
                    self.error(f"{alert}: cannot parse label matchers {{{body}}}")
                    break
                pos = m.end()
                label, op, value = m.groups()
                if label not in allowed:
                    self.error(f"{alert}: {metric} has no label {label!r} (SPEC: {sorted(SPEC_METRICS.get(metric, []))})")
                values = LABEL_VALUES.get((metric, label))
                if values is None:
                    continue
                wanted = value.split("|") if op in ("=~", "!~") else [value]
                for v in wanted:
                    if not re.fullmatch(r"[a-z_]+", v):
                        self.error(f"{alert}: {metric}{{{label}{op}\"{value}\"}}: cannot check non-literal value")
                    elif v not in values:
                        self.error(f"{alert}: {metric}{{{label}=\"{v}\"}}: {v!r} is not a documented {label} (SPEC: {sorted(values)})")

    def check_alert(self, alert: str, rule: dict) -> None:
        annotations = rule.get("annotations", {})
        for key in ("summary", "description"):
            text = annotations.get(key, "")
            if not text:
                self.error(f"{alert}: annotation {key} missing")
                continue
            for needle in ALERTS.get(alert, BUDGET_ALERTS.get(alert, ())):
                if needle not in text:
                    self.error(f"{alert}: annotation {key} does not contain {needle} (Helm escaping?): {text!r}")
        if not rule.get("labels", {}).get("severity"):
            self.error(f"{alert}: no severity label")

    # --- Webhook ---------------------------------------------------------------------------
    def check_webhook(self) -> None:
        mwc = self.one("MutatingWebhookConfiguration")
        deploy = self.one_of("injector", "Deployment")
        svc = self.one_of("injector", "Service")
        if not (mwc and deploy and svc):
            return
        svc_name = svc["metadata"]["name"]
        dns_name = f"{svc_name}.{self.release_ns}.svc"
        hooks = mwc.get("webhooks", [])
        if len(hooks) != 2:
            self.error(f"expected 2 webhook entries, found {len(hooks)}")
        for h in hooks:
            cc = h.get("clientConfig", {}).get("service", {})
            if (cc.get("name"), cc.get("namespace"), cc.get("path")) != (svc_name, self.release_ns, "/mutate"):
                self.error(f"webhook {h['name']}: clientConfig.service is {cc}, want {svc_name}/{self.release_ns} /mutate")
            if h.get("sideEffects") != "None" or h.get("admissionReviewVersions") != ["v1"]:
                self.error(f"webhook {h['name']}: sideEffects/admissionReviewVersions wrong")
            rules = h.get("rules", [])
            if [(r.get("operations"), r.get("resources")) for r in rules] != [(["CREATE"], ["pods"])]:
                self.error(f"webhook {h['name']}: rules must be pods CREATE, got {rules}")
            ns_sel = {e["key"]: e for e in h.get("namespaceSelector", {}).get("matchExpressions", [])}
            excl = ns_sel.get("kubernetes.io/metadata.name")
            if not excl or excl["operator"] != "NotIn" or self.release_ns not in excl["values"]:
                self.error(f"webhook {h['name']}: does not exclude the release namespace {self.release_ns}")
        self.check_disjoint(hooks)

        tls_volumes = [v for v in deploy["spec"]["template"]["spec"].get("volumes", []) if "secret" in v]
        mounted = {v["secret"]["secretName"] for v in tls_volumes}
        annotations = mwc["metadata"].get("annotations") or {}
        inject_from = annotations.get("cert-manager.io/inject-ca-from")
        if inject_from:
            for h in hooks:
                if h["clientConfig"].get("caBundle"):
                    self.error(f"webhook {h['name']}: caBundle set although cert-manager injects it")
            ns, _, cert_name = inject_from.partition("/")
            cert = self.one("Certificate", cert_name)
            if ns != self.release_ns:
                self.error(f"inject-ca-from namespace {ns} is not the release namespace")
            if cert:
                if cert["spec"]["secretName"] not in mounted:
                    self.error(f"Certificate secret {cert['spec']['secretName']} is not mounted by the injector ({mounted})")
                if dns_name not in cert["spec"].get("dnsNames", []):
                    self.error(f"Certificate dnsNames lack {dns_name}")
                self.notes.append(f"cert-manager Certificate {cert_name} -> secret {cert['spec']['secretName']}")
            return

        bundles = {h["clientConfig"].get("caBundle") for h in hooks}
        if len(bundles) != 1 or None in bundles or "" in bundles:
            self.error("webhook entries must all carry the same non-empty caBundle")
            return
        secret = self.one("Secret")
        if not secret:
            return
        if secret.get("type") != "kubernetes.io/tls" or secret["metadata"]["name"] not in mounted:
            self.error(f"serving Secret {secret['metadata']['name']} must be kubernetes.io/tls and mounted by the injector")
        data = secret.get("data", {})
        ca_pem = base64.b64decode(bundles.pop())
        if base64.b64decode(data.get("ca.crt", "")) != ca_pem:
            self.error("Secret ca.crt differs from the webhook caBundle")
        self.verify_chain(ca_pem, base64.b64decode(data["tls.crt"]), base64.b64decode(data["tls.key"]), dns_name)

    def check_disjoint(self, hooks: list[dict]) -> None:
        """No pod may match both entries: one needs the namespace label `enabled`, the other
        needs it absent or different."""
        if len(hooks) != 2:
            return
        ops = []
        for h in hooks:
            exprs = h.get("namespaceSelector", {}).get("matchExpressions", [])
            inject = [e for e in exprs if e["key"] == "pgwarden.io/inject"]
            ops.append(tuple((e["operator"], tuple(e.get("values", []))) for e in inject))
        if sorted(ops) != sorted([(("In", ("enabled",)),), (("NotIn", ("enabled",)),)]):
            self.error(f"webhook namespaceSelectors on pgwarden.io/inject are not disjoint: {ops}")

    def verify_chain(self, ca_pem: bytes, crt_pem: bytes, key_pem: bytes, dns_name: str) -> None:
        try:
            from cryptography import x509
            from cryptography.hazmat.primitives import serialization
        except ImportError:
            x509 = None
        # verify_directly_issued_by: cryptography >= 40; not_valid_*_utc: >= 42.
        if x509 is None or not hasattr(x509.Certificate, "not_valid_after_utc"):
            self.verify_chain_openssl(ca_pem, crt_pem, key_pem, dns_name)
            return
        ca = x509.load_pem_x509_certificate(ca_pem)
        crt = x509.load_pem_x509_certificate(crt_pem)
        try:
            crt.verify_directly_issued_by(ca)
        except Exception as e:  # noqa: BLE001 - any failure means "not signed by this CA"
            self.error(f"serving certificate is not signed by the caBundle CA: {e}")
            return
        now = datetime.datetime.now(datetime.timezone.utc)
        if not (crt.not_valid_before_utc <= now < crt.not_valid_after_utc):
            self.error("serving certificate is not valid now")
        sans = crt.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        if dns_name not in sans:
            self.error(f"serving certificate SANs {sans} lack {dns_name}")
        key = serialization.load_pem_private_key(key_pem, password=None)
        pub = serialization.PublicFormat.SubjectPublicKeyInfo
        enc = serialization.Encoding.DER
        if key.public_key().public_bytes(enc, pub) != crt.public_key().public_bytes(enc, pub):
            self.error("tls.key does not match tls.crt")
        self.notes.append(f"caBundle CA signed the serving cert for {dns_name} (cryptography)")

    def verify_chain_openssl(self, ca_pem: bytes, crt_pem: bytes, key_pem: bytes, dns_name: str) -> None:
        def openssl(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(["openssl", *args], capture_output=True, text=True, check=False)

        with tempfile.TemporaryDirectory() as tmp:
            ca_file, crt_file, key_file = Path(tmp, "ca.crt"), Path(tmp, "tls.crt"), Path(tmp, "tls.key")
            ca_file.write_bytes(ca_pem)
            crt_file.write_bytes(crt_pem)
            key_file.write_bytes(key_pem)
            r = openssl("verify", "-CAfile", str(ca_file), "-verify_hostname", dns_name, str(crt_file))
            if r.returncode != 0:
                self.error(f"openssl verify failed: {r.stdout}{r.stderr}")
                return
            crt_pub = openssl("x509", "-in", str(crt_file), "-noout", "-pubkey")
            key_pub = openssl("pkey", "-in", str(key_file), "-pubout")
            if crt_pub.returncode or key_pub.returncode or crt_pub.stdout != key_pub.stdout:
                self.error("tls.key does not match tls.crt (openssl)")
                return
            self.notes.append(f"caBundle CA signed the serving cert for {dns_name} (openssl)")

    # --- Injector config -------------------------------------------------------------------
    def check_injector_config(self) -> None:
        cms = [cm for cm in self.by_kind.get("ConfigMap", []) if "inject.yaml" in cm.get("data", {})]
        if len(cms) != 1:
            self.error(f"expected one ConfigMap with inject.yaml, found {len(cms)}")
            return
        cfg = yaml.safe_load(cms[0]["data"]["inject.yaml"])
        keys = set(cfg)
        if keys != INJECTOR_KEYS:
            self.error(f"inject.yaml keys {sorted(keys)} != {sorted(INJECTOR_KEYS)}")
        proxy = cfg.get("proxy") or {}
        have = set()
        for k, v in proxy.items():
            have.add(k)
            if isinstance(v, dict):
                have.update(f"{k}.{sub}" for sub in v)
        if have != SPEC_CONFIG_KEYS:
            self.error(
                f"inject.yaml proxy keys differ from SPEC: missing {sorted(SPEC_CONFIG_KEYS - have)},"
                f" unknown {sorted(have - SPEC_CONFIG_KEYS)}"
            )
        for path, value in walk(proxy):
            # A bare `off` (false) is read as off by pgwarden; a bare `on` (true) is no duration.
            if value is True and path != "enforce":
                self.error(f"proxy.{path} is the boolean true: a bare `on` in YAML 1.1?")
        port = lambda addr: int(str(addr).rsplit(":", 1)[1])  # noqa: E731
        if port(proxy.get("listen", ":0")) != cfg.get("listenPort") or port(proxy.get("admin_listen", ":0")) != cfg.get("adminPort"):
            self.error("listenPort/adminPort disagree with proxy.listen/admin_listen")
        error = pgwarden_check_config(yaml.safe_dump(proxy))
        if error:
            self.error(f"inject.yaml proxy block: {error}")
        elif os.environ.get("PGWARDEN_BIN"):
            self.notes.append("pgwarden check-config accepts the proxy block")
        error = pgwarden_check_inject(cms[0]["data"]["inject.yaml"])
        if error:
            self.error(f"inject.yaml: {error}")
        elif os.environ.get("PGWARDEN_BIN"):
            self.notes.append("pgwarden inject --check accepts inject.yaml")


    # --- Gateway -------------------------------------------------------------------------
    def gateway_config(self) -> dict | None:
        """The gateway's proxy.yaml, parsed; None without a gateway (or when it does not parse)."""
        cms = [cm for cm in self.of_component("gateway", "ConfigMap") if "proxy.yaml" in (cm.get("data") or {})]
        if not cms:
            return None
        if len(cms) != 1:
            self.error(f"expected one gateway ConfigMap with proxy.yaml, found {len(cms)}")
            return None
        try:
            cfg = yaml.safe_load(cms[0]["data"]["proxy.yaml"])
        except yaml.YAMLError as e:
            self.error(f"gateway proxy.yaml does not parse: {e}")
            return None
        if not isinstance(cfg, dict):
            self.error("gateway proxy.yaml is not a mapping")
            return None
        return cfg

    def check_gateway(self) -> None:
        objects = self.of_component("gateway")
        if not objects:
            return
        deploy = self.one_of("gateway", "Deployment")
        cfg = self.gateway_config()
        if cfg is None:
            self.error("gateway objects but no gateway ConfigMap with proxy.yaml")
            return
        if not deploy:
            return
        name = deploy["metadata"]["name"]
        ns = deploy["metadata"].get("namespace")
        if ns != self.release_ns:
            self.error(f"gateway Deployment in namespace {ns}, not the release namespace")

        # proxy.yaml
        have = set()
        for k, v in cfg.items():
            have.add(k)
            if isinstance(v, dict):
                have.update(f"{k}.{sub}" for sub in v)
        if have - GATEWAY_CONFIG_KEYS:
            self.error(f"gateway proxy.yaml: keys not in SPEC: {sorted(have - GATEWAY_CONFIG_KEYS)}")
        if GATEWAY_REQUIRED_KEYS - set(cfg):
            self.error(f"gateway proxy.yaml lacks {sorted(GATEWAY_REQUIRED_KEYS - set(cfg))}")
        identity = cfg.get("pod_identity") or {}
        if identity.get("from") != "peer_address":
            self.error(f"gateway proxy.yaml: pod_identity.from is {identity.get('from')!r}, want peer_address")
        namespaces = identity.get("namespaces")
        if not isinstance(namespaces, list):
            self.error(f"gateway proxy.yaml: pod_identity.namespaces is {namespaces!r}, want a list")
            namespaces = []
        if not cfg.get("upstream"):
            self.error("gateway proxy.yaml: no upstream")
        for path, value in walk(cfg):
            if value is True and path != "enforce":
                self.error(f"gateway proxy.yaml: {path} is the boolean true: a bare `on` in YAML 1.1?")

        # Deployment
        pod = deploy["spec"]["template"]
        spec = pod["spec"]
        if (pod["metadata"].get("labels") or {}).get("pgwarden.io/inject") != "disabled":
            self.error("gateway pod template lacks the label pgwarden.io/inject: disabled")
        selector = deploy["spec"]["selector"]["matchLabels"]
        pod_labels = pod["metadata"].get("labels") or {}
        if any(pod_labels.get(k) != v for k, v in selector.items()):
            self.error("gateway Deployment selector does not match its pod labels")
        containers = spec.get("containers", [])
        if len(containers) != 1:
            self.error(f"gateway pod has {len(containers)} containers, want 1")
            return
        c = containers[0]
        if c.get("args") != ["proxy", "--config", "/config/proxy.yaml"]:
            self.error(f"gateway args are {c.get('args')}")
        env = {e["name"]: e for e in c.get("env", [])}
        for var, field in GATEWAY_ENV.items():
            got = (env.get(var) or {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            if got != field:
                self.error(f"gateway env {var}: fieldPath {got!r}, want {field}")
        if (env.get("PGWARDEN_WORKLOAD") or {}).get("value") != name:
            self.error(f"gateway env PGWARDEN_WORKLOAD is not the Deployment's name {name}")
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
        port = lambda addr: int(str(addr).rsplit(":", 1)[1])  # noqa: E731
        try:
            if ports.get("postgres") != port(cfg.get("listen")):
                self.error(f"gateway container port postgres {ports.get('postgres')} != port of listen {cfg.get('listen')}")
            if ports.get("pgwarden-admin") != port(cfg.get("admin_listen")):
                self.error(f"gateway container port pgwarden-admin {ports.get('pgwarden-admin')} != port of admin_listen {cfg.get('admin_listen')}")
        except (IndexError, ValueError):
            self.error(f"gateway listen/admin_listen are no host:port: {cfg.get('listen')}, {cfg.get('admin_listen')}")
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = (c.get(probe) or {}).get("httpGet") or {}
            if (get.get("path"), get.get("port")) != (path, "pgwarden-admin"):
                self.error(f"gateway {probe}: {get}, want {path} on pgwarden-admin")
        sc = c.get("securityContext") or {}
        if not (sc.get("readOnlyRootFilesystem") and sc.get("allowPrivilegeEscalation") is False
                and sc.get("runAsNonRoot") and (sc.get("capabilities") or {}).get("drop") == ["ALL"]):
            self.error(f"gateway container securityContext is not hardened: {sc}")
        mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        cm_name = next((cm["metadata"]["name"] for cm in self.of_component("gateway", "ConfigMap")
                        if "proxy.yaml" in (cm.get("data") or {})), None)
        config_volumes = [n for n, v in volumes.items() if (v.get("configMap") or {}).get("name") == cm_name]
        if not any(mounts.get(n, {}).get("mountPath") == "/config" and "subPath" not in mounts[n] for n in config_volumes):
            self.error(f"gateway does not mount ConfigMap {cm_name} at /config (without subPath)")

        # ServiceAccount
        sa_name = spec.get("serviceAccountName")
        if sa_name == self.injector_service_account():
            self.error("gateway runs under the injector's ServiceAccount")
        sas = [sa for sa in self.of_component("gateway", "ServiceAccount") if sa["metadata"]["name"] == sa_name]
        if len(sas) != 1:
            self.error(f"gateway ServiceAccount {sa_name} not rendered")

        # Service and PodDisruptionBudget select the gateway's pods.
        svc = self.one_of("gateway", "Service")
        if svc:
            sel = svc["spec"].get("selector") or {}
            if not sel or any(pod_labels.get(k) != v for k, v in sel.items()):
                self.error("gateway Service does not select the gateway pods")
            targets = {p.get("targetPort") for p in svc["spec"].get("ports", [])}
            if not {"postgres", "pgwarden-admin"} <= targets:
                self.error(f"gateway Service targets {targets}, want postgres and pgwarden-admin")
        for pdb in self.of_component("gateway", "PodDisruptionBudget"):
            sel = pdb["spec"]["selector"]["matchLabels"]
            if any(pod_labels.get(k) != v for k, v in sel.items()):
                self.error("gateway PodDisruptionBudget does not select the gateway pods")

        self.check_gateway_rbac(sa_name, namespaces)
        self.notes.append(
            f"gateway {name}: proxy.yaml, Deployment, Service, RBAC "
            f"({'Roles in ' + ', '.join(namespaces) if namespaces else 'ClusterRole'})"
        )

    def injector_service_account(self) -> str | None:
        deploys = self.of_component("injector", "Deployment")
        return deploys[0]["spec"]["template"]["spec"].get("serviceAccountName") if deploys else None

    def check_gateway_rbac(self, sa_name: str | None, namespaces: list[str]) -> None:
        """list+watch on pods for the gateway's ServiceAccount: a ClusterRole without namespaces, else
        a Role and RoleBinding in each namespace, and nothing more."""
        want_sa = {"kind": "ServiceAccount", "name": sa_name, "namespace": self.release_ns}
        roles = self.of_component("gateway", "Role")
        bindings = self.of_component("gateway", "RoleBinding")
        croles = self.of_component("gateway", "ClusterRole")
        cbindings = self.of_component("gateway", "ClusterRoleBinding")
        if namespaces:
            if croles or cbindings:
                self.error(f"gateway watches {namespaces} but has a ClusterRole/ClusterRoleBinding")
            places = (("Role", roles), ("RoleBinding", bindings))
            for kind, objs in places:
                got = sorted(o["metadata"].get("namespace") for o in objs)
                if got != sorted(namespaces):
                    self.error(f"gateway {kind}s in namespaces {got}, want {sorted(namespaces)}")
            role_by_ns = {(r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in roles}
            for b in bindings:
                bns = b["metadata"].get("namespace")
                ref = b.get("roleRef") or {}
                if ref.get("kind") != "Role" or (bns, ref.get("name")) not in role_by_ns:
                    self.error(f"gateway RoleBinding in {bns} refers to {ref}, not the Role in {bns}")
                if b.get("subjects") != [want_sa]:
                    self.error(f"gateway RoleBinding in {bns}: subjects {b.get('subjects')}, want [{want_sa}]")
            rules_of = roles
        else:
            if roles or bindings:
                self.error("gateway watches the whole cluster but has Roles/RoleBindings")
            if len(croles) != 1 or len(cbindings) != 1:
                self.error(f"gateway: {len(croles)} ClusterRole(s), {len(cbindings)} ClusterRoleBinding(s), want 1 each")
                return
            ref = cbindings[0].get("roleRef") or {}
            if (ref.get("kind"), ref.get("name")) != ("ClusterRole", croles[0]["metadata"]["name"]):
                self.error(f"gateway ClusterRoleBinding refers to {ref}")
            if cbindings[0].get("subjects") != [want_sa]:
                self.error(f"gateway ClusterRoleBinding: subjects {cbindings[0].get('subjects')}, want [{want_sa}]")
            rules_of = croles
        for r in rules_of:
            where = f"{r['kind']} {r['metadata'].get('namespace', '')}/{r['metadata']['name']}"
            for e in rule_errors(r, GATEWAY_RULES):
                self.error(f"gateway {where}: {e}")

    # --- Workload budgets ------------------------------------------------------------------
    def inject_config(self) -> dict:
        cms = [cm for cm in self.by_kind.get("ConfigMap", []) if "inject.yaml" in cm.get("data", {})]
        return yaml.safe_load(cms[0]["data"]["inject.yaml"]) if len(cms) == 1 else {}

    def budgets_enabled(self) -> bool:
        return bool((self.inject_config().get("budgets") or {}).get("enabled"))

    def control_enabled(self) -> bool:
        return bool((self.inject_config().get("control") or {}).get("enabled"))

    def injector_url(self) -> str | None:
        """The URL sidecars reach the injector's Service at (budgets and the control plane)."""
        svc = next(iter(self.of_component("injector", "Service")), None)
        return f"https://{svc['metadata']['name']}.{self.release_ns}.svc:443" if svc else None

    def injector_tls_items(self) -> list[str]:
        """The keys of the TLS Secret the injector mounts."""
        deploys = self.of_component("injector", "Deployment")
        volumes = deploys[0]["spec"]["template"]["spec"].get("volumes", []) if deploys else []
        return [i.get("key") for v in volumes if v.get("name") == "tls" for i in (v.get("secret") or {}).get("items", [])]

    def check_budgets(self) -> None:
        """inject.yaml's budgets: its keys; on, the URL is the injector Service's and the CA file is mounted
        from the TLS Secret; the injector's ClusterRole grants the coordinator's needs (which the control plane
        shares) exactly when budgets or the control plane are on."""
        budgets = self.inject_config().get("budgets")
        if budgets is None:
            return  # check_injector_config reports the missing key
        on = bool(budgets.get("enabled"))
        keys = set(budgets)
        want = BUDGET_KEYS | ({"url", "caFile"} if on else set())
        if keys != want:
            self.error(f"inject.yaml budgets keys {sorted(keys)} != {sorted(want)}")
        tls_items = self.injector_tls_items()
        control_on = self.control_enabled()
        if on:
            want_url = self.injector_url()
            if budgets.get("url") != want_url:
                self.error(f"budgets.url {budgets.get('url')!r}, want the injector Service {want_url!r}")
            if budgets.get("caFile") != "/tls/ca.crt" or "ca.crt" not in tls_items:
                self.error(f"budgets.caFile {budgets.get('caFile')!r} must be /tls/ca.crt from the mounted TLS Secret (items {tls_items})")
        elif "ca.crt" in tls_items and not control_on:
            self.error("the injector mounts ca.crt although budgets and the control plane are off (an existing Secret may lack it)")
        sa = self.injector_service_account()
        croles = [r for r in self.of_component("injector", "ClusterRole")]
        if len(croles) != 1:
            self.error(f"injector: {len(croles)} ClusterRole(s), want 1")
            return
        want_rules = INJECTOR_RULES | (BUDGET_RULES if on or control_on else set()) | (EVENT_RULES if control_on else set())
        for e in rule_errors(croles[0], want_rules):
            self.error(f"injector ClusterRole: {e}")
        bound = [b for b in self.of_component("injector", "ClusterRoleBinding")
                 if (b.get("roleRef") or {}).get("name") == croles[0]["metadata"]["name"]]
        want_sa = {"kind": "ServiceAccount", "name": sa, "namespace": self.release_ns}
        if len(bound) != 1 or bound[0].get("subjects") != [want_sa]:
            self.error(f"injector ClusterRole must be bound to its ServiceAccount {want_sa}")
        if on:
            self.notes.append(f"budgets on: {len(budgets.get('entries') or [])} entr(ies), coordinator URL, CA mount, TokenReview RBAC")

    # --- Control plane ---------------------------------------------------------------------
    def check_control(self) -> None:
        """inject.yaml's control: its keys; on, the URL and CA as budgets', the overrides ConfigMap it names
        rendered in the release namespace with well-formed entries, and the editor Role (get, update, patch on
        that ConfigMap only) with at most one RoleBinding to it; off, no control objects at all."""
        control = self.inject_config().get("control")
        if control is None:
            return  # check_injector_config reports the missing key
        on = bool(control.get("enabled"))
        keys = set(control)
        want = CONTROL_KEYS | (CONTROL_ON_KEYS if on else set())
        if keys != want:
            self.error(f"inject.yaml control keys {sorted(keys)} != {sorted(want)}")
        objects = self.of_component("control")
        if not on:
            if objects:
                self.error(f"control plane off but rendered {sorted(o['kind'] + ' ' + o['metadata']['name'] for o in objects)}")
            return
        want_url = self.injector_url()
        if control.get("url") != want_url:
            self.error(f"control.url {control.get('url')!r}, want the injector Service {want_url!r}")
        tls_items = self.injector_tls_items()
        if control.get("caFile") != "/tls/ca.crt" or "ca.crt" not in tls_items:
            self.error(f"control.caFile {control.get('caFile')!r} must be /tls/ca.crt from the mounted TLS Secret (items {tls_items})")
        if control.get("overridesNamespace") != self.release_ns:
            self.error(f"control.overridesNamespace {control.get('overridesNamespace')!r}, want the release namespace {self.release_ns!r}")
        name = control.get("overridesName")
        kinds = sorted({o["kind"] for o in objects} - {"ConfigMap", "Role", "RoleBinding"})
        if kinds:
            self.error(f"control objects of kinds {kinds}: only the overrides ConfigMap, its editor Role and RoleBinding are expected")
        for o in objects:
            if o["metadata"].get("namespace") != self.release_ns:
                self.error(f"control {o['kind']} {o['metadata']['name']} in namespace {o['metadata'].get('namespace')}, not the release namespace")

        cm = self.one_of("control", "ConfigMap")
        entries = {}
        if cm:
            if cm["metadata"]["name"] != name:
                self.error(f"overrides ConfigMap is {cm['metadata']['name']!r}, but inject.yaml control.overridesName is {name!r}")
            entries = cm.get("data") or {}
            for key, text in entries.items():
                self.check_override_entry(key, text)

        role = self.one_of("control", "Role")
        if role:
            rules = role.get("rules") or []
            rule = rules[0] if len(rules) == 1 else {}
            if (
                len(rules) != 1
                or set(rule) != {"apiGroups", "resources", "resourceNames", "verbs"}
                or rule.get("apiGroups") != [""]
                or rule.get("resources") != ["configmaps"]
                or rule.get("resourceNames") != [name]
                or set(rule.get("verbs") or []) != OVERRIDES_EDITOR_VERBS
            ):
                self.error(
                    f"Role {role['metadata']['name']}: rules {rules}, want exactly {sorted(OVERRIDES_EDITOR_VERBS)}"
                    f" on configmaps named [{name!r}]"
                )
        bindings = self.of_component("control", "RoleBinding")
        if len(bindings) > 1:
            self.error(f"{len(bindings)} control RoleBindings, want at most 1")
        for b in bindings:
            want_ref = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"] if role else None}
            if b.get("roleRef") != want_ref:
                self.error(f"RoleBinding {b['metadata']['name']} refers to {b.get('roleRef')}, want {want_ref}")
            if not b.get("subjects"):
                self.error(f"RoleBinding {b['metadata']['name']} has no subjects (the chart renders it only for control.editors)")
        editors = sum(len(b.get("subjects") or []) for b in bindings)
        self.notes.append(
            f"control plane on: ConfigMap {name} ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'}), "
            f"editor Role bound to {editors} subject(s), URL, CA mount, TokenReview RBAC"
        )

    def check_override_entry(self, key: str, text: str) -> None:
        """One entry of the overrides ConfigMap: NAMESPACE[.WORKLOAD] -> a non-empty policy patch of known keys."""
        where = f"overrides ConfigMap key {key!r}"
        if not OVERRIDES_KEY_RE.fullmatch(key) or len(key) > 253:
            self.error(f"{where}: not NAMESPACE or NAMESPACE.WORKLOAD")
        try:
            patch = yaml.safe_load(text)
        except yaml.YAMLError as e:
            self.error(f"{where}: does not parse: {e}")
            return
        if not isinstance(patch, dict) or not patch:
            self.error(f"{where}: {patch!r} is no policy patch (a non-empty mapping)")
            return
        unknown = sorted(set(patch) - PATCH_KEYS)
        for section, subkeys in PATCH_SUBKEYS.items():
            if section not in patch:
                continue
            value = patch[section]
            if not isinstance(value, dict):
                self.error(f"{where}: {section} is {value!r}, want a mapping")
                continue
            unknown += sorted(f"{section}.{k}" for k in set(value) - subkeys)
            required = PATCH_REQUIRED.get(section)
            if required and required not in value:
                self.error(f"{where}: {section} lacks {required}")
        if unknown:
            self.error(f"{where}: unknown keys {unknown}")
        if "rules" in patch and not isinstance(patch["rules"], list):
            self.error(f"{where}: rules is {patch['rules']!r}, want a list")
        for path, value in walk(patch):
            if value is True and path != "enforce":
                self.error(f"{where}: {path} is the boolean true: a bare `on` in YAML 1.1?")

    # --- Fleet reader ----------------------------------------------------------------------
    def check_fleet_reader(self) -> None:
        for r in self.of_component("fleet-reader"):
            name = r["metadata"]["name"]
            if r.get("kind") != "ClusterRole":
                self.error(f"fleet-reader object {r.get('kind')} {name}: only a ClusterRole is expected")
                continue
            for e in rule_errors(r, FLEET_READER_RULES):
                self.error(f"ClusterRole {name}: {e}")
            for b in self.by_kind.get("ClusterRoleBinding", []) + self.by_kind.get("RoleBinding", []):
                if (b.get("roleRef") or {}).get("name") == name:
                    self.error(f"{b['kind']} {b['metadata']['name']} binds {name}; the chart binds it to nobody")
            self.notes.append(f"ClusterRole {name}: pods get and list, pods/proxy get")

    # --- Grafana dashboard ----------------------------------------------------------------
    def check_dashboards(self) -> None:
        spec_names = {dashboard_metrics.base_name(n) for n in SPEC_METRICS}
        for cm in self.by_kind.get("ConfigMap", []):
            for key, text in (cm.get("data") or {}).items():
                if not key.endswith(".json"):
                    continue
                where = f"ConfigMap {cm['metadata']['name']} {key}"
                try:
                    dash = json.loads(text)
                except json.JSONDecodeError as e:
                    self.error(f"{where}: not JSON: {e}")
                    continue
                for e in dashboard_metrics.compare(dash, spec_names):
                    self.error(f"{where}: {e}")
                exprs = dashboard_metrics.expressions(dash)
                for name, expr in exprs:
                    self.check_expr(f"{where} {name}", expr)
                self.notes.append(f"dashboard {key}: {len(exprs)} expression(s) checked")

    def run(self) -> bool:
        self.check_rules()
        self.check_webhook()
        self.check_injector_config()
        self.check_gateway()
        self.check_fleet_reader()
        self.check_budgets()
        self.check_control()
        self.check_dashboards()
        return not self.errors


def rule_errors(role: dict, want: set[tuple[str, str, str]]) -> list[str]:
    """How ROLE's rules differ from exactly WANT ((apiGroup, resource, verb) triples): extra or missing
    grants, resourceNames, nonResourceURLs, wildcards."""
    errors = []
    have = set()
    for rule in role.get("rules") or []:
        extra = set(rule) - {"apiGroups", "resources", "verbs"}
        if extra:
            errors.append(f"rule {rule} has {sorted(extra)}")
        for g in rule.get("apiGroups") or []:
            for res in rule.get("resources") or []:
                for v in rule.get("verbs") or []:
                    have.add((g, res, v))
    if have != want:
        errors.append(f"grants {sorted(have)}, want exactly {sorted(want)}")
    return errors


def pgwarden_run(args: list[str], text: str) -> str | None:
    """Runs `$PGWARDEN_BIN <args> <file holding text>`; the error, or None when it passes (or when
    PGWARDEN_BIN is not set)."""
    binary = os.environ.get("PGWARDEN_BIN")
    if not binary:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(text)
        f.flush()
        r = subprocess.run([binary, *args, f.name], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return f"pgwarden {' '.join(args)} exited {r.returncode}: {(r.stderr or r.stdout).strip()}"
    return None


def pgwarden_check_config(text: str) -> str | None:
    """`pgwarden check-config` on a config file's text."""
    return pgwarden_run(["check-config"], text)


def pgwarden_check_inject(text: str) -> str | None:
    """`pgwarden inject --check --config` on the injector's config."""
    return pgwarden_run(["inject", "--check", "--config"], text)


def check_env_configs(files: list[str]) -> bool:
    ok = True
    for f in files:
        found = 0
        for doc in yaml.safe_load_all(Path(f).read_text()):
            if not doc:
                continue
            spec = doc.get("spec", {})
            spec = spec.get("template", {}).get("spec", spec)
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                for env in c.get("env", []):
                    if env.get("name") == "PGWARDEN_CONFIG_YAML" and "value" in env:
                        found += 1
                        error = pgwarden_check_config(env["value"])
                        if error:
                            ok = False
                            print(f"FAIL {f}: container {c['name']}: {error}")
        if found:
            print(f"ok   {f}: {found} PGWARDEN_CONFIG_YAML accepted by pgwarden check-config")
    return ok


def check_gateway_configs(files: list[str]) -> bool:
    """`$PGWARDEN_BIN check-config` on the gateway's proxy.yaml of each rendered file."""
    ok = True
    for f in files:
        c = Checker(Path(f), "")
        cfg_text = next(
            (cm["data"]["proxy.yaml"] for cm in c.of_component("gateway", "ConfigMap") if "proxy.yaml" in (cm.get("data") or {})),
            None,
        )
        if cfg_text is None:
            ok = False
            print(f"FAIL {f}: no gateway ConfigMap with proxy.yaml")
            continue
        error = pgwarden_check_config(cfg_text)
        if error:
            ok = False
            print(f"FAIL {f}: gateway proxy.yaml: {error}")
        else:
            print(f"ok   {f}: gateway proxy.yaml accepted by pgwarden check-config")
    return ok


def check_gateway_rbac_only(f: str, release_ns: str, namespaces: list[str]) -> bool:
    """FILE grants the gateway list+watch on pods in exactly NAMESPACES (none: cluster-wide), and its
    proxy.yaml watches those namespaces."""
    c = Checker(Path(f), release_ns)
    cfg = c.gateway_config()
    deploy = c.one_of("gateway", "Deployment")
    if cfg is None or deploy is None:
        c.error("no gateway rendered")
    else:
        watched = (cfg.get("pod_identity") or {}).get("namespaces")
        if watched != namespaces:
            c.error(f"proxy.yaml pod_identity.namespaces is {watched}, want {namespaces}")
        c.check_gateway_rbac(deploy["spec"]["template"]["spec"].get("serviceAccountName"), namespaces)
    for e in c.errors:
        print(f"FAIL {f}: {e}")
    if not c.errors:
        where = f"Role+RoleBinding in {', '.join(namespaces)}" if namespaces else "ClusterRole+ClusterRoleBinding"
        print(f"ok   {f}: gateway may list+watch pods ({where}), nothing else")
    return not c.errors


def check_fleet_reader_only(f: str) -> bool:
    c = Checker(Path(f), "")
    if len(c.of_component("fleet-reader", "ClusterRole")) != 1:
        c.error("expected one fleet-reader ClusterRole")
    c.check_fleet_reader()
    for e in c.errors:
        print(f"FAIL {f}: {e}")
    if not c.errors:
        print(f"ok   {f}: {'; '.join(c.notes)}")
    return not c.errors


def check_control_only(f: str, release_ns: str, want: list[str]) -> bool:
    """FILE's control plane is off (WANT ["off"]), or on with ENTRIES overrides entries and an editor RoleBinding
    to EDITORS subjects (WANT [ENTRIES, EDITORS]; 0 editors: no RoleBinding)."""
    c = Checker(Path(f), release_ns)
    c.check_control()
    c.check_budgets()  # the injector's ClusterRole, with or without the pods and TokenReview rules
    if want == ["off"]:
        if c.control_enabled():
            c.error("control plane on, want off")
    else:
        entries, editors = (int(n) for n in want)
        if not c.control_enabled():
            c.error("control plane off, want on")
        cm = next(iter(c.of_component("control", "ConfigMap")), None)
        got = len((cm or {}).get("data") or {})
        if got != entries:
            c.error(f"overrides ConfigMap has {got} entries, want {entries}")
        bindings = c.of_component("control", "RoleBinding")
        got = sum(len(b.get("subjects") or []) for b in bindings)
        if got != editors or (editors == 0 and bindings):
            c.error(f"editor RoleBinding(s) {len(bindings)} with {got} subject(s), want {editors} subject(s)")
    for e in c.errors:
        print(f"FAIL {f}: {e}")
    if not c.errors:
        print(f"ok   {f}: {'; '.join(c.notes) or 'control plane off, no control objects, no pods/TokenReview RBAC'}")
    return not c.errors


def walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            yield from walk(v, path + ".")
        elif isinstance(v, list) and all(isinstance(i, dict) for i in v):
            for n, item in enumerate(v):
                yield from walk(item, f"{path}[{n}].")
        else:
            yield path, v


def main(argv: list[str]) -> int:
    if argv[1:] == ["--spec-metrics"]:
        print("\n".join(sorted({dashboard_metrics.base_name(n) for n in SPEC_METRICS})))
        return 0
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        return 64
    if argv[1] == "--env-configs":
        return 0 if check_env_configs(argv[2:]) else 1
    if argv[1] == "--gateway-configs":
        return 0 if check_gateway_configs(argv[2:]) else 1
    if argv[1] == "--gateway-rbac" and len(argv) >= 4:
        return 0 if check_gateway_rbac_only(argv[3], argv[2], argv[4:]) else 1
    if argv[1] == "--fleet-reader":
        return 0 if check_fleet_reader_only(argv[2]) else 1
    if argv[1] == "--control" and (len(argv) == 5 and argv[4] == "off" or len(argv) == 6):
        return 0 if check_control_only(argv[3], argv[2], argv[4:]) else 1
    release_ns, files = argv[1], argv[2:]
    ok = True
    for f in files:
        c = Checker(Path(f), release_ns)
        if c.run():
            print(f"ok   {f}: {'; '.join(c.notes)}")
        else:
            ok = False
            print(f"FAIL {f}:")
            for e in c.errors:
                print(f"     - {e}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
