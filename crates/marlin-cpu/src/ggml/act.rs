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
    /// Sums of each 32 codes (the Q4_K sub-blocks), at most 4064.
    pub bsums32: [i16; 8],
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
            bsums32: [0; 8],
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

/// [`quantize_codes`] with AVX2 where the CPU has it (same scale and
/// codes bit for bit: the same max, division and products, and
/// `cvtps2dq` rounds to nearest even as the scalar trick does; blocks
/// holding a NaN or an infinity take the scalar path).
#[inline]
fn quantize_codes_fast(x: &[f32], qs: &mut [i8]) -> f32 {
    quantize_codes_sum(x, qs).0
}

/// [`quantize_codes_fast`] and the sum of the codes.
#[inline]
fn quantize_codes_sum(x: &[f32], qs: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2() {
            // SAFETY: AVX2 was detected.
            if let Some(r) = unsafe { simd::quantize_codes(x, qs) } {
                return r;
            }
        }
    }
    let d = quantize_codes(x, qs);
    (d, qs[..x.len()].iter().map(|&q| q as i32).sum())
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| is_x86_feature_detected!("avx2"))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Scale and codes of `x` (a multiple of 32 values) as the scalar
    /// `quantize_codes`, and the sum of the codes; None when `x` holds a
    /// non-finite value or the scale is subnormal.
    #[target_feature(enable = "avx2")]
    pub(super) fn quantize_codes(x: &[f32], qs: &mut [i8]) -> Option<(f32, i32)> {
        let n = x.len();
        if !n.is_multiple_of(32) || qs.len() < n {
            return None;
        }
        let abs_mask = _mm256_set1_epi32(0x7FFF_FFFF);
        let max_finite = _mm256_set1_epi32(0x7F7F_FFFF);
        let mut amax = _mm256_setzero_ps();
        let mut bad = _mm256_setzero_si256();
        for c in x.chunks_exact(8) {
            // SAFETY: `c` holds 8 f32.
            let v = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            let a = _mm256_and_si256(_mm256_castps_si256(v), abs_mask);
            bad = _mm256_or_si256(bad, _mm256_cmpgt_epi32(a, max_finite));
            amax = _mm256_max_ps(amax, _mm256_castsi256_ps(a));
        }
        if _mm256_movemask_epi8(bad) != 0 {
            return None;
        }
        let m = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let m = _mm_max_ss(m, _mm_movehdup_ps(m));
        let d = _mm_cvtss_f32(m) / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        if !id.is_finite() {
            // A subnormal scale: codes of x * inf, left to the scalar path.
            return None;
        }
        let id = _mm256_set1_ps(id);
        // packs interleave 128-bit lanes; this puts the 8 dwords back in order.
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // The codes are within ±127 before packing (|x * id| <= 127 up to
        // rounding), so these sums equal the sums of the packed bytes.
        let mut sum = _mm256_setzero_si256();
        for (c, q) in x.chunks_exact(32).zip(qs.chunks_exact_mut(32)) {
            // SAFETY: `c` holds 32 f32.
            let v: [__m256i; 4] = std::array::from_fn(|i| unsafe {
                _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(c.as_ptr().add(8 * i)), id))
            });
            sum = _mm256_add_epi32(
                sum,
                _mm256_add_epi32(_mm256_add_epi32(v[0], v[1]), _mm256_add_epi32(v[2], v[3])),
            );
            let p = _mm256_packs_epi16(
                _mm256_packs_epi32(v[0], v[1]),
                _mm256_packs_epi32(v[2], v[3]),
            );
            let p = _mm256_permutevar8x32_epi32(p, order);
            // SAFETY: `q` holds 32 bytes.
            unsafe { _mm256_storeu_si256(q.as_mut_ptr().cast(), p) };
        }
        let s = _mm_add_epi32(
            _mm256_castsi256_si128(sum),
            _mm256_extracti128_si256(sum, 1),
        );
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01_00_11_10));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b10_11_00_01));
        Some((d, _mm_cvtsi128_si32(s)))
    }
}

/// x (K) -> K/32 blocks. `x.len()` must be `32 * out.len()`.
pub fn quantize_x32(x: &[f32], out: &mut [ActQ8x32]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(32)) {
        let (d, sum) = quantize_codes_sum(xs, &mut blk.qs);
        blk.d = d;
        blk.s = d * sum as f32;
    }
}

/// x (K) -> K/256 blocks. `x.len()` must be `256 * out.len()`.
pub fn quantize_k(x: &[f32], out: &mut [ActQ8K]) {
    for (blk, xs) in out.iter_mut().zip(x.chunks_exact(256)) {
        blk.d = quantize_codes_fast(xs, &mut blk.qs);
        for (s, q) in blk.bsums.iter_mut().zip(blk.qs.chunks_exact(16)) {
            // 16 codes of |q| <= 127 sum to at most 2032: fits i16.
            *s = q.iter().map(|&v| v as i16).sum();
        }
        for (s, pair) in blk.bsums32.iter_mut().zip(blk.bsums.chunks_exact(2)) {
            *s = pair[0] + pair[1];
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
    use super::{quantize_codes, quantize_codes_sum, round_ties_even_small};
    use rand::{Rng, SeedableRng};

    #[test]
    fn fast_quantizer_matches_scalar_bitwise() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for case in 0..3000 {
            let n = if case % 2 == 0 { 32 } else { 256 };
            let scale = 10f32.powi(rng.gen_range(-40..30));
            let mut x: Vec<f32> = (0..n).map(|_| rng.gen_range(-1f32..1.0) * scale).collect();
            match case % 7 {
                // Ties: halves of the scale step.
                1 => x.iter_mut().for_each(|v| *v = (*v * 4.0).round() / 4.0),
                2 => x.iter_mut().for_each(|v| *v = 0.0),
                3 => x[5] = f32::NAN,
                4 => x[n - 1] = f32::INFINITY,
                _ => {}
            }
            let (mut q0, mut q1) = (vec![0i8; n], vec![0i8; n]);
            let d0 = quantize_codes(&x, &mut q0);
            let (d1, sum) = quantize_codes_sum(&x, &mut q1);
            assert_eq!(
                sum,
                q0.iter().map(|&q| q as i32).sum::<i32>(),
                "case {case}"
            );
            assert!(
                d0.to_bits() == d1.to_bits() || (d0.is_nan() && d1.is_nan()),
                "{case}"
            );
            if !d0.is_nan() {
                assert_eq!(q0, q1, "case {case}");
            }
        }
    }

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
