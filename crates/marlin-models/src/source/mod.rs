//! Where weights and hyper-parameters come from: a GGUF file or a Hugging
//! Face directory. Architectures ask for tensors by their GGUF names
//! (`blk.3.attn_q.weight`); other sources translate.

mod gguf;
mod hf;

pub use gguf::GgufSource;
pub use hf::{hf_tensor_name, HfDirSource};

use crate::config::{HParam, HValue};
use crate::error::Result;
use marlin_quant::{GgmlTensor, QuantTensor};

/// Checkpoint conventions that change how weights are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// llama.cpp conversion: Llama Q/K rows permuted for adjacent-pair RoPE;
    /// Gemma norm weights stored as `1 + w`.
    Gguf,
    /// Hugging Face layout: half-split RoPE everywhere; Gemma norm weights
    /// stored as `w` (the model multiplies by `1 + w`).
    HfDir,
}

/// A weight as the checkpoint holds it. [`crate::layers::Linear`] turns any
/// of these into a CPU weight; model code never looks inside.
pub enum TensorData {
    /// A ggml-typed matrix in its block layout (also F32/F16/BF16 GGUF data).
    Ggml(GgmlTensor),
    /// Plain f32, row-major (rows, cols).
    F32 {
        rows: usize,
        cols: usize,
        data: Vec<f32>,
    },
    /// A dense-packed quantized matrix.
    Quant(QuantTensor),
    /// A quantized matrix in a Hadamard-rotated basis (MR-GPTQ): `tensor`
    /// is (N, rotation.padded_k) and approximates `W·Rᵀ`; the input must be
    /// rotated by `rotation` before the product
    /// ([`crate::layers::hadamard::rotate_rows`]).
    RotatedQuant {
        tensor: QuantTensor,
        rotation: marlin_io::checkpoint::ActivationRotation,
    },
}

impl TensorData {
    /// (rows, cols): (output features, input features) for a linear weight.
    pub fn shape(&self) -> (usize, usize) {
        match self {
            TensorData::Ggml(t) => (t.rows, t.cols),
            TensorData::F32 { rows, cols, .. } => (*rows, *cols),
            TensorData::Quant(t) => (t.rows, t.cols),
            TensorData::RotatedQuant { tensor, rotation } => (tensor.rows, rotation.k),
        }
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        let (r, c) = self.shape();
        match self {
            TensorData::Ggml(t) => format!("{} {r}x{c}", t.ty.name()),
            TensorData::F32 { .. } => format!("f32 {r}x{c}"),
            TensorData::Quant(t) => format!("{:?} {r}x{c}", t.scheme.element),
            TensorData::RotatedQuant { tensor, rotation } => format!(
                "{:?} {r}x{c} (Hadamard-rotated, blocks of {})",
                tensor.scheme.element, rotation.block_size
            ),
        }
    }
}

/// A checkpoint opened for loading.
pub trait WeightSource: Send + Sync {
    fn kind(&self) -> SourceKind;
    /// Architecture as the registry spells it ("llama", "gemma3", "qwen3").
    fn architecture(&self) -> &str;
    /// A hyper-parameter, `None` when the checkpoint does not set it.
    fn hparam(&self, key: HParam) -> Result<Option<HValue>>;
    /// Whether a tensor of this (GGUF-style) name exists.
    fn contains(&self, name: &str) -> bool;
    /// A weight matrix (or a vector as a 1-row matrix), as stored.
    fn tensor(&self, name: &str) -> Result<TensorData>;
    /// A small float tensor (norm weights, frequency factors) as f32.
    fn vector(&self, name: &str) -> Result<Vec<f32>>;
}
