//! Python's `random` module, as far as the tutorial's data preparation uses it.
//!
//! The tutorial calls `random.seed(123)` and then `random.choice` / `random.sample` to pick
//! each image's captions. Reproducing CPython's Mersenne Twister, its integer seeding
//! (`init_by_array` over the 32-bit words of the seed) and the exact draw sequence of
//! `_randbelow`, `choice` and `sample` makes `gaze prepare` pick the very same captions as the
//! tutorial for the same seed, so its caption files are byte-identical.

const N: usize = 624;
const M: usize = 397;

/// CPython's `random.Random` (MT19937) for integer seeds.
#[derive(Clone)]
pub struct PyRandom {
    state: [u32; N],
    index: usize,
}

impl PyRandom {
    /// `random.seed(seed)` for a non-negative integer seed.
    pub fn new(seed: u64) -> Self {
        let mut key = vec![seed as u32];
        if seed >> 32 != 0 {
            key.push((seed >> 32) as u32);
        }
        Self::from_key(&key)
    }

    /// Seeds from 32-bit words, least significant first (what `seed(int)` does with the
    /// integer's words); lets callers mix several numbers into one seed.
    pub fn from_key(key: &[u32]) -> Self {
        let mut r = PyRandom {
            state: [0; N],
            index: N,
        };
        r.init_genrand(19_650_218);
        let key: &[u32] = if key.is_empty() { &[0] } else { key };
        let mt = &mut r.state;
        let (mut i, mut j) = (1usize, 0usize);
        for _ in 0..N.max(key.len()) {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_664_525))
                .wrapping_add(key[j])
                .wrapping_add(j as u32);
            i += 1;
            j += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
            if j >= key.len() {
                j = 0;
            }
        }
        for _ in 0..N - 1 {
            let prev = mt[i - 1] ^ (mt[i - 1] >> 30);
            mt[i] = (mt[i] ^ prev.wrapping_mul(1_566_083_941)).wrapping_sub(i as u32);
            i += 1;
            if i >= N {
                mt[0] = mt[N - 1];
                i = 1;
            }
        }
        mt[0] = 0x8000_0000;
        r
    }

    fn init_genrand(&mut self, s: u32) {
        self.state[0] = s;
        for i in 1..N {
            let prev = self.state[i - 1];
            self.state[i] = 1_812_433_253u32
                .wrapping_mul(prev ^ (prev >> 30))
                .wrapping_add(i as u32);
        }
        self.index = N;
    }

    fn twist(&mut self) {
        const UPPER: u32 = 0x8000_0000;
        const LOWER: u32 = 0x7fff_ffff;
        for k in 0..N {
            let y = (self.state[k] & UPPER) | (self.state[(k + 1) % N] & LOWER);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[k] = self.state[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    /// One 32-bit output (`genrand_uint32`).
    pub fn next_u32(&mut self) -> u32 {
        if self.index >= N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// `random.getrandbits(k)` for `k <= 64`.
    pub fn getrandbits(&mut self, k: u32) -> u64 {
        assert!(k <= 64, "getrandbits supports up to 64 bits");
        if k == 0 {
            return 0;
        }
        if k <= 32 {
            return (self.next_u32() >> (32 - k)) as u64;
        }
        // Words are filled least significant first; the last one keeps its top bits.
        let low = self.next_u32() as u64;
        let high = (self.next_u32() >> (64 - k)) as u64;
        low | high << 32
    }

    /// `random._randbelow(n)`: uniform in `0..n` by rejection over `n.bit_length()` bits.
    pub fn randbelow(&mut self, n: u64) -> u64 {
        assert!(n > 0, "randbelow needs n > 0");
        let bits = 64 - n.leading_zeros();
        loop {
            let r = self.getrandbits(bits);
            if r < n {
                return r;
            }
        }
    }

    /// The index `random.choice(seq)` picks from a sequence of length `len`.
    pub fn choice_index(&mut self, len: usize) -> usize {
        self.randbelow(len as u64) as usize
    }

    /// The indices `random.sample(population, k)` picks from a population of size `n`, in
    /// selection order.
    pub fn sample_indices(&mut self, n: usize, k: usize) -> Vec<usize> {
        assert!(k <= n, "sample larger than population");
        let mut setsize = 21usize;
        if k > 5 {
            let exponent = ((k * 3) as f64).ln() / 4f64.ln();
            setsize += 4usize.pow(exponent.ceil() as u32);
        }
        let mut result = Vec::with_capacity(k);
        if n <= setsize {
            let mut pool: Vec<usize> = (0..n).collect();
            for i in 0..k {
                let j = self.randbelow((n - i) as u64) as usize;
                result.push(pool[j]);
                pool[j] = pool[n - i - 1];
            }
        } else {
            let mut selected = std::collections::HashSet::with_capacity(k);
            for _ in 0..k {
                let mut j = self.randbelow(n as u64) as usize;
                while selected.contains(&j) {
                    j = self.randbelow(n as u64) as usize;
                }
                selected.insert(j);
                result.push(j);
            }
        }
        result
    }

    /// `random.shuffle(x)`.
    pub fn shuffle<T>(&mut self, x: &mut [T]) {
        for i in (1..x.len()).rev() {
            let j = self.randbelow(i as u64 + 1) as usize;
            x.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PyRandom;

    // Expected values printed by CPython 3.11, e.g.
    // `r = random.Random(123); [r.getrandbits(32) for _ in range(3)]`.
    #[test]
    fn matches_cpython() {
        let mut r = PyRandom::new(123);
        assert_eq!(
            [r.next_u32(), r.next_u32(), r.next_u32()],
            [224899942, 1149664691, 374463918]
        );
        let mut r = PyRandom::new((1 << 40) + 5);
        assert_eq!([r.next_u32(), r.next_u32()], [2166296868, 2220160828]);
        let mut r = PyRandom::new(0);
        assert_eq!([r.next_u32(), r.next_u32()], [3626764237, 1654615998]);
        let mut r = PyRandom::new(123);
        assert_eq!(
            (r.getrandbits(64), r.getrandbits(7), r.getrandbits(33)),
            (4937772249435845478, 11, 3302642556)
        );
    }

    #[test]
    fn choice_sample_and_shuffle_match_cpython() {
        // r = random.Random(123); [r.choice(range(7)) for _ in range(10)]
        let mut r = PyRandom::new(123);
        let picks: Vec<usize> = (0..10).map(|_| r.choice_index(7)).collect();
        assert_eq!(picks, [0, 2, 0, 6, 3, 2, 0, 6, 6, 0]);
        // r = random.Random(123); r.sample(range(7), 5), r.sample(range(5), 5),
        // r.sample(range(100), 30), r.sample(range(1000), 3)
        let mut r = PyRandom::new(123);
        assert_eq!(r.sample_indices(7, 5), [0, 2, 6, 3, 1]);
        assert_eq!(r.sample_indices(5, 5), [0, 4, 1, 2, 3]);
        assert_eq!(
            r.sample_indices(100, 30),
            [
                6, 20, 17, 43, 71, 42, 89, 31, 98, 0, 55, 11, 76, 48, 8, 90, 40, 57, 13, 5, 88, 18,
                16, 2, 37, 93, 73, 61, 33, 60
            ]
        );
        assert_eq!(r.sample_indices(1000, 3), [857, 37, 787]);
        // r = random.Random(7); x = list(range(10)); r.shuffle(x)
        let mut r = PyRandom::new(7);
        let mut x: Vec<u32> = (0..10).collect();
        r.shuffle(&mut x);
        assert_eq!(x, [8, 3, 1, 4, 7, 0, 9, 6, 2, 5]);
    }
}
