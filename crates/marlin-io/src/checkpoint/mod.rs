//! The marlin checkpoint: a Hugging Face style directory (`config.json`
//! with a `quantization_config` block, tokenizer files, `model*.safetensors`
//! and their index) whose quantized linears are stored as they are held in
//! memory ([`marlin_quant::QuantTensor`], `Layout::KMajorDense`), so loading never
//! requantizes.
//!
//! For a linear whose dense weight would be `<base>.weight` (e.g.
//! `model.layers.0.self_attn.q_proj.weight`) the checkpoint holds:
//!
//! | tensor | dtype | shape |
//! |---|---|---|
//! | `<base>.qcodes` | U8 | (N, packed bytes per row) |
//! | `<base>.scales` | F32 | scale grid (e.g. (N, K / group)) |
//! | `<base>.zeros` | F32 | scale grid (only with a zero point) |
//! | `<base>.g_idx` | I32 | (K) (only with act-order) |
//! | `<base>.global_scale` | F32 | (1) (only NVFP4-style schemes) |
//!
//! and the scheme (plus N and K) as JSON under the `__metadata__` key
//! `marlin.scheme.<base>` of the shard holding `<base>.qcodes`. Scales are
//! stored as f32 values that are exact in the scheme's scale dtype.

mod reader;
mod rotation;
mod scheme_json;
mod writer;

pub use reader::{read_quant_tensor, FormatOverride, QuantizationConfig};
pub use rotation::{read_rotation, ActivationRotation, BLOCK_HADAMARD, ROTATION_METADATA_PREFIX};
pub use scheme_json::{scheme_from_json, scheme_to_json};
pub use writer::{write_atomic, write_index, write_json_atomic, SafetensorsWriter};

/// `quant_method` of marlin's own checkpoints.
pub const QUANT_METHOD: &str = "marlin";
/// `__metadata__` key prefix of a quantized tensor's scheme.
pub const SCHEME_METADATA_PREFIX: &str = "marlin.scheme.";

/// Names of the tensors of quantized linear `base`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuantTensorNames {
    pub codes: String,
    pub scales: String,
    pub zeros: String,
    pub g_idx: String,
    pub global_scale: String,
}

impl QuantTensorNames {
    pub fn new(base: &str) -> Self {
        Self {
            codes: format!("{base}.qcodes"),
            scales: format!("{base}.scales"),
            zeros: format!("{base}.zeros"),
            g_idx: format!("{base}.g_idx"),
            global_scale: format!("{base}.global_scale"),
        }
    }
}

/// `model.layers.0.mlp.up_proj.weight` -> `model.layers.0.mlp.up_proj`.
pub fn linear_base(weight_name: &str) -> Option<&str> {
    weight_name.strip_suffix(".weight")
}

#[cfg(test)]
mod tests;
