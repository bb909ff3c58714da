//! The Unix-domain socket listener: `DIR/.s.PGSQL.<port>` for libpq's `host=DIR`, with the peer's
//! credentials in `/connections`, pgbench and cancel over it, and one pgwarden per socket.

use crate::lifecycle::{bin, wait_listening};
use crate::support::libpq::{psql, python};
use crate::support::pg::{free_port, pg};
use crate::support::{start_proxy, test_config};
use std::process::Stdio;
use std::time::Duration;

#[tokio::test]
async fn psql_pgbench_and_cancel_over_the_socket_with_the_peer_in_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.listen_unix = Some(dir.path().to_path_buf());
    let p = start_proxy(config).await;
    let port = p.addr.port();
    let socket = dir.path().join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists(), "{}", socket.display());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o777);
    let conninfo = format!("host={} port={port} user=postgres dbname=postgres", dir.path().display());

    // psql, and the peer it shows as: unix, with its uid and pid.
    let script = format!("{conninfo} application_name=unix-psql");
    let sleeper = tokio::spawn(async move { psql(&script, "select pg_sleep(1)").await });
    let conns = loop {
        let conns = p.admin_json("/connections").await;
        let mine: Vec<_> = conns["connections"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["client"].as_str() == Some("unix-psql/postgres"))
            .cloned()
            .collect();
        if !mine.is_empty() {
            break mine;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(conns[0]["peer"], "unix");
    assert_eq!(conns[0]["peer_uid"].as_u64(), Some(unsafe { libc::geteuid() } as u64));
    assert!(conns[0]["peer_pid"].as_i64().is_some_and(|pid| pid > 0));
    sleeper.await.unwrap().unwrap();

    // pgbench over the socket.
    let bench_script = dir.path().join("select.sql");
    std::fs::write(&bench_script, "select 1;\n").unwrap();
    let mut cmd = std::process::Command::new(pg().bindir.join("pgbench"));
    cmd.args(["-n", "-c", "2", "-t", "50", "-f"]).arg(&bench_script);
    cmd.args(["-h"]).arg(dir.path()).args(["-p", &port.to_string(), "-U", "postgres", "postgres"]);
    let out = tokio::task::spawn_blocking(move || cmd.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("number of transactions actually processed: 100/100"), "{stdout}");

    // Cancel over the socket.
    let cancel = r#"
import sys, threading, time, psycopg
with psycopg.connect(sys.argv[1]) as c:
    threading.Thread(target=lambda: (time.sleep(0.5), c.cancel_safe())).start()
    try:
        c.execute('select pg_sleep(20)')
    except psycopg.errors.QueryCanceled:
        print('cancelled')
"#;
    let mut cmd = std::process::Command::new(python());
    cmd.args(["-c", cancel, &conninfo]);
    let out = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .expect("cancelled in time")
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cancelled", "{}", String::from_utf8_lossy(&out.stderr));
    p.stop().await;
    assert!(!socket.exists(), "the socket is removed at exit");
}

#[tokio::test]
async fn a_second_pgwarden_on_the_same_socket_exits_1_and_a_stale_socket_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // A socket file left by a pgwarden that was killed: replaced at start.
    std::fs::write(dir.path().join(format!(".s.PGSQL.{port}")), b"").unwrap();
    let yaml = format!("upstream_tls: disable\nlisten_unix: {}\n", dir.path().display());
    let spawn = |admin: u16| {
        bin()
            .args(["proxy", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--upstream", &format!("127.0.0.1:{}", pg().port)])
            .env("PGWARDEN_CONFIG_YAML", &yaml)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = spawn(free_port());
    wait_listening(port).await;
    let conninfo = format!("host={} port={port} user=postgres dbname=postgres", dir.path().display());
    assert_eq!(psql(&conninfo, "select 7").await.as_deref(), Ok("7"));
    let second = spawn(free_port());
    let out = tokio::task::spawn_blocking(move || second.wait_with_output()).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another pgwarden") && stderr.contains(&format!(".s.PGSQL.{port}")), "{stderr}");
    assert_eq!(psql(&conninfo, "select 8").await.as_deref(), Ok("8"), "the first one still serves");
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || first.wait()).await.unwrap().unwrap();
    assert!(status.success());
    assert!(!dir.path().join(format!(".s.PGSQL.{port}")).exists());
}

/// `client_key: [application_name, peer_pid]`: two worker processes with the same `application_name` over
/// the socket are two clients, each named by its pid; a TCP connection has no pid.
#[tokio::test]
async fn peer_pid_in_the_client_key_names_each_worker_process() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config();
    config.listen_unix = Some(dir.path().to_path_buf());
    config.client_key = vec![pgwarden::identity::Field::ApplicationName, pgwarden::identity::Field::PeerPid];
    let p = start_proxy(config).await;
    let conninfo = format!(
        "host={} port={} user=postgres dbname=postgres application_name=worker",
        dir.path().display(),
        p.addr.port()
    );
    let script = "import os, sys, time, psycopg\nc = psycopg.connect(sys.argv[1])\nc.execute('select 1')\nprint(os.getpid(), flush=True)\ntime.sleep(3)\n";
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut cmd = std::process::Command::new(python());
        cmd.args(["-c", script, &conninfo]).stdout(Stdio::piped());
        workers.push(cmd.spawn().unwrap());
    }
    let mut pids = Vec::new();
    for w in &mut workers {
        let mut line = String::new();
        let out = w.stdout.take().unwrap();
        let read = tokio::task::spawn_blocking(move || {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).map(|_| line)
        });
        pids.push(read.await.unwrap().unwrap().trim().to_string());
    }
    let tcp = p.connect("worker").await.unwrap();
    let clients = p.admin_json("/clients").await;
    let keys: Vec<&str> = clients["clients"].as_array().unwrap().iter().filter_map(|c| c["client"].as_str()).collect();
    for pid in &pids {
        assert!(keys.contains(&format!("worker/{pid}").as_str()), "{pid} not among {keys:?}");
    }
    assert!(keys.contains(&"worker/-"), "the TCP connection: no pid ({keys:?})");
    drop(tcp);
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
    p.stop().await;
}

/// PostgreSQL never offers TLS on a Unix socket: with `client_tls: allow` or `require`, an SSLRequest over
/// the socket is answered `N` and the session goes on in plaintext (before, `allow` answered `S` and the
/// session panicked); `require` does not refuse socket clients (as `hostssl` never matches one).
#[tokio::test]
async fn an_ssl_request_over_the_socket_is_answered_n_under_every_client_tls_mode() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for mode in [pgwarden::config::ClientTls::Allow, pgwarden::config::ClientTls::Require] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config();
        config.listen_unix = Some(dir.path().to_path_buf());
        config.client_tls = mode;
        let p = start_proxy(config).await;
        let socket = dir.path().join(format!(".s.PGSQL.{}", p.addr.port()));
        let mut s = tokio::net::UnixStream::connect(&socket).await.unwrap();
        s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.unwrap();
        let mut answer = [0u8; 1];
        s.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"N", "{mode:?}");
        // The startup packet that follows is served: authentication, then ReadyForQuery.
        let mut startup = Vec::new();
        startup.extend_from_slice(&196_608u32.to_be_bytes());
        for kv in ["user", "postgres", "database", "postgres", ""] {
            startup.extend_from_slice(kv.as_bytes());
            startup.push(0);
        }
        let mut packet = ((startup.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&startup);
        s.write_all(&packet).await.unwrap();
        let mut seen = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let mut head = [0u8; 5];
                s.read_exact(&mut head).await.unwrap();
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let mut body = vec![0u8; len - 4];
                s.read_exact(&mut body).await.unwrap();
                seen.push(head[0]);
                if head[0] == b'Z' || head[0] == b'E' {
                    return head[0];
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(ready, b'Z', "{mode:?}: {:?}", String::from_utf8_lossy(&seen));
        // And libpq over the socket (which never sends SSLRequest there) works under `require`.
        let conninfo = format!("host={} port={} user=postgres dbname=postgres", dir.path().display(), p.addr.port());
        assert_eq!(psql(&conninfo, "select 1").await.unwrap().trim(), "1", "{mode:?}");
        p.stop().await;
    }
}
