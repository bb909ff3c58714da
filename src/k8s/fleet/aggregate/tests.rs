use super::*;
use crate::k8s::fleet::ClientFigures;

fn figures(client: &str, open: u32, suspects: u32) -> ClientFigures {
    ClientFigures {
        client: client.into(),
        open,
        suspects,
        refused_total: if suspects > 0 { 2 } else { 0 },
        oldest_idle_in_transaction_seconds: (suspects > 0).then_some(40.0 + suspects as f64),
        leak_reasons: if suspects > 0 { vec!["idle_in_transaction".into()] } else { vec![] },
    }
}

fn evidence(pod: &str, client: &str, pid: i32, state_seconds: f64) -> Evidence {
    Evidence {
        pod: pod.into(),
        client: client.into(),
        backend_pid: Some(pid),
        state: "idle in transaction".into(),
        state_seconds,
        age_seconds: state_seconds + 1.0,
        last_statement: Some("UPDATE images SET status = ? WHERE id = ?".into()),
        tags: None,
        trace_id: None,
        leak_reason: Some("idle_in_transaction".into()),
        closed_reason: None,
    }
}

fn read(ns: &str, pod: &str, workload: &str, clients: Vec<ClientFigures>, evidence: Vec<Evidence>) -> PodReport {
    PodReport {
        namespace: ns.into(),
        pod: pod.into(),
        workload: workload.into(),
        outcome: Outcome::Read { clients, evidence },
        identity_mismatch: None,
    }
}

fn failed(ns: &str, pod: &str, reason: &str) -> PodReport {
    PodReport {
        namespace: ns.into(),
        pod: pod.into(),
        workload: "?".into(),
        outcome: Outcome::Failed { reason: reason.into() },
        identity_mismatch: None,
    }
}

#[test]
fn the_leaking_workload_comes_first_with_its_leaking_pods_and_their_evidence() {
    let reports = vec![
        read("shop", "web-1", "web", vec![figures("web/app", 9, 0)], vec![]),
        read(
            "shop",
            "img-a",
            "image-processor",
            vec![figures("img/app", 5, 3)],
            vec![evidence("img-a", "img/app", 11, 50.0)],
        ),
        read("shop", "img-b", "image-processor", vec![figures("img/app", 2, 0)], vec![]),
        read(
            "shop",
            "img-c",
            "image-processor",
            vec![figures("img/app", 6, 4)],
            vec![evidence("img-c", "img/app", 12, 90.0), evidence("img-c", "img/app", 13, 30.0)],
        ),
    ];
    let s = summarize(&reports);
    assert_eq!(s.pods_read, 4);
    let w = &s.workloads[0];
    assert_eq!((w.workload.as_str(), w.pods, w.open, w.suspects), ("image-processor", 3, 13, 7));
    let pods: Vec<&str> = w.leaking_pods.iter().map(|p| p.pod.as_str()).collect();
    assert_eq!(pods, ["img-c", "img-a"], "worst pod first; the healthy pod is not named");
    let pids: Vec<i32> = w.evidence.iter().filter_map(|e| e.backend_pid).collect();
    assert_eq!(pids, [12, 13, 11], "the worst pod's suspects first, longest idle first");
    assert_eq!(w.leaking_clients, ["img/app"]);
    assert_eq!(w.oldest_idle_in_transaction_seconds, Some(44.0));
    assert_eq!(s.workloads[1].workload, "web");
    assert_eq!(s.leaking().count(), 1);
    assert_eq!(s.clients[0].client, "img/app");
    assert_eq!((s.clients[0].pods, s.clients[0].suspects, s.clients[0].refused_total), (3, 7, 4));
}

#[test]
fn a_pod_reported_twice_counts_once_and_a_read_beats_a_failure() {
    let good = read("shop", "img-a", "image-processor", vec![figures("img/app", 5, 3)], vec![]);
    let s = summarize(&[failed("shop", "img-a", "timed out"), good.clone(), good]);
    assert_eq!(s.pods_read, 1);
    assert!(s.failed.is_empty());
    assert_eq!((s.workloads[0].pods, s.workloads[0].open), (1, 5));
}

#[test]
fn failed_pods_are_listed_with_their_reason_and_the_rest_still_summarised() {
    let s = summarize(&[
        failed("shop", "img-b", "forbidden: get pods/proxy"),
        read("shop", "img-a", "image-processor", vec![figures("img/app", 1, 0)], vec![]),
        failed("batch", "etl-0", "pod not ready"),
    ]);
    assert_eq!(s.pods_read, 1);
    let names: Vec<(&str, &str)> = s.failed.iter().map(|f| (f.namespace.as_str(), f.pod.as_str())).collect();
    assert_eq!(names, [("batch", "etl-0"), ("shop", "img-b")]);
    assert_eq!(s.failed[1].reason, "forbidden: get pods/proxy");
    assert_eq!(s.leaking().count(), 0);
    assert_eq!(summarize(&[]).workloads.len(), 0, "no pods: an empty summary");
}

#[test]
fn one_client_key_in_two_workloads_is_two_rows() {
    let s = summarize(&[
        read("shop", "api-1", "api", vec![figures("app/alice", 3, 0)], vec![]),
        read("shop", "worker-1", "worker", vec![figures("app/alice", 4, 2)], vec![]),
        read("other", "api-1", "api", vec![figures("app/alice", 1, 0)], vec![]),
    ]);
    assert_eq!(s.clients.len(), 3);
    assert_eq!((s.clients[0].workload.as_str(), s.clients[0].suspects), ("worker", 2), "the leaking one first");
    assert_eq!(s.workloads.len(), 3, "the same workload name in two namespaces is two workloads");
    assert_eq!(s.workloads[0].leaking_clients, ["app/alice"]);
    assert!(s.workloads[1].leaking_clients.is_empty(), "the healthy workload's same key is not blamed");
}

#[test]
fn evidence_is_bounded_per_workload() {
    let ev: Vec<Evidence> = (0..20).map(|i| evidence("img-a", "img/app", i, i as f64)).collect();
    let s = summarize(&[read("shop", "img-a", "image-processor", vec![figures("img/app", 20, 20)], ev)]);
    assert_eq!(s.workloads[0].evidence.len(), EVIDENCE_PER_WORKLOAD);
    assert_eq!(s.workloads[0].evidence[0].backend_pid, Some(19));
}

/// A pod that names itself otherwise than the API server does is shown under the API server's names, with
/// a warning (issue 27 item 8): any pod labelled injected could otherwise appear as another team's workload.
#[test]
fn a_pod_is_shown_as_the_api_server_names_it_and_a_lie_is_a_warning() {
    let clients: crate::views::stats::ClientsResponse = serde_json::from_value(serde_json::json!({
        "identity": {"pod": "web-1", "namespace": "payments", "workload": "billing", "node": null, "service_account": null},
        "clients": [],
    }))
    .unwrap();
    let leaks = crate::views::stats::LeaksResponse { leaks: Vec::new() };
    let r = PodReport::from_sidecar("shop", "web-1", "web", &clients, &leaks);
    assert_eq!((r.namespace.as_str(), r.workload.as_str()), ("shop", "web"));
    let said = r.identity_mismatch.clone().expect("a warning");
    assert!(said.contains("payments") && said.contains("shop/web"), "{said}");
    let s = summarize(&[r]);
    assert_eq!(s.identity_mismatches.len(), 1);
    assert!(crate::k8s::fleet::render::table(&s).contains("warning: pods that name themselves otherwise"));
    let honest: crate::views::stats::ClientsResponse = serde_json::from_value(serde_json::json!({
        "identity": {"pod": "web-1", "namespace": "shop", "workload": "web", "node": null, "service_account": null},
        "clients": [],
    }))
    .unwrap();
    assert!(PodReport::from_sidecar("shop", "web-1", "web", &honest, &leaks).identity_mismatch.is_none());
}
