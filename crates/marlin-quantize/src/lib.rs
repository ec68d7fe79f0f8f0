//! Offline quantization algorithms of marlin, in pure Rust: GPTQ, MR-GPTQ
//! (block-Hadamard rotation + FP4-adapted scale search) and AWQ. They build
//! on `marlin-quant`'s schemes, element grids, packing and reference
//! dequantizer, and return its [`QuantTensor`].
//!
//! Shapes: weights are row-major (N, K) (`y = x·Wᵀ` contracts over K);
//! activations are row-major (rows, K).
//!
//! - [`hessian`]: [`HessianAccumulator`] builds `H = 2/n · Σ x xᵀ` (f64).
//! - [`gptq`]: [`gptq_quantize`] (dampening, dead inputs, lazy blocks,
//!   act-order with g_idx, static groups, scale search).
//! - [`hadamard`]: [`Rotation`], the block-diagonal normalised Hadamard
//!   rotation (fast Walsh-Hadamard transform, padding for other K).
//! - [`mr_gptq`]: [`mr_gptq_quantize`] = rotate W and H, then GPTQ.
//! - [`awq`]: [`awq_quantize`], the activation-aware scale search.
//! - [`metrics`]: [`output_error`] `||x·Wᵀ − x·Ŵᵀ||²`.

pub mod awq;
pub mod error;
pub mod gptq;
mod gptq_sweep;
pub mod grid;
pub mod hadamard;
pub mod hessian;
mod linalg;
pub mod metrics;
pub mod mr_gptq;

pub use awq::{awq_quantize, AwqOptions, AwqResult};
pub use error::QuantizeError;
pub use gptq::{gptq_quantize, gptq_quantize_with_stats, GptqOptions, GptqStats};
pub use grid::{ScaleSearch, SearchWeight};
pub use hadamard::{fwht, Rotation};
pub use hessian::{Hessian, HessianAccumulator};
pub use marlin_quant::QuantTensor;
pub use metrics::output_error;
pub use mr_gptq::{
    mr_gptq_quantize, mr_gptq_quantize_with_stats, MrGptqOptions, RotatedQuantTensor,
};
