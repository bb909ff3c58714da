//! The named prepared statements of one session, for the text an Execute of a cached statement ran. No I/O.
//!
//! A name is learnt when the server confirms it (ParseComplete), not when the client sends Parse: a Parse the
//! server rejects, or skips after an error in its batch, defines nothing. Until then it waits in a queue in
//! send order, where a Bind in the same pipelined batch already finds it. Both are bounded: the statements
//! kept are an LRU of at most [`MAX_STATEMENTS`] names and [`MAX_BYTES`] of text (the least recently used
//! goes first), and a client that pipelines more unconfirmed Parses than the queue holds has them not learnt
//! (until its pipeline drains) rather than growing it.
//!
//! Batches: every message answered by a ReadyForQuery (Query, Sync, FunctionCall) ends one; each queued
//! Parse carries the number of the batch it belongs to, so an ErrorResponse drops exactly the Parses the
//! server skips (the rest of the failing batch) and a ReadyForQuery those never answered.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::Arc;

/// Statement names kept per session.
pub const MAX_STATEMENTS: usize = 1024;
/// Bytes of names and text kept per session (learnt and queued together).
pub const MAX_BYTES: usize = 64 * 1024;
/// Unconfirmed Parses queued at most.
const MAX_QUEUED: usize = 256;
/// Queue slots kept while the session is idle.
const IDLE_QUEUE_CAPACITY: usize = 8;

struct Kept {
    text: Arc<[u8]>,
    used: u64,
}

struct Queued {
    batch: u64,
    name: Box<[u8]>,
    text: Arc<[u8]>,
}

#[derive(Default)]
pub struct Statements {
    kept: HashMap<Box<[u8]>, Kept, NameHash>,
    queue: VecDeque<Queued>,
    bytes: usize,
    clock: u64,
    /// The queue overflowed: Parses are not learnt until every batch is answered.
    overflowed: bool,
}

impl std::fmt::Debug for Statements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Statements({} kept, {} queued, {} bytes)", self.kept.len(), self.queue.len(), self.bytes)
    }
}

/// The statement names' hash: a word-at-a-time multiply-xor keyed per session, since every Bind of a named
/// statement hashes its name (SipHash cost about 200 instructions per transaction, issue 31). A client can
/// only collide its own names, at most [`MAX_STATEMENTS`] of them, under a key it does not see.
#[derive(Clone)]
struct NameHash(u64);

impl Default for NameHash {
    fn default() -> Self {
        NameHash(RandomState::new().hash_one(0x7067_7761_7264_656e_u64))
    }
}

impl BuildHasher for NameHash {
    type Hasher = NameHasher;
    fn build_hasher(&self) -> NameHasher {
        NameHasher(self.0)
    }
}

struct NameHasher(u64);

impl NameHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(23) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.add(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut w = [0u8; 8];
            w[..tail.len()].copy_from_slice(tail);
            self.add(u64::from_le_bytes(w) ^ (tail.len() as u64) << 60);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    /// Spreads every input bit into the low bits (the table's index) and the high ones (its tags).
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^ (x >> 33)
    }
}

fn cost(name: &[u8], text: &[u8]) -> usize {
    name.len() + text.len() + 64
}

impl Statements {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.kept.is_empty() && self.queue.is_empty()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.len()
    }

    /// Bytes of names and text held (learnt and queued).
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The client sent Parse for `name` in batch `batch`.
    pub fn parse(&mut self, batch: u64, name: &[u8], text: Arc<[u8]>) {
        let c = cost(name, &text);
        if self.overflowed || self.queue.len() >= MAX_QUEUED || c > MAX_BYTES {
            self.overflowed = true;
            self.clear_queue();
            return;
        }
        self.make_room(c);
        self.bytes += c;
        self.queue.push_back(Queued { batch, name: name.into(), text });
    }

    /// The server confirmed the oldest Parse still owed an answer (`answered` batches are complete).
    pub fn parse_complete(&mut self, answered: u64) {
        self.drop_answered(answered);
        let Some(q) = self.queue.pop_front() else { return };
        self.bytes -= cost(&q.name, &q.text);
        let c = cost(&q.name, &q.text);
        self.remove(&q.name);
        self.make_room(c);
        if self.kept.len() >= MAX_STATEMENTS {
            self.evict_one();
        }
        self.bytes += c;
        self.clock += 1;
        self.kept.insert(q.name, Kept { text: q.text, used: self.clock });
    }

    /// An ErrorResponse: the server skips the rest of the current batch (number `answered`).
    pub fn error(&mut self, answered: u64) {
        while self.queue.front().is_some_and(|q| q.batch <= answered) {
            let q = self.queue.pop_front().expect("front exists");
            self.bytes -= cost(&q.name, &q.text);
        }
    }

    /// A ReadyForQuery: `answered` batches are complete; `idle` when nothing more is owed.
    pub fn ready(&mut self, answered: u64, idle: bool) {
        self.drop_answered(answered);
        if idle {
            self.overflowed = false;
            // A pipeline of Parses grew the queue (up to 10 KiB of slots): give it back between batches.
            if self.queue.is_empty() && self.queue.capacity() > IDLE_QUEUE_CAPACITY {
                self.queue = VecDeque::new();
            }
        }
    }

    /// The text of `name` for a Bind: the newest queued Parse of that name, else the learnt one.
    pub fn lookup(&mut self, name: &[u8]) -> Option<Arc<[u8]>> {
        if let Some(q) = self.queue.iter().rev().find(|q| &*q.name == name) {
            return Some(q.text.clone());
        }
        self.clock += 1;
        let clock = self.clock;
        self.kept.get_mut(name).map(|k| {
            k.used = clock;
            k.text.clone()
        })
    }

    /// Close of a statement, or `DEALLOCATE name`.
    pub fn remove(&mut self, name: &[u8]) {
        if let Some(k) = self.kept.remove(name) {
            self.bytes -= cost(name, &k.text);
        }
    }

    /// `DEALLOCATE ALL` or `DISCARD ALL`.
    pub fn remove_all(&mut self) {
        self.kept = HashMap::with_hasher(self.kept.hasher().clone());
        self.bytes = self.queue.iter().map(|q| cost(&q.name, &q.text)).sum();
    }

    fn drop_answered(&mut self, answered: u64) {
        while self.queue.front().is_some_and(|q| q.batch < answered) {
            let q = self.queue.pop_front().expect("front exists");
            self.bytes -= cost(&q.name, &q.text);
        }
    }

    fn clear_queue(&mut self) {
        for q in self.queue.drain(..) {
            self.bytes -= cost(&q.name, &q.text);
        }
    }

    /// Evicts learnt statements until `more` bytes fit the budget.
    fn make_room(&mut self, more: usize) {
        while self.bytes + more > MAX_BYTES && !self.kept.is_empty() {
            self.evict_one();
        }
    }

    fn evict_one(&mut self) {
        let Some(oldest) = self.kept.iter().min_by_key(|(_, k)| k.used).map(|(n, _)| n.clone()) else { return };
        self.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_hash_spreads_names_over_the_low_bits() {
        let h = NameHash::default();
        let mut low: Vec<u64> = (0..1024).map(|i| h.hash_one(format!("s{i}").as_bytes()) & 1023).collect();
        low.sort_unstable();
        low.dedup();
        // 1,024 names in 1,024 slots at random fill about 647 of them; a weak hash fills far fewer.
        assert!(low.len() > 550, "{} distinct", low.len());
        assert_ne!(h.hash_one(&b"a"[..]), h.hash_one(&b"a\0"[..]));
        assert_ne!(h.hash_one(&b"P0_1"[..]), NameHash::default().hash_one(&b"P0_1"[..]), "keyed per session");
    }

    fn text(s: &str) -> Arc<[u8]> {
        Arc::from(s.as_bytes())
    }

    #[test]
    fn a_long_pipeline_of_parses_gives_its_queue_back_when_idle() {
        let mut s = Statements::default();
        for k in 0..200u32 {
            s.parse(0, format!("p{k}").as_bytes(), text("select"));
        }
        assert!(s.queue.capacity() >= 200);
        s.error(0);
        s.ready(1, true);
        assert!(s.queue.capacity() <= IDLE_QUEUE_CAPACITY, "{} slots kept while idle", s.queue.capacity());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn learnt_on_parse_complete_and_found_while_queued() {
        let mut s = Statements::default();
        s.parse(0, b"s1", text("select 1"));
        assert_eq!(s.lookup(b"s1").as_deref(), Some(&b"select 1"[..]), "a Bind in the same batch finds it");
        assert_eq!(s.len(), 0);
        s.parse_complete(0);
        s.ready(1, true);
        assert_eq!(s.len(), 1);
        assert_eq!(s.lookup(b"s1").as_deref(), Some(&b"select 1"[..]));
        s.remove(b"s1");
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
    }

    #[test]
    fn a_rejected_parse_and_the_skipped_rest_of_its_batch_define_nothing() {
        let mut s = Statements::default();
        // Batch 0: good, bad, skipped; Sync. Batch 1: good; Sync.
        s.parse(0, b"a", text("select 1"));
        s.parse(0, b"b", text("selec oops"));
        s.parse(0, b"c", text("select 3"));
        s.parse(1, b"d", text("select 4"));
        s.parse_complete(0);
        s.error(0);
        s.ready(1, false);
        s.parse_complete(1);
        s.ready(2, true);
        let mut names: Vec<_> = s.kept.keys().map(|k| String::from_utf8_lossy(k).into_owned()).collect();
        names.sort();
        assert_eq!(names, ["a", "d"]);
        assert_eq!(s.bytes(), cost(b"a", b"select 1") + cost(b"d", b"select 4"));
    }

    #[test]
    fn bounded_in_names_and_bytes_least_recently_used_first() {
        let mut s = Statements::default();
        for i in 0..3 * MAX_STATEMENTS {
            let name = format!("a{i}");
            s.parse(i as u64, name.as_bytes(), text("select 1"));
            s.parse_complete(i as u64);
            s.ready(i as u64 + 1, true);
            if i == 10 {
                s.lookup(b"a0");
            }
        }
        assert_eq!(s.len(), MAX_STATEMENTS.min(MAX_BYTES / cost(b"a1000", b"select 1")));
        assert!(s.bytes() <= MAX_BYTES);
        assert!(s.lookup(&format!("a{}", 3 * MAX_STATEMENTS - 1).into_bytes()).is_some(), "the newest is kept");
        let big = text(&"x".repeat(4000));
        for i in 0..100u64 {
            s.parse(10_000 + i, format!("big{i}").as_bytes(), big.clone());
            s.parse_complete(10_000 + i);
        }
        assert!(s.bytes() <= MAX_BYTES, "{}", s.bytes());
    }

    #[test]
    fn a_pipeline_past_the_queue_is_not_learnt_and_stays_bounded() {
        let mut s = Statements::default();
        for i in 0..10 * MAX_QUEUED {
            s.parse(0, format!("p{i}").as_bytes(), text("select 1"));
        }
        assert!(s.queue.len() <= MAX_QUEUED);
        for _ in 0..10 * MAX_QUEUED {
            s.parse_complete(0);
        }
        assert_eq!(s.len(), 0, "nothing learnt out of order");
        s.ready(1, true);
        s.parse(1, b"later", text("select 2"));
        s.parse_complete(1);
        assert_eq!(s.len(), 1, "learning resumes once the pipeline drained");
    }

    #[test]
    fn deallocate_all_keeps_the_queue() {
        let mut s = Statements::default();
        s.parse(0, b"a", text("select 1"));
        s.parse_complete(0);
        s.parse(1, b"b", text("select 2"));
        s.remove_all();
        assert_eq!(s.len(), 0);
        assert_eq!(s.bytes(), cost(b"b", b"select 2"));
    }
}
