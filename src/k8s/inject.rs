//! The mutating admission webhook that adds the pgwarden sidecar to pods.
//!
//! The mutation is a pure, idempotent function of (pod, injector config, the pod's ConfigMap text if it
//! names one): [`mutate`]. The HTTPS envelope (AdmissionReview in and out, the ConfigMap lookup, certificate
//! reload) is in `inject::server`.

pub mod annotations;
pub mod config;
pub mod server;

use crate::config::{Config, HostPort};
use config::InjectConfig;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

/// The sidecar's container name; a pod that has one is left alone.
pub const CONTAINER: &str = "pgwarden";
/// The label that opts a pod out (`disabled`) or in (`enabled`, matched by the webhook configuration).
pub const INJECT_LABEL: &str = "pgwarden.io/inject";
/// The label the webhook puts on every pod it injects (value `true`), so `pgwarden fleet` and the budget
/// coordinator list pods with a sidecar by selector.
pub const INJECTED_LABEL: &str = "pgwarden.io/injected";
pub const ADMIN_PORT_NAME: &str = "pgwarden-admin";
/// The shared socket directory's volume (`pgwarden.io/unix-socket`).
pub const SOCKET_VOLUME: &str = "pgwarden-socket";
/// The client TLS Secret's volume (`pgwarden.io/client-tls-secret`).
pub const CLIENT_TLS_VOLUME: &str = "pgwarden-client-tls";
/// The projected ServiceAccount token the sidecar shows the injector (`budgets.enabled`, `control.enabled`).
pub const BUDGET_TOKEN_VOLUME: &str = "pgwarden-budget-token";
/// Where that token is mounted; the file is `token` in it.
pub const BUDGET_TOKEN_DIR: &str = "/var/run/secrets/pgwarden.io/budget";

/// The JSON Patch operations that inject the sidecar, or `None` when the pod needs none (opted out, or
/// already injected). `configmap` is the text of the ConfigMap the pod's `pgwarden.io/config` names.
/// `Err` is the message of a refusal (it names the annotation and the problem).
pub fn mutate(pod: &Pod, cfg: &InjectConfig, configmap: Option<&str>) -> Result<Option<Vec<Value>>, String> {
    let meta = &pod.metadata;
    if meta.labels.as_ref().and_then(|l| l.get(INJECT_LABEL)).is_some_and(|v| v == "disabled") {
        return Ok(None);
    }
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let has_sidecar = spec.containers.iter().chain(spec.init_containers.iter().flatten()).any(|c| c.name == CONTAINER);
    let annotations = meta.annotations.clone().unwrap_or_default();
    if has_sidecar || annotations.contains_key(annotations::STATUS) {
        return Ok(None);
    }
    let proxy = proxy_config(cfg, &annotations, configmap)?;
    let mut container = sidecar(pod, cfg, &proxy);
    let mut patch = Vec::new();
    let mut volumes = Vec::new();
    let mut sidecar_mounts = Vec::new();
    if let Some(dir) = annotations::socket_dir(&annotations)? {
        // One emptyDir, mounted at the same path in every container, so `host=DIR` works in each.
        let mount = json!({"name": SOCKET_VOLUME, "mountPath": dir});
        volumes.push(json!({"name": SOCKET_VOLUME, "emptyDir": {"medium": "Memory"}}));
        sidecar_mounts.push(mount.clone());
        for (list, containers) in [
            ("initContainers", spec.init_containers.as_deref().unwrap_or_default()),
            ("containers", &spec.containers[..]),
        ] {
            for (i, c) in containers.iter().enumerate() {
                if c.volume_mounts.is_none() {
                    patch
                        .push(json!({"op": "add", "path": format!("/spec/{list}/{i}/volumeMounts"), "value": [mount]}));
                } else {
                    patch
                        .push(json!({"op": "add", "path": format!("/spec/{list}/{i}/volumeMounts/-"), "value": mount}));
                }
            }
        }
    }
    if let Some(secret) = annotations::client_tls_secret(&annotations)? {
        volumes.push(json!({"name": CLIENT_TLS_VOLUME, "secret": {"secretName": secret}}));
        sidecar_mounts
            .push(json!({"name": CLIENT_TLS_VOLUME, "mountPath": annotations::CLIENT_TLS_DIR, "readOnly": true}));
    }
    if cfg.budgets.enabled || cfg.control.enabled {
        // Audience-bound and short-lived; the kubelet rotates it and the sidecar reads it before each request.
        volumes.push(json!({"name": BUDGET_TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
            "audience": cfg.budgets.audience, "expirationSeconds": 3600, "path": "token"}}]}}));
        sidecar_mounts.push(json!({"name": BUDGET_TOKEN_VOLUME, "mountPath": BUDGET_TOKEN_DIR, "readOnly": true}));
    }
    if !sidecar_mounts.is_empty() {
        container["volumeMounts"] = Value::Array(sidecar_mounts);
    }
    if cfg.native_sidecar {
        if spec.init_containers.is_none() {
            patch.push(json!({"op": "add", "path": "/spec/initContainers", "value": [container]}));
        } else {
            // First, so init containers such as migrations can already use it.
            patch.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": container}));
        }
    } else {
        patch.push(json!({"op": "add", "path": "/spec/containers/-", "value": container}));
    }
    if !volumes.is_empty() {
        if spec.volumes.is_none() {
            patch.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
        } else {
            patch.extend(volumes.into_iter().map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v})));
        }
    }
    if meta.annotations.is_none() {
        patch.push(json!({"op": "add", "path": "/metadata/annotations", "value": {annotations::STATUS: "injected"}}));
    } else {
        patch.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(annotations::STATUS)), "value": "injected"}));
    }
    if meta.labels.is_none() {
        patch.push(json!({"op": "add", "path": "/metadata/labels", "value": {INJECTED_LABEL: "true"}}));
    } else {
        patch.push(
            json!({"op": "add", "path": format!("/metadata/labels/{}", escape(INJECTED_LABEL)), "value": "true"}),
        );
    }
    Ok(Some(patch))
}

/// The sidecar's effective config: the injector's (or the pod's ConfigMap's), then the annotations; the admin
/// server listens on all interfaces so probes and Prometheus reach it.
pub fn proxy_config(
    cfg: &InjectConfig,
    annotations: &std::collections::BTreeMap<String, String>,
    configmap: Option<&str>,
) -> Result<Config, String> {
    let mut proxy = match configmap {
        Some(text) => Config::from_yaml(
            text,
            &format!("annotation {}: ConfigMap key {}", annotations::CONFIG, annotations::CONFIG_KEY),
        )
        .map_err(|e| e.to_string())?,
        None => cfg.proxy.clone(),
    };
    annotations::apply(annotations, &mut proxy)?;
    proxy.admin_listen = HostPort { host: "0.0.0.0".into(), port: cfg.admin_port };
    if cfg.budgets.enabled || cfg.control.enabled {
        proxy.budget = crate::config::BudgetClient {
            coordinator: cfg.budgets.url.clone(),
            ca_pem: cfg.budget_ca_pem.clone(),
            ca_file: None,
            token_file: std::path::Path::new(BUDGET_TOKEN_DIR).join("token"),
            keep_last: cfg.budgets.keep_last,
            fallback_max_connections: cfg.budgets.fallback_max_connections,
        };
    }
    if cfg.control.enabled {
        proxy.control = crate::config::control::ControlClient {
            url: cfg.control.url.clone(),
            ca_pem: cfg.control_ca_pem.clone(),
            ca_file: None,
            token_file: std::path::Path::new(BUDGET_TOKEN_DIR).join("token"),
        };
    }
    if !annotations.contains_key(annotations::LISTEN_PORT) && configmap.is_none() {
        proxy.listen = HostPort { host: "127.0.0.1".into(), port: cfg.listen_port };
    }
    proxy.validate().map_err(|(key, msg)| format!("effective sidecar config: key `{key}`: {msg}"))?;
    Ok(proxy)
}

/// The workload a pod belongs to (see `k8s::owner`).
pub fn workload(pod: &Pod) -> String {
    super::owner::workload(&pod.metadata)
}

fn sidecar(pod: &Pod, cfg: &InjectConfig, proxy: &Config) -> Value {
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let probe = |path: &str, period: u32, failures: u32| json!({"httpGet": {"path": path, "port": ADMIN_PORT_NAME}, "periodSeconds": period, "failureThreshold": failures});
    let mut c = json!({
        "name": CONTAINER,
        "image": cfg.image,
        "args": ["proxy"],
        "env": [
            {"name": "PGWARDEN_CONFIG_YAML", "value": proxy.to_yaml()},
            field("PGWARDEN_POD_NAME", "metadata.name"),
            field("PGWARDEN_POD_NAMESPACE", "metadata.namespace"),
            field("PGWARDEN_POD_UID", "metadata.uid"),
            field("PGWARDEN_NODE_NAME", "spec.nodeName"),
            field("PGWARDEN_SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field("PGWARDEN_POD_IP", "status.podIP"),
            {"name": "PGWARDEN_WORKLOAD", "value": workload(pod)},
        ],
        "ports": [{"name": ADMIN_PORT_NAME, "containerPort": cfg.admin_port, "protocol": "TCP"}],
        "startupProbe": probe("/healthz", 1, 30),
        "readinessProbe": probe("/readyz", 5, 2),
        "livenessProbe": probe("/healthz", 10, 3),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    });
    let obj = c.as_object_mut().expect("object");
    if let Some(policy) = &cfg.image_pull_policy {
        obj.insert("imagePullPolicy".into(), json!(policy));
    }
    if let Some(resources) = &cfg.resources {
        obj.insert("resources".into(), serde_json::to_value(resources).expect("resources serialize"));
    }
    if cfg.native_sidecar {
        obj.insert("restartPolicy".into(), json!("Always"));
    } else {
        // Keep serving while the application shuts down and closes its connections.
        obj.insert("lifecycle".into(), json!({"preStop": {"sleep": {"seconds": 5}}}));
    }
    c
}

/// JSON Pointer escaping of one path segment (RFC 6901).
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests;
