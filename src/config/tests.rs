use super::*;
use std::time::Duration;

#[test]
fn spec_example_parses() {
    let yaml = r#"
listen: 127.0.0.1:6432
upstream: 127.0.0.1:5432
upstream_tls: prefer
upstream_ca_file: null
upstream_connect_timeout: 5s
upstream_tcp_user_timeout: 60s
tcp_keepalive:
  idle: 30s
  interval: 10s
  count: 3
client_login_timeout: 15s
admin_listen: 127.0.0.1:9187
log_format: text
shutdown_grace: 30s
enforce: true
client_key: [application_name, user]
max_total_connections: off
max_tracked_clients: 200
max_clients: 5000
stats:
  statement_text: redacted
  statement_max_length: 1024
defaults:
  max_connections: off
  on_limit: reject
  wait_timeout: 5s
  idle_timeout: off
  idle_in_transaction_timeout: off
  max_connection_age: off
leak:
  idle_threshold: 5m
  idle_in_transaction_threshold: 30s
  keep_closed_suspects: 15m
rules:
  - name: image-workers
    match: { application_name: "image-*" }
    max_connections: 10
    idle_in_transaction_timeout: 30s
"#;
    let c = Config::from_yaml(yaml, "test.yaml").unwrap();
    let mut expected = Config::default();
    expected.rules.push(Rule {
        name: Some("image-workers".into()),
        matches: [(Field::ApplicationName, "image-*".to_string())].into(),
        max_connections: Some(Limit(Some(10))),
        on_limit: None,
        wait_timeout: None,
        idle_timeout: None,
        idle_in_transaction_timeout: Some(Timeout(Some(Duration::from_secs(30)))),
        max_connection_age: None,
        transaction_timeout: None,
        query_timeout: None,
    });
    assert_eq!(c, expected, "the SPEC example is the defaults plus one rule");
}

#[test]
fn empty_file_is_defaults_and_round_trips() {
    assert_eq!(Config::from_yaml("", "x").unwrap(), Config::default());
    let c = Config::default();
    assert_eq!(Config::from_yaml(&c.to_yaml(), "x").unwrap(), c);
}

fn err(yaml: &str) -> String {
    Config::from_yaml(yaml, "f.yaml").unwrap_err().to_string()
}

#[test]
fn errors_name_the_key() {
    let cases = [
        ("listen: nowhere", "`listen`"),
        ("defaults:\n  idle_timeout: 5x", "`defaults.idle_timeout`"),
        ("defaults:\n  max_connections: lots", "`defaults.max_connections`"),
        ("upstream_tls: maybe", "`upstream_tls`"),
        ("stats:\n  statement_text: some", "`stats.statement_text`"),
        ("client_key: [application_name, shoe_size]", "`client_key"),
        ("shutdown_grace: off", "`shutdown_grace`"),
        ("max_tracked_clients: 0", "`max_tracked_clients`"),
        ("rules:\n  - match: { database: 'x' }", "`rules[0].match.database`"),
        ("rules:\n  - name: a\n    match: { user: 'x' }\n    idle_timeout: soon", "rules[0].idle_timeout"),
        ("rules:\n  - name: a", "`rules[0].match`"),
        ("upstream_connect_timeout: 0", "`upstream_connect_timeout`"),
        ("defaults:\n  idle_timeout: 0", "`defaults.idle_timeout`"),
        (
            "rules:\n  - match: { user: a }\n    idle_in_transaction_timeout: 0s",
            "`rules[0].idle_in_transaction_timeout`",
        ),
        ("client_login_timeout: 0", "`client_login_timeout`"),
        ("stats:\n  statement_max_length: 16385", "`stats.statement_max_length`"),
        ("stats:\n  statement_max_length: 1048576", "between 1 and 16384"),
    ];
    for (yaml, key) in cases {
        let e = err(yaml);
        assert!(e.contains(key), "{yaml:?} -> {e}");
        assert!(e.starts_with("f.yaml"), "{e}");
    }
}

#[test]
fn the_longest_statement_length_is_accepted() {
    let c = Config::from_yaml("stats:\n  statement_max_length: 16384", "f.yaml").unwrap();
    assert_eq!(c.stats.statement_max_length, super::MAX_STATEMENT_LENGTH);
}

#[test]
fn unknown_keys_are_errors() {
    for (yaml, word) in [
        ("lisen: 1.2.3.4:5", "lisen"),
        ("defaults:\n  idle_timout: 5s", "idle_timout"),
        ("leak:\n  threshold: 5s", "threshold"),
        ("rules:\n  - match: { user: a }\n    max_conns: 3", "max_conns"),
    ] {
        let e = err(yaml);
        assert!(e.contains(word), "{yaml:?} -> {e}");
    }
}

#[test]
fn rule_fields_must_be_in_client_key() {
    let ok = "client_key: [database, user]\nrules:\n  - match: { database: 'orders*' }\n    max_connections: 2";
    let c = Config::from_yaml(ok, "x").unwrap();
    assert_eq!(c.rules[0].max_connections, Some(Limit(Some(2))));
    assert!(err("rules:\n  - match: { database: 'x' }").contains("not in client_key"));
}

#[test]
fn overrides_apply_and_name_the_flag() {
    let mut c = Config::default();
    let o = overrides::Overrides {
        idle_timeout: Some("2s".into()),
        max_connections: Some("3".into()),
        enforce: Some("false".into()),
        on_limit: Some("wait".into()),
        ..Default::default()
    };
    o.apply(&mut c).unwrap();
    assert_eq!(c.defaults.idle_timeout, Timeout(Some(Duration::from_secs(2))));
    assert_eq!(c.defaults.max_connections, Limit(Some(3)));
    assert_eq!(c.defaults.on_limit, OnLimit::Wait);
    assert!(!c.enforce);
    let bad = overrides::Overrides { on_limit: Some("queue".into()), ..Default::default() };
    let e = bad.apply(&mut c).unwrap_err().to_string();
    assert!(e.contains("--on-limit") && e.contains("PGWARDEN_ON_LIMIT") && e.contains("queue"), "{e}");
}

#[test]
fn durations_past_a_year_are_refused_everywhere() {
    // Found by fuzzing: such a value passed validation, then `Instant + Duration` panicked in every session.
    for yaml in [
        "defaults: {idle_timeout: 9223372036854775807}",
        "shutdown_grace: 9223372036854775807",
        "client_login_timeout: 100000h",
        "leak: {idle_threshold: 9000h}",
        "rules: [{match: {user: a}, max_connection_age: 99999999s}]",
    ] {
        let e = Config::from_yaml(yaml, "t.yaml").unwrap_err().to_string();
        assert!(e.contains("longer than a year"), "{yaml}: {e}");
    }
    let ok = Config::from_yaml("defaults: {idle_timeout: 8760h}", "t.yaml").unwrap();
    assert_eq!(ok.defaults.idle_timeout.0, Some(super::values::MAX_DURATION));
}

#[test]
fn pod_identity_from_peer_address_is_gateway_mode() {
    let c = Config::from_yaml(
        "pod_identity: {from: peer_address, namespaces: [shop, batch-1]}\nclient_key: [namespace, workload, user]\n\
         rules: [{match: {workload: 'image-*'}, max_connections: 2}]",
        "t.yaml",
    )
    .unwrap();
    assert_eq!(c.pod_identity.from, PodIdentityFrom::PeerAddress);
    assert_eq!(c.pod_identity.namespaces, ["shop", "batch-1"]);
    assert_eq!(Config::default().pod_identity.from, PodIdentityFrom::DownwardApi);
    let err = |y: &str| Config::from_yaml(y, "t.yaml").unwrap_err().to_string();
    let e = err("pod_identity: {namespaces: [shop]}");
    assert!(e.contains("`pod_identity.namespaces`") && e.contains("peer_address"), "{e}");
    let e = err("pod_identity: {from: peer_address, namespaces: [Shop_1]}\nclient_key: [workload]");
    assert!(e.contains("`pod_identity.namespaces[0]`") && e.contains("not a namespace name"), "{e}");
    let e = err("pod_identity: {from: peer_address}");
    assert!(e.contains("`client_key`") && e.contains("none of pod, namespace, workload"), "{e}");
    let e = err("pod_identity: {from: peer}");
    assert!(e.contains("`pod_identity.from`"), "{e}");
}

#[test]
fn messages_speak_yaml_not_rust() {
    let err = |y: &str| Config::from_yaml(y, "t.yaml").unwrap_err().to_string();
    let e = err("max_tracked_clients: off");
    assert!(e.contains("`max_tracked_clients`") && e.contains("expected a whole number"), "{e}");
    assert!(err("- a").contains("expected a mapping of config keys"));
    let e = err("defaults: 5");
    assert!(e.contains("expected a mapping (key: value)") && !e.contains("Policy"), "{e}");
    assert!(err("client_key: application_name").contains("expected a list"));
    assert!(err("listen: [1]").contains("expected a single value"));
    let e = err("upstream: db:5432\nbogus: 1\n");
    assert!(e.contains("unknown field `bogus`") && e.contains("at line 2 column 1"), "{e}");
    for e in [err("max_tracked_clients: off"), err("- a"), err("defaults: 5")] {
        assert!(!e.contains("u32") && !e.contains("struct"), "{e}");
    }
}
