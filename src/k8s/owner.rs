//! The workload a pod belongs to, from its controller reference and labels, without reading any other
//! object: used by the webhook (`PGWARDEN_WORKLOAD`) and by gateway mode's pod watcher alike.
//!
//! ReplicaSet → Deployment: a Deployment's ReplicaSet is named `<deployment>-<pod-template-hash>` and its
//! pods carry that hash as a label. Job → CronJob: a CronJob's Job is named `<cronjob>-<scheduled minute>`
//! (8 or more digits). StatefulSet, DaemonSet and any other controller: its name. No controller: the pod's
//! name (or its generateName without the trailing `-`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub fn workload(meta: &ObjectMeta) -> String {
    let owner = meta.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    match owner {
        Some(o) if o.kind == "ReplicaSet" => {
            let hash = meta.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
            match hash.and_then(|h| o.name.strip_suffix(&format!("-{h}"))) {
                Some(deployment) => deployment.to_string(),
                None => o.name.rsplit_once('-').map_or(o.name.clone(), |(d, _)| d.to_string()),
            }
        }
        Some(o) if o.kind == "Job" => match o.name.rsplit_once('-') {
            Some((cronjob, minute))
                if !cronjob.is_empty() && minute.len() >= 8 && minute.bytes().all(|b| b.is_ascii_digit()) =>
            {
                cronjob.to_string()
            }
            _ => o.name.clone(),
        },
        Some(o) => o.name.clone(),
        None => meta
            .name
            .clone()
            .or_else(|| meta.generate_name.as_ref().map(|g| g.trim_end_matches('-').to_string()))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn meta(kind: &str, owner: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            name: Some("p-1".into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            owner_references: Some(vec![OwnerReference {
                kind: kind.into(),
                name: owner.into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn the_owner_chain_names_the_workload() {
        assert_eq!(
            workload(&meta("ReplicaSet", "image-proc-7d9f8c6b5", &[("pod-template-hash", "7d9f8c6b5")])),
            "image-proc"
        );
        assert_eq!(
            workload(&meta("ReplicaSet", "image-proc-7d9f8c6b5", &[])),
            "image-proc",
            "no hash label: last segment"
        );
        assert_eq!(workload(&meta("Job", "nightly-report-29413440", &[])), "nightly-report", "a CronJob's Job");
        assert_eq!(workload(&meta("Job", "migrate-v2", &[])), "migrate-v2", "a plain Job");
        assert_eq!(workload(&meta("StatefulSet", "ledger", &[])), "ledger");
        assert_eq!(workload(&meta("DaemonSet", "node-agent", &[])), "node-agent");
        let bare = ObjectMeta { generate_name: Some("debug-".into()), ..Default::default() };
        assert_eq!(workload(&bare), "debug");
    }
}
