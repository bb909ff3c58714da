use super::*;
use crate::identity::Field;
use proptest::prelude::*;

fn client(name: &str) -> Arc<ClientId> {
    Arc::new(ClientId::new(vec![(Field::ApplicationName, name.into())]))
}

fn caps(client: Option<u32>, total: Option<u32>, wait: bool, enforce: bool) -> Caps {
    Caps { client: Limit(client), total: Limit(total), wait, enforce, max_clients: 10_000 }
}

fn granted(a: Admission) -> Slot {
    match a {
        Admission::Granted { slot, would_refuse: None } => slot,
        _ => panic!("expected a plain grant"),
    }
}

#[test]
fn cap_refuses_then_frees() {
    let clients = Arc::new(Clients::default());
    let a = client("a");
    let c = caps(Some(2), None, false, true);
    let s1 = granted(clients.admit(&a, c));
    let _s2 = granted(clients.admit(&a, c));
    assert!(matches!(clients.admit(&a, c), Admission::Refused(RefuseReason::ClientLimit)));
    let other = granted(clients.admit(&client("b"), c));
    drop(s1);
    let _s3 = granted(clients.admit(&a, c));
    let e = clients.entry(&a);
    assert_eq!(e.counters.open.load(Relaxed), 2);
    assert_eq!(e.counters.opened.load(Relaxed), 3);
    assert_eq!(e.counters.refused.get(RefuseReason::ClientLimit), 1);
    drop(other);
    assert_eq!(clients.total_open(), 2);
}

#[test]
fn total_cap_counts_every_client() {
    let clients = Arc::new(Clients::default());
    let c = caps(None, Some(2), false, true);
    let _a = granted(clients.admit(&client("a"), c));
    let _b = granted(clients.admit(&client("b"), c));
    assert!(matches!(clients.admit(&client("c"), c), Admission::Refused(RefuseReason::TotalLimit)));
}

#[test]
fn waiters_are_served_fifo_on_release() {
    let clients = Arc::new(Clients::default());
    let a = client("a");
    let c = caps(Some(1), None, true, true);
    let held = granted(clients.admit(&a, c));
    let Admission::Queued(mut first) = clients.admit(&a, c) else { panic!() };
    let Admission::Queued(mut second) = clients.admit(&a, c) else { panic!() };
    assert_eq!(clients.entry(&a).counters.waiting.load(Relaxed), 2);
    assert!(first.try_granted().is_none());
    drop(held);
    let slot = first.try_granted().expect("first waiter gets the freed slot at once");
    assert!(second.try_granted().is_none());
    drop(first);
    assert_eq!(clients.entry(&a).counters.open.load(Relaxed), 1);
    drop(slot);
    assert!(second.try_granted().is_some());
    drop(second);
    assert_eq!(clients.entry(&a).counters.waiting.load(Relaxed), 0);
    assert_eq!(clients.total_open(), 0);
}

#[test]
fn a_waiter_that_leaves_frees_nothing_and_loses_nothing() {
    let clients = Arc::new(Clients::default());
    let a = client("a");
    let c = caps(Some(1), None, true, true);
    let held = granted(clients.admit(&a, c));
    let Admission::Queued(gone) = clients.admit(&a, c) else { panic!() };
    let Admission::Queued(mut stays) = clients.admit(&a, c) else { panic!() };
    drop(gone);
    assert_eq!(clients.entry(&a).counters.open.load(Relaxed), 1, "leaving the queue frees nothing");
    drop(held);
    let slot = stays.try_granted();
    assert!(slot.is_some(), "the slot skips the waiter who left");
    assert_eq!(clients.total_open(), 1);
}

#[test]
fn granted_but_never_received_slot_is_given_back() {
    let clients = Arc::new(Clients::default());
    let a = client("a");
    let c = caps(Some(1), None, true, true);
    let held = granted(clients.admit(&a, c));
    let Admission::Queued(ticket) = clients.admit(&a, c) else { panic!() };
    drop(held); // grant sent into the ticket's channel
    drop(ticket); // never received
    assert_eq!(clients.total_open(), 0);
    assert_eq!(clients.entry(&a).counters.open.load(Relaxed), 0);
}

#[test]
fn total_cap_waiters_of_other_clients_are_served_oldest_first() {
    let clients = Arc::new(Clients::default());
    let c = caps(None, Some(1), true, true);
    let held = granted(clients.admit(&client("a"), c));
    let Admission::Queued(mut b) = clients.admit(&client("b"), c) else { panic!() };
    let Admission::Queued(mut c2) = clients.admit(&client("c"), c) else { panic!() };
    drop(held);
    let slot = b.try_granted();
    assert!(slot.is_some());
    assert!(c2.try_granted().is_none());
    drop(slot);
    assert!(c2.try_granted().is_some());
}

#[test]
fn raising_a_cap_on_reload_admits_waiters_at_once() {
    let clients = Arc::new(Clients::default());
    let a = client("a");
    let c = caps(Some(1), None, true, true);
    let _held = granted(clients.admit(&a, c));
    let Admission::Queued(mut w1) = clients.admit(&a, c) else { panic!() };
    let Admission::Queued(mut w2) = clients.admit(&a, c) else { panic!() };
    clients.recheck(|_| Some(2), None);
    let s1 = w1.try_granted();
    assert!(s1.is_some(), "the oldest waiter fits under the new cap");
    assert!(w2.try_granted().is_none(), "the next does not");
    assert_eq!(*clients.entry(&a).max_connections.lock().unwrap(), Some(2));
    // Lowering the cap: queued waiters are held to it too.
    clients.recheck(|_| Some(1), None);
    drop(_held);
    assert!(w2.try_granted().is_none(), "still 1 open (w1's) against a cap of 1");
}

#[test]
fn report_only_grants_and_counts_would_refuse() {
    let clients = Arc::new(Clients::default());
    let a = client("a");
    let c = caps(Some(1), None, false, false);
    let _s1 = granted(clients.admit(&a, c));
    let Admission::Granted { slot: _s2, would_refuse: Some(RefuseReason::ClientLimit) } = clients.admit(&a, c) else {
        panic!()
    };
    let e = clients.entry(&a);
    assert_eq!(e.counters.would_refuse.get(RefuseReason::ClientLimit), 1);
    assert_eq!(e.counters.refused.get(RefuseReason::ClientLimit), 0);
    assert_eq!(e.counters.open.load(Relaxed), 2);
}

#[test]
fn refusal_logs_are_rate_limited() {
    let clients = Arc::new(Clients::default());
    let e = clients.entry(&client("a"));
    let t0 = Instant::now();
    assert_eq!(e.refusal_lines.hit(t0), Some(0));
    assert_eq!(e.refusal_lines.hit(t0 + Duration::from_secs(1)), None);
    assert_eq!(e.refusal_lines.hit(t0 + Duration::from_secs(2)), None);
    assert_eq!(e.refusal_lines.hit(t0 + Duration::from_secs(11)), Some(2));
}

#[test]
fn idle_clients_are_pruned() {
    let clients = Arc::new(Clients::default());
    let slot = granted(clients.admit(&client("a"), caps(None, None, false, true)));
    let later = Instant::now() + Duration::from_secs(601);
    assert!(
        clients.prune(later, Duration::from_secs(600), Duration::from_secs(600), |_| false).is_empty(),
        "a client holding a slot stays"
    );
    drop(slot);
    let later = Instant::now() + Duration::from_secs(601);
    assert!(
        clients.prune(later, Duration::from_secs(600), Duration::from_secs(600), |k| k == "a").is_empty(),
        "kept while asked to"
    );
    assert_eq!(clients.prune(later, Duration::from_secs(600), Duration::from_secs(600), |_| false).len(), 1);
    assert!(clients.entries().is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Disconnect(usize),
    LeaveQueue(usize),
    Reload { cap: Option<u32>, wait: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize).prop_map(Op::Connect),
        3 => (0..8usize).prop_map(Op::Disconnect),
        1 => (0..8usize).prop_map(Op::LeaveQueue),
        1 => (proptest::option::of(1..4u32), any::<bool>()).prop_map(|(cap, wait)| Op::Reload { cap, wait }),
    ]
}

proptest! {
    /// Random connect / disconnect / wait timeout / refusal / reload sequences keep the counters balanced,
    /// and with enforcement no client ever holds more than its cap nor all clients more than the total.
    #[test]
    fn counters_balance_and_caps_hold(ops in proptest::collection::vec(op(), 1..120), enforce in any::<bool>()) {
        let clients = Arc::new(Clients::default());
        let names = [client("a"), client("b"), client("c")];
        let total = Some(5);
        let (mut cap, mut wait) = (Some(2u32), true);
        // The highest cap in force so far (`None` once unlimited was in force): lowering a cap drops nothing.
        let mut highest: Option<u32> = cap;
        let mut held: Vec<(usize, Slot)> = Vec::new();
        let mut queued: Vec<(usize, WaitTicket)> = Vec::new();
        let mut released = [0u64; 3];
        for op in ops {
            match op {
                Op::Connect(i) => match clients.admit(&names[i], Caps { client: Limit(cap), total: Limit(total), wait, enforce, max_clients: 10_000 }) {
                    Admission::Granted { slot, .. } => held.push((i, slot)),
                    Admission::Queued(t) => queued.push((i, t)),
                    Admission::Refused(_) => {}
                    Admission::TooManyClients => unreachable!("three names under a cap of 10,000"),
                },
                Op::Disconnect(k) if !held.is_empty() => {
                    let (i, slot) = held.remove(k % held.len());
                    drop(slot);
                    released[i] += 1;
                }
                Op::LeaveQueue(k) if !queued.is_empty() => {
                    queued.remove(k % queued.len());
                }
                Op::Reload { cap: c, wait: w } => {
                    cap = c;
                    highest = highest.zip(c).map(|(h, c)| h.max(c));
                    wait = w;
                }
                _ => {}
            }
            // Collect grants handed to waiters.
            let mut still = Vec::new();
            for (i, mut t) in queued.drain(..) {
                match t.try_granted() {
                    Some(slot) => held.push((i, slot)),
                    None => still.push((i, t)),
                }
            }
            queued = still;
            for (i, name) in names.iter().enumerate() {
                let e = clients.entry(name);
                let open = e.counters.open.load(Relaxed) as usize;
                let holding = held.iter().filter(|(j, _)| *j == i).count();
                prop_assert_eq!(open, holding);
                if let (true, Some(h)) = (enforce, highest) {
                    prop_assert!(open <= h as usize, "client {} holds {} > cap {}", i, open, h);
                }
                prop_assert_eq!(e.counters.opened.load(Relaxed), open as u64 + released[i]);
                prop_assert_eq!(e.counters.waiting.load(Relaxed) as usize, queued.iter().filter(|(j, _)| *j == i).count());
            }
            prop_assert_eq!(clients.total_open() as usize, held.len());
            if enforce {
                prop_assert!(held.len() <= 5, "total cap held");
            }
        }
        drop(queued);
        drop(held);
        prop_assert_eq!(clients.total_open(), 0);
        for name in &names {
            let e = clients.entry(name);
            prop_assert_eq!(e.counters.open.load(Relaxed), 0);
            prop_assert_eq!(e.counters.waiting.load(Relaxed), 0);
        }
    }
}

#[test]
fn the_budget_share_caps_the_pod_and_a_larger_share_admits_waiters() {
    let clients = Arc::new(Clients::default());
    let (a, b) = (client("a"), client("b"));
    clients.set_budget_cap(Some(2));
    assert_eq!(clients.budget_cap(), Some(2));
    let c = caps(None, None, false, true);
    let _s1 = granted(clients.admit(&a, c));
    let _s2 = granted(clients.admit(&b, c));
    assert!(matches!(clients.admit(&a, c), Admission::Refused(RefuseReason::Budget)), "the share counts every client");
    assert_eq!(clients.entry(&a).counters.refused.get(RefuseReason::Budget), 1);
    let report_only = caps(None, None, false, false);
    assert!(matches!(
        clients.admit(&a, report_only),
        Admission::Granted { would_refuse: Some(RefuseReason::Budget), .. }
    ));
    // A total cap below the share is named first.
    assert!(matches!(
        clients.admit(&a, caps(None, Some(1), false, true)),
        Admission::Refused(RefuseReason::TotalLimit)
    ));
    // Waiting for a slot: a larger share lets the waiter in at once.
    let Admission::Queued(mut ticket) = clients.admit(&b, caps(None, None, true, true)) else { panic!("queued") };
    assert!(ticket.try_granted().is_none());
    clients.set_budget_cap(Some(3));
    let slot = ticket.try_granted().expect("granted at once");
    assert_eq!(clients.total_open(), 3);
    drop(slot);
    // No budget cap again.
    clients.set_budget_cap(None);
    let _more: Vec<Slot> = (0..5).map(|_| granted(clients.admit(&a, c))).collect();
}

/// `max_clients`: a new key takes the place of the key empty longest, one that never logged in first; when
/// every key holds a connection, the new key is refused and nothing is created for it.
#[test]
fn client_keys_are_capped_the_longest_empty_giving_way_never_a_connected_one() {
    let clients = Arc::new(Clients::default());
    let caps = Caps { max_clients: 3, ..caps(None, None, false, true) };
    let (a, b, c, d, e) = (client("a"), client("b"), client("c"), client("d"), client("e"));
    let held_a = match clients.admit(&a, caps) {
        Admission::Granted { slot, .. } => slot,
        _ => panic!("granted"),
    };
    clients.entry(&a).logged_in.store(true, Relaxed);
    for n in [&b, &c] {
        let Admission::Granted { slot, .. } = clients.admit(n, caps) else { panic!("granted") };
        drop(slot);
    }
    clients.entry(&c).logged_in.store(true, Relaxed);
    // Full: b never logged in and is empty: it gives way to d.
    let Admission::Granted { slot: held_d, .. } = clients.admit(&d, caps) else { panic!("granted") };
    let keys = |c: &Clients| {
        let mut k: Vec<String> = c.entries().iter().map(|e| e.id.display().to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(keys(&clients), ["a", "c", "d"]);
    // Then c, empty though it logged in; a and d hold connections.
    let Admission::Granted { slot: held_e, .. } = clients.admit(&e, caps) else { panic!("granted") };
    assert_eq!(keys(&clients), ["a", "d", "e"]);
    assert!(matches!(clients.admit(&b, caps), Admission::TooManyClients));
    assert_eq!(keys(&clients), ["a", "d", "e"], "nothing created for a refused key");
    drop((held_a, held_d, held_e));
}

/// A key forgotten and seen again is a new entry with a new generation (what the metrics exporter tells
/// entries apart by: an address can be reused by the next allocation).
#[test]
fn a_key_seen_again_is_a_new_generation() {
    let clients = Clients::default();
    let a = client("a");
    let first = clients.entry(&a).generation;
    assert_eq!(clients.entry(&a).generation, first);
    let later = Instant::now() + Duration::from_secs(3600);
    assert_eq!(clients.prune(later, Duration::from_secs(600), Duration::from_secs(10), |_| false).len(), 1);
    assert!(clients.entry(&a).generation > first);
}
