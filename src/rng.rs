//! A small deterministic random number generator (SplitMix64).
//!
//! Seeded runs must give the same numbers on every machine and with every dependency version,
//! so gaze uses its own generator for weight initialisation, shuffling and synthetic data.

/// SplitMix64's output function (Steele, Lea and Flood 2014); also a good 64-bit mixer for
/// deriving seeds and hashing.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The raw state, for checkpoints; `from_state` resumes the same stream.
    pub fn state(&self) -> u64 {
        self.state
    }

    pub fn from_state(state: u64) -> Self {
        SplitMix64 { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.next_f64(); // (0, 1]
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Uniform integer in `0..n` (n > 0), without modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0);
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Fisher-Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }

    // The draws below map the high 32 bits onto 0..n by a multiply-shift instead of the
    // rejection sampling of `below`: one draw each, a bias under 2^-32 * n. The published
    // synthetic datasets are defined by exactly these draws, so they must stay as they are.

    /// Uniform in 0..n by multiply-shift (n > 0 and below 2^32).
    pub fn scaled_below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0 && (n as u64) < (1 << 32));
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// One of `items` (not empty), chosen with [`scaled_below`](Self::scaled_below).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.scaled_below(items.len())]
    }

    /// Fisher-Yates shuffle drawing with [`scaled_below`](Self::scaled_below); not the same
    /// order as [`shuffle`](Self::shuffle).
    pub fn scaled_shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.scaled_below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_fixed() {
        // Reference values of SplitMix64 seeded with 0.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(1_234_567);
        assert_eq!(r.next_u64(), 6_457_827_717_110_365_317);
        assert_eq!(r.next_u64(), 3_203_168_211_198_807_973);
        let mut a = SplitMix64::new(7);
        let mut v: Vec<u32> = (0..20).collect();
        a.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_ne!(v, sorted);
        let mean: f64 = (0..20000).map(|_| a.normal()).sum::<f64>() / 20000.0;
        assert!(mean.abs() < 0.05);
    }

    #[test]
    fn scaled_draws_take_the_high_bits() {
        let mut r = SplitMix64::new(0);
        // 0xE220_A839... >> 32 is 0xE220_A839; times 10, over 2^32: 8.
        assert_eq!(r.scaled_below(10), 8);
        let mut r = SplitMix64::new(3);
        let mut v: Vec<u32> = (0..20).collect();
        r.scaled_shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert!((0..1000).all(|_| r.pick(&[1, 2, 3]) != 0));
        assert!(!r.chance(0.0) && r.chance(1.0));
    }
}
