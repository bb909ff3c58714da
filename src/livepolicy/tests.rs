use super::*;
use std::time::Duration;

fn patch(yaml: &str) -> PolicyPatch {
    serde_norway::from_str(yaml).unwrap()
}

fn live(base: Option<PolicyKeys>, overrides: &[(&str, &str)]) -> LivePolicy {
    LivePolicy {
        namespace: "shop".into(),
        workload: "images".into(),
        base,
        overrides: overrides.iter().map(|(s, y)| Sourced { source: s.to_string(), patch: patch(y) }).collect(),
    }
}

#[test]
fn base_then_namespace_then_workload() {
    let started = Config::from_yaml("listen: 127.0.0.1:7000\ndefaults: {max_connections: 50}\n", "t").unwrap();
    let mut chart = Config::default();
    chart.defaults.idle_timeout = Timeout(Some(Duration::from_secs(600)));
    let l = live(
        Some(PolicyKeys::of(&chart)),
        &[
            ("ns", "defaults: {max_connections: 20, query_timeout: 30s}\nenforce: false\n"),
            ("wl", "defaults: {max_connections: 10}\ncap: {connections: 5}\n"),
        ],
    );
    let (c, sources) = l.apply(&started).unwrap();
    assert_eq!(c.listen.port, 7000, "not a policy key: as the pod started");
    assert_eq!(c.defaults.max_connections, Limit(Some(10)), "the workload's override is last");
    assert_eq!(c.defaults.query_timeout, Timeout(Some(Duration::from_secs(30))));
    assert_eq!(c.defaults.idle_timeout, Timeout(Some(Duration::from_secs(600))), "from the base");
    assert_eq!((c.enforce, c.max_total_connections), (false, Limit(Some(5))));
    assert_eq!(sources.len(), 3);
    let lines = changes(&started, &c);
    assert!(lines.contains(&"max_total_connections: off -> 5".to_string()), "{lines:?}");
    assert!(lines.contains(&"defaults.max_connections: 50 -> 10".to_string()), "{lines:?}");
    assert!(lines.contains(&"enforce: true -> false".to_string()), "{lines:?}");
    // Without a base (the pod's own config) the overrides go over what it started with.
    let (c, _) = live(None, &[("wl", "cap: {connections: 3}")]).apply(&started).unwrap();
    assert_eq!((c.defaults.max_connections, c.max_total_connections), (Limit(Some(50)), Limit(Some(3))));
}

#[test]
fn an_invalid_result_is_refused_and_tags_follow_the_content() {
    let started = Config::default();
    let bad = live(None, &[("wl", "defaults: {idle_timeout: 0}")]);
    let e = bad.apply(&started).unwrap_err();
    assert!(e.contains("defaults.idle_timeout"), "{e}");
    let a = live(None, &[("wl", "cap: {connections: 3}")]);
    let b = live(None, &[("wl", "cap: {connections: 4}")]);
    assert_ne!(a.tag(), b.tag());
    assert_eq!(a.tag(), a.clone().tag());
    assert!(serde_norway::from_str::<PolicyPatch>("listen: 1.2.3.4:5").is_err(), "only policy keys");
}

#[test]
fn the_latest_reclaim_is_the_one() {
    let l = live(
        None,
        &[
            ("ns", "reclaim: {at: '2026-12-07T10:00:00Z'}"),
            ("wl", "reclaim: {at: '2026-12-07T10:05:00Z', idle_over: 60s}"),
        ],
    );
    let r = l.reclaim().unwrap();
    assert_eq!((r.at.as_str(), r.idle_over), ("2026-12-07T10:05:00Z", Some(Timeout(Some(Duration::from_secs(60))))));
}

#[test]
fn a_reload_keeps_the_live_policy_laid_over_the_file() {
    let status = status::Status::default();
    let file = Config::from_yaml("defaults: {max_connections: 50}", "t").unwrap();
    assert_eq!(status.overlay(file.clone()), file, "no live policy: the file as it is");
    let l = live(None, &[("wl", "cap: {connections: 3}")]);
    let (applied, sources) = l.apply(&file).unwrap();
    status.applied(l.clone(), l.tag(), sources, true, std::time::Instant::now());
    // The file changes (a reload): the live policy stays on top of the new content.
    let edited = Config::from_yaml("defaults: {max_connections: 40}", "t").unwrap();
    let c = status.overlay(edited);
    assert_eq!((c.defaults.max_connections, c.max_total_connections), (Limit(Some(40)), Limit(Some(3))));
    assert_eq!(applied.max_total_connections, Limit(Some(3)));
    assert_eq!(status.applied_total.get(), 1);
    // A reclaim is acted on once.
    let r = Reclaim { at: "2026-12-07T10:00:00Z".into(), idle_over: None, by: None };
    assert!(status.take_reclaim(&r));
    assert!(!status.take_reclaim(&r));
}
