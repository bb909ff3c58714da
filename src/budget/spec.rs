//! Which budget a workload has: the injector's list of budget entries (globs over namespace and workload),
//! else the `pgwarden.io/budget` annotation its pods carry.
//!
//! Owns: the entry format, its validation (every problem names the entry), and the lookup. An annotation
//! budget is the smallest value among the workload's pods, so a rollout that raises it takes effect once
//! the old pods are gone and one that lowers it at once: the budget is never exceeded by a rollout.

use crate::policy::glob;
use serde::Deserialize;

/// The annotation that gives a pod's workload a budget when no entry matches it (`"40"`).
pub const BUDGET_ANNOTATION: &str = "pgwarden.io/budget";
/// `"true"`: with the annotation budget, idle connections above a pod's share are closed.
pub const RECLAIM_ANNOTATION: &str = "pgwarden.io/budget-reclaim-idle";

/// Which workloads an entry is for: globs (`*`, `?`) over the namespace and the workload name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default = "any")]
    pub namespace: String,
    pub workload: String,
}

fn any() -> String {
    "*".into()
}

/// One budget: `max_connections` across every pod of each matching workload (each workload its own).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Entry {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match")]
    pub matches: Match,
    pub max_connections: u32,
    /// Close idle connections above a pod's share, so the workload's pools rebalance after a scale-out.
    #[serde(default)]
    pub reclaim_idle: bool,
    /// The fewest pods the workload runs (an HPA's `minReplicas`): a budget below it is refused.
    #[serde(default)]
    pub min_pods: Option<u32>,
}

/// The budget in force for one workload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Budget {
    /// The entry's name (`entries[i]` when unnamed), or `annotation`.
    pub name: String,
    pub max_connections: u32,
    pub reclaim_idle: bool,
}

impl Entry {
    pub fn label(&self, i: usize) -> String {
        self.name.clone().unwrap_or_else(|| format!("entries[{i}]"))
    }

    pub fn matches(&self, namespace: &str, workload: &str) -> bool {
        glob(self.matches.namespace.as_bytes(), namespace.as_bytes())
            && glob(self.matches.workload.as_bytes(), workload.as_bytes())
    }
}

fn literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?'])
}

/// Every problem names its entry: a budget of 0, a budget below its `min_pods`, an empty pattern, a
/// repeated name, or two entries that both match one workload (the same patterns, or a literal workload
/// of one that the other's globs also match; a workload only globs of two entries match is warned about
/// when it appears, and the first entry applies).
pub fn validate(entries: &[Entry]) -> Result<(), String> {
    for (i, e) in entries.iter().enumerate() {
        let at = format!("budgets.entries[{i}] ({})", e.label(i));
        if e.max_connections == 0 {
            return Err(format!("{at}: maxConnections must be at least 1"));
        }
        if e.matches.workload.is_empty() || e.matches.namespace.is_empty() {
            return Err(format!("{at}: match.namespace and match.workload must not be empty"));
        }
        if let Some(floor) = e.min_pods {
            if e.max_connections < floor {
                return Err(format!(
                    "{at}: maxConnections {} is below minPods {floor}: some pods would get no connection at all",
                    e.max_connections
                ));
            }
        }
        for (j, other) in entries[..i].iter().enumerate() {
            if e.name.is_some() && e.name == other.name {
                return Err(format!("{at}: the name is also used by budgets.entries[{j}]"));
            }
            let same = e.matches == other.matches;
            let overlap = |a: &Entry, b: &Entry| {
                literal(&a.matches.namespace)
                    && literal(&a.matches.workload)
                    && b.matches(&a.matches.namespace, &a.matches.workload)
            };
            if same || overlap(e, other) || overlap(other, e) {
                return Err(format!(
                    "{at}: matches the same workload as budgets.entries[{j}] ({}); a workload may have one budget",
                    other.label(j)
                ));
            }
        }
    }
    Ok(())
}

/// The budget of a workload: the first matching entry, else the smallest annotation budget of its pods
/// (`annotations`: each pod's `(budget, reclaim_idle)` annotation values, unparsed).
pub fn budget_of<'a>(
    entries: &[Entry],
    namespace: &str,
    workload: &str,
    annotations: impl Iterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> Option<Budget> {
    if let Some((i, e)) = entries.iter().enumerate().find(|(_, e)| e.matches(namespace, workload)) {
        return Some(Budget { name: e.label(i), max_connections: e.max_connections, reclaim_idle: e.reclaim_idle });
    }
    let mut best: Option<Budget> = None;
    for (budget, reclaim) in annotations {
        let Some(n) = budget.and_then(|b| parse_annotation(b).ok()) else { continue };
        let reclaim = reclaim.is_some_and(|r| r.trim() == "true");
        if best.as_ref().is_none_or(|b| n < b.max_connections) {
            best = Some(Budget { name: "annotation".into(), max_connections: n, reclaim_idle: reclaim });
        }
    }
    best
}

/// The value of `pgwarden.io/budget`: a whole number ≥ 1.
pub fn parse_annotation(value: &str) -> Result<u32, String> {
    match value.trim().parse::<u32>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("annotation {BUDGET_ANNOTATION}: {value:?} is not a whole number of connections ≥ 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ns: &str, workload: &str, max: u32) -> Entry {
        Entry {
            name: None,
            matches: Match { namespace: ns.into(), workload: workload.into() },
            max_connections: max,
            reclaim_idle: false,
            min_pods: None,
        }
    }

    #[test]
    fn entries_are_parsed_strictly() {
        let e: Vec<Entry> = serde_norway::from_str(
            "- name: images\n  match: {workload: image-*}\n  maxConnections: 40\n  reclaimIdle: true\n  minPods: 2\n",
        )
        .unwrap();
        assert_eq!(e[0].matches.namespace, "*");
        assert!(e[0].reclaim_idle);
        let bad = serde_norway::from_str::<Vec<Entry>>("- match: {workload: a}\n  maxConnection: 4\n").unwrap_err();
        assert!(bad.to_string().contains("maxConnection"), "{bad}");
    }

    #[test]
    fn validation_names_the_entry() {
        assert!(validate(&[entry("shop", "a", 4), entry("*", "b-*", 4)]).is_ok());
        let e = validate(&[entry("shop", "a", 0)]).unwrap_err();
        assert!(e.contains("budgets.entries[0] (entries[0])") && e.contains("at least 1"), "{e}");
        let mut floor = entry("shop", "a", 2);
        floor.min_pods = Some(3);
        floor.name = Some("images".into());
        let e = validate(&[floor]).unwrap_err();
        assert!(e.contains("(images)") && e.contains("below minPods 3"), "{e}");
        let e = validate(&[entry("shop", "a", 4), entry("shop", "a", 5)]).unwrap_err();
        assert!(e.contains("budgets.entries[1]") && e.contains("budgets.entries[0]"), "{e}");
        let e = validate(&[entry("*", "a*", 4), entry("shop", "api", 5)]).unwrap_err();
        assert!(e.contains("same workload"), "{e}");
        let mut named = entry("x", "y", 1);
        named.name = Some("n".into());
        let mut again = entry("z", "w", 1);
        again.name = Some("n".into());
        assert!(validate(&[named, again]).unwrap_err().contains("name"));
    }

    #[test]
    fn entry_first_then_the_smallest_annotation() {
        let entries = [entry("shop", "api", 10)];
        let b = budget_of(&entries, "shop", "api", std::iter::empty()).unwrap();
        assert_eq!((b.name.as_str(), b.max_connections), ("entries[0]", 10));
        let pods = [(Some("8"), None), (Some("6"), Some("true")), (Some("x"), None), (None, None)];
        let b = budget_of(&entries, "shop", "worker", pods.into_iter()).unwrap();
        assert_eq!((b.name.as_str(), b.max_connections, b.reclaim_idle), ("annotation", 6, true));
        assert!(budget_of(&entries, "other", "api", std::iter::empty()).is_none());
        assert!(parse_annotation("0").is_err() && parse_annotation("-1").is_err() && parse_annotation(" 4").is_ok());
    }
}
