//! Placement: which shard holds the row with a given id.
//!
//! The rule is stable (it depends on the id and the shard count only, never on data or history)
//! and balanced (sequential ids and ids with a common stride alike spread evenly):
//!
//! ```text
//! shard(id, n) = splitmix64(id as u64) mod n
//! ```
//!
//! `splitmix64` is the finalizer of Steele, Lea and Flood's SplitMix64 generator: a bijection on
//! 64-bit integers whose every output bit depends on every input bit. A point read by id therefore
//! touches exactly one shard. Changing the rule would strand every stored row, so it never changes;
//! a table with another shard count is rebuilt by copying rows (restore places them anew).

/// SplitMix64's increment (the golden ratio in 64 bits).
const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finalizer.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(SPLITMIX64_GAMMA);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard (0-based) that holds the row with this id in a table of `shard_count` shards.
/// Sebastiano Vigna's SplitMix64 generator, seeded with its state: each number is the finalizer
/// above of the state, which then moves on by the increment. A tiny, well-mixed generator any
/// language reproduces (the image hash's projection directions, the protocol's simulation).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.0);
        self.0 = self.0.wrapping_add(SPLITMIX64_GAMMA);
        out
    }
}

pub fn shard_of(id: i64, shard_count: usize) -> usize {
    assert!(shard_count > 0, "a table has at least one shard");
    (splitmix64(id as u64) % shard_count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_never_change() {
        // Pinned: stored rows depend on these.
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(splitmix64(1), 0x910a_2dec_8902_5cc1);
        let first: Vec<usize> = (1..=8).map(|id| shard_of(id, 4)).collect();
        assert_eq!(first, vec![1, 2, 1, 2, 2, 0, 3, 2]);
    }

    #[test]
    fn balanced_over_sequential_and_strided_ids() {
        for shard_count in [2usize, 3, 4, 8, 16] {
            for stride in [1i64, 4, 8, 1000] {
                let mut counts = vec![0usize; shard_count];
                let rows = 10_000usize;
                for i in 0..rows as i64 {
                    counts[shard_of(1 + i * stride, shard_count)] += 1;
                }
                let expected = rows / shard_count;
                for &c in &counts {
                    assert!(
                        c > expected * 9 / 10 && c < expected * 11 / 10,
                        "{shard_count} shards, stride {stride}: {counts:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn negative_ids_are_placed() {
        assert!(shard_of(-1, 4) < 4);
        assert!(shard_of(i64::MIN, 4) < 4);
    }
}
