//! One `#[repr(C)]` struct per ggml block, byte for byte as ggml stores it
//! (ggml-common.h).
//!
//! Every multi-byte field is kept as little-endian bytes (`[u8; 2]` for an
//! f16, `[u8; 4]` for an f32), so each block has alignment 1: a slice of
//! blocks can be cast from any byte slice of the right length, whatever its
//! address (tensor data in a memory-mapped file need not be aligned).

use bytemuck::{Pod, Zeroable};
use half::f16;

/// Elements per block of the K-quants.
pub const QK_K: usize = 256;
/// Elements per block of the 32-element formats.
pub const QK32: usize = 32;

#[inline]
pub(crate) fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Q4_0: `{ f16 d; u8 qs[16] }`; x = d * (nibble - 8); element j < 16 is the
/// low nibble of qs[j], element j + 16 its high nibble.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_0>() == 18);

/// Q4_1: `{ f16 d; f16 m; u8 qs[16] }`; x = d * nibble + m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ4_1>() == 20);

/// Q5_0: `{ f16 d; u8 qh[4]; u8 qs[16] }`; bit j of the little-endian u32
/// qh is bit 4 of element j; x = d * (q5 - 16).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_0>() == 22);

/// Q5_1: `{ f16 d; f16 m; u8 qh[4]; u8 qs[16] }`; x = d * q5 + m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockQ5_1>() == 24);

/// Q8_0: `{ f16 d; i8 qs[32] }`; x = d * q.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_0>() == 34);

/// Q8_1: `{ f16 d; f16 s; i8 qs[32] }` with s = d * sum(qs); x = d * q.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [i8; 32],
}
const _: () = assert!(size_of::<BlockQ8_1>() == 36);

/// Q2_K: `{ u8 scales[16]; u8 qs[64]; f16 d; f16 dmin }`; 16 sub-blocks of
/// 16, each with a 4-bit scale (low nibble) and 4-bit min (high nibble);
/// x = d * sc * q2 - dmin * m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ2K>() == 84);

/// Q3_K: `{ u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d }`; 16 sub-blocks
/// of 16 with 6-bit scales (offset 32); x = d * (sc - 32) * (q2 - 4 * !hbit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ3K>() == 110);

/// Q4_K: `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }`; 8 sub-blocks of
/// 32 with 6-bit scales and mins; x = d * sc * q4 - dmin * m.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ4K>() == 144);

/// Q5_K: `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }`; as
/// Q4_K with a fifth bit per element in qh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}
const _: () = assert!(size_of::<BlockQ5K>() == 176);

/// Q6_K: `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }`; 16 sub-blocks of
/// 16 with signed 8-bit scales; x = d * sc * (q6 - 32).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [i8; 16],
    pub d: [u8; 2],
}
const _: () = assert!(size_of::<BlockQ6K>() == 210);

/// Q8_K: `{ f32 d; i8 qs[256]; i16 bsums[16] }` with bsums the sums of each
/// group of 16 qs; x = d * q. (ggml uses it for activations only.)
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; 256],
    pub bsums: [[u8; 2]; 16],
}
const _: () = assert!(size_of::<BlockQ8K>() == 292);

/// MXFP4: `{ u8 e; u8 qs[16] }`; E8M0 shared exponent and 32 E2M1 codes
/// (low nibbles first); x = KVALUES_MXFP4[code] * 2^(e - 128).
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct BlockMxfp4 {
    pub e: u8,
    pub qs: [u8; 16],
}
const _: () = assert!(size_of::<BlockMxfp4>() == 17);

/// E2M1 values doubled, indexed by the 4-bit code (ggml `kvalues_mxfp4`).
pub const KVALUES_MXFP4: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half of the E8M0 scale as f32, i.e. 2^(e - 128), as ggml computes it
/// (`ggml_e8m0_to_fp32_half`): exact, with subnormal results for e < 2 and
/// e = 255 read as 2^127 rather than NaN.
#[inline]
pub fn e8m0_to_f32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        (u32::from(e) - 1) << 23
    };
    f32::from_bits(bits)
}

/// The 6-bit (scale, min) of sub-block `j` (0..8) of a Q4_K/Q5_K block
/// (ggml `get_scale_min_k4`).
#[inline]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The 16 signed scales (6-bit, minus 32) of a Q3_K block.
#[inline]
pub fn q3k_scales(q: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { q[j] & 0xF } else { q[j - 8] >> 4 };
        let high = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
        // 6-bit value in 0..64, so the subtraction stays in i8 range.
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

macro_rules! f16_getter {
    ($ty:ty, $($field:ident),+) => {
        impl $ty {
            $(
                #[inline]
                pub fn $field(&self) -> f32 {
                    f16_le(self.$field)
                }
            )+
        }
    };
}

// Accessor methods named after their field, returning the stored f16 as f32.
f16_getter!(BlockQ4_0, d);
f16_getter!(BlockQ4_1, d, m);
f16_getter!(BlockQ5_0, d);
f16_getter!(BlockQ5_1, d, m);
f16_getter!(BlockQ8_0, d);
f16_getter!(BlockQ8_1, d, s);
f16_getter!(BlockQ2K, d, dmin);
f16_getter!(BlockQ3K, d);
f16_getter!(BlockQ4K, d, dmin);
f16_getter!(BlockQ5K, d, dmin);
f16_getter!(BlockQ6K, d);

impl BlockQ5_0 {
    /// The 32 fifth bits, bit j for element j.
    #[inline]
    pub fn qh_bits(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

impl BlockQ5_1 {
    /// The 32 fifth bits, bit j for element j.
    #[inline]
    pub fn qh_bits(&self) -> u32 {
        u32::from_le_bytes(self.qh)
    }
}

impl BlockQ8K {
    #[inline]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }

    #[inline]
    pub fn bsum(&self, i: usize) -> i16 {
        i16::from_le_bytes(self.bsums[i])
    }
}
