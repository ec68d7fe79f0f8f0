//! AVX2 + FMA + F16C versions of the integer dot products in `dot_scalar`
//! (same arithmetic: unsigned or signed 8-bit weight codes times signed
//! 8-bit activation codes via `maddubs`, i32 sums per block, one f32 FMA
//! per block).
//!
//! The `#[target_feature]` functions are reached only through the table
//! [`kernels`] returns, and it returns one only after run-time detection.

use super::act::{ActQ8K, ActQ8x32};
use super::Kernels;
use marlin_quant::ggml::*;
use std::arch::x86_64::*;

/// The AVX2 kernel table, if this CPU has AVX2, FMA and F16C.
pub(super) fn kernels() -> Option<Kernels> {
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Some(Kernels {
            name: "avx2",
            q4_0,
            q4_1,
            q5_0,
            q5_1,
            q8_0,
            mxfp4,
            q4k,
            q6k,
            f32dot,
        })
    } else {
        None
    }
}

// Safe entry points for the table. SAFETY (all of them): `kernels` builds
// the table only after detecting avx2, fma and f16c.
macro_rules! entry {
    ($name:ident, $imp:ident, $w:ty, $a:ty) => {
        fn $name(w: &[$w], a: &[$a]) -> f32 {
            unsafe { $imp(w, a) }
        }
    };
}
entry!(q4_0, dot_q4_0, BlockQ4_0, ActQ8x32);
entry!(q4_1, dot_q4_1, BlockQ4_1, ActQ8x32);
entry!(q5_0, dot_q5_0, BlockQ5_0, ActQ8x32);
entry!(q5_1, dot_q5_1, BlockQ5_1, ActQ8x32);
entry!(q8_0, dot_q8_0, BlockQ8_0, ActQ8x32);
entry!(mxfp4, dot_mxfp4, BlockMxfp4, ActQ8x32);
entry!(q4k, dot_q4k, BlockQ4K, ActQ8K);
entry!(q6k, dot_q6k, BlockQ6K, ActQ8K);
entry!(f32dot, dot_f32, f32, f32);

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_to_f32(b: [u8; 2]) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(
        _mm_cvtsi32_si128(u16::from_le_bytes(b) as i32),
    ))
}

#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// 32 bytes starting at `p[off]`; `p` must hold at least off + 32 bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn load32_at<T: bytemuck::Pod>(p: &[T], off: usize) -> __m256i {
    let s = &bytemuck::cast_slice::<T, u8>(p)[off..off + 32];
    // SAFETY: `s` is 32 bytes long (the slice above checks the bounds).
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// The 32 nibbles of 16 bytes as bytes: low nibbles first, then high ones
/// (ggml's element order j, j + 16).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(qs: &[u8; 16]) -> __m256i {
    // SAFETY: 16 bytes are read from a 16-byte array.
    let q = unsafe { _mm_loadu_si128(qs.as_ptr().cast()) };
    let m4 = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(q, m4);
    let hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
    _mm256_set_m128i(hi, lo)
}

/// Byte j = 0xFF where bit j of `bits` is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
fn bytes_from_bits(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let b = _mm256_and_si256(_mm256_shuffle_epi8(v, shuf), mask);
    _mm256_cmpeq_epi8(b, mask)
}

/// Σ of unsigned `w` times signed `a` bytes, as 8 f32 partial sums.
#[inline]
#[target_feature(enable = "avx2")]
fn mul_sum_us8(w: __m256i, a: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(w, a);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
}

/// Σ of signed `w` times signed `a` bytes (|a| <= 127), as 8 f32 sums.
#[inline]
#[target_feature(enable = "avx2")]
fn mul_sum_i8(w: __m256i, a: __m256i) -> __m256 {
    mul_sum_us8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(a, w))
}

/// One 32-element format: `$decode` gives (codes, d, c) of block `$b`;
/// the block contributes d * d_a * Σ q a + c * s_a.
macro_rules! dot32 {
    ($name:ident, $blk:ty, $mul:ident, |$b:ident| $decode:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name(w: &[$blk], a: &[ActQ8x32]) -> f32 {
            let mut acc = _mm256_setzero_ps();
            let mut acc_s = 0f32;
            for ($b, ba) in w.iter().zip(a) {
                let (q, d, c): (__m256i, f32, f32) = $decode;
                let p = $mul(q, load32_at(&ba.qs, 0));
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * ba.d), p, acc);
                acc_s += c * ba.s;
            }
            hsum(acc) + acc_s
        }
    };
}

dot32!(dot_q4_0, BlockQ4_0, mul_sum_us8, |b| {
    let d = f16_to_f32(b.d);
    (nibbles(&b.qs), d, -8.0 * d)
});
dot32!(dot_q4_1, BlockQ4_1, mul_sum_us8, |b| {
    (nibbles(&b.qs), f16_to_f32(b.d), f16_to_f32(b.m))
});
dot32!(dot_q5_0, BlockQ5_0, mul_sum_us8, |b| {
    let hi = _mm256_and_si256(bytes_from_bits(b.qh_bits()), _mm256_set1_epi8(0x10));
    let d = f16_to_f32(b.d);
    (_mm256_or_si256(nibbles(&b.qs), hi), d, -16.0 * d)
});
dot32!(dot_q5_1, BlockQ5_1, mul_sum_us8, |b| {
    let hi = _mm256_and_si256(bytes_from_bits(b.qh_bits()), _mm256_set1_epi8(0x10));
    (
        _mm256_or_si256(nibbles(&b.qs), hi),
        f16_to_f32(b.d),
        f16_to_f32(b.m),
    )
});
dot32!(dot_q8_0, BlockQ8_0, mul_sum_i8, |b| (
    load32_at(&b.qs, 0),
    f16_to_f32(b.d),
    0.0
));
dot32!(dot_mxfp4, BlockMxfp4, mul_sum_i8, |b| {
    let table = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
    ));
    (
        _mm256_shuffle_epi8(table, nibbles(&b.qs)),
        e8m0_to_f32_half(b.e),
        0.0,
    )
});

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4k(w: &[BlockQ4K], a: &[ActQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = _mm256_setzero_ps();
    let mut acc_m = 0f32;
    for (bw, ba) in w.iter().zip(a) {
        let mut sc = [0i16; 8];
        let mut summ = 0i32;
        for (sub, s) in sc.iter_mut().enumerate() {
            let (scale, min) = scale_min_k4(sub, &bw.scales);
            *s = scale as i16;
            summ += min as i32 * (ba.bsums[2 * sub] as i32 + ba.bsums[2 * sub + 1] as i32);
        }
        let mut sumi = _mm256_setzero_si256();
        for c in 0..4 {
            let q = load32_at(&bw.qs, 32 * c);
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let p_lo = _mm256_maddubs_epi16(lo, load32_at(&ba.qs, 64 * c));
            let p_hi = _mm256_maddubs_epi16(hi, load32_at(&ba.qs, 64 * c + 32));
            let p_lo = _mm256_madd_epi16(p_lo, _mm256_set1_epi16(sc[2 * c]));
            let p_hi = _mm256_madd_epi16(p_hi, _mm256_set1_epi16(sc[2 * c + 1]));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p_lo, p_hi));
        }
        let d = f16_to_f32(bw.d) * ba.d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc_m += f16_to_f32(bw.dmin) * ba.d * summ as f32;
    }
    hsum(acc) - acc_m
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k(w: &[BlockQ6K], a: &[ActQ8K]) -> f32 {
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(0x03);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = _mm256_setzero_ps();
    let mut acc_off = 0f32;
    for (bw, ba) in w.iter().zip(a) {
        // The codes are stored as q + 32; Σ sc * 32 * Σa is taken off once.
        let off: i32 = bw
            .scales
            .iter()
            .zip(&ba.bsums)
            .map(|(&s, &b)| s as i32 * b as i32)
            .sum();
        let mut sumi = _mm256_setzero_si256();
        for half in 0..2 {
            let ql0 = load32_at(&bw.ql, 64 * half);
            let ql1 = load32_at(&bw.ql, 64 * half + 32);
            let qh = load32_at(&bw.qh, 32 * half);
            // 16-bit shifts move bits across bytes; the masks drop them.
            let q = [
                _mm256_or_si256(
                    _mm256_and_si256(ql0, m4),
                    _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(ql1, m4),
                    _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                    _mm256_and_si256(qh, m30),
                ),
                _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                    _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
                ),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let s = 8 * half + 2 * k;
                let scales = _mm256_set_m128i(
                    _mm_set1_epi16(bw.scales[s + 1] as i16),
                    _mm_set1_epi16(bw.scales[s] as i16),
                );
                let p = _mm256_maddubs_epi16(qk, load32_at(&ba.qs, 128 * half + 32 * k));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, scales));
            }
        }
        let d = f16_to_f32(bw.d) * ba.d;
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        acc_off += d * (32 * off) as f32;
    }
    hsum(acc) - acc_off
}

#[target_feature(enable = "avx2,fma")]
fn dot_f32(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut wc = w.chunks_exact(32);
    let mut xc = x.chunks_exact(32);
    for (a, b) in (&mut wc).zip(&mut xc) {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: a and b hold 32 f32; lanes 8i..8i+8 are in bounds.
            let (va, vb) = unsafe {
                (
                    _mm256_loadu_ps(a.as_ptr().add(8 * i)),
                    _mm256_loadu_ps(b.as_ptr().add(8 * i)),
                )
            };
            *acc = _mm256_fmadd_ps(va, vb, *acc);
        }
    }
    let tail: f32 = wc
        .remainder()
        .iter()
        .zip(xc.remainder())
        .map(|(a, b)| a * b)
        .sum();
    let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    hsum(s) + tail
}
