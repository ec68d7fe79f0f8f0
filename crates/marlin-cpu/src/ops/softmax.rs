//! Numerically stable softmax over one row.

use super::simd::kernels;

/// In-place softmax of `x`; an empty row is left alone.
pub fn softmax_inplace(x: &mut [f32]) {
    if x.is_empty() {
        return;
    }
    let k = kernels();
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let sum = (k.exp_sub_sum)(x, max);
    (k.scale)(x, 1.0 / sum);
}

/// Scalar reference in f64.
pub fn softmax_ref(x: &[f32]) -> Vec<f32> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = x.iter().map(|v| (*v as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_reference() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [1usize, 2, 9, 31, 512] {
            let x: Vec<f32> = (0..n).map(|_| rng.gen_range(-30.0..30.0)).collect();
            let mut got = x.clone();
            softmax_inplace(&mut got);
            for (g, w) in got.iter().zip(softmax_ref(&x)) {
                assert!((g - w).abs() <= 1e-6 + 1e-5 * w);
            }
        }
    }
}
