//! Online Hadamard rotation of a linear's input, for MR-GPTQ checkpoints.
//!
//! A rotated linear stores `Ŵ ≈ W·Rᵀ` (N, padded_k) with R block-diagonal
//! of normalised Sylvester Hadamard blocks (see
//! `marlin_io::checkpoint::ActivationRotation`); `y = x·Wᵀ = (x·Rᵀ)·(W·Rᵀ)ᵀ`
//! because R is orthogonal, so the input rows are rotated the same way
//! before the product. R is symmetric and its own inverse, so the same
//! transform also takes rotated weight rows back to the original basis.
//!
//! Cost: K·log2(b) additions per row plus one scaling pass, against the
//! product's 2·N·K flops (see docs/QUANTIZATION.md for the measurement).

use marlin_io::checkpoint::ActivationRotation;

/// In-place normalised fast Walsh-Hadamard transform of one block (length
/// a power of two). The butterflies of each stage run over two contiguous
/// halves, so every stage with a span of 4 or more compiles to SIMD adds.
fn fwht_normalized(block: &mut [f32], norm: f32) {
    let n = block.len();
    // Span 1 and 2 fused: a 4-point transform per group of 4.
    if n >= 4 {
        for q in block.chunks_exact_mut(4) {
            let (a, b, c, d) = (q[0] + q[1], q[0] - q[1], q[2] + q[3], q[2] - q[3]);
            q[0] = a + c;
            q[1] = b + d;
            q[2] = a - c;
            q[3] = b - d;
        }
    } else if n == 2 {
        let (a, b) = (block[0], block[1]);
        block[0] = a + b;
        block[1] = a - b;
    }
    let mut h = 4;
    while h < n {
        for pair in block.chunks_exact_mut(2 * h) {
            let (lo, hi) = pair.split_at_mut(h);
            for (x, y) in lo.iter_mut().zip(hi.iter_mut()) {
                let (a, b) = (*x, *y);
                *x = a + b;
                *y = a - b;
            }
        }
        h *= 2;
    }
    for v in block.iter_mut() {
        *v *= norm;
    }
}

/// `x` (m, rot.k) -> `out` (m, rot.padded_k): each row zero-padded, then
/// the normalised transform of every block (`x·Rᵀ`). `rot` must be valid
/// ([`ActivationRotation::validate`]); `x.len()` must be m·k.
pub fn rotate_rows(rot: &ActivationRotation, x: &[f32], m: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(m * rot.padded_k, 0.0);
    let norm = 1.0 / (rot.block_size as f32).sqrt();
    for (src, dst) in x
        .chunks_exact(rot.k)
        .zip(out.chunks_exact_mut(rot.padded_k))
    {
        dst[..rot.k].copy_from_slice(src);
        for block in dst.chunks_exact_mut(rot.block_size) {
            fwht_normalized(block, norm);
        }
    }
}

/// The inverse: `x` (m, rot.padded_k) rotated rows -> (m, rot.k) in the
/// original basis (`x·R`, padding columns dropped). Used to dequantize a
/// rotated weight back to `W`.
pub fn unrotate_rows(rot: &ActivationRotation, x: &[f32], m: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * rot.k);
    let mut buf = vec![0.0f32; rot.padded_k];
    let norm = 1.0 / (rot.block_size as f32).sqrt();
    for src in x.chunks_exact(rot.padded_k).take(m) {
        buf.copy_from_slice(src);
        for block in buf.chunks_exact_mut(rot.block_size) {
            fwht_normalized(block, norm);
        }
        out.extend_from_slice(&buf[..rot.k]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x·Rᵀ` by the definition: entry (i, j) of H_b is (-1)^popcount(i & j).
    fn rotate_by_definition(rot: &ActivationRotation, x: &[f32]) -> Vec<f32> {
        let b = rot.block_size;
        let mut padded = x.to_vec();
        padded.resize(rot.padded_k, 0.0);
        let mut out = vec![0.0f32; rot.padded_k];
        for blk in 0..rot.padded_k / b {
            for i in 0..b {
                let mut acc = 0.0f64;
                for j in 0..b {
                    let sign = if (i & j).count_ones() % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    };
                    acc += sign * f64::from(padded[blk * b + j]);
                }
                out[blk * b + i] = (acc / (b as f64).sqrt()) as f32;
            }
        }
        out
    }

    #[test]
    fn fast_transform_matches_the_matrix_and_inverts() {
        for (k, b) in [
            (24, 32),
            (64, 64),
            (576, 64),
            (100, 8),
            (6, 2),
            (12, 4),
            (3, 1),
        ] {
            let rot = ActivationRotation::new(k, b).unwrap();
            let m = 3;
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0)
                .collect();
            let mut got = Vec::new();
            rotate_rows(&rot, &x, m, &mut got);
            for (r, row) in x.chunks_exact(k).enumerate() {
                let want = rotate_by_definition(&rot, row);
                let g = &got[r * rot.padded_k..(r + 1) * rot.padded_k];
                for (a, w) in g.iter().zip(&want) {
                    assert!(
                        (a - w).abs() <= 1e-4 * (1.0 + w.abs()),
                        "k {k} b {b}: {a} vs {w}"
                    );
                }
            }
            let back = unrotate_rows(&rot, &got, m);
            for (a, w) in back.iter().zip(&x) {
                assert!(
                    (a - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "k {k} b {b}: {a} vs {w}"
                );
            }
        }
    }
}
