//! Interoperability with other quantized checkpoint formats: GPTQ
//! (AutoGPTQ / GPTQModel, `checkpoint_format` v1 and v2), AWQ (AutoAWQ GEMM
//! packing) and compressed-tensors `pack-quantized` (llm-compressor).
//!
//! Import repacks each foreign linear into a [`QuantTensor`]
//! (`Layout::KMajorDense`) whose reference dequantization is bit-exact with
//! the format's own: every format computes `scale * (q - zero)` on integer
//! codes and integer zero points, and marlin's reference computes the same
//! product in f32 (`1.0 * scale` is exact). Export writes the GPTQ layout
//! ([`gptq::export_gptq_dir`]). The bit layouts are in
//! `docs/QUANTIZATION.md`, section "GPTQ / AWQ / compressed-tensors".

pub mod awq;
pub mod compressed_tensors;
pub mod gptq;

use crate::error::{IoError, Result};
use crate::hf::HfModelDir;
use crate::safetensors::{Dtype, TensorView};
use marlin_quant::{Granularity, QuantScheme, QuantTensor, ScaleDType, ZeroPoint};

/// A foreign quantization format named by `quantization_config.quant_method`
/// in config.json.
#[derive(Clone, Debug, PartialEq)]
pub enum ForeignFormat {
    Gptq(gptq::GptqConfig),
    Awq(awq::AwqConfig),
    CompressedTensors(compressed_tensors::CtConfig),
}

impl ForeignFormat {
    /// The format of a config.json, `None` when it has no
    /// `quantization_config` or another `quant_method` (marlin's own among
    /// them). Errors on a known method with fields marlin cannot load.
    pub fn of_config(config: &serde_json::Value) -> Result<Option<Self>> {
        let Some(q) = config.get("quantization_config") else {
            return Ok(None);
        };
        let method = q.get("quant_method").and_then(|m| m.as_str()).unwrap_or("");
        Ok(match method {
            "gptq" => Some(Self::Gptq(gptq::GptqConfig::from_json(q)?)),
            "awq" => Some(Self::Awq(awq::AwqConfig::from_json(q)?)),
            "compressed-tensors" => Some(Self::CompressedTensors(
                compressed_tensors::CtConfig::from_json(q)?,
            )),
            _ => None,
        })
    }

    /// The format of an opened directory.
    pub fn of_dir(dir: &HfModelDir) -> Result<Option<Self>> {
        Self::of_config(dir.config())
    }

    /// Whether the directory holds linear `base` (`model.layers.0.mlp.up_proj`)
    /// in this format.
    pub fn contains_linear(&self, dir: &HfModelDir, base: &str) -> bool {
        dir.contains(&self.primary_tensor(base))
    }

    /// The tensor whose presence marks `base` as quantized.
    fn primary_tensor(&self, base: &str) -> String {
        match self {
            Self::Gptq(_) | Self::Awq(_) => format!("{base}.qweight"),
            Self::CompressedTensors(_) => format!("{base}.weight_packed"),
        }
    }

    /// Linear `base` repacked into a validated [`QuantTensor`], or `None`
    /// when the directory stores it unquantized (no primary tensor).
    pub fn read_linear(&self, dir: &HfModelDir, base: &str) -> Result<Option<QuantTensor>> {
        if !self.contains_linear(dir, base) {
            return Ok(None);
        }
        let t = match self {
            Self::Gptq(c) => gptq::read_gptq_linear(dir, c, base)?,
            Self::Awq(c) => awq::read_awq_linear(dir, c, base)?,
            Self::CompressedTensors(c) => compressed_tensors::read_ct_linear(dir, c, base)?,
        };
        Ok(Some(t))
    }
}

pub(crate) fn shape_err(name: &str, reason: impl Into<String>) -> IoError {
    IoError::TensorShape {
        name: name.to_string(),
        reason: reason.into(),
    }
}

pub(crate) fn config_err(reason: impl Into<String>) -> IoError {
    IoError::ModelDir(format!(
        "config.json quantization_config: {}",
        reason.into()
    ))
}

/// An integer field of a JSON object (absent: `None`).
pub(crate) fn json_int(v: &serde_json::Value, key: &str) -> Result<Option<i64>> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x
            .as_i64()
            .map(Some)
            .ok_or_else(|| config_err(format!("`{key}` is not an integer"))),
    }
}

/// A boolean field of a JSON object (absent: `default`).
pub(crate) fn json_bool(v: &serde_json::Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(serde_json::Value::Null) => Ok(default),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| config_err(format!("`{key}` is not a boolean"))),
    }
}

/// A code width marlin's integer formats hold (2..=8).
pub(crate) fn check_bits(bits: i64) -> Result<u8> {
    u8::try_from(bits)
        .ok()
        .filter(|b| (2..=8).contains(b))
        .ok_or_else(|| config_err(format!("bits = {bits} (supported: 2..=8)")))
}

/// The 2-D shape of a tensor, non-empty, checked against its dtype.
pub(crate) fn matrix_of(view: &TensorView<'_>, dtypes: &[Dtype]) -> Result<(usize, usize)> {
    if !dtypes.contains(&view.dtype) {
        return Err(shape_err(
            view.name,
            format!("dtype {}, expected one of {dtypes:?}", view.dtype.name()),
        ));
    }
    match view.shape {
        // A quantized linear is never empty; an empty one would let a huge
        // dim through with no data behind it (K or N then sizes allocations
        // and loops before the element counts are compared).
        [r, c] if *r == 0 || *c == 0 => {
            Err(shape_err(view.name, format!("empty matrix {r} x {c}")))
        }
        [r, c] => Ok((*r, *c)),
        other => Err(shape_err(
            view.name,
            format!("shape {other:?}, expected a matrix"),
        )),
    }
}

/// Little-endian i32 elements (the caller checked the dtype).
pub(crate) fn i32_values(view: &TensorView<'_>) -> Vec<i32> {
    view.data
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Integer elements of an I8 / I32 / I64 tensor, or of a float tensor whose
/// values are all integers.
pub(crate) fn integer_values(view: &TensorView<'_>) -> Result<Vec<i64>> {
    Ok(match view.dtype {
        Dtype::I8 => view.data.iter().map(|&b| i64::from(b as i8)).collect(),
        Dtype::I32 => i32_values(view).into_iter().map(i64::from).collect(),
        Dtype::I64 => view
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        Dtype::F16 | Dtype::BF16 | Dtype::F32 => view
            .to_f32()?
            .into_iter()
            .map(|x| {
                if x.fract() == 0.0 && x.abs() <= 65536.0 {
                    Ok(x as i64)
                } else {
                    Err(shape_err(view.name, format!("{x} is not an integer")))
                }
            })
            .collect::<Result<_>>()?,
        other => {
            return Err(shape_err(
                view.name,
                format!("dtype {} is not an integer type", other.name()),
            ))
        }
    })
}

/// The scale dtype of a stored scale tensor (F16, BF16 or F32).
pub(crate) fn scale_dtype_of(view: &TensorView<'_>) -> Result<ScaleDType> {
    match view.dtype {
        Dtype::F16 => Ok(ScaleDType::F16),
        Dtype::BF16 => Ok(ScaleDType::BF16),
        Dtype::F32 => Ok(ScaleDType::F32),
        other => Err(shape_err(
            view.name,
            format!("scale dtype {}, expected F16, BF16 or F32", other.name()),
        )),
    }
}

/// Bit `shift` of word `w` as a `bits`-wide code.
#[inline]
pub(crate) fn field(word: i32, shift: u32, bits: u8) -> u32 {
    ((word as u32) >> shift) & ((1u32 << bits) - 1)
}

/// Unsigned codes, zero points and scales in marlin's orientation, before
/// choosing the tightest scheme that holds them exactly.
pub(crate) struct Unpacked {
    pub bits: u8,
    /// N: output features.
    pub rows: usize,
    /// K: input features.
    pub cols: usize,
    /// Elements of K sharing one scale (K for per-channel).
    pub group_size: usize,
    /// (N, K) unsigned codes, row-major, each < 2^bits.
    pub codes: Vec<u8>,
    /// (N, K / group_size) scales, row-major, exact in `scale_dtype`.
    pub scales: Vec<f32>,
    /// (N, K / group_size) integer zero points (>= 0, may exceed 2^bits - 1
    /// for GPTQ v1's `stored + 1`).
    pub zeros: Vec<u32>,
    pub scale_dtype: ScaleDType,
    /// Group of each K column; `None` when it is `k / group_size`.
    pub g_idx: Option<Vec<u32>>,
}

impl Unpacked {
    /// The [`QuantTensor`] with the same reference dequantization:
    /// every zero point at 2^(bits-1): signed symmetric codes (`q - 2^(b-1)`
    /// is the two's-complement pattern `q ^ 2^(b-1)`); zero points within
    /// the code range: unsigned codes with integer zero points; larger ones
    /// (GPTQ v1's zero 2^bits): float zero points, exact in the scale dtype.
    pub(crate) fn into_quant(self) -> Result<QuantTensor> {
        let bits = self.bits;
        let half = 1u32 << (bits - 1);
        let max_code = (1u32 << bits) - 1;
        let granularity = Granularity::PerGroup {
            group_size: self.group_size,
        };
        let (scheme, codes, zeros) = if self.zeros.iter().all(|&z| z == half) {
            let flip = half as u8;
            let codes: Vec<u8> = self.codes.iter().map(|&c| c ^ flip).collect();
            (
                QuantScheme::int_sym(bits, granularity, self.scale_dtype),
                codes,
                None,
            )
        } else {
            let zero_point = if self.zeros.iter().all(|&z| z <= max_code) {
                ZeroPoint::Int
            } else {
                ZeroPoint::Float
            };
            let zeros: Vec<f32> = self.zeros.iter().map(|&z| z as f32).collect();
            let scheme = QuantScheme::int_asym(bits, granularity, self.scale_dtype)
                .with_zero_point(zero_point);
            (scheme, self.codes, Some(zeros))
        };
        let data = marlin_quant::pack::pack_codes(&codes, self.rows, self.cols, bits)?;
        let t = QuantTensor {
            scheme,
            rows: self.rows,
            cols: self.cols,
            data,
            scales: self.scales,
            zeros,
            global_scale: 1.0,
            g_idx: self.g_idx,
        };
        t.validate()?;
        Ok(t)
    }
}

/// Checks a stored g_idx (K entries, each < n_groups) and drops it when it
/// is the trivial `k / group_size`.
pub(crate) fn checked_g_idx(
    name: &str,
    values: &[i32],
    cols: usize,
    group_size: usize,
    n_groups: usize,
) -> Result<Option<Vec<u32>>> {
    if values.len() != cols {
        return Err(shape_err(
            name,
            format!("{} entries, expected K = {cols}", values.len()),
        ));
    }
    let g_idx = values
        .iter()
        .map(|&g| {
            u32::try_from(g)
                .ok()
                .filter(|&g| (g as usize) < n_groups)
                .ok_or_else(|| shape_err(name, format!("group {g} outside 0..{n_groups}")))
        })
        .collect::<Result<Vec<u32>>>()?;
    let trivial = g_idx
        .iter()
        .enumerate()
        .all(|(k, &g)| g as usize == k / group_size);
    Ok(if trivial { None } else { Some(g_idx) })
}

/// `numerator / denominator` when it divides exactly.
pub(crate) fn exact_div(
    name: &str,
    numerator: usize,
    denominator: usize,
    what: &str,
) -> Result<usize> {
    if denominator == 0 || !numerator.is_multiple_of(denominator) {
        return Err(shape_err(
            name,
            format!("{what}: {numerator} is not a multiple of {denominator}"),
        ));
    }
    Ok(numerator / denominator)
}

#[cfg(test)]
mod tests;
