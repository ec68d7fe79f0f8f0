//! Quantized number formats and the scalar reference every kernel is tested
//! against.
//!
//! - [`scheme`]: [`QuantScheme`] describes a quantized tensor (element type,
//!   scale granularity, scale dtype, zero point, layout) instead of naming a
//!   file format.
//! - [`tensor`]: [`QuantTensor`], the canonical in-memory form of a quantized
//!   weight matrix; backends repack it into their own layouts.
//! - [`ggml`]: GGUF/ggml block formats (Q4_0 ... Q6_K, MXFP4), kept in their
//!   native block layout, with bit-exact reference dequantization.

pub mod error;
pub mod ggml;
pub mod scheme;
pub mod tensor;

pub use error::QuantError;
pub use ggml::{GgmlTensor, GgmlType};
pub use scheme::{ElementType, Granularity, Layout, QuantScheme, ScaleDType, ZeroPoint};
pub use tensor::QuantTensor;
