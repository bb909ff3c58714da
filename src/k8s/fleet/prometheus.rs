//! The fleet's figures from Prometheus' HTTP API (`GET /api/v1/query`): one instant query per figure over
//! every sidecar's metrics, instead of one read per pod. The answers become the same [`PodReport`]s the pod
//! proxy gives (without evidence: Prometheus has no statements), so one `aggregate` ranks both.
//!
//! It relies on the labels a PodMonitor scrape adds (`namespace`, `pod`) and on `pgwarden_info{workload}`.
//! `http://` and `https://` URLs (system roots), with an optional path prefix (`http://host/prometheus`).

use super::{ClientFigures, Outcome, PodReport};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// A query per figure: its name, the aggregation, the metric and its own label matcher. `open` leaves out
/// `waiting` (a waiting connection holds no slot, as in `/clients`).
pub const QUERIES: [Query; 5] = [
    Query {
        figure: "open",
        by: "sum by (namespace, pod, client)",
        metric: "pgwarden_client_connections",
        matcher: "state!=\"waiting\"",
    },
    Query {
        figure: "suspects",
        by: "sum by (namespace, pod, client)",
        metric: "pgwarden_client_leak_suspects",
        matcher: "",
    },
    Query {
        figure: "refused",
        by: "sum by (namespace, pod, client)",
        metric: "pgwarden_client_connections_refused_total",
        matcher: "",
    },
    Query {
        figure: "idle_in_transaction",
        by: "max by (namespace, pod, client)",
        metric: "pgwarden_client_oldest_idle_in_transaction_seconds",
        matcher: "",
    },
    Query { figure: "workload", by: "max by (namespace, pod, workload)", metric: "pgwarden_info", matcher: "" },
];

#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub figure: &'static str,
    pub by: &'static str,
    pub metric: &'static str,
    pub matcher: &'static str,
}

/// One sample of an instant vector.
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub metric: BTreeMap<String, String>,
    /// `[timestamp, "value"]`.
    pub value: (f64, String),
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<Sample>,
}

/// The PromQL of one figure, limited to `namespace` when given.
pub fn query_text(q: &Query, namespace: Option<&str>) -> String {
    let mut matchers: Vec<String> = Vec::new();
    if let Some(ns) = namespace {
        matchers.push(format!("namespace=\"{}\"", ns.replace('\\', "\\\\").replace('"', "\\\"")));
    }
    if !q.matcher.is_empty() {
        matchers.push(q.matcher.to_string());
    }
    let selector = if matchers.is_empty() { String::new() } else { format!("{{{}}}", matchers.join(",")) };
    format!("{} ({}{selector})", q.by, q.metric)
}

/// Parses one `/api/v1/query` answer into its samples.
pub fn parse_answer(body: &[u8]) -> anyhow::Result<Vec<Sample>> {
    let a: Answer = crate::text::from_json_printable(body).context("not a Prometheus query answer")?;
    if a.status != "success" {
        bail!("Prometheus answered {}: {}", a.status, a.error.unwrap_or_default());
    }
    let data = a.data.ok_or_else(|| anyhow!("Prometheus answered no data"))?;
    if data.result_type != "vector" {
        bail!("Prometheus answered a {}, not a vector", data.result_type);
    }
    Ok(data.result)
}

/// Pod reports from the answers by figure name (as in [`QUERIES`]). A pod appears when any figure names it.
pub fn reports(answers: &BTreeMap<&str, Vec<Sample>>) -> Vec<PodReport> {
    let label = |s: &Sample, k: &str| s.metric.get(k).cloned().unwrap_or_default();
    let value = |s: &Sample| s.value.1.parse::<f64>().ok().filter(|v| v.is_finite());
    let mut workloads: BTreeMap<(String, String), String> = BTreeMap::new();
    for s in answers.get("workload").into_iter().flatten() {
        workloads.insert((label(s, "namespace"), label(s, "pod")), label(s, "workload"));
    }
    let mut pods: BTreeMap<(String, String), BTreeMap<String, ClientFigures>> = BTreeMap::new();
    for (figure, samples) in answers {
        if *figure == "workload" {
            continue;
        }
        for s in samples {
            let client = label(s, "client");
            let entry = pods.entry((label(s, "namespace"), label(s, "pod"))).or_default().entry(client.clone());
            let f = entry.or_insert_with(|| ClientFigures {
                client,
                open: 0,
                suspects: 0,
                refused_total: 0,
                oldest_idle_in_transaction_seconds: None,
                leak_reasons: Vec::new(),
            });
            let Some(v) = value(s) else { continue };
            match *figure {
                "open" => f.open = v.max(0.0) as u32,
                "suspects" => f.suspects = v.max(0.0) as u32,
                "refused" => f.refused_total = v.max(0.0) as u64,
                "idle_in_transaction" => f.oldest_idle_in_transaction_seconds = Some(v),
                _ => {}
            }
        }
    }
    for key in workloads.keys() {
        pods.entry(key.clone()).or_default();
    }
    pods.into_iter()
        .map(|((namespace, pod), clients)| PodReport {
            workload: workloads.get(&(namespace.clone(), pod.clone())).cloned().unwrap_or_else(|| "-".into()),
            namespace,
            pod,
            outcome: Outcome::Read { clients: clients.into_values().collect(), evidence: Vec::new() },
            identity_mismatch: None,
        })
        .collect()
}

/// Runs every query of [`QUERIES`] against `base` and returns the pod reports.
pub async fn read(base: &str, namespace: Option<&str>, timeout: Duration) -> anyhow::Result<Vec<PodReport>> {
    let mut answers = BTreeMap::new();
    for query in &QUERIES {
        let (figure, q) = (query.figure, query_text(query, namespace));
        let path = format!("api/v1/query?query={}", encode(&q));
        let body = tokio::time::timeout(timeout, get(base, &path))
            .await
            .map_err(|_| anyhow!("{base}: the {figure} query timed out"))??;
        answers.insert(figure, parse_answer(&body).with_context(|| format!("{base}: the {figure} query"))?);
    }
    Ok(reports(&answers))
}

/// Percent-encodes a query parameter value.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// GET `base` + `path` over HTTP/1.1 (TLS for https), the body of a 2xx answer.
async fn get(base: &str, path: &str) -> anyhow::Result<Bytes> {
    let (tls, rest) = if let Some(r) = base.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = base.strip_prefix("http://") {
        (false, r)
    } else {
        bail!("--prometheus must be an http:// or https:// URL, got {base:?}");
    };
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p.trim_end_matches('/')));
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => {
            (h.trim_start_matches('[').trim_end_matches(']'), p.parse::<u16>().context("bad port in --prometheus")?)
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let target = if prefix.is_empty() { format!("/{path}") } else { format!("/{prefix}/{path}") };
    let stream =
        TcpStream::connect((host, port)).await.with_context(|| format!("cannot reach Prometheus at {base}"))?;
    let req = hyper::Request::get(&target).header("host", authority).body(Empty::<Bytes>::new())?;
    let resp = if tls {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = crate::tls::server_name(host).map_err(|e| anyhow!(e))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await?;
        send(TokioIo::new(stream), req).await?
    } else {
        send(TokioIo::new(stream), req).await?
    };
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), crate::views::report::MAX_ANSWER)
        .collect()
        .await
        .map_err(|e| {
            anyhow!("{base}{target}: an answer over {} MiB, or cut short ({e})", crate::views::report::MAX_ANSWER >> 20)
        })?
        .to_bytes();
    if !status.is_success() && status != hyper::StatusCode::BAD_REQUEST && status.as_u16() != 422 {
        bail!("{base}{target} answered {status}");
    }
    Ok(body)
}

async fn send<I>(io: I, req: hyper::Request<Empty<Bytes>>) -> anyhow::Result<hyper::Response<hyper::body::Incoming>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(req).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_limited_to_a_namespace_and_encoded() {
        let q = query_text(&QUERIES[0], Some("shop"));
        assert_eq!(
            q,
            "sum by (namespace, pod, client) (pgwarden_client_connections{namespace=\"shop\",state!=\"waiting\"})"
        );
        assert_eq!(query_text(&QUERIES[1], None), "sum by (namespace, pod, client) (pgwarden_client_leak_suspects)");
        assert_eq!(encode("a b{x=\"1\"}"), "a%20b%7Bx%3D%221%22%7D");
    }

    #[test]
    fn errors_and_other_result_types_are_refused() {
        let e = parse_answer(br#"{"status":"error","errorType":"bad_data","error":"parse error"}"#).unwrap_err();
        assert!(e.to_string().contains("parse error"), "{e}");
        let e = parse_answer(br#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#).unwrap_err();
        assert!(e.to_string().contains("matrix"), "{e}");
        assert!(parse_answer(b"<html>").is_err());
    }
}
