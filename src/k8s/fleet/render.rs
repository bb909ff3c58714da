//! The text `pgwarden fleet top` and `pgwarden fleet leaks` print: pure functions of a [`Summary`].

use super::aggregate::{Summary, WorkloadSummary};
use super::Evidence;
use crate::views::report::{opt_secs as secs, truncate as cut};
use std::fmt::Write as _;

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn failures(out: &mut String, s: &Summary) {
    if !s.identity_mismatches.is_empty() {
        let _ = writeln!(out, "\nwarning: pods that name themselves otherwise than the API server does:");
        for m in &s.identity_mismatches {
            let _ = writeln!(out, "  {m}");
        }
    }
    if s.failed.is_empty() {
        return;
    }
    let _ = writeln!(out, "\ncould not read {}:", plural(s.failed.len(), "pod", "pods"));
    for f in &s.failed {
        let _ = writeln!(out, "  {}/{}: {}", f.namespace, f.pod, f.reason);
    }
}

/// `fleet top`: workloads, then clients across pods, leakers first; then the pods that could not be read.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>4} {:>5} {:>7} {:>7} {:>10}  LEAKING PODS",
        "WORKLOAD", "PODS", "OPEN", "SUSPECT", "REFUSED", "OLDEST-IIT"
    );
    for w in &s.workloads {
        let pods: Vec<String> = w.leaking_pods.iter().map(|p| format!("{} ({})", p.pod, p.suspects)).collect();
        let row = format!(
            "{:<40} {:>4} {:>5} {:>7} {:>7} {:>10}  {}",
            cut(&format!("{}/{}", w.namespace, w.workload), 40),
            w.pods,
            w.open,
            w.suspects,
            w.refused_total,
            secs(w.oldest_idle_in_transaction_seconds),
            pods.join(", ")
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
    let _ = writeln!(
        out,
        "\n{:<30} {:<30} {:>4} {:>5} {:>7} {:>7} {:>10}  REASONS",
        "WORKLOAD", "CLIENT", "PODS", "OPEN", "SUSPECT", "REFUSED", "OLDEST-IIT"
    );
    for c in &s.clients {
        let row = format!(
            "{:<30} {:<30} {:>4} {:>5} {:>7} {:>7} {:>10}  {}",
            cut(&format!("{}/{}", c.namespace, c.workload), 30),
            cut(&c.client, 30),
            c.pods,
            c.open,
            c.suspects,
            c.refused_total,
            secs(c.oldest_idle_in_transaction_seconds),
            c.leak_reasons.join(",")
        );
        let _ = writeln!(out, "{}", row.trim_end());
    }
    failures(&mut out, s);
    out
}

fn evidence_line(e: &Evidence) -> String {
    let pid = e.backend_pid.map_or_else(|| "-".to_string(), |p| p.to_string());
    let ended = e.closed_reason.as_deref().map_or(String::new(), |r| format!(", closed by pgwarden: {r}"));
    format!(
        "    pod {}  client {}  backend pid {}  {} for {:.0}s (connection age {:.0}s{ended})  flagged {}\n      last statement: {}",
        e.pod,
        e.client,
        pid,
        e.state,
        e.state_seconds,
        e.age_seconds,
        e.leak_reason.as_deref().unwrap_or("-"),
        e.last_statement.as_deref().unwrap_or("(none)")
    ) + &e.tags.as_deref().map(|t| format!("\n      code: {t}")).unwrap_or_default()
        + &e.trace_id.as_deref().map(|t| format!("\n      trace id: {t}")).unwrap_or_default()
}

fn workload_verdict(out: &mut String, w: &WorkloadSummary) {
    let pods: Vec<String> = w.leaking_pods.iter().map(|p| format!("{} ({})", p.pod, p.suspects)).collect();
    let _ = writeln!(
        out,
        "workload {}/{}: {} on {} of {} ({})",
        w.namespace,
        w.workload,
        plural(w.suspects as usize, "suspect connection", "suspect connections"),
        w.leaking_pods.len(),
        plural(w.pods as usize, "pod", "pods"),
        pods.join(", ")
    );
    let _ = writeln!(
        out,
        "  clients {}; {} open; {} refused at a cap; oldest idle in transaction {}",
        w.leaking_clients.join(", "),
        w.open,
        w.refused_total,
        secs(w.oldest_idle_in_transaction_seconds)
    );
    if w.evidence.is_empty() {
        let _ = writeln!(
            out,
            "  (no per-connection evidence in this source; `pgwarden fleet leaks` without --prometheus reads it)"
        );
    }
    for e in &w.evidence {
        let _ = writeln!(out, "{}", evidence_line(e));
    }
}

/// `fleet leaks`: the verdict — the leaking workloads, their worst pods and the evidence — or that none is.
pub fn verdict(s: &Summary) -> String {
    let mut out = String::new();
    let leaking: Vec<&WorkloadSummary> = s.leaking().collect();
    let read = format!(
        "{} read{}",
        plural(s.pods_read, "pod", "pods"),
        if s.failed.is_empty() { String::new() } else { format!(", {} could not be read", s.failed.len()) }
    );
    if leaking.is_empty() {
        let _ = writeln!(out, "no leaks suspected in {} ({read})", plural(s.workloads.len(), "workload", "workloads"));
    } else {
        let names: Vec<String> = leaking.iter().map(|w| format!("{}/{}", w.namespace, w.workload)).collect();
        let _ = writeln!(
            out,
            "LEAK SUSPECTED in {}: {} ({read})\n",
            plural(leaking.len(), "workload", "workloads"),
            names.join(", ")
        );
        for w in leaking {
            workload_verdict(&mut out, w);
        }
    }
    failures(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::fleet::aggregate::summarize;
    use crate::k8s::fleet::{ClientFigures, Outcome, PodReport};

    fn pod(name: &str, workload: &str, suspects: u32) -> PodReport {
        let evidence = (0..suspects)
            .map(|i| Evidence {
                pod: name.into(),
                client: "img/app".into(),
                backend_pid: Some(100 + i as i32),
                state: "idle".into(),
                state_seconds: 61.0,
                age_seconds: 70.0,
                last_statement: Some("SELECT * FROM images WHERE id = ?".into()),
                tags: None,
                trace_id: None,
                leak_reason: Some("idle_while_client_grew".into()),
                closed_reason: None,
            })
            .collect();
        PodReport {
            identity_mismatch: None,
            namespace: "shop".into(),
            pod: name.into(),
            workload: workload.into(),
            outcome: Outcome::Read {
                clients: vec![ClientFigures {
                    client: "img/app".into(),
                    open: 3 + suspects,
                    suspects,
                    refused_total: 0,
                    oldest_idle_in_transaction_seconds: None,
                    leak_reasons: vec![],
                }],
                evidence,
            },
        }
    }

    #[test]
    fn the_verdict_names_the_workload_its_pods_and_the_evidence() {
        let s = summarize(&[
            pod("img-a", "image-processor", 2),
            pod("img-b", "image-processor", 0),
            pod("web-1", "web", 0),
        ]);
        let text = verdict(&s);
        assert!(text.starts_with("LEAK SUSPECTED in 1 workload: shop/image-processor (3 pods read)"), "{text}");
        assert!(text.contains("2 suspect connections on 1 of 2 pods (img-a (2))"), "{text}");
        assert!(text.contains("backend pid 100") && text.contains("SELECT * FROM images WHERE id = ?"), "{text}");
        assert!(!text.contains("web"), "healthy workloads are not in the verdict: {text}");
        let clean = verdict(&summarize(&[pod("web-1", "web", 0)]));
        assert_eq!(clean, "no leaks suspected in 1 workload (1 pod read)\n");
        let t = table(&s);
        assert!(t.lines().nth(1).unwrap().starts_with("shop/image-processor"), "{t}");
    }
}
