//! Socket options of the TCP connections pgwarden relays: no Nagle delay, TCP keepalive both ways, and
//! `TCP_USER_TIMEOUT` towards the upstream.
//!
//! Keepalive matters twice over for a proxy: the application's own keepalive only covers its hop to
//! pgwarden (loopback in a sidecar, which never dies), so without pgwarden's a database host that vanishes
//! without a reset (failover, node loss) leaves sessions `idle` forever and their cap slots taken. With it
//! the dead link errors within `tcp_keepalive.idle + count × interval` (idle sessions) or
//! `upstream_tcp_user_timeout` (data in flight), the client gets `08006` and the slot is freed.

use crate::config::{Config, Keepalive};
use socket2::{SockRef, TcpKeepalive};
use std::io;
use tokio::net::TcpStream;

/// For an accepted client connection (best effort: a client socket without these still works).
pub fn client(sock: &TcpStream, config: &Config) {
    let _ = sock.set_nodelay(true);
    let _ = keepalive(sock, &config.tcp_keepalive);
}

/// For a dialled upstream connection.
pub fn upstream(sock: &TcpStream, config: &Config) -> io::Result<()> {
    sock.set_nodelay(true)?;
    keepalive(sock, &config.tcp_keepalive)?;
    if let Some(timeout) = config.upstream_tcp_user_timeout.0 {
        SockRef::from(sock).set_tcp_user_timeout(Some(timeout))?;
    }
    Ok(())
}

fn keepalive(sock: &TcpStream, ka: &Keepalive) -> io::Result<()> {
    let sock = SockRef::from(sock);
    let Some(idle) = ka.idle.0 else {
        return sock.set_keepalive(false);
    };
    let mut params = TcpKeepalive::new().with_time(idle).with_retries(ka.count);
    if let Some(interval) = ka.interval.0 {
        params = params.with_interval(interval);
    }
    sock.set_tcp_keepalive(&params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn options_are_set_as_configured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut config = Config::default();
        config.tcp_keepalive = Keepalive {
            idle: crate::config::Timeout(Some(Duration::from_secs(7))),
            interval: crate::config::Timeout(Some(Duration::from_secs(2))),
            count: 4,
        };
        upstream(&sock, &config).unwrap();
        let s = SockRef::from(&sock);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_secs(60)), "the default");
        assert!(s.tcp_nodelay().unwrap());
        config.tcp_keepalive.idle = crate::config::Timeout(None);
        client(&sock, &config);
        assert!(!s.keepalive().unwrap(), "off disables it");
    }
}
