//! Query tags (issue 29, acceptance 1): statements tagged in sqlcommenter and Rails format by psql,
//! psycopg and node-postgres, each leaving a transaction open. The leaked connections' evidence names the
//! code that borrowed them, decoded; no literal of the SQL appears in any view with the default redaction;
//! a tag value with control characters is escaped. Default config (TLS and SCRAM to the server).

use crate::support::libpq::python;
use crate::support::pg::{pg, SCRAM_PASSWORD, SCRAM_USER};
use crate::support::start_proxy;
use pgwarden::config::{Config, HostPort, Timeout};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const SQLCOMMENTER: &str =
    "/*action='resize',controller='uploads',framework='django%3A4.2',route='%2Fupload%2F%3Cid%3E'*/";
const RAILS: &str = "/*application:Shop,controller:exports,action:csv*/";
/// A value with a bell and an escape sequence, percent-encoded as sqlcommenter writes it.
const HOSTILE: &str = "/*route='%2Fx%07%1B%5B2J',job='nightly'*/";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_statements_name_the_code_that_borrowed_the_leaked_connections() {
    let mut config = Config { upstream: HostPort { host: "127.0.0.1".into(), port: pg().port }, ..Config::default() };
    config.leak.idle_in_transaction_threshold = Timeout(Some(Duration::from_secs(1)));
    let p = start_proxy(config).await;
    let port = p.addr.port();
    let conninfo = |app: &str| {
        format!("host=127.0.0.1 port={port} user={SCRAM_USER} password={SCRAM_PASSWORD} dbname=postgres application_name={app}")
    };

    // psql: a transaction begun, a tagged statement with literals, left open (psql waits on stdin).
    let psql_sql = format!(
        "BEGIN;\nSELECT relname FROM pg_class WHERE relname = 'lit-psql-secret' AND relpages >= 123456 {SQLCOMMENTER};\n"
    );
    let mut psql = std::process::Command::new(pg().bindir.join("psql"))
        .args(["-X", "-q", "-d", &conninfo("tags-psql")])
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    let mut stdin = psql.stdin.take().unwrap();
    stdin.write_all(psql_sql.as_bytes()).unwrap();
    stdin.flush().unwrap();

    // psycopg: Rails format first (borrowed there), then a hostile tag; the transaction stays open.
    let script = format!(
        r#"
import sys, time, psycopg
c = psycopg.connect(sys.argv[1])
c.execute("{RAILS} SELECT count(*) FROM pg_class WHERE relname = 'lit-psycopg-secret'")
c.execute("SELECT 'lit-psycopg-two' {HOSTILE}")
time.sleep(6)
"#
    );
    let psycopg =
        tokio::process::Command::new(python()).args(["-c", &script, &conninfo("tags-psycopg")]).spawn().unwrap();

    // node-postgres: the extended protocol (a parameterised, prepared statement) with sqlcommenter tags.
    let node_script = format!(
        "const {{ Client }} = require('pg');\
         const c = new Client({{ connectionString: process.argv[1] }});\
         (async () => {{ await c.connect(); await c.query('BEGIN');\
         await c.query({{ name: 'q1', text: \"SELECT $1::text AS x, 'lit-node-secret' AS y {SQLCOMMENTER}\", values: ['p'] }});\
         setTimeout(() => process.exit(0), 6000); }})();"
    );
    let modules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools/node/node_modules");
    let url =
        format!("postgresql://{SCRAM_USER}:{SCRAM_PASSWORD}@127.0.0.1:{port}/postgres?application_name=tags-node");
    let node = tokio::process::Command::new("node")
        .args(["-e", &node_script, "--", &url])
        .env("NODE_PATH", modules)
        .spawn()
        .unwrap();

    let until = Instant::now() + Duration::from_secs(15);
    let leaks = loop {
        let leaks = p.admin_json("/leaks").await;
        let clients: Vec<String> =
            leaks["leaks"].as_array().unwrap().iter().map(|l| l["client"].as_str().unwrap().to_string()).collect();
        if ["tags-psql", "tags-psycopg", "tags-node"].iter().all(|a| clients.iter().any(|c| c.starts_with(a))) {
            break leaks;
        }
        assert!(Instant::now() < until, "not every client became a suspect: {leaks:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let of = |app: &str| {
        leaks["leaks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["client"].as_str().unwrap().starts_with(app))
            .unwrap()
            .clone()
    };
    // Borrowed past the bare BEGIN, at the tagged statement; decoded.
    let psql_leak = of("tags-psql");
    assert_eq!(
        psql_leak["tags"],
        "1 of 1 suspects borrowed at action=resize controller=uploads framework=django:4.2 route=/upload/<id>",
        "{psql_leak:#}"
    );
    let node_leak = of("tags-node");
    assert_eq!(node_leak["suspects"][0]["borrowed_tags"]["route"], "/upload/<id>", "{node_leak:#}");
    let psycopg_leak = of("tags-psycopg");
    let s = &psycopg_leak["suspects"][0];
    assert_eq!(s["borrowed_tags"]["controller"], "exports", "{s:#}");
    assert_eq!(s["borrowed_tags"]["application"], "Shop", "{s:#}");
    assert_eq!(s["query_tags"]["route"], "/x\\x07\\x1b[2J", "control characters escaped: {s:#}");
    assert_eq!(s["query_tags"]["job"], "nightly");

    // No literal of the SQL in any view.
    let mut views = String::new();
    for path in ["/leaks", "/connections", "/clients"] {
        views.push_str(&p.admin_json(path).await.to_string());
    }
    views.push_str(&crate::support::http::get(&p.admin.to_string(), "/metrics").await);
    for literal in ["lit-psql-secret", "123456", "lit-psycopg-secret", "lit-psycopg-two", "lit-node-secret"] {
        assert!(!views.contains(literal), "{literal} leaked into a view");
    }
    assert!(!views.contains('\u{1b}') && !views.contains('\u{7}'), "no raw control character");

    // `pgwarden leaks` shows the code line.
    let out = crate::lifecycle::bin().args(["leaks", "--admin", &format!("http://{}", p.admin)]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("code: 1 of 1 suspects borrowed at action=resize controller=uploads"), "{text}");

    drop(stdin);
    let _ = psql.kill();
    let _ = psql.wait();
    let _ = psycopg.wait_with_output().await;
    let _ = node.wait_with_output().await;
    p.stop().await;
}
