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

/// An n-gram of order 1..=4 packed into one integer: one lane per token, each holding the
/// token id plus one, so n-grams of different orders never collide (a shorter n-gram leaves
/// its high lanes 0). [`u64`] has 16-bit lanes (ids below 65,535), [`u128`] 32-bit lanes (ids
/// below `u32::MAX`, which interned ids always are). Narrower keys make the corpus-wide tables
/// smaller, and so faster.
pub(crate) trait GramKey: Copy + Eq + Hash + Send + Sync + 'static {
    /// Token ids must be below this.
    const ID_LIMIT: u64;
    fn pack(tokens: &[u32]) -> Self;
}

impl GramKey for u64 {
    const ID_LIMIT: u64 = u16::MAX as u64;
    #[inline]
    fn pack(tokens: &[u32]) -> Self {
        debug_assert!(tokens.len() <= MAX_PACKED_ORDER);
        tokens.iter().enumerate().fold(0, |key, (lane, &t)| {
            debug_assert!((t as u64) < Self::ID_LIMIT);
            key | ((t as u64 + 1) << (16 * lane))
        })
    }
}

impl GramKey for u128 {
    const ID_LIMIT: u64 = u32::MAX as u64;
    #[inline]
    fn pack(tokens: &[u32]) -> Self {
        debug_assert!(tokens.len() <= MAX_PACKED_ORDER);
        tokens.iter().enumerate().fold(0, |key, (lane, &t)| {
            debug_assert!(t < u32::MAX);
            key | ((t as u128 + 1) << (32 * lane))
        })
    }
}

/// The largest order a [`GramKey`] holds.
pub(crate) const MAX_PACKED_ORDER: usize = 4;

/// Beyond this many distinct n-grams a sentence's counter switches from a linear scan to a
/// hash index (captions are short; a scan of a few dozen integers beats hashing).
const SCAN_LIMIT: usize = 32;

/// The distinct n-grams of one order of one sentence, in order of first appearance, with
/// their counts.
#[derive(Debug, Clone)]
pub(crate) struct DistinctGrams<K> {
    pub keys: Vec<K>,
    pub counts: Vec<u32>,
    index: Option<FastMap<K, u32>>,
}

impl<K: GramKey> DistinctGrams<K> {
    /// The order-`n` n-grams of `tokens` (`n` in 1..=4).
    pub fn new(tokens: &[u32], n: usize) -> Self {
        let mut out = DistinctGrams {
            keys: Vec::new(),
            counts: Vec::new(),
            index: None,
        };
        if tokens.len() >= n {
            let windows = tokens.len() + 1 - n;
            out.keys.reserve(windows);
            out.counts.reserve(windows);
            for gram in tokens.windows(n) {
                let key = K::pack(gram);
                match out.position(key) {
                    Some(i) => out.counts[i] += 1,
                    None => out.push(key),
                }
            }
        }
        out
    }

    fn push(&mut self, key: K) {
        let i = self.keys.len() as u32;
        self.keys.push(key);
        self.counts.push(1);
        if let Some(index) = &mut self.index {
            index.insert(key, i);
        } else if self.keys.len() > SCAN_LIMIT {
            self.index = Some(
                self.keys
                    .iter()
                    .enumerate()
                    .map(|(i, &k)| (k, i as u32))
                    .collect(),
            );
        }
    }

    /// Where `key` is in [`Self::keys`], if present.
    #[inline]
    pub fn position(&self, key: K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&key).map(|&i| i as usize),
            None => self.keys.iter().position(|&k| k == key),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The per-image statistics both BLEU variants are built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct BleuImageStats {
    pub hypothesis_length: usize,
    /// The reference length closest to the hypothesis length (ties to the shorter).
    pub reference_length: usize,
    /// Per order, the hypothesis n-grams matched, each n-gram's count clipped to its largest
    /// count in any single reference.
    pub clipped: [u64; MAX_PACKED_ORDER],
}

/// [`BleuImageStats`] of one image for orders 1..=`max_order` (at most 4), from token ids
/// below `u32::MAX`. Only the hypothesis's n-grams are looked for in the references, since
/// only they can be clipped.
pub(crate) fn bleu_image_stats<R: AsRef<[u32]>>(
    references: &[R],
    hypothesis: &[u32],
    max_order: usize,
) -> BleuImageStats {
    debug_assert!(max_order <= MAX_PACKED_ORDER);
    let mut stats = BleuImageStats {
        hypothesis_length: hypothesis.len(),
        reference_length: closest_reference_length(
            references.iter().map(|r| r.as_ref().len()),
            hypothesis.len(),
        ),
        clipped: [0; MAX_PACKED_ORDER],
    };
    let mut max_ref: Vec<u32> = Vec::new();
    let mut in_ref: Vec<u32> = Vec::new();
    for n in 1..=max_order.min(hypothesis.len()) {
        let grams = DistinctGrams::<u128>::new(hypothesis, n);
        max_ref.clear();
        max_ref.resize(grams.len(), 0);
        for reference in references {
            in_ref.clear();
            in_ref.resize(grams.len(), 0);
            for window in reference.as_ref().windows(n) {
                if let Some(i) = grams.position(u128::pack(window)) {
                    in_ref[i] += 1;
                }
            }
            for (m, &c) in max_ref.iter_mut().zip(&in_ref) {
                *m = (*m).max(c);
            }
        }
        stats.clipped[n - 1] = grams
            .counts
            .iter()
            .zip(&max_ref)
            .map(|(&c, &m)| c.min(m) as u64)
            .sum();
    }
    stats
}

/// Token sequences as dense `u32` ids (first appearance order), so every scorer can work on
/// packed integer n-grams whatever token type it is given.
pub(crate) fn intern_corpus<'a, T, S, R>(references: &'a [R], hypotheses: &'a [S]) -> InternedCorpus
where
    T: Eq + Hash + 'a,
    S: AsRef<[T]>,
    R: AsRef<[S]>,
{
    let mut ids: FastMap<&'a T, u32> = FastMap::default();
    let mut intern = |tokens: &'a [T]| -> Vec<u32> {
        tokens
            .iter()
            .map(|t| {
                let next = ids.len() as u32;
                *ids.entry(t).or_insert(next)
            })
            .collect()
    };
    let references = references
        .iter()
        .map(|refs| refs.as_ref().iter().map(|r| intern(r.as_ref())).collect())
        .collect();
    let hypotheses = hypotheses.iter().map(|h| intern(h.as_ref())).collect();
    InternedCorpus {
        references,
        hypotheses,
    }
}

pub(crate) struct InternedCorpus {
    pub references: Vec<Vec<Vec<u32>>>,
    pub hypotheses: Vec<Vec<u32>>,
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
    fn packed_counts_agree_with_slice_counts_short_and_long() {
        // 40 distinct words then repeats: the counter switches to its hash index.
        let tokens: Vec<u32> = (0..40).chain(0..10).chain([3, 4, 3, 4]).collect();
        for n in 1..=4 {
            let slices = NgramCounts::new(&tokens, 4);
            let packed64 = DistinctGrams::<u64>::new(&tokens, n);
            let packed128 = DistinctGrams::<u128>::new(&tokens, n);
            let want: Vec<(u128, u32)> = slices.orders[n - 1]
                .iter()
                .map(|&(g, c)| (u128::pack(g), c))
                .collect();
            let got: Vec<(u128, u32)> = packed128
                .keys
                .iter()
                .copied()
                .zip(packed128.counts.iter().copied())
                .collect();
            assert_eq!(got, want, "order {n}");
            assert_eq!(packed64.counts, packed128.counts);
        }
        // Orders never collide: "a" is not "a a".
        assert_ne!(u64::pack(&[0]), u64::pack(&[0, 0]));
        assert_ne!(u128::pack(&[5, 0]), u128::pack(&[5]));
    }

    #[test]
    fn bleu_statistics_clip_by_the_single_best_reference() {
        let refs = vec![vec![1, 1, 2], vec![1, 2, 2, 2]];
        let s = bleu_image_stats(&refs, &[1, 1, 1, 2, 2], 2);
        assert_eq!(s.hypothesis_length, 5);
        assert_eq!(s.reference_length, 4);
        // Unigrams: 1 x3 clipped to 2, 2 x2 clipped to 2; bigrams: (1,1) x2 -> 1, (1,2) -> 1,
        // (2,2) -> 1.
        assert_eq!(&s.clipped[..2], &[4, 3]);
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
