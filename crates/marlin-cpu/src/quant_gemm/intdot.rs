//! Integer-dot weights: INT2/3/4/5-8 and FP4 codes repacked into interleaved
//! superblocks (see `actq`), multiplied with int8 activations.
//!
//! Every code is stored as a small integer `u = mult * value + offset`
//! (unsigned for the 2-4 bit forms, signed int8 for `Byte`), so that
//!
//! `y = post * Σ_lanes s * dx * (Σ u*q - zf * Σ q)`, with `zf = mult * zero + offset`,
//! `post = global_scale / mult`.
//!
//! FP4 E2M1 values are half-integers: `2 * value + 12` is an integer in
//! [0, 24] (looked up with a 16-entry byte shuffle at run time), `mult = 2`.

use super::actq::{interleaved_pos, QuantActs, LANES, SB};
#[cfg(test)]
use super::codes::decode_e2m1;
use super::codes::{read_code, CheckedTensor};
use super::lanegrid::LaneGrid;
use marlin_quant::{ElementType, Granularity};

/// Storage form of the codes of one superblock (256 elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodeFormat {
    /// 4-bit offset-binary integers, two per byte: 128 bytes.
    Nibble,
    /// 4-bit FP4 E2M1 codes mapped through [`FP4_LUT`]: 128 bytes.
    Fp4Lut,
    /// 2-bit integers, four per byte: 64 bytes.
    Crumb,
    /// 3-bit integers: a 2-bit plane (64 bytes) plus a high-bit plane (32 bytes).
    Int3,
    /// Signed bytes (INT5..INT8): 256 bytes.
    Byte,
}

/// Format ids for const generics.
pub(crate) const F_NIBBLE: u8 = 0;
pub(crate) const F_FP4: u8 = 1;
pub(crate) const F_CRUMB: u8 = 2;
pub(crate) const F_INT3: u8 = 3;
pub(crate) const F_BYTE: u8 = 4;

impl CodeFormat {
    pub fn id(self) -> u8 {
        match self {
            CodeFormat::Nibble => F_NIBBLE,
            CodeFormat::Fp4Lut => F_FP4,
            CodeFormat::Crumb => F_CRUMB,
            CodeFormat::Int3 => F_INT3,
            CodeFormat::Byte => F_BYTE,
        }
    }
}

/// Bytes per superblock.
pub(crate) const fn sb_bytes(fmt: u8) -> usize {
    match fmt {
        F_NIBBLE | F_FP4 => 128,
        F_CRUMB => 64,
        F_INT3 => 96,
        _ => 256,
    }
}

/// Vectors accumulated in i16 before widening: the largest code times 127,
/// times 2 (pairs), times the depth must stay below 32767.
pub(crate) const fn depth(fmt: u8) -> usize {
    match fmt {
        F_NIBBLE | F_CRUMB | F_INT3 => 8, // 15 * 127 * 2 * 8 = 30480
        F_FP4 => 4,                       // 24 * 127 * 2 * 4 = 24384
        _ => 1,                           // 128 * 127 * 2 = 32512 (sign trick)
    }
}

/// FP4 E2M1 code -> 2 * value + 12.
pub(crate) const FP4_LUT: [u8; 16] = [12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0];

/// INT/FP4 weights in interleaved superblocks.
#[derive(Clone)]
pub(crate) struct IntDotWeights {
    pub fmt: CodeFormat,
    pub n_sb: usize,
    /// (N, n_sb * sb_bytes) packed superblocks.
    pub codes: Vec<u8>,
    pub scales: LaneGrid,
    /// `mult * zero + offset` on the scale grid, when the scheme has zeros.
    pub zeros: Option<LaneGrid>,
    /// `offset`, when it does not.
    pub zf_const: f32,
    pub post_scale: f32,
    /// Physical column c holds original column `perm[c]` (act-order).
    pub perm: Option<Vec<u32>>,
}

impl IntDotWeights {
    /// `None` when the scheme has no integer-dot form here (NF4, FP8, group
    /// extents that are not multiples of 16, irregular g_idx).
    pub fn new(ct: &CheckedTensor) -> Option<Self> {
        let t = ct.t;
        let (fmt, mult, offset) = match t.scheme.element {
            ElementType::Int { bits, signed } => {
                let half = 1i32 << (bits - 1);
                match bits {
                    4 => (CodeFormat::Nibble, 1, if signed { half } else { 0 }),
                    3 => (CodeFormat::Int3, 1, if signed { half } else { 0 }),
                    2 => (CodeFormat::Crumb, 1, if signed { half } else { 0 }),
                    _ => (CodeFormat::Byte, 1, if signed { 0 } else { -half }),
                }
            }
            ElementType::Fp4E2M1 => (CodeFormat::Fp4Lut, 2, 12),
            _ => return None,
        };
        let (n, k) = (t.rows, t.cols);
        let perm = match &t.g_idx {
            None => None,
            Some(g_idx) => Some(regular_group_perm(g_idx, &t.scheme.granularity)?),
        };
        let scales = LaneGrid::new(&t.scales, &ct.grid, k)?;
        let zeros = match &t.zeros {
            Some(z) => {
                let zf: Vec<f32> = z.iter().map(|&z| mult as f32 * z + offset as f32).collect();
                Some(LaneGrid::new(&zf, &ct.grid, k)?)
            }
            None => None,
        };
        let n_sb = k.div_ceil(SB);
        let sbb = sb_bytes(fmt.id());
        let mut codes = vec![0u8; n * n_sb * sbb];
        let mut sb_codes = [0u8; SB];
        for r in 0..n {
            let row = ct.row(r);
            for sb in 0..n_sb {
                for (e, u) in sb_codes.iter_mut().enumerate() {
                    let phys = sb * SB + e;
                    *u = if phys < k {
                        let col = perm.as_ref().map_or(phys, |p| p[phys] as usize);
                        let c = read_code(row, col, ct.bits);
                        stored_code(t.scheme.element, c, offset)
                    } else {
                        pad_code(fmt, offset)
                    };
                }
                let out = &mut codes[(r * n_sb + sb) * sbb..(r * n_sb + sb + 1) * sbb];
                pack_superblock(fmt, &sb_codes, out);
            }
        }
        Some(IntDotWeights {
            fmt,
            n_sb,
            codes,
            scales,
            zeros,
            zf_const: offset as f32,
            post_scale: t.global_scale / mult as f32,
            perm,
        })
    }

    pub fn row_codes(&self, r: usize) -> &[u8] {
        let w = self.n_sb * sb_bytes(self.fmt.id());
        &self.codes[r * w..(r + 1) * w]
    }

    /// Bytes a kernel streams per call (codes, scales, zeros).
    pub fn stream_bytes(&self) -> usize {
        self.codes.len()
            + self.scales.values.bytes()
            + self.zeros.as_ref().map_or(0, |z| z.values.bytes())
    }

    /// Scales and zero offsets of row `r` expanded to (n_sb, 2, 8) f32.
    pub fn expand_row(&self, r: usize, s: &mut [f32], zf: &mut [f32]) {
        self.scales.expand_row(r, s);
        match &self.zeros {
            Some(z) => z.expand_row(r, zf),
            None => zf.fill(self.zf_const),
        }
    }

    /// Scalar kernel: rows `rows` of W against all rows of `acts`, written
    /// to `yt` (rows.len(), m), row-major.
    pub fn rows_scalar(&self, acts: &QuantActs, rows: std::ops::Range<usize>, yt: &mut [f32]) {
        let m = acts.m;
        let w = self.n_sb * 2 * LANES;
        let (mut s, mut zf) = (vec![0f32; w], vec![0f32; w]);
        let mut u = [0u8; SB];
        let halves = self.scales.halves;
        let sbb = sb_bytes(self.fmt.id());
        for (ri, r) in rows.enumerate() {
            self.expand_row(r, &mut s, &mut zf);
            let codes = self.row_codes(r);
            let mut acc = vec![[0f32; LANES]; m];
            for sb in 0..self.n_sb {
                unpack_superblock(self.fmt, &codes[sb * sbb..(sb + 1) * sbb], &mut u);
                for (mi, acc) in acc.iter_mut().enumerate() {
                    let q = &acts.row_q(mi)[sb * SB..(sb + 1) * SB];
                    for (l, a) in acc.iter_mut().enumerate() {
                        let mut dots = [0i32; 2];
                        for v in 0..8 {
                            for t in 0..4 {
                                let p = 32 * v + 4 * l + t;
                                let wv = if self.fmt == CodeFormat::Byte {
                                    i32::from(u[p] as i8)
                                } else {
                                    i32::from(u[p])
                                };
                                dots[v / 4] += wv * i32::from(q[p]);
                            }
                        }
                        let dx = acts.row_dx(mi)[sb * LANES + l];
                        let nh = if halves { 2 } else { 1 };
                        for h in 0..nh {
                            let (dot, xs) = if halves {
                                (
                                    dots[h],
                                    acts.row_xsum_half(mi)[sb * 2 * LANES + h * LANES + l],
                                )
                            } else {
                                (dots[0] + dots[1], acts.row_xsum(mi)[sb * LANES + l])
                            };
                            let i = sb * 2 * LANES + h * LANES + l;
                            *a += s[i] * dx * (dot as f32 - zf[i] * xs);
                        }
                    }
                }
            }
            for (mi, acc) in acc.iter().enumerate() {
                yt[ri * m + mi] = acc.iter().sum::<f32>() * self.post_scale;
            }
        }
    }
}

/// Sorting permutation of act-order columns when every group has exactly
/// `group_size` members (GPTQ's g_idx); `None` otherwise.
fn regular_group_perm(g_idx: &[u32], g: &Granularity) -> Option<Vec<u32>> {
    let Granularity::PerGroup { group_size } = *g else {
        return None;
    };
    // Columns are u32 here; a longer row takes the generic path.
    let mut perm: Vec<u32> = (0..u32::try_from(g_idx.len()).ok()?).collect();
    perm.sort_by_key(|&c| g_idx[c as usize]);
    let regular = perm
        .iter()
        .enumerate()
        .all(|(phys, &c)| g_idx[c as usize] as usize == phys / group_size);
    regular.then_some(perm)
}

/// Offset form of one code (see the module comment).
fn stored_code(el: ElementType, code: u8, offset: i32) -> u8 {
    match el {
        ElementType::Int { bits, signed } => {
            let half = 1i32 << (bits - 1);
            let c = i32::from(code);
            let v = if signed && c >= half { c - 2 * half } else { c };
            (v + offset) as u8
        }
        // FP4 keeps its raw code; the LUT applies at unpack time.
        _ => code,
    }
}

/// A code for padding columns (x is 0 there, any in-range code works).
fn pad_code(fmt: CodeFormat, offset: i32) -> u8 {
    match fmt {
        CodeFormat::Fp4Lut => 0,
        _ => offset as u8,
    }
}

/// Packs 256 codes (natural order) into one superblock of `fmt`.
pub(crate) fn pack_superblock(fmt: CodeFormat, codes: &[u8; SB], out: &mut [u8]) {
    // vecs[v][i]: interleaved byte i of vector v.
    let mut vecs = [[0u8; 32]; 8];
    for (e, &c) in codes.iter().enumerate() {
        let p = interleaved_pos(e);
        vecs[p / 32][p % 32] = c;
    }
    out.fill(0);
    for i in 0..32 {
        match fmt {
            CodeFormat::Nibble | CodeFormat::Fp4Lut => {
                for c in 0..4 {
                    out[32 * c + i] = (vecs[2 * c][i] & 0xF) | (vecs[2 * c + 1][i] << 4);
                }
            }
            CodeFormat::Crumb | CodeFormat::Int3 => {
                for c in 0..2 {
                    for j in 0..4 {
                        out[32 * c + i] |= (vecs[4 * c + j][i] & 3) << (2 * j);
                    }
                }
                if fmt == CodeFormat::Int3 {
                    for (v, vec) in vecs.iter().enumerate() {
                        out[64 + i] |= ((vec[i] >> 2) & 1) << v;
                    }
                }
            }
            CodeFormat::Byte => {
                for (v, vec) in vecs.iter().enumerate() {
                    out[32 * v + i] = vec[i];
                }
            }
        }
    }
}

/// Unpacks one superblock into interleaved bytes (`u[32*v + i]`), FP4 through
/// the LUT; `Byte` values are i8 bit patterns.
pub(crate) fn unpack_superblock(fmt: CodeFormat, sb: &[u8], u: &mut [u8; SB]) {
    for i in 0..32 {
        for v in 0..8 {
            u[32 * v + i] = match fmt {
                CodeFormat::Nibble => (sb[32 * (v / 2) + i] >> (4 * (v % 2))) & 0xF,
                CodeFormat::Fp4Lut => {
                    FP4_LUT[usize::from((sb[32 * (v / 2) + i] >> (4 * (v % 2))) & 0xF)]
                }
                CodeFormat::Crumb => (sb[32 * (v / 4) + i] >> (2 * (v % 4))) & 3,
                CodeFormat::Int3 => {
                    let lo = (sb[32 * (v / 4) + i] >> (2 * (v % 4))) & 3;
                    lo | (((sb[64 + i] >> v) & 1) << 2)
                }
                CodeFormat::Byte => sb[32 * v + i],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fp4_lut_matches_e2m1() {
        for c in 0..16u8 {
            assert_eq!(
                f32::from(FP4_LUT[usize::from(c)]),
                2.0 * decode_e2m1(c) + 12.0,
                "code {c}"
            );
        }
    }

    #[test]
    fn pack_unpack_round_trip() {
        let mut codes = [0u8; SB];
        for fmt in [
            CodeFormat::Nibble,
            CodeFormat::Crumb,
            CodeFormat::Int3,
            CodeFormat::Byte,
        ] {
            let max = match fmt {
                CodeFormat::Nibble => 16u32,
                CodeFormat::Crumb => 4,
                CodeFormat::Int3 => 8,
                _ => 256,
            };
            for (e, c) in codes.iter_mut().enumerate() {
                *c = ((e as u32 * 7919 + 13) % max) as u8;
            }
            let mut packed = vec![0u8; sb_bytes(fmt.id())];
            pack_superblock(fmt, &codes, &mut packed);
            let mut u = [0u8; SB];
            unpack_superblock(fmt, &packed, &mut u);
            for (e, &c) in codes.iter().enumerate() {
                assert_eq!(u[interleaved_pos(e)], c, "{fmt:?} element {e}");
            }
        }
    }
}
