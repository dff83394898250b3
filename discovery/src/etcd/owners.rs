//! Which replica health-checks which instance: rendezvous (highest random
//! weight) hashing of the instance id over the live replicas.
//!
//! Why hashing and not a leader: every replica already sees the live replica
//! set through its mirror (each holds `<prefix>/replicas/<id>` on its own
//! lease), so each decides alone, with no election round trip and no single
//! replica doing every check. When a replica's lease expires its key goes,
//! every mirror sees the delete within one watch event, and only *its*
//! instances move (each to the replica with the next-highest weight): the
//! checks move within one lease TTL and stay put otherwise. While two mirrors
//! disagree for a moment, an instance may be checked twice or skipped for one
//! interval; status writes are compare-and-swap, so a double check costs a
//! request, never a wrong status.

/// FNV-1a over the bytes, then a 64-bit finalizer (splitmix64) so close ids
/// spread: stable across builds and platforms, unlike `DefaultHasher`.
fn weight(replica: &str, instance: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica
        .as_bytes()
        .iter()
        .chain(&[0xff])
        .chain(instance.as_bytes())
    {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The replica among `live` that owns `instance`; `None` when `live` is empty.
pub fn owner<'a>(live: impl IntoIterator<Item = &'a str>, instance: &str) -> Option<&'a str> {
    live.into_iter().max_by_key(|r| (weight(r, instance), *r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{:016x}", i * 7919)).collect()
    }

    #[test]
    fn splits_evenly_and_moves_only_the_dead_replicas_share() {
        let three = ["r1", "r2", "r3"];
        let mut before = HashMap::new();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for id in ids(3000) {
            let o = owner(three, &id).unwrap();
            *count.entry(o).or_default() += 1;
            before.insert(id, o);
        }
        for r in three {
            assert!((800..1200).contains(&count[r]), "{count:?}");
        }
        let two = ["r1", "r3"];
        for (id, was) in &before {
            let now = owner(two, id).unwrap();
            if *was != "r2" {
                assert_eq!(now, *was, "{id} moved though its owner lives");
            }
        }
        assert_eq!(owner([], "x"), None);
        assert_eq!(
            owner(["r2", "r1"], "x"),
            owner(["r1", "r2"], "x"),
            "order-free"
        );
    }
}
