//! What guard found: the leak suspects, cap refusals and connections left open that it saw during the run,
//! each kept from the first time it was seen (with that time) and updated with the latest evidence.
//! Pure: it reads the same views the admin API serves, taken by the caller.

use crate::views::stats::{ClientStats, ConnectionStats, LeaksResponse};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

/// A kind of finding; `--fail-on` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    IdleInTransaction,
    IdleWhileClientGrew,
    IdleWhileClientAtCap,
    /// Connections refused (or queued past `wait_timeout`, or would have been in report-only mode) at a cap.
    RefusedAtCap,
    /// Still open when COMMAND exited (and `--exit-grace` later).
    OpenAtExit,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::IdleInTransaction,
        Kind::IdleWhileClientGrew,
        Kind::IdleWhileClientAtCap,
        Kind::RefusedAtCap,
        Kind::OpenAtExit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::IdleInTransaction => "idle_in_transaction",
            Kind::IdleWhileClientGrew => "idle_while_client_grew",
            Kind::IdleWhileClientAtCap => "idle_while_client_at_cap",
            Kind::RefusedAtCap => "refused_at_cap",
            Kind::OpenAtExit => "open_at_exit",
        }
    }

    /// `--fail-on`: `all`, `none`, or kinds separated by commas.
    pub fn parse_list(s: &str) -> Result<Vec<Kind>, String> {
        match s.trim() {
            "all" => return Ok(Kind::ALL.to_vec()),
            "none" => return Ok(Vec::new()),
            _ => {}
        }
        s.split(',')
            .map(|k| {
                let k = k.trim();
                Kind::ALL.into_iter().find(|kind| kind.as_str() == k).ok_or_else(|| {
                    let names: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                    format!("unknown kind {k:?} (all, none, or a comma-separated list of {})", names.join(", "))
                })
            })
            .collect()
    }
}

/// One finding, as reported on stderr, in `--json` and as a JUnit test case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub client: String,
    /// Seconds from guard's start to when it was first seen.
    pub flagged_at_seconds: f64,
    /// The connection's evidence (absent for `refused_at_cap`, which is about the client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<Evidence>,
    /// `refused_at_cap`: how many connections were refused or timed out waiting at the client's caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<u64>,
}

/// A connection as it was last seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub backend_pid: Option<i32>,
    pub peer: String,
    pub state: String,
    pub age_seconds: f64,
    /// How long it had been in `state`.
    pub state_seconds: f64,
    /// Redacted (or not) as `stats.statement_text` says.
    pub last_statement: Option<String>,
    /// The W3C trace id the session's `application_name` last carried (OpenTelemetry), when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Where it was borrowed, else what it ran last, from the statements' query tags (`borrowed at k=v …`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// How it ended, if pgwarden closed it (e.g. `idle_in_transaction_timeout`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_reason: Option<String>,
}

impl Evidence {
    fn of(c: &ConnectionStats) -> Evidence {
        Evidence {
            backend_pid: c.backend_pid,
            peer: c.peer.clone(),
            state: c.state.clone(),
            age_seconds: c.age_seconds,
            state_seconds: c.state_seconds,
            last_statement: c.last_statement.clone(),
            trace_id: c.trace_id.clone(),
            code: crate::views::tags::code_of(c),
            closed_reason: c.closed_reason.clone(),
        }
    }
}

#[derive(Default)]
pub struct Collector {
    findings: Vec<Finding>,
    /// (connection id, kind) → index in `findings`.
    by_conn: HashMap<(u64, Kind), usize>,
    /// Client → index of its `refused_at_cap` finding.
    by_client: HashMap<String, usize>,
}

impl Collector {
    /// The suspects in a `/leaks` view taken `at` after the start.
    pub fn observe_leaks(&mut self, at: Duration, leaks: &LeaksResponse) {
        for report in &leaks.leaks {
            for c in &report.suspects {
                let Some(kind) = c.leak_reason.as_deref().and_then(leak_kind) else { continue };
                self.connection(at, kind, c);
            }
        }
    }

    /// The refusals at a cap in a `/clients` view taken `at` after the start.
    pub fn observe_clients(&mut self, at: Duration, clients: &[ClientStats]) {
        for c in clients {
            // The proxy started with guard: every refusal it counted happened during the run.
            let new = c.refused_total + c.would_refuse_total;
            if new == 0 {
                continue;
            }
            match self.by_client.get(&c.client) {
                Some(&i) => self.findings[i].refused = Some(new),
                None => {
                    self.by_client.insert(c.client.clone(), self.findings.len());
                    self.findings.push(Finding {
                        kind: Kind::RefusedAtCap,
                        client: c.client.clone(),
                        flagged_at_seconds: secs(at),
                        connection: None,
                        refused: Some(new),
                    });
                }
            }
        }
    }

    /// The connections still open once COMMAND has exited.
    pub fn open_at_exit(&mut self, at: Duration, open: &[ConnectionStats]) {
        for c in open.iter().filter(|c| c.closed_reason.is_none()) {
            self.connection(at, Kind::OpenAtExit, c);
        }
    }

    fn connection(&mut self, at: Duration, kind: Kind, c: &ConnectionStats) {
        let evidence = Evidence::of(c);
        match self.by_conn.get(&(c.id, kind)) {
            Some(&i) => self.findings[i].connection = Some(evidence),
            None => {
                self.by_conn.insert((c.id, kind), self.findings.len());
                self.findings.push(Finding {
                    kind,
                    client: c.client.clone(),
                    flagged_at_seconds: secs(at),
                    connection: Some(evidence),
                    refused: None,
                });
            }
        }
    }

    /// Everything found, in the order it was first seen.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }
}

fn leak_kind(reason: &str) -> Option<Kind> {
    [Kind::IdleInTransaction, Kind::IdleWhileClientGrew, Kind::IdleWhileClientAtCap]
        .into_iter()
        .find(|k| k.as_str() == reason)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::stats::LeakReport;

    fn conn(id: u64, state: &str, reason: Option<&str>, state_seconds: f64) -> ConnectionStats {
        ConnectionStats {
            id,
            client: "app".into(),
            peer: "127.0.0.1:5000".into(),
            peer_uid: None,
            peer_pid: None,
            backend_pid: Some(100 + id as i32),
            state: state.into(),
            age_seconds: state_seconds + 1.0,
            state_seconds,
            last_statement: Some("SELECT $1".into()),
            trace_id: None,
            query_tags: Default::default(),
            borrowed_tags: Default::default(),
            queries: 1,
            bytes_in: 0,
            bytes_out: 0,
            leak_suspect: reason.is_some(),
            leak_reason: reason.map(str::to_string),
            leak_evidence: None,
            leak_confidence: None,
            closed_seconds_ago: None,
            closed_reason: None,
        }
    }

    fn client(refused: u64, would: u64) -> ClientStats {
        let mut c: ClientStats = serde_json::from_value(serde_json::json!({
            "client": "app", "open": 1, "active": 0, "idle": 1, "idle_in_transaction": 0, "waiting": 0,
            "max_connections": 2, "opened_total": 1, "closed_total": 0, "refused_total": 0, "timed_out_total": 0,
            "abandoned_total": 0, "would_refuse_total": 0, "would_close_total": 0, "oldest_idle_seconds": null,
            "oldest_idle_in_transaction_seconds": null, "leak_suspected": false, "suspect_connections": 0,
            "leak_reasons": []
        }))
        .unwrap();
        c.refused_total = refused;
        c.would_refuse_total = would;
        c
    }

    #[test]
    fn a_suspect_is_one_finding_from_when_it_was_first_seen_with_the_latest_evidence() {
        let mut found = Collector::default();
        let leaks = |state_seconds| LeaksResponse {
            leaks: vec![LeakReport {
                tags: None,
                stats: client(0, 0),
                suspects: vec![conn(1, "idle in transaction", Some("idle_in_transaction"), state_seconds)],
            }],
        };
        found.observe_leaks(Duration::from_millis(2500), &leaks(5.0));
        found.observe_leaks(Duration::from_secs(4), &leaks(6.5));
        let mut closed = leaks(7.0);
        closed.leaks[0].suspects[0].closed_reason = Some("idle_in_transaction_timeout".into());
        found.observe_leaks(Duration::from_secs(5), &closed);
        let f = found.findings();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].kind, f[0].flagged_at_seconds), (Kind::IdleInTransaction, 2.5));
        let e = f[0].connection.as_ref().unwrap();
        assert_eq!((e.state_seconds, e.backend_pid), (7.0, Some(101)));
        assert_eq!(e.closed_reason.as_deref(), Some("idle_in_transaction_timeout"));
    }

    #[test]
    fn refusals_are_one_finding_per_client_counting_enforced_and_report_only() {
        let mut found = Collector::default();
        found.observe_clients(Duration::from_secs(1), &[client(0, 0)]);
        assert!(found.findings().is_empty());
        found.observe_clients(Duration::from_secs(2), &[client(2, 0)]);
        found.observe_clients(Duration::from_secs(3), &[client(3, 1)]);
        let f = found.findings();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].kind, f[0].refused, f[0].flagged_at_seconds), (Kind::RefusedAtCap, Some(4), 2.0));
    }

    #[test]
    fn connections_open_at_exit_are_findings_and_closed_ones_are_not() {
        let mut found = Collector::default();
        let mut gone = conn(2, "idle", None, 1.0);
        gone.closed_reason = Some("idle_timeout".into());
        found.open_at_exit(Duration::from_secs(9), &[conn(1, "idle", None, 3.0), gone]);
        let f = found.findings();
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].kind, f[0].connection.as_ref().unwrap().backend_pid), (Kind::OpenAtExit, Some(101)));
    }

    #[test]
    fn fail_on_lists() {
        assert_eq!(Kind::parse_list("all").unwrap(), Kind::ALL.to_vec());
        assert!(Kind::parse_list("none").unwrap().is_empty());
        assert_eq!(
            Kind::parse_list("open_at_exit, idle_in_transaction").unwrap(),
            vec![Kind::OpenAtExit, Kind::IdleInTransaction]
        );
        assert!(Kind::parse_list("idle").unwrap_err().contains("open_at_exit"));
    }
}
