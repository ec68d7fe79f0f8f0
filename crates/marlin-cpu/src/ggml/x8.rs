//! Row-interleaved ("x8") layouts of the 32-element nibble formats, and
//! the matmul driver of their kernels.
//!
//! Eight weight rows are stored block by block: group g, block b holds
//! block b of rows 8g..8g+8, arranged so that the kernel unpacks it into
//! eight registers where register t, byte 4r + e, is the code of row r,
//! element 4t + e. `maddubs` with the activation bytes 4t..4t+4 broadcast to
//! every lane, then `madd`, leaves in i32 lane r the dot product of row r
//! with those four activations: the lanes are weight rows, so one
//! int-to-float conversion and one FMA per block serve eight (weight row,
//! activation row) pairs, and each decoded block serves every activation
//! row of a tile (llama.cpp's repacked Q4_0x8 kernels do the same).
//!
//! The layout has exactly the bytes of the eight rows (no padding inside a
//! group; a last group of fewer than 8 rows is padded with zero blocks).
//!
//! Arithmetic of one (weight row, activation row) pair, the same for every
//! M and tile (batch invariance): per block b in order, with isum the exact
//! i32 dot product of the codes, `acc = fma(d_w * d_a, isum as f32, acc)`
//! then `acc = fma(c_w, s_a, acc)` (c_w the block's offset term: m for
//! Q4_1, -16 d for Q5_0; s_a = d_a * Σ codes); the output is acc.

use super::act::ActQ8x32;
use crate::CpuError;
use bytemuck::{Pod, Zeroable};
use marlin_quant::ggml::{scale_min_k4, BlockQ4K, BlockQ4_1, BlockQ5_0, BlockQ6K, BlockQ8_0};

/// Weight rows per group.
pub const ROWS: usize = 8;

/// Q4_1 block b of 8 rows: scales, offsets, then the nibbles. Byte
/// 32u + 4r + e of `qs` is byte 4u + e of row r's `qs` (low nibble:
/// element 4u + e, high nibble: element 16 + 4u + e).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct X8Q4_1 {
    /// f16 (little-endian bytes), row r at [r]: every field has alignment
    /// 1, so a byte buffer casts to these blocks wherever it lies.
    pub d: [[u8; 2]; ROWS],
    pub m: [[u8; 2]; ROWS],
    pub qs: [u8; 128],
}

/// Q5_0 block b of 8 rows: scales, fifth bits, nibbles (`qs` as in
/// [`X8Q4_1`]). Bit t of `qh[4r + e]` is the fifth bit of row r, element
/// 4t + e (the byte lane of unpacked register t).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct X8Q5_0 {
    pub d: [[u8; 2]; ROWS],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}

/// Q4_K superblock of 8 rows: scales, 6-bit sub-block scales and mins
/// unpacked, then the nibbles. Sub-block s (elements 32s..32s+32) is the
/// low (s even) or high (s odd) nibbles of qs bytes 32p..32p+32, p = s / 2,
/// of each row; byte 32(8p + u) + 4r + e of `qs` is row r's byte
/// 32p + 4u + e.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct X8Q4K {
    pub d: [[u8; 2]; ROWS],
    pub dmin: [[u8; 2]; ROWS],
    /// `sc[s][r]`: scale of sub-block s of row r.
    pub sc: [[u8; ROWS]; 8],
    /// Mins of sub-blocks 2p and 2p + 1 of row r at `mn[p][2r]`, `mn[p][2r + 1]`.
    pub mn: [[u8; 2 * ROWS]; 4],
    pub qs: [u8; 1024],
}

/// Interleaves the 16 nibble bytes of 8 rows' blocks.
fn interleave_qs(qs: [&[u8; 16]; ROWS]) -> [u8; 128] {
    let mut out = [0u8; 128];
    for u in 0..4 {
        for (r, q) in qs.iter().enumerate() {
            out[32 * u + 4 * r..][..4].copy_from_slice(&q[4 * u..4 * u + 4]);
        }
    }
    out
}

/// Inverse of [`interleave_qs`] for row r.
fn row_qs(qs: &[u8; 128], r: usize) -> [u8; 16] {
    let mut out = [0u8; 16];
    for u in 0..4 {
        out[4 * u..4 * u + 4].copy_from_slice(&qs[32 * u + 4 * r..][..4]);
    }
    out
}

/// A ggml block format with an x8 layout.
pub trait Interleave: Pod {
    type Block: Pod;
    fn pack(rows: [&Self::Block; ROWS]) -> Self;
    fn unpack(&self, r: usize) -> Self::Block;
}

impl Interleave for X8Q4_1 {
    type Block = BlockQ4_1;
    fn pack(rows: [&BlockQ4_1; ROWS]) -> Self {
        Self {
            d: rows.map(|b| b.d),
            m: rows.map(|b| b.m),
            qs: interleave_qs(rows.map(|b| &b.qs)),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ4_1 {
        BlockQ4_1 {
            d: self.d[r],
            m: self.m[r],
            qs: row_qs(&self.qs, r),
        }
    }
}

impl Interleave for X8Q5_0 {
    type Block = BlockQ5_0;
    fn pack(rows: [&BlockQ5_0; ROWS]) -> Self {
        let mut qh = [0u8; 32];
        for (r, b) in rows.iter().enumerate() {
            let bits = b.qh_bits();
            for e in 0..4 {
                for t in 0..8 {
                    qh[4 * r + e] |= (((bits >> (4 * t + e)) & 1) as u8) << t;
                }
            }
        }
        Self {
            d: rows.map(|b| b.d),
            qh,
            qs: interleave_qs(rows.map(|b| &b.qs)),
        }
    }
    fn unpack(&self, r: usize) -> BlockQ5_0 {
        let mut bits = 0u32;
        for e in 0..4 {
            for t in 0..8 {
                bits |= (((self.qh[4 * r + e] >> t) & 1) as u32) << (4 * t + e);
            }
        }
        BlockQ5_0 {
            d: self.d[r],
            qh: bits.to_le_bytes(),
            qs: row_qs(&self.qs, r),
        }
    }
}

impl Interleave for X8Q4K {
    type Block = BlockQ4K;
    fn pack(rows: [&BlockQ4K; ROWS]) -> Self {
        let mut x = Self::zeroed();
        for (r, b) in rows.iter().enumerate() {
            x.d[r] = b.d;
            x.dmin[r] = b.dmin;
            for s in 0..8 {
                let (sc, mn) = scale_min_k4(s, &b.scales);
                x.sc[s][r] = sc;
                x.mn[s / 2][2 * r + s % 2] = mn;
            }
            for p in 0..4 {
                for u in 0..8 {
                    x.qs[32 * (8 * p + u) + 4 * r..][..4]
                        .copy_from_slice(&b.qs[32 * p + 4 * u..][..4]);
                }
            }
        }
        x
    }
    fn unpack(&self, r: usize) -> BlockQ4K {
        let sc: [u8; 8] = std::array::from_fn(|s| self.sc[s][r]);
        let mn: [u8; 8] = std::array::from_fn(|s| self.mn[s / 2][2 * r + s % 2]);
        // The inverse of `scale_min_k4` (all 96 bits are used).
        let mut scales = [0u8; 12];
        for j in 0..4 {
            scales[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            scales[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            scales[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        let mut qs = [0u8; 128];
        for p in 0..4 {
            for u in 0..8 {
                qs[32 * p + 4 * u..][..4]
                    .copy_from_slice(&self.qs[32 * (8 * p + u) + 4 * r..][..4]);
            }
        }
        BlockQ4K {
            d: self.d[r],
            dmin: self.dmin[r],
            scales,
            qs,
        }
    }
}

/// Q6_K superblock of 8 rows. Codes 6-bit (stored q + 32): the low
/// nibbles in `ql`, byte 32(8(2h + c) + u) + 4r + e = row r's ql byte
/// 64h + 32c + 4u + e (low nibble: element 128h + 32c + 4u + e, high:
/// element + 64); the fifth and sixth bits in `qh`, byte 32(8h + u) + 4r + e
/// = row r's qh byte 32h + 4u + e (bits 2c'..2c'+2: element
/// 128h + 32c' + 4u + e). Scales of sub-blocks 2i, 2i + 1 of row r at
/// `sc[i][2r]`, `sc[i][2r + 1]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct X8Q6K {
    pub d: [[u8; 2]; ROWS],
    pub sc: [[i8; 2 * ROWS]; 8],
    pub ql: [u8; 1024],
    pub qh: [u8; 512],
}

impl Interleave for X8Q6K {
    type Block = BlockQ6K;
    fn pack(rows: [&BlockQ6K; ROWS]) -> Self {
        let mut x = Self::zeroed();
        for (r, b) in rows.iter().enumerate() {
            x.d[r] = b.d;
            for s in 0..16 {
                x.sc[s / 2][2 * r + s % 2] = b.scales[s];
            }
            for v in 0..32 {
                x.ql[32 * v + 4 * r..][..4].copy_from_slice(&b.ql[4 * v..][..4]);
            }
            for v in 0..16 {
                x.qh[32 * v + 4 * r..][..4].copy_from_slice(&b.qh[4 * v..][..4]);
            }
        }
        x
    }
    fn unpack(&self, r: usize) -> BlockQ6K {
        let mut b = BlockQ6K::zeroed();
        b.d = self.d[r];
        for s in 0..16 {
            b.scales[s] = self.sc[s / 2][2 * r + s % 2];
        }
        for v in 0..32 {
            b.ql[4 * v..][..4].copy_from_slice(&self.ql[32 * v + 4 * r..][..4]);
        }
        for v in 0..16 {
            b.qh[4 * v..][..4].copy_from_slice(&self.qh[32 * v + 4 * r..][..4]);
        }
        b
    }
}

/// Q8_0 block b of 8 rows: byte 32t + 4r + e of `qs` is row r's code
/// 4t + e.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct X8Q8_0 {
    pub d: [[u8; 2]; ROWS],
    pub qs: [i8; 256],
}

impl Interleave for X8Q8_0 {
    type Block = BlockQ8_0;
    fn pack(rows: [&BlockQ8_0; ROWS]) -> Self {
        let mut x = Self::zeroed();
        for (r, b) in rows.iter().enumerate() {
            x.d[r] = b.d;
            for t in 0..8 {
                x.qs[32 * t + 4 * r..][..4].copy_from_slice(&b.qs[4 * t..][..4]);
            }
        }
        x
    }
    fn unpack(&self, r: usize) -> BlockQ8_0 {
        let mut b = BlockQ8_0::zeroed();
        b.d = self.d[r];
        for t in 0..8 {
            b.qs[4 * t..][..4].copy_from_slice(&self.qs[32 * t + 4 * r..][..4]);
        }
        b
    }
}

/// (n, K) weights as ggml blocks -> ceil(n / 8) groups of bpr x8 blocks
/// (group-major, then block). Missing rows of the last group are zero
/// blocks (zero scales).
pub fn repack<X: Interleave>(blocks: &[X::Block], n: usize, bpr: usize) -> Vec<X> {
    let zero = X::Block::zeroed();
    let groups = n.div_ceil(ROWS);
    let mut out = Vec::with_capacity(groups * bpr);
    for g in 0..groups {
        for b in 0..bpr {
            let rows: [&X::Block; ROWS] = std::array::from_fn(|r| {
                let row = g * ROWS + r;
                if row < n {
                    &blocks[row * bpr + b]
                } else {
                    &zero
                }
            });
            out.push(X::pack(rows));
        }
    }
    out
}

/// [`repack`] in the buffer of the ggml blocks, for layouts of exactly the
/// 8 rows' bytes: each group's bytes are rearranged through a scratch copy
/// of one group (the weights are never held twice). The buffer grows by
/// zero rows to a whole number of groups.
pub fn repack_in_place<X: Interleave>(
    mut data: Vec<u8>,
    n: usize,
    bpr: usize,
) -> Result<Vec<u8>, CpuError> {
    let bs = size_of::<X::Block>();
    let group_bytes = ROWS * bpr * bs;
    if size_of::<X>() != ROWS * bs || data.len() != n * bpr * bs {
        return Err(CpuError::Shape(format!(
            "x8 repack: {} bytes for {n} rows of {bpr} blocks of {bs} bytes",
            data.len()
        )));
    }
    data.resize(n.div_ceil(ROWS) * group_bytes, 0);
    let mut scratch = vec![0u8; group_bytes];
    for group in data.chunks_exact_mut(group_bytes) {
        scratch.copy_from_slice(group);
        let blocks: &[X::Block] = bytemuck::cast_slice(&scratch);
        let out: &mut [X] = bytemuck::cast_slice_mut(group);
        for (b, o) in out.iter_mut().enumerate() {
            *o = X::pack(std::array::from_fn(|r| &blocks[r * bpr + b]));
        }
    }
    Ok(data)
}

/// The ggml blocks of row `row` (bpr blocks).
pub fn row_blocks<X: Interleave>(w: &[X], row: usize, bpr: usize) -> Vec<X::Block> {
    let (g, r) = (row / ROWS, row % ROWS);
    w[g * bpr..(g + 1) * bpr]
        .iter()
        .map(|x| x.unpack(r))
        .collect()
}

/// An x8 kernel: one group's bpr blocks `w` against RN activation rows
/// (`a`: RN x bpr blocks, row-major); `out[j][r]` = weight row r dotted with
/// activation row j. RN is fixed by the kernel.
pub type X8Tile<X, A> = fn(w: &[X], a: &[A], bpr: usize, out: &mut [[f32; ROWS]]);

/// The x8 kernels of one format: 1 to 4 activation rows.
pub struct X8Dots<X: 'static, A: 'static = ActQ8x32> {
    pub acts: [X8Tile<X, A>; 4],
}

impl<X, A> Clone for X8Dots<X, A> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<X, A> Copy for X8Dots<X, A> {}

/// Output pointer shared by the tasks of [`run_x8`]; each task writes only
/// the columns of its own groups.
struct OutPtr(*mut f32);
// SAFETY: tasks write disjoint elements (see `run_x8`), and the caller's
// `&mut [f32]` outlives the pool job.
unsafe impl Sync for OutPtr {}
unsafe impl Send for OutPtr {}

/// `y (m, n) = x · Wᵀ` for x8 weights `w` (ceil(n/8) groups x bpr blocks):
/// groups split over the pool; each task runs its groups against every
/// activation row, in tiles of up to 4 rows, writing y directly.
pub fn run_x8<X: Sync, A: Sync>(
    w: &[X],
    acts: &[A],
    m: usize,
    n: usize,
    bpr: usize,
    y: &mut [f32],
    dots: X8Dots<X, A>,
) -> Result<(), CpuError> {
    let groups = n.div_ceil(ROWS);
    if w.len() != groups * bpr || acts.len() != m * bpr || y.len() != m * n {
        return Err(CpuError::Shape(format!(
            "x8 matmul: {} blocks for {n} rows, {} activation blocks for {m} rows, y {}",
            w.len(),
            acts.len(),
            y.len()
        )));
    }
    let pool = crate::pool::current();
    // Enough tasks to balance the threads, each at least ~16K multiply-adds.
    let k = bpr * size_of::<A>(); // ~ K: activation bytes per row
    let min_groups = (16_384 / (k * ROWS * m).max(1)).max(1);
    let per_task = groups.div_ceil(pool.threads() * 4).max(min_groups);
    let tasks = groups.div_ceil(per_task);
    let out = OutPtr(y.as_mut_ptr());
    let out = &out;
    pool.try_for_each(tasks, |t| {
        let mut tile = [[0f32; ROWS]; 4];
        for g in t * per_task..((t + 1) * per_task).min(groups) {
            let wg = &w[g * bpr..(g + 1) * bpr];
            let (col0, cols) = (g * ROWS, ROWS.min(n - g * ROWS));
            let mut j = 0;
            while j < m {
                let rn = (m - j).min(4);
                (dots.acts[rn - 1])(wg, &acts[j * bpr..(j + rn) * bpr], bpr, &mut tile[..rn]);
                for (jj, row) in tile[..rn].iter().enumerate() {
                    let dst = (j + jj) * n + col0;
                    // SAFETY: dst..dst + cols is inside y (j + jj < m,
                    // col0 + cols <= n), and only this task writes the
                    // columns of group g.
                    unsafe {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), out.0.add(dst), cols);
                    }
                }
                j += rn;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn repack_round_trips() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let (n, bpr) = (13, 3);
        let mut bytes = vec![0u8; n * bpr * size_of::<BlockQ5_0>()];
        rng.fill(bytes.as_mut_slice());
        let q5: Vec<BlockQ5_0> = bytemuck::cast_slice(&bytes).to_vec();
        let x5 = repack::<X8Q5_0>(&q5, n, bpr);
        assert_eq!(x5.len(), 2 * bpr);
        let in_place = repack_in_place::<X8Q5_0>(bytes.clone(), n, bpr).unwrap();
        assert_eq!(in_place, bytemuck::cast_slice::<_, u8>(&x5));
        for row in 0..n {
            let got = row_blocks(&x5, row, bpr);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&q5[row * bpr..(row + 1) * bpr])
            );
        }
        let mut bytes = vec![0u8; n * bpr * size_of::<BlockQ4_1>()];
        rng.fill(bytes.as_mut_slice());
        let q4: Vec<BlockQ4_1> = bytemuck::cast_slice(&bytes).to_vec();
        let x4 = repack::<X8Q4_1>(&q4, n, bpr);
        for row in 0..n {
            let got = row_blocks(&x4, row, bpr);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&q4[row * bpr..(row + 1) * bpr])
            );
        }
        let mut bytes = vec![0u8; n * bpr * size_of::<BlockQ4K>()];
        rng.fill(bytes.as_mut_slice());
        let qk: Vec<BlockQ4K> = bytemuck::cast_slice(&bytes).to_vec();
        let xk = repack::<X8Q4K>(&qk, n, bpr);
        for row in 0..n {
            let got = row_blocks(&xk, row, bpr);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&qk[row * bpr..(row + 1) * bpr])
            );
        }
        let mut bytes = vec![0u8; n * bpr * size_of::<BlockQ6K>()];
        rng.fill(bytes.as_mut_slice());
        let q6: Vec<BlockQ6K> = bytemuck::cast_slice(&bytes).to_vec();
        let x6 = repack::<X8Q6K>(&q6, n, bpr);
        let mut bytes = vec![0u8; n * bpr * size_of::<BlockQ8_0>()];
        rng.fill(bytes.as_mut_slice());
        let q8: Vec<BlockQ8_0> = bytemuck::cast_slice(&bytes).to_vec();
        let x8 = repack::<X8Q8_0>(&q8, n, bpr);
        for row in 0..n {
            let got = row_blocks(&x8, row, bpr);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&q8[row * bpr..(row + 1) * bpr])
            );
        }
        for row in 0..n {
            let got = row_blocks(&x6, row, bpr);
            assert_eq!(
                bytemuck::cast_slice::<_, u8>(&got),
                bytemuck::cast_slice::<_, u8>(&q6[row * bpr..(row + 1) * bpr])
            );
        }
    }
}
