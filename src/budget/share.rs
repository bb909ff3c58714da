//! Each pod's share of its workload's budget: a pure, deterministic function of (budget, the workload's
//! pods), so every coordinator replica gives the same answer with no leader and no state of its own.
//!
//! Members are ordered oldest first (creation time, then name, then uid); each gets `budget / n`, and the
//! `budget % n` oldest get one more. So shares sum to exactly `min(budget, …)` ≤ budget, differ by at most
//! one, and every member gets at least one while `budget ≥ n`. Below that the `budget` oldest members get
//! one each and the newest get **zero**: a pod that arrives when its workload already has as many pods as
//! connections is refused new connections (SQLSTATE 53300 naming the budget) until an older pod leaves.
//! Oldest-first keeps the remainder with the pods that have had it longest: a new pod never gets more than
//! an older one, and a pod leaving never lowers another's share.

/// What orders a member: its creation time (seconds since the epoch), then its name and uid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberKey {
    pub created: i64,
    pub name: String,
    pub uid: String,
}

/// The share of the member at `rank` (0 = oldest) among `members` members.
pub fn share_at(budget: u32, members: usize, rank: usize) -> u32 {
    if members == 0 || rank >= members {
        return 0;
    }
    let n = members as u64;
    let (base, extra) = (u64::from(budget) / n, u64::from(budget) % n);
    (base + u64::from((rank as u64) < extra)) as u32
}

/// Every member's share, in the order given (the order does not change any share).
pub fn shares(budget: u32, members: &[MemberKey]) -> Vec<u32> {
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_by(|&a, &b| members[a].cmp(&members[b]));
    let mut out = vec![0; members.len()];
    for (rank, &i) in order.iter().enumerate() {
        out[i] = share_at(budget, members.len(), rank);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(created: i64, name: &str) -> MemberKey {
        MemberKey { created, name: name.to_string(), uid: format!("uid-{name}") }
    }

    fn members() -> impl Strategy<Value = Vec<MemberKey>> {
        proptest::collection::btree_set((0i64..50, 0u32..1000), 0..40)
            .prop_map(|s| s.into_iter().map(|(c, n)| key(c, &format!("pod-{n}"))).collect())
    }

    #[test]
    fn examples() {
        let three = [key(1, "a"), key(2, "b"), key(3, "c")];
        assert_eq!(shares(6, &three), [2, 2, 2]);
        let four = [key(1, "a"), key(2, "b"), key(3, "c"), key(4, "d")];
        assert_eq!(shares(6, &four), [2, 2, 1, 1]);
        assert_eq!(shares(2, &three), [1, 1, 0], "below one per pod the newest get nothing");
        assert_eq!(shares(0, &three), [0, 0, 0]);
        assert_eq!(shares(u32::MAX, &[key(1, "a")]), [u32::MAX]);
        assert!(shares(5, &[]).is_empty());
    }

    proptest! {
        #[test]
        fn shares_sum_to_at_most_the_budget_and_differ_by_at_most_one(budget in 0u32..200, m in members()) {
            let s = shares(budget, &m);
            let sum: u64 = s.iter().map(|&x| u64::from(x)).sum();
            prop_assert!(sum <= u64::from(budget));
            if !m.is_empty() {
                prop_assert_eq!(sum, u64::from(budget), "the whole budget is given out");
                let (lo, hi) = (s.iter().min().unwrap(), s.iter().max().unwrap());
                prop_assert!(hi - lo <= 1, "{:?}", s);
                if budget as usize >= m.len() {
                    prop_assert!(*lo >= 1, "every pod gets one while budget >= pods: {:?}", s);
                }
            }
        }

        #[test]
        fn order_of_the_pods_does_not_change_any_share(budget in 0u32..200, m in members(), seed in any::<u64>()) {
            let before = shares(budget, &m);
            let mut shuffled: Vec<(MemberKey, u32)> = m.iter().cloned().zip(before.iter().copied()).collect();
            // A deterministic shuffle from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let keys: Vec<MemberKey> = shuffled.iter().map(|(k, _)| k.clone()).collect();
            let after = shares(budget, &keys);
            for ((_, was), now) in shuffled.iter().zip(after) {
                prop_assert_eq!(*was, now);
            }
        }

        #[test]
        fn a_pod_leaving_gives_its_share_back(budget in 0u32..200, m in members(), leaving in any::<prop::sample::Index>()) {
            prop_assume!(!m.is_empty());
            let before = shares(budget, &m);
            let gone = leaving.index(m.len());
            let mut rest = m.clone();
            rest.remove(gone);
            let after = shares(budget, &rest);
            let kept: Vec<u32> = before.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, &s)| s).collect();
            for (was, now) in kept.iter().zip(&after) {
                prop_assert!(now >= was, "no remaining pod loses: {:?} -> {:?}", kept, after);
            }
            let sum_after: u32 = after.iter().sum();
            let sum_before: u32 = before.iter().sum();
            prop_assert!(rest.is_empty() || sum_after == sum_before, "the share went back to the others");
        }

        #[test]
        fn a_new_pod_gets_no_more_than_any_older_one(budget in 0u32..200, m in members()) {
            let before = shares(budget, &m);
            let mut more = m.clone();
            more.push(key(1_000, "newest"));
            let after = shares(budget, &more);
            for (was, now) in before.iter().zip(&after) {
                prop_assert!(now <= was, "no older pod gains from a new one: {:?} -> {:?}", before, after);
            }
            let newest = *after.last().unwrap();
            prop_assert!(after.iter().all(|&s| s >= newest), "the newest pod never gets the remainder: {:?}", after);
        }
    }
}
