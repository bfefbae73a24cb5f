//! The compact encoding of attention maps stored in `attention.weights`.
//!
//! Encoding `u8-scaled-v1`: for each step (token after `<start>`) in order, the map's largest
//! weight as a little-endian f32 `scale`, then `grid * grid` bytes `q` in row-major order;
//! the weight is `q / 255 * scale`. Scaling by each map's own maximum keeps the peaks, which
//! are what the pictures show, at full precision; every weight is within `scale / 510` of the
//! original. At the tutorial's 14x14 grid that is 200 bytes per word instead of 784 as f32.

pub const ENCODING: &str = "u8-scaled-v1";

/// Encodes `steps` maps of `grid * grid` weights each. Maps of the wrong length are padded
/// with zeros or cut, so the blob's length always matches `steps` and `grid`.
pub fn encode(alphas: &[Vec<f32>], grid: usize) -> Vec<u8> {
    let cells = grid * grid;
    let mut out = Vec::with_capacity(alphas.len() * (4 + cells));
    for map in alphas {
        let scale = map
            .iter()
            .take(cells)
            .copied()
            .filter(|v| v.is_finite())
            .fold(0f32, f32::max);
        out.extend_from_slice(&scale.to_le_bytes());
        for i in 0..cells {
            let v = map.get(i).copied().unwrap_or(0.0);
            let q = if scale > 0.0 && v.is_finite() {
                (v / scale * 255.0).round().clamp(0.0, 255.0) as u8
            } else {
                0
            };
            out.push(q);
        }
    }
    out
}

/// Decodes a blob written by [`encode`].
pub fn decode(blob: &[u8], grid: usize, steps: usize) -> Result<Vec<Vec<f32>>, String> {
    let cells = grid * grid;
    let per_step = 4 + cells;
    if blob.len() != steps * per_step {
        return Err(format!(
            "attention blob has {} bytes; {steps} steps of a {grid}x{grid} grid need {}",
            blob.len(),
            steps * per_step
        ));
    }
    Ok(blob
        .chunks_exact(per_step)
        .map(|chunk| {
            let scale = f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            chunk[4..]
                .iter()
                .map(|&q| q as f32 / 255.0 * scale)
                .collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_within_the_stated_error() {
        let grid = 3;
        let a = vec![0.5, 0.1, 0.05, 0.05, 0.1, 0.05, 0.05, 0.05, 0.05];
        let b = vec![1.0 / 9.0; 9];
        let blob = encode(&[a.clone(), b.clone()], grid);
        assert_eq!(blob.len(), 2 * (4 + 9));
        let back = decode(&blob, grid, 2).unwrap();
        for (orig, got) in [a, b].iter().zip(&back) {
            let scale = orig.iter().copied().fold(0f32, f32::max);
            for (x, y) in orig.iter().zip(got) {
                assert!((x - y).abs() <= scale / 510.0 + 1e-7, "{x} vs {y}");
            }
        }
        assert_eq!(back[0][0], 0.5); // the peak is exact
        assert!(decode(&blob, grid, 3).unwrap_err().contains("need"));
        assert!(decode(&[], 14, 0).unwrap().is_empty());
    }

    #[test]
    fn odd_maps_do_not_break_the_layout() {
        let blob = encode(&[vec![f32::NAN, 1.0], vec![0.0; 4], vec![]], 2);
        let back = decode(&blob, 2, 3).unwrap();
        assert_eq!(back[0], vec![0.0, 1.0, 0.0, 0.0]);
        assert_eq!(back[1], vec![0.0; 4]);
        assert_eq!(back[2], vec![0.0; 4]);
    }
}
