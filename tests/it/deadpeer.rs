//! A silently dead upstream (a host that vanished without a reset: failover, node loss): TCP keepalive and
//! `TCP_USER_TIMEOUT` notice it, the client gets `08006` and its slot is freed. The fault is a packet filter
//! rule that drops every packet to and from a forwarder port this test owns (loopback only).

use crate::support::pg::pg;
use crate::support::raw::{self, Raw};
use crate::support::{start_proxy, test_config};
use pgwarden::config::{HostPort, Keepalive, Timeout};
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// Drops every packet to and from `port` on this machine while it lives.
struct Blackhole {
    rules: Vec<Vec<String>>,
}

impl Blackhole {
    fn new(port: u16) -> Blackhole {
        let rules: Vec<Vec<String>> = ["--dport", "--sport"]
            .iter()
            .map(|dir| ["INPUT", "-p", "tcp", dir, &port.to_string(), "-j", "DROP"].map(String::from).to_vec())
            .collect();
        for rule in &rules {
            let out = Command::new("iptables").arg("-I").args(rule).output().unwrap_or_else(|e| {
                panic!("iptables is installed by scripts/setup.sh (run the suite with scripts/test.sh): {e}")
            });
            assert!(out.status.success(), "iptables -I {rule:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Blackhole { rules }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        for rule in &self.rules {
            let _ = Command::new("iptables").arg("-D").args(rule).output();
        }
    }
}

/// A plain TCP forwarder to the test PostgreSQL on a port of its own (so only its traffic is dropped).
async fn forwarder() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut b) = TcpStream::connect(("127.0.0.1", pg().port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn a_silently_dead_upstream_gets_08006_and_frees_the_slot() {
    let port = forwarder().await;
    let mut config = test_config();
    config.upstream = HostPort { host: "127.0.0.1".into(), port };
    config.tcp_keepalive = Keepalive {
        idle: Timeout(Some(Duration::from_secs(1))),
        interval: Timeout(Some(Duration::from_secs(1))),
        count: 2,
    };
    config.upstream_tcp_user_timeout = Timeout(Some(Duration::from_secs(2)));
    let p = start_proxy(config).await;
    let mut idle = Raw::connect(p.addr, "postgres", "deadpeer-idle").await;
    let mut busy = Raw::connect(p.addr, "postgres", "deadpeer-busy").await;
    let _hole = Blackhole::new(port);
    let cut = Instant::now();
    // One session sends a query into the void (TCP_USER_TIMEOUT), the other just sits idle (keepalive).
    busy.send(&raw::query("select 1")).await;
    for (name, session) in [("busy", &mut busy), ("idle", &mut idle)] {
        let mut code = None;
        let until = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some((tag, body)) = raw::read_message(&mut session.stream).await {
                if tag == b'E' {
                    code = Some(raw::error_code(&body));
                }
            }
        });
        until.await.unwrap_or_else(|_| panic!("{name}: no close within 20 s"));
        assert_eq!(code.as_deref(), Some("08006"), "{name}");
        eprintln!("{name}: 08006 after {:?}", cut.elapsed());
    }
    let took = cut.elapsed();
    assert!(took < Duration::from_secs(10), "noticed within keepalive time, took {took:?}");
    assert!(crate::support::proxy::eventually(Duration::from_secs(2), || p.state.registry.is_empty()).await);
    assert_eq!(p.state.clients.total_open(), 0, "slots freed");
    p.stop().await;
}
