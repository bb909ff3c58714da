//! Trace ids in `application_name` (issue 29, acceptance 2): OpenTelemetry's instrumentations put the W3C
//! traceparent there, at startup (after the service name) or with `SET application_name` before each
//! command. Neither makes a client key per trace, nor hides the real last statement; the suspect's evidence
//! carries the trace id. Default config (TLS and SCRAM to the server), libpq clients and tokio-postgres.

use crate::support::libpq::python;
use crate::support::pg::{pg, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::proxy::connect;
use crate::support::start_proxy;
use pgwarden::config::{Config, HostPort, Timeout};
use std::process::Command;
use std::time::Duration;

fn traceparent(i: u64) -> (String, String) {
    let trace = format!("{:016x}{:016x}", 0x4bf9_2f35_77b3_4da6u64.wrapping_mul(i + 1), i + 1);
    (format!("00-{trace}-00f067aa0ba902b7-01"), trace)
}

fn config() -> Config {
    let mut c = Config { upstream: HostPort { host: "127.0.0.1".into(), port: pg().port }, ..Config::default() };
    c.leak.idle_in_transaction_threshold = Timeout(Some(Duration::from_secs(1)));
    c
}

#[tokio::test]
async fn a_traceparent_in_application_name_is_the_trace_not_the_client_nor_the_statement() {
    let p = start_proxy(config()).await;
    // 50 connections, each with its own trace after the service name: one client.
    let mut conns = Vec::new();
    for i in 0..50 {
        let mut cfg = p.pg_config(SCRAM_USER, &format!("checkout-api {}", traceparent(i).0));
        cfg.password(SCRAM_PASSWORD);
        conns.push(connect(cfg).await.unwrap());
    }
    let clients = p.admin_json("/clients").await;
    let keys: Vec<&str> =
        clients["clients"].as_array().unwrap().iter().map(|c| c["client"].as_str().unwrap()).collect();
    assert_eq!(keys, vec!["checkout-api/scram_user"], "one client, not 50");
    assert_eq!(clients["clients"][0]["open"], 50);
    let connections = p.admin_json("/connections").await;
    let traced = connections["connections"].as_array().unwrap().iter().filter(|c| c["trace_id"].is_string()).count();
    assert_eq!(traced, 50, "each connection keeps the trace it started with");
    drop(conns);

    // psycopg sets the traceparent before each query, as OpenTelemetry's instrumentations do, and leaves
    // the last transaction open: the evidence is the SELECT and the trace of the SET before it.
    let (tp1, _) = traceparent(100);
    let (tp2, trace2) = traceparent(101);
    let script = format!(
        r#"
import sys, time, psycopg
c = psycopg.connect(sys.argv[1])
c.execute("SET application_name = '{tp1}'")
c.execute("select 1 from pg_class where relname = 'secret-1'")
c.execute("SET application_name = '{tp2}'")
c.execute("select 2 from pg_class where relname = 'secret-2'")
time.sleep(4)
"#
    );
    let conninfo = format!(
        "host=127.0.0.1 port={} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres application_name=otel-worker",
        p.addr.port()
    );
    let mut cmd = Command::new(python());
    cmd.args(["-c", &script, &conninfo]).env_remove("PGPASSWORD");
    let child = tokio::task::spawn_blocking(move || cmd.output());
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let suspect = loop {
        let leaks = p.admin_json("/leaks").await;
        let found =
            leaks["leaks"].as_array().unwrap().iter().find(|l| l["client"] == "otel-worker/scram_user").cloned();
        if let Some(l) = found {
            break l["suspects"][0].clone();
        }
        assert!(std::time::Instant::now() < until, "no suspect: {leaks:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(suspect["last_statement"], "select ? from pg_class where relname = ?", "{suspect:#}");
    assert_eq!(suspect["trace_id"], trace2.as_str(), "{suspect:#}");
    let text = suspect.to_string();
    assert!(!text.contains("secret-") && !text.contains(&tp2), "no literal in the evidence: {text}");
    let out = child.await.unwrap().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    p.stop().await;
}
