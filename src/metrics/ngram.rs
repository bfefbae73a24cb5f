//! N-gram counting shared by the BLEU and CIDEr-D scorers.
//!
//! Counts keep the order in which each n-gram first appears, because the reference scorers
//! sum over Python dicts in insertion order and bit-exact sums need the same order.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A small, fast, non-cryptographic hasher for n-gram keys: the "Fx" multiply-rotate scheme
/// with a MurmurHash3 finaliser.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher {
    hash: u64,
}

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8-byte chunk")));
        }
        for &b in chunks.remainder() {
            self.add(b as u64);
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    /// The Fx state mixes poorly into its low bits, which hashbrown uses to pick buckets;
    /// MurmurHash3's 64-bit finaliser spreads every input bit over the whole result.
    #[inline]
    fn finish(&self) -> u64 {
        let mut h = self.hash;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The n-grams of one sentence for orders 1..=max_n: `orders[n-1]` lists each distinct n-gram
/// with its count, in order of first appearance.
pub(crate) struct NgramCounts<'a, T> {
    pub orders: Vec<Vec<(&'a [T], u32)>>,
}

impl<'a, T: Eq + Hash> NgramCounts<'a, T> {
    pub fn new(tokens: &'a [T], max_n: usize) -> Self {
        let mut orders = Vec::with_capacity(max_n);
        let mut index: FastMap<&'a [T], usize> = FastMap::default();
        for n in 1..=max_n {
            let mut list: Vec<(&'a [T], u32)> = Vec::new();
            if tokens.len() >= n {
                index.clear();
                for gram in tokens.windows(n) {
                    match index.get(gram) {
                        Some(&i) => list[i].1 += 1,
                        None => {
                            index.insert(gram, list.len());
                            list.push((gram, 1));
                        }
                    }
                }
            }
            orders.push(list);
        }
        NgramCounts { orders }
    }
}

/// For each n-gram of order 1..=max_n, the largest count in any single reference (the BLEU
/// clipping limit).
pub(crate) fn max_reference_counts<'a, T: Eq + Hash, R: AsRef<[T]>>(
    references: &'a [R],
    max_n: usize,
) -> FastMap<&'a [T], u32> {
    let mut max_counts: FastMap<&'a [T], u32> = FastMap::default();
    for reference in references {
        let counts = NgramCounts::new(reference.as_ref(), max_n);
        for order in counts.orders {
            for (gram, count) in order {
                let slot = max_counts.entry(gram).or_insert(0);
                *slot = (*slot).max(count);
            }
        }
    }
    max_counts
}

/// The reference length closest to `hyp_len`; a tie goes to the shorter reference (the key
/// `(|len - hyp_len|, len)` used by both NLTK and coco-caption).
pub(crate) fn closest_reference_length(
    reference_lengths: impl IntoIterator<Item = usize>,
    hyp_len: usize,
) -> usize {
    reference_lengths
        .into_iter()
        .min_by_key(|&len| (len.abs_diff(hyp_len), len))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_keep_first_appearance_order() {
        let words = ["a", "b", "a", "b", "c"];
        let c = NgramCounts::new(&words, 3);
        assert_eq!(
            c.orders[0],
            vec![(&words[0..1], 2), (&words[1..2], 2), (&words[4..5], 1)]
        );
        assert_eq!(c.orders[1].len(), 3); // ab (2), ba, bc
        assert_eq!(c.orders[1][0].1, 2);
        assert_eq!(c.orders[2].len(), 3);
        let short = NgramCounts::new(&words[..1], 4);
        assert!(short.orders[1].is_empty() && short.orders[3].is_empty());
    }

    #[test]
    fn closest_length_ties_go_to_the_shorter() {
        assert_eq!(closest_reference_length([4, 6], 5), 4);
        assert_eq!(closest_reference_length([6, 4], 5), 4);
        assert_eq!(closest_reference_length([9, 7, 3], 8), 7);
        assert_eq!(closest_reference_length([], 8), 0);
    }

    #[test]
    fn reference_maximum_is_per_single_reference() {
        let refs = vec![vec!["a", "a", "b"], vec!["a", "b", "b", "b"]];
        let m = max_reference_counts(&refs, 2);
        assert_eq!(m[&["a"][..]], 2);
        assert_eq!(m[&["b"][..]], 3);
        assert_eq!(m[&["b", "b"][..]], 2);
    }
}
