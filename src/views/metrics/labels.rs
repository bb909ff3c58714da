//! Which `client` label each client's counters are exported under, and the counters that make every
//! `_total` series only go up. Pure: fed the live clients at each scrape, no I/O, no clock.
//!
//! A client keeps its own label once it has one (the first `max_tracked` seen, and any leak suspect); the
//! rest share `other`. A series is what its clients counted while under it: the clients under its label now
//! (from the moment they joined it) plus what clients that left it had counted there (`retired`): a client
//! forgotten after 10 idle minutes, one promoted from `other` to a label of its own (it became a suspect),
//! one whose entry was recreated. So `other` never goes down, an own label never does while it exists, and
//! the sum over all series is exactly what was counted. A label whose client is gone stays (its series
//! holding its last value) until its place is needed by a new client; then it goes, and its counts move into
//! `other`.

use crate::clients::latency::Hist;
use crate::vocab::{CloseReason, RefuseReason};
use std::collections::HashMap;

pub const OTHER: &str = "other";

/// One client's monotonic counts, as exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub opened: u64,
    pub refused: [u64; RefuseReason::COUNT],
    pub would_refuse: [u64; RefuseReason::COUNT],
    pub closed: [u64; CloseReason::COUNT],
    pub would_close: [u64; CloseReason::COUNT],
    /// Queries cancelled at `query_timeout`, and (report-only) those that would have been.
    pub canceled: u64,
    pub would_cancel: u64,
    pub query: Hist,
    pub transaction: Hist,
    pub slot_wait: Hist,
}

impl Counts {
    /// `self - o`, field by field (`o` is an earlier snapshot of the same counters).
    fn since(&self, o: &Counts) -> Counts {
        let mut d = *self;
        d.opened -= o.opened;
        let sub = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x -= y);
        sub(&mut d.refused, &o.refused);
        sub(&mut d.would_refuse, &o.would_refuse);
        sub(&mut d.closed, &o.closed);
        sub(&mut d.would_close, &o.would_close);
        d.canceled -= o.canceled;
        d.would_cancel -= o.would_cancel;
        d.query = self.query.since(&o.query);
        d.transaction = self.transaction.since(&o.transaction);
        d.slot_wait = self.slot_wait.since(&o.slot_wait);
        d
    }

    fn add(&mut self, o: &Counts) {
        self.opened += o.opened;
        let sum = |a: &mut [u64], b: &[u64]| a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        sum(&mut self.refused, &o.refused);
        sum(&mut self.would_refuse, &o.would_refuse);
        sum(&mut self.closed, &o.closed);
        sum(&mut self.would_close, &o.would_close);
        self.canceled += o.canceled;
        self.would_cancel += o.would_cancel;
        self.query.add(&o.query);
        self.transaction.add(&o.transaction);
        self.slot_wait.add(&o.slot_wait);
    }
}

/// A live client at this scrape.
#[derive(Debug, Clone)]
pub struct Live<'a> {
    pub key: &'a str,
    /// Identifies the client's entry (its generation): a new entry for the same key counts from zero again.
    pub entry: u64,
    pub counts: Counts,
    pub suspected: bool,
}

#[derive(Debug)]
struct Seen {
    entry: u64,
    label: String,
    /// Its counts when it joined `label` (they belong to the series it was under before).
    base: Counts,
    /// Its counts at the last scrape.
    last: Counts,
}

impl Seen {
    /// What it counted under its label.
    fn under_label(&self) -> Counts {
        self.last.since(&self.base)
    }
}

#[derive(Debug, Default)]
pub struct Labels {
    /// Own labels and what clients that left them counted.
    tracked: HashMap<String, Counts>,
    other: Counts,
    /// Each client last seen.
    seen: HashMap<String, Seen>,
    /// When each own label last had a live client (scrape number), to free the stalest first.
    last_live: HashMap<String, u64>,
    scrape: u64,
    /// This scrape's own labels without a live client, stalest first: what `free_one` may free. Built once
    /// per scrape (a label with a live client is never freed, and none becomes freeable mid-scrape), so a
    /// scrape is O(clients log clients), not O(clients²).
    freeable: std::collections::VecDeque<String>,
}

impl Labels {
    /// The label of every live client (in `live`'s order) and every series' counts, `other` included.
    pub fn scrape(&mut self, live: &[Live<'_>], max_tracked: usize) -> (Vec<String>, HashMap<String, Counts>) {
        self.scrape += 1;
        // Clients gone, or back with a new entry: what they counted stays with their label.
        let present: HashMap<&str, u64> = live.iter().map(|c| (c.key, c.entry)).collect();
        let gone: Vec<String> = self
            .seen
            .iter()
            .filter(|(key, s)| present.get(key.as_str()) != Some(&s.entry))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let s = self.seen.remove(&key).expect("listed");
            self.retire(&s.label, &s.under_label());
        }
        let mut freeable: Vec<&String> = self.tracked.keys().filter(|l| !present.contains_key(l.as_str())).collect();
        freeable.sort_by_key(|l| (self.last_live.get(*l).copied().unwrap_or(0), l.as_str()));
        self.freeable = freeable.into_iter().cloned().collect();
        // Labels past the limit (given to suspects) go once their clients are gone.
        while self.tracked.len() > max_tracked && self.free_one() {}
        // Most active first, so the tracked places go to the clients that matter.
        let mut order: Vec<usize> = (0..live.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(live[i].counts.opened));
        let mut labels = vec![String::new(); live.len()];
        for i in order {
            let c = &live[i];
            let label = self.label_for(c, max_tracked);
            let base = match self.seen.remove(c.key) {
                None => Counts::default(),
                Some(s) if s.label == label => s.base,
                Some(s) => {
                    // Promoted from `other`: `other` keeps what it counted there; the new label counts on.
                    self.retire(&s.label, &s.under_label());
                    s.last
                }
            };
            if label != OTHER {
                self.last_live.insert(label.clone(), self.scrape);
            }
            self.seen.insert(c.key.to_string(), Seen { entry: c.entry, label: label.clone(), base, last: c.counts });
            labels[i] = label;
        }
        let mut series: HashMap<String, Counts> = self.tracked.clone();
        series.insert(OTHER.to_string(), self.other);
        for s in self.seen.values() {
            series.entry(s.label.clone()).or_default().add(&s.under_label());
        }
        (labels, series)
    }

    fn label_for(&mut self, c: &Live<'_>, max_tracked: usize) -> String {
        if c.key == OTHER {
            return OTHER.to_string();
        }
        if self.tracked.contains_key(c.key) {
            return c.key.to_string();
        }
        if self.tracked.len() >= max_tracked && c.suspected {
            // A suspect always gets its own label: free the stalest label whose client is gone, if any.
            self.free_one();
        }
        if self.tracked.len() < max_tracked || c.suspected {
            self.tracked.insert(c.key.to_string(), Counts::default());
            return c.key.to_string();
        }
        if self.free_one() {
            self.tracked.insert(c.key.to_string(), Counts::default());
            return c.key.to_string();
        }
        OTHER.to_string()
    }

    /// Frees the own label that has gone longest without a live client; its counts move into `other`.
    fn free_one(&mut self) -> bool {
        while let Some(label) = self.freeable.pop_front() {
            if let Some(counts) = self.tracked.remove(&label) {
                self.last_live.remove(&label);
                self.other.add(&counts);
                return true;
            }
        }
        false
    }

    fn retire(&mut self, label: &str, counts: &Counts) {
        match self.tracked.get_mut(label) {
            Some(retired) => retired.add(counts),
            None => self.other.add(counts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Connect(u8),
        Close(u8),
        Refuse(u8),
        Forget(u8),
        Suspect(u8),
        Scrape,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12).prop_map(Op::Connect),
            (0u8..12).prop_map(Op::Close),
            (0u8..12).prop_map(Op::Refuse),
            (0u8..12).prop_map(Op::Forget),
            (0u8..12).prop_map(Op::Suspect),
            Just(Op::Scrape),
        ]
    }

    fn totals(c: &Counts) -> Vec<u64> {
        let mut v = vec![c.opened];
        v.extend(c.refused);
        v.extend(c.would_refuse);
        v.extend(c.closed);
        v.extend(c.would_close);
        v
    }

    proptest! {
        /// Over any connect/close/refuse/forget/promote sequence, every exported counter only goes up while
        /// its series exists, `other` always exists, and nothing counted is lost from the sum of all series.
        #[test]
        fn every_counter_is_monotonic(ops in proptest::collection::vec(op(), 1..200), max_tracked in 1usize..5) {
            struct Client {
                entry: u64,
                counts: Counts,
                suspected: bool,
            }
            let mut clients: HashMap<u8, Client> = HashMap::new();
            let mut next_entry = 0u64;
            let mut labels = Labels::default();
            let mut last: HashMap<String, Vec<u64>> = HashMap::new();
            let mut counted_ever = 0u64;
            let keys: Vec<String> = (0..12).map(|i| format!("c{i}")).collect();
            fn scrape(
                clients: &HashMap<u8, Client>,
                keys: &[String],
                labels: &mut Labels,
                max_tracked: usize,
                last: &mut HashMap<String, Vec<u64>>,
                counted_ever: u64,
            ) -> Result<(), TestCaseError> {
                let live: Vec<Live<'_>> = clients
                    .iter()
                    .map(|(i, c)| Live { key: &keys[*i as usize], entry: c.entry, counts: c.counts, suspected: c.suspected })
                    .collect();
                let (_, series) = labels.scrape(&live, max_tracked);
                prop_assert!(series.contains_key(OTHER));
                // Own labels: at most max_tracked, or more only while their (once suspect) clients live.
                prop_assert!(series.len() <= 1 + max_tracked.max(live.len()));
                let sum: u64 = series.values().map(|c| totals(c).iter().sum::<u64>()).sum();
                prop_assert_eq!(sum, counted_ever, "nothing counted is lost");
                for (label, counts) in &series {
                    let now = totals(counts);
                    if let Some(before) = last.get(label) {
                        for (a, b) in before.iter().zip(&now) {
                            prop_assert!(b >= a, "{} went down: {:?} -> {:?}", label, before, now);
                        }
                    }
                }
                *last = series.iter().map(|(l, c)| (l.clone(), totals(c))).collect();
                Ok(())
            }
            fn client<'a>(clients: &'a mut HashMap<u8, Client>, next_entry: &mut u64, i: u8) -> &'a mut Client {
                clients.entry(i).or_insert_with(|| {
                    *next_entry += 1;
                    Client { entry: *next_entry, counts: Counts::default(), suspected: false }
                })
            }
            for op in ops {
                match op {
                    Op::Connect(i) => { client(&mut clients, &mut next_entry, i).counts.opened += 1; counted_ever += 1; }
                    Op::Close(i) => { client(&mut clients, &mut next_entry, i).counts.closed[0] += 1; counted_ever += 1; }
                    Op::Refuse(i) => { client(&mut clients, &mut next_entry, i).counts.refused[0] += 1; counted_ever += 1; }
                    Op::Suspect(i) => client(&mut clients, &mut next_entry, i).suspected = true,
                    // The client table forgets a client only after 10 idle minutes: scrapes saw it by then.
                    Op::Forget(i) => {
                        scrape(&clients, &keys, &mut labels, max_tracked, &mut last, counted_ever)?;
                        clients.remove(&i);
                    }
                    Op::Scrape => scrape(&clients, &keys, &mut labels, max_tracked, &mut last, counted_ever)?,
                }
            }
        }
    }

    #[test]
    fn a_promoted_client_leaves_its_counts_in_other() {
        let mut labels = Labels::default();
        let a = |n: u64, suspected| Live {
            key: "a",
            entry: 1,
            counts: Counts { opened: n, ..Counts::default() },
            suspected,
        };
        let b = Live { key: "b", entry: 2, counts: Counts { opened: 100, ..Counts::default() }, suspected: false };
        let (l, s) = labels.scrape(&[b.clone(), a(5, false)], 1);
        assert_eq!(l, ["b", OTHER]);
        assert_eq!(s[OTHER].opened, 5);
        let (l, s) = labels.scrape(&[b, a(7, true)], 1);
        assert_eq!(l, ["b", "a"], "a suspect gets its own label");
        assert_eq!(s[OTHER].opened, 5, "other did not go down");
        assert_eq!(s["a"].opened, 2, "from its promotion on");
    }
}
