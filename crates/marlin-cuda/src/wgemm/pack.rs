//! Host-side repack of FP4 / INT8 / FP8 [`QuantTensor`]s into the layout of
//! `kernels/wxa16_gemm.cu` (see the comment at the top of that file). Pure
//! Rust: tested without a GPU.

use half::f16;
use marlin_quant::{ElementType, Granularity, Layout, QuantTensor, ZeroPoint};

use crate::error::{CudaError, Result};
use crate::int4::pack::{K_CHUNK, N_TILE};

/// Kernel family of a packed weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WxFormat {
    /// FP4 E2M1 codes, f16 scale per lane's 16-run (groups of 16 or 32:
    /// NVFP4, MXFP4) applied in f16, a per-tensor fp32 factor.
    Fp4,
    /// Signed INT8 codes, fp32 scales per (K group, column).
    Int8,
    /// FP8 E4M3 codes, fp32 scales per (K group, column).
    Fp8,
    /// 3-bit integer codes (signed symmetric or unsigned with integer zero
    /// points), f16 scale and zero per (K group, column).
    Int3,
    /// 2-bit integer codes, as `Int3`.
    Int2,
}

impl WxFormat {
    /// u32 code words per lane per 64-chunk (32 codes).
    pub fn lane_words(self) -> usize {
        match self {
            WxFormat::Fp4 => 4,
            WxFormat::Int8 | WxFormat::Fp8 => 8,
            WxFormat::Int3 => 3,
            WxFormat::Int2 => 2,
        }
    }

    /// INT3 / INT2: codes in 4-byte planes (one u32 per lane per plane),
    /// scale and zero per group in `scale_zero`. The others use 16-byte
    /// vectors per lane and fp32 `scales32`.
    pub fn is_low_bit(self) -> bool {
        matches!(self, WxFormat::Int3 | WxFormat::Int2)
    }

    /// Short name (kernel prefix and benchmark label).
    pub fn name(self) -> &'static str {
        match self {
            WxFormat::Fp4 => "fp4",
            WxFormat::Int8 => "int8",
            WxFormat::Fp8 => "fp8",
            WxFormat::Int3 => "int3",
            WxFormat::Int2 => "int2",
        }
    }
}

/// A weight in the kernel's layout, still on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct WxPacked {
    pub format: WxFormat,
    pub n: usize,
    pub k: usize,
    /// N rounded up to 64 (padded columns have zero scales).
    pub n_pad: usize,
    /// K rounded up to 64 (padded codes are zero and meet zero activations).
    pub k_pad: usize,
    /// K group of `scales32`, in 64-chunks (whole K: `k_pad / 64`).
    pub group_chunks: usize,
    /// Number of K groups of `scales32`.
    pub groups: usize,
    /// Codes, `lane_words` u32 per lane per chunk: FP4 / 8-bit (n_pad/64,
    /// k_pad/64, 4 warps, lane_words/4 vectors, 32 lanes, 4); INT3 / INT2
    /// (n_pad/64, k_pad/64, 4 warps, lane_words planes, 32 lanes).
    pub words: Vec<u32>,
    /// FP4 only: (n_pad/64, k_pad/64, 4, 32) f16x2 scales (column g, 8 + g)
    /// of each lane's 16-run, times 2^14 / the per-tensor factor. Empty else.
    pub scales16: Vec<u32>,
    /// (groups, n_pad) fp32 column scales (FP4: the per-tensor factor).
    /// Empty for INT3 / INT2.
    pub scales32: Vec<f32>,
    /// INT3 / INT2: (groups, n_pad) f16 scale bits | zero point << 16 (the
    /// zero of the unsigned code, 2^(b-1) for signed codes). Empty else.
    pub scale_zero: Vec<u32>,
}

impl WxPacked {
    pub fn k_chunks(&self) -> usize {
        self.k_pad / K_CHUNK
    }

    /// Bytes one GEMM call streams (codes and scales).
    pub fn weight_bytes(&self) -> usize {
        4 * (self.words.len() + self.scales16.len() + self.scales32.len() + self.scale_zero.len())
    }
}

/// Index (u32) of the lane's code word `w` (0..lane_words) of chunk `c`,
/// n16 block `nb`: FP4 / 8-bit in 16-byte vectors per lane (word w = element
/// w % 4 of vector w / 4), INT3 / INT2 in planes of one u32 per lane (so a
/// warp's 4-byte copies of one plane are 128 contiguous bytes).
pub(crate) fn word_index(
    format: WxFormat,
    nb: usize,
    c: usize,
    lane: usize,
    w: usize,
    k_chunks: usize,
) -> usize {
    let lw = format.lane_words();
    let base = ((nb / 4) * k_chunks + c) * 4 + nb % 4;
    if format.is_low_bit() {
        (base * lw + w) * 32 + lane
    } else {
        (((base * (lw / 4) + w / 4) * 32) + lane) * 4 + w % 4
    }
}

/// Index of the FP4 f16x2 scale of lane `lane`, chunk `c`, n16 block `nb`.
pub(crate) fn scale16_index(nb: usize, c: usize, lane: usize, k_chunks: usize) -> usize {
    (((nb / 4) * k_chunks + c) * 4 + nb % 4) * 32 + lane
}

/// Where bit `bit` of the code of (k16 step j, column half, slot) lives in
/// the lane's words: (word, bit position). Fragment register i = half +
/// 2*(slot >> 1) of step j holds the slot pair's codes in its low (even
/// slot) and high (odd slot) f16 element.
/// - FP4: word j, nibble i (low element) or i + 4 (high).
/// - 8-bit: word 2j + (i >> 1), byte 2*(i & 1) (+1 for the high element).
/// - INT2: register f = 4j + i in word j >> 1, bits 8*(j & 1) + 2i (+16
///   for the high element): each half-word's low byte holds 4 codes that
///   the kernel masks without shifting (the 1024 magic exponent).
/// - INT3: f < 15 in word f / 5, bits 3*(f % 5) (+16): 5 codes per
///   half-word; f = 15 spreads its code bits b over bit 15 (+16) of word b.
pub(crate) fn code_bit_position(
    format: WxFormat,
    j: usize,
    half: usize,
    slot: usize,
    bit: usize,
) -> (usize, u32) {
    let i = half + 2 * (slot >> 1);
    let hi = slot & 1;
    let (word, shift) = match format {
        WxFormat::Fp4 => (j, 4 * (i + 4 * hi)),
        WxFormat::Int8 | WxFormat::Fp8 => (2 * j + (i >> 1), 8 * (2 * (i & 1) + hi)),
        WxFormat::Int2 => (j >> 1, 8 * (j & 1) + 2 * i + 16 * hi),
        WxFormat::Int3 => {
            let f = 4 * j + i;
            if f == 15 {
                return (bit, (15 + 16 * hi) as u32);
            }
            (f / 5, 3 * (f % 5) + 16 * hi)
        }
    };
    (word, (shift + bit) as u32)
}

/// Whether the code's bits are spread over several words (INT3 register
/// 15); all other codes are one contiguous bit field.
pub(crate) fn code_is_split(format: WxFormat, j: usize, half: usize, slot: usize) -> bool {
    format == WxFormat::Int3 && 4 * j + half + 2 * (slot >> 1) == 15
}

/// Code bits per element of a format.
pub(crate) fn code_bits(format: WxFormat) -> usize {
    match format {
        WxFormat::Fp4 => 4,
        WxFormat::Int8 | WxFormat::Fp8 => 8,
        WxFormat::Int3 => 3,
        WxFormat::Int2 => 2,
    }
}

fn unsupported(w: &QuantTensor, why: &str) -> CudaError {
    CudaError::Unsupported(format!(
        "{:?} / {:?} / {:?} weights on CUDA: {why}",
        w.scheme.element, w.scheme.granularity, w.scheme.scale_dtype
    ))
}

/// Repack an FP4 E2M1, INT8 (signed, symmetric), FP8 E4M3, INT3 or INT2
/// tensor.
///
/// Supported: `Layout::KMajorDense`, no act-order. FP4: per-tensor,
/// per-channel, or groups that are a multiple of 16 along K (MXFP4: 32 with
/// E8M0 scales; NVFP4: 16 with E4M3 scales and a global scale). INT8 / FP8:
/// per-tensor, per-channel, groups that are a multiple of 64 along K, or
/// 2-D blocks whose K side is a multiple of 64 (FP8 128 x 128); no zero
/// points. INT3 / INT2: signed symmetric or unsigned with integer zero
/// points, per-tensor, per-channel or groups that are a multiple of 64
/// along K, scales that fit f16. FP8 NaN codes are rejected. Anything else
/// is `Unsupported`.
pub fn pack_wx(w: &QuantTensor) -> Result<WxPacked> {
    let (format, signed) = match w.scheme.element {
        ElementType::Fp4E2M1 => (WxFormat::Fp4, false),
        ElementType::Int {
            bits: 8,
            signed: true,
        } => (WxFormat::Int8, true),
        ElementType::Fp8E4M3 => (WxFormat::Fp8, false),
        ElementType::Int { bits: 3, signed } => (WxFormat::Int3, signed),
        ElementType::Int { bits: 2, signed } => (WxFormat::Int2, signed),
        _ => return Err(unsupported(w, "element type not handled by the wx kernels")),
    };
    let Layout::KMajorDense = w.scheme.layout;
    let int_zeros = match (w.scheme.zero_point, &w.zeros) {
        (ZeroPoint::None, None) => None,
        (ZeroPoint::Int, Some(z)) if format.is_low_bit() && !signed => Some(z),
        _ => {
            return Err(unsupported(
                w,
                "zero points are implemented for unsigned INT3 / INT2 integer zeros only",
            ))
        }
    };
    if format.is_low_bit() && !signed && int_zeros.is_none() {
        return Err(unsupported(w, "unsigned codes need a zero point"));
    }
    if w.g_idx.is_some() {
        return Err(unsupported(w, "act-order (g_idx) is not implemented"));
    }
    w.validate()
        .map_err(|e| CudaError::Shape(format!("invalid quantized tensor: {e}")))?;
    let (n, k) = (w.rows, w.cols);
    if n == 0 || k == 0 {
        return Err(CudaError::Shape(format!("empty weight matrix {n}x{k}")));
    }
    let k_pad = k.div_ceil(K_CHUNK) * K_CHUNK;
    let n_pad = n.div_ceil(N_TILE) * N_TILE;
    let k_chunks = k_pad / K_CHUNK;
    // K extent of one fp32 / scale_zero group, in elements.
    let group_k = match (format, w.scheme.granularity) {
        (WxFormat::Fp4, Granularity::PerGroup { group_size })
            if group_size > 0 && group_size.is_multiple_of(16) =>
        {
            k_pad
        }
        (WxFormat::Fp4, Granularity::PerGroup { .. }) => {
            return Err(unsupported(
                w,
                "FP4 groups must be a multiple of 16 along K",
            ))
        }
        (_, Granularity::PerTensor | Granularity::PerChannel) => k_pad,
        (WxFormat::Fp4 | WxFormat::Int3 | WxFormat::Int2, Granularity::Block2d { .. }) => {
            return Err(unsupported(
                w,
                "2-D blocks are implemented for 8-bit formats only",
            ))
        }
        (_, Granularity::PerGroup { group_size: gk } | Granularity::Block2d { cols: gk, .. })
            if gk > 0 && gk.is_multiple_of(K_CHUNK) =>
        {
            gk
        }
        _ => {
            return Err(unsupported(
                w,
                "integer / FP8 groups and blocks must be a multiple of 64 along K",
            ))
        }
    };
    let group_chunks = group_k / K_CHUNK;
    let groups = k_chunks.div_ceil(group_chunks);

    // Raw code of (row, col); the tensor was validated, so lengths hold.
    let bits = code_bits(format);
    let row_bytes = w
        .scheme
        .row_bytes(k)
        .map_err(|e| CudaError::Shape(e.to_string()))?;
    // Stored code: FP4 / FP8 as is, signed integers offset to unsigned
    // (two's complement XOR the sign bit = code + 2^(b-1)).
    let stored = |r: usize, c: usize| -> u32 {
        let row = &w.data[r * row_bytes..(r + 1) * row_bytes];
        let raw = u32::from(marlin_quant::pack::read_code(row, c, bits as u8).unwrap_or(0));
        if signed {
            raw ^ (1 << (bits - 1))
        } else {
            raw
        }
    };
    if format == WxFormat::Fp8 {
        if let Some(i) = w.data.iter().position(|b| b & 0x7F == 0x7F) {
            return Err(CudaError::Shape(format!(
                "FP8 E4M3 NaN code at element ({}, {})",
                i / row_bytes,
                i % row_bytes
            )));
        }
    }
    let global = w.global_scale;
    let scale_at = |r: usize, c: usize| w.scales[w.scheme.scale_index(r, c, k)] * global;

    let nb_count = n_pad / 16;
    let lw = format.lane_words();
    let mut words = vec![0u32; nb_count * k_chunks * 32 * lw];
    for nb in 0..nb_count {
        for c in 0..k_chunks {
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                for j in 0..4 {
                    for half in 0..2 {
                        let col_n = nb * 16 + 8 * half + g;
                        if col_n >= n {
                            continue;
                        }
                        for slot in 0..4 {
                            let kk = c * K_CHUNK + 16 * t + 4 * j + slot;
                            if kk >= k {
                                continue;
                            }
                            let code = stored(col_n, kk);
                            if code_is_split(format, j, half, slot) {
                                for b in 0..bits {
                                    let (word, pos) = code_bit_position(format, j, half, slot, b);
                                    let at = word_index(format, nb, c, lane, word, k_chunks);
                                    words[at] |= ((code >> b) & 1) << pos;
                                }
                            } else {
                                let (word, pos) = code_bit_position(format, j, half, slot, 0);
                                let at = word_index(format, nb, c, lane, word, k_chunks);
                                words[at] |= code << pos;
                            }
                        }
                    }
                }
            }
        }
    }

    let mut scales32 = Vec::new();
    let mut scales16 = Vec::new();
    let mut scale_zero = Vec::new();
    if format == WxFormat::Fp4 {
        scales32 = vec![0f32; groups * n_pad];
        // Per-tensor factor: the largest scale, so that the f16 scales stay
        // <= 2^14 and dequantized f16 values <= 6. Scales below 2^-38 of it
        // round to zero in f16 (their products are below f16 resolution).
        let factor = w.scales.iter().fold(0f32, |m, s| m.max(s.abs())) * global;
        let factor = if factor > 0.0 && factor.is_finite() {
            factor
        } else {
            1.0
        };
        scales32[..n].fill(factor);
        scales16 = vec![0u32; nb_count * k_chunks * 32];
        let unit = 16384.0 / f64::from(factor);
        for nb in 0..nb_count {
            for c in 0..k_chunks {
                for lane in 0..32 {
                    let (g, t) = (lane / 4, lane % 4);
                    let kk = c * K_CHUNK + 16 * t;
                    if kk >= k {
                        continue;
                    }
                    let mut pair = 0u32;
                    for half in 0..2 {
                        let col_n = nb * 16 + 8 * half + g;
                        if col_n < n {
                            let s = f16::from_f64(f64::from(scale_at(col_n, kk)) * unit);
                            if !s.is_finite() {
                                return Err(unsupported(w, "scale does not fit the f16 path"));
                            }
                            pair |= u32::from(s.to_bits()) << (16 * half);
                        }
                    }
                    scales16[scale16_index(nb, c, lane, k_chunks)] = pair;
                }
            }
        }
    } else if format.is_low_bit() {
        scale_zero = vec![0u32; groups * n_pad];
        let signed_zero = 1u32 << (bits - 1);
        for gi in 0..groups {
            let kk = (gi * group_k).min(k - 1);
            for col_n in 0..n {
                let s = f16::from_f32(scale_at(col_n, kk));
                if !s.is_finite() {
                    return Err(unsupported(w, "scale does not fit in f16"));
                }
                let zero = match int_zeros {
                    None => signed_zero,
                    Some(z) => {
                        let z = z[w.scheme.scale_index(col_n, kk, k)];
                        if z.fract() != 0.0 || !(0.0..(1u32 << bits) as f32).contains(&z) {
                            return Err(CudaError::Shape(format!(
                                "zero point {z} of row {col_n} is not a {bits}-bit code"
                            )));
                        }
                        z as u32
                    }
                };
                scale_zero[gi * n_pad + col_n] = u32::from(s.to_bits()) | (zero << 16);
            }
        }
    } else {
        scales32 = vec![0f32; groups * n_pad];
        for gi in 0..groups {
            let kk = gi * group_k;
            for col_n in 0..n {
                scales32[gi * n_pad + col_n] = scale_at(col_n, kk.min(k - 1));
            }
        }
    }
    Ok(WxPacked {
        format,
        n,
        k,
        n_pad,
        k_pad,
        group_chunks,
        groups,
        words,
        scales16,
        scales32,
        scale_zero,
    })
}
