//! The client table: per-client slots (caps), the FIFO wait queue, and the per-client counters.
//!
//! Owns: admission against `max_connections` and `max_total_connections` (race-free: every check and
//! increment happens under one lock, taken only at connect and disconnect, never per message), the
//! [`Slot`] whose `Drop` gives a slot back and hands it straight to the oldest eligible waiter, and the
//! counters the stats issue exposes. Does not own: deciding the policy (see `policy`) or what the client is
//! told (see `session`).

mod entry;
pub mod latency;

pub use entry::{ClientCounters, ClientEntry};

use crate::config::Limit;
use crate::identity::ClientId;
use crate::vocab::RefuseReason;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

struct Waiter {
    seq: u64,
    cap: Option<u32>,
    grant: oneshot::Sender<Slot>,
}

struct ClientSlots {
    entry: Arc<ClientEntry>,
    open: u32,
    waiters: VecDeque<Waiter>,
    /// When the client last held no slot and had no waiter (for pruning idle clients).
    empty_since: Option<Instant>,
}

#[derive(Default)]
struct Table {
    clients: HashMap<String, ClientSlots>,
    total_open: u32,
    total_cap: Option<u32>,
    /// This pod's share of its workload budget (`None`: no budget cap), set by the budget poller.
    budget_cap: Option<u32>,
    next_seq: u64,
    /// Waiters queued over all clients: a disconnect with nobody waiting scans no client.
    waiters: usize,
    /// Entries made so far (the next entry's generation).
    entries_made: u64,
}

/// All clients. Cheap to clone through `Arc`.
#[derive(Default)]
pub struct Clients {
    table: Mutex<Table>,
}

/// The outcome of an admission attempt.
pub enum Admission {
    /// A slot is held; `would_refuse` is set in report-only mode when enforcement would have refused.
    Granted {
        slot: Slot,
        would_refuse: Option<RefuseReason>,
    },
    Refused(RefuseReason),
    /// Queued (`on_limit: wait`); await the ticket.
    Queued(WaitTicket),
    /// A new client key, and `max_clients` keys each hold a connection: nothing was created for it.
    TooManyClients,
}

/// What admission needs to know about the policy in force.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub client: Limit,
    pub total: Limit,
    pub wait: bool,
    pub enforce: bool,
    /// Distinct client keys held at once (`max_clients`).
    pub max_clients: usize,
}

impl Clients {
    /// The entry of `client`, created on first sight.
    pub fn entry(&self, client: &Arc<ClientId>) -> Arc<ClientEntry> {
        let mut t = self.lock();
        t.slots(client).entry.clone()
    }

    /// Tries to take a slot for `client`.
    pub fn admit(self: &Arc<Self>, client: &Arc<ClientId>, caps: Caps) -> Admission {
        let mut t = self.lock();
        if !t.clients.contains_key(client.display()) && !t.make_room(caps.max_clients) {
            return Admission::TooManyClients;
        }
        t.total_cap = caps.total.0;
        let total_full = caps.total.0.is_some_and(|cap| t.total_open >= cap);
        let budget_full = t.budget_cap.is_some_and(|cap| t.total_open >= cap);
        let slots = t.slots(client);
        *slots.entry.max_connections.lock().unwrap_or_else(|e| e.into_inner()) = caps.client.0;
        let client_full = caps.client.0.is_some_and(|cap| slots.open >= cap) || !slots.waiters.is_empty();
        let full = if client_full {
            Some(RefuseReason::ClientLimit)
        } else if total_full {
            Some(RefuseReason::TotalLimit)
        } else if budget_full {
            Some(RefuseReason::Budget)
        } else {
            None
        };
        match full {
            None => Admission::Granted { slot: self.take(&mut t, client), would_refuse: None },
            Some(reason) if !caps.enforce => {
                t.slots(client).entry.counters.would_refuse.add(reason);
                Admission::Granted { slot: self.take(&mut t, client), would_refuse: Some(reason) }
            }
            Some(_) if caps.wait => {
                let seq = t.next_seq;
                t.next_seq += 1;
                let (grant, rx) = oneshot::channel();
                let slots = t.slots(client);
                slots.waiters.push_back(Waiter { seq, cap: caps.client.0, grant });
                slots.empty_since = None;
                slots.entry.counters.waiting.fetch_add(1, Relaxed);
                t.waiters += 1;
                Admission::Queued(WaitTicket { clients: self.clone(), client: client.clone(), seq, rx: Some(rx) })
            }
            Some(reason) => {
                t.slots(client).entry.counters.refused.add(reason);
                Admission::Refused(reason)
            }
        }
    }

    /// Counts a refusal that happened outside `admit` (a wait that timed out).
    pub fn count_refusal(&self, client: &Arc<ClientId>, reason: RefuseReason) {
        self.entry(client).counters.refused.add(reason);
    }

    /// Every client entry (for stats), in no particular order.
    pub fn entries(&self) -> Vec<Arc<ClientEntry>> {
        self.lock().clients.values().map(|s| s.entry.clone()).collect()
    }

    pub fn total_open(&self) -> u32 {
        self.lock().total_open
    }

    /// Forgets clients that held nothing for `idle_for` (their counters go with them), or for
    /// `never_logged_in_for` when none of their connections ever logged in, except those `keep` names.
    pub fn prune(
        &self,
        now: Instant,
        idle_for: Duration,
        never_logged_in_for: Duration,
        keep: impl Fn(&str) -> bool,
    ) -> Vec<Arc<ClientEntry>> {
        let mut t = self.lock();
        let mut gone = Vec::new();
        t.clients.retain(|key, s| {
            let idle_for = if s.entry.logged_in.load(Relaxed) { idle_for } else { never_logged_in_for };
            let keep = keep(key) || s.empty_since.is_none_or(|since| now.duration_since(since) < idle_for);
            if !keep {
                gone.push(s.entry.clone());
            }
            keep
        });
        gone
    }

    /// This pod's budget share changed (`None`: no budget cap): waiters that now fit are admitted at once.
    /// Connections already open above a smaller cap stay; the caller decides whether to reclaim idle ones.
    pub fn set_budget_cap(self: &Arc<Self>, cap: Option<u32>) {
        let mut t = self.lock();
        if t.budget_cap != cap {
            t.budget_cap = cap;
            self.dispatch(&mut t);
        }
    }

    pub fn budget_cap(&self) -> Option<u32> {
        self.lock().budget_cap
    }

    /// New settings: every client's cap (also of its queued waiters) and the total cap are recomputed with
    /// `cap_of`, and waiters that now fit are admitted at once.
    pub fn recheck(self: &Arc<Self>, cap_of: impl Fn(&ClientId) -> Option<u32>, total: Option<u32>) {
        let mut t = self.lock();
        t.total_cap = total;
        for s in t.clients.values_mut() {
            let cap = cap_of(&s.entry.id);
            *s.entry.max_connections.lock().unwrap_or_else(|e| e.into_inner()) = cap;
            for w in s.waiters.iter_mut() {
                w.cap = cap;
            }
        }
        self.dispatch(&mut t);
    }

    fn take(self: &Arc<Self>, t: &mut Table, client: &Arc<ClientId>) -> Slot {
        t.total_open += 1;
        let slots = t.slots(client);
        slots.open += 1;
        slots.empty_since = None;
        slots.entry.counters.open.fetch_add(1, Relaxed);
        slots.entry.counters.opened.fetch_add(1, Relaxed);
        Slot { clients: Some(self.clone()), client: client.clone() }
    }

    fn release(self: &Arc<Self>, client: &Arc<ClientId>) {
        let mut t = self.lock();
        t.total_open -= 1;
        let slots = t.slots(client);
        slots.open -= 1;
        slots.entry.counters.open.fetch_sub(1, Relaxed);
        self.dispatch(&mut t);
        let slots = t.slots(client);
        if slots.open == 0 && slots.waiters.is_empty() {
            slots.empty_since = Some(Instant::now());
        }
    }

    /// Hands free slots to waiters: always the oldest waiter whose own cap and the total cap allow it.
    fn dispatch(self: &Arc<Self>, t: &mut Table) {
        loop {
            if t.waiters == 0 {
                return;
            }
            if t.total_cap.into_iter().chain(t.budget_cap).any(|cap| t.total_open >= cap) {
                return;
            }
            let next = t
                .clients
                .iter()
                .filter_map(|(key, s)| {
                    let w = s.waiters.front()?;
                    w.cap.is_none_or(|cap| s.open < cap).then_some((w.seq, key.clone()))
                })
                .min();
            let Some((_, key)) = next else { return };
            let slots = t.clients.get_mut(&key).expect("key from this table");
            let waiter = slots.waiters.pop_front().expect("front exists");
            t.waiters -= 1;
            let client = slots.entry.id.clone();
            let slot = self.take(t, &client);
            if let Err(slot) = waiter.grant.send(slot) {
                // The waiter left before its grant: undo without re-entering the lock.
                slot.disarm();
                t.total_open -= 1;
                let slots = t.slots(&client);
                slots.open -= 1;
                slots.entry.counters.open.fetch_sub(1, Relaxed);
                slots.entry.counters.opened.fetch_sub(1, Relaxed);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Table {
    /// Room for one more client key under `max`: the key that has held nothing longest gives way (one that
    /// never logged in first). `false`: every key holds a connection or a waiter.
    fn make_room(&mut self, max: usize) -> bool {
        if self.clients.len() < max.max(1) {
            return true;
        }
        let gives_way = self
            .clients
            .iter()
            .filter_map(|(key, s)| s.empty_since.map(|since| (s.entry.logged_in.load(Relaxed), since, key)))
            .min()
            .map(|(_, _, key)| key.clone());
        match gives_way {
            Some(key) => self.clients.remove(&key).is_some(),
            None => false,
        }
    }

    fn slots(&mut self, client: &Arc<ClientId>) -> &mut ClientSlots {
        let made = &mut self.entries_made;
        self.clients.entry(client.display().to_string()).or_insert_with(|| ClientSlots {
            entry: Arc::new(ClientEntry::new(client.clone(), {
                *made += 1;
                *made
            })),
            open: 0,
            waiters: VecDeque::new(),
            empty_since: Some(Instant::now()),
        })
    }
}

/// A held slot; dropping it gives the slot back (to the oldest eligible waiter first).
pub struct Slot {
    clients: Option<Arc<Clients>>,
    client: Arc<ClientId>,
}

impl Slot {
    fn disarm(mut self) {
        self.clients = None;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(clients) = self.clients.take() {
            clients.release(&self.client);
        }
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slot({})", self.client)
    }
}

/// A place in the wait queue. Await [`WaitTicket::granted`]; dropping the ticket leaves the queue.
pub struct WaitTicket {
    clients: Arc<Clients>,
    client: Arc<ClientId>,
    seq: u64,
    rx: Option<oneshot::Receiver<Slot>>,
}

impl WaitTicket {
    /// Resolves when a slot is handed over.
    ///
    /// # Cancellation safety
    /// Cancel-safe: a slot granted but not yet received is dropped with the ticket and so given back.
    pub async fn granted(&mut self) -> Slot {
        let rx = self.rx.as_mut().expect("ticket not yet used");
        let slot = rx.await.expect("the table never drops a waiter's sender without a grant");
        self.rx = None;
        slot
    }

    /// The slot, if it was already handed over.
    pub fn try_granted(&mut self) -> Option<Slot> {
        let slot = self.rx.as_mut()?.try_recv().ok()?;
        self.rx = None;
        Some(slot)
    }
}

impl Drop for WaitTicket {
    fn drop(&mut self) {
        // Drop the receiver first: a slot already inside it is released (taking the lock) before we lock.
        drop(self.rx.take());
        let mut t = self.clients.lock();
        let slots = t.slots(&self.client);
        let before = slots.waiters.len();
        slots.waiters.retain(|w| w.seq != self.seq);
        let removed = before - slots.waiters.len();
        slots.entry.counters.waiting.fetch_sub(1, Relaxed);
        if slots.open == 0 && slots.waiters.is_empty() {
            slots.empty_since = Some(Instant::now());
        }
        t.waiters -= removed;
    }
}

#[cfg(test)]
mod tests;
