//! f32 paths: FP8 weights (decoded 16 at a time through F16C), and the
//! generic path for every other scheme (NF4, irregular act-order, FP8 with
//! zero points...): dequantize rows to f32, then dot. Both compute every
//! output element with one reduction order whatever M is (batch invariance,
//! see `docs/CPU_KERNELS.md`), so neither hands large M to sgemm.

use super::codes::{decode_e4m3, decode_e5m2, CheckedTensor, ScaleGrid};
use marlin_quant::{ElementType, QuantTensor, ZeroPoint};

/// FP8 codes, rows padded to whole 16-column steps with +0 codes.
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
    unsafe fn decode16<const E5M2: bool>(p: *const u8) -> (__m256, __m256) {
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
