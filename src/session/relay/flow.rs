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
    /// The session went idle while bytes were still pending (the ReadyForQuery that made it idle):
    /// give the large buffer back once they are written.
    shrink_when_written: bool,
}

impl Flow {
    pub fn new() -> Flow {
        Flow { buf: vec![0; SMALL_BUF], len: 0, sent: 0, unflushed: false, grow: false, shrink_when_written: false }
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

    /// The session is idle: gives a large buffer back now, or once what is pending is written.
    pub fn shrink_if_idle(&mut self) {
        if self.len > 0 {
            self.shrink_when_written = true;
        } else if self.buf.len() > SMALL_BUF {
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
        let grow = std::mem::take(&mut self.grow);
        if std::mem::take(&mut self.shrink_when_written) {
            if self.buf.len() > SMALL_BUF {
                self.buf = vec![0; SMALL_BUF];
            }
        } else if grow {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_large_buffer_is_given_back_once_the_idle_making_bytes_are_written() {
        let mut f = Flow::new();
        f.buf = vec![0; BUF_SIZE];
        f.len = 6; // the ReadyForQuery that made the session idle, not yet written
        f.grow = true;
        f.shrink_if_idle();
        assert_eq!(f.buf.len(), BUF_SIZE, "kept while bytes are pending");
        let mut sink = Vec::new();
        f.drain_to(&mut sink).await.unwrap();
        assert_eq!(sink.len(), 6);
        assert_eq!(f.buf.len(), SMALL_BUF, "given back once written (idle wins over grow)");
        f.buf = vec![0; BUF_SIZE];
        f.shrink_if_idle();
        assert_eq!(f.buf.len(), SMALL_BUF, "at once when nothing is pending");
    }
}
