//! pgwarden's own limits, told apart from the database's: running out of file descriptors answers `53000`
//! naming pgwarden's limit (not `08001 could not connect to upstream`) and is counted in
//! `pgwarden_fd_exhausted_total`, not as an upstream error; sockets that never send a startup packet show
//! in `pgwarden_connections_awaiting_startup`.

use crate::lifecycle::{bin, wait_listening};
use crate::support::pg::{free_port, pg};
use crate::support::raw::{self, startup_packet};
use crate::support::{start_proxy, test_config};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[derive(Debug, PartialEq)]
enum Outcome {
    /// The dial failed: the client got this SQLSTATE and message.
    Refused(String, String),
    /// The accept failed: the client waits in the listen backlog.
    NotAccepted,
}

async fn http_get(port: u16, path: &str) -> String {
    crate::support::http::get(&format!("127.0.0.1:{port}"), path).await
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(-1.0)
}

/// Runs the binary with RLIMIT_NOFILE `limit` and opens connections until the first one fails; returns how
/// it failed and the metrics after the clients left.
async fn first_failure_at(limit: u64) -> (Outcome, String) {
    let (port, admin) = (free_port(), free_port());
    let mut cmd = bin();
    cmd.args(["proxy", "--listen", &format!("127.0.0.1:{port}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--upstream", &format!("127.0.0.1:{}", pg().port)])
        .env("PGWARDEN_CONFIG_YAML", "upstream_tls: disable\n")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    wait_listening(port).await;
    let mut open = Vec::new();
    let outcome = loop {
        assert!(open.len() < 200, "no failure under a limit of {limit} descriptors");
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let params = [("user", "postgres"), ("database", "postgres"), ("application_name", "fd-test")];
        s.write_all(&startup_packet(&params)).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(2), raw::read_message(&mut s)).await {
            Ok(Some((b'R', _))) => open.push(s),
            Ok(Some((b'E', body))) => {
                let text = String::from_utf8_lossy(&body).into_owned();
                break Outcome::Refused(raw::error_code(&body), text);
            }
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(_) => break Outcome::NotAccepted,
        }
    };
    drop(open);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http_get(admin, "/metrics").await;
    let _ = child.kill();
    let _ = child.wait();
    (outcome, metrics)
}

/// Each session holds two descriptors, so one of two neighbouring limits runs out at the dial and the other
/// at the accept: both paths are seen.
#[tokio::test]
async fn out_of_file_descriptors_is_pgwarden_s_own_limit_and_counted_apart() {
    let (mut refused, mut stalled) = (0, 0);
    for limit in [48, 49] {
        let (outcome, metrics) = first_failure_at(limit).await;
        assert_eq!(metric(&metrics, "pgwarden_upstream_connect_errors_total"), 0.0, "not an upstream error");
        match outcome {
            Outcome::Refused(code, text) => {
                refused += 1;
                assert_eq!(code, "53000", "{text}");
                assert!(text.contains("out of file descriptors (pgwarden's own limit"), "{text}");
                assert_eq!(metric(&metrics, "pgwarden_fd_exhausted_total{at=\"dial\"}"), 1.0, "{metrics}");
            }
            Outcome::NotAccepted => {
                stalled += 1;
                assert!(metric(&metrics, "pgwarden_fd_exhausted_total{at=\"accept\"}") >= 1.0, "{metrics}");
            }
        }
    }
    assert_eq!((refused, stalled), (1, 1), "one limit fails at the dial, the other at the accept");
}

#[tokio::test]
async fn sockets_that_never_start_are_visible() {
    let p = start_proxy(test_config()).await;
    let admin: u16 = p.admin_url().rsplit(':').next().unwrap().parse().unwrap();
    let metrics = || http_get(admin, "/metrics");
    let silent: Vec<TcpStream> = futures_util::future::join_all((0..3).map(|_| TcpStream::connect(p.addr)))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    // The gauge's value once it reads `want`, or its last value after 2 s.
    let settles_at = |want: f64| async move {
        let mut seen = -1.0;
        for _ in 0..100 {
            seen = metric(&metrics().await, "pgwarden_connections_awaiting_startup");
            if seen == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen
    };
    assert_eq!(settles_at(3.0).await, 3.0, "three silent sockets");
    drop(silent);
    assert_eq!(settles_at(0.0).await, 0.0, "gone with the sockets");
    p.stop().await;
}
