//! Dialling the upstream database: resolve on every dial, connect within the timeout, negotiate TLS.
//!
//! Owns: [`dial`], the [`Upstream`] stream type (plain or TLS) and [`DialError`]. Does not own: what is sent after the
//! connection is up (the session forwards the client's own startup packet).

use crate::config::{HostPort, TlsMode};
use crate::protocol::startup::SSL_REQUEST_PACKET;
use crate::state::Settings;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

#[derive(Debug, Error)]
pub enum DialError {
    #[error("could not resolve {host}: {source}")]
    Resolve { host: String, source: io::Error },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("could not connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("server does not support TLS, but upstream_tls is {0}")]
    TlsRefused(&'static str),
    #[error("TLS handshake failed: {0}")]
    Tls(io::Error),
    #[error("unexpected answer {0:#04x} to SSLRequest")]
    BadSslAnswer(u8),
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl DialError {
    /// pgwarden ran out of file descriptors (its own limit, not the upstream's fault).
    pub fn out_of_fds(&self) -> bool {
        match self {
            DialError::Connect { source, .. } | DialError::Io(source) | DialError::Tls(source) => {
                crate::state::is_fd_exhaustion(source)
            }
            _ => false,
        }
    }
}

/// A connected upstream: the stream and the address it reached (where cancel requests for it go).
pub struct Connected {
    pub stream: Upstream,
    pub addr: SocketAddr,
}

/// Dials the upstream the settings name: resolve (again, every time), connect and negotiate TLS, all within
/// `upstream_connect_timeout`.
pub async fn dial(settings: &Settings) -> Result<Connected, DialError> {
    let config = &settings.config;
    let timeout = config.upstream_connect_timeout.0.unwrap_or(Duration::from_secs(5));
    let dialer =
        Dialer { config, target: &config.upstream, mode: config.upstream_tls, tls: settings.upstream_tls.as_ref() };
    tokio::time::timeout(timeout, dialer.dial()).await.map_err(|_| DialError::Timeout(timeout))?
}

/// How to reach the upstream, borrowed from the settings for one dial.
struct Dialer<'a> {
    config: &'a crate::config::Config,
    target: &'a HostPort,
    mode: TlsMode,
    tls: Option<&'a Arc<rustls::ClientConfig>>,
}

impl Dialer<'_> {
    async fn dial(&self) -> Result<Connected, DialError> {
        let host = self.target.host.as_str();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, self.target.port))
            .await
            .map_err(|source| DialError::Resolve { host: host.to_string(), source })?
            .collect();
        let mut last = DialError::NoAddress { host: host.to_string() };
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    super::sockopt::upstream(&tcp, self.config)?;
                    let stream = self.negotiate_tls(tcp).await?;
                    return Ok(Connected { stream, addr });
                }
                Err(source) => last = DialError::Connect { addr, source },
            }
        }
        Err(last)
    }

    async fn negotiate_tls(&self, mut tcp: TcpStream) -> Result<Upstream, DialError> {
        let (Some(tls), mode) = (self.tls, self.mode) else {
            return Ok(Upstream::Plain(tcp));
        };
        tcp.write_all(&SSL_REQUEST_PACKET).await?;
        match tcp.read_u8().await? {
            b'S' => {
                let name = crate::tls::server_name(&self.target.host)
                    .map_err(|e| DialError::Tls(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
                let stream = TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(DialError::Tls)?;
                Ok(Upstream::Tls(Box::new(stream)))
            }
            b'N' => match mode {
                TlsMode::Prefer | TlsMode::Disable => Ok(Upstream::Plain(tcp)),
                TlsMode::Require => Err(DialError::TlsRefused("require")),
                TlsMode::VerifyCa => Err(DialError::TlsRefused("verify-ca")),
                TlsMode::VerifyFull => Err(DialError::TlsRefused("verify-full")),
            },
            other => Err(DialError::BadSslAnswer(other)),
        }
    }
}

/// The upstream connection, plain or TLS.
pub enum Upstream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Upstream {
    /// Makes dropping this connection reset it (RST, no FIN and no TLS close_notify): for a server that
    /// cannot take what it is sent, which a graceful close would wait on. The backend sees the reset at its
    /// next read or write and ends at once (rolling back any open transaction).
    pub fn reset(&self) {
        let tcp = match self {
            Upstream::Plain(s) => s,
            Upstream::Tls(s) => s.get_ref().0,
        };
        let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
    }
}

impl AsyncRead for Upstream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Sends a CancelRequest to `addr` on a new connection (as PostgreSQL expects), waiting at most `timeout`.
pub async fn send_cancel(addr: SocketAddr, pid: i32, key: &[u8], timeout: Duration) -> io::Result<()> {
    let packet = crate::protocol::startup::encode_cancel(pid, key);
    let send = async {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(&packet).await?;
        // The server closes the connection once it has read the request.
        let mut sink = [0u8; 16];
        let _ = tcp.read(&mut sink).await;
        Ok(())
    };
    tokio::time::timeout(timeout, send)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cancel timed out"))?
}
