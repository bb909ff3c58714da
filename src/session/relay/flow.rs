//! Bytes in flight in one direction of the relay: read into a buffer, then written on, possibly over several
//! polls. Owns buffer sizing: small once a session has been idle a while (the relay gives a large buffer back
//! when housekeeping asks, see `registry::SHRINK_IDLE_AFTER`), large while data streams or a large answer is
//! expected, never zeroed (reads go into the buffer's spare capacity).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Read buffer per direction while data flows.
pub const BUF_SIZE: usize = 16 * 1024;
/// Read buffer per direction while the session exchanges small messages or has been idle a while: an idle
/// session holds 2 × this, not 2 × `BUF_SIZE` (the memory target is 8 KiB per idle client connection in all).
pub const SMALL_BUF: usize = 512;

/// One direction's bytes in flight: read into `buf` (its length is what is pending, its capacity the read
/// size), written out from `buf[sent..]`. Nothing more is read in that direction until all of it is written
/// (backpressure), but the other direction goes on.
pub struct Flow {
    buf: Vec<u8>,
    sent: usize,
    /// Written but not yet flushed (TLS buffers records until flushed).
    unflushed: bool,
    /// The session went idle while bytes were still pending (the ReadyForQuery that made it idle):
    /// give the large buffer back once they are written.
    shrink_when_written: bool,
    /// A read during this busy period needed more than the small buffer: the next one will likely need
    /// the large buffer too (an ORM-sized answer), so [`Flow::expect_large`] provides it before the read.
    grew: bool,
    /// The end (`Ok(0)`) or error a second read in one poll met: reported by the next read.
    deferred: Option<io::Result<usize>>,
}

impl Flow {
    pub fn new() -> Flow {
        Flow {
            buf: Vec::with_capacity(SMALL_BUF),
            sent: 0,
            unflushed: false,
            shrink_when_written: false,
            grew: false,
            deferred: None,
        }
    }

    /// Bytes pending (read, not yet all written).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The pending bytes.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Bytes of the pending chunk already written on.
    pub fn sent(&self) -> usize {
        self.sent
    }

    /// Keeps only the first `n` pending bytes (the rest is not forwarded).
    pub fn truncate(&mut self, n: usize) {
        self.buf.truncate(n);
        self.sent = self.sent.min(n);
    }

    /// Replaces what is pending (nothing of it written yet) with `bytes`.
    pub fn replace(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.sent, 0);
        self.buf.clear();
        self.buf.extend_from_slice(bytes);
    }

    /// Drops what is pending (a session closing on pgwarden's initiative forwards nothing more).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.sent = 0;
    }

    /// The buffer is larger than an idle session's.
    pub fn is_large(&self) -> bool {
        self.buf.capacity() > SMALL_BUF
    }

    /// The session is idle: gives a large buffer back now, or once what is pending is written.
    pub fn shrink_if_idle(&mut self) {
        if !self.buf.is_empty() {
            self.shrink_when_written = true;
        } else {
            self.shrink();
        }
    }

    /// A fresh small buffer rather than shrinking the large one in place: a small block left inside a freed
    /// large one keeps the allocator from handing that memory back (1,000 idle connections measured 16.4 KB
    /// each after queries with `shrink_to`).
    fn shrink(&mut self) {
        if self.buf.capacity() > SMALL_BUF {
            self.buf = Vec::with_capacity(SMALL_BUF);
        }
    }

    /// The session became busy: if the last busy period needed the large buffer, take it before reading
    /// (one read and one write for an answer of up to `BUF_SIZE`, not two of each).
    pub fn expect_large(&mut self) {
        if self.grew && self.buf.capacity() < BUF_SIZE {
            self.buf.reserve_exact(BUF_SIZE - self.buf.len());
        }
        self.grew = false;
    }

    /// Reads into the empty buffer; a read that fills the small buffer grows it and reads again at once, so
    /// a message larger than the small buffer arrives in one chunk. Returns the bytes read (0: the end).
    pub fn poll_read_from<R: AsyncRead + Unpin>(&mut self, cx: &mut Context<'_>, r: &mut R) -> Poll<io::Result<usize>> {
        debug_assert!(self.buf.is_empty());
        if let Some(result) = self.deferred.take() {
            return Poll::Ready(result);
        }
        let n = match read_spare(&mut self.buf, cx, r) {
            Poll::Ready(Ok(n)) => n,
            other => return other,
        };
        if n == self.buf.capacity() && n < BUF_SIZE {
            self.buf.reserve_exact(BUF_SIZE - n);
            match read_spare(&mut self.buf, cx, r) {
                Poll::Ready(Ok(0)) => self.deferred = Some(Ok(0)),
                Poll::Ready(Err(e)) => self.deferred = Some(Err(e)),
                _ => {}
            }
        }
        if self.buf.len() > SMALL_BUF {
            self.grew = true;
        }
        Poll::Ready(Ok(self.buf.len()))
    }

    /// Something to write or flush (or a buffer to give back once written): [`Flow::poll_flush_to`] has work.
    /// Asked for both directions on every pass of the relay, with nothing to do in most of them (issue 31).
    #[inline]
    pub fn has_output(&self) -> bool {
        !self.buf.is_empty() || self.unflushed || self.shrink_when_written
    }

    /// Writes what is pending to `w` without blocking the caller on it.
    pub fn poll_flush_to<W: AsyncWrite + Unpin>(&mut self, cx: &mut Context<'_>, w: &mut W) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            match Pin::new(&mut *w).poll_write(cx, &self.buf[self.sent..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    self.sent += n;
                    self.unflushed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.buf.clear();
        self.sent = 0;
        if std::mem::take(&mut self.shrink_when_written) {
            self.shrink();
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

/// Reads into `buf`'s spare capacity (never zeroed: `ReadBuf` tracks what the reader initialised) and
/// appends what was read.
fn read_spare<R: AsyncRead + Unpin>(buf: &mut Vec<u8>, cx: &mut Context<'_>, r: &mut R) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    match Pin::new(&mut *r).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let n = rb.filled().len();
            let len = buf.len();
            // SAFETY: `ReadBuf` guarantees its first `filled().len()` bytes were initialised by the reader,
            // and they are the `n` bytes after `len` in `buf`'s allocation.
            unsafe { buf.set_len(len + n) };
            Poll::Ready(Ok(n))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_large_buffer_is_given_back_once_the_idle_making_bytes_are_written() {
        let mut f = Flow::new();
        f.buf.reserve_exact(BUF_SIZE);
        f.buf.extend_from_slice(b"Z\0\0\0\x05I"); // the ReadyForQuery that made the session idle, not yet written
        f.shrink_if_idle();
        assert!(f.buf.capacity() >= BUF_SIZE, "kept while bytes are pending");
        let mut sink = Vec::new();
        f.drain_to(&mut sink).await.unwrap();
        assert_eq!(sink.len(), 6);
        assert!(f.buf.capacity() < BUF_SIZE, "given back once written");
        f.buf.reserve_exact(BUF_SIZE);
        f.shrink_if_idle();
        assert!(f.buf.capacity() < BUF_SIZE, "at once when nothing is pending");
    }

    #[tokio::test]
    async fn a_message_larger_than_the_small_buffer_arrives_in_one_chunk_and_the_next_busy_period_starts_large() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        let message = vec![7u8; 4000];
        a.write_all(&message).await.unwrap();
        let mut f = Flow::new();
        let n = poll_fn(|cx| f.poll_read_from(cx, &mut b)).await.unwrap();
        assert_eq!(n, 4000, "the small buffer's read grew it and read on in the same poll");
        assert_eq!(f.pending(), &message[..]);
        let mut sink = Vec::new();
        f.drain_to(&mut sink).await.unwrap();
        f.shrink_if_idle();
        assert!(f.buf.capacity() < BUF_SIZE);
        f.expect_large();
        assert!(f.buf.capacity() >= BUF_SIZE, "the last busy period grew: the next starts large");
        f.shrink_if_idle();
        f.expect_large();
        assert!(f.buf.capacity() < BUF_SIZE, "one that did not grow starts small");
    }

    #[tokio::test]
    async fn the_end_met_by_the_second_read_is_reported_by_the_next() {
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&[1u8; SMALL_BUF]).await.unwrap();
        drop(a);
        let mut f = Flow::new();
        assert_eq!(poll_fn(|cx| f.poll_read_from(cx, &mut b)).await.unwrap(), SMALL_BUF);
        f.discard();
        assert_eq!(poll_fn(|cx| f.poll_read_from(cx, &mut b)).await.unwrap(), 0);
    }
}
