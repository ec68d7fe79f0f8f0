//! Reading quantized linears and the `quantization_config` block back.

use super::scheme_json::scheme_from_json;
use super::{QuantTensorNames, SCHEME_METADATA_PREFIX};
use crate::error::{IoError, Result};
use crate::hf::HfModelDir;
use crate::safetensors::{Dtype, TensorView};
use marlin_quant::QuantTensor;
use serde::{Deserialize, Serialize};

/// A per-layer override: tensors whose name matches `pattern` (a regular
/// expression over Hugging Face names) use `format`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatOverride {
    pub pattern: String,
    pub format: String,
}

/// The `quantization_config` block of a marlin checkpoint's config.json:
/// what produced it. The loader does not need it (each tensor carries its
/// scheme); it documents the checkpoint for people and other tools.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizationConfig {
    /// Always [`super::QUANT_METHOD`].
    pub quant_method: String,
    /// Default format of quantized linears ("int4", "mxfp4", ...).
    pub format: String,
    /// rtn, gptq, awq.
    pub method: String,
    /// Group size along K of the default format (None: per-channel or the
    /// format's fixed block).
    pub group_size: Option<usize>,
    pub act_order: bool,
    /// Hadamard rotations (MR-GPTQ), None: no rotation. A summary for
    /// people and tools: `{"type": "block_hadamard", "max_block_size",
    /// "tensors": {base: {"block_size", "k", "padded_k", "applied"}}}` with
    /// `applied` "online" (the loader rotates the activations, from the
    /// shard's `marlin.rotation.<base>`) or "absorbed into <producer>".
    pub rotation: Option<serde_json::Value>,
    /// Preset that chose which layer classes stay in high precision.
    pub preset: String,
    /// Overrides in the order they were applied (first match wins).
    pub overrides: Vec<FormatOverride>,
    /// Linears kept in high precision (Hugging Face names).
    pub modules_not_quantized: Vec<String>,
    /// Calibration summary (files, samples, sequence length, seed).
    pub calibration: Option<serde_json::Value>,
}

impl QuantizationConfig {
    /// The block of an opened directory, if it is a marlin checkpoint.
    pub fn of(dir: &HfModelDir) -> Result<Option<Self>> {
        let Some(v) = dir.config().get("quantization_config") else {
            return Ok(None);
        };
        if v.get("quant_method").and_then(|m| m.as_str()) != Some(super::QUANT_METHOD) {
            return Ok(None);
        }
        serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| IoError::ModelDir(format!("config.json quantization_config: {e}")))
    }
}

fn shape_err(name: &str, reason: impl Into<String>) -> IoError {
    IoError::TensorShape {
        name: name.to_string(),
        reason: reason.into(),
    }
}

fn expect(view: &TensorView<'_>, dtype: Dtype, shape: &[usize]) -> Result<()> {
    if view.dtype != dtype || view.shape != shape {
        return Err(shape_err(
            view.name,
            format!(
                "{} {:?}, expected {} {shape:?}",
                view.dtype.name(),
                view.shape,
                dtype.name()
            ),
        ));
    }
    Ok(())
}

fn f32_values(view: &TensorView<'_>) -> Vec<f32> {
    view.data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The quantized linear `base` (`model.layers.0.mlp.up_proj`), or `None`
/// when the directory has no `<base>.qcodes`. Every shape, dtype and value
/// rule is checked ([`QuantTensor::validate`]); nothing is dequantized.
pub fn read_quant_tensor(dir: &HfModelDir, base: &str) -> Result<Option<QuantTensor>> {
    let names = QuantTensorNames::new(base);
    if !dir.contains(&names.codes) {
        return Ok(None);
    }
    let key = format!("{SCHEME_METADATA_PREFIX}{base}");
    let shard = dir
        .shards()
        .iter()
        .find(|s| s.contains(&names.codes))
        .ok_or_else(|| IoError::MissingTensor(names.codes.clone()))?;
    let meta_text = shard
        .metadata()
        .get(&key)
        .ok_or_else(|| shape_err(&names.codes, format!("no `{key}` in __metadata__")))?;
    let meta: serde_json::Value = serde_json::from_str(meta_text)
        .map_err(|e| shape_err(&names.codes, format!("scheme metadata: {e}")))?;
    let scheme = scheme_from_json(&meta)?;
    let dim = |k: &str| {
        meta.get(k)
            .and_then(|v| v.as_u64())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| shape_err(&names.codes, format!("scheme metadata has no `{k}`")))
    };
    let (rows, cols) = (dim("rows")?, dim("cols")?);
    scheme.validate(rows, cols)?;
    let packed = marlin_quant::pack::packed_len(rows, cols, scheme.element.bits())?;
    let codes = dir.tensor(&names.codes)?;
    expect(&codes, Dtype::U8, &[rows, packed / rows])?;
    let grid = scheme.scale_grid(rows, cols)?;
    let scales = dir.tensor(&names.scales)?;
    expect(&scales, Dtype::F32, &[grid.0, grid.1])?;
    let zeros = if scheme.zero_point == marlin_quant::ZeroPoint::None {
        None
    } else {
        let z = dir.tensor(&names.zeros)?;
        expect(&z, Dtype::F32, &[grid.0, grid.1])?;
        Some(f32_values(&z))
    };
    let g_idx = if dir.contains(&names.g_idx) {
        let g = dir.tensor(&names.g_idx)?;
        expect(&g, Dtype::I32, &[cols])?;
        let values = g
            .data
            .chunks_exact(4)
            .map(|c| {
                u32::try_from(i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .map_err(|_| shape_err(&names.g_idx, "negative group index"))
            })
            .collect::<Result<Vec<u32>>>()?;
        Some(values)
    } else {
        None
    };
    let global_scale = if scheme.global_scale {
        let g = dir.tensor(&names.global_scale)?;
        expect(&g, Dtype::F32, &[1])?;
        f32_values(&g)[0]
    } else {
        1.0
    };
    let t = QuantTensor {
        scheme,
        rows,
        cols,
        data: codes.data.to_vec(),
        scales: f32_values(&scales),
        zeros,
        global_scale,
        g_idx,
    };
    t.validate()?;
    Ok(Some(t))
}
