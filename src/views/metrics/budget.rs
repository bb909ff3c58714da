//! The budget series of a sidecar with `budget.coordinator`: its share, the budget, what it holds, how old
//! the share is and whether the fallback cap is in force. Labelled by the budget's name (`none` while no
//! answer has come), so the fleet's alerts sum them by namespace and budget.

use super::opts;
use crate::budget::lease::Source;
use crate::views::stats::BudgetStats;
use prometheus::{GaugeVec, IntGaugeVec, Registry};

pub(super) struct BudgetMetrics {
    connections: IntGaugeVec,
    share: IntGaugeVec,
    max_connections: IntGaugeVec,
    pods: IntGaugeVec,
    age: GaugeVec,
    fallback: IntGaugeVec,
}

impl BudgetMetrics {
    pub(super) fn new(r: &Registry) -> BudgetMetrics {
        let gauge = |name: &str, help: &str| {
            let g = IntGaugeVec::new(opts(name, help), &["budget"]).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let age = GaugeVec::new(
            opts("budget_share_age_seconds", "seconds since the budget coordinator's last answer"),
            &["budget"],
        )
        .expect("valid metric");
        r.register(Box::new(age.clone())).expect("unique metric");
        BudgetMetrics {
            connections: gauge("budget_connections", "connections this pod holds against its budget share"),
            share: gauge("budget_share", "this pod's share of its workload budget (absent: no cap)"),
            max_connections: gauge("budget_max_connections", "the workload budget across all its pods"),
            pods: gauge("budget_pods", "pods sharing the workload budget"),
            age,
            fallback: gauge("budget_fallback", "1 while the fallback cap is in force (no current share)"),
        }
    }

    pub(super) fn update(&self, b: &BudgetStats) {
        let name = b.name.as_deref().unwrap_or("none");
        for g in [&self.connections, &self.share, &self.max_connections, &self.pods, &self.fallback] {
            g.reset();
        }
        self.age.reset();
        let l = &[name];
        self.connections.with_label_values(l).set(i64::from(b.connections));
        self.fallback.with_label_values(l).set(i64::from(b.source == Source::Fallback.as_str()));
        for (g, v) in [(&self.share, b.share), (&self.max_connections, b.max_connections), (&self.pods, b.pods)] {
            if let Some(v) = v {
                g.with_label_values(l).set(i64::from(v));
            }
        }
        if let Some(age) = b.age_seconds {
            self.age.with_label_values(l).set(age);
        }
    }
}
