//! f32 paths: FP8 weights (decoded 16 at a time through F16C), and the
//! generic path for every other scheme (NF4, irregular act-order, FP8 with
//! zero points...): dequantize rows to f32, then dot (M small) or a tile of
//! rows through `matrixmultiply`'s sgemm (M large).

use super::codes::{decode_e4m3, decode_e5m2, CheckedTensor, ScaleGrid};
use crate::CpuError;
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
    /// Value of every code (for the scalar and sgemm paths).
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
            let xr = &x[mi * k..(mi + 1) * k];
            yt[ri * m + mi] = wrow.iter().zip(xr).map(|(a, b)| a * b).sum();
        }
    }
}

/// Rows per decoded tile of the sgemm path: (512, 4096) f32 = 8 MiB. Large
/// tiles because sgemm repacks x on every call.
const SGEMM_TILE_ROWS: usize = 512;

/// `y (m, N) = x · Wᵀ` by decoding tiles of rows to f32 (in parallel) and
/// multiplying each with sgemm (itself multi-threaded).
pub(crate) fn matmul_by_sgemm(
    dec: &dyn RowDecoder,
    n: usize,
    x: &[f32],
    m: usize,
    y: &mut [f32],
) -> Result<(), CpuError> {
    use rayon::prelude::*;
    let k = dec.k();
    let mut tile = vec![0f32; SGEMM_TILE_ROWS.min(n) * k];
    for n0 in (0..n).step_by(SGEMM_TILE_ROWS) {
        let nt = SGEMM_TILE_ROWS.min(n - n0);
        tile[..nt * k]
            .par_chunks_mut(k)
            .enumerate()
            .for_each(|(i, row)| dec.decode_row(n0 + i, row));
        // SAFETY: x is (m, k) row-major, tile holds nt rows of k (read as
        // the (k, nt) matrix Wᵀ with strides (1, k)), and y is (m, n) with
        // row stride n; columns n0..n0+nt exist since n0 + nt <= n.
        unsafe {
            matrixmultiply::sgemm(
                m,
                k,
                nt,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                tile.as_ptr(),
                1,
                k as isize,
                0.0,
                y.as_mut_ptr().add(n0),
                n as isize,
                1,
            );
        }
    }
    Ok(())
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

    /// Dot of row `r` with `x` (kp values, zero padded).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_row<const E5M2: bool>(w: &Fp8Weights, r: usize, x: &[f32]) -> f32 {
        let codes = w.codes.as_ptr().add(r * w.kp);
        let scales = w.row_scales(r);
        let mut total = _mm256_setzero_ps();
        let mut c0 = 0;
        for &s in scales {
            let c1 = (c0 + w.block).min(w.kp);
            let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut c = c0;
            while c < c1 {
                let (w0, w1) = decode16::<E5M2>(codes.add(c));
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(c)), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(c + 8)), a1);
                c += 16;
            }
            total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(s), total);
            c0 = c1;
        }
        let unbias = if E5M2 { 1.0 } else { 256.0 };
        hsum(total) * unbias
    }

    /// `yt (rows, m)`; `xp` is x (m, kp) zero padded.
    pub(crate) fn rows(
        w: &Fp8Weights,
        xp: &[f32],
        m: usize,
        rows: std::ops::Range<usize>,
        yt: &mut [f32],
    ) {
        assert!(xp.len() >= m * w.kp && rows.end <= w.n && w.kp.is_multiple_of(16));
        for (ri, r) in rows.enumerate() {
            for mi in 0..m {
                let xr = &xp[mi * w.kp..(mi + 1) * w.kp];
                // SAFETY: `Isa::Avx2` is only chosen after detecting AVX2,
                // FMA and F16C; row r has kp codes, xr has kp values and
                // the scale blocks cover kp in 16-column steps (asserted).
                yt[ri * m + mi] = unsafe {
                    if w.e5m2 {
                        dot_row::<true>(w, r, xr)
                    } else {
                        dot_row::<false>(w, r, xr)
                    }
                };
            }
        }
    }
}
