//! Bytes in flight in one direction of the relay: read into a buffer, then written on, possibly over several
//! polls. Owns buffer sizing: small while a session is idle, large while data streams.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;

/// Read buffer per direction while data flows.
pub const BUF_SIZE: usize = 16 * 1024;
/// Read buffer per direction while the session is idle or exchanging small messages: an idle session holds
/// 2 × this, not 2 × `BUF_SIZE` (the memory target is 16 KiB per idle client connection in all).
pub const SMALL_BUF: usize = 512;

/// One direction's bytes in flight: read into `buf[..len]`, written out from `buf[sent..len]`. Nothing more
/// is read in that direction until all of it is written (backpressure), but the other direction goes on.
pub struct Flow {
    pub buf: Vec<u8>,
    pub len: usize,
    sent: usize,
    /// Written but not yet flushed (TLS buffers records until flushed).
    unflushed: bool,
    /// The last read filled the small buffer: more is coming, read in large chunks once this is written.
    pub grow: bool,
}

impl Flow {
    pub fn new() -> Flow {
        Flow { buf: vec![0; SMALL_BUF], len: 0, sent: 0, unflushed: false, grow: false }
    }

    /// Bytes of the pending chunk already written on.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Drops what is pending (a session closing on pgwarden's initiative forwards nothing more).
    pub fn discard(&mut self) {
        self.len = 0;
        self.sent = 0;
    }

    /// Gives a large buffer back once the session is idle and nothing is in flight.
    pub fn shrink_if_idle(&mut self) {
        if self.len == 0 && self.buf.len() > SMALL_BUF {
            self.buf = vec![0; SMALL_BUF];
        }
    }

    /// Writes what is pending to `w` without blocking the caller on it.
    pub fn poll_flush_to<W: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<io::Result<()>> {
        while self.sent < self.len {
            match Pin::new(&mut *w).poll_write(cx, &self.buf[self.sent..self.len]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.len = 0;
        self.sent = 0;
        if std::mem::take(&mut self.grow) {
            self.buf = vec![0; BUF_SIZE];
        }
        if self.unflushed {
            match Pin::new(&mut *w).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything pending (used when closing, under a deadline).
    pub async fn drain_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush_to(cx, w)).await
    }
}
