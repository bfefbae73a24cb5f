//! Correctly rounded floating-point summation (Shewchuk's algorithm, as Python's `math.fsum`).
//!
//! NLTK sums `w_i * ln p_i` with `math.fsum`; matching its BLEU bit for bit needs the same
//! correctly rounded sum, not a running `+=`.

/// The correctly rounded sum of `values` (round half to even), like Python's `math.fsum`.
///
/// Finite inputs only matter here; a non-finite input makes the result non-finite.
pub fn fsum(values: impl IntoIterator<Item = f64>) -> f64 {
    // Non-overlapping partial sums, smallest magnitude first.
    let mut partials: Vec<f64> = Vec::new();
    let mut special = 0.0f64;
    for mut x in values {
        if !x.is_finite() {
            special += x;
            continue;
        }
        let mut kept = 0;
        for i in 0..partials.len() {
            let mut y = partials[i];
            if x.abs() < y.abs() {
                std::mem::swap(&mut x, &mut y);
            }
            let hi = x + y;
            let lo = y - (hi - x);
            if lo != 0.0 {
                partials[kept] = lo;
                kept += 1;
            }
            x = hi;
        }
        partials.truncate(kept);
        partials.push(x);
    }
    if special != 0.0 || special.is_nan() {
        return special;
    }
    let Some(mut hi) = partials.pop() else {
        return 0.0;
    };
    // Add the partials from the top; stop at the first inexact step, then correct for
    // round-half-even when the remaining partials push the tie one way.
    let mut lo = 0.0;
    while let Some(y) = partials.pop() {
        let x = hi;
        hi = x + y;
        let yr = hi - x;
        lo = y - yr;
        if lo != 0.0 {
            break;
        }
    }
    if let Some(&next) = partials.last() {
        if (lo < 0.0 && next < 0.0) || (lo > 0.0 && next > 0.0) {
            let y = lo * 2.0;
            let x = hi + y;
            let yr = x - hi;
            if y == yr {
                hi = x;
            }
        }
    }
    hi
}

#[cfg(test)]
mod tests {
    use super::fsum;

    #[test]
    fn matches_python_fsum_on_known_cases() {
        // Values checked with Python's math.fsum.
        assert_eq!(fsum([0.1; 10]), 1.0);
        assert_eq!(
            fsum([1e100, 1.0, -1e100, 1e-100, 1e50, -1.0, -1e50]),
            1e-100
        );
        assert_eq!(
            fsum([2.0f64.powi(53), -0.5, -2.0f64.powi(-54)]),
            2.0f64.powi(53) - 1.0
        );
        assert_eq!(fsum([1.0, 1e-16, 1e-16]), 1.0000000000000002);
        assert_eq!(fsum(std::iter::empty()), 0.0);
        assert_eq!(
            fsum([-0.25 * 708.3964185322641, -0.25 * 1.2]),
            -0.25 * 708.3964185322641 - 0.3
        );
    }
}

/// The sum numpy's `np.add.reduce` computes for a contiguous float64 array: pairwise
/// summation with an 8-way unrolled base case of at most 128 elements. `np.mean` is this
/// divided by the count; matching it keeps corpus means bit-identical to pycocoevalcap.
pub fn numpy_pairwise_sum(values: &[f64]) -> f64 {
    const BLOCK: usize = 128;
    let n = values.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in values {
            res += v;
        }
        res
    } else if n <= BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&values[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += values[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += values[i];
            i += 1;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_pairwise_sum(&values[..half]) + numpy_pairwise_sum(&values[half..])
    }
}

/// `np.mean` of a 1-D float64 array (NaN for an empty one, as numpy).
pub fn numpy_mean(values: &[f64]) -> f64 {
    numpy_pairwise_sum(values) / values.len() as f64
}

#[cfg(test)]
mod pairwise_tests {
    use super::*;

    #[test]
    fn pairwise_sum_differs_from_a_running_sum_the_way_numpy_does() {
        // Values checked with numpy 2.4: np.sum([1/(i+1) for i in range(N)]).
        let harmonic = |n: usize| (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect::<Vec<f64>>();
        assert_eq!(numpy_pairwise_sum(&harmonic(200)), 5.878030948121444);
        assert_eq!(numpy_pairwise_sum(&harmonic(1000)), 7.485470860550345);
        assert_eq!(numpy_pairwise_sum(&harmonic(5000)), 9.094508852984436);
        // A running sum gives 9.094508852984404 for 5000.
        assert_ne!(harmonic(5000).iter().sum::<f64>(), 9.094508852984436);
        let small = [0.1, 0.2, 0.3];
        assert_eq!(numpy_pairwise_sum(&small), (0.1 + 0.2) + 0.3);
        assert!(numpy_mean(&[]).is_nan());
    }
}
