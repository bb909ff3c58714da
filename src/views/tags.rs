//! Query tags in the views: each connection's (its last statement's, and the statement it was borrowed
//! with), and a client's summary over its suspects: "17 of 17 suspects borrowed at controller=uploads
//! action=resize". Read from the statement texts the registry keeps, when a view is built: nothing on the
//! relay's path.

use super::stats::ConnectionStats;
use crate::redact::tags::{extract, line};
use std::collections::{BTreeMap, HashMap};

/// The tags of `text` as a view shows them.
pub fn of(text: &str, extra_keys: &[String]) -> BTreeMap<String, String> {
    extract(text, extra_keys).into_iter().collect()
}

fn words(tags: &BTreeMap<String, String>) -> String {
    line(&tags.iter().filter(|(k, _)| k.as_str() != "traceparent").map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Where one suspect was borrowed (`borrowed at k=v …`), else what it ran last (`last ran k=v …`).
pub fn code_of(s: &ConnectionStats) -> Option<String> {
    match (words(&s.borrowed_tags), words(&s.query_tags)) {
        (b, _) if !b.is_empty() => Some(format!("borrowed at {b}")),
        (_, l) if !l.is_empty() => Some(format!("last ran {l}")),
        _ => None,
    }
}

/// The most common code location among `suspects`: where they were borrowed (else what they ran last).
pub fn summary(suspects: &[ConnectionStats]) -> Option<String> {
    let mut counts: HashMap<(bool, String), usize> = HashMap::new();
    for s in suspects {
        let (borrowed, text) = match (words(&s.borrowed_tags), words(&s.query_tags)) {
            (b, _) if !b.is_empty() => (true, b),
            (_, l) if !l.is_empty() => (false, l),
            _ => continue,
        };
        *counts.entry((borrowed, text)).or_default() += 1;
    }
    let ((borrowed, text), n) = counts.into_iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))?;
    let how = if borrowed { "borrowed at" } else { "last ran" };
    Some(format!("{n} of {} suspects {how} {text}", suspects.len()))
}
