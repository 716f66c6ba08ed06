//! `--shard K/N`: a deterministic split of a run's scenarios over N
//! machines, so a nightly suite runs on several at once (each machine the
//! same command with its own K). Scenarios are ordered by name and dealt
//! round-robin: every scenario in exactly one shard, shard sizes within
//! one of each other, the same split on every machine whatever order the
//! scenarios were named in.

use std::str::FromStr;

/// Shard `k` of `n` (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub k: usize,
    pub n: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: expected K/N with 1 <= K <= N, e.g. 2/4");
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let (k, n): (usize, usize) = (
            k.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if k == 0 || n == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard { k, n })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.k, self.n)
    }
}

impl Shard {
    /// The items of this shard, in their given order: the items sorted
    /// by `name` are dealt round-robin, the i-th (0-based) to shard
    /// i % n + 1.
    pub fn take<T>(&self, items: Vec<T>, name: impl Fn(&T) -> &str) -> Vec<T> {
        let mut order: Vec<usize> = (0..items.len()).collect();
        order.sort_by(|&a, &b| name(&items[a]).cmp(name(&items[b])).then(a.cmp(&b)));
        let mut mine = vec![false; items.len()];
        for (i, &idx) in order.iter().enumerate() {
            mine[idx] = i % self.n + 1 == self.k;
        }
        items
            .into_iter()
            .zip(mine)
            .filter_map(|(t, m)| m.then_some(t))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_parsed_and_bad_ones_refused() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { k: 2, n: 4 }));
        for bad in ["0/4", "5/4", "1/0", "1", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    /// The union of the shards is the whole, no item twice, sizes within
    /// one, and the split does not depend on the order given.
    #[test]
    fn every_item_is_in_exactly_one_shard() {
        let names: Vec<String> = (0..15).map(|i| format!("s{:02}", (i * 7) % 15)).collect();
        for n in 1..=16 {
            let mut seen: Vec<String> = Vec::new();
            let mut sizes = Vec::new();
            for k in 1..=n {
                let part = Shard { k, n }.take(names.clone(), |s| s.as_str());
                sizes.push(part.len());
                let mut rev = names.clone();
                rev.reverse();
                let mut again = Shard { k, n }.take(rev, |s| s.as_str());
                again.sort();
                let mut sorted = part.clone();
                sorted.sort();
                assert_eq!(sorted, again, "shard {k}/{n} depends on the order");
                seen.extend(part);
            }
            seen.sort();
            let mut all = names.clone();
            all.sort();
            assert_eq!(seen, all, "n={n}");
            assert!(
                sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1,
                "{sizes:?}"
            );
        }
    }
}
