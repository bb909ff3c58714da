use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn base() -> serde_json::Value {
    json!({
        "metadata": {
            "name": "nightly-report-29413440-x7k2p", "namespace": "batch", "uid": "u-1",
            "creationTimestamp": "2026-12-02T03:00:00Z",
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "nightly-report-29413440", "uid": "j", "controller": true}],
            "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {}}}]
        },
        "spec": {"nodeName": "node-b", "serviceAccountName": "reporter", "containers": [{"name": "job"}]},
        "status": {"phase": "Running", "podIP": "10.1.2.3", "podIPs": [{"ip": "10.1.2.3"}, {"ip": "fd00::3"}]}
    })
}

#[test]
fn a_running_pod_becomes_a_record_with_only_the_fields_that_name_it() {
    let r = record(&pod(base())).unwrap();
    assert_eq!(r.uid, "u-1");
    assert_eq!(r.ips, ["10.1.2.3".parse::<IpAddr>().unwrap(), "fd00::3".parse().unwrap()]);
    assert_eq!(r.created, 1_796_180_400);
    assert_eq!(
        *r.identity,
        PodIdentity {
            pod: Some("nightly-report-29413440-x7k2p".into()),
            namespace: Some("batch".into()),
            workload: Some("nightly-report".into()),
            node: Some("node-b".into()),
            service_account: Some("reporter".into()),
        },
        "Job -> CronJob"
    );
}

#[test]
fn pods_whose_address_must_not_name_them_are_no_records() {
    let with = |path: &[&str], v: serde_json::Value| {
        let mut p = base();
        let mut at = &mut p;
        for k in &path[..path.len() - 1] {
            at = &mut at[*k];
        }
        at[path[path.len() - 1]] = v;
        record(&pod(p))
    };
    assert!(with(&["spec", "hostNetwork"], json!(true)).is_none(), "host network: the node's address");
    assert!(with(&["status", "phase"], json!("Succeeded")).is_none(), "ended: the IP may be reused");
    assert!(with(&["status", "phase"], json!("Failed")).is_none());
    let mut pending = base();
    pending["status"] = json!({"phase": "Pending"});
    assert!(record(&pod(pending)).is_none(), "no IP yet");
    let mut no_uid = base();
    no_uid["metadata"].as_object_mut().unwrap().remove("uid");
    assert!(record(&pod(no_uid)).is_none());
}
