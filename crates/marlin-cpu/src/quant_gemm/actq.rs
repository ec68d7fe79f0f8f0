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

use rayon::prelude::*;

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
}

impl QuantActs {
    /// Quantizes `x` (m, k). With `perm`, row element `c` is taken from
    /// `x[perm[c]]` (act-order weights whose columns were sorted by group).
    pub fn new(x: &[f32], m: usize, k: usize, perm: Option<&[u32]>) -> Self {
        let n_sb = k.div_ceil(SB);
        let kp = n_sb * SB;
        let mut acts = QuantActs {
            m,
            n_sb,
            q: vec![0; m * kp],
            dx: vec![0.0; m * n_sb * LANES],
            xsum: vec![0.0; m * n_sb * LANES],
            xsum_half: vec![0.0; m * n_sb * 2 * LANES],
        };
        if m == 0 || k == 0 {
            return acts;
        }
        if m == 1 {
            // One row: not worth waking the pool.
            let (q, dx) = (&mut acts.q[..], &mut acts.dx[..]);
            quantize_row(x, perm, q, dx, &mut acts.xsum, &mut acts.xsum_half);
            return acts;
        }
        acts.q
            .par_chunks_mut(kp)
            .zip(acts.dx.par_chunks_mut(n_sb * LANES))
            .zip(acts.xsum.par_chunks_mut(n_sb * LANES))
            .zip(acts.xsum_half.par_chunks_mut(n_sb * 2 * LANES))
            .zip(x.par_chunks(k))
            .for_each(|((((q, dx), xsum), xsum_half), xrow)| {
                quantize_row(xrow, perm, q, dx, xsum, xsum_half)
            });
        acts
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
        for (c, v) in codes.iter_mut().zip(&block) {
            // Round half away from zero without a libm call; |v * inv| <= 127.
            let t = v * inv;
            *c = (t + 0.5f32.copysign(t)) as i8;
        }
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
