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
//! - [`gguf_f32`]: [`gguf_f32::write_dequantized_gguf`], a GGUF's dequantized
//!   base as an F32 GGUF (for llama.cpp's quantizers, same base as marlin's).
//! - [`pipeline`]: [`pipeline::quantize_model`], a whole GGUF / Hugging Face
//!   model into a marlin checkpoint, layer by layer, resumable.
//!
//! ```
//! use marlin_quant::QuantScheme;
//! use marlin_quantize::*;
//!
//! let (n, k, rows) = (8, 64, 32);
//! let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 17) as f32 - 8.0) / 50.0).collect(); // (N, K)
//! let x: Vec<f32> = (0..rows * k).map(|i| ((i * 13 % 11) as f32 - 5.0) / 5.0).collect(); // (rows, K)
//!
//! // Calibration: one accumulator per distinct layer input.
//! let mut acc = HessianAccumulator::new(k)?;
//! acc.add_batch(&x, rows)?;
//! let h = acc.finish()?;
//!
//! // GPTQ, INT4 asymmetric, groups of 32, act-order (emits g_idx).
//! let q = gptq_quantize(&w, n, k, &h, &QuantScheme::int4_asym(32), &GptqOptions::act_order())?;
//! assert!(q.g_idx.is_some());
//!
//! // MR-GPTQ, MXFP4: inference rotates the activations with the stored rotation.
//! let mr = mr_gptq_quantize(&w, n, k, &h, &QuantScheme::mxfp4(), &MrGptqOptions::default())?;
//! let x_rot = mr.rotation.rotate_rows(&x, rows)?; // (rows, padded_k)
//! let w_rot = mr.tensor.dequantize()?; // (N, padded_k)
//! let w_hat = mr.dequantize_unrotated()?; // (N, K), same outputs
//! let y0: f32 = (0..mr.rotation.padded_k).map(|c| x_rot[c] * w_rot[c]).sum();
//! let y1: f32 = (0..k).map(|c| x[c] * w_hat[c]).sum();
//! assert!((y0 - y1).abs() < 1e-3);
//! # Ok::<(), QuantizeError>(())
//! ```

pub mod awq;
pub mod error;
pub mod gguf_f32;
pub mod gptq;
mod gptq_sweep;
pub mod grid;
pub mod hadamard;
pub mod hessian;
mod linalg;
pub mod metrics;
pub mod mr_gptq;
pub mod pipeline;

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
