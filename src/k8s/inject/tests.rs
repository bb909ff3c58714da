//! The mutation against recorded AdmissionReview fixtures (`tests/fixtures/`).

use super::*;
use crate::config::Limit;

fn pod(fixture: &str) -> Pod {
    let review: serde_json::Value = serde_json::from_str(fixture).unwrap();
    serde_json::from_value(review["request"]["object"].clone()).unwrap()
}

const STATEFULSET: &str = include_str!("../../../tests/fixtures/statefulset-pod-with-init.json");
const DEPLOYMENT: &str = include_str!("../../../tests/fixtures/deployment-pod-no-init.json");
const BARE: &str = include_str!("../../../tests/fixtures/bare-pod-no-annotations.json");
const OPTED_OUT: &str = include_str!("../../../tests/fixtures/opted-out-pod.json");
const BAD: &str = include_str!("../../../tests/fixtures/bad-annotation-pod.json");

/// Applies the patch to the pod's JSON.
fn patched(p: &Pod, ops: &[Value]) -> Value {
    let mut doc = serde_json::to_value(p).unwrap();
    let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec())).unwrap();
    json_patch::patch(&mut doc, &patch).unwrap();
    doc
}

fn env<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn statefulset_pod_gets_the_sidecar_first_in_init_containers() {
    let p = pod(STATEFULSET);
    let ops = mutate(&p, &InjectConfig::default(), None).unwrap().expect("a patch");
    assert_eq!(ops[0]["path"], "/spec/initContainers/0");
    let doc = patched(&p, &ops);
    let init = doc["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], CONTAINER);
    assert_eq!(init[1]["name"], "migrate", "existing init containers untouched, after the sidecar");
    assert_eq!(doc["spec"]["containers"], serde_json::to_value(&p.spec.as_ref().unwrap().containers).unwrap());
    let c = &init[0];
    assert_eq!(c["restartPolicy"], "Always");
    let yaml = env(c, "PGWARDEN_CONFIG_YAML")["value"].as_str().unwrap();
    let cfg = Config::from_yaml(yaml, "sidecar").unwrap();
    assert_eq!(cfg.upstream.to_string(), "ledger-db.payments.svc:5432");
    assert_eq!(cfg.defaults.idle_timeout.to_string(), "10m");
    assert_eq!(cfg.admin_listen.to_string(), "0.0.0.0:9187");
    assert_eq!(env(c, "PGWARDEN_WORKLOAD")["value"], "ledger");
    assert_eq!(env(c, "PGWARDEN_POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env(c, "PGWARDEN_NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let sc = &c["securityContext"];
    assert_eq!(
        (
            sc["runAsNonRoot"].as_bool(),
            sc["readOnlyRootFilesystem"].as_bool(),
            sc["allowPrivilegeEscalation"].as_bool()
        ),
        (Some(true), Some(true), Some(false))
    );
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["ports"][0]["name"], ADMIN_PORT_NAME);
    assert_eq!(doc["metadata"]["annotations"][annotations::STATUS], "injected");
    assert_eq!(doc["metadata"]["labels"][INJECTED_LABEL], "true", "findable by the selector fleet uses");
}

#[test]
fn deployment_pod_without_init_containers_gets_the_list_created() {
    let p = pod(DEPLOYMENT);
    let ops = mutate(&p, &InjectConfig::default(), None).unwrap().unwrap();
    assert_eq!(ops[0]["path"], "/spec/initContainers");
    assert_eq!(ops[1]["path"], "/metadata/annotations/pgwarden.io~1status", "`/` escaped as ~1");
    assert_eq!(ops[2]["path"], "/metadata/labels/pgwarden.io~1injected", "added beside the pod's own labels");
    let doc = patched(&p, &ops);
    assert_eq!(doc["metadata"]["labels"]["app"], "checkout-api", "the pod's labels are kept");
    assert_eq!(doc["metadata"]["labels"][INJECTED_LABEL], "true");
    let c = &doc["spec"]["initContainers"][0];
    let cfg = Config::from_yaml(env(c, "PGWARDEN_CONFIG_YAML")["value"].as_str().unwrap(), "sidecar").unwrap();
    assert_eq!(cfg.defaults.max_connections, Limit(Some(20)));
    assert_eq!(cfg.listen.to_string(), "127.0.0.1:5432");
    assert_eq!(env(c, "PGWARDEN_WORKLOAD")["value"], "checkout-api", "ReplicaSet name minus its hash");
}

#[test]
fn bare_pod_gets_annotations_created_and_legacy_mode_appends_a_container() {
    let p = pod(BARE);
    let cfg = InjectConfig { native_sidecar: false, ..InjectConfig::default() };
    let ops = mutate(&p, &cfg, None).unwrap().unwrap();
    assert_eq!(ops[0]["path"], "/spec/containers/-");
    assert_eq!(ops[1]["path"], "/metadata/annotations");
    let doc = patched(&p, &ops);
    let containers = doc["spec"]["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], CONTAINER);
    assert!(containers[1].get("restartPolicy").is_none());
    assert_eq!(containers[1]["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    assert_eq!(env(&containers[1], "PGWARDEN_WORKLOAD")["value"], "adhoc");
}

#[test]
fn idempotent_and_opt_out() {
    let p = pod(STATEFULSET);
    let ops = mutate(&p, &InjectConfig::default(), None).unwrap().unwrap();
    let again: Pod = serde_json::from_value(patched(&p, &ops)).unwrap();
    assert_eq!(mutate(&again, &InjectConfig::default(), None).unwrap(), None, "re-admitting the patched pod");
    assert_eq!(mutate(&pod(OPTED_OUT), &InjectConfig::default(), None).unwrap(), None);
}

#[test]
fn bad_annotation_is_refused_naming_it() {
    let e = mutate(&pod(BAD), &InjectConfig::default(), None).unwrap_err();
    assert!(e.contains("pgwarden.io/max-connections") && e.contains("lots"), "{e}");
}

#[test]
fn configmap_config_then_annotations() {
    let p = pod(DEPLOYMENT);
    let cm = "upstream: from-configmap.svc:5432\ndefaults:\n  max_connections: 3\n";
    let ops = mutate(&p, &InjectConfig::default(), Some(cm)).unwrap().unwrap();
    let doc = patched(&p, &ops);
    let c = &doc["spec"]["initContainers"][0];
    let cfg = Config::from_yaml(env(c, "PGWARDEN_CONFIG_YAML")["value"].as_str().unwrap(), "sidecar").unwrap();
    assert_eq!(cfg.upstream.to_string(), "orders-db.shop.svc:5432", "the annotation wins over the ConfigMap");
    assert_eq!(cfg.defaults.max_connections, Limit(Some(20)));
    let e = mutate(&p, &InjectConfig::default(), Some("bogus: 1")).unwrap_err();
    assert!(e.contains("pgwarden.io/config") && e.contains("bogus"), "{e}");
}

#[test]
fn injector_config_from_the_chart_shape() {
    let yaml = r#"
image: "ghcr.io/pgwarden/pgwarden:0.1.0"
imagePullPolicy: IfNotPresent
nativeSidecar: true
listenPort: 6432
adminPort: 9187
resources:
  requests: { cpu: 10m, memory: 16Mi }
  limits: { memory: 64Mi }
proxy:
  upstream: db:5432
  defaults:
    idle_timeout: off
"#;
    let cfg = InjectConfig::from_yaml(yaml, "inject.yaml").unwrap();
    assert_eq!(cfg.image, "ghcr.io/pgwarden/pgwarden:0.1.0");
    assert_eq!(cfg.proxy.upstream.to_string(), "db:5432");
    let c = sidecar(&pod(BARE), &cfg, &cfg.proxy);
    assert_eq!(c["resources"]["limits"]["memory"], "64Mi");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    let e = InjectConfig::from_yaml("proxy:\n  defaults:\n    idle_timeout: soon\n", "inject.yaml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("proxy.defaults.idle_timeout"), "{e}");
    assert!(InjectConfig::from_yaml("imagePullPolcy: Always\n", "inject.yaml").is_err());
}

const UNIX_TLS: &str = include_str!("../../../tests/fixtures/unix-socket-tls-pod.json");

#[test]
fn unix_socket_and_client_tls_secret_are_mounted_where_the_config_says() {
    let p = pod(UNIX_TLS);
    let ops = mutate(&p, &InjectConfig::default(), None).unwrap().unwrap();
    let doc = patched(&p, &ops);
    let sidecar = &doc["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], CONTAINER);
    let cfg = Config::from_yaml(env(sidecar, "PGWARDEN_CONFIG_YAML")["value"].as_str().unwrap(), "sidecar").unwrap();
    assert_eq!(cfg.listen_unix.as_deref(), Some(std::path::Path::new(annotations::DEFAULT_SOCKET_DIR)));
    assert_eq!(cfg.client_tls, crate::config::ClientTls::Allow);
    assert_eq!(cfg.client_tls_cert_file.as_deref(), Some(std::path::Path::new("/etc/pgwarden/client-tls/tls.crt")));
    let mounts = |c: &Value| -> Vec<(String, String)> {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["name"].as_str().unwrap().to_string(), m["mountPath"].as_str().unwrap().to_string()))
            .collect()
    };
    let socket = (SOCKET_VOLUME.to_string(), annotations::DEFAULT_SOCKET_DIR.to_string());
    assert_eq!(
        mounts(sidecar),
        [socket.clone(), (CLIENT_TLS_VOLUME.to_string(), annotations::CLIENT_TLS_DIR.to_string())]
    );
    let containers = doc["spec"]["containers"].as_array().unwrap();
    assert_eq!(
        mounts(&containers[0]),
        [("cache".to_string(), "/cache".to_string()), socket.clone()],
        "appended to existing mounts"
    );
    assert_eq!(mounts(&containers[1]), [socket], "created where there were none");
    let volumes: Vec<&str> =
        doc["spec"]["volumes"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(volumes, ["cache", SOCKET_VOLUME, CLIENT_TLS_VOLUME]);
    assert_eq!(doc["spec"]["volumes"][2]["secret"]["secretName"], "reports-pgwarden-tls");
    // A Secret without client TLS is a mistake worth refusing.
    let mut p = pod(UNIX_TLS);
    p.metadata.annotations.as_mut().unwrap().remove(annotations::CLIENT_TLS);
    assert!(mutate(&p, &InjectConfig::default(), None).unwrap_err().contains(annotations::CLIENT_TLS_SECRET));
}

#[test]
fn budgets_give_the_sidecar_a_projected_token_and_its_coordinator() {
    let p = pod(DEPLOYMENT);
    let cfg = InjectConfig::from_yaml(
        "budgets:\n  enabled: true\n  url: https://pgwarden.pgwarden.svc:443\n  caFile: /tls/ca.crt\n  keepLast: 30s\n  fallbackMaxConnections: 3\n",
        "test",
    )
    .unwrap();
    let ops = mutate(&p, &cfg, None).unwrap().expect("a patch");
    let doc = patched(&p, &ops);
    let volume = doc["spec"]["volumes"].as_array().unwrap().iter().find(|v| v["name"] == BUDGET_TOKEN_VOLUME).unwrap();
    let token = &volume["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!((token["audience"].as_str(), token["path"].as_str()), (Some("pgwarden-coordinator"), Some("token")));
    let c = doc["spec"]["initContainers"].as_array().unwrap().iter().find(|c| c["name"] == CONTAINER).unwrap();
    let mount = c["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == BUDGET_TOKEN_VOLUME).unwrap();
    assert_eq!((mount["mountPath"].as_str(), mount["readOnly"].as_bool()), (Some(BUDGET_TOKEN_DIR), Some(true)));
    let proxy = Config::from_yaml(env(c, "PGWARDEN_CONFIG_YAML")["value"].as_str().unwrap(), "sidecar").unwrap();
    assert_eq!(proxy.budget.coordinator.as_deref(), Some("https://pgwarden.pgwarden.svc:443"));
    assert_eq!(proxy.budget.token_file, std::path::Path::new(BUDGET_TOKEN_DIR).join("token"));
    assert_eq!(
        (proxy.budget.keep_last.to_string(), proxy.budget.fallback_max_connections),
        ("30s".into(), Limit(Some(3)))
    );

    // Off: nothing of it.
    let ops = mutate(&p, &InjectConfig::default(), None).unwrap().unwrap();
    assert!(!serde_json::to_string(&ops).unwrap().contains(BUDGET_TOKEN_VOLUME));
}

#[test]
fn a_bad_budget_annotation_refuses_the_pod_and_entries_are_validated() {
    let mut p = pod(DEPLOYMENT);
    p.metadata.annotations.get_or_insert_with(Default::default).insert("pgwarden.io/budget".into(), "lots".into());
    let e = mutate(&p, &InjectConfig::default(), None).unwrap_err();
    assert!(e.contains("pgwarden.io/budget") && e.contains("\"lots\""), "{e}");
    p.metadata.annotations.as_mut().unwrap().insert("pgwarden.io/budget".into(), "40".into());
    assert!(mutate(&p, &InjectConfig::default(), None).unwrap().is_some());
    let e = InjectConfig::from_yaml("budgets:\n  enabled: true\n", "injector.yaml").unwrap_err().to_string();
    assert!(e.contains("budgets.url"), "{e}");
    let e = InjectConfig::from_yaml("budgets:\n  entries: [{match: {workload: a}, maxConnections: 0}]\n", "f")
        .unwrap_err()
        .to_string();
    assert!(e.contains("budgets.entries[0]") && e.contains("at least 1"), "{e}");
}
