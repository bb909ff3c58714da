//! The one client stream type the pipeline works on: a TCP connection, a Unix-domain socket connection, or
//! TLS over TCP. The relay, the startup phase and the close path are written once against it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

pub enum ClientStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Consumed (by a TLS handshake that failed): reads see EOF, writes fail.
    Gone,
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// A Unix-domain socket connection: PostgreSQL never offers TLS on one (SSLRequest is answered `N`) and
    /// never applies `hostssl` to it, so neither does pgwarden.
    pub fn is_unix(&self) -> bool {
        matches!(self, ClientStream::Unix(_))
    }

    /// Resolves when the client closes its socket. Bytes it sends meanwhile stay unread (only peeked), so
    /// this can watch a client that waits (for a slot) without consuming anything.
    pub async fn closed(&self) {
        loop {
            let peeked = match self {
                ClientStream::Tcp(s) => peek_once(s, s.as_raw_fd()).await,
                ClientStream::Unix(s) => peek_unix_once(s).await,
                ClientStream::Tls(s) => {
                    let tcp = s.get_ref().0;
                    peek_once(tcp, tcp.as_raw_fd()).await
                }
                ClientStream::Gone => return,
            };
            match peeked {
                Ok(0) | Err(_) => return,
                Ok(_) => std::future::pending().await,
            }
        }
    }
}

/// One byte peeked without consuming it, once the socket is readable.
fn peek(fd: RawFd) -> io::Result<usize> {
    let mut b = 0u8;
    // SAFETY: recv writes at most 1 byte into `b`, which lives for the call.
    let n = unsafe { libc::recv(fd, (&mut b as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

async fn peek_once(s: &TcpStream, fd: RawFd) -> io::Result<usize> {
    loop {
        s.readable().await?;
        match s.try_io(Interest::READABLE, || peek(fd)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

async fn peek_unix_once(s: &UnixStream) -> io::Result<usize> {
    let fd = s.as_raw_fd();
    loop {
        s.readable().await?;
        match s.try_io(Interest::READABLE, || peek(fd)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            ClientStream::Gone => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            ClientStream::Gone => Poll::Ready(Ok(())),
        }
    }
}
