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
- Grafana dashboard ConfigMaps (a `*.json` data key): the JSON parses, its panels query through the
  `${datasource}` variable, and every expression passes the PrometheusRule checks above (SPEC
  metrics and labels), through scripts/dashboard_metrics.py.

With --env-configs, checks instead that every PGWARDEN_CONFIG_YAML in the given manifests passes
`$PGWARDEN_BIN check-config`. With --spec-metrics, prints the SPEC metric names, one a line (a
histogram once, without _bucket/_sum/_count), for `dashboard_metrics.py --names-file`.

Usage: check_k8s_render.py RELEASE_NAMESPACE RENDERED.yaml... | --env-configs MANIFEST.yaml... | --spec-metrics
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
SPEC_HISTOGRAMS: dict[str, set[str]] = {"pgwarden_upstream_connect_duration_seconds": set()}
for _name, _labels in SPEC_HISTOGRAMS.items():
    SPEC_METRICS[f"{_name}_bucket"] = _labels | {"le"}
    SPEC_METRICS[f"{_name}_sum"] = set(_labels)
    SPEC_METRICS[f"{_name}_count"] = set(_labels)

# Labels Prometheus adds when it scrapes a sidecar through the PodMonitor.
SCRAPE_LABELS = {"namespace", "pod", "container", "endpoint", "instance", "job", "service"}

REFUSE_REASONS = {"client_limit", "total_limit", "wait_timeout"}
CLOSE_REASONS = {
    "client", "server", "abandoned", "idle_timeout", "idle_in_transaction_timeout", "max_age",
    "shutdown", "error",
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
}
# The injector's own keys in inject.yaml (besides `proxy`). Keep in sync with the Rust injector.
INJECTOR_KEYS = {"image", "imagePullPolicy", "nativeSidecar", "listenPort", "adminPort", "resources", "proxy"}

# Alerts the chart must define, and what their annotations must name.
ALERTS = {
    "PgwardenLeakSuspected": ("{{ $labels.client }}", "{{ $labels.pod }}"),
    "PgwardenClientAtCap": ("{{ $labels.client }}", "{{ $labels.pod }}"),
    "PgwardenUpstreamDown": ("{{ $labels.pod }}",),  # upstream metrics carry no client label
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
            for missing in sorted(set(ALERTS) - seen_alerts):
                self.error(f"PrometheusRule lacks alert {missing}")
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
            for needle in ALERTS.get(alert, ()):
                if needle not in text:
                    self.error(f"{alert}: annotation {key} does not contain {needle} (Helm escaping?): {text!r}")
        if not rule.get("labels", {}).get("severity"):
            self.error(f"{alert}: no severity label")

    # --- Webhook ---------------------------------------------------------------------------
    def check_webhook(self) -> None:
        mwc = self.one("MutatingWebhookConfiguration")
        deploy = self.one("Deployment")
        svc = self.one("Service")
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
        self.check_dashboards()
        return not self.errors


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
