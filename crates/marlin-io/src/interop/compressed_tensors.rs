//! compressed-tensors checkpoints in the `pack-quantized` format
//! (llm-compressor's W4A16 / W8A16 and their asymmetric variants).
//!
//! For a linear `<base>` with N outputs, K inputs, `b`-bit codes and G scale
//! columns (group: K / group_size; channel: 1; tensor: a single scale):
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `weight_packed` | I32 | (N, ceil(K b / 32)) | row n: codes densely along K, code k at bit k b of the row's little-endian bit stream |
//! | `weight_shape` | I64 / I32 | (2) | [N, K] |
//! | `weight_scale` | F16 / BF16 / F32 | (N, G), (N, 1) or (1) | |
//! | `weight_zero_point` | I32 packed along N: (ceil(N b / 32), G); or unpacked (N, G) | only when asymmetric |
//! | `weight_g_idx` | I32 | (K) | only with act order |
//!
//! Values are signed (`q` and `zero` in [-2^(b-1), 2^(b-1) - 1]) and stored
//! with the offset `+ 2^(b-1)`; `w = scale * (q - zero)`. The offset
//! cancels in `q - zero`, so marlin keeps the stored unsigned codes and
//! zero points (symmetric: signed codes, see `Unpacked::into_quant`).

use super::{
    check_bits, checked_g_idx, config_err, exact_div, i32_values, integer_values, matrix_of,
    scale_dtype_of, shape_err, Unpacked,
};
use crate::error::Result;
use crate::hf::HfModelDir;
use crate::safetensors::Dtype;
use marlin_quant::QuantTensor;

/// The fields of a compressed-tensors `quantization_config` marlin reads.
#[derive(Clone, Debug, PartialEq)]
pub struct CtConfig {
    /// The code width when every weight group of `config_groups` agrees;
    /// `None`: inferred per tensor from the packed shape.
    pub bits: Option<u8>,
}

impl CtConfig {
    pub fn from_json(q: &serde_json::Value) -> Result<Self> {
        let groups = q
            .get("config_groups")
            .and_then(|g| g.as_object())
            .ok_or_else(|| config_err("compressed-tensors without `config_groups`"))?;
        let top = q.get("format").and_then(|f| f.as_str());
        let mut widths = Vec::new();
        for (name, group) in groups {
            let format = group.get("format").and_then(|f| f.as_str()).or(top);
            if format != Some("pack-quantized") {
                return Err(config_err(format!(
                    "compressed-tensors group `{name}` has format {format:?} (supported: pack-quantized)"
                )));
            }
            let Some(weights) = group.get("weights").filter(|w| !w.is_null()) else {
                continue;
            };
            if weights.get("type").and_then(|t| t.as_str()) != Some("int") {
                return Err(config_err(format!(
                    "compressed-tensors group `{name}`: weights type is not int"
                )));
            }
            let bits = super::json_int(weights, "num_bits")?
                .ok_or_else(|| config_err(format!("group `{name}` has no num_bits")))?;
            widths.push(check_bits(bits)?);
        }
        widths.sort_unstable();
        widths.dedup();
        Ok(Self {
            bits: if widths.len() == 1 {
                Some(widths[0])
            } else {
                None
            },
        })
    }
}

/// Code `j` (`bits` wide) of a dense little-endian bit stream of i32 words
/// (codes may straddle two words).
fn stream_code(words: &[i32], j: usize, bits: u8) -> Option<u32> {
    let bit = j.checked_mul(usize::from(bits))?;
    let (w, shift) = (bit / 32, bit % 32);
    let lo = u64::from(*words.get(w)? as u32);
    let hi = if shift + usize::from(bits) > 32 {
        u64::from(*words.get(w + 1)? as u32)
    } else {
        0
    };
    Some((((hi << 32 | lo) >> shift) & ((1u64 << bits) - 1)) as u32)
}

/// Words of a dense stream of `count` codes of `bits` bits.
fn stream_words(count: usize, bits: u8) -> Option<usize> {
    Some(count.checked_mul(usize::from(bits))?.div_ceil(32))
}

/// Packed compressed-tensors tensors of one linear, as stored.
pub struct CtTensors<'a> {
    pub bits: u8,
    /// (N, K).
    pub shape: (usize, usize),
    /// (N, ceil(K b / 32)).
    pub packed: &'a [i32],
    /// Scales as stored: N x G, N, or 1 values.
    pub scales: &'a [f32],
    pub scale_dtype: marlin_quant::ScaleDType,
    /// Zero points (offset form, >= 0) on the (N, G) grid, `None` when
    /// symmetric.
    pub zeros: Option<Vec<u32>>,
    pub g_idx: Option<&'a [i32]>,
}

impl CtTensors<'_> {
    /// Repacks into a [`QuantTensor`].
    pub fn to_quant(&self, name: &str) -> Result<QuantTensor> {
        let (n, k) = self.shape;
        let bits = self.bits;
        let row_words = stream_words(k, bits).ok_or_else(|| shape_err(name, "K overflows"))?;
        if Some(self.packed.len()) != n.checked_mul(row_words) {
            return Err(shape_err(
                name,
                format!(
                    "{} packed words, expected {n} x {row_words}",
                    self.packed.len()
                ),
            ));
        }
        // Scale grid: per tensor (1 value) and per channel (N values) are
        // expanded to (N, 1); per group (N x G) keeps G columns.
        let n_scales = self.scales.len();
        let (n_groups, scales) = if n_scales == 1 {
            (1, vec![self.scales[0]; n])
        } else if n_scales >= n && n_scales.is_multiple_of(n.max(1)) {
            (n_scales / n, self.scales.to_vec())
        } else {
            return Err(shape_err(name, format!("{n_scales} scales for N = {n}")));
        };
        let group_size = exact_div(name, k, n_groups, "K / scale columns")?;
        let mut codes = vec![0u8; n * k]; // (N, K)
        for (row, out) in self
            .packed
            .chunks_exact(row_words.max(1))
            .zip(codes.chunks_exact_mut(k.max(1)))
        {
            for (j, slot) in out.iter_mut().enumerate() {
                *slot = stream_code(row, j, bits)
                    .ok_or_else(|| shape_err(name, "packed row too short"))?
                    as u8;
            }
        }
        let zeros = match &self.zeros {
            Some(z) if z.len() == scales.len() => z.clone(),
            Some(z) => {
                return Err(shape_err(
                    name,
                    format!("{} zero points for {} scales", z.len(), scales.len()),
                ))
            }
            None => vec![1u32 << (bits - 1); scales.len()],
        };
        let g_idx = match self.g_idx {
            Some(g) => checked_g_idx(name, g, k, group_size, n_groups)?,
            None => None,
        };
        Unpacked {
            bits,
            rows: n,
            cols: k,
            group_size,
            codes,
            scales,
            zeros,
            scale_dtype: self.scale_dtype,
            g_idx,
        }
        .into_quant()
    }
}

/// Reads compressed-tensors linear `base` of `dir`.
pub fn read_ct_linear(dir: &HfModelDir, cfg: &CtConfig, base: &str) -> Result<QuantTensor> {
    let packed = dir.tensor(&format!("{base}.weight_packed"))?;
    let (n_packed, k_words) = matrix_of(&packed, &[Dtype::I32])?;
    let shape_view = dir.tensor(&format!("{base}.weight_shape"))?;
    let dims = integer_values(&shape_view)?;
    let (n, k) = match dims.as_slice() {
        [n, k] => (
            usize::try_from(*n).map_err(|_| shape_err(shape_view.name, "negative N"))?,
            usize::try_from(*k).map_err(|_| shape_err(shape_view.name, "negative K"))?,
        ),
        other => {
            return Err(shape_err(
                shape_view.name,
                format!("{other:?}, expected [N, K]"),
            ))
        }
    };
    if n_packed != n {
        return Err(shape_err(
            packed.name,
            format!("{n_packed} rows, weight_shape says {n}"),
        ));
    }
    let bits = match cfg.bits {
        Some(b) => b,
        None => {
            let fits: Vec<u8> = (2..=8u8)
                .filter(|&b| stream_words(k, b) == Some(k_words))
                .collect();
            match fits.as_slice() {
                [b] => *b,
                _ => {
                    return Err(shape_err(
                        packed.name,
                        format!("code width ambiguous for K = {k} in {k_words} words"),
                    ))
                }
            }
        }
    };
    let scale_view = dir.tensor(&format!("{base}.weight_scale"))?;
    let scale_dtype = scale_dtype_of(&scale_view)?;
    let scales = scale_view.to_f32()?;
    let n_groups = if scales.len() == 1 {
        1
    } else {
        scales.len() / n.max(1)
    };
    let half = 1i64 << (bits - 1);
    let zp_name = format!("{base}.weight_zero_point");
    let zeros = if dir.contains(&zp_name) {
        let zp = dir.tensor(&zp_name)?;
        let zp_rows = zp.shape.first().copied().unwrap_or(1);
        let signed: Vec<i64> = if zp.dtype == Dtype::I32 && zp_rows != n && zp.shape.len() == 2 {
            // Packed along N: column g is a dense stream of N codes.
            let words = i32_values(&zp);
            let cols = zp.shape[1];
            if cols != n_groups || stream_words(n, bits) != Some(zp_rows) {
                return Err(shape_err(
                    zp.name,
                    format!("shape {:?} for N = {n}, G = {n_groups}", zp.shape),
                ));
            }
            let mut out = vec![0i64; n * n_groups]; // (N, G)
            for g in 0..n_groups {
                let column: Vec<i32> = (0..zp_rows).map(|r| words[r * cols + g]).collect();
                for (row, slot) in out.chunks_exact_mut(n_groups).enumerate() {
                    let raw = stream_code(&column, row, bits)
                        .ok_or_else(|| shape_err(zp.name, "packed column too short"))?;
                    // Stored with the offset: the signed value is raw - half.
                    slot[g] = i64::from(raw) - half;
                }
            }
            out
        } else {
            integer_values(&zp)?
        };
        let expanded = if signed.len() == 1 {
            vec![signed[0]; n]
        } else {
            signed
        };
        let zeros = expanded
            .iter()
            .map(|&z| {
                u32::try_from(z + half)
                    .ok()
                    .filter(|&u| i64::from(u) < 2 * half)
                    .ok_or_else(|| {
                        shape_err(&zp_name, format!("zero point {z} outside {bits} bits"))
                    })
            })
            .collect::<Result<Vec<u32>>>()?;
        Some(zeros)
    } else {
        None
    };
    let g_idx_name = format!("{base}.weight_g_idx");
    let g_idx_values = if dir.contains(&g_idx_name) {
        let v = dir.tensor(&g_idx_name)?;
        if v.dtype != Dtype::I32 || v.shape != [k] {
            return Err(shape_err(
                v.name,
                format!("{} {:?}, expected I32 [{k}]", v.dtype.name(), v.shape),
            ));
        }
        Some(i32_values(&v))
    } else {
        None
    };
    let words = i32_values(&packed);
    CtTensors {
        bits,
        shape: (n, k),
        packed: &words,
        scales: &scales,
        scale_dtype,
        zeros,
        g_idx: g_idx_values.as_deref(),
    }
    .to_quant(base)
    .map_err(|e| e.in_file(dir.dir().join(base)))
}
