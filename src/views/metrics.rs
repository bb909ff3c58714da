//! Prometheus metrics (prefix `pgwarden_`) in one explicit registry, owned by the admin server that serves
//! them.
//!
//! Per-client series are rebuilt from the stats snapshot at every scrape, so they never drift from
//! `/clients`. The `client` label is bounded: the first `max_tracked_clients` clients seen keep their own
//! label; the rest share `other`; a client with leak suspects always gets its own label. Every `_total`
//! series only goes up, also when its clients are forgotten or promoted (see `metrics::labels`). Upstream
//! dial metrics are recorded when they happen (in `state::DialMetrics`) and registered here.

mod budget;
mod labels;

use super::stats::{ClientStats, Snapshot};
use crate::clients::latency::{Hist, BOUNDS_US};
use crate::clients::ClientEntry;
use crate::pods::PodDirectory;
use crate::state::State;
use crate::vocab::{CloseReason, RefuseReason};
use labels::{Counts, Labels, Live, OTHER};
use prometheus::proto::{self, Bucket, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Exporter {
    registry: Registry,
    connections: IntGaugeVec,
    max_connections: IntGaugeVec,
    opened: IntCounterVec,
    refused: IntCounterVec,
    closed: IntCounterVec,
    would_refuse: IntCounterVec,
    would_close: IntCounterVec,
    canceled: IntCounterVec,
    would_cancel: IntCounterVec,
    leak_suspects: IntGaugeVec,
    oldest_iit: GaugeVec,
    /// Gateway mode: the pod directory and its series.
    pod_identity: Option<PodIdentityMetrics>,
    /// Workload budgets (`budget.coordinator`): the share and what this pod holds.
    budget: Option<budget::BudgetMetrics>,
    /// Which label each client is exported under, and the counts that keep `_total` series monotonic;
    /// serialises scrapes.
    labels: Mutex<Labels>,
}

macro_rules! register {
    ($registry:expr, $metric:expr) => {{
        let m = $metric.expect("valid metric");
        $registry.register(Box::new(m.clone())).expect("unique metric");
        m
    }};
}

struct PodIdentityMetrics {
    directory: Arc<PodDirectory>,
    pods: IntGauge,
    synced: IntGauge,
    unknown_peers: IntCounter,
}

impl PodIdentityMetrics {
    fn new(r: &Registry, directory: Arc<PodDirectory>) -> PodIdentityMetrics {
        PodIdentityMetrics {
            directory,
            pods: register!(r, IntGauge::with_opts(opts("pod_identity_pods", "gateway mode: pods known by IP"))),
            synced: register!(
                r,
                IntGauge::with_opts(opts(
                    "pod_identity_synced",
                    "gateway mode: 1 once every watched namespace was listed"
                ))
            ),
            unknown_peers: register!(
                r,
                IntCounter::with_opts(opts(
                    "pod_identity_unknown_peers_total",
                    "gateway mode: connections from an address no known pod carries (named peer:<address>)"
                ))
            ),
        }
    }

    fn update(&self) {
        self.pods.set(self.directory.len() as i64);
        self.synced.set(self.directory.synced() as i64);
        let total = self.directory.unknown_peers_total();
        self.unknown_peers.inc_by(total.saturating_sub(self.unknown_peers.get()));
    }
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("pgwarden")
}

impl Exporter {
    pub fn new(state: &State) -> Exporter {
        let pod = &state.pod;
        let r = Registry::new();
        r.register(Box::new(state.dials.duration.clone())).expect("unique metric");
        r.register(Box::new(state.dials.errors.clone())).expect("unique metric");
        r.register(Box::new(state.local.fd_exhausted.clone())).expect("unique metric");
        r.register(Box::new(state.local.log_lines_dropped.clone())).expect("unique metric");
        r.register(Box::new(state.local.admin_connections_shed.clone())).expect("unique metric");
        r.register(Box::new(state.local.client_keys_refused.clone())).expect("unique metric");
        r.register(Box::new(state.detector().closed_dropped())).expect("unique metric");
        r.register(Box::new(state.local.awaiting_startup.clone())).expect("unique metric");
        if state.settings().config.control.url.is_some() {
            r.register(Box::new(state.live.failing.clone())).expect("unique metric");
            r.register(Box::new(state.live.applied_total.clone())).expect("unique metric");
            r.register(Box::new(state.events.dropped.clone())).expect("unique metric");
        }
        let client = &["client"];
        let client_reason = &["client", "reason"];
        let build = register!(r, IntGaugeVec::new(opts("build_info", "pgwarden build (value 1)"), &["version"]));
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        if pod.in_kubernetes() {
            let info = register!(
                r,
                IntGaugeVec::new(opts("info", "the pod pgwarden runs in (value 1)"), &["pod", "namespace", "workload"])
            );
            let v = |s: &Option<String>| s.clone().unwrap_or_default();
            info.with_label_values(&[v(&pod.pod), v(&pod.namespace), v(&pod.workload)]).set(1);
        }
        let pod_identity = state.peers.clone().map(|d| PodIdentityMetrics::new(&r, d));
        let budget = state.budget.enabled.then(|| budget::BudgetMetrics::new(&r));
        Exporter {
            pod_identity,
            budget,
            connections: register!(
                r,
                IntGaugeVec::new(opts("client_connections", "connections by client and state"), &["client", "state"])
            ),
            max_connections: register!(
                r,
                IntGaugeVec::new(opts("client_max_connections", "per-client cap (absent when unlimited)"), client)
            ),
            opened: register!(
                r,
                IntCounterVec::new(opts("client_connections_opened_total", "connections admitted"), client)
            ),
            refused: register!(
                r,
                IntCounterVec::new(opts("client_connections_refused_total", "connections refused"), client_reason)
            ),
            closed: register!(
                r,
                IntCounterVec::new(opts("client_connections_closed_total", "connections closed"), client_reason)
            ),
            would_refuse: register!(
                r,
                IntCounterVec::new(
                    opts("client_would_refuse_total", "report-only: connections that would have been refused"),
                    client_reason
                )
            ),
            would_close: register!(
                r,
                IntCounterVec::new(
                    opts("client_would_close_total", "report-only: connections that would have been closed"),
                    client_reason
                )
            ),
            canceled: register!(
                r,
                IntCounterVec::new(
                    opts("client_queries_canceled_total", "queries cancelled at query_timeout"),
                    client_reason
                )
            ),
            would_cancel: register!(
                r,
                IntCounterVec::new(
                    opts("client_would_cancel_total", "report-only: queries that would have been cancelled"),
                    client_reason
                )
            ),
            leak_suspects: register!(
                r,
                IntGaugeVec::new(opts("client_leak_suspects", "connections suspected leaked"), client)
            ),
            oldest_iit: register!(
                r,
                GaugeVec::new(
                    opts("client_oldest_idle_in_transaction_seconds", "longest idle-in-transaction time"),
                    client
                )
            ),
            registry: r,
            labels: Mutex::default(),
        }
    }

    /// Rebuilds the per-client series from `snap` and encodes everything in the text format.
    pub fn render(&self, snap: &Snapshot, max_tracked: usize) -> String {
        let mut labels = self.labels.lock().unwrap_or_else(|e| e.into_inner());
        let stats: Vec<(ClientStats, &ClientEntry)> =
            snap.clients.iter().map(|e| (snap.client(e), e.as_ref())).collect();
        let live: Vec<Live<'_>> = stats
            .iter()
            .map(|(s, e)| Live {
                key: s.client.as_str(),
                entry: e.generation,
                counts: counts_of(e),
                suspected: s.leak_suspected,
            })
            .collect();
        let (label_of, series) = labels.scrape(&live, max_tracked);
        for v in [&self.connections, &self.max_connections, &self.leak_suspects] {
            v.reset();
        }
        for v in [&self.opened, &self.refused, &self.closed, &self.would_refuse, &self.would_close] {
            v.reset();
        }
        for v in [&self.canceled, &self.would_cancel] {
            v.reset();
        }
        self.oldest_iit.reset();
        if let Some(p) = &self.pod_identity {
            p.update();
        }
        if let (Some(m), Some(b)) = (&self.budget, &snap.budget) {
            m.update(b);
        }
        for ((s, _), l) in stats.iter().zip(&label_of) {
            let l = l.as_str();
            for (state, n) in [
                ("active", s.active),
                ("idle", s.idle),
                ("idle_in_transaction", s.idle_in_transaction),
                ("waiting", s.waiting),
            ] {
                self.connections.with_label_values(&[l, state]).add(n as i64);
            }
            if l != OTHER {
                if let Some(cap) = s.max_connections {
                    self.max_connections.with_label_values(&[l]).set(cap as i64);
                }
            }
            self.leak_suspects.with_label_values(&[l]).add(s.suspect_connections as i64);
            if let Some(secs) = s.oldest_idle_in_transaction_seconds {
                let g = self.oldest_iit.with_label_values(&[l]);
                g.set(g.get().max(secs));
            }
        }
        for (l, c) in &series {
            self.opened.with_label_values(&[l]).inc_by(c.opened);
            for &r in RefuseReason::ALL {
                add(&self.refused, l, r.as_str(), c.refused[r as usize]);
                add(&self.would_refuse, l, r.as_str(), c.would_refuse[r as usize]);
            }
            for &r in CloseReason::ALL {
                add(&self.closed, l, r.as_str(), c.closed[r as usize]);
                add(&self.would_close, l, r.as_str(), c.would_close[r as usize]);
            }
            add(&self.canceled, l, "query_timeout", c.canceled);
            add(&self.would_cancel, l, "query_timeout", c.would_cancel);
        }
        let mut families = self.registry.gather();
        families.extend(latency_families(&series).into_iter().filter(|f| !f.get_metric().is_empty()));
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out).expect("text encoding");
        String::from_utf8(out).expect("utf-8")
    }
}

/// A client's counters, read once.
fn counts_of(e: &ClientEntry) -> Counts {
    let c = &e.counters;
    Counts {
        opened: c.opened.load(std::sync::atomic::Ordering::Relaxed),
        refused: std::array::from_fn(|i| c.refused.get(RefuseReason::ALL[i])),
        would_refuse: std::array::from_fn(|i| c.would_refuse.get(RefuseReason::ALL[i])),
        closed: std::array::from_fn(|i| c.closed.get(CloseReason::ALL[i])),
        would_close: std::array::from_fn(|i| c.would_close.get(CloseReason::ALL[i])),
        canceled: c.canceled.load(std::sync::atomic::Ordering::Relaxed),
        would_cancel: c.would_cancel.load(std::sync::atomic::Ordering::Relaxed),
        query: e.latency.query.total(),
        transaction: e.latency.transaction.total(),
        slot_wait: e.latency.slot_wait.total(),
    }
}

/// The latency histograms, one series per `client` label (in label order, so a scrape's output is stable).
fn latency_families(series: &HashMap<String, Counts>) -> Vec<MetricFamily> {
    let mut labels: Vec<&String> = series.keys().collect();
    labels.sort();
    let family = |name: &str, help: &str, hist: fn(&Counts) -> &Hist| {
        let metrics = labels.iter().map(|l| histogram_metric(l, hist(&series[*l]))).collect();
        let mut f = MetricFamily::default();
        f.set_name(format!("pgwarden_{name}"));
        f.set_help(help.to_string());
        f.set_field_type(MetricType::HISTOGRAM);
        f.set_metric(metrics);
        f
    };
    vec![
        family(
            "client_query_duration_seconds",
            "a Query, or a batch up to Sync, until the ReadyForQuery that leaves nothing pending",
            |c| &c.query,
        ),
        family(
            "client_transaction_duration_seconds",
            "from leaving idle to idle again outside a transaction (an autocommit statement is one)",
            |c| &c.transaction,
        ),
        family("client_slot_wait_seconds", "from a connection's arrival to its slot (0 when granted at once)", |c| {
            &c.slot_wait
        }),
    ]
}

fn histogram_metric(client: &str, h: &Hist) -> Metric {
    let mut label = LabelPair::default();
    label.set_name("client".to_string());
    label.set_value(client.to_string());
    let mut cumulative = 0;
    let buckets = BOUNDS_US
        .iter()
        .zip(&h.buckets)
        .map(|(&bound, &n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(bound as f64 / 1e6);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut hist = proto::Histogram::default();
    hist.set_sample_count(h.count());
    hist.set_sample_sum(h.sum_us as f64 / 1e6);
    hist.set_bucket(buckets);
    let mut m = Metric::default();
    m.set_label(vec![label]);
    m.set_histogram(hist);
    m
}

fn add(v: &IntCounterVec, client: &str, reason: &str, n: u64) {
    if n > 0 {
        v.with_label_values(&[client, reason]).inc_by(n);
    }
}
