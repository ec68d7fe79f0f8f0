//! AVX2 tile kernel for Q8_0 taking its blocks two at a time: the 16-byte
//! halves of blocks b and b + 1 share one register ([lo b | lo b+1] and
//! [hi b | hi b+1]), so one int-to-float conversion and one FMA serve two
//! blocks, and the f16 scales of a block pair convert in one instruction.
//! Measured (docs/CPU_KERNELS.md): 7% faster than the one-block kernel for
//! one activation row (the LM heads), slower with several; the same
//! scheme for the nibble formats was 10-30% slower, so they stay on
//! `dot_avx2::dot32`.
//!
//! Arithmetic per pair, the same for every tile shape (batch invariance):
//! lanes 0-3 of the f32 accumulator take block b, lanes 4-7 block b + 1,
//! each as (d * d_a) * (i32 sum as f32) by FMA; the offset terms c * s_a
//! of the two blocks go by FMA into lanes 0 and 1 of a second accumulator
//! (a separate dependency chain); the result is hsum(acc) + (off0 + off1).
//! An odd last block runs as a pair with a zero partner (zero codes,
//! scales and sums).

use super::act::ActQ8x32;
use super::dot_avx2::{hsum, mul_sum_us8};
use marlin_quant::ggml::*;
use std::arch::x86_64::*;

/// 16 bytes of `p` from byte `off`; `p` must hold at least off + 16 bytes.
#[inline]
#[target_feature(enable = "avx2")]
fn load16<T: bytemuck::Pod>(p: &[T], off: usize) -> __m128i {
    let s = &bytemuck::cast_slice::<T, u8>(p)[off..off + 16];
    // SAFETY: `s` is 16 bytes long (the slice above checks the bounds).
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// [x0 | x1] as one register.
#[inline]
#[target_feature(enable = "avx2")]
fn join(x0: __m128i, x1: __m128i) -> __m256i {
    _mm256_inserti128_si256(_mm256_castsi128_si256(x0), x1, 1)
}

/// Four f16 (as two little-endian pairs of 2-byte fields) to f32:
/// [a0, a1, b0, b1].
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x4(a0: [u8; 2], a1: [u8; 2], b0: [u8; 2], b1: [u8; 2]) -> __m128 {
    let lo = u32::from_le_bytes([a0[0], a0[1], a1[0], a1[1]]) as i32;
    let hi = u32::from_le_bytes([b0[0], b0[1], b1[0], b1[1]]) as i32;
    _mm_cvtph_ps(_mm_set_epi32(0, 0, hi, lo))
}

/// One activation block pair: codes in the nibble-pair layout, d per
/// 128-bit half, and [s0, s1, 0, ..]. `a1` None: a zero partner.
#[inline]
#[target_feature(enable = "avx2")]
fn act_pair(a0: &ActQ8x32, a1: Option<&ActQ8x32>) -> (__m256i, __m256i, __m256, __m256) {
    let (lo0, hi0) = (load16(&a0.qs, 0), load16(&a0.qs, 16));
    match a1 {
        Some(a1) => (
            join(lo0, load16(&a1.qs, 0)),
            join(hi0, load16(&a1.qs, 16)),
            _mm256_set_m128(_mm_set1_ps(a1.d), _mm_set1_ps(a0.d)),
            _mm256_setr_ps(a0.s, a1.s, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ),
        None => (
            join(lo0, _mm_setzero_si128()),
            join(hi0, _mm_setzero_si128()),
            _mm256_set_m128(_mm_setzero_ps(), _mm_set1_ps(a0.d)),
            _mm256_setr_ps(a0.s, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        ),
    }
}

/// A 32-element format, blocks two at a time, over a tile of RM weight
/// rows x RN activation rows (see `super::Tile`). `$decode` gives, for the
/// blocks `$b0`, `$b1`: ([lo0 | lo1] codes, [hi0 | hi1] codes, [d0, c0,
/// d1, c1]). Signed codes (c = 0) go through `maddubs` as |q| times
/// sign(q) * a; unsigned ones (at most 31) let the lo and hi products add
/// in i16 before one `madd`.
macro_rules! pair32 {
    ($name:ident, $blk:ty, $signed:expr, |$b0:ident, $b1:ident| $decode:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $name<const RM: usize, const RN: usize>(
            w: &[$blk],
            a: &[ActQ8x32],
            bpr: usize,
            out: &mut [f32],
            ostride: usize,
        ) {
            // Rows as slices of exactly bpr blocks (built in place, not by
            // `array::from_fn`, so the lengths stay visible to the optimiser).
            let mut wr: [&[$blk]; RM] = [&w[..0]; RM];
            for (i, r) in wr.iter_mut().enumerate() {
                *r = &w[i * bpr..][..bpr];
            }
            let mut ar: [&[ActQ8x32]; RN] = [&a[..0]; RN];
            for (j, r) in ar.iter_mut().enumerate() {
                *r = &a[j * bpr..][..bpr];
            }
            let ones = _mm256_set1_epi16(1);
            // Lanes 0-3 and 4-7 of each half's scale: d0 and d1.
            let spread = _mm256_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2);
            let low_half = _mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0);
            let mut acc = [[_mm256_setzero_ps(); RN]; RM];
            let mut off = [[_mm256_setzero_ps(); RN]; RM];
            // Blocks b and b + 1 (`full`), or b alone with a zero partner.
            let mut step = |b: usize, full: bool| {
                let b1 = if full { b + 1 } else { b };
                let mut lo = [_mm256_setzero_si256(); RM];
                let mut hi = [_mm256_setzero_si256(); RM];
                let mut dv = [_mm256_setzero_ps(); RM];
                let mut cv = [_mm256_setzero_ps(); RM];
                for i in 0..RM {
                    let ($b0, $b1) = (&wr[i][b], &wr[i][b1]);
                    let (l, h, dc): (__m256i, __m256i, __m128) = $decode;
                    let (l, h, dc) = if full {
                        (l, h, dc)
                    } else {
                        // Zero partner: no codes, no scales.
                        (
                            _mm256_and_si256(l, low_half),
                            _mm256_and_si256(h, low_half),
                            _mm_and_ps(dc, _mm_castsi128_ps(_mm_setr_epi32(-1, -1, 0, 0))),
                        )
                    };
                    lo[i] = l;
                    hi[i] = h;
                    dv[i] = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dc), spread);
                    // [c0, c1, 0, 0, 0, 0, 0, 0]
                    cv[i] = _mm256_castps128_ps256(_mm_and_ps(
                        _mm_permute_ps(dc, 0b11_01_11_01),
                        _mm_castsi128_ps(_mm_setr_epi32(-1, -1, 0, 0)),
                    ));
                }
                for j in 0..RN {
                    let a1 = if full { Some(&ar[j][b1]) } else { None };
                    let (alo, ahi, da, sa) = act_pair(&ar[j][b], a1);
                    for i in 0..RM {
                        let isum = if $signed {
                            _mm256_add_epi32(
                                mul_sum_us8(
                                    _mm256_sign_epi8(lo[i], lo[i]),
                                    _mm256_sign_epi8(alo, lo[i]),
                                ),
                                mul_sum_us8(
                                    _mm256_sign_epi8(hi[i], hi[i]),
                                    _mm256_sign_epi8(ahi, hi[i]),
                                ),
                            )
                        } else {
                            // |q| <= 31, |a| <= 127: 4 products fit i16.
                            let p16 = _mm256_add_epi16(
                                _mm256_maddubs_epi16(lo[i], alo),
                                _mm256_maddubs_epi16(hi[i], ahi),
                            );
                            _mm256_madd_epi16(p16, ones)
                        };
                        let s = _mm256_mul_ps(dv[i], da);
                        acc[i][j] = _mm256_fmadd_ps(s, _mm256_cvtepi32_ps(isum), acc[i][j]);
                        if !$signed {
                            off[i][j] = _mm256_fmadd_ps(cv[i], sa, off[i][j]);
                        }
                    }
                }
            };
            for p in 0..bpr / 2 {
                step(2 * p, true);
            }
            if bpr % 2 == 1 {
                step(bpr - 1, false);
            }
            for i in 0..RM {
                for j in 0..RN {
                    let o = _mm256_castps256_ps128(off[i][j]);
                    let o = _mm_cvtss_f32(o) + _mm_cvtss_f32(_mm_movehdup_ps(o));
                    out[i * ostride + j] = hsum(acc[i][j]) + o;
                }
            }
        }
    };
}

pair32!(pair_q8_0, BlockQ8_0, true, |b0, b1| {
    (
        join(load16(&b0.qs, 0), load16(&b1.qs, 0)),
        join(load16(&b0.qs, 16), load16(&b1.qs, 16)),
        f16x4(b0.d, [0, 0], b1.d, [0, 0]),
    )
});
