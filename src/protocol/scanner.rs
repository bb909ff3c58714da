//! A streaming scanner over tagged protocol messages (`Byte1 tag`, `Int32 length`, body).
//!
//! The relay forwards whole chunks as they arrive; the scanner walks the same bytes, finds each message
//! boundary and hands the caller every message once it is complete. Bodies are only kept for tags the caller
//! asks for, and only up to the size it asks for: a message wholly inside one chunk is lent without a copy, one
//! split across chunks is copied into a small buffer the scanner owns and reuses.
//!
//! # Cancellation safety
//! All partial state (header bytes, body bytes left, captured prefix) lives in the scanner, so a caller may
//! stop between chunks at any point and resume with the next chunk.

use thiserror::Error;

const HEADER: usize = 5;
/// Capture buffer kept while a connection is idle: a statement's text grows it to about
/// `statement_max_length`, and an idle connection should cost little more than its two small buffers.
const IDLE_CAPTURE_CAPACITY: usize = 256;

/// One complete message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub tag: u8,
    /// Body length as declared by the header.
    pub len: usize,
    /// The body's first `min(len, wanted)` bytes.
    pub body: &'a [u8],
}

#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("invalid message length {len} for message type {tag:?}")]
pub struct ScanError {
    pub tag: char,
    pub len: i32,
    /// Where in the chunk the bad message's header began (the bytes before it are whole messages); `None`
    /// when it began in an earlier chunk.
    pub at: Option<usize>,
}

#[derive(Debug, Default)]
pub struct Scanner {
    header: [u8; HEADER],
    /// Header bytes seen of the current message; `HEADER` while inside its body.
    have: usize,
    body_len: usize,
    /// Body bytes not yet seen.
    remaining: usize,
    /// How much of the current body to keep.
    keep: usize,
    captured: Vec<u8>,
}

impl Scanner {
    /// True between messages: the bytes seen so far end exactly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0
    }

    /// Feeds the next chunk. `want(tag)` says how many body bytes of a message with that tag to keep;
    /// `on_frame` is called for every message that completes inside this chunk, in order.
    pub fn feed(
        &mut self,
        mut chunk: &[u8],
        want: impl Fn(u8) -> usize,
        mut on_frame: impl FnMut(Frame<'_>),
    ) -> Result<(), ScanError> {
        let whole = chunk.len();
        while !chunk.is_empty() {
            if self.have == 0 {
                // The usual case: a whole message at a boundary, lent in place without touching the
                // scanner's state (several messages per transaction, issue 31).
                if let Some(header) = chunk.first_chunk::<HEADER>() {
                    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
                    if len >= 4 {
                        let body_len = len as usize - 4;
                        if let Some(body) = chunk.get(HEADER..HEADER + body_len) {
                            let tag = header[0];
                            on_frame(Frame { tag, len: body_len, body: &body[..want(tag).min(body_len)] });
                            chunk = &chunk[HEADER + body_len..];
                            continue;
                        }
                    }
                }
            }
            if self.have < HEADER {
                let header_at = (whole - chunk.len()).checked_sub(self.have);
                let take = (HEADER - self.have).min(chunk.len());
                self.header[self.have..self.have + take].copy_from_slice(&chunk[..take]);
                self.have += take;
                chunk = &chunk[take..];
                if self.have < HEADER {
                    break;
                }
                let tag = self.header[0];
                let len = i32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                if len < 4 {
                    // At a boundary again only if the bad header is wholly in this chunk (the caller can
                    // then forward what came before it); else part of it has gone on already.
                    if header_at.is_some() {
                        self.have = 0;
                    }
                    return Err(ScanError { tag: tag as char, len, at: header_at });
                }
                self.body_len = len as usize - 4;
                self.remaining = self.body_len;
                self.keep = want(tag).min(self.body_len);
                self.captured.clear();
                if self.body_len == 0 {
                    self.have = 0;
                    on_frame(Frame { tag, len: 0, body: &[] });
                }
                continue;
            }
            let take = self.remaining.min(chunk.len());
            let (part, rest) = chunk.split_at(take);
            chunk = rest;
            let tag = self.header[0];
            if self.remaining == self.body_len && take == self.body_len {
                self.remaining = 0;
                self.have = 0;
                on_frame(Frame { tag, len: self.body_len, body: &part[..self.keep] });
                continue;
            }
            let seen = self.body_len - self.remaining;
            if seen < self.keep {
                let n = (self.keep - seen).min(take);
                self.captured.extend_from_slice(&part[..n]);
            }
            self.remaining -= take;
            if self.remaining == 0 {
                self.have = 0;
                on_frame(Frame { tag, len: self.body_len, body: &self.captured });
            }
        }
        Ok(())
    }

    /// How many more bytes complete the current message (or its header, when that is still partial);
    /// 0 at a boundary.
    pub fn bytes_to_boundary(&self) -> usize {
        match self.have {
            0 => 0,
            HEADER => self.remaining,
            have => HEADER - have,
        }
    }

    /// Drops the capture buffer's memory if a message grew it (called when a connection goes idle).
    pub fn shrink(&mut self) {
        if self.captured.capacity() > IDLE_CAPTURE_CAPACITY && self.have == 0 {
            self.captured = Vec::new();
        }
    }
}

/// Encodes a message with `tag` and `body` (used by tests and for the few messages pgwarden sends).
pub fn encode(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Terminate (`X`): what pgwarden sends the server before it closes a session itself.
pub const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(scanner: &mut Scanner, chunks: &[&[u8]], keep: usize) -> Result<Vec<(u8, usize, Vec<u8>)>, ScanError> {
        let mut out = Vec::new();
        for chunk in chunks {
            scanner.feed(chunk, |_| keep, |f| out.push((f.tag, f.len, f.body.to_vec())))?;
        }
        Ok(out)
    }

    fn stream() -> Vec<u8> {
        let mut s = encode(b'Q', b"select 1\0");
        s.extend(encode(b'S', b""));
        s.extend(encode(b'd', &vec![7u8; 300]));
        s.extend(encode(b'Z', b"I"));
        s
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let mut sc = Scanner::default();
        let frames = collect(&mut sc, &[&stream()], 16).unwrap();
        let tags: Vec<u8> = frames.iter().map(|f| f.0).collect();
        assert_eq!(tags, b"QSdZ");
        assert_eq!(frames[0].2, b"select 1\0");
        assert_eq!(frames[2].1, 300);
        assert_eq!(frames[2].2.len(), 16);
        assert!(sc.at_boundary());
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let s = stream();
        let mut reference = Scanner::default();
        let want = collect(&mut reference, &[&s], 16).unwrap();
        for cut in 0..=s.len() {
            let mut sc = Scanner::default();
            let got = collect(&mut sc, &[&s[..cut], &s[cut..]], 16).unwrap();
            assert_eq!(got, want, "split at {cut}");
            assert!(sc.at_boundary());
        }
        // Byte by byte.
        let mut sc = Scanner::default();
        let chunks: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(collect(&mut sc, &chunks, 16).unwrap(), want);
    }

    #[test]
    fn every_prefix_needs_more_and_is_not_at_boundary() {
        let msg = encode(b'P', b"stmt\0select $1\0\0\0");
        for cut in 1..msg.len() {
            let mut sc = Scanner::default();
            let frames = collect(&mut sc, &[&msg[..cut]], 100).unwrap();
            assert!(frames.is_empty(), "prefix {cut}");
            assert!(!sc.at_boundary(), "prefix {cut}");
        }
    }

    #[test]
    fn bytes_to_boundary_counts_down() {
        let msg = encode(b'D', &[1u8; 10]);
        let mut sc = Scanner::default();
        assert_eq!(sc.bytes_to_boundary(), 0);
        collect(&mut sc, &[&msg[..3]], 0).unwrap();
        assert_eq!(sc.bytes_to_boundary(), 2, "the rest of the header");
        collect(&mut sc, &[&msg[3..8]], 0).unwrap();
        assert_eq!(sc.bytes_to_boundary(), 7);
        collect(&mut sc, &[&msg[8..]], 0).unwrap();
        assert_eq!(sc.bytes_to_boundary(), 0);
    }

    #[test]
    fn bad_lengths_are_errors() {
        for len in [-5i32, 0, 3] {
            let mut bytes = vec![b'Q'];
            bytes.extend_from_slice(&len.to_be_bytes());
            let mut sc = Scanner::default();
            assert_eq!(collect(&mut sc, &[&bytes], 0), Err(ScanError { tag: 'Q', len, at: Some(0) }));
            assert!(sc.at_boundary());
            // After a whole message, in one chunk: the error says where the bad header starts.
            let mut two = encode(b'S', b"");
            two.extend_from_slice(&bytes);
            let mut sc = Scanner::default();
            assert_eq!(collect(&mut sc, &[&two], 0), Err(ScanError { tag: 'Q', len, at: Some(5) }));
            // A header split across chunks: its start is in the earlier chunk.
            let mut sc = Scanner::default();
            assert_eq!(collect(&mut sc, &[&two[..7], &two[7..]], 0), Err(ScanError { tag: 'Q', len, at: None }));
            assert!(!sc.at_boundary(), "part of the bad header went on");
        }
    }

    #[test]
    fn shrink_releases_a_grown_capture() {
        let big = encode(b'Q', &vec![b'x'; 10_000]);
        let mut sc = Scanner::default();
        collect(&mut sc, &[&big[..100], &big[100..]], 20_000).unwrap();
        assert!(sc.captured.capacity() >= 10_000);
        sc.shrink();
        assert_eq!(sc.captured.capacity(), 0);
    }
}
