//! Host-side repack of an INT4 [`QuantTensor`] (KMajorDense) into the layout
//! of `kernels/w4a16_gemm.cu`. Pure Rust: tested without a GPU.
//!
//! Layout (all little-endian u32):
//! - `words`: (n_pad/64 tiles, k_pad/64, 4 n16 blocks, 32 lanes, 4), tile-major
//!   ([`word_index`]: a 64-column tile's chunks are one contiguous run, 2 KiB
//!   per chunk) — for n16 block `nb`, 64-chunk
//!   `c`, lane (g = lane/4, t = lane%4) and k16 sub-tile `j`, one word holds
//!   the 8 codes of columns n = nb*16 + 8h + g (h = 0, 1) at the permuted
//!   reduction indices k = c*64 + 16t + 4j + slot (slot = 0..4), code at nibble
//!   `(slot & 1) * 4 + (slot >> 1) + 2h`. The kernel feeds `slot` to the mma
//!   fragment element (k 2t, 2t+1, 2t+8, 2t+9) and reads A at the same
//!   permuted k, so the dot product is unchanged.
//! - `scales`: (groups, n_pad/16, 8) f16x2 — (scale of column nb*16+g, scale
//!   of column nb*16+8+g). groups = ceil(k_pad / group_size); with groups of
//!   32, a lane's 16 reduction indices of chunk c (k = c*64 + 16t ..) lie in
//!   group 2c + t/2, so the kernel's scale row depends on the lane.
//! - `neg_zero_scales`: same grid, f16x2 of `-zero * scale`; `None` when every
//!   zero is 8 (symmetric signed INT4), which the kernel computes exactly.
//!
//! Codes are stored unsigned: signed two's-complement codes c become c + 8 and
//! their zero point grows by 8, so value = scale * (u - zero) in both cases.

use half::f16;
use marlin_quant::{ElementType, Granularity, Layout, QuantTensor, ZeroPoint};

use crate::error::{CudaError, Result};

/// Columns per thread block of the kernel (4 warps x n16).
pub const N_TILE: usize = 64;
/// K elements per 16-byte weight load of one lane.
pub const K_CHUNK: usize = 64;

/// An INT4 weight matrix in the kernel's layout, still on the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Int4Packed {
    /// N: output features.
    pub n: usize,
    /// K: input features.
    pub k: usize,
    /// N rounded up to [`N_TILE`]; padded columns have scale 0.
    pub n_pad: usize,
    /// K rounded up to [`K_CHUNK`]; padded codes meet zero activations.
    pub k_pad: usize,
    /// Scale group size along K: 32 or a multiple of [`K_CHUNK`]
    /// (per-channel: k_pad).
    pub group_size: usize,
    /// Number of scale groups along the padded K (k_pad / group_size,
    /// rounded up); groups past the tensor's K have scale 0.
    pub groups: usize,
    /// (n_pad/64, k_pad/64, 4, 32, 4) packed codes ([`word_index`]).
    pub words: Vec<u32>,
    /// (groups, n_pad/16, 8) f16x2 scales.
    pub scales: Vec<u32>,
    /// (groups, n_pad/16, 8) f16x2 `-zero*scale`; None for symmetric INT4.
    pub neg_zero_scales: Option<Vec<u32>>,
}

impl Int4Packed {
    /// Bytes the kernel streams per call (codes, scales, zeros).
    pub fn weight_bytes(&self) -> usize {
        4 * (self.words.len()
            + self.scales.len()
            + self.neg_zero_scales.as_ref().map_or(0, |z| z.len()))
    }

    /// Number of 64-wide chunks along K.
    pub fn k_chunks(&self) -> usize {
        self.k_pad / K_CHUNK
    }

    /// Scale group of reduction index `k` (any k < k_pad).
    pub fn group_of(&self, k: usize) -> usize {
        k / self.group_size
    }
}

fn f16_bits(value: f32, what: &str) -> Result<u16> {
    let h = f16::from_f32(value);
    if !h.is_finite() {
        return Err(CudaError::Unsupported(format!(
            "{what} {value} does not fit in f16"
        )));
    }
    Ok(h.to_bits())
}

/// Index (in 16-byte units) of lane `lane`'s codes of n16 block `nb`, chunk
/// `c`: (n_pad/64 tiles, k_chunks, 4 warps, 32 lanes), so that one thread
/// block (4 warps = one 64-column tile) streams one contiguous region, 2 KiB
/// per chunk, instead of four regions far apart (DRAM row locality).
pub(crate) fn word_index(nb: usize, c: usize, lane: usize, k_chunks: usize) -> usize {
    (((nb / 4) * k_chunks + c) * 4 + nb % 4) * 32 + lane
}

/// Nibble position of fragment `slot` (0..4) of n8 sub-tile `half` (0, 1).
pub(crate) fn nibble_position(slot: usize, half: usize) -> usize {
    (slot & 1) * 4 + (slot >> 1) + 2 * half
}

/// Repack an INT4 (signed symmetric, or unsigned with zero points) tensor.
///
/// Supported: `ElementType::Int { bits: 4, .. }`, `Layout::KMajorDense`,
/// per-channel or per-group scales with a group size of 32 or a multiple of
/// 64, no act-order `g_idx`. Anything else is a clear `Unsupported` error.
pub fn pack_int4(w: &QuantTensor) -> Result<Int4Packed> {
    let signed = match w.scheme.element {
        ElementType::Int { bits: 4, signed } => signed,
        other => {
            return Err(CudaError::Unsupported(format!(
                "INT4 GEMM needs 4-bit integer codes, got {other:?}"
            )))
        }
    };
    let Layout::KMajorDense = w.scheme.layout;
    if w.g_idx.is_some() {
        return Err(CudaError::Unsupported(
            "act-order (g_idx) INT4 weights are not implemented on CUDA yet".into(),
        ));
    }
    let (n, k) = (w.rows, w.cols);
    if n == 0 || k == 0 {
        return Err(CudaError::Shape(format!("empty weight matrix {n}x{k}")));
    }
    let k_pad = k.div_ceil(K_CHUNK) * K_CHUNK;
    let n_pad = n.div_ceil(N_TILE) * N_TILE;
    let group_size = match w.scheme.granularity {
        Granularity::PerChannel => k_pad,
        Granularity::PerGroup { group_size }
            if group_size == K_CHUNK / 2
                || (group_size > 0 && group_size.is_multiple_of(K_CHUNK)) =>
        {
            group_size
        }
        other => {
            return Err(CudaError::Unsupported(format!(
                "INT4 GEMM supports per-channel scales or groups of 32 or a multiple of \
                 {K_CHUNK} along K, got {other:?}"
            )))
        }
    };
    // Scale grid of the QuantTensor: N x groups (PerChannel: groups = 1).
    let tensor_groups = match w.scheme.granularity {
        Granularity::PerChannel => 1,
        _ => k.div_ceil(group_size),
    };
    let row_bytes = k.div_ceil(2);
    let want_data = n
        .checked_mul(row_bytes)
        .ok_or_else(|| CudaError::Shape("weight size overflows usize".into()))?;
    if w.data.len() != want_data {
        return Err(CudaError::Shape(format!(
            "INT4 {n}x{k} needs {want_data} code bytes, tensor has {}",
            w.data.len()
        )));
    }
    if w.scales.len() != n * tensor_groups {
        return Err(CudaError::Shape(format!(
            "INT4 {n}x{k} with {tensor_groups} groups per row needs {} scales, tensor has {}",
            n * tensor_groups,
            w.scales.len()
        )));
    }
    let zeros = match (w.scheme.zero_point, &w.zeros) {
        (ZeroPoint::None, _) => None,
        (_, Some(z)) if z.len() == w.scales.len() => Some(z.as_slice()),
        (_, Some(z)) => {
            return Err(CudaError::Shape(format!(
                "{} zero points for {} scales",
                z.len(),
                w.scales.len()
            )))
        }
        (zp, None) => {
            return Err(CudaError::Shape(format!(
                "scheme has zero point {zp:?} but the tensor holds none"
            )))
        }
    };
    let code_offset: u8 = if signed { 8 } else { 0 };
    let code = |row: usize, col: usize| -> u32 {
        let byte = w.data[row * row_bytes + col / 2];
        let nib = if col.is_multiple_of(2) {
            byte & 0xF
        } else {
            byte >> 4
        };
        u32::from((nib ^ code_offset) & 0xF)
    };

    let nb_count = n_pad / 16;
    let k_chunks = k_pad / K_CHUNK;
    let mut words = vec![0u32; nb_count * k_chunks * 32 * 4];
    for nb in 0..nb_count {
        for c in 0..k_chunks {
            for lane in 0..32 {
                let (g, t) = (lane / 4, lane % 4);
                for j in 0..4 {
                    let mut word = 0u32;
                    for half in 0..2 {
                        let col_n = nb * 16 + 8 * half + g;
                        for slot in 0..4 {
                            let kk = c * K_CHUNK + 16 * t + 4 * j + slot;
                            if col_n < n && kk < k {
                                word |= code(col_n, kk) << (4 * nibble_position(slot, half));
                            }
                        }
                    }
                    words[word_index(nb, c, lane, k_chunks) * 4 + j] = word;
                }
            }
        }
    }

    // Per-tensor second-level scale folds into every scale.
    let global = w.global_scale;
    let zero_shift = f32::from(code_offset);
    let all_symmetric = zeros.is_none() && signed;
    // Packed groups cover k_pad (groups of 32 can end before k_pad when K is
    // not a multiple of 64); the extra ones keep scale 0 (their codes meet
    // zero activations).
    let groups = k_pad.div_ceil(group_size);
    let mut scales = vec![0u32; groups * nb_count * 8];
    let mut neg_zs = if all_symmetric {
        None
    } else {
        Some(vec![0u32; groups * nb_count * 8])
    };
    for gi in 0..tensor_groups {
        for nb in 0..nb_count {
            for g in 0..8 {
                let mut s_pair = [0u16; 2];
                let mut z_pair = [0u16; 2];
                for half in 0..2 {
                    let col_n = nb * 16 + 8 * half + g;
                    if col_n >= n {
                        continue;
                    }
                    let idx = col_n * tensor_groups + gi;
                    let s = w.scales[idx] * global;
                    let s_bits = f16_bits(s, "scale")?;
                    s_pair[half] = s_bits;
                    let zero = zeros.map_or(0.0, |z| z[idx]) + zero_shift;
                    // -zero * scale from the f16-rounded scale, rounded once.
                    let s16 = f16::from_bits(s_bits).to_f32();
                    z_pair[half] = f16_bits(-zero * s16, "zero*scale")?;
                }
                let at = (gi * nb_count + nb) * 8 + g;
                scales[at] = u32::from(s_pair[0]) | (u32::from(s_pair[1]) << 16);
                if let Some(z) = neg_zs.as_mut() {
                    z[at] = u32::from(z_pair[0]) | (u32::from(z_pair[1]) << 16);
                }
            }
        }
    }
    Ok(Int4Packed {
        n,
        k,
        n_pad,
        k_pad,
        group_size,
        groups,
        words,
        scales,
        neg_zero_scales: neg_zs,
    })
}
