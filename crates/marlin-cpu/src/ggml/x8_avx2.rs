//! AVX2 kernels of the x8 layouts (see `x8`): per block, eight registers of
//! codes (lane r = weight row r), each multiplied by four activation bytes
//! broadcast to every lane.
//!
//! i16 headroom: `maddubs` lanes are two products of a code (at most 15 for
//! Q4_1, 31 for Q5_0) and an activation (|a| <= 127), so 8 registers of
//! Q4_1 (8 * 2 * 15 * 127 = 30480) or 4 of Q5_0 (4 * 2 * 31 * 127 = 31496)
//! add in i16 before one `madd` widens them. Where the CPU has AVX-512 VNNI
//! (with VL: 256-bit forms), the 32-element formats sum with `vpdpbusd`
//! instead: the same exact i32 sums, so the same outputs bit for bit.

/// Whether the `_vnni` kernels can run.
pub(super) fn has_vnni() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni")
}

use super::act::{ActQ8K, ActQ8x32};
use super::x8::{X8Dots, ROWS, X8Q4K, X8Q4_1, X8Q5_0, X8Q6K, X8Q8_0};
use std::arch::x86_64::*;

/// 32 bytes of `p` from byte `off`.
#[inline]
#[target_feature(enable = "avx2")]
fn load32<T: bytemuck::Pod>(p: &[T], off: usize) -> __m256i {
    let s = &bytemuck::cast_slice::<T, u8>(p)[off..off + 32];
    // SAFETY: `s` is 32 bytes long (the slice above checks the bounds).
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// Eight f16 (bits) as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x8(h: &[[u8; 2]; ROWS]) -> __m256 {
    // SAFETY: 16 bytes are read from a 16-byte array.
    _mm256_cvtph_ps(unsafe { _mm_loadu_si128(h.as_ptr().cast()) })
}

/// Activation bytes 4t..4t+4 of `a` in every i32 lane.
#[inline]
#[target_feature(enable = "avx2")]
fn bcast4(a: &ActQ8x32, t: usize) -> __m256i {
    let q = &a.qs[4 * t..4 * t + 4];
    _mm256_set1_epi32(i32::from_le_bytes([
        q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8,
    ]))
}

/// The eight code registers of a Q4_1 / Q5_0 block's nibbles.
#[inline]
#[target_feature(enable = "avx2")]
fn nibble_regs(qs: &[u8; 128]) -> [__m256i; 8] {
    let m4 = _mm256_set1_epi8(0x0F);
    let mut w = [_mm256_setzero_si256(); 8];
    for u in 0..4 {
        let p = load32(qs, 32 * u);
        w[u] = _mm256_and_si256(p, m4);
        w[u + 4] = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
    }
    w
}

/// Σ over registers `ts` of maddubs(w[t], a bytes of t), widened to i32.
#[inline]
#[target_feature(enable = "avx2")]
fn isum(w: &[__m256i; 8], a: &ActQ8x32, ts: std::ops::Range<usize>) -> __m256i {
    let mut p16 = _mm256_setzero_si256();
    for t in ts {
        p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(w[t], bcast4(a, t)));
    }
    _mm256_madd_epi16(p16, _mm256_set1_epi16(1))
}

/// `s` + Σ of |codes| times sign-adjusted activations `av` (both from a
/// signed register pair), i16 pairs widened at once (up to 2 * 128 * 127).
#[inline]
#[target_feature(enable = "avx2")]
fn dot_signed(s: __m256i, mags: __m256i, av: __m256i) -> __m256i {
    _mm256_add_epi32(
        s,
        _mm256_madd_epi16(_mm256_maddubs_epi16(mags, av), _mm256_set1_epi16(1)),
    )
}

/// [`isum`] with `vpdpbusd` (four u8 x i8 products into each i32 lane).
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn isum_vnni(w: &[__m256i; 8], a: &ActQ8x32, ts: std::ops::Range<usize>) -> __m256i {
    let mut s = _mm256_setzero_si256();
    for t in ts {
        s = _mm256_dpbusd_epi32(s, w[t], bcast4(a, t));
    }
    s
}

/// [`dot_signed`] with `vpdpbusd`.
#[inline]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
fn dot_signed_vnni(s: __m256i, mags: __m256i, av: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(s, mags, av)
}

/// The 32-element x8 kernels, once per instruction set: `$isum` and
/// `$dot` give the same exact i32 sums (`maddubs` + `madd`, or `vpdpbusd`),
/// the f32 operations are the same, so both sets give the same bits.
macro_rules! kernels32 {
    ($feat:literal, $isum:ident, $dot:ident, $q4_1:ident, $q5_0:ident, $q8_0:ident) => {
        /// `RN` activation rows against one group of Q4_1 blocks.
        #[target_feature(enable = $feat)]
        fn $q4_1<const RN: usize>(
            w: &[X8Q4_1],
            a: &[ActQ8x32],
            bpr: usize,
            out: &mut [[f32; ROWS]],
        ) {
            let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
            let w = &w[..bpr];
            let mut acc = [_mm256_setzero_ps(); RN];
            for (b, blk) in w.iter().enumerate() {
                let codes = nibble_regs(&blk.qs);
                let d = f16x8(&blk.d);
                let m = f16x8(&blk.m);
                for j in 0..RN {
                    let ab = &a[j * bpr + b];
                    let s = _mm256_cvtepi32_ps($isum(&codes, ab, 0..8));
                    acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(ab.d)), s, acc[j]);
                    acc[j] = _mm256_fmadd_ps(m, _mm256_set1_ps(ab.s), acc[j]);
                }
            }
            for j in 0..RN {
                // SAFETY: out[j] holds 8 f32.
                unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
            }
        }

        /// `RN` activation rows against one group of Q5_0 blocks.
        #[target_feature(enable = $feat)]
        fn $q5_0<const RN: usize>(
            w: &[X8Q5_0],
            a: &[ActQ8x32],
            bpr: usize,
            out: &mut [[f32; ROWS]],
        ) {
            let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
            let w = &w[..bpr];
            let bit4 = _mm256_set1_epi8(0x10);
            let mut acc = [_mm256_setzero_ps(); RN];
            for (b, blk) in w.iter().enumerate() {
                let mut codes = nibble_regs(&blk.qs);
                let qh = load32(&blk.qh, 0);
                // Bit t of each qh byte is the fifth bit of register t's lane.
                let hi: [__m256i; 8] = [
                    _mm256_slli_epi16(qh, 4),
                    _mm256_slli_epi16(qh, 3),
                    _mm256_slli_epi16(qh, 2),
                    _mm256_slli_epi16(qh, 1),
                    qh,
                    _mm256_srli_epi16(qh, 1),
                    _mm256_srli_epi16(qh, 2),
                    _mm256_srli_epi16(qh, 3),
                ];
                for t in 0..8 {
                    codes[t] = _mm256_or_si256(codes[t], _mm256_and_si256(hi[t], bit4));
                }
                let d = f16x8(&blk.d);
                // Codes are stored as q + 16: the offset term is -16 d * s_a.
                let c = _mm256_mul_ps(d, _mm256_set1_ps(-16.0));
                for j in 0..RN {
                    let ab = &a[j * bpr + b];
                    let s = _mm256_add_epi32($isum(&codes, ab, 0..4), $isum(&codes, ab, 4..8));
                    let s = _mm256_cvtepi32_ps(s);
                    acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, _mm256_set1_ps(ab.d)), s, acc[j]);
                    acc[j] = _mm256_fmadd_ps(c, _mm256_set1_ps(ab.s), acc[j]);
                }
            }
            for j in 0..RN {
                // SAFETY: out[j] holds 8 f32.
                unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
            }
        }

        /// `RN` activation rows against one group of Q8_0 blocks: signed codes
        /// go through `maddubs` as |q| times sign(q) * a; each register's i16
        /// pairs (up to 2 * 128 * 127) widen by `madd` before they add.
        /// Per block `acc = fma(d * d_a, isum, acc)`.
        #[target_feature(enable = $feat)]
        fn $q8_0<const RN: usize>(
            w: &[X8Q8_0],
            a: &[ActQ8x32],
            bpr: usize,
            out: &mut [[f32; ROWS]],
        ) {
            let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
            let w = &w[..bpr];
            let mut acc = [_mm256_setzero_ps(); RN];
            for (b, blk) in w.iter().enumerate() {
                let mut codes = [_mm256_setzero_si256(); 8];
                let mut mags = [_mm256_setzero_si256(); 8];
                for t in 0..8 {
                    codes[t] = load32(&blk.qs, 32 * t);
                    mags[t] = _mm256_sign_epi8(codes[t], codes[t]);
                }
                let d = f16x8(&blk.d);
                for j in 0..RN {
                    let ab = &a[j * bpr + b];
                    let mut s = _mm256_setzero_si256();
                    for t in 0..8 {
                        let av = _mm256_sign_epi8(bcast4(ab, t), codes[t]);
                        s = $dot(s, mags[t], av);
                    }
                    acc[j] = _mm256_fmadd_ps(
                        _mm256_mul_ps(d, _mm256_set1_ps(ab.d)),
                        _mm256_cvtepi32_ps(s),
                        acc[j],
                    );
                }
            }
            for j in 0..RN {
                // SAFETY: out[j] holds 8 f32.
                unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
            }
        }
    };
}
kernels32!("avx2,fma,f16c", isum, dot_signed, q4_1_x8, q5_0_x8, q8_0_x8);
kernels32!(
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    isum_vnni,
    dot_signed_vnni,
    q4_1_x8_vnni,
    q5_0_x8_vnni,
    q8_0_x8_vnni
);

/// `RN` activation rows against one group of Q4_K superblocks: per
/// sub-block, codes times activations summed in i16, then `madd` by the
/// rows' 6-bit scales into i32; the mins times the activation sums of each
/// sub-block by `madd` on (min, min) pairs. Per superblock
/// `acc = fma(d * d_a, isum, acc)`, `acc = fnmadd(dmin * d_a, msum, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q4k_x8<const RN: usize>(w: &[X8Q4K], a: &[ActQ8K], bpr: usize, out: &mut [[f32; ROWS]]) {
    let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
    let w = &w[..bpr];
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, blk) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); RN];
        for s in 0..8 {
            // SAFETY: 8 bytes are read from the 8-byte array sc[s].
            let sc = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(blk.sc[s].as_ptr().cast()) });
            let sc = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16)); // (sc, sc) i16 pairs
            let p = s / 2;
            let codes: [__m256i; 8] = std::array::from_fn(|u| {
                let q = load32(&blk.qs, 32 * (8 * p + u));
                if s % 2 == 0 {
                    _mm256_and_si256(q, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)
                }
            });
            for j in 0..RN {
                let qa = &a[j * bpr + b].qs[32 * s..32 * s + 32];
                let mut p16 = _mm256_setzero_si256();
                for (u, &c) in codes.iter().enumerate() {
                    let v = i32::from_le_bytes([
                        qa[4 * u] as u8,
                        qa[4 * u + 1] as u8,
                        qa[4 * u + 2] as u8,
                        qa[4 * u + 3] as u8,
                    ]);
                    p16 = _mm256_add_epi16(p16, _mm256_maddubs_epi16(c, _mm256_set1_epi32(v)));
                }
                isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(p16, sc));
            }
        }
        let d = f16x8(&blk.d);
        let dmin = f16x8(&blk.dmin);
        for j in 0..RN {
            let ab = &a[j * bpr + b];
            let mut msum = _mm256_setzero_si256();
            for p in 0..4 {
                // SAFETY: 16 bytes are read from the 16-byte array mn[p].
                let mn =
                    _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(blk.mn[p].as_ptr().cast()) });
                let bs = &ab.bsums32[2 * p..2 * p + 2];
                let pair = (bs[0] as u16 as u32 | ((bs[1] as u16 as u32) << 16)) as i32;
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mn, _mm256_set1_epi32(pair)));
            }
            let da = _mm256_set1_ps(ab.d);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(isum[j]), acc[j]);
            acc[j] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(msum), acc[j]);
        }
    }
    for j in 0..RN {
        // SAFETY: out[j] holds 8 f32.
        unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
    }
}

/// `RN` activation rows against one group of Q6_K superblocks: codes
/// (q + 32, at most 63) times activations, two registers summed in i16
/// (2 * 2 * 63 * 127 = 32004), `madd` by the sub-block's scale; the + 32
/// comes off as 32 * Σ scale * (activation sum of the sub-block). Per
/// superblock `acc = fma(d * d_a, isum - 32 msum, acc)`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k_x8<const RN: usize>(w: &[X8Q6K], a: &[ActQ8K], bpr: usize, out: &mut [[f32; ROWS]]) {
    let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
    let w = &w[..bpr];
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    // Byte shuffles duplicating the even / odd i16 lanes (scale pairs).
    let (even, odd) = (0x0504_0504_0100_0100i64, 0x0706_0706_0302_0302i64);
    let next = 0x0808_0808_0808_0808i64; // bytes 8..16 of each 128-bit lane
    let dup_even = _mm256_setr_epi64x(even, even + next, even, even + next);
    let dup_odd = _mm256_setr_epi64x(odd, odd + next, odd, odd + next);
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, blk) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); RN];
        for h in 0..2 {
            for c in 0..2 {
                for nib in 0..2 {
                    // Sub-blocks s0 (registers u < 4) and s0 + 1 (u >= 4).
                    let s0 = 8 * h + 2 * c + 4 * nib;
                    // SAFETY: 16 bytes are read from the 16-byte array.
                    let pair = _mm256_cvtepi8_epi16(unsafe {
                        _mm_loadu_si128(blk.sc[s0 / 2].as_ptr().cast())
                    });
                    let sc = [
                        _mm256_shuffle_epi8(pair, dup_even),
                        _mm256_shuffle_epi8(pair, dup_odd),
                    ];
                    let cc = 2 * nib + c; // which 32-element chunk of the half
                    let codes: [__m256i; 8] = std::array::from_fn(|u| {
                        let q = load32(&blk.ql, 32 * (8 * (2 * h + c) + u));
                        let lo = if nib == 0 {
                            _mm256_and_si256(q, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)
                        };
                        let qh = load32(&blk.qh, 32 * (8 * h + u));
                        let hi = match cc {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 2),
                            2 => qh,
                            _ => _mm256_srli_epi16(qh, 2),
                        };
                        _mm256_or_si256(lo, _mm256_and_si256(hi, m30))
                    });
                    for j in 0..RN {
                        let t0 = 32 * h + 8 * cc; // first register's element group
                        let qa = &a[j * bpr + b].qs[4 * t0..4 * t0 + 32];
                        let prod = |u: usize| {
                            let v = i32::from_le_bytes([
                                qa[4 * u] as u8,
                                qa[4 * u + 1] as u8,
                                qa[4 * u + 2] as u8,
                                qa[4 * u + 3] as u8,
                            ]);
                            _mm256_maddubs_epi16(codes[u], _mm256_set1_epi32(v))
                        };
                        for k in 0..4 {
                            let p16 = _mm256_add_epi16(prod(2 * k), prod(2 * k + 1));
                            isum[j] = _mm256_add_epi32(isum[j], _mm256_madd_epi16(p16, sc[k / 2]));
                        }
                    }
                }
            }
        }
        let d = f16x8(&blk.d);
        for j in 0..RN {
            let ab = &a[j * bpr + b];
            let mut msum = _mm256_setzero_si256();
            for i in 0..8 {
                // SAFETY: 16 bytes are read from the 16-byte array sc[i].
                let pair =
                    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(blk.sc[i].as_ptr().cast()) });
                let bs = &ab.bsums[2 * i..2 * i + 2];
                let sums = (bs[0] as u16 as u32 | ((bs[1] as u16 as u32) << 16)) as i32;
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(pair, _mm256_set1_epi32(sums)));
            }
            let total = _mm256_sub_epi32(isum[j], _mm256_slli_epi32(msum, 5));
            let da = _mm256_set1_ps(ab.d);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(total), acc[j]);
        }
    }
    for j in 0..RN {
        // SAFETY: out[j] holds 8 f32.
        unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
    }
}

/// The K-quant kernels with `vpdpbusd`: each sub-block's i32 sums come
/// out of `vpdpbusd` and are multiplied by the scales with `vpmulld`; the
/// same exact integers as the `maddubs` / `madd` kernels above, the same
/// f32 operations after them, so the same outputs bit for bit.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn q4k_x8_vnni<const RN: usize>(w: &[X8Q4K], a: &[ActQ8K], bpr: usize, out: &mut [[f32; ROWS]]) {
    let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
    let w = &w[..bpr];
    let m4 = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, blk) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); RN];
        for s in 0..8 {
            // SAFETY: 8 bytes are read from the 8-byte array sc[s].
            let sc = _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(blk.sc[s].as_ptr().cast()) });
            let p = s / 2;
            let codes: [__m256i; 8] = std::array::from_fn(|u| {
                let q = load32(&blk.qs, 32 * (8 * p + u));
                if s % 2 == 0 {
                    _mm256_and_si256(q, m4)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)
                }
            });
            for j in 0..RN {
                let qa = &a[j * bpr + b].qs[32 * s..32 * s + 32];
                let mut s32 = _mm256_setzero_si256();
                for (u, &c) in codes.iter().enumerate() {
                    let v = i32::from_le_bytes([
                        qa[4 * u] as u8,
                        qa[4 * u + 1] as u8,
                        qa[4 * u + 2] as u8,
                        qa[4 * u + 3] as u8,
                    ]);
                    s32 = _mm256_dpbusd_epi32(s32, c, _mm256_set1_epi32(v));
                }
                isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(s32, sc));
            }
        }
        let d = f16x8(&blk.d);
        let dmin = f16x8(&blk.dmin);
        for j in 0..RN {
            let ab = &a[j * bpr + b];
            let mut msum = _mm256_setzero_si256();
            for p in 0..4 {
                // SAFETY: 16 bytes are read from the 16-byte array mn[p].
                let mn =
                    _mm256_cvtepu8_epi16(unsafe { _mm_loadu_si128(blk.mn[p].as_ptr().cast()) });
                let bs = &ab.bsums32[2 * p..2 * p + 2];
                let pair = (bs[0] as u16 as u32 | ((bs[1] as u16 as u32) << 16)) as i32;
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(mn, _mm256_set1_epi32(pair)));
            }
            let da = _mm256_set1_ps(ab.d);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(isum[j]), acc[j]);
            acc[j] = _mm256_fnmadd_ps(_mm256_mul_ps(dmin, da), _mm256_cvtepi32_ps(msum), acc[j]);
        }
    }
    for j in 0..RN {
        // SAFETY: out[j] holds 8 f32.
        unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
    }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
fn q6k_x8_vnni<const RN: usize>(w: &[X8Q6K], a: &[ActQ8K], bpr: usize, out: &mut [[f32; ROWS]]) {
    let a = &a[..RN * bpr]; // (RN, bpr); indexed a[j * bpr + b]
    let w = &w[..bpr];
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    // Byte shuffles duplicating the even / odd i16 lanes (scale pairs).
    // Even / odd bytes (sub-blocks 2i / 2i + 1) of a scale pair vector.
    let even8 = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    let odd8 = _mm_setr_epi8(1, 3, 5, 7, 9, 11, 13, 15, -1, -1, -1, -1, -1, -1, -1, -1);
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, blk) in w.iter().enumerate() {
        let mut isum = [_mm256_setzero_si256(); RN];
        for h in 0..2 {
            for c in 0..2 {
                for nib in 0..2 {
                    // Sub-blocks s0 (registers u < 4) and s0 + 1 (u >= 4).
                    let s0 = 8 * h + 2 * c + 4 * nib;
                    // SAFETY: 16 bytes are read from the 16-byte array.
                    let pair8 = unsafe { _mm_loadu_si128(blk.sc[s0 / 2].as_ptr().cast()) };
                    // Scales of sub-blocks s0 and s0 + 1 as i32 per row.
                    let sc = [
                        _mm256_cvtepi8_epi32(_mm_shuffle_epi8(pair8, even8)),
                        _mm256_cvtepi8_epi32(_mm_shuffle_epi8(pair8, odd8)),
                    ];
                    let cc = 2 * nib + c; // which 32-element chunk of the half
                    let codes: [__m256i; 8] = std::array::from_fn(|u| {
                        let q = load32(&blk.ql, 32 * (8 * (2 * h + c) + u));
                        let lo = if nib == 0 {
                            _mm256_and_si256(q, m4)
                        } else {
                            _mm256_and_si256(_mm256_srli_epi16(q, 4), m4)
                        };
                        let qh = load32(&blk.qh, 32 * (8 * h + u));
                        let hi = match cc {
                            0 => _mm256_slli_epi16(qh, 4),
                            1 => _mm256_slli_epi16(qh, 2),
                            2 => qh,
                            _ => _mm256_srli_epi16(qh, 2),
                        };
                        _mm256_or_si256(lo, _mm256_and_si256(hi, m30))
                    });
                    for j in 0..RN {
                        let t0 = 32 * h + 8 * cc; // first register's element group
                        let qa = &a[j * bpr + b].qs[4 * t0..4 * t0 + 32];
                        let bcast = |u: usize| {
                            _mm256_set1_epi32(i32::from_le_bytes([
                                qa[4 * u] as u8,
                                qa[4 * u + 1] as u8,
                                qa[4 * u + 2] as u8,
                                qa[4 * u + 3] as u8,
                            ]))
                        };
                        for (half, (cs, &scale)) in codes.chunks_exact(4).zip(&sc).enumerate() {
                            let mut s32 = _mm256_setzero_si256();
                            for (u, &c) in cs.iter().enumerate() {
                                s32 = _mm256_dpbusd_epi32(s32, c, bcast(4 * half + u));
                            }
                            isum[j] = _mm256_add_epi32(isum[j], _mm256_mullo_epi32(s32, scale));
                        }
                    }
                }
            }
        }
        let d = f16x8(&blk.d);
        for j in 0..RN {
            let ab = &a[j * bpr + b];
            let mut msum = _mm256_setzero_si256();
            for i in 0..8 {
                // SAFETY: 16 bytes are read from the 16-byte array sc[i].
                let pair =
                    _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(blk.sc[i].as_ptr().cast()) });
                let bs = &ab.bsums[2 * i..2 * i + 2];
                let sums = (bs[0] as u16 as u32 | ((bs[1] as u16 as u32) << 16)) as i32;
                msum = _mm256_add_epi32(msum, _mm256_madd_epi16(pair, _mm256_set1_epi32(sums)));
            }
            let total = _mm256_sub_epi32(isum[j], _mm256_slli_epi32(msum, 5));
            let da = _mm256_set1_ps(ab.d);
            acc[j] = _mm256_fmadd_ps(_mm256_mul_ps(d, da), _mm256_cvtepi32_ps(total), acc[j]);
        }
    }
    for j in 0..RN {
        // SAFETY: out[j] holds 8 f32.
        unsafe { _mm256_storeu_ps(out[j].as_mut_ptr(), acc[j]) }
    }
}

// Safe entry points. SAFETY (all): reached only through the table
// `dot_avx2::kernels` builds after detecting avx2, fma and f16c (and
// avx512f, avx512vl, avx512vnni for the `_vnni` ones).
macro_rules! x8_entry {
    ($name:ident, $imp:ident, $x:ty, $a:ty) => {
        pub(super) fn $name() -> X8Dots<$x, $a> {
            fn tile<const RN: usize>(w: &[$x], a: &[$a], bpr: usize, out: &mut [[f32; ROWS]]) {
                unsafe { $imp::<RN>(w, a, bpr, out) }
            }
            X8Dots {
                acts: [tile::<1>, tile::<2>, tile::<3>, tile::<4>],
            }
        }
    };
}
x8_entry!(q4_1, q4_1_x8, X8Q4_1, ActQ8x32);
x8_entry!(q5_0, q5_0_x8, X8Q5_0, ActQ8x32);
x8_entry!(q4_1_vnni, q4_1_x8_vnni, X8Q4_1, ActQ8x32);
x8_entry!(q5_0_vnni, q5_0_x8_vnni, X8Q5_0, ActQ8x32);
x8_entry!(q8_0_vnni, q8_0_x8_vnni, X8Q8_0, ActQ8x32);
x8_entry!(q4k, q4k_x8, X8Q4K, ActQ8K);
x8_entry!(q6k, q6k_x8, X8Q6K, ActQ8K);
x8_entry!(q4k_vnni, q4k_x8_vnni, X8Q4K, ActQ8K);
x8_entry!(q6k_vnni, q6k_x8_vnni, X8Q6K, ActQ8K);
x8_entry!(q8_0, q8_0_x8, X8Q8_0, ActQ8x32);
