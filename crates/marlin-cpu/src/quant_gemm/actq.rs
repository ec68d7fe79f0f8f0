//! Activations quantized to int8 once per call, for integer dot products.
//!
//! x is cut into blocks of 32 consecutive K elements; each block gets its own
//! scale `dx = max|x| / 127` and codes `q = round(x / dx)` in [-127, 127]
//! (the Q8_0 scheme of ggml). The rounding error per element is at most
//! `dx / 2`, i.e. 1/254 of the block's largest magnitude; on a dot product of
//! random-sign terms the relative error is typically 1e-3 and stays below
//! 2e-2 (see `docs/CPU_KERNELS.md`).
//!
//! K is padded to whole superblocks of [`SB`] = 256 elements (8 blocks) with
//! zeros, and each superblock is stored *interleaved*: byte `32*v + 4*l + t`
//! holds element `32*l + 4*v + t` (block `l`, 4-element step `v`). With the
//! weights in the same order, one 32-byte vector `v` of a superblock holds 4
//! consecutive elements of each of the 8 blocks, so `maddubs` + `madd` leave
//! block `l`'s partial dot product in i32 lane `l`, and the per-block scales
//! apply as one 8-lane vector.

use crate::CpuError;

/// Elements per superblock.
pub(crate) const SB: usize = 256;
/// Blocks (and SIMD i32 lanes) per superblock.
pub(crate) const LANES: usize = 8;
/// Elements per activation block.
pub(crate) const BLOCK: usize = 32;

/// Interleaved position of element `e` (0..256) of a superblock.
#[inline]
pub(crate) fn interleaved_pos(e: usize) -> usize {
    let (l, i) = (e / BLOCK, e % BLOCK);
    32 * (i / 4) + 4 * l + i % 4
}

/// x (m, K) quantized to int8 in interleaved superblocks.
pub(crate) struct QuantActs {
    pub m: usize,
    pub n_sb: usize,
    /// (m, n_sb * 256) codes, interleaved per superblock.
    pub q: Vec<i8>,
    /// (m, n_sb * 8) block scales.
    pub dx: Vec<f32>,
    /// (m, n_sb * 8) sum of the codes of each block.
    pub xsum: Vec<f32>,
    /// (m, n_sb * 16): sum of codes of each half block, at `sb*16 + 8*h + l`.
    pub xsum_half: Vec<f32>,
    /// `q` with the eight 32-byte vectors of every superblock reordered
    /// (see [`QuantActs::reorder_vectors`]); empty unless a kernel asked.
    pub q_reordered: Vec<i8>,
}

impl QuantActs {
    /// Quantizes `x` (m, k). With `perm`, row element `c` is taken from
    /// `x[perm[c]]` (act-order weights whose columns were sorted by group).
    /// `simd`: use the AVX2 block quantizer (same results bit for bit; the
    /// caller has checked that the CPU has AVX2).
    pub fn new(
        x: &[f32],
        m: usize,
        k: usize,
        perm: Option<&[u32]>,
        simd: bool,
    ) -> Result<Self, CpuError> {
        let n_sb = k.div_ceil(SB);
        let kp = n_sb * SB;
        let mut acts = QuantActs {
            m,
            n_sb,
            q: vec![0; m * kp],
            dx: vec![0.0; m * n_sb * LANES],
            xsum: vec![0.0; m * n_sb * LANES],
            xsum_half: vec![0.0; m * n_sb * 2 * LANES],
            q_reordered: Vec::new(),
        };
        if m == 0 || k == 0 {
            return Ok(acts);
        }
        if m == 1 {
            // One row: not worth a pool job.
            let (q, dx) = (&mut acts.q[..], &mut acts.dx[..]);
            quantize_row(x, perm, q, dx, &mut acts.xsum, &mut acts.xsum_half, simd);
            return Ok(acts);
        }
        // One task per row on the same pool as the kernels: each task gets
        // its row's four disjoint output slices.
        let mut rows: Vec<_> = acts
            .q
            .chunks_mut(kp)
            .zip(acts.dx.chunks_mut(n_sb * LANES))
            .zip(acts.xsum.chunks_mut(n_sb * LANES))
            .zip(acts.xsum_half.chunks_mut(n_sb * 2 * LANES))
            .collect();
        crate::pool::current().try_for_each_chunk_mut(&mut rows, 1, |i, row| {
            for (((q, dx), xsum), xsum_half) in row.iter_mut() {
                quantize_row(&x[i * k..(i + 1) * k], perm, q, dx, xsum, xsum_half, simd);
            }
            Ok(())
        })?;
        drop(rows);
        Ok(acts)
    }

    /// Fills `q_reordered`: vector `j` of each superblock is vector
    /// `order[j]` of `q` (the AVX-512 decode kernel loads two vectors per
    /// 64-byte register, in the order its weight registers unpack to).
    pub fn reorder_vectors(&mut self, order: [usize; 8]) {
        let mut out = vec![0i8; self.q.len()];
        for (dst, src) in out.chunks_exact_mut(SB).zip(self.q.chunks_exact(SB)) {
            for (j, &v) in order.iter().enumerate() {
                dst[32 * j..32 * (j + 1)].copy_from_slice(&src[32 * v..32 * (v + 1)]);
            }
        }
        self.q_reordered = out;
    }

    pub fn row_q(&self, m: usize) -> &[i8] {
        let kp = self.n_sb * SB;
        &self.q[m * kp..(m + 1) * kp]
    }
    pub fn row_dx(&self, m: usize) -> &[f32] {
        let w = self.n_sb * LANES;
        &self.dx[m * w..(m + 1) * w]
    }
    pub fn row_xsum(&self, m: usize) -> &[f32] {
        let w = self.n_sb * LANES;
        &self.xsum[m * w..(m + 1) * w]
    }
    pub fn row_xsum_half(&self, m: usize) -> &[f32] {
        let w = self.n_sb * 2 * LANES;
        &self.xsum_half[m * w..(m + 1) * w]
    }
}

fn quantize_row(
    xrow: &[f32],
    perm: Option<&[u32]>,
    q: &mut [i8],
    dx: &mut [f32],
    xsum: &mut [f32],
    xsum_half: &mut [f32],
    simd: bool,
) {
    let k = xrow.len();
    let mut block = [0f32; BLOCK];
    let mut codes = [0i8; BLOCK];
    for (b, d_out) in dx.iter_mut().enumerate() {
        let (sb, l) = (b / LANES, b % LANES);
        let start = b * BLOCK;
        if start + BLOCK <= k && perm.is_none() {
            block.copy_from_slice(&xrow[start..start + BLOCK]);
        } else {
            for (i, v) in block.iter_mut().enumerate() {
                let c = start + i;
                *v = if c < k {
                    perm.map_or(xrow[c], |p| xrow[p[c] as usize])
                } else {
                    0.0
                };
            }
        }
        let d = match quantize_block_simd(&block, &mut codes, simd) {
            Some(d) => d,
            None => quantize_block(&block, &mut codes),
        };
        // Interleave: elements 4v..4v+4 of lane l go to bytes 32v + 4l.
        let dst = &mut q[sb * SB..(sb + 1) * SB];
        for (v, chunk) in codes.chunks_exact(4).enumerate() {
            dst[32 * v + 4 * l..32 * v + 4 * l + 4].copy_from_slice(chunk);
        }
        let s0: i32 = codes[..16].iter().map(|&c| i32::from(c)).sum();
        let s1: i32 = codes[16..].iter().map(|&c| i32::from(c)).sum();
        *d_out = d;
        xsum[b] = (s0 + s1) as f32;
        xsum_half[sb * 2 * LANES + l] = s0 as f32;
        xsum_half[sb * 2 * LANES + LANES + l] = s1 as f32;
    }
}

/// Quantizes one block to `codes`; returns its scale `dx`.
fn quantize_block(block: &[f32; BLOCK], codes: &mut [i8; BLOCK]) -> f32 {
    let amax = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    // A NaN / infinite activation makes its block scale NaN, so that it
    // reaches y instead of being rounded away.
    let finite = block.iter().all(|v| v.is_finite());
    let d = if finite { amax / 127.0 } else { f32::NAN };
    let inv = if finite && amax > 0.0 {
        127.0 / amax
    } else {
        0.0
    };
    for (c, v) in codes.iter_mut().zip(block) {
        // Round half away from zero without a libm call; |v * inv| <= 127.
        let t = v * inv;
        *c = (t + 0.5f32.copysign(t)) as i8;
    }
    d
}

/// [`quantize_block`] with SIMD when `simd` is set and the block is finite;
/// `None` (codes untouched) otherwise.
#[allow(unused_variables)]
fn quantize_block_simd(block: &[f32; BLOCK], codes: &mut [i8; BLOCK], simd: bool) -> Option<f32> {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is only set by callers that detected AVX2.
        return unsafe { quantize_block_avx2(block, codes) };
    }
    None
}

/// [`quantize_block`] in AVX2 for a block of finite values: the same
/// operations per element (max of |v|, `amax / 127`, `127 / amax`, round
/// half away from zero), so the same scale and codes bit for bit. `None`,
/// with `codes` untouched, when the block holds a NaN or an infinity or its
/// largest magnitude is so small that `127 / amax` overflows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_block_avx2(block: &[f32; BLOCK], codes: &mut [i8; BLOCK]) -> Option<f32> {
    use std::arch::x86_64::*;
    let p = block.as_ptr();
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let a = v.map(|x| _mm256_and_ps(x, abs_mask));
    // |v| <= f32::MAX is false for NaN and infinity.
    let fmax = _mm256_set1_ps(f32::MAX);
    let ok = _mm256_and_ps(
        _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LE_OQ>(a[0], fmax),
            _mm256_cmp_ps::<_CMP_LE_OQ>(a[1], fmax),
        ),
        _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_LE_OQ>(a[2], fmax),
            _mm256_cmp_ps::<_CMP_LE_OQ>(a[3], fmax),
        ),
    );
    if _mm256_movemask_ps(ok) != 0xFF {
        return None;
    }
    let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps::<1>(m, m)));
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    if !inv.is_finite() {
        // amax below 127 / f32::MAX (subnormal): the scalar code's
        // saturating casts of infinite products decide the codes.
        return None;
    }
    let inv = _mm256_set1_ps(inv);
    let sign = _mm256_castsi256_ps(_mm256_set1_epi32(i32::MIN));
    let half = _mm256_set1_ps(0.5);
    let q = v.map(|x| {
        let t = _mm256_mul_ps(x, inv);
        // t + copysign(0.5, t), truncated toward zero: |t| <= 127.
        let r = _mm256_add_ps(t, _mm256_or_ps(_mm256_and_ps(t, sign), half));
        _mm256_cvttps_epi32(r)
    });
    // i32 -> i8; the packs interleave 128-bit lanes, the permute restores
    // element order.
    let w01 = _mm256_packs_epi32(q[0], q[1]);
    let w23 = _mm256_packs_epi32(q[2], q[3]);
    let b = _mm256_packs_epi16(w01, w23);
    let b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(codes.as_mut_ptr() as *mut __m256i, b);
    Some(amax / 127.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 block quantizer must give the scalar one's scale and codes
    /// bit for bit (the scalar int-dot kernels are the reference for the
    /// AVX2 ones on the same activations).
    #[test]
    fn simd_quantizer_matches_scalar() {
        #[cfg(target_arch = "x86_64")]
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut blocks: Vec<[f32; BLOCK]> = vec![[0.0; BLOCK], [-0.0; BLOCK]];
        // Exact halves after scaling (ties), tiny and huge magnitudes.
        let mut ties = [0f32; BLOCK];
        for (i, v) in ties.iter_mut().enumerate() {
            *v = (i as f32 - 16.0) + 0.5;
        }
        ties[0] = 127.0;
        blocks.push(ties);
        blocks.push([1e-40; BLOCK]);
        blocks.push([3e38; BLOCK]);
        for _ in 0..2000 {
            let mut b = [0f32; BLOCK];
            let scale = f32::from_bits(((next() % 60) as u32 + 100) << 23);
            for v in b.iter_mut() {
                *v = ((next() % 2001) as f32 / 1000.0 - 1.0) * scale;
            }
            blocks.push(b);
        }
        let mut simd_blocks = 0;
        for b in &blocks {
            let (mut want, mut got) = ([0i8; BLOCK], [0i8; BLOCK]);
            let d_want = quantize_block(b, &mut want);
            match quantize_block_simd(b, &mut got, true) {
                Some(d_got) => {
                    assert_eq!(d_got.to_bits(), d_want.to_bits(), "{b:?}");
                    assert_eq!(got, want, "{b:?}");
                    simd_blocks += 1;
                }
                // Only the subnormal block may fall back.
                None => assert!(b[0].abs() < 1e-37, "{b:?}"),
            }
        }
        if cfg!(target_arch = "x86_64") {
            assert_eq!(simd_blocks, blocks.len() - 1);
        }
        let mut b = [1f32; BLOCK];
        b[7] = f32::INFINITY;
        assert!(quantize_block_simd(&b, &mut [0; BLOCK], true).is_none());
        b[7] = f32::NAN;
        assert!(quantize_block_simd(&b, &mut [0; BLOCK], true).is_none());
    }
}
