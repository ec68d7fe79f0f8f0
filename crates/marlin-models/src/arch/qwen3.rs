//! Qwen3 (dense): the Llama block with per-head RMSNorm on q and k (QK-norm)
//! and an explicit head_dim. Both GGUF and Hugging Face checkpoints use the
//! half-split RoPE pairing.

use super::llama::Llama;
use crate::error::Result;
use crate::model::{LoadOptions, Model};
use crate::source::WeightSource;
use marlin_cpu::ops::RopeStyle;

pub fn load(src: &dyn WeightSource, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    Ok(Box::new(Llama::load(
        src,
        opts,
        "qwen3",
        RopeStyle::Neox,
        true,
    )?))
}
