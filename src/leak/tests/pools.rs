//! The detector on simulated pods (src/leak/pool_sim.rs): every pool model, 1 to 32 worker processes,
//! bursty, diurnal and skewed load, judged per process (Unix socket) and per key (TCP).

use super::super::pool_sim::{simulate, Load, PoolKind, Scenario, SimResult, LOADS, POOLS};
use super::super::verdict::Signal;
use super::*;

const WORKERS: [usize; 6] = [1, 2, 4, 8, 16, 32];
const T5: Duration = Duration::from_secs(5);

fn fixed_size(kind: &PoolKind) -> bool {
    kind.min == kind.max
}

/// Every scenario of `kinds` × `workers` × loads × `seeds` seeds.
fn each(kinds: &[PoolKind], workers: &[usize], seeds: u64, per_process: bool) -> Vec<Scenario> {
    let mut v = Vec::new();
    for &kind in kinds {
        for &n in workers {
            for load in LOADS {
                for seed in 1..=seeds {
                    v.push(Scenario::healthy(kind, n, load, seed * 7919 + n as u64, per_process));
                }
            }
        }
    }
    v
}

fn describe(sc: &Scenario, r: &SimResult) -> String {
    let f: Vec<_> = r.flagged.iter().take(3).map(|f| (f.at.as_secs(), f.signal, f.worker, f.leaked)).collect();
    format!("{} × {} {:?} seed {} (per process: {}): {f:?}", sc.kind.name, sc.workers, sc.load, sc.seed, sc.per_process)
}

#[test]
fn healthy_single_pools_are_never_flagged() {
    for sc in each(&POOLS, &[1], 8, false) {
        let r = simulate(sc);
        assert!(r.flagged.is_empty(), "{}", describe(&sc, &r));
        assert!(
            r.peak >= 4 && (fixed_size(&sc.kind) || r.peak > r.trough),
            "{}: the load never made the pool grow and shrink ({}..{})",
            describe(&sc, &r),
            r.trough,
            r.peak
        );
    }
}

/// A pod's worker processes, each with its own pool, told apart by the proxy (Unix socket): never
/// flagged, for every pool, pod size and load.
#[test]
fn healthy_worker_processes_told_apart_are_never_flagged() {
    for sc in each(&POOLS, &WORKERS, 3, true) {
        let r = simulate(sc);
        assert!(r.flagged.is_empty(), "{}", describe(&sc, &r));
    }
}

/// One worker leaks a connection every threshold/2 from a random moment, its pool told apart from the
/// others: nothing but its leaked connections is ever named, and it is flagged within 3 thresholds of
/// the first moment the wire shows the leak, its pool opening on demand after it. Before that, its leaks
/// took connections the pool had free (a pool at its maximum, or with spares), which on the wire is the
/// same as requests that finished. Fixed-size pools (min = max) never open on demand: see the cap test.
#[test]
fn a_leaking_worker_told_apart_is_flagged_within_three_thresholds_naming_only_its_leaks() {
    let kinds: Vec<PoolKind> = POOLS.into_iter().filter(|k| !fixed_size(k)).collect();
    let (mut late, mut within_3t_of_leak, mut visible) = (Vec::new(), 0, 0);
    let all = each(&kinds, &WORKERS, 3, true);
    for sc in &all {
        let from = Duration::from_secs(20 + sc.seed % 160);
        let sc = sc.leaking(T5 / 2, from);
        let r = simulate(sc);
        let first_leak = r.first_leak.expect("leaked");
        assert!(r.flagged.iter().all(|f| f.leaked), "a healthy connection named: {}", describe(&sc, &r));
        let flagged = r.flagged.iter().find(|f| f.leaked).map(|f| f.at);
        if flagged.is_some_and(|at| at <= first_leak + 3 * T5) {
            within_3t_of_leak += 1;
        }
        let Some(shown) = r.leaker_grew.filter(|&g| g + 3 * T5 <= sc.run_for) else { continue };
        visible += 1;
        let shown = shown.max(first_leak);
        match flagged {
            Some(at) if at <= shown + 3 * T5 => {}
            Some(at) => late.push(format!("{:?} after it showed: {}", at - shown, describe(&sc, &r))),
            None => late.push(format!("never: {}", describe(&sc, &r))),
        }
    }
    assert!(late.is_empty(), "{} of {visible} late:\n{}", late.len(), late.join("\n"));
    println!(
        "{within_3t_of_leak} of {} leaks flagged within 3T of the first leak; {visible} showed on the wire",
        all.len()
    );
    assert!(visible * 10 >= all.len() * 8, "the load rarely made a leaking pool grow: {visible} of {}", all.len());
}

/// A fixed-size pool (min = max, HikariCP's default) never opens on demand: its leaks change nothing the
/// wire shows until it starves, and then its requests wait inside the application, not at the proxy.
/// Nothing is flagged (nor falsely); README says so and what makes them visible (a cap below the pool's size).
#[test]
fn a_fixed_size_pool_that_leaks_shows_nothing_on_the_wire() {
    for kind in POOLS.into_iter().filter(fixed_size) {
        for seed in 1..=4 {
            let sc = Scenario::healthy(kind, 1, Load::Bursty, seed, true).leaking(T5 / 2, Duration::from_secs(20));
            let r = simulate(sc);
            assert!(r.first_leak.is_some() && r.leaker_grew.is_none() && r.flagged.is_empty(), "{}", describe(&sc, &r));
        }
    }
}

/// A single pool leaking a connection every second beside healthy traffic: within 4 thresholds of its
/// first leak when told apart (one process), within 6 over TCP, where a key's connections must first
/// outlast twice the idle spells its pools end themselves (they may be several workers' pools).
#[test]
fn a_single_pool_leaking_one_connection_per_second_is_flagged_within_four_thresholds_or_six_over_tcp() {
    for kind in POOLS.into_iter().filter(|k| !fixed_size(k)) {
        for per_process in [false, true] {
            let sc = Scenario { cap: Some(kind.max), ..Scenario::healthy(kind, 1, Load::Bursty, 42, per_process) }
                .leaking(Duration::from_secs(1), Duration::from_secs(20));
            let r = simulate(sc);
            let first = r.flagged.first().unwrap_or_else(|| panic!("never flagged: {}", describe(&sc, &r)));
            let within = if per_process { 4 * T5 } else { 6 * T5 };
            assert!(first.at <= Duration::from_secs(20) + within, "{}", describe(&sc, &r));
            assert!(r.flagged.iter().all(|f| f.leaked), "{}", describe(&sc, &r));
        }
    }
}

/// Over TCP (one history per key): healthy pods of every pool model, size and load, 6 seeds each (864
/// pod-runs), flagged in at most 0.5 % of them (measured: none; with 12 seeds 4 of 1,728, all 16-worker
/// pods of pools without a minimum, in the first seconds of a night: README "What is flagged, and when").
#[test]
fn healthy_pods_sharing_a_key_over_tcp_are_flagged_in_at_most_half_a_percent_of_runs() {
    let all = each(&POOLS, &WORKERS, 6, false);
    let flagged: Vec<String> = all
        .iter()
        .map(|&sc| (sc, simulate(sc)))
        .filter(|(_, r)| !r.flagged.is_empty())
        .map(|(sc, r)| describe(&sc, &r))
        .collect();
    assert!(flagged.len() * 200 <= all.len(), "{} of {} flagged:\n{}", flagged.len(), all.len(), flagged.join("\n"));
}

/// The incident: a service that leaks every connection it borrows (one a second, nothing else), alone on
/// its key over TCP with no cap, is named within 3 thresholds of its third leaked connection, and only its
/// leaked connections are named. Fixed-size pools never open on demand (see the test above).
#[test]
fn a_service_leaking_every_borrow_over_tcp_is_named_within_three_thresholds_of_its_third_leak() {
    let kinds: Vec<PoolKind> = POOLS.into_iter().filter(|k| !fixed_size(k)).collect();
    for sc in each(&kinds, &[1], 2, false) {
        let sc = sc.leaking_only(Duration::from_secs(1), Duration::from_secs(20 + sc.seed % 160));
        let r = simulate(sc);
        let third = r.first_leak.expect("leaked") + Duration::from_secs(2);
        let named = r.flagged.first().map(|f| f.at);
        assert!(named.is_some_and(|at| at <= third + 3 * T5), "{}", describe(&sc, &r));
        assert!(r.flagged.iter().all(|f| f.leaked && f.signal == Signal::Staircase), "{}", describe(&sc, &r));
    }
}

/// Over TCP (one history per key): healthy pods flagged, and how fast leakers are named.
#[test]
#[ignore = "a measurement: cargo test --release --lib -- --ignored --nocapture shared_keys_measured"]
fn shared_keys_measured() {
    let seeds: u64 = std::env::var("SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let mut rows = std::collections::BTreeMap::new();
    for sc in each(&POOLS, &WORKERS, seeds, false) {
        let r = simulate(sc);
        if !r.flagged.is_empty() {
            println!("FP (proven {}) {}", r.proven_several, describe(&sc, &r));
        }
        let e = rows.entry((sc.workers, sc.kind.name)).or_insert((0, 0));
        e.0 += usize::from(!r.flagged.is_empty());
        e.1 += 1;
    }
    let mut totals = std::collections::BTreeMap::new();
    for ((n, _), (f, of)) in &rows {
        let t = totals.entry(*n).or_insert((0, 0));
        *t = (t.0 + f, t.1 + of);
    }
    for (n, (f, of)) in totals {
        println!("healthy N={n}: {f}/{of} flagged");
    }
    let kinds: Vec<PoolKind> = POOLS.into_iter().filter(|k| !fixed_size(k)).collect();
    for n in WORKERS {
        let (mut named, mut within, mut wrong, mut all) = (0, 0, 0, 0);
        let mut lags = Vec::new();
        for sc in each(&kinds, &[n], seeds, false) {
            let sc = sc.leaking_only(Duration::from_secs(1), Duration::from_secs(20 + sc.seed % 160));
            let sc = Scenario { run_for: sc.leak_from + Duration::from_secs(90), ..sc };
            let r = simulate(sc);
            all += 1;
            wrong += usize::from(r.flagged.iter().any(|f| !f.leaked));
            if let Some(f) = r.flagged.iter().find(|f| !f.leaked) {
                println!("healthy named beside a pure leaker: {:?} at {:?} {}", f.signal, f.at, describe(&sc, &r));
            }
            let third = r.first_leak.unwrap() + Duration::from_secs(2);
            if let Some(at) = r.flagged.iter().find(|f| f.leaked).map(|f| f.at) {
                named += 1;
                if at > third + 3 * T5 && n == 1 {
                    println!("pure leak late ({:?}): {}", at - third, describe(&sc, &r));
                }
                lags.push(at.saturating_sub(third).as_secs());
                within += usize::from(at <= third + 3 * T5);
            } else {
                println!("pure leak never named: {}", describe(&sc, &r));
            }
        }
        lags.sort();
        println!("pure leaker among N={n}: named {named}/{all}, within 3T of the third {within}, healthy named {wrong}, lag after third p50 {:?} max {:?}", lags.get(lags.len() / 2), lags.last());
        let (mut named, mut within, mut wrong, mut all) = (0, 0, 0, 0);
        for sc in each(&kinds, &[n], seeds, false) {
            let sc = sc.leaking(T5 / 2, Duration::from_secs(20 + sc.seed % 160));
            let r = simulate(sc);
            all += 1;
            wrong += usize::from(r.flagged.iter().any(|f| !f.leaked));
            if let Some(at) = r.flagged.iter().find(|f| f.leaked).map(|f| f.at) {
                named += 1;
                within += usize::from(at <= r.first_leak.unwrap() + 10 * T5);
            }
        }
        println!("leaking worker (every T/2 beside healthy traffic) among N={n}: named {named}/{all}, within 10T {within}, healthy named {wrong}");
    }
}
