//! `pgwarden top` and `pgwarden leaks`: read a running proxy's admin API and print tables.
//!
//! Owns: the tiny HTTP GET client for the admin URL and the pure table renderers (unit-tested).

use super::stats::{ClientsResponse, LeaksResponse};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::net::TcpStream;

pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:9187";

/// The most of one answer the CLI reads (`top`, `leaks`, and `fleet` from a pod or Prometheus; a proxy's `/clients` at its `max_clients` is far
/// smaller): whatever answers on the admin URL cannot make the CLI hold more.
pub const MAX_ANSWER: usize = 32 << 20;

/// GETs `path` from the admin URL (`http://host:port`) and parses the JSON body, every string in it printable.
pub async fn get_json<T: serde::de::DeserializeOwned>(admin: &str, path: &str) -> anyhow::Result<T> {
    let body = get(admin, path).await?;
    crate::text::from_json_printable(&body).with_context(|| format!("{admin}{path} is not pgwarden's JSON"))
}

/// GETs `path` from the admin URL; the body of a 2xx answer as text.
pub async fn get_text(admin: &str, path: &str) -> anyhow::Result<String> {
    Ok(String::from_utf8_lossy(&get(admin, path).await?).into_owned())
}

/// The `host:port` of an admin URL, or why it is none (`http://host:port`, an optional trailing `/`).
pub fn admin_authority(admin: &str) -> Result<&str, String> {
    let authority = admin
        .strip_prefix("http://")
        .ok_or_else(|| format!("must be an http:// URL like {DEFAULT_ADMIN}, got {admin:?}"))?
        .trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("must be http://HOST:PORT with no path, got {admin:?}"));
    }
    Ok(authority)
}

async fn get(admin: &str, path: &str) -> anyhow::Result<Bytes> {
    let authority = admin_authority(admin).map_err(|m| anyhow!("--admin {m}"))?;
    let fetch = async {
        let stream =
            TcpStream::connect(authority).await.with_context(|| format!("cannot reach the admin API at {admin}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = Request::get(path).header("host", authority).body(Empty::<Bytes>::new())?;
        let resp = sender
            .send_request(req)
            .await
            .with_context(|| format!("{admin}{path}: no HTTP answer (is {admin} a pgwarden admin API?)"))?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| anyhow!("{admin}{path}: an answer over {} MiB, or cut short ({e})", MAX_ANSWER >> 20))?
            .to_bytes();
        if !status.is_success() {
            bail!("{admin}{path} answered {status}");
        }
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(10), fetch).await.map_err(|_| anyhow!("{admin}{path} timed out"))?
}

/// Seconds rounded, `-` for none (the tables' age columns).
pub fn opt_secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |s| format!("{s:.0}s"))
}

/// Milliseconds with a precision that suits the size (`0.42ms`, `12.3ms`, `1500ms`), `-` for none.
pub fn opt_ms(v: Option<f64>) -> String {
    match v {
        None => "-".to_string(),
        Some(ms) if ms < 10.0 => format!("{ms:.2}ms"),
        Some(ms) if ms < 100.0 => format!("{ms:.1}ms"),
        Some(ms) => format!("{ms:.0}ms"),
    }
}

/// The `top` table: leaking clients first, then by open connections.
pub fn clients_table(r: &ClientsResponse) -> String {
    let mut clients: Vec<_> = r.clients.iter().collect();
    clients.sort_by(|a, b| {
        b.suspect_connections.cmp(&a.suspect_connections).then(b.open.cmp(&a.open)).then(a.client.cmp(&b.client))
    });
    let mut out = String::new();
    if let Some(pod) = &r.identity.pod {
        let _ = writeln!(out, "pod {pod} ({})", r.identity.namespace.as_deref().unwrap_or("-"));
    }
    if let Some(b) = &r.budget {
        let _ = writeln!(out, "{}", budget_line(b));
    }
    let _ = writeln!(
        out,
        "{:<32} {:>5} {:>4} {:>6} {:>5} {:>5} {:>5} {:>8} {:>9} {:>7} {:>9} {:>11} {:>8}  LEAK",
        "CLIENT",
        "OPEN",
        "CAP",
        "ACTIVE",
        "IDLE",
        "INTX",
        "WAIT",
        "REFUSED",
        "TIMEDOUT",
        "SUSPECT",
        "P99_QUERY",
        "OLDEST_IDLE",
        "OLD_INTX",
    );
    for c in clients {
        let cap = c.max_connections.map_or("-".to_string(), |n| n.to_string());
        let leak = if c.leak_suspected { c.leak_reasons.join(",") } else { String::new() };
        let _ = writeln!(
            out,
            "{:<32} {:>5} {:>4} {:>6} {:>5} {:>5} {:>5} {:>8} {:>9} {:>7} {:>9} {:>11} {:>8}  {}",
            truncate(&c.client, 32),
            c.open,
            cap,
            c.active,
            c.idle,
            c.idle_in_transaction,
            c.waiting,
            c.refused_total,
            c.timed_out_total,
            c.suspect_connections,
            opt_ms(c.latency.query_p99_ms),
            opt_secs(c.oldest_idle_seconds),
            opt_secs(c.oldest_idle_in_transaction_seconds),
            leak
        );
    }
    out
}

/// One line on the pod's workload budget: what it holds against which cap, and where the cap comes from.
pub fn budget_line(b: &crate::views::stats::BudgetStats) -> String {
    let cap = b.cap.map_or("no cap".to_string(), |c| format!("cap {c}"));
    let why = match b.source.as_str() {
        "share" => "its share".to_string(),
        "kept" => "its last share, kept: the coordinator does not answer".to_string(),
        "fallback" => "the fallback cap: no current share from the coordinator".to_string(),
        other => other.to_string(),
    };
    let budget = match (&b.name, b.max_connections, b.pods) {
        (Some(name), Some(max), Some(pods)) => format!(" of workload budget {name} ({max} across {pods} pods)"),
        _ => String::new(),
    };
    let error = b.error.as_deref().map(|e| format!("; last error: {e}")).unwrap_or_default();
    format!("budget: holds {} of {cap} = {why}{budget}{error}", b.connections)
}

/// The `leaks` report: each suspected client and the evidence of each suspect connection.
pub fn leaks_report(r: &LeaksResponse) -> String {
    if r.leaks.is_empty() {
        return "no leaks suspected\n".to_string();
    }
    let mut out = String::new();
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    for l in &r.leaks {
        let s = &l.stats;
        let cap = s.max_connections.map_or("no cap".to_string(), |n| format!("cap {n}"));
        let holds = plural(s.open as u64, "connection", "connections");
        let tail = format!(
            "reasons: {}; {} refused, {} timed out",
            s.leak_reasons.join(", "),
            s.refused_total,
            s.timed_out_total
        );
        if s.suspect_connections > 0 {
            let _ = writeln!(
                out,
                "LEAK SUSPECTED: client {} holds {holds} ({cap}), {} suspect; {tail}",
                s.client, s.suspect_connections
            );
        } else {
            // Only reclaimed suspects are left: the evidence of a leak pgwarden already closed.
            let closed = plural(l.suspects.len() as u64, "suspect connection", "suspect connections");
            let _ = writeln!(
                out,
                "LEAK RECLAIMED: client {}: {closed} closed by pgwarden; it holds {holds} now ({cap}); {tail}",
                s.client
            );
        }
        if let Some(tags) = &l.tags {
            let _ = writeln!(out, "code: {tags}");
        }
        let states: Vec<String> = l
            .suspects
            .iter()
            .map(|c| match (&c.closed_reason, c.closed_seconds_ago) {
                (Some(why), Some(ago)) => format!("closed {why} {ago:.0}s ago"),
                _ => c.state.clone(),
            })
            .collect();
        let w = states.iter().map(|s| s.chars().count()).max().unwrap_or(0).max(5);
        let _ =
            writeln!(out, "  {:>8} {:<24} {:<w$} {:>8} {:>8}  LAST STATEMENT", "PID", "REASON", "STATE", "IDLE", "AGE");
        for (c, state) in l.suspects.iter().zip(&states) {
            let _ = writeln!(
                out,
                "  {:>8} {:<24} {:<w$} {:>7.0}s {:>7.0}s  {}{}",
                c.backend_pid.map_or("-".to_string(), |p| p.to_string()),
                c.leak_reason.as_deref().unwrap_or("-"),
                state,
                c.state_seconds,
                c.age_seconds,
                c.last_statement.as_deref().unwrap_or("-").replace('\n', " "),
                c.trace_id.as_deref().map(|t| format!("  (trace {t})")).unwrap_or_default()
            );
        }
        // The evidence of the longest-idle suspect, with how sure it is.
        if let Some(c) = l
            .suspects
            .iter()
            .filter(|c| c.leak_evidence.is_some())
            .max_by(|a, b| a.state_seconds.total_cmp(&b.state_seconds))
        {
            let confidence = c.leak_confidence.as_deref().unwrap_or("certain");
            let _ = writeln!(out, "  evidence ({confidence}): {}", c.leak_evidence.as_deref().unwrap_or_default());
        }
    }
    out
}

/// At most `n` characters, the last one `…` when cut.
pub fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::stats::{ClientStats, ConnectionStats, LeakReport};

    fn client(name: &str, open: u32, suspects: u32) -> ClientStats {
        ClientStats {
            client: name.into(),
            application_name: Some(name.into()),
            user: None,
            database: None,
            namespace: None,
            workload: None,
            pod: None,
            open,
            active: 0,
            idle: open,
            idle_in_transaction: 0,
            waiting: 0,
            max_connections: Some(5),
            opened_total: open as u64,
            closed_total: 0,
            refused_total: 3,
            timed_out_total: 0,
            abandoned_total: 0,
            would_refuse_total: 0,
            would_close_total: 0,
            queries_canceled_total: 0,
            would_cancel_total: 0,
            oldest_idle_seconds: Some(12.4),
            oldest_idle_in_transaction_seconds: None,
            leak_suspected: suspects > 0,
            suspect_connections: suspects,
            leak_reasons: if suspects > 0 { vec!["idle_while_client_at_cap".into()] } else { vec![] },
            latency: Default::default(),
            leak_detection: Default::default(),
        }
    }

    #[test]
    fn top_shows_each_clients_recent_p99_query_latency() {
        let mut slow = client("slow", 1, 0);
        slow.latency.query_p99_ms = Some(12.34);
        let r =
            ClientsResponse { budget: None, identity: Default::default(), clients: vec![slow, client("quiet", 1, 0)] };
        let table = clients_table(&r);
        assert!(table.lines().next().unwrap().contains("P99_QUERY"));
        let row = |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap().to_string();
        assert!(row("slow").contains(" 12.3ms "), "{table}");
        assert!(row("quiet").split_whitespace().nth(10) == Some("-"), "{table}");
        assert_eq!((opt_ms(Some(0.4213)), opt_ms(Some(1499.6))), ("0.42ms".to_string(), "1500ms".to_string()));
    }

    #[test]
    fn top_sorts_leakers_first() {
        let r = ClientsResponse {
            budget: None,
            identity: Default::default(),
            clients: vec![client("big-healthy", 9, 0), client("leaky", 5, 4), client("small", 1, 0)],
        };
        let table = clients_table(&r);
        let rows: Vec<&str> = table.lines().skip(1).map(|l| l.split_whitespace().next().unwrap()).collect();
        assert_eq!(rows, ["leaky", "big-healthy", "small"]);
        assert!(table.lines().nth(1).unwrap().ends_with("idle_while_client_at_cap"));
    }

    #[test]
    fn top_shows_the_budget_line() {
        let b = crate::views::stats::BudgetStats {
            name: Some("images".into()),
            workload: Some("images".into()),
            max_connections: Some(6),
            pods: Some(4),
            share: Some(1),
            cap: Some(1),
            source: "share".into(),
            connections: 1,
            age_seconds: Some(3.0),
            reclaim_idle: true,
            error: None,
        };
        let r = ClientsResponse { budget: Some(b), identity: Default::default(), clients: vec![] };
        let first = clients_table(&r).lines().next().unwrap().to_string();
        assert_eq!(first, "budget: holds 1 of cap 1 = its share of workload budget images (6 across 4 pods)");
    }

    #[test]
    fn leaks_report_shows_evidence() {
        assert_eq!(leaks_report(&LeaksResponse { leaks: vec![] }), "no leaks suspected\n");
        let conn = ConnectionStats {
            id: 7,
            client: "leaky".into(),
            peer: "127.0.0.1:5".into(),
            peer_uid: None,
            peer_pid: None,
            backend_pid: Some(4242),
            state: "idle".into(),
            age_seconds: 60.0,
            state_seconds: 55.0,
            last_statement: Some("select * from images where id = ?".into()),
            trace_id: None,
            query_tags: Default::default(),
            borrowed_tags: Default::default(),
            queries: 1,
            bytes_in: 10,
            bytes_out: 10,
            leak_suspect: true,
            leak_reason: Some("idle_while_client_at_cap".into()),
            leak_evidence: None,
            leak_confidence: None,
            closed_seconds_ago: None,
            closed_reason: None,
        };
        let mut closed = conn.clone();
        closed.closed_seconds_ago = Some(3.0);
        closed.closed_reason = Some("idle_in_transaction_timeout".into());
        let r = LeaksResponse {
            leaks: vec![LeakReport { tags: None, stats: client("leaky", 5, 1), suspects: vec![conn, closed] }],
        };
        let text = leaks_report(&r);
        assert!(text.starts_with("LEAK SUSPECTED: client leaky holds 5 connections (cap 5), 1 suspect;"), "{text}");
        assert!(!text.contains("(s)"), "{text}");
        let only_live = LeaksResponse {
            leaks: vec![LeakReport {
                tags: None,
                stats: client("leaky", 5, 1),
                suspects: vec![r.leaks[0].suspects[0].clone()],
            }],
        };
        let live_text = leaks_report(&only_live);
        let row = live_text.lines().nth(2).unwrap();
        assert!(row.find("55s").unwrap() < 50, "STATE is as wide as its values, not 42: {live_text}");
        assert!(text.contains("4242") && text.contains("select * from images where id = ?"));
        assert!(text.contains("closed idle_in_transact"));
        // A client whose suspects were all reclaimed is no live leak: the report says so.
        let mut gone = client("leaky", 0, 0);
        gone.leak_reasons = vec!["idle_in_transaction".into()];
        let r = LeaksResponse {
            leaks: vec![LeakReport { tags: None, stats: gone, suspects: vec![r.leaks[0].suspects[1].clone()] }],
        };
        let text = leaks_report(&r);
        assert!(
            text.starts_with(
                "LEAK RECLAIMED: client leaky: 1 suspect connection closed by pgwarden; it holds 0 connections now"
            ),
            "{text}"
        );
    }
}
