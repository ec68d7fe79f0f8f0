//! Quantized number formats and the scalar reference every kernel is tested
//! against.
//!
//! - [`scheme`]: [`QuantScheme`] describes a quantized tensor (element type,
//!   scale granularity, scale dtype, zero point, layout) instead of naming a
//!   file format; named constructors, validation, scale-grid helpers.
//! - [`tensor`]: [`QuantTensor`], the canonical in-memory form of a quantized
//!   weight matrix; backends repack it into their own layouts. Its scalar
//!   reference dequantizer lives in `reference.rs`.
//! - [`formats`]: exact FP8 (E4M3, E5M2), FP4 E2M1, E8M0 and NF4 conversions.
//! - [`pack`]: dense K-major bit packing for 2..=8-bit codes.
//! - [`rtn`]: round-to-nearest quantization (min-max or MSE clipping).
//! - [`ggml`]: GGUF/ggml block formats (Q4_0 ... Q6_K, MXFP4), kept in their
//!   native block layout, with bit-exact reference dequantization.
//!
//! The exact bit layouts and error bounds are in `docs/FORMATS.md`.

pub mod element;
pub mod error;
pub mod formats;
pub mod ggml;
pub mod pack;
mod reference;
pub mod rtn;
pub mod scale;
pub mod scheme;
pub mod tensor;

pub use error::QuantError;
pub use ggml::{GgmlTensor, GgmlType};
pub use rtn::{quantize_rtn, ClipMethod, RtnOptions};
pub use scheme::{ElementType, Granularity, Layout, QuantScheme, ScaleDType, ZeroPoint};
pub use tensor::QuantTensor;
