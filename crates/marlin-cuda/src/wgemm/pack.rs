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
}

impl WxFormat {
    /// 16-byte code vectors per lane per 64-chunk.
    pub fn code_vectors(self) -> usize {
        match self {
            WxFormat::Fp4 => 1,
            WxFormat::Int8 | WxFormat::Fp8 => 2,
        }
    }

    /// Short name (kernel prefix and benchmark label).
    pub fn name(self) -> &'static str {
        match self {
            WxFormat::Fp4 => "fp4",
            WxFormat::Int8 => "int8",
            WxFormat::Fp8 => "fp8",
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
    /// (n_pad/64, k_pad/64, 4 warps, code_vectors, 32 lanes) x 4 u32.
    pub words: Vec<u32>,
    /// FP4 only: (n_pad/64, k_pad/64, 4, 32) f16x2 scales (column g, 8 + g)
    /// of each lane's 16-run, times 2^14 / the per-tensor factor. Empty else.
    pub scales16: Vec<u32>,
    /// (groups, n_pad) fp32 column scales (FP4: the per-tensor factor).
    pub scales32: Vec<f32>,
}

impl WxPacked {
    pub fn k_chunks(&self) -> usize {
        self.k_pad / K_CHUNK
    }

    /// Bytes one GEMM call streams (codes and scales).
    pub fn weight_bytes(&self) -> usize {
        4 * (self.words.len() + self.scales16.len() + self.scales32.len())
    }
}

/// Index (u32) of code word `e` (0..4) of vector `v` of lane `lane`, chunk
/// `c`, n16 block `nb`.
pub(crate) fn word_index(
    format: WxFormat,
    nb: usize,
    c: usize,
    lane: usize,
    v: usize,
    e: usize,
    k_chunks: usize,
) -> usize {
    let cw = format.code_vectors();
    (((((nb / 4) * k_chunks + c) * 4 + nb % 4) * cw + v) * 32 + lane) * 4 + e
}

/// Index of the FP4 f16x2 scale of lane `lane`, chunk `c`, n16 block `nb`.
pub(crate) fn scale16_index(nb: usize, c: usize, lane: usize, k_chunks: usize) -> usize {
    (((nb / 4) * k_chunks + c) * 4 + nb % 4) * 32 + lane
}

/// Where (column half, slot) of k16 step `j` lives: (u32 word of the lane's
/// chunk, bit shift). FP4: word j, nibble i (low element) or i + 4 (high);
/// 8-bit: word 2j + (i >> 1), byte 2*(i & 1) (+1 for the high element),
/// with fragment register i = half + 2*(slot >> 1), element = slot & 1.
pub(crate) fn code_position(format: WxFormat, j: usize, half: usize, slot: usize) -> (usize, u32) {
    let i = half + 2 * (slot >> 1);
    let hi = slot & 1;
    match format {
        WxFormat::Fp4 => (j, 4 * (i + 4 * hi) as u32),
        WxFormat::Int8 | WxFormat::Fp8 => (2 * j + (i >> 1), 8 * (2 * (i & 1) + hi) as u32),
    }
}

fn unsupported(w: &QuantTensor, why: &str) -> CudaError {
    CudaError::Unsupported(format!(
        "{:?} / {:?} / {:?} weights on CUDA: {why}",
        w.scheme.element, w.scheme.granularity, w.scheme.scale_dtype
    ))
}

/// Repack an FP4 E2M1, INT8 (signed, symmetric) or FP8 E4M3 tensor.
///
/// Supported: `Layout::KMajorDense`, no zero points, no act-order. FP4:
/// per-tensor, per-channel, or groups that are a multiple of 16 along K
/// (MXFP4: 32 with E8M0 scales; NVFP4: 16 with E4M3 scales and a global
/// scale). INT8 / FP8: per-tensor, per-channel, groups that are a multiple
/// of 64 along K, or 2-D blocks whose K side is a multiple of 64 (FP8
/// 128 x 128). FP8 NaN codes are rejected. Anything else is `Unsupported`.
pub fn pack_wx(w: &QuantTensor) -> Result<WxPacked> {
    let format = match w.scheme.element {
        ElementType::Fp4E2M1 => WxFormat::Fp4,
        ElementType::Int {
            bits: 8,
            signed: true,
        } => WxFormat::Int8,
        ElementType::Fp8E4M3 => WxFormat::Fp8,
        _ => return Err(unsupported(w, "element type not handled by the wx kernels")),
    };
    let Layout::KMajorDense = w.scheme.layout;
    if w.scheme.zero_point != ZeroPoint::None || w.zeros.is_some() {
        return Err(unsupported(w, "zero points are not implemented"));
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
    // K extent of one fp32 scale group (8-bit), in elements.
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
        (WxFormat::Fp4, Granularity::Block2d { .. }) => {
            return Err(unsupported(w, "FP4 with 2-D blocks is not implemented"))
        }
        (_, Granularity::PerGroup { group_size: gk } | Granularity::Block2d { cols: gk, .. })
            if gk > 0 && gk.is_multiple_of(K_CHUNK) =>
        {
            gk
        }
        _ => {
            return Err(unsupported(
                w,
                "8-bit groups / blocks must be a multiple of 64 along K",
            ))
        }
    };
    let group_chunks = group_k / K_CHUNK;
    let groups = k_chunks.div_ceil(group_chunks);

    // Raw code of (row, col); the tensor was validated, so lengths hold.
    let row_bytes = w
        .scheme
        .row_bytes(k)
        .map_err(|e| CudaError::Shape(e.to_string()))?;
    let raw = |r: usize, c: usize| -> u32 {
        match format {
            WxFormat::Fp4 => u32::from((w.data[r * row_bytes + c / 2] >> (4 * (c % 2))) & 0xF),
            WxFormat::Int8 => u32::from(w.data[r * row_bytes + c] ^ 0x80),
            WxFormat::Fp8 => u32::from(w.data[r * row_bytes + c]),
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
    let cw = format.code_vectors();
    let mut words = vec![0u32; nb_count * k_chunks * 32 * 4 * cw];
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
                            let (word, shift) = code_position(format, j, half, slot);
                            let at = word_index(format, nb, c, lane, word / 4, word % 4, k_chunks);
                            words[at] |= raw(col_n, kk) << shift;
                        }
                    }
                }
            }
        }
    }

    let mut scales32 = vec![0f32; groups * n_pad];
    let mut scales16 = Vec::new();
    if format == WxFormat::Fp4 {
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
    } else {
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
    })
}
