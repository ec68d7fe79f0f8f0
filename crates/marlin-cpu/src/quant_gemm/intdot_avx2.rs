//! AVX2 kernels for [`IntDotWeights`]: unpack a superblock into 8 vectors of
//! 32 codes, `maddubs` with the int8 activations (i16 pairs), accumulate
//! `depth` vectors in i16, widen with `madd(.., 1)`, then scale per lane.
//!
//! Every function here requires AVX2, FMA and F16C; callers check
//! `is_x86_feature_detected!` once (see `Isa`).

use super::actq::{QuantActs, LANES, SB};
use super::intdot::{
    depth, sb_bytes, IntDotWeights, FP4_LUT, F_BYTE, F_CRUMB, F_FP4, F_INT3, F_NIBBLE,
};
use super::lanegrid::{GridValues, LaneGrid};
use std::arch::x86_64::*;

#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn ld(p: *const u8, off: usize) -> __m256i {
    _mm256_loadu_si256(p.add(off) as *const __m256i)
}

/// Unpacks superblock `p` (`sb_bytes(F)` bytes) into interleaved vectors.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn unpack<const F: u8>(p: *const u8) -> [__m256i; 8] {
    let mut v = [_mm256_setzero_si256(); 8];
    match F {
        F_NIBBLE | F_FP4 => {
            let mask = _mm256_set1_epi8(0x0F);
            let lut =
                _mm256_broadcastsi128_si256(_mm_loadu_si128(FP4_LUT.as_ptr() as *const __m128i));
            for c in 0..4 {
                let b = ld(p, 32 * c);
                let lo = _mm256_and_si256(b, mask);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask);
                if F == F_FP4 {
                    v[2 * c] = _mm256_shuffle_epi8(lut, lo);
                    v[2 * c + 1] = _mm256_shuffle_epi8(lut, hi);
                } else {
                    v[2 * c] = lo;
                    v[2 * c + 1] = hi;
                }
            }
        }
        F_CRUMB | F_INT3 => {
            let mask = _mm256_set1_epi8(3);
            for c in 0..2 {
                let b = ld(p, 32 * c);
                v[4 * c] = _mm256_and_si256(b, mask);
                v[4 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<2>(b), mask);
                v[4 * c + 2] = _mm256_and_si256(_mm256_srli_epi16::<4>(b), mask);
                v[4 * c + 3] = _mm256_and_si256(_mm256_srli_epi16::<6>(b), mask);
            }
            if F == F_INT3 {
                // High bit of vector v is bit v of each plane byte; it
                // becomes bit 2 of the code.
                let h = ld(p, 64);
                let four = _mm256_set1_epi8(4);
                v[0] = _mm256_or_si256(v[0], _mm256_and_si256(_mm256_slli_epi16::<2>(h), four));
                v[1] = _mm256_or_si256(v[1], _mm256_and_si256(_mm256_slli_epi16::<1>(h), four));
                v[2] = _mm256_or_si256(v[2], _mm256_and_si256(h, four));
                v[3] = _mm256_or_si256(v[3], _mm256_and_si256(_mm256_srli_epi16::<1>(h), four));
                v[4] = _mm256_or_si256(v[4], _mm256_and_si256(_mm256_srli_epi16::<2>(h), four));
                v[5] = _mm256_or_si256(v[5], _mm256_and_si256(_mm256_srli_epi16::<3>(h), four));
                v[6] = _mm256_or_si256(v[6], _mm256_and_si256(_mm256_srli_epi16::<4>(h), four));
                v[7] = _mm256_or_si256(v[7], _mm256_and_si256(_mm256_srli_epi16::<5>(h), four));
            }
        }
        _ => {
            for (i, x) in v.iter_mut().enumerate() {
                *x = ld(p, 32 * i);
            }
        }
    }
    v
}

/// Products of one weight vector with one activation vector, as i16 pairs.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn mul_pairs<const F: u8>(w: __m256i, x: __m256i) -> __m256i {
    if F == F_BYTE {
        // Signed weights: |w| * (x with w's sign); |-128| = 128 fits u8.
        _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
    } else {
        _mm256_maddubs_epi16(w, x)
    }
}

/// Vectors summed in i16 before widening, split at the half block when H = 2.
const fn depth_eff(f: u8, h: usize) -> usize {
    let d = depth(f);
    if h == 2 && d > 4 {
        4
    } else {
        d
    }
}

/// i32 dot products of superblock codes `w` with activations `q`, per lane
/// (per half lane when H = 2).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn sb_dot<const F: u8, const H: usize>(w: &[__m256i; 8], q: *const i8) -> [__m256i; 2] {
    let ones = _mm256_set1_epi16(1);
    let d = depth_eff(F, H);
    let mut acc = [_mm256_setzero_si256(); 2];
    for j in 0..8 / d {
        let mut s16 = _mm256_setzero_si256();
        for t in 0..d {
            let v = j * d + t;
            let x = _mm256_loadu_si256(q.add(32 * v) as *const __m256i);
            s16 = _mm256_add_epi16(s16, mul_pairs::<F>(w[v], x));
        }
        let h = if H == 2 { (j * d) / 4 } else { 0 };
        acc[h] = _mm256_add_epi32(acc[h], _mm256_madd_epi16(s16, ones));
    }
    acc
}

/// 8 raw grid values starting at `off` (bounds: grids carry 8 padding values).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8(values: &GridValues, off: usize) -> __m256 {
    match values {
        GridValues::F32(v) => {
            debug_assert!(off + 8 <= v.len());
            _mm256_loadu_ps(v.as_ptr().add(off))
        }
        GridValues::F16(v) => {
            debug_assert!(off + 8 <= v.len());
            _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(off) as *const __m128i))
        }
        GridValues::E8M0(v) => {
            debug_assert!(off + 8 <= v.len());
            let e = _mm256_cvtepu8_epi32(_mm_loadl_epi64(v.as_ptr().add(off) as *const __m128i));
            _mm256_castsi256_ps(_mm256_slli_epi32::<23>(e))
        }
    }
}

/// Lane values of superblock `sb` (half `h`) of the grid row at `row_off`.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn lane_values(
    g: &LaneGrid,
    idx: __m256i,
    row_off: usize,
    sb: usize,
    h: usize,
) -> __m256 {
    let off = row_off + *g.base.get_unchecked(sb) as usize;
    if g.consecutive {
        // h is 0 unless the grid has halves (the second 8 values at +8).
        load8(&g.values, off + 8 * h)
    } else {
        _mm256_permutevar8x32_ps(load8(&g.values, off), idx)
    }
}

/// Sum of the 8 lanes (also used by the FP8 row kernels).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// Software prefetch distance of the decode kernel, in bytes of codes.
pub(super) const PREFETCH_BYTES: usize = 1024;

/// Decode path: each weight row streamed once, unpacked per superblock and
/// dotted with MR activation rows.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_block<const F: u8, const H: usize, const MR: usize>(
    w: &IntDotWeights,
    acts: &QuantActs,
    r: usize,
    m0: usize,
    out: &mut [f32],
) {
    let sbb = sb_bytes(F);
    let codes = w.row_codes(r).as_ptr();
    let s_idx = _mm256_loadu_si256(w.scales.idx.as_ptr() as *const __m256i);
    let s_off = w.scales.row_offset(r);
    let z_off = w.zeros.as_ref().map_or(0, |z| z.row_offset(r));
    let z_idx = w.zeros.as_ref().map_or(s_idx, |z| {
        _mm256_loadu_si256(z.idx.as_ptr() as *const __m256i)
    });
    let zf_const = _mm256_set1_ps(w.zf_const);
    let mut q = [std::ptr::null::<i8>(); MR];
    let mut dx = [std::ptr::null::<f32>(); MR];
    let mut xs = [std::ptr::null::<f32>(); MR];
    for i in 0..MR {
        q[i] = acts.row_q(m0 + i).as_ptr();
        dx[i] = acts.row_dx(m0 + i).as_ptr();
        xs[i] = if H == 2 {
            acts.row_xsum_half(m0 + i).as_ptr()
        } else {
            acts.row_xsum(m0 + i).as_ptr()
        };
    }
    let mut acc = [_mm256_setzero_ps(); MR];
    for sb in 0..w.n_sb {
        // The weights stream from DRAM once (m = 1): ask for the lines
        // PREFETCH_BYTES ahead, past the row end into the next row of the
        // task (a prefetch never faults, hence wrapping_add).
        for line in (0..sbb).step_by(64) {
            _mm_prefetch::<_MM_HINT_T0>(
                codes.wrapping_add(sb * sbb + line + PREFETCH_BYTES) as *const i8
            );
        }
        let wv = unpack::<F>(codes.add(sb * sbb));
        let mut s = [_mm256_setzero_ps(); H];
        let mut zf = [zf_const; H];
        for h in 0..H {
            s[h] = lane_values(&w.scales, s_idx, s_off, sb, h);
            if let Some(z) = &w.zeros {
                zf[h] = lane_values(z, z_idx, z_off, sb, h);
            }
        }
        for i in 0..MR {
            let dots = sb_dot::<F, H>(&wv, q[i].add(sb * SB));
            let dxv = _mm256_loadu_ps(dx[i].add(sb * LANES));
            for h in 0..H {
                let xsv = _mm256_loadu_ps(xs[i].add((sb * H + h) * LANES));
                let val = _mm256_fnmadd_ps(zf[h], xsv, _mm256_cvtepi32_ps(dots[h]));
                acc[i] = _mm256_fmadd_ps(val, _mm256_mul_ps(s[h], dxv), acc[i]);
            }
        }
    }
    for i in 0..MR {
        out[i] = hsum(acc[i]) * w.post_scale;
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn decode_rows_impl<const F: u8, const H: usize>(
    w: &IntDotWeights,
    acts: &QuantActs,
    rows: std::ops::Range<usize>,
    yt: &mut [f32],
) {
    let m = acts.m;
    for (ri, r) in rows.enumerate() {
        let out = &mut yt[ri * m..(ri + 1) * m];
        let mut m0 = 0;
        while m0 + 4 <= m {
            decode_block::<F, H, 4>(w, acts, r, m0, &mut out[m0..m0 + 4]);
            m0 += 4;
        }
        while m0 < m {
            decode_block::<F, H, 1>(w, acts, r, m0, &mut out[m0..m0 + 1]);
            m0 += 1;
        }
    }
}

/// Weight rows per register block of the batched kernel.
const BLOCK_WR: usize = 1;

/// Rows of one batched tile: unpacked codes and expanded scales.
struct Tile {
    /// (nt, n_sb * 256) interleaved codes.
    codes: Vec<u8>,
    /// (nt, n_sb * 16) scales at `sb*16 + 8*h + l`.
    s: Vec<f32>,
    /// (nt, n_sb * 16) zero offsets, same layout.
    zf: Vec<f32>,
}

/// One 32-byte step `v` of a superblock for the 2 x XR block: i16 partial
/// products added to `s16`, widened into `dots` at the end of each depth
/// group. Unrolled by hand (through `micro_step!`) so that every index is a
/// constant and the accumulators stay in registers.
macro_rules! micro_step {
    ($F:ident, $H:ident, $WR:ident, $XR:ident, $v:literal, $off:expr, $wc:ident, $xq:ident, $s16:ident, $dots:ident, $ones:ident) => {{
        let off = $off + 32 * $v;
        for a in 0..$WR {
            let w = ld($wc[a], off);
            for b in 0..$XR {
                let x = ld($xq[b] as *const u8, off);
                let i = a * $XR + b;
                $s16[i] = _mm256_add_epi16($s16[i], mul_pairs::<$F>(w, x));
            }
        }
        let d = depth_eff($F, $H);
        if ($v + 1) % d == 0 {
            let h = if $H == 2 { $v / 4 } else { 0 };
            for i in 0..$WR * $XR {
                $dots[h][i] = _mm256_add_epi32($dots[h][i], _mm256_madd_epi16($s16[i], $ones));
                $s16[i] = _mm256_setzero_si256();
            }
        }
    }};
}

/// Register block of 2 weight rows `wr` x XR activation rows `xr`, over
/// all of K. Result `[a * XR + b]`: weight row a, activation row b.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn micro<const F: u8, const H: usize, const WR: usize, const XR: usize>(
    tile: &Tile,
    acts: &QuantActs,
    n_sb: usize,
    wr: [usize; WR],
    xr: [usize; XR],
) -> [f32; 8] {
    let kp = n_sb * SB;
    let sw = n_sb * 2 * LANES;
    let mut wc = [std::ptr::null::<u8>(); WR];
    let mut ws = [std::ptr::null::<f32>(); WR];
    let mut wz = [std::ptr::null::<f32>(); WR];
    for a in 0..WR {
        wc[a] = tile.codes.as_ptr().add(wr[a] * kp);
        ws[a] = tile.s.as_ptr().add(wr[a] * sw);
        wz[a] = tile.zf.as_ptr().add(wr[a] * sw);
    }
    let mut xq = [std::ptr::null::<i8>(); XR];
    let mut xd = [std::ptr::null::<f32>(); XR];
    let mut xs = [std::ptr::null::<f32>(); XR];
    for b in 0..XR {
        xq[b] = acts.row_q(xr[b]).as_ptr();
        xd[b] = acts.row_dx(xr[b]).as_ptr();
        xs[b] = if H == 2 {
            acts.row_xsum_half(xr[b]).as_ptr()
        } else {
            acts.row_xsum(xr[b]).as_ptr()
        };
    }
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 8];
    for sb in 0..n_sb {
        let base = sb * SB;
        let mut dots = [[_mm256_setzero_si256(); 8]; 2];
        let mut s16 = [_mm256_setzero_si256(); 8];
        micro_step!(F, H, WR, XR, 0, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 1, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 2, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 3, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 4, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 5, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 6, base, wc, xq, s16, dots, ones);
        micro_step!(F, H, WR, XR, 7, base, wc, xq, s16, dots, ones);
        for (h, dots_h) in dots.iter().enumerate().take(H) {
            let so = sb * 2 * LANES + h * LANES;
            let xo = (sb * H + h) * LANES;
            for b in 0..XR {
                let dxv = _mm256_loadu_ps(xd[b].add(sb * LANES));
                let xsv = _mm256_loadu_ps(xs[b].add(xo));
                for a in 0..WR {
                    let sv = _mm256_loadu_ps(ws[a].add(so));
                    let zv = _mm256_loadu_ps(wz[a].add(so));
                    let i = a * XR + b;
                    let val = _mm256_fnmadd_ps(zv, xsv, _mm256_cvtepi32_ps(dots_h[i]));
                    acc[i] = _mm256_fmadd_ps(val, _mm256_mul_ps(sv, dxv), acc[i]);
                }
            }
        }
    }
    let mut out = [0f32; 8];
    for i in 0..WR * XR {
        out[i] = hsum(acc[i]);
    }
    out
}

/// Runs the 2 x XR block at (n0, m0) and stores the in-range results.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn micro_store<const F: u8, const H: usize, const WR: usize, const XR: usize>(
    w: &IntDotWeights,
    tile: &Tile,
    acts: &QuantActs,
    nt: usize,
    n0: usize,
    m0: usize,
    yt: &mut [f32],
) {
    let m = acts.m;
    let mut wr = [0usize; WR];
    for (a, r) in wr.iter_mut().enumerate() {
        *r = (n0 + a).min(nt - 1);
    }
    let mut xr = [0usize; XR];
    for (b, r) in xr.iter_mut().enumerate() {
        *r = (m0 + b).min(m - 1);
    }
    let out = micro::<F, H, WR, XR>(tile, acts, w.n_sb, wr, xr);
    for a in 0..WR {
        for b in 0..XR {
            if n0 + a < nt && m0 + b < m {
                yt[(n0 + a) * m + m0 + b] = out[a * XR + b] * w.post_scale;
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn batched_rows_impl<const F: u8, const H: usize>(
    w: &IntDotWeights,
    acts: &QuantActs,
    rows: std::ops::Range<usize>,
    yt: &mut [f32],
) {
    let (m, n_sb, nt) = (acts.m, w.n_sb, rows.len());
    if nt == 0 || m == 0 {
        return;
    }
    let sbb = sb_bytes(F);
    let sw = n_sb * 2 * LANES;
    let mut tile = Tile {
        codes: vec![0u8; nt * n_sb * SB],
        s: vec![0f32; nt * sw],
        zf: vec![0f32; nt * sw],
    };
    for (ri, r) in rows.clone().enumerate() {
        let codes = w.row_codes(r).as_ptr();
        let dst = tile.codes.as_mut_ptr().add(ri * n_sb * SB);
        for sb in 0..n_sb {
            let v = unpack::<F>(codes.add(sb * sbb));
            for (i, x) in v.iter().enumerate() {
                _mm256_storeu_si256(dst.add(sb * SB + 32 * i) as *mut __m256i, *x);
            }
        }
        w.expand_row(
            r,
            &mut tile.s[ri * sw..(ri + 1) * sw],
            &mut tile.zf[ri * sw..(ri + 1) * sw],
        );
    }
    // Blocks of BLOCK_WR weight rows x 4 (or 2) activation rows; tails
    // reuse the last row and drop its duplicate results. (1 x 4 measured
    // faster than 2 x 2, 2 x 4 and 1 x 8 on Zen 1: one weight vector in a
    // register, activations as memory operands, no spills.)
    let mut m0 = 0;
    while m0 < m {
        let four = m - m0 > 2;
        for n0 in (0..nt).step_by(BLOCK_WR) {
            if four {
                micro_store::<F, H, BLOCK_WR, 4>(w, &tile, acts, nt, n0, m0, yt);
            } else {
                micro_store::<F, H, BLOCK_WR, 2>(w, &tile, acts, nt, n0, m0, yt);
            }
        }
        m0 += if four { 4 } else { 2 };
    }
}

/// Kernel entry: rows of W against all activation rows, into `yt` (rows, m).
pub(crate) type RowsKernel = fn(&IntDotWeights, &QuantActs, std::ops::Range<usize>, &mut [f32]);

macro_rules! safe_entry {
    ($name:ident, $imp:ident, $f:expr, $h:expr) => {
        fn $name(w: &IntDotWeights, a: &QuantActs, r: std::ops::Range<usize>, yt: &mut [f32]) {
            // SAFETY: these entries are only handed out by `kernels` below,
            // which requires AVX2, FMA and F16C to be detected. Buffer
            // bounds: `QuantActs` and `IntDotWeights` size every row to
            // whole superblocks, grids carry 8 values of padding.
            unsafe { $imp::<{ $f }, { $h }>(w, a, r, yt) }
        }
    };
}

safe_entry!(dec_nib1, decode_rows_impl, F_NIBBLE, 1);
safe_entry!(dec_nib2, decode_rows_impl, F_NIBBLE, 2);
safe_entry!(dec_fp41, decode_rows_impl, F_FP4, 1);
safe_entry!(dec_fp42, decode_rows_impl, F_FP4, 2);
safe_entry!(dec_cr1, decode_rows_impl, F_CRUMB, 1);
safe_entry!(dec_cr2, decode_rows_impl, F_CRUMB, 2);
safe_entry!(dec_i31, decode_rows_impl, F_INT3, 1);
safe_entry!(dec_i32, decode_rows_impl, F_INT3, 2);
safe_entry!(dec_by1, decode_rows_impl, F_BYTE, 1);
safe_entry!(dec_by2, decode_rows_impl, F_BYTE, 2);
safe_entry!(bat_nib1, batched_rows_impl, F_NIBBLE, 1);
safe_entry!(bat_nib2, batched_rows_impl, F_NIBBLE, 2);
safe_entry!(bat_fp41, batched_rows_impl, F_FP4, 1);
safe_entry!(bat_fp42, batched_rows_impl, F_FP4, 2);
safe_entry!(bat_cr1, batched_rows_impl, F_CRUMB, 1);
safe_entry!(bat_cr2, batched_rows_impl, F_CRUMB, 2);
safe_entry!(bat_i31, batched_rows_impl, F_INT3, 1);
safe_entry!(bat_i32, batched_rows_impl, F_INT3, 2);
safe_entry!(bat_by1, batched_rows_impl, F_BYTE, 1);
safe_entry!(bat_by2, batched_rows_impl, F_BYTE, 2);

/// (decode, batched) kernels for a format; `None` without AVX2+FMA+F16C.
pub(crate) fn kernels(fmt: u8, halves: bool) -> Option<(RowsKernel, RowsKernel)> {
    if !(is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c"))
    {
        return None;
    }
    let k: (RowsKernel, RowsKernel) = match (fmt, halves) {
        (F_NIBBLE, false) => (dec_nib1, bat_nib1),
        (F_NIBBLE, true) => (dec_nib2, bat_nib2),
        (F_FP4, false) => (dec_fp41, bat_fp41),
        (F_FP4, true) => (dec_fp42, bat_fp42),
        (F_CRUMB, false) => (dec_cr1, bat_cr1),
        (F_CRUMB, true) => (dec_cr2, bat_cr2),
        (F_INT3, false) => (dec_i31, bat_i31),
        (F_INT3, true) => (dec_i32, bat_i32),
        (_, false) => (dec_by1, bat_by1),
        (_, true) => (dec_by2, bat_by2),
    };
    Some(k)
}
