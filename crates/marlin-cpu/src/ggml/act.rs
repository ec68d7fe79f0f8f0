//! Activations quantized to 8 bits once per matmul, as llama.cpp does, so
//! the weight-activation dot products run on integers.
//!
//! Error: each activation x in a block is replaced by d * round(x / d) with
//! d = max|x| / 127 over its block (32 or 256 values), so |Δx| <= d / 2 and
//! a dot product with weights w moves by at most Σ |w_i| * d_block(i) / 2.

/// 32 activations as Q8_0-style codes, with `s = d * Σ qs` for the formats
/// whose weights carry an offset (Q4_1, Q5_1) or a bias code (Q4_0, Q5_0).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActQ8x32 {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; 32],
}

/// 256 activations as Q8_K-style codes, with the sums of each 16 codes
/// (the K-quants subtract per-sub-block minimums / offsets with them).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ActQ8K {
    pub d: f32,
    pub qs: [i8; 256],
    pub bsums: [i16; 16],
}

impl Default for ActQ8x32 {
    fn default() -> Self {
        Self {
            d: 0.0,
            s: 0.0,
            qs: [0; 32],
        }
    }
}

impl Default for ActQ8K {
    fn default() -> Self {
        Self {
            d: 0.0,
            qs: [0; 256],
            bsums: [0; 16],
        }
    }
}

/// Scale d = max|x| / 127 and codes round(x / d) (ties to even), clamped.
/// A block holding a NaN or an infinity gets a NaN scale, so the non-finite
/// input shows in the output instead of vanishing.
fn quantize_codes(x: &[f32], qs: &mut [i8]) -> f32 {
    let mut amax = 0f32;
    let mut finite = true;
    for v in x {
        finite &= v.is_finite();
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in qs.iter_mut().zip(x) {
        // `as i8` saturates, and maps NaN to 0.
        *q = round_ties_even_small(v * id) as i8;
    }
    if finite {
        d
    } else {
        f32::NAN
    }
}

/// Rounds to the nearest integer, ties to even, for |y| < 2^22 (codes here
/// are at most 127 in magnitude). Adding and subtracting 1.5 * 2^23 makes the
/// FPU's own round-to-nearest-even do the work; `f32::round_ties_even` would
/// be a libm call on baseline x86-64 (no SSE4.1), 5-7% of a decode step.
/// NaN stays NaN.
#[inline(always)]
fn round_ties_even_small(y: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (y + MAGIC) - MAGIC
}

/// x (K) -> K/32 blocks. `x.len()` must be `32 * out.len()`.
pub fn quantize_x32(x: &[f32], out: &mut [ActQ8x32]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        blk.d = quantize_codes(xs, &mut blk.qs);
        let sum: i32 = blk.qs.iter().map(|&q| q as i32).sum();
        blk.s = blk.d * sum as f32;
    }
}

/// x (K) -> K/256 blocks. `x.len()` must be `256 * out.len()`.
pub fn quantize_k(x: &[f32], out: &mut [ActQ8K]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        blk.d = quantize_codes(xs, &mut blk.qs);
        for (s, q) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
            // 16 codes of |q| <= 127 sum to at most 2032: fits i16.
            *s = q.iter().map(|&v| v as i16).sum();
        }
    }
}

/// The dequantized activations d * q (what the integer kernels multiply).
#[cfg(test)]
pub fn dequant_x32(a: &[ActQ8x32]) -> Vec<f32> {
    a.iter()
        .flat_map(|b| b.qs.iter().map(move |&q| b.d * q as f32))
        .collect()
}

#[cfg(test)]
pub fn dequant_k(a: &[ActQ8K]) -> Vec<f32> {
    a.iter()
        .flat_map(|b| b.qs.iter().map(move |&q| b.d * q as f32))
        .collect()
}

#[cfg(test)]
mod rounding_tests {
    use super::round_ties_even_small;

    #[test]
    fn magic_rounding_matches_round_ties_even() {
        let mut y = -130.0f32;
        while y <= 130.0 {
            assert_eq!(round_ties_even_small(y), y.round_ties_even(), "{y}");
            y += 0.125;
        }
        for y in [0.5f32, 1.5, 2.5, -0.5, -2.5, 126.5, 0.49999997, -0.0] {
            assert_eq!(round_ties_even_small(y), y.round_ties_even(), "{y}");
        }
        assert!(round_ties_even_small(f32::NAN).is_nan());
    }
}
