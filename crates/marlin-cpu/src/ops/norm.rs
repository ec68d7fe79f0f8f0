//! RMSNorm: `out = x / sqrt(mean(x²) + eps) · w`, row by row.
//!
//! Conventions that differ between checkpoints (Gemma's `(1 + w)`) are
//! folded into `w` at load time, so this op has one form.

use super::{rows_of, simd::kernels};
use crate::CpuError;

/// `x`, `out`: (rows, d) with d = `weight.len()`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<(), CpuError> {
    let d = weight.len();
    rows_of("rms_norm", x.len(), d)?;
    if out.len() != x.len() {
        return Err(CpuError::Shape(format!(
            "rms_norm: out has {} values, x has {}",
            out.len(),
            x.len()
        )));
    }
    let k = kernels();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let inv = 1.0 / ((k.sum_sq)(xr) / d as f32 + eps).sqrt();
        (k.scale_mul)(xr, inv, weight, or);
    }
    Ok(())
}

/// In-place RMSNorm of every `weight.len()`-long row of `x` (used per head
/// for QK-norm on `(m, n_heads, head_dim)` buffers).
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) -> Result<(), CpuError> {
    let d = weight.len();
    rows_of("rms_norm_inplace", x.len(), d)?;
    let k = kernels();
    let mut tmp = vec![0.0f32; d]; // (d): one row, so the op can read and write x
    for row in x.chunks_exact_mut(d) {
        let inv = 1.0 / ((k.sum_sq)(row) / d as f32 + eps).sqrt();
        (k.scale_mul)(row, inv, weight, &mut tmp);
        row.copy_from_slice(&tmp);
    }
    Ok(())
}

/// Scalar reference, in f64 to be an independent check.
pub fn rms_norm_ref(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let d = weight.len();
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let ms = row.iter().map(|v| (*v as f64) * (*v as f64)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        out.extend(
            row.iter()
                .zip(weight)
                .map(|(v, w)| (*v as f64 * inv * *w as f64) as f32),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_reference_at_awkward_shapes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for (m, d) in [(1, 1), (3, 7), (17, 64), (2, 576), (5, 33)] {
            let x: Vec<f32> = (0..m * d).map(|_| rng.gen_range(-3.0..3.0)).collect();
            let w: Vec<f32> = (0..d).map(|_| rng.gen_range(0.5..1.5)).collect();
            let want = rms_norm_ref(&x, &w, 1e-6);
            let mut got = vec![0.0; m * d];
            rms_norm(&x, &w, 1e-6, &mut got).unwrap();
            let mut inplace = x.clone();
            rms_norm_inplace(&mut inplace, &w, 1e-6).unwrap();
            for i in 0..m * d {
                assert!((got[i] - want[i]).abs() <= 1e-5 * want[i].abs().max(1.0));
                assert_eq!(got[i], inplace[i]);
            }
        }
    }

    #[test]
    fn rejects_partial_rows() {
        let mut out = vec![0.0; 5];
        assert!(rms_norm(&[0.0; 5], &[1.0; 2], 1e-6, &mut out).is_err());
        assert!(rms_norm(&[0.0; 4], &[1.0; 2], 1e-6, &mut out).is_err());
    }
}
