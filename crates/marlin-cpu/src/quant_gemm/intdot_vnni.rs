//! AVX-512 VNNI kernels for [`IntDotWeights`]: `vpdpbusd` (u8 x i8, four
//! products summed into each i32 lane, no i16 stage) on 64-byte registers.
//!
//! The integer dot of every (weight row, activation row, superblock, lane)
//! is exact, so it is the same i32 as the AVX2 kernels' `maddubs` chain;
//! the f32 work after it (`val = zf * xs - dot` as `fnmadd`, `acc =
//! fma(val, s * dx, acc)` per superblock, one `hsum` of 8 lanes at the end)
//! is the AVX2 kernels' operation for operation, lane for lane. Outputs are
//! therefore bitwise those of the AVX2 kernels, for every M: batch
//! invariance carries over, and the tests compare the two bit for bit.
//!
//! - **Decode** (m < 8): each weight row streamed once; a superblock's codes
//!   unpack into four 64-byte registers, each holding two of its eight
//!   32-byte vectors; the activations were reordered once per call
//!   ([`QuantActs::reorder_vectors`], [`decode_vector_order`]) so that one
//!   64-byte load matches each register. Lane `l` of both halves belongs to
//!   block `l`: the two halves are added in i32 (exact) before the f32
//!   epilogue, which runs on 8 lanes as in the AVX2 kernel.
//! - **Batched** (m >= 8): a tile of up to 16 weight rows is unpacked once,
//!   two rows per register (row `2p` in the low half, `2p + 1` in the high
//!   half of every 64-byte vector), activations are broadcast to both
//!   halves, so every lane of the f32 epilogue is one (weight row,
//!   activation row, block) triple, computed as the AVX2 kernel does.
//!   Register blocks of 2 row pairs x 4 activation rows run over chunks of
//!   [`KC`] superblocks, the f32 accumulators kept in a small buffer between
//!   chunks, so that the chunk's weights (16 KiB) and activations stay in L1.
//!
//! `Byte` codes (INT5-8) are signed; `vpdpbusd` wants unsigned weights, so
//! they are used as `w + 128` (`w ^ 0x80`) and `128 * Σ q` (exact, from the
//! integer block sums) is taken off the i32 dot.
//!
//! Every function here requires AVX2, FMA, F16C, AVX-512 F, BW and VNNI;
//! [`kernels`] checks them before handing any out.

use super::actq::{QuantActs, LANES, SB};
use super::intdot::{sb_bytes, IntDotWeights, FP4_LUT, F_BYTE, F_CRUMB, F_FP4, F_INT3, F_NIBBLE};
use super::intdot_avx2::{hsum, lane_values, unpack};
use std::arch::x86_64::*;

/// Order of the activation vectors per superblock for the decode kernel:
/// register `j` of [`unpack_z`] holds weight vectors `order[2j]` (low half)
/// and `order[2j + 1]` (high half).
pub(crate) const fn decode_vector_order(fmt: u8) -> [usize; 8] {
    match fmt {
        // 64 bytes = two nibble vectors c, c + 1: low nibbles are vectors
        // 2c and 2c + 2, high nibbles 2c + 1 and 2c + 3.
        F_NIBBLE | F_FP4 => [0, 2, 1, 3, 4, 6, 5, 7],
        // 64 bytes = crumb vectors 0 and 1: crumb j is vector j (low half)
        // and vector 4 + j (high half).
        F_CRUMB | F_INT3 => [0, 4, 1, 5, 2, 6, 3, 7],
        _ => [0, 1, 2, 3, 4, 5, 6, 7],
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn ldz(p: *const u8, off: usize) -> __m512i {
    _mm512_loadu_si512(p.add(off) as *const __m512i)
}

/// 8 floats at `p` in both halves of a 64-byte register.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn bcast8(p: *const f32) -> __m512 {
    _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(p as *const f64)))
}

/// 32 bytes at `p` in both halves of a 64-byte register.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn bcast32(p: *const u8) -> __m512i {
    _mm512_broadcast_i64x4(_mm256_loadu_si256(p as *const __m256i))
}

/// Unpacks superblock `p` into four registers in [`decode_vector_order`].
/// `Byte` codes come out as `w ^ 0x80` (unsigned).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn unpack_z<const F: u8>(p: *const u8) -> [__m512i; 4] {
    match F {
        F_NIBBLE | F_FP4 => {
            let mask = _mm512_set1_epi8(0x0F);
            let lut = _mm512_broadcast_i32x4(_mm_loadu_si128(FP4_LUT.as_ptr() as *const __m128i));
            let mut v = [_mm512_setzero_si512(); 4];
            for c in 0..2 {
                let b = ldz(p, 64 * c);
                let lo = _mm512_and_si512(b, mask);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(b), mask);
                if F == F_FP4 {
                    v[2 * c] = _mm512_shuffle_epi8(lut, lo);
                    v[2 * c + 1] = _mm512_shuffle_epi8(lut, hi);
                } else {
                    v[2 * c] = lo;
                    v[2 * c + 1] = hi;
                }
            }
            v
        }
        F_CRUMB | F_INT3 => {
            let mask = _mm512_set1_epi8(3);
            let b = ldz(p, 0);
            let mut v = [
                _mm512_and_si512(b, mask),
                _mm512_and_si512(_mm512_srli_epi16::<2>(b), mask),
                _mm512_and_si512(_mm512_srli_epi16::<4>(b), mask),
                _mm512_and_si512(_mm512_srli_epi16::<6>(b), mask),
            ];
            if F == F_INT3 {
                // High bit of vector v is bit v of each plane byte. Register
                // j holds vectors j (low half) and 4 + j (high half): shift
                // the high half of the plane down by 4, then bit j of every
                // byte becomes bit 2 of register j's codes.
                let h = bcast32(p.add(64));
                let h = _mm512_mask_srli_epi16::<4>(h, 0xFFFF_0000, h);
                let four = _mm512_set1_epi8(4);
                v[0] = _mm512_or_si512(v[0], _mm512_and_si512(_mm512_slli_epi16::<2>(h), four));
                v[1] = _mm512_or_si512(v[1], _mm512_and_si512(_mm512_slli_epi16::<1>(h), four));
                v[2] = _mm512_or_si512(v[2], _mm512_and_si512(h, four));
                v[3] = _mm512_or_si512(v[3], _mm512_and_si512(_mm512_srli_epi16::<1>(h), four));
            }
            v
        }
        _ => {
            let flip = _mm512_set1_epi8(-128);
            [
                _mm512_xor_si512(ldz(p, 0), flip),
                _mm512_xor_si512(ldz(p, 64), flip),
                _mm512_xor_si512(ldz(p, 128), flip),
                _mm512_xor_si512(ldz(p, 192), flip),
            ]
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn halves_sum(v: __m512i) -> __m256i {
    _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v))
}

/// i32 block dots (per half block when H = 2) of the unpacked superblock
/// `w` with the reordered activations `q` of that superblock.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
#[inline]
unsafe fn sb_dot_z<const F: u8, const H: usize>(w: &[__m512i; 4], q: *const i8) -> [__m256i; 2] {
    let q = q as *const u8;
    let z = _mm512_setzero_si512();
    let a0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, w[0], ldz(q, 0)), w[1], ldz(q, 64));
    let a1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(z, w[2], ldz(q, 128)), w[3], ldz(q, 192));
    if H == 1 {
        return [halves_sum(_mm512_add_epi32(a0, a1)), _mm256_setzero_si256()];
    }
    match F {
        // Registers 0-1 hold vectors 0-3 (half block 0), 2-3 vectors 4-7.
        F_NIBBLE | F_FP4 | F_BYTE => [halves_sum(a0), halves_sum(a1)],
        // Low halves hold vectors 0-3, high halves 4-7.
        _ => {
            let a = _mm512_add_epi32(a0, a1);
            [_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64::<1>(a)]
        }
    }
}

/// Software prefetch distance of the decode kernel, in bytes of codes
/// (the AVX2 kernel's 1 KiB is ~25 ns ahead at this kernel's speed).
/// Measured, M = 1 `%copy` of the benchmark averaged over INT4 / MXFP4 x
/// N = 4096 / 14336 x 3 runs, binaries alternated, load 11-13: 1 KiB 59%,
/// 2 KiB 59%, 4 KiB 72%; then 4 KiB 82% vs 8 KiB 86% (weights partly in
/// the 504 MiB L3 then). Session 4, weights from DRAM (rotated through 4x
/// the LLC), INT4 g128 4096 x 4096, median over 160 calls of kernel GB/s
/// over a same-bytes copy just before it, variants alternated, load 20:
/// `prefetcht0` 76-77% at 4 / 8 / 16 KiB, `prefetcht1` (into L2, no L1
/// fill buffer held for the whole DRAM latency) 82-90% at 4-32 KiB (2 KiB:
/// 70%), `prefetcht2` 84-88%, `prefetchnta` 51%, none 55%; prefetching the
/// first 8 KiB of each task up front: no change.
const PREFETCH_BYTES: usize = 8192;

/// Decode path: weight row `r` against MR activation rows from `m0`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn decode_block<const F: u8, const H: usize, const MR: usize>(
    w: &IntDotWeights,
    acts: &QuantActs,
    r: usize,
    m0: usize,
    out: &mut [f32],
) {
    let sbb = sb_bytes(F);
    let kp = acts.n_sb * SB;
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
        q[i] = acts.q_reordered.as_ptr().add((m0 + i) * kp);
        dx[i] = acts.row_dx(m0 + i).as_ptr();
        xs[i] = if H == 2 {
            acts.row_xsum_half(m0 + i).as_ptr()
        } else {
            acts.row_xsum(m0 + i).as_ptr()
        };
    }
    let mut acc = [_mm256_setzero_ps(); MR];
    for sb in 0..w.n_sb {
        // The lines PREFETCH_BYTES ahead, into L2 (see PREFETCH_BYTES; a
        // prefetch never faults, hence wrapping_add).
        for line in (0..sbb).step_by(64) {
            _mm_prefetch::<_MM_HINT_T1>(
                codes.wrapping_add(sb * sbb + line + PREFETCH_BYTES) as *const i8
            );
        }
        let wv = unpack_z::<F>(codes.add(sb * sbb));
        let mut s = [_mm256_setzero_ps(); H];
        let mut zf = [zf_const; H];
        for h in 0..H {
            s[h] = lane_values(&w.scales, s_idx, s_off, sb, h);
            if let Some(z) = &w.zeros {
                zf[h] = lane_values(z, z_idx, z_off, sb, h);
            }
        }
        for i in 0..MR {
            let mut dots = sb_dot_z::<F, H>(&wv, q[i].add(sb * SB));
            let dxv = _mm256_loadu_ps(dx[i].add(sb * LANES));
            for h in 0..H {
                let xsv = _mm256_loadu_ps(xs[i].add((sb * H + h) * LANES));
                if F == F_BYTE {
                    // The codes were w + 128: take 128 * Σ q off (exact).
                    let corr = _mm256_slli_epi32::<7>(_mm256_cvtps_epi32(xsv));
                    dots[h] = _mm256_sub_epi32(dots[h], corr);
                }
                let val = _mm256_fnmadd_ps(zf[h], xsv, _mm256_cvtepi32_ps(dots[h]));
                acc[i] = _mm256_fmadd_ps(val, _mm256_mul_ps(s[h], dxv), acc[i]);
            }
        }
    }
    for i in 0..MR {
        out[i] = hsum(acc[i]) * w.post_scale;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
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

/// Superblocks per K chunk of the batched kernel: 16 weight rows x 8 x 256
/// bytes = 32 KiB of unpacked codes, plus 4 activation rows x 2 KiB, in L1
/// (48 KiB per core on the development machine). Measured (CPU time, one
/// thread, M = 128, K = 4096, N = 2048, INT4 / MXFP4 ms per call): KC = 2
/// 9.2-9.6, 4 8.7-9.6, 8 7.9-8.7.
const KC: usize = 8;
/// Activation rows per register block (2 pairs x 4 rows: 8 dot and 8 f32
/// accumulators, 16 and 8 with half blocks; 6 rows measured slower).
const XR: usize = 4;
/// Weight-row pairs per register block.
const WP: usize = 2;

/// Weight rows of a batched task, two per 64-byte vector.
struct PairTile {
    n_sb: usize,
    /// (pairs, n_sb, 8, 64): vector v of row 2p in bytes 0-31, of row
    /// 2p + 1 in bytes 32-63 (`Byte` codes as `w ^ 0x80`).
    codes: Vec<u8>,
    /// (pairs, n_sb, 2, 16): scales of half h, row 2p lanes then row 2p + 1.
    s: Vec<f32>,
    /// Zero offsets, same layout.
    zf: Vec<f32>,
}

/// One 32-byte step `v` of a superblock for the WP x XB block (a macro so
/// that every index is a constant and the accumulators stay in registers).
macro_rules! pair_step {
    ($F:ident, $H:ident, $WB:ident, $XB:ident, $v:literal, $wc:ident, $xq:ident, $dots:ident) => {{
        let h = if $H == 2 { $v / 4 } else { 0 };
        let mut wv = [_mm512_setzero_si512(); $WB];
        for a in 0..$WB {
            wv[a] = ldz($wc[a], 64 * $v);
        }
        for b in 0..$XB {
            let x = bcast32($xq[b].add(32 * $v));
            for a in 0..$WB {
                $dots[h][a][b] = _mm512_dpbusd_epi32($dots[h][a][b], wv[a], x);
            }
        }
    }};
}

/// Register block of WB row pairs from `p0` x XB activation rows `xr`, over
/// superblocks `sbs`; f32 accumulators in `acc` at `(pair, row) * 16`
/// (not read when `sbs` starts at 0: the block starts from zero).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
// Register arrays indexed by constant loop counters (unrolled).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn pair_block<const F: u8, const H: usize, const WB: usize, const XB: usize>(
    tile: &PairTile,
    acts: &QuantActs,
    p0: usize,
    xr: [usize; XB],
    sbs: std::ops::Range<usize>,
    acc: *mut f32,
    m: usize,
) {
    let n_sb = tile.n_sb;
    let mut accv = [[_mm512_setzero_ps(); XB]; WB];
    if sbs.start > 0 {
        for a in 0..WB {
            for b in 0..XB {
                accv[a][b] = _mm512_loadu_ps(acc.add(((p0 + a) * m + xr[b]) * 16));
            }
        }
    }
    let mut xq = [std::ptr::null::<u8>(); XB];
    let mut xd = [std::ptr::null::<f32>(); XB];
    let mut xs = [std::ptr::null::<f32>(); XB];
    for b in 0..XB {
        xq[b] = acts.row_q(xr[b]).as_ptr() as *const u8;
        xd[b] = acts.row_dx(xr[b]).as_ptr();
        xs[b] = if H == 2 {
            acts.row_xsum_half(xr[b]).as_ptr()
        } else {
            acts.row_xsum(xr[b]).as_ptr()
        };
    }
    for sb in sbs {
        let mut wc = [std::ptr::null::<u8>(); WB];
        for (a, p) in wc.iter_mut().enumerate() {
            *p = tile.codes.as_ptr().add(((p0 + a) * n_sb + sb) * 512);
        }
        let mut xqs = [std::ptr::null::<u8>(); XB];
        for b in 0..XB {
            xqs[b] = xq[b].add(sb * SB);
        }
        let mut dots = [[[_mm512_setzero_si512(); XB]; WB]; H];
        pair_step!(F, H, WB, XB, 0, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 1, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 2, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 3, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 4, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 5, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 6, wc, xqs, dots);
        pair_step!(F, H, WB, XB, 7, wc, xqs, dots);
        for (h, dots_h) in dots.iter().enumerate() {
            for b in 0..XB {
                let dxv = bcast8(xd[b].add(sb * LANES));
                let xsv = bcast8(xs[b].add((sb * H + h) * LANES));
                let corr = if F == F_BYTE {
                    _mm512_slli_epi32::<7>(_mm512_cvtps_epi32(xsv))
                } else {
                    _mm512_setzero_si512()
                };
                for a in 0..WB {
                    let so = (((p0 + a) * n_sb + sb) * 2 + h) * 16;
                    let sv = _mm512_loadu_ps(tile.s.as_ptr().add(so));
                    let zv = _mm512_loadu_ps(tile.zf.as_ptr().add(so));
                    let d = if F == F_BYTE {
                        _mm512_sub_epi32(dots_h[a][b], corr)
                    } else {
                        dots_h[a][b]
                    };
                    let val = _mm512_fnmadd_ps(zv, xsv, _mm512_cvtepi32_ps(d));
                    accv[a][b] = _mm512_fmadd_ps(val, _mm512_mul_ps(sv, dxv), accv[a][b]);
                }
            }
        }
    }
    for a in 0..WB {
        for b in 0..XB {
            _mm512_storeu_ps(acc.add(((p0 + a) * m + xr[b]) * 16), accv[a][b]);
        }
    }
}

/// Runs the blocks over all pairs for activation rows `xr`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn pairs_for_rows<const F: u8, const H: usize, const XB: usize>(
    tile: &PairTile,
    acts: &QuantActs,
    np: usize,
    xr: [usize; XB],
    sbs: std::ops::Range<usize>,
    acc: *mut f32,
) {
    let m = acts.m;
    let mut p0 = 0;
    while p0 + WP <= np {
        pair_block::<F, H, WP, XB>(tile, acts, p0, xr, sbs.clone(), acc, m);
        p0 += WP;
    }
    while p0 < np {
        pair_block::<F, H, 1, XB>(tile, acts, p0, xr, sbs.clone(), acc, m);
        p0 += 1;
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
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
    let np = nt.div_ceil(2);
    let sbb = sb_bytes(F);
    TILE.with(|cell| {
        let mut tile = cell.borrow_mut();
        tile.n_sb = n_sb;
        // Every element below is written before it is read.
        tile.codes.resize(np * n_sb * 512, 0);
        tile.s.resize(np * n_sb * 32, 0.0);
        tile.zf.resize(np * n_sb * 32, 0.0);
        fill_pair_tile::<F>(w, &mut tile, rows.start, nt, sbb);
        run_pair_tile::<F, H>(w, &tile, acts, nt, yt);
    });
}

thread_local! {
    /// Each pool thread's accumulators, reused like its tile.
    static ACC: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each pool thread's tile, reused from task to task (no allocation,
    /// zeroing or page faults per task).
    static TILE: std::cell::RefCell<PairTile> = const {
        std::cell::RefCell::new(PairTile {
            n_sb: 0,
            codes: Vec::new(),
            s: Vec::new(),
            zf: Vec::new(),
        })
    };
}

/// Unpacks rows `r0..r0 + nt` into `tile` (an odd count repeats its last
/// row; those results are dropped); scales and zero offsets by the decode
/// kernel's own lane loads.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn fill_pair_tile<const F: u8>(
    w: &IntDotWeights,
    tile: &mut PairTile,
    r0: usize,
    nt: usize,
    sbb: usize,
) {
    let n_sb = tile.n_sb;
    let np = nt.div_ceil(2);
    let flip = _mm256_set1_epi8(-128);
    let s_idx = _mm256_loadu_si256(w.scales.idx.as_ptr() as *const __m256i);
    let z_idx = w.zeros.as_ref().map_or(s_idx, |z| {
        _mm256_loadu_si256(z.idx.as_ptr() as *const __m256i)
    });
    let zf_const = _mm256_set1_ps(w.zf_const);
    for ri in 0..2 * np {
        let r = r0 + ri.min(nt - 1);
        let (p, half) = (ri / 2, ri % 2);
        let codes = w.row_codes(r).as_ptr();
        let s_off = w.scales.row_offset(r);
        let z_off = w.zeros.as_ref().map_or(0, |z| z.row_offset(r));
        for sb in 0..n_sb {
            let v = unpack::<F>(codes.add(sb * sbb));
            let dst = tile
                .codes
                .as_mut_ptr()
                .add((p * n_sb + sb) * 512 + 32 * half);
            for (i, x) in v.iter().enumerate() {
                let x = if F == F_BYTE {
                    _mm256_xor_si256(*x, flip)
                } else {
                    *x
                };
                _mm256_storeu_si256(dst.add(64 * i) as *mut __m256i, x);
            }
            for h in 0..1 + usize::from(w.scales.halves) {
                let o = ((p * n_sb + sb) * 2 + h) * 16 + 8 * half;
                let sv = lane_values(&w.scales, s_idx, s_off, sb, h);
                let zv = match &w.zeros {
                    Some(z) => lane_values(z, z_idx, z_off, sb, h),
                    None => zf_const,
                };
                _mm256_storeu_ps(tile.s.as_mut_ptr().add(o), sv);
                _mm256_storeu_ps(tile.zf.as_mut_ptr().add(o), zv);
            }
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn run_pair_tile<const F: u8, const H: usize>(
    w: &IntDotWeights,
    tile: &PairTile,
    acts: &QuantActs,
    nt: usize,
    yt: &mut [f32],
) {
    let np = nt.div_ceil(2);
    let m = acts.m;
    // (pairs, m, 16) f32 accumulators, carried between K chunks; every
    // value is written by the first chunk before it is read.
    ACC.with(|cell| {
        let mut acc = cell.borrow_mut();
        acc.resize(np * m * 16, 0.0);
        run_chunks::<F, H>(w, tile, acts, nt, &mut acc, yt);
    });
}

/// The K chunks of a tile, then the outputs (see `batched_rows_impl`).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma,f16c")]
unsafe fn run_chunks<const F: u8, const H: usize>(
    w: &IntDotWeights,
    tile: &PairTile,
    acts: &QuantActs,
    nt: usize,
    acc: &mut [f32],
    yt: &mut [f32],
) {
    let (m, n_sb) = (acts.m, tile.n_sb);
    let np = nt.div_ceil(2);
    let accp = acc.as_mut_ptr();
    let mut c0 = 0;
    while c0 < n_sb {
        let sbs = c0..(c0 + KC).min(n_sb);
        let mut m0 = 0;
        while m0 + XR <= m {
            let xr: [usize; XR] = std::array::from_fn(|b| m0 + b);
            pairs_for_rows::<F, H, XR>(tile, acts, np, xr, sbs.clone(), accp);
            m0 += XR;
        }
        while m0 < m {
            pairs_for_rows::<F, H, 1>(tile, acts, np, [m0], sbs.clone(), accp);
            m0 += 1;
        }
        c0 += KC;
    }
    for p in 0..np {
        for b in 0..m {
            let v = _mm512_loadu_ps(acc.as_ptr().add((p * m + b) * 16));
            yt[2 * p * m + b] = hsum(_mm512_castps512_ps256(v)) * w.post_scale;
            if 2 * p + 1 < nt {
                let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
                yt[(2 * p + 1) * m + b] = hsum(hi) * w.post_scale;
            }
        }
    }
}

/// Kernel entry: rows of W against all activation rows, into `yt` (rows, m).
pub(crate) type RowsKernel = fn(&IntDotWeights, &QuantActs, std::ops::Range<usize>, &mut [f32]);

macro_rules! safe_entry {
    ($name:ident, $imp:ident, $f:expr, $h:expr) => {
        fn $name(w: &IntDotWeights, a: &QuantActs, r: std::ops::Range<usize>, yt: &mut [f32]) {
            // SAFETY: these entries are only handed out by `kernels` below,
            // which requires AVX2, FMA, F16C and AVX-512 F/BW/VNNI. Buffer
            // bounds: `QuantActs` and `IntDotWeights` size every row to
            // whole superblocks, grids carry 8 values of padding.
            unsafe { $imp::<{ $f }, { $h }>(w, a, r, yt) }
        }
    };
}

/// As `safe_entry`, for the decode kernels, which read `q_reordered`.
macro_rules! decode_entry {
    ($name:ident, $f:expr, $h:expr) => {
        fn $name(w: &IntDotWeights, a: &QuantActs, r: std::ops::Range<usize>, yt: &mut [f32]) {
            // An internal invariant (`PreparedQuant::matmul` reorders before
            // any decode call), checked because the kernel reads the buffer
            // through raw pointers.
            assert_eq!(a.q_reordered.len(), a.q.len(), "activations not reordered");
            // SAFETY: as in `safe_entry`; `q_reordered` has the size of `q`.
            unsafe { decode_rows_impl::<{ $f }, { $h }>(w, a, r, yt) }
        }
    };
}

decode_entry!(dec_nib1, F_NIBBLE, 1);
decode_entry!(dec_nib2, F_NIBBLE, 2);
decode_entry!(dec_fp41, F_FP4, 1);
decode_entry!(dec_fp42, F_FP4, 2);
decode_entry!(dec_cr1, F_CRUMB, 1);
decode_entry!(dec_cr2, F_CRUMB, 2);
decode_entry!(dec_i31, F_INT3, 1);
decode_entry!(dec_i32, F_INT3, 2);
decode_entry!(dec_by1, F_BYTE, 1);
decode_entry!(dec_by2, F_BYTE, 2);
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

/// Whether this CPU runs the kernels of this module.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// (decode, batched) kernels for a format; `None` without the features.
/// The decode kernel needs `QuantActs::reorder_vectors(decode_vector_order(fmt))`.
pub(crate) fn kernels(fmt: u8, halves: bool) -> Option<(RowsKernel, RowsKernel)> {
    if !available() {
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
