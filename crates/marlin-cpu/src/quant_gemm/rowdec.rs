//! f32 paths: FP8 weights (decoded 16 at a time through F16C), and the
//! generic path for every other scheme (NF4, irregular act-order, FP8 with
//! zero points...): dequantize rows to f32, then dot. Both compute every
//! output element with one reduction order whatever M is (batch invariance,
//! see `docs/CPU_KERNELS.md`), so neither hands large M to sgemm.

use super::codes::{decode_e4m3, decode_e5m2, CheckedTensor, ScaleGrid};
use marlin_quant::{ElementType, QuantTensor, ZeroPoint};

/// FP8 codes, rows padded to whole 16-column steps with +0 codes.
#[derive(Clone)]
pub(crate) struct Fp8Weights {
    pub n: usize,
    pub k: usize,
    /// Row stride of `codes` (K rounded up to 16).
    pub kp: usize,
    pub e5m2: bool,
    /// (N, kp) raw FP8 codes.
    pub codes: Vec<u8>,
    /// Columns per scale entry (a multiple of 16; `kp` for per-channel).
    pub block: usize,
    pub blocks_per_row: usize,
    pub rows_per: usize,
    /// (grid rows, blocks_per_row) scales times the global scale.
    pub scales: Vec<f32>,
    /// Value of every code (for the scalar path).
    pub lut: Vec<f32>,
}

impl Fp8Weights {
    pub fn new(ct: &CheckedTensor) -> Option<Self> {
        let t = ct.t;
        let e5m2 = match t.scheme.element {
            ElementType::Fp8E4M3 => false,
            ElementType::Fp8E5M2 => true,
            _ => return None,
        };
        if t.scheme.zero_point != ZeroPoint::None || t.g_idx.is_some() {
            return None;
        }
        let (n, k) = (t.rows, t.cols);
        let kp = k.div_ceil(16) * 16;
        let grid: &ScaleGrid = &ct.grid;
        let block = if grid.grid_cols == 1 {
            kp.max(16)
        } else if grid.cols_per.is_multiple_of(16) {
            grid.cols_per
        } else {
            return None;
        };
        let mut codes = vec![0u8; n * kp];
        for r in 0..n {
            codes[r * kp..r * kp + k].copy_from_slice(ct.row(r));
        }
        Some(Fp8Weights {
            n,
            k,
            kp,
            e5m2,
            codes,
            block,
            blocks_per_row: grid.grid_cols,
            rows_per: grid.rows_per,
            scales: t.scales.iter().map(|s| s * t.global_scale).collect(),
            lut: (0..=255u8)
                .map(|c| if e5m2 { decode_e5m2(c) } else { decode_e4m3(c) })
                .collect(),
        })
    }

    pub fn stream_bytes(&self) -> usize {
        self.codes.len() + self.scales.len() * 4
    }

    pub fn row_scales(&self, r: usize) -> &[f32] {
        let g = r / self.rows_per;
        &self.scales[g * self.blocks_per_row..(g + 1) * self.blocks_per_row]
    }

    /// Row `r` dequantized to f32 (K values).
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        let s = self.row_scales(r);
        let codes = &self.codes[r * self.kp..r * self.kp + self.k];
        for ((o, cs), &s) in out
            .chunks_mut(self.block)
            .zip(codes.chunks(self.block))
            .zip(s)
        {
            for (o, &code) in o.iter_mut().zip(cs) {
                *o = s * self.lut[usize::from(code)];
            }
        }
    }
}

/// The generic path: the checked tensor kept as is.
#[derive(Clone)]
pub(crate) struct GenericWeights {
    pub t: QuantTensor,
    pub bits: u32,
    pub row_bytes: usize,
    pub grid: ScaleGrid,
}

impl GenericWeights {
    pub fn new(ct: &CheckedTensor) -> Self {
        GenericWeights {
            t: ct.t.clone(),
            bits: ct.bits,
            row_bytes: ct.row_bytes,
            grid: ct.grid.clone(),
        }
    }

    pub fn checked(&self) -> CheckedTensor<'_> {
        CheckedTensor {
            t: &self.t,
            bits: self.bits,
            row_bytes: self.row_bytes,
            grid: self.grid.clone(),
        }
    }

    pub fn stream_bytes(&self) -> usize {
        self.t.data.len()
            + self.t.scales.len() * 4
            + self.t.zeros.as_ref().map_or(0, |z| z.len() * 4)
    }
}

/// Something that dequantizes weight rows to f32.
pub(crate) trait RowDecoder: Sync {
    fn k(&self) -> usize;
    fn decode_row(&self, r: usize, out: &mut [f32]);
}

impl RowDecoder for Fp8Weights {
    fn k(&self) -> usize {
        self.k
    }
    fn decode_row(&self, r: usize, out: &mut [f32]) {
        Fp8Weights::decode_row(self, r, out)
    }
}

impl RowDecoder for GenericWeights {
    fn k(&self) -> usize {
        self.t.cols
    }
    fn decode_row(&self, r: usize, out: &mut [f32]) {
        self.checked().dequant_row(r, out)
    }
}

/// `yt (rows, m)` for rows of W decoded one at a time and dotted with x.
/// Every output element is one [`dot_lanes`] of its weight row and its
/// activation row, whatever `m` is: batch invariant.
pub(crate) fn rows_by_dot(
    dec: &dyn RowDecoder,
    x: &[f32],
    m: usize,
    rows: std::ops::Range<usize>,
    yt: &mut [f32],
) {
    let k = dec.k();
    let mut wrow = vec![0f32; k];
    for (ri, r) in rows.enumerate() {
        dec.decode_row(r, &mut wrow);
        for mi in 0..m {
            yt[ri * m + mi] = dot_lanes(&wrow, &x[mi * k..(mi + 1) * k]);
        }
    }
}

/// `Σ w[i] * x[i]` in 8 interleaved partial sums added in a fixed order (a
/// loop the compiler vectorizes, unlike one running sum).
fn dot_lanes(w: &[f32], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (wc, xc) = (w.chunks_exact(8), x.chunks_exact(8));
    let (wt, xt) = (wc.remainder(), xc.remainder());
    for (a, b) in wc.zip(xc) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    for (i, (a, b)) in wt.iter().zip(xt).enumerate() {
        acc[i] += a * b;
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod fp8_avx2 {
    use super::super::intdot_avx2::hsum;
    use super::Fp8Weights;
    use std::arch::x86_64::*;

    /// 16 FP8 codes to two f32x8 (times 2^8 for E4M3, see `dot_row`).
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub(super) unsafe fn decode16<const E5M2: bool>(p: *const u8) -> (__m256, __m256) {
        let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
        let h = if E5M2 {
            // E5M2 is the top byte of an f16.
            _mm256_slli_epi16::<8>(b)
        } else {
            // S.EEEE.MMM -> f16 S.0EEEE.MMM0000000: same value times 2^-8
            // (bias 15 instead of 7), subnormals included.
            let sign = _mm256_slli_epi16::<8>(_mm256_and_si256(b, _mm256_set1_epi16(0x80)));
            let mag = _mm256_slli_epi16::<7>(_mm256_and_si256(b, _mm256_set1_epi16(0x7F)));
            _mm256_or_si256(sign, mag)
        };
        (
            _mm256_cvtph_ps(_mm256_castsi256_si128(h)),
            _mm256_cvtph_ps(_mm256_extracti128_si256::<1>(h)),
        )
    }

    /// Dots of row `r` with the MR activation rows `m0..m0 + MR` of `xp`
    /// (m, kp), into `out[..MR]`. Each activation row has its own
    /// accumulators and sees the same operations in the same order for any
    /// MR: the result of a row does not depend on the batch.
    #[target_feature(enable = "avx2,fma,f16c")]
    ///
    /// With DECODED the weights come from `wdec` (kp f32, the outputs of
    /// `decode16` for row r, stored by [`decode_tile`]) instead of the codes:
    /// the same values, so the same results.
    unsafe fn dot_rows<const E5M2: bool, const MR: usize, const DECODED: bool>(
        w: &Fp8Weights,
        r: usize,
        wdec: *const f32,
        xp: &[f32],
        m0: usize,
        out: &mut [f32],
    ) {
        let kp = w.kp;
        let codes = w.codes.as_ptr().add(r * kp);
        let scales = w.row_scales(r);
        let mut x = [std::ptr::null::<f32>(); MR];
        for (i, xi) in x.iter_mut().enumerate() {
            *xi = xp.as_ptr().add((m0 + i) * kp);
        }
        let mut total = [_mm256_setzero_ps(); MR];
        let mut c0 = 0;
        for &s in scales {
            let c1 = (c0 + w.block).min(kp);
            let mut a0 = [_mm256_setzero_ps(); MR];
            let mut a1 = [_mm256_setzero_ps(); MR];
            let mut c = c0;
            while c < c1 {
                let (w0, w1) = if DECODED {
                    (
                        _mm256_loadu_ps(wdec.add(c)),
                        _mm256_loadu_ps(wdec.add(c + 8)),
                    )
                } else {
                    decode16::<E5M2>(codes.add(c))
                };
                for i in 0..MR {
                    a0[i] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x[i].add(c)), a0[i]);
                    a1[i] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x[i].add(c + 8)), a1[i]);
                }
                c += 16;
            }
            for i in 0..MR {
                total[i] =
                    _mm256_fmadd_ps(_mm256_add_ps(a0[i], a1[i]), _mm256_set1_ps(s), total[i]);
            }
            c0 = c1;
        }
        let unbias = if E5M2 { 1.0 } else { 256.0 };
        for i in 0..MR {
            out[i] = hsum(total[i]) * unbias;
        }
    }

    /// Weight rows decoded to f32 per tile of the batched path: (16, kp)
    /// = 256 KiB at K = 4096, in L2 beside 4 activation rows.
    const TILE_ROWS: usize = 16;

    /// Rows `t0..t0 + nt` decoded into `buf` (nt, kp).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode_tile<const E5M2: bool>(w: &Fp8Weights, t0: usize, nt: usize, buf: &mut [f32]) {
        let kp = w.kp;
        debug_assert!(buf.len() >= nt * kp);
        for ri in 0..nt {
            let codes = w.codes.as_ptr().add((t0 + ri) * kp);
            let dst = buf.as_mut_ptr().add(ri * kp);
            for c in (0..kp).step_by(16) {
                let (w0, w1) = decode16::<E5M2>(codes.add(c));
                _mm256_storeu_ps(dst.add(c), w0);
                _mm256_storeu_ps(dst.add(c + 8), w1);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn rows_impl<const E5M2: bool>(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        let kp = w.kp;
        if m < 8 {
            // Few activation rows: stream each weight row once, decoding
            // in registers; 4 activation rows per decode.
            for (ri, r) in rows.enumerate() {
                let out = &mut yt[ri * m..(ri + 1) * m];
                let mut m0 = 0;
                while m0 + 4 <= m {
                    dot_rows::<E5M2, 4, false>(
                        w,
                        r,
                        std::ptr::null(),
                        xp,
                        m0,
                        &mut out[m0..m0 + 4],
                    );
                    m0 += 4;
                }
                while m0 < m {
                    dot_rows::<E5M2, 1, false>(
                        w,
                        r,
                        std::ptr::null(),
                        xp,
                        m0,
                        &mut out[m0..m0 + 1],
                    );
                    m0 += 1;
                }
            }
            return;
        }
        // Many: decode a tile of weight rows once, then run every group of
        // 4 activation rows over it (each group's x stays in L2 across the
        // tile's rows).
        let mut buf = vec![0f32; TILE_ROWS.min(rows.len()) * kp];
        for t0 in rows.clone().step_by(TILE_ROWS) {
            let nt = TILE_ROWS.min(rows.end - t0);
            decode_tile::<E5M2>(w, t0, nt, &mut buf);
            let mut m0 = 0;
            while m0 < m {
                let mr = if m - m0 >= 4 { 4 } else { 1 };
                for ti in 0..nt {
                    let r = t0 + ti;
                    let o = (r - rows.start) * m + m0;
                    let wdec = buf.as_ptr().add(ti * kp);
                    if mr == 4 {
                        dot_rows::<E5M2, 4, true>(w, r, wdec, xp, m0, &mut yt[o..o + 4]);
                    } else {
                        dot_rows::<E5M2, 1, true>(w, r, wdec, xp, m0, &mut yt[o..o + 1]);
                    }
                }
                m0 += mr;
            }
        }
    }

    /// `yt (rows, m)`; `xp` is x (m, kp) zero padded.
    pub(crate) fn rows(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        assert!(
            xp.len() >= m * w.kp
                && yt.len() >= rows.len() * m
                && rows.end <= w.n
                && w.kp.is_multiple_of(16)
        );
        // SAFETY: `Isa::Avx2` is only chosen after detecting AVX2, FMA and
        // F16C; row r has kp codes, every row of xp has kp values and the
        // scale blocks cover kp in 16-column steps (asserted).
        unsafe {
            if w.e5m2 {
                rows_impl::<true>(w, xp, m, rows, yt)
            } else {
                rows_impl::<false>(w, xp, m, rows, yt)
            }
        }
    }
}

/// FP8 batched kernel (m >= 8) on AVX-512: the AVX2 batched kernel's
/// operations, two weight rows per 64-byte register.
///
/// Every output element sees exactly the f32 operations of
/// `fp8_avx2::dot_rows` (per scale block: `a0`, `a1` FMAs per 16-column
/// step, then `total = fma(a0 + a1, s, total)`; `hsum(total) * unbias`),
/// lane for lane: weight rows 2p and 2p + 1 sit in the low and high halves
/// of each register, activations are broadcast to both halves. So outputs
/// are bitwise the AVX2 kernels' (and batch invariant with the m < 8
/// path). Register blocks of 2 row pairs x 4 activation rows (16 partial
/// and 8 total accumulators) run over K chunks of [`fp8_avx512::KC_COLS`]
/// columns (8 rows' decoded chunk 16 KiB + 4 activation rows 8 KiB in L1),
/// the accumulators parked in a per-thread buffer between chunks.
/// Measured (CPU time, one thread, M = 128, K = 4096, N = 2048): 29.6 ms
/// per call with 16-row tiles and 256-column chunks, 27.5-27.9 with 8 and
/// 512; dense sgemm 15.4-15.8 ms, the AVX2 path about twice this kernel's
/// time in the benchmark. Bound by the f32 FMAs it shares with sgemm, it
/// cannot reach 2x dense.
#[cfg(target_arch = "x86_64")]
pub(crate) mod fp8_avx512 {
    use super::super::intdot_avx2::hsum;
    use super::fp8_avx2::decode16;
    use super::Fp8Weights;
    use std::arch::x86_64::*;

    /// Columns per K chunk.
    pub(super) const KC_COLS: usize = 512;
    /// Weight rows per task tile.
    const TILE_ROWS: usize = 8;

    /// Per-thread decoded tile and parked accumulators.
    struct Scratch {
        /// (pairs, kp / 16, 32): for each 16-column step, columns 0-7 of
        /// rows 2p and 2p + 1, then columns 8-15 of both.
        tile: Vec<f32>,
        /// (pairs, m, 3, 16): a0, a1, total.
        acc: Vec<f32>,
    }

    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> = const {
            std::cell::RefCell::new(Scratch { tile: Vec::new(), acc: Vec::new() })
        };
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn bcast8(p: *const f32) -> __m512 {
        _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_loadu_pd(p as *const f64)))
    }

    /// Rows `r0..r0 + nt` decoded into pair layout (an odd count repeats
    /// its last row; those results are dropped).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn fill_tile<const E5M2: bool>(w: &Fp8Weights, r0: usize, nt: usize, tile: &mut [f32]) {
        let kp = w.kp;
        let steps = kp / 16;
        for ri in 0..2 * nt.div_ceil(2) {
            let r = r0 + ri.min(nt - 1);
            let (p, half) = (ri / 2, ri % 2);
            let codes = w.codes.as_ptr().add(r * kp);
            for j in 0..steps {
                let (w0, w1) = decode16::<E5M2>(codes.add(16 * j));
                let dst = tile.as_mut_ptr().add((p * steps + j) * 32 + 8 * half);
                _mm256_storeu_ps(dst, w0);
                _mm256_storeu_ps(dst.add(16), w1);
            }
        }
    }

    /// Register block: WB pairs from `p0` x XB activation rows `xr`, over
    /// columns `cols` (whole 16-column steps).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    // Register arrays indexed by constant loop counters (unrolled).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn block<const WB: usize, const XB: usize>(
        w: &Fp8Weights,
        tile: &[f32],
        r0: usize,
        nt: usize,
        p0: usize,
        xp: &[f32],
        xr: [usize; XB],
        cols: std::ops::Range<usize>,
        acc: *mut f32,
        m: usize,
    ) {
        let (kp, steps) = (w.kp, w.kp / 16);
        let mut a0 = [[_mm512_setzero_ps(); XB]; WB];
        let mut a1 = [[_mm512_setzero_ps(); XB]; WB];
        let mut total = [[_mm512_setzero_ps(); XB]; WB];
        if cols.start > 0 {
            for a in 0..WB {
                for b in 0..XB {
                    let o = acc.add(((p0 + a) * m + xr[b]) * 48);
                    a0[a][b] = _mm512_loadu_ps(o);
                    a1[a][b] = _mm512_loadu_ps(o.add(16));
                    total[a][b] = _mm512_loadu_ps(o.add(32));
                }
            }
        }
        let mut x = [std::ptr::null::<f32>(); XB];
        for b in 0..XB {
            x[b] = xp.as_ptr().add(xr[b] * kp);
        }
        let mut c = cols.start;
        while c < cols.end {
            // Steps up to the end of this scale block or of the chunk (one
            // division per block, not per step).
            let blk = c / w.block;
            let blk_end = ((blk + 1) * w.block).min(kp);
            let seg_end = blk_end.min(cols.end);
            while c < seg_end {
                let j = c / 16;
                let mut w0 = [_mm512_setzero_ps(); WB];
                let mut w1 = [_mm512_setzero_ps(); WB];
                for a in 0..WB {
                    let t = tile.as_ptr().add(((p0 + a) * steps + j) * 32);
                    w0[a] = _mm512_loadu_ps(t);
                    w1[a] = _mm512_loadu_ps(t.add(16));
                }
                for b in 0..XB {
                    let x0 = bcast8(x[b].add(c));
                    let x1 = bcast8(x[b].add(c + 8));
                    for a in 0..WB {
                        a0[a][b] = _mm512_fmadd_ps(w0[a], x0, a0[a][b]);
                        a1[a][b] = _mm512_fmadd_ps(w1[a], x1, a1[a][b]);
                    }
                }
                c += 16;
            }
            if c == blk_end {
                for a in 0..WB {
                    let ra = r0 + (2 * (p0 + a)).min(nt - 1);
                    let rb = r0 + (2 * (p0 + a) + 1).min(nt - 1);
                    let sa = _mm256_set1_ps(w.row_scales(ra)[blk]);
                    let sb = _mm256_set1_ps(w.row_scales(rb)[blk]);
                    let s = _mm512_insertf32x8_compat(sa, sb);
                    for b in 0..XB {
                        total[a][b] =
                            _mm512_fmadd_ps(_mm512_add_ps(a0[a][b], a1[a][b]), s, total[a][b]);
                        a0[a][b] = _mm512_setzero_ps();
                        a1[a][b] = _mm512_setzero_ps();
                    }
                }
            }
        }
        for a in 0..WB {
            for b in 0..XB {
                let o = acc.add(((p0 + a) * m + xr[b]) * 48);
                _mm512_storeu_ps(o, a0[a][b]);
                _mm512_storeu_ps(o.add(16), a1[a][b]);
                _mm512_storeu_ps(o.add(32), total[a][b]);
            }
        }
    }

    /// [lo | hi] from two 8-float halves (AVX-512 F only).
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[inline]
    unsafe fn _mm512_insertf32x8_compat(lo: __m256, hi: __m256) -> __m512 {
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(
            _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
            _mm256_castps_pd(hi),
        ))
    }

    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    unsafe fn rows_impl<const E5M2: bool>(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        let kp = w.kp;
        let unbias = if E5M2 { 1.0 } else { 256.0 };
        SCRATCH.with(|cell| {
            let sc = &mut *cell.borrow_mut();
            for t0 in rows.clone().step_by(TILE_ROWS) {
                let nt = TILE_ROWS.min(rows.end - t0);
                let np = nt.div_ceil(2);
                sc.tile.resize(np * kp * 2, 0.0);
                sc.acc.resize(np * m * 48, 0.0);
                fill_tile::<E5M2>(w, t0, nt, &mut sc.tile);
                let accp = sc.acc.as_mut_ptr();
                let mut c0 = 0;
                while c0 < kp {
                    let cols = c0..(c0 + KC_COLS).min(kp);
                    let mut m0 = 0;
                    while m0 < m {
                        if m - m0 >= 4 {
                            let xr = [m0, m0 + 1, m0 + 2, m0 + 3];
                            pairs::<4>(w, &sc.tile, t0, nt, xp, xr, cols.clone(), accp, m);
                            m0 += 4;
                        } else {
                            pairs::<1>(w, &sc.tile, t0, nt, xp, [m0], cols.clone(), accp, m);
                            m0 += 1;
                        }
                    }
                    c0 += KC_COLS;
                }
                for p in 0..np {
                    for b in 0..m {
                        let t = _mm512_loadu_ps(sc.acc.as_ptr().add((p * m + b) * 48 + 32));
                        let ri = t0 - rows.start + 2 * p;
                        yt[ri * m + b] = hsum(_mm512_castps512_ps256(t)) * unbias;
                        if 2 * p + 1 < nt {
                            let hi =
                                _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(t)));
                            yt[(ri + 1) * m + b] = hsum(hi) * unbias;
                        }
                    }
                }
            }
        });
    }

    /// All pairs of a tile for activation rows `xr`.
    #[target_feature(enable = "avx512f,avx2,fma,f16c")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn pairs<const XB: usize>(
        w: &Fp8Weights,
        tile: &[f32],
        r0: usize,
        nt: usize,
        xp: &[f32],
        xr: [usize; XB],
        cols: std::ops::Range<usize>,
        acc: *mut f32,
        m: usize,
    ) {
        let np = nt.div_ceil(2);
        let mut p0 = 0;
        while p0 + 2 <= np {
            block::<2, XB>(w, tile, r0, nt, p0, xp, xr, cols.clone(), acc, m);
            p0 += 2;
        }
        if p0 < np {
            block::<1, XB>(w, tile, r0, nt, p0, xp, xr, cols, acc, m);
        }
    }

    /// 16 FP8 codes at `p` as f16 bits (the values of `decode16`, times
    /// 2^-8 for E4M3), in column order.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    #[inline]
    unsafe fn f16_bits16<const E5M2: bool>(p: *const u8) -> __m256i {
        let b = _mm256_cvtepu8_epi16(_mm_loadu_si128(p as *const __m128i));
        if E5M2 {
            _mm256_slli_epi16::<8>(b)
        } else {
            // S.EEEE.MMM << 8, arithmetic >> 1 = S.S.EEEE.MMM.0000000; bit
            // 14 cleared gives decode16's S.0EEEE.MMM0000000.
            _mm256_and_si256(
                _mm256_srai_epi16::<1>(_mm256_slli_epi16::<8>(b)),
                _mm256_set1_epi16(0xBFFF_u16 as i16),
            )
        }
    }

    /// As [`f16_bits16`] for 32 codes.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    #[inline]
    unsafe fn f16_bits32<const E5M2: bool>(p: *const u8) -> __m512i {
        let b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(p as *const __m256i));
        if E5M2 {
            _mm512_slli_epi16::<8>(b)
        } else {
            _mm512_and_si512(
                _mm512_srai_epi16::<1>(_mm512_slli_epi16::<8>(b)),
                _mm512_set1_epi16(0xBFFF_u16 as i16),
            )
        }
    }

    /// Software prefetch distance of the decode kernel, bytes ahead in
    /// each weight row's codes (RB rows stream side by side). Measured as
    /// for the int-dot decode kernel (`intdot_vnni::PREFETCH_BYTES`), FP8
    /// E4M3 4096 x 4096 from DRAM, load 20, median kernel / same-bytes copy:
    /// `prefetcht1` 4 KiB 78%, 8 KiB 80%, 16 KiB 95%; `prefetcht0` 8 KiB
    /// 81%; none 66%.
    const DECODE_PREFETCH: usize = 16384;

    /// Decode kernel (m < 8): weight rows `r0..r0 + RB` against activation
    /// rows `m0..m0 + MR`, outputs at `yt[(r - rows_start) * m + i]`.
    ///
    /// One 64-byte accumulator per (row, activation row) holds the AVX2
    /// kernel's `a0` (lanes 0-7: columns c..c + 8 of every 16-column step)
    /// and `a1` (lanes 8-15), and each scale block ends with `total =
    /// fma(a0 + a1, s, total)` on 8 lanes: the AVX2 kernel's f32 operations
    /// in its order, so bitwise its results. RB x MR independent chains
    /// (a single row has one FMA chain of 4-cycle latency per 16 codes).
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    // Register arrays indexed by constant loop counters (unrolled).
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    unsafe fn decode_block<const E5M2: bool, const RB: usize, const MR: usize>(
        w: &Fp8Weights,
        xp: &[f32],
        r0: usize,
        m0: usize,
        rows_start: usize,
        m: usize,
        yt: &mut [f32],
    ) {
        let kp = w.kp;
        let mut codes = [std::ptr::null::<u8>(); RB];
        let mut scales: [&[f32]; RB] = [&[]; RB];
        for a in 0..RB {
            codes[a] = w.codes.as_ptr().add((r0 + a) * kp);
            scales[a] = w.row_scales(r0 + a);
        }
        let mut x = [std::ptr::null::<f32>(); MR];
        for i in 0..MR {
            x[i] = xp.as_ptr().add((m0 + i) * kp);
        }
        let mut total = [[_mm256_setzero_ps(); MR]; RB];
        let mut c0 = 0;
        for blk in 0..w.blocks_per_row {
            let c1 = (c0 + w.block).min(kp);
            let mut acc = [[_mm512_setzero_ps(); MR]; RB];
            let mut c = c0;
            while c + 32 <= c1 {
                let mut w0 = [_mm512_setzero_ps(); RB];
                let mut w1 = [_mm512_setzero_ps(); RB];
                for a in 0..RB {
                    // A prefetch never faults, hence wrapping_add.
                    // Into L2; a prefetch never faults, hence wrapping_add.
                    _mm_prefetch::<_MM_HINT_T1>(
                        codes[a].wrapping_add(c + DECODE_PREFETCH) as *const i8
                    );
                    let h = f16_bits32::<E5M2>(codes[a].add(c));
                    w0[a] = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
                    w1[a] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(h));
                }
                for i in 0..MR {
                    let x0 = _mm512_loadu_ps(x[i].add(c));
                    let x1 = _mm512_loadu_ps(x[i].add(c + 16));
                    for a in 0..RB {
                        acc[a][i] = _mm512_fmadd_ps(w0[a], x0, acc[a][i]);
                        acc[a][i] = _mm512_fmadd_ps(w1[a], x1, acc[a][i]);
                    }
                }
                c += 32;
            }
            if c < c1 {
                // One 16-column step (blocks and kp are multiples of 16).
                let mut w0 = [_mm512_setzero_ps(); RB];
                for a in 0..RB {
                    w0[a] = _mm512_cvtph_ps(f16_bits16::<E5M2>(codes[a].add(c)));
                }
                for i in 0..MR {
                    let x0 = _mm512_loadu_ps(x[i].add(c));
                    for a in 0..RB {
                        acc[a][i] = _mm512_fmadd_ps(w0[a], x0, acc[a][i]);
                    }
                }
            }
            for a in 0..RB {
                let s = _mm256_set1_ps(scales[a][blk]);
                for i in 0..MR {
                    let v = acc[a][i];
                    let sum = _mm256_add_ps(
                        _mm512_castps512_ps256(v),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                    );
                    total[a][i] = _mm256_fmadd_ps(sum, s, total[a][i]);
                }
            }
            c0 = c1;
        }
        let unbias = if E5M2 { 1.0 } else { 256.0 };
        for a in 0..RB {
            for i in 0..MR {
                yt[(r0 + a - rows_start) * m + m0 + i] = hsum(total[a][i]) * unbias;
            }
        }
    }

    /// Rows of a decode task for activation rows `m0..m0 + MR`: RB rows at
    /// a time, then one.
    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn decode_rows_mr<const E5M2: bool, const RB: usize, const MR: usize>(
        w: &Fp8Weights,
        xp: &[f32],
        m0: usize,
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        let mut r = rows.start;
        while r + RB <= rows.end {
            decode_block::<E5M2, RB, MR>(w, xp, r, m0, rows.start, m, yt);
            r += RB;
        }
        while r < rows.end {
            decode_block::<E5M2, 1, MR>(w, xp, r, m0, rows.start, m, yt);
            r += 1;
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
    unsafe fn decode_rows_impl<const E5M2: bool>(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        // Activation rows in groups of 4, 3, 2 or 1, each group's weight
        // rows decoded once; about 4 FMA chains per group.
        let mut m0 = 0;
        while m0 < m {
            let mr = (m - m0).min(4);
            match mr {
                4 => decode_rows_mr::<E5M2, 1, 4>(w, xp, m0, m, rows.clone(), yt),
                3 => decode_rows_mr::<E5M2, 2, 3>(w, xp, m0, m, rows.clone(), yt),
                2 => decode_rows_mr::<E5M2, 2, 2>(w, xp, m0, m, rows.clone(), yt),
                _ => decode_rows_mr::<E5M2, 4, 1>(w, xp, m0, m, rows.clone(), yt),
            }
            m0 += mr;
        }
    }

    /// Whether this CPU runs [`decode_rows`].
    pub(crate) fn decode_available() -> bool {
        available() && is_x86_feature_detected!("avx512bw")
    }

    /// Decode path (m < 8): `yt (rows, m)`; `xp` is x (m, kp) zero padded.
    /// Bitwise the AVX2 kernel's outputs (see [`decode_block`]).
    pub(crate) fn decode_rows(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        assert!(
            decode_available()
                && xp.len() >= m * w.kp
                && yt.len() >= rows.len() * m
                && rows.end <= w.n
                && w.kp.is_multiple_of(16)
                && w.block.is_multiple_of(16)
                && w.blocks_per_row * w.block >= w.kp
        );
        // SAFETY: the features were detected (asserted); row r has kp
        // codes and its scale row blocks_per_row entries covering kp in
        // whole 16-column steps, every row of xp has kp values (asserted).
        unsafe {
            if w.e5m2 {
                decode_rows_impl::<true>(w, xp, m, rows, yt)
            } else {
                decode_rows_impl::<false>(w, xp, m, rows, yt)
            }
        }
    }

    /// Whether this CPU runs this module's kernel.
    pub(crate) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    /// `yt (rows, m)`; `xp` is x (m, kp) zero padded; m >= 1.
    pub(crate) fn rows(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        assert!(
            available()
                && xp.len() >= m * w.kp
                && yt.len() >= rows.len() * m
                && rows.end <= w.n
                && w.kp.is_multiple_of(16)
                && w.block.is_multiple_of(16)
        );
        if rows.is_empty() || m == 0 {
            return;
        }
        // SAFETY: the features were detected (asserted); row r has kp
        // codes, every row of xp has kp values, scale blocks are whole
        // 16-column steps (asserted), and the tile and accumulator buffers
        // are sized to the task above.
        unsafe {
            if w.e5m2 {
                rows_impl::<true>(w, xp, m, rows, yt)
            } else {
                rows_impl::<false>(w, xp, m, rows, yt)
            }
        }
    }
}
