//! Scales (and zero points) arranged so that a kernel gets the 8 lane values
//! of superblock `sb` with one load and one permute.
//!
//! Lane `l` of superblock `sb` covers columns `sb*256 + 32*l .. +32` (two
//! halves of 16 when groups are 16 wide, e.g. NVFP4). Its value sits at
//! `row_offset + base[sb] + idx[l]` (+ 8 for the second half).

use super::actq::{LANES, SB};
use super::codes::ScaleGrid;

/// Lane offsets of 8 consecutive values.
const CONSECUTIVE: [u32; LANES] = [0, 1, 2, 3, 4, 5, 6, 7];

/// Grid values in the smallest dtype that holds all of them exactly.
#[derive(Clone)]
pub(crate) enum GridValues {
    F32(Vec<f32>),
    /// IEEE half bits.
    F16(Vec<u16>),
    /// Biased power-of-two exponents (OCP E8M0): value = 2^(e - 127), e in 1..=254.
    /// Padding entries are 0 and read as +0.0 by the kernels.
    E8M0(Vec<u8>),
}

impl GridValues {
    fn from_f32(vals: Vec<f32>) -> Self {
        let is_pow2 = |v: f32| {
            let b = v.to_bits();
            v == 0.0 || (b & 0x807F_FFFF == 0 && (b >> 23) != 0 && (b >> 23) != 255)
        };
        if vals.iter().all(|&v| is_pow2(v)) {
            return GridValues::E8M0(vals.iter().map(|v| (v.to_bits() >> 23) as u8).collect());
        }
        let f16_exact = |v: f32| half::f16::from_f32(v).to_f32() == v;
        if vals.iter().all(|&v| f16_exact(v)) {
            return GridValues::F16(
                vals.iter()
                    .map(|&v| half::f16::from_f32(v).to_bits())
                    .collect(),
            );
        }
        GridValues::F32(vals)
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            GridValues::F32(v) => v[i],
            GridValues::F16(v) => half::f16::from_bits(v[i]).to_f32(),
            GridValues::E8M0(v) => f32::from_bits(u32::from(v[i]) << 23),
        }
    }

    pub fn bytes(&self) -> usize {
        match self {
            GridValues::F32(v) => v.len() * 4,
            GridValues::F16(v) => v.len() * 2,
            GridValues::E8M0(v) => v.len(),
        }
    }
}

/// Per-lane view of a scale grid (see the module comment).
#[derive(Clone)]
pub(crate) struct LaneGrid {
    pub values: GridValues,
    /// Entries per grid row in `values`.
    pub row_stride: usize,
    /// Weight rows per grid row.
    pub rows_per: usize,
    /// (n_sb) offset of superblock `sb` within a grid row.
    pub base: Vec<u32>,
    /// Offset of lane `l` from `base[sb]`.
    pub idx: [u32; LANES],
    /// Two values per lane (half blocks of 16 columns), the second at +8.
    pub halves: bool,
    /// `idx` is 0..8 (groups of 32 and expanded grids): the 8 lane values
    /// are consecutive, a kernel loads them without a permute.
    pub consecutive: bool,
}

impl LaneGrid {
    /// Arranges `vals` (on `grid`) for K = `k` columns; `None` when a
    /// group's column extent is not a multiple of 16.
    pub fn new(vals: &[f32], grid: &ScaleGrid, k: usize) -> Option<Self> {
        // `base` holds u32 offsets of at most about K / 16: a K of 2^36
        // columns or more (a 32 GiB row) takes the generic path instead of
        // wrapping them.
        if k as u64 >= 1 << 36 {
            return None;
        }
        let n_sb = k.div_ceil(SB);
        let c = grid.cols_per;
        let natural = |idx: [u32; LANES], per_sb_div: usize| {
            let mut v = vals.to_vec();
            // Padding so that an 8-wide load at any base stays in bounds.
            v.extend_from_slice(&[0.0; LANES]);
            LaneGrid {
                values: GridValues::from_f32(v),
                row_stride: grid.grid_cols,
                rows_per: grid.rows_per,
                base: (0..n_sb).map(|sb| (sb * SB / per_sb_div) as u32).collect(),
                idx,
                halves: false,
                consecutive: idx == CONSECUTIVE,
            }
        };
        let lane_idx = |f: &dyn Fn(usize) -> usize| {
            let mut idx = [0u32; LANES];
            for (l, i) in idx.iter_mut().enumerate() {
                *i = f(l) as u32;
            }
            idx
        };
        if grid.grid_cols == 1 {
            return Some(natural([0; LANES], usize::MAX));
        }
        if matches!(c, 32 | 64 | 128 | 256) {
            return Some(natural(lane_idx(&|l| l * 32 / c), c));
        }
        if c.is_multiple_of(SB) {
            return Some(natural([0; LANES], c));
        }
        let halves = !c.is_multiple_of(32);
        if !c.is_multiple_of(16) {
            return None;
        }
        // Expanded: one entry per lane (or half lane) of every superblock.
        let per_sb = if halves { 2 * LANES } else { LANES };
        let row_stride = n_sb * per_sb;
        let mut out = Vec::with_capacity(grid.grid_rows * row_stride + LANES);
        for gr in 0..grid.grid_rows {
            for sb in 0..n_sb {
                for slot in 0..per_sb {
                    let (h, l) = (slot / LANES, slot % LANES);
                    let col = sb * SB + 32 * l + 16 * h;
                    out.push(if col < k {
                        vals[gr * grid.grid_cols + col / c]
                    } else {
                        0.0
                    });
                }
            }
        }
        out.extend_from_slice(&[0.0; LANES]);
        Some(LaneGrid {
            values: GridValues::from_f32(out),
            row_stride,
            rows_per: grid.rows_per,
            base: (0..n_sb).map(|sb| (sb * per_sb) as u32).collect(),
            idx: CONSECUTIVE,
            halves,
            consecutive: true,
        })
    }

    /// Offset of weight row `r`'s grid row.
    #[inline]
    pub fn row_offset(&self, r: usize) -> usize {
        (r / self.rows_per) * self.row_stride
    }

    /// Values of row `r` expanded to f32, at `sb*16 + 8*h + l` (h = 0 only
    /// when `!halves`; the second half then repeats the first).
    pub fn expand_row(&self, r: usize, out: &mut [f32]) {
        let off = self.row_offset(r);
        for (sb, &base) in self.base.iter().enumerate() {
            for h in 0..2 {
                for l in 0..LANES {
                    let i = if self.halves {
                        off + base as usize + 8 * h + l
                    } else {
                        off + base as usize + self.idx[l] as usize
                    };
                    out[sb * 2 * LANES + h * LANES + l] = self.values.get(i);
                }
            }
        }
    }
}
