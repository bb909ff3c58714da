{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "pgwarden.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects: <release>-pgwarden, or the release name if it already says pgwarden. */}}
{{- define "pgwarden.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "pgwarden.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries. Pass a dict: {"ctx": $, "component": "injector"}. */}}
{{- define "pgwarden.labels" -}}
helm.sh/chart: {{ include "pgwarden.chart" .ctx }}
{{ include "pgwarden.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: pgwarden
{{- end }}

{{/* Labels a selector uses; stable across upgrades. Pass a dict: {"ctx": $, "component": "injector"}. */}}
{{- define "pgwarden.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgwarden.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "pgwarden.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgwarden.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The injector's Service; the webhook and its certificate name it. */}}
{{- define "pgwarden.injectorServiceName" -}}
{{- printf "%s-injector" (include "pgwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where sidecars reach the injector's Service: the budget coordinator and the control plane (budgets.enabled, control.enabled). */}}
{{- define "pgwarden.injectorURL" -}}
{{- printf "https://%s.%s.svc:443" (include "pgwarden.injectorServiceName" .) .Release.Namespace }}
{{- end }}

{{/* The Role (and RoleBinding to control.editors) that may change the control plane's overrides ConfigMap. */}}
{{- define "pgwarden.overridesEditorName" -}}
{{- printf "%s-overrides-editor" (include "pgwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The gateway's Deployment, Service, ServiceAccount, ConfigMap and RBAC objects (gateway.enabled). */}}
{{- define "pgwarden.gatewayName" -}}
{{- printf "%s-gateway" (include "pgwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ClusterRole for people running `pgwarden fleet` (fleetReader.create). */}}
{{- define "pgwarden.fleetReaderName" -}}
{{- printf "%s-fleet-reader" (include "pgwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Secret holding tls.crt, tls.key and ca.crt of the webhook's serving certificate. */}}
{{- define "pgwarden.tlsSecretName" -}}
{{- printf "%s-injector-tls" (include "pgwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* cert-manager Certificate for the serving certificate (certManager.enabled). */}}
{{- define "pgwarden.certificateName" -}}
{{- printf "%s-injector" (include "pgwarden.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* DNS names the serving certificate must cover. */}}
{{- define "pgwarden.injectorDNSNames" -}}
{{- $svc := include "pgwarden.injectorServiceName" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.cluster.local" $svc $ns) | toJson }}
{{- end }}

{{/* The pgwarden image reference; a digest wins over a tag. */}}
{{- define "pgwarden.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Port of a host:port string ("127.0.0.1:6432" -> "6432"; "[::1]:6432" -> "6432"). */}}
{{- define "pgwarden.portOf" -}}
{{- splitList ":" . | last }}
{{- end }}

{{/* Fails the render on values the schema cannot reject: sidecar ports that disagree with the proxy's listen
    addresses, a PodDisruptionBudget that blocks drains, a gateway without an upstream. */}}
{{- define "pgwarden.validate" -}}
{{- $listenPort := include "pgwarden.portOf" .Values.proxy.listen }}
{{- if ne $listenPort (toString .Values.sidecar.listenPort) }}
{{- fail (printf "proxy.listen (%s) must use sidecar.listenPort (%v)" .Values.proxy.listen .Values.sidecar.listenPort) }}
{{- end }}
{{- $adminPort := include "pgwarden.portOf" .Values.proxy.admin_listen }}
{{- if ne $adminPort (toString .Values.sidecar.adminPort) }}
{{- fail (printf "proxy.admin_listen (%s) must use sidecar.adminPort (%v)" .Values.proxy.admin_listen .Values.sidecar.adminPort) }}
{{- end }}
{{- if or (hasPrefix "127." .Values.proxy.admin_listen) (hasPrefix "localhost:" .Values.proxy.admin_listen) (hasPrefix "[::1]:" .Values.proxy.admin_listen) }}
{{- fail (printf "proxy.admin_listen (%s) must not be a loopback address: kubelet probes and Prometheus reach the sidecar from outside the pod (use 0.0.0.0:%v)" .Values.proxy.admin_listen .Values.sidecar.adminPort) }}
{{- end }}
{{- if and .Values.injector.podDisruptionBudget.enabled (le (int .Values.injector.replicas) (int .Values.injector.podDisruptionBudget.minAvailable)) }}
{{- fail (printf "injector.podDisruptionBudget.minAvailable (%v) must be below injector.replicas (%v), or node drains block; disable the PodDisruptionBudget for a single replica" .Values.injector.podDisruptionBudget.minAvailable .Values.injector.replicas) }}
{{- end }}
{{- with .Values.gateway }}
{{- if .enabled }}
{{- if not .upstream }}
{{- fail "gateway.upstream is required when gateway.enabled is true: the database the gateway proxies to, as host:port (e.g. --set gateway.upstream=postgres.db.svc:5432)" }}
{{- end }}
{{- if eq (int .port) (int .adminPort) }}
{{- fail (printf "gateway.port and gateway.adminPort must differ (both %v)" .port) }}
{{- end }}
{{- range $key, $value := dict "listen" "gateway.port" "admin_listen" "gateway.adminPort" "upstream" "gateway.upstream" "client_key" "gateway.clientKey" }}
{{- if hasKey $.Values.gateway.config $key }}
{{- fail (printf "gateway.config.%s: the chart sets it from %s; set that instead" $key $value) }}
{{- end }}
{{- end }}
{{- if and .podDisruptionBudget.enabled (le (int .replicas) (int .podDisruptionBudget.minAvailable)) }}
{{- fail (printf "gateway.podDisruptionBudget.minAvailable (%v) must be below gateway.replicas (%v), or node drains block; disable the PodDisruptionBudget for a single replica" .podDisruptionBudget.minAvailable .replicas) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
