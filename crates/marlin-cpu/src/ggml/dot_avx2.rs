//! AVX2 + FMA + F16C versions of the integer dot products in `dot_scalar`
//! (same arithmetic: unsigned or signed 8-bit weight codes times signed
//! 8-bit activation codes via `maddubs`, i32 sums per block, one f32 FMA
//! per block).
//!
//! The `#[target_feature]` functions are reached only through the table
//! [`kernels`] returns, and it returns one only after run-time detection.

use super::act::{ActQ8K, ActQ8x32};
use super::pair_avx2::*;
use super::{Dots, Kernels};
use marlin_quant::ggml::*;
use std::arch::x86_64::*;

/// The AVX2 kernel table, if this CPU has AVX2, FMA and F16C.
pub(super) fn kernels() -> Option<Kernels> {
    kernels_with(super::x8_avx2::has_vnni())
}

/// The AVX2 table; with `vnni` (the caller checked the CPU has it) the x8
/// kernels of the 32-element formats use `vpdpbusd` (same outputs).
pub(super) fn kernels_with(vnni: bool) -> Option<Kernels> {
    use super::x8_avx2 as x8;
    if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Some(Kernels {
            name: if vnni { "avx2+vnni" } else { "avx2" },
            q4_0: q4_0(),
            q4_1: q4_1(),
            q5_0: q5_0(),
            q5_1: q5_1(),
            q8_0: q8_0(),
            mxfp4: mxfp4(),
            q4k: q4k(),
            q6k: q6k(),
            q4_1x8: Some(if vnni { x8::q4_1_vnni() } else { x8::q4_1() }),
            q5_0x8: Some(if vnni { x8::q5_0_vnni() } else { x8::q5_0() }),
            q4kx8: Some(if vnni { x8::q4k_vnni() } else { x8::q4k() }),
            q6kx8: Some(if vnni { x8::q6k_vnni() } else { x8::q6k() }),
            q8_0x8: Some(if vnni { x8::q8_0_vnni() } else { x8::q8_0() }),
            f32dot,
        })
    } else {
        None
    }
}

// Safe entry points for the table. SAFETY (all of them): `kernels` builds
// the table only after detecting avx2, fma and f16c.
//
// `entry!` runs the whole (RM, RN) tile in one kernel call; `entry_rows!`
// runs it one weight row at a time (RM calls of the (1, RN) kernel),
// which measured faster for the one-block kernels (`dot32`): see
// docs/CPU_KERNELS.md.
macro_rules! entry {
    ($name:ident, $imp:ident, $w:ty, $a:ty) => {
        fn $name() -> Dots<$w, $a> {
            fn tile<const RM: usize, const RN: usize>(
                w: &[$w],
                a: &[$a],
                bpr: usize,
                out: &mut [f32],
                ostride: usize,
            ) {
                unsafe { $imp::<RM, RN>(w, a, bpr, out, ostride) }
            }
            Dots {
                one: tile::<1, 1>,
                rows2: tile::<2, 1>,
                acts4: tile::<1, 4>,
            }
        }
    };
}
macro_rules! entry_rows {
    ($name:ident, $imp:ident, $w:ty, $a:ty) => {
        fn $name() -> Dots<$w, $a> {
            fn tile<const RM: usize, const RN: usize>(
                w: &[$w],
                a: &[$a],
                bpr: usize,
                out: &mut [f32],
                ostride: usize,
            ) {
                for i in 0..RM {
                    let (wr, o) = (&w[i * bpr..][..bpr], &mut out[i * ostride..]);
                    unsafe { $imp::<1, RN>(wr, a, bpr, o, ostride) }
                }
            }
            Dots {
                one: tile::<1, 1>,
                rows2: tile::<2, 1>,
                acts4: tile::<1, 4>,
            }
        }
    };
}
entry_rows!(q4_0, dot_q4_0, BlockQ4_0, ActQ8x32);
entry_rows!(q4_1, dot_q4_1, BlockQ4_1, ActQ8x32);
entry_rows!(q5_0, dot_q5_0, BlockQ5_0, ActQ8x32);
entry_rows!(q5_1, dot_q5_1, BlockQ5_1, ActQ8x32);
entry!(q8_0, pair_q8_0, BlockQ8_0, ActQ8x32);
entry_rows!(mxfp4, dot_mxfp4, BlockMxfp4, ActQ8x32);
entry!(q4k, tile_q4k, BlockQ4K, ActQ8K);
entry!(q6k, tile_q6k, BlockQ6K, ActQ8K);

fn f32dot(w: &[f32], x: &[f32]) -> f32 {
    unsafe { dot_f32(w, x) }
}

/// The two f16 in `b` as f32 (lanes 0 and 1), loaded with a zero-extending
/// 4-byte move (see `f16_to_f32` for why not a 2-byte one).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_pair(b: [u8; 4]) -> (f32, f32) {
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le_bytes(b)));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// One f16 as f32 with integer operations (exact, as F16C converts;
/// NaN payloads aside). Used where only one f16 is needed: LLVM narrows a
/// one-lane F16C conversion to a `pinsrw` that merges into whatever
/// register it likes, which was the loop's accumulator, serialising the
/// loop on it.
#[inline]
fn f16_to_f32(b: [u8; 2]) -> f32 {
    let h = u16::from_le_bytes(b) as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let magnitude = if em < 0x0400 {
        // Zero or subnormal: em * 2^-24, exact in f32.
        em as f32 * f32::from_bits(0x3380_0000)
    } else if em < 0x7c00 {
        // Normal: rebias the exponent from 15 to 127.
        f32::from_bits((em << 13) + ((127 - 15) << 23))
    } else {
        // Infinity or NaN.
        f32::from_bits(0x7f80_0000 | ((em & 0x03ff) << 13))
    };
    f32::from_bits(sign | magnitude.to_bits())
}

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(super) fn hsum(v: __m256) -> f32 {
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
pub(super) fn bytes_from_bits(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let shuf = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let b = _mm256_and_si256(_mm256_shuffle_epi8(v, shuf), mask);
    _mm256_cmpeq_epi8(b, mask)
}

/// Σ of unsigned `w` times signed `a` bytes, as 8 i32 partial sums.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn mul_sum_us8(w: __m256i, a: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, a), _mm256_set1_epi16(1))
}

/// One 32-element format, one block at a time (Q8_0 takes its blocks in
/// pairs, see `pair_avx2`), over a tile of RM weight rows x RN activation
/// rows (see `super::Tile`): `$decode` gives (codes, d, c) of block `$b`,
/// and each block adds d * d_a * Σ q a + c * s_a to each pair's sum. Each
/// weight block is decoded once for the RN rows, each activation block
/// loaded once for the RM rows. Signed codes (symmetric formats, c = 0) go
/// through `maddubs` as |q| times sign(q) * a (|a| <= 127).
///
/// Every pair runs the same operations whatever (RM, RN): one FMA of
/// (d * d_a) * (i32 sum as f32) per block into its own accumulator, the
/// offset term summed in f32 beside it, the two added at the end.
macro_rules! dot32 {
    ($name:ident, $blk:ty, $signed:expr, |$b:ident| $decode:expr) => {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn $name<const RM: usize, const RN: usize>(
            w: &[$blk],
            a: &[ActQ8x32],
            bpr: usize,
            out: &mut [f32],
            ostride: usize,
        ) {
            let w: [&[$blk]; RM] = std::array::from_fn(|i| &w[i * bpr..][..bpr]);
            let a: [&[ActQ8x32]; RN] = std::array::from_fn(|j| &a[j * bpr..][..bpr]);
            let mut acc = [[_mm256_setzero_ps(); RN]; RM];
            let mut acc_s = [[0f32; RN]; RM];
            for blk in 0..bpr {
                let mut q = [_mm256_setzero_si256(); RM];
                let mut qu = [_mm256_setzero_si256(); RM];
                let mut dw = [_mm256_setzero_ps(); RM];
                let mut cw = [0f32; RM];
                for i in 0..RM {
                    let $b = &w[i][blk];
                    let (qi, d, c): (__m256i, f32, f32) = $decode;
                    q[i] = qi;
                    qu[i] = if $signed {
                        _mm256_sign_epi8(qi, qi)
                    } else {
                        qi
                    };
                    dw[i] = _mm256_set1_ps(d);
                    cw[i] = c;
                }
                for j in 0..RN {
                    let ba = &a[j][blk];
                    let av = load32_at(&ba.qs, 0);
                    let da = _mm256_set1_ps(ba.d);
                    for i in 0..RM {
                        let av = if $signed {
                            _mm256_sign_epi8(av, q[i])
                        } else {
                            av
                        };
                        let p = _mm256_cvtepi32_ps(mul_sum_us8(qu[i], av));
                        acc[i][j] = _mm256_fmadd_ps(_mm256_mul_ps(dw[i], da), p, acc[i][j]);
                        if !$signed {
                            // Symmetric signed codes have no activation-sum term.
                            acc_s[i][j] += cw[i] * ba.s;
                        }
                    }
                }
            }
            for i in 0..RM {
                for j in 0..RN {
                    out[i * ostride + j] = hsum(acc[i][j]) + acc_s[i][j];
                }
            }
        }
    };
}

dot32!(dot_q4_0, BlockQ4_0, false, |b| {
    let d = f16_to_f32(b.d);
    (nibbles(&b.qs), d, -8.0 * d)
});
dot32!(dot_q4_1, BlockQ4_1, false, |b| {
    let (d, m) = f16_pair([b.d[0], b.d[1], b.m[0], b.m[1]]);
    (nibbles(&b.qs), d, m)
});
dot32!(dot_q5_0, BlockQ5_0, false, |b| {
    let hi = _mm256_and_si256(bytes_from_bits(b.qh_bits()), _mm256_set1_epi8(0x10));
    let d = f16_to_f32(b.d);
    (_mm256_or_si256(nibbles(&b.qs), hi), d, -16.0 * d)
});
dot32!(dot_q5_1, BlockQ5_1, false, |b| {
    let hi = _mm256_and_si256(bytes_from_bits(b.qh_bits()), _mm256_set1_epi8(0x10));
    let (d, m) = f16_pair([b.d[0], b.d[1], b.m[0], b.m[1]]);
    (_mm256_or_si256(nibbles(&b.qs), hi), d, m)
});
dot32!(dot_mxfp4, BlockMxfp4, true, |b| {
    let table = _mm256_broadcastsi128_si256(_mm_setr_epi8(
        0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12,
    ));
    (
        _mm256_shuffle_epi8(table, nibbles(&b.qs)),
        e8m0_to_f32_half(b.e),
        0.0,
    )
});

/// 16 bsums of a Q8_K activation block as i16 lanes.
#[inline]
#[target_feature(enable = "avx2")]
fn load_bsums(a: &ActQ8K) -> __m256i {
    load32_at(&a.bsums, 0)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4k<const R: usize>(w: &[BlockQ4K], a: [&[ActQ8K]; R]) -> [f32; R] {
    let n = a.iter().fold(w.len(), |n, r| n.min(r.len()));
    let a = a.map(|r| &r[..n]);
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); R];
    let mut acc_m = [_mm256_setzero_ps(); R];
    for (i, bw) in w[..n].iter().enumerate() {
        let mut sc = [0i16; 8];
        let mut mins = [0i16; 16]; // each sub-block's min twice: one per bsum
        for sub in 0..8 {
            let (scale, min) = scale_min_k4(sub, &bw.scales);
            sc[sub] = scale as i16;
            mins[2 * sub] = min as i16;
            mins[2 * sub + 1] = min as i16;
        }
        let mins = load32_at(&mins, 0);
        let (d, dmin) = f16_pair([bw.d[0], bw.d[1], bw.dmin[0], bw.dmin[1]]);
        let mut sumi = [_mm256_setzero_si256(); R];
        for c in 0..4 {
            let q = load32_at(&bw.qs, 32 * c);
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            let (s_lo, s_hi) = (
                _mm256_set1_epi16(sc[2 * c]),
                _mm256_set1_epi16(sc[2 * c + 1]),
            );
            for r in 0..R {
                let ba = &a[r][i];
                let p_lo = _mm256_maddubs_epi16(lo, load32_at(&ba.qs, 64 * c));
                let p_hi = _mm256_maddubs_epi16(hi, load32_at(&ba.qs, 64 * c + 32));
                let p =
                    _mm256_add_epi32(_mm256_madd_epi16(p_lo, s_lo), _mm256_madd_epi16(p_hi, s_hi));
                sumi[r] = _mm256_add_epi32(sumi[r], p);
            }
        }
        for r in 0..R {
            let ba = &a[r][i];
            let summ = _mm256_cvtepi32_ps(_mm256_madd_epi16(mins, load_bsums(ba)));
            acc[r] = _mm256_fmadd_ps(
                _mm256_set1_ps(d * ba.d),
                _mm256_cvtepi32_ps(sumi[r]),
                acc[r],
            );
            acc_m[r] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * ba.d), summ, acc_m[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]) - hsum(acc_m[r]);
    }
    out
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q6k<const R: usize>(w: &[BlockQ6K], a: [&[ActQ8K]; R]) -> [f32; R] {
    let n = a.iter().fold(w.len(), |n, r| n.min(r.len()));
    let a = a.map(|r| &r[..n]);
    let m4 = _mm256_set1_epi8(0x0F);
    let m3 = _mm256_set1_epi8(0x03);
    let m30 = _mm256_set1_epi8(0x30);
    let mut acc = [_mm256_setzero_ps(); R];
    for (i, bw) in w[..n].iter().enumerate() {
        // SAFETY: 16 bytes are read from the 16-byte scales array.
        let sc8 = unsafe { _mm_loadu_si128(bw.scales.as_ptr().cast()) };
        let sc16 = _mm256_cvtepi8_epi16(sc8);
        // The codes are stored as q + 32: take Σ sc * 32 * Σa off the sum.
        let mut sumi = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let off = _mm256_madd_epi16(sc16, load_bsums(&a[r][i]));
            sumi[r] = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32(off, 5));
        }
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
                for r in 0..R {
                    let av = load32_at(&a[r][i].qs, 128 * half + 32 * k);
                    let p = _mm256_maddubs_epi16(qk, av);
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, scales));
                }
            }
        }
        let d = f16_to_f32(bw.d);
        for r in 0..R {
            let ds = _mm256_set1_ps(d * a[r][i].d);
            acc[r] = _mm256_fmadd_ps(ds, _mm256_cvtepi32_ps(sumi[r]), acc[r]);
        }
    }
    let mut out = [0f32; R];
    for r in 0..R {
        out[r] = hsum(acc[r]);
    }
    out
}

/// A K-quant tile: each weight row against the RN activation rows with the
/// one-row kernel `dot` (its weight decode is shared by the RN rows).
#[inline(always)]
fn k_tile<B, const RM: usize, const RN: usize>(
    w: &[B],
    a: &[ActQ8K],
    bpr: usize,
    out: &mut [f32],
    ostride: usize,
    dot: impl Fn(&[B], [&[ActQ8K]; RN]) -> [f32; RN],
) {
    let a: [&[ActQ8K]; RN] = std::array::from_fn(|j| &a[j * bpr..][..bpr]);
    for i in 0..RM {
        let ys = dot(&w[i * bpr..][..bpr], a);
        out[i * ostride..][..RN].copy_from_slice(&ys);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4k<const RM: usize, const RN: usize>(
    w: &[BlockQ4K],
    a: &[ActQ8K],
    bpr: usize,
    out: &mut [f32],
    ostride: usize,
) {
    // The closure inherits this function's target features.
    k_tile::<_, RM, RN>(w, a, bpr, out, ostride, |w, a| dot_q4k::<RN>(w, a))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q6k<const RM: usize, const RN: usize>(
    w: &[BlockQ6K],
    a: &[ActQ8K],
    bpr: usize,
    out: &mut [f32],
    ostride: usize,
) {
    // The closure inherits this function's target features.
    k_tile::<_, RM, RN>(w, a, bpr, out, ostride, |w, a| dot_q6k::<RN>(w, a))
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

#[cfg(test)]
mod tests {
    use super::f16_to_f32;
    use half::f16;

    #[test]
    fn integer_f16_conversion_is_exact() {
        for h in 0..=u16::MAX {
            let want = f16::from_bits(h).to_f32();
            let got = f16_to_f32(h.to_le_bytes());
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{h:#06x}: {got:e} vs {want:e}"
            );
        }
    }
}
